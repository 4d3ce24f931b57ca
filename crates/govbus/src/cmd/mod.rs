//! One module per subcommand.

pub mod audit;
pub mod bench;
pub mod bench_capture;
pub mod bench_query;
pub mod bench_sink;
pub mod capture;
pub mod catalog;
pub mod dlq;
pub mod gateway;
pub mod publish;
pub mod query;
pub mod reasons;
pub mod registry;
pub mod report;
pub mod router;
pub mod sink;
pub mod snapshot;
pub mod subscriptions;
pub mod topics;
pub mod up;
pub mod validate;

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::ValueEnum;

/// Binds `addr` and runs `serve` on a multi-threaded runtime until it returns
/// (the servers stop on SIGTERM or Ctrl-C).
pub fn serve_until_terminated<F, Fut>(
    addr: SocketAddr,
    what: &'static str,
    serve: F,
) -> anyhow::Result<ExitCode>
where
    F: FnOnce(tokio::net::TcpListener) -> Fut,
    Fut: Future<Output = std::io::Result<()>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listen on {addr}"))?;
        tracing::info!(message = "Serving.", what, addr = %listener.local_addr()?);
        serve(listener).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Parses repeated `--kafka key=value` arguments into librdkafka overrides.
pub fn kafka_overrides(args: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    args.iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("--kafka {kv}: expected key=value"))
        })
        .collect()
}

/// Output format of listing commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    /// Aligned columns for a terminal.
    #[default]
    Table,
    /// JSON, for scripts.
    Json,
}

/// Prints rows as aligned columns (widths by character count, so CJK text
/// lines up in most terminals only approximately; JSON is exact).
/// Every cell is [`escape`]d: cells hold input (field names, details).
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let rows: Vec<Vec<std::borrow::Cow<'_, str>>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| escape(cell)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(display_width(cell));
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(cell);
            if i + 1 < cells.len() {
                out.push_str(&" ".repeat(w.saturating_sub(display_width(cell))));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(|cell| cell.as_ref()).collect());
    }
}

/// Terminal columns: wide (CJK) characters take two.
fn display_width(s: &str) -> usize {
    s.chars()
        .map(|c| {
            if (c as u32) >= 0x1100 && !c.is_ascii() {
                2
            } else {
                1
            }
        })
        .sum()
}

/// Text from input (a department id, a field name, a file name) made safe
/// for an operator's terminal: control characters — newlines, carriage
/// returns, escape sequences, C1 controls — and the Unicode controls that
/// reorder or break lines without being `char::is_control` (bidi embeddings,
/// overrides and isolates, LRM/RLM/ALM, the line and paragraph separators)
/// are shown escaped (`\n`, `\u{1b}`, `\u{202e}`), so input cannot forge,
/// reorder or clear output.
pub fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Whether `c` changes how a terminal lays out or interprets the text around it.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// `value` as pretty JSON that is safe on a terminal and still exactly the
/// same JSON: serde_json escapes C0 controls but writes DEL, C1 controls
/// and bidi controls raw; those are written as `\uXXXX` escapes instead.
pub fn to_json_pretty<T: serde::Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    serde_json::to_string_pretty(value).map(json_safe)
}

/// `value` as one line of JSON, terminal-safe like [`to_json_pretty`].
pub fn to_json_line<T: serde::Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    serde_json::to_string(value).map(json_safe)
}

/// Outside strings serde_json writes only ASCII punctuation and spaces, so
/// every unsafe character is inside a string, where `\uXXXX` (all of them
/// are in the BMP) means the same character.
/// (C0 controls and `\n` are left alone: inside strings serde_json has
/// escaped them already, outside they are the layout.)
fn json_safe(text: String) -> String {
    let unsafe_in_string = |c: char| c == '\u{7f}' || (!c.is_ascii() && is_unsafe(c));
    if !text.chars().any(unsafe_in_string) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unsafe_in_string(c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_shows_every_control_and_reordering_character() {
        for (input, shown) in [
            ("plain 名字 ok", "plain 名字 ok"),
            ("a\nb", "a\\nb"),
            ("a\r\tb", "a\\r\\tb"),
            ("\u{1b}[2J", "\\u{1b}[2J"),
            ("\u{9b}2J", "\\u{9b}2J"),
            ("x\u{7f}", "x\\u{7f}"),
            ("\u{202e}exe.png", "\\u{202e}exe.png"),
            (
                "\u{202a}\u{202b}\u{202c}\u{202d}",
                "\\u{202a}\\u{202b}\\u{202c}\\u{202d}",
            ),
            (
                "\u{2066}\u{2067}\u{2068}\u{2069}",
                "\\u{2066}\\u{2067}\\u{2068}\\u{2069}",
            ),
            ("\u{200e}\u{200f}\u{61c}", "\\u{200e}\\u{200f}\\u{61c}"),
            ("a\u{2028}b\u{2029}", "a\\u{2028}b\\u{2029}"),
        ] {
            assert_eq!(escape(input), shown, "{input:?}");
        }
        assert!(matches!(escape("fine"), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn json_output_is_terminal_safe_and_the_same_json() {
        let v =
            serde_json::json!({"k\u{202e}": ["a\n\u{1b}[2J\r", "\u{9b}\u{7f}\u{2066}", "名字"]});
        for text in [to_json_pretty(&v).unwrap(), to_json_line(&v).unwrap()] {
            assert!(!text.chars().any(|c| is_unsafe(c) && c != '\n'), "{text:?}");
            assert!(text.contains("\\u202e") && text.contains("名字"), "{text}");
            let back: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(back, v);
        }
        assert_eq!(to_json_line(&v).unwrap().lines().count(), 1);
    }
}
