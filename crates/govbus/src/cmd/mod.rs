//! One module per subcommand.

pub mod audit;
pub mod bench;
pub mod bench_capture;
pub mod bench_sink;
pub mod capture;
pub mod catalog;
pub mod dlq;
pub mod gateway;
pub mod publish;
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
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
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
    for row in rows {
        line(row.iter().map(String::as_str).collect());
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
/// for an operator's terminal: control characters — newlines, escape
/// sequences — are shown escaped, so input cannot forge or clear output.
pub fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}
