//! `govbus validate`: check a file of records against a dataset, offline,
//! exactly as the gateway and router will. JSON, NDJSON or CSV, read as
//! `govbus publish` reads them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use govbus_validate::{Context, Engine};

use crate::catalog_source;
use crate::cmd::escape;
use crate::cmd::publish::{is_csv, read_csv};

#[derive(Args)]
pub struct ValidateArgs {
    /// Dataset name, `<owner>.<name>`.
    #[arg(long)]
    dataset: String,
    /// A JSON array of records, NDJSON (one record per line), or `.csv` (a
    /// header row naming the fields; cells typed as `govbus publish` types them).
    file: PathBuf,
    /// Catalog directory. Default: the embedded sample catalog.
    #[arg(long)]
    catalog: Option<PathBuf>,
}

pub fn run(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let catalog = catalog_source::load_checked(args.catalog.as_deref())?;
    let engine = Engine::new(&catalog)?;
    let Some(dataset) = engine.dataset(&args.dataset) else {
        let known: Vec<String> = catalog.datasets().map(|d| d.name.clone()).collect();
        anyhow::bail!(
            "unknown dataset `{}`; the catalog has: {}",
            escape(&args.dataset),
            escape(&known.join(", "))
        );
    };
    // The file's name is input too (a department chose it).
    let file_name = args.file.display().to_string();
    let file_name = escape(&file_name);
    let text = std::fs::read(&args.file).with_context(|| format!("read {file_name}"))?;
    let records = if is_csv(&args.file) {
        // Typed exactly as `govbus publish` types them before sending.
        let ds = catalog
            .dataset(dataset.name())
            .context("the dataset is in the catalog")?;
        // Its errors quote the file's header cells: input, so escaped.
        read_csv(ds, &text)
            .map_err(|e| anyhow::anyhow!("{}", escape(&format!("{e:#}"))))
            .with_context(|| format!("parse {file_name}"))?
            .into_iter()
            .map(|(line, v)| (line, Record::Value(v)))
            .collect()
    } else {
        split_records(&text).with_context(|| format!("parse {file_name}"))?
    };
    let ctx = Context::now();
    let (mut accepted, mut rejected) = (0usize, 0usize);
    for (line, record) in &records {
        let result = match record {
            Record::Value(v) => dataset.validate_json_value(v, &ctx),
            Record::Raw(bytes) => dataset.validate_json(bytes, &ctx),
        };
        match result {
            Ok(_) => accepted += 1,
            Err(r) => {
                rejected += 1;
                println!("{file_name}:{line}: rejected: {}", escape(&r.to_string()));
            }
        }
    }
    println!(
        "{file_name}: {accepted} accepted, {rejected} rejected ({})",
        escape(dataset.name())
    );
    Ok(if rejected == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

enum Record<'a> {
    Value(serde_json::Value),
    Raw(&'a [u8]),
}

/// A JSON array (records numbered by the line they start on) or NDJSON
/// (each non-blank line is a record, parsed — and rejected — on its own).
fn split_records(text: &[u8]) -> anyhow::Result<Vec<(usize, Record<'_>)>> {
    let first = text.iter().position(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|i| text[i] == b'[') {
        let serde_json::Value::Array(values) = govbus_validate::parse_json(text)? else {
            anyhow::bail!("a file that starts with `[` is a JSON array of records");
        };
        let starts = array_element_lines(text);
        return Ok(values
            .into_iter()
            .enumerate()
            .map(|(i, v)| (starts.get(i).copied().unwrap_or(0), Record::Value(v)))
            .collect());
    }
    Ok(text
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, l)| l.iter().any(|b| !b.is_ascii_whitespace()))
        .map(|(i, l)| (i + 1, Record::Raw(l)))
        .collect())
}

/// The line on which each top-level element of a JSON array starts.
fn array_element_lines(text: &[u8]) -> Vec<usize> {
    let (mut line, mut depth, mut in_str, mut escaped) = (1usize, 0i32, false, false);
    let mut starts = Vec::new();
    let mut expecting = false;
    for &b in text {
        if b == b'\n' {
            line += 1;
        }
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        if expecting && !b.is_ascii_whitespace() && b != b']' {
            starts.push(line);
            expecting = false;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                if depth == 1 && b == b'[' {
                    expecting = true;
                }
            }
            b']' | b'}' => depth -= 1,
            b',' if depth == 1 => expecting = true,
            _ => {}
        }
    }
    starts
}
