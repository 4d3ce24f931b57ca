//! `govbus publish --dataset X FILE`: one-off publishing through the gateway,
//! for a department developer with a file in hand. JSON (array), NDJSON or
//! CSV (a header row naming the fields); sent in batches of 500 with an
//! idempotency key per batch, so running the same file again after a failure
//! publishes nothing twice; a progress bar; a summary of accepted and rejected
//! records with their line numbers.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use govbus_catalog::fields::{top_level, FieldKind};
use serde_json::{Map, Value as Json};
use sha2::Digest;

use crate::catalog_source;

#[derive(Args)]
pub struct PublishArgs {
    /// Dataset name, `<owner>.<name>`.
    #[arg(long)]
    dataset: String,
    /// The records: `.json` (array), `.ndjson`/`.jsonl`, or `.csv`.
    file: PathBuf,
    /// The gateway.
    #[arg(long, env = "GOVBUS_GATEWAY", default_value = "http://127.0.0.1:8080")]
    gateway: String,
    /// Your department's token.
    #[arg(long, env = "GOVBUS_TOKEN", hide_env_values = true)]
    token: String,
    /// Records per request.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Catalog directory (to type CSV columns). Default: the embedded sample catalog.
    #[arg(long, env = "GOVBUS_CATALOG")]
    catalog: Option<PathBuf>,
}

/// Records with the line each starts on.
fn read_records(args: &PublishArgs) -> anyhow::Result<Vec<(usize, Json)>> {
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("read {}", args.file.display()))?;
    let ext = args
        .file
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "csv" => csv_records(args, &bytes),
        // A line that is not JSON, or names a member twice, stops the run
        // before anything is sent: the file needs fixing, and a record
        // published without it would be out of order with its retry.
        "ndjson" | "jsonl" => bytes
            .split(|b| *b == b'\n')
            .enumerate()
            .filter(|(_, l)| l.iter().any(|b| !b.is_ascii_whitespace()))
            .map(|(i, l)| {
                let record = govbus_validate::parse_json(l).map_err(|e| {
                    anyhow::anyhow!(
                        "{} line {}, column {}: {}; nothing was published",
                        args.file.display(),
                        i + 1,
                        e.column(),
                        e.what()
                    )
                })?;
                Ok((i + 1, record))
            })
            .collect(),
        _ => {
            let v: Json = govbus_validate::parse_json(&bytes).map_err(|e| {
                anyhow::anyhow!("{}: {e}; nothing was published", args.file.display())
            })?;
            let records = match v {
                Json::Array(a) => a,
                one => vec![one],
            };
            // Element positions: the record's index stands in for its line.
            Ok(records
                .into_iter()
                .enumerate()
                .map(|(i, r)| (i + 1, r))
                .collect())
        }
    }
}

fn csv_records(args: &PublishArgs, bytes: &[u8]) -> anyhow::Result<Vec<(usize, Json)>> {
    let catalog =
        catalog_source::load(args.catalog.as_deref()).map_err(|p| anyhow::anyhow!("{p}"))?;
    let ds = catalog
        .dataset(&args.dataset)
        .with_context(|| format!("unknown dataset `{}`", args.dataset))?;
    read_csv(ds, bytes)
}

/// Whether `file` is read as CSV (by its extension, as `publish` decides).
pub(crate) fn is_csv(file: &std::path::Path) -> bool {
    file.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
}

/// A CSV file (a header row naming `ds`'s fields) as JSON records, each with
/// the line its row starts on. Cells are text; numbers and booleans are typed
/// by the dataset's schema, and an empty cell in a nullable field is null —
/// `publish` sends, and `validate` checks, exactly these records.
pub(crate) fn read_csv(
    ds: &govbus_catalog::Dataset,
    bytes: &[u8],
) -> anyhow::Result<Vec<(usize, Json)>> {
    let kinds: std::collections::HashMap<String, (FieldKind, bool)> =
        top_level(&ds.latest().schema)
            .into_iter()
            .map(|(n, i)| (n.to_owned(), (i.kind, i.nullable)))
            .collect();
    let mut reader = csv::ReaderBuilder::new().flexible(false).from_reader(bytes);
    let headers = reader.headers().context("CSV header row")?.clone();
    for h in &headers {
        if !kinds.contains_key(h) {
            anyhow::bail!(
                "CSV column `{h}` is not a field of {}; fields: {}",
                ds.name,
                kinds.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
    }
    let mut out = Vec::new();
    for row in reader.records() {
        let row = row.context("CSV")?;
        let line = row.position().map_or(0, |p| p.line() as usize);
        let mut obj = Map::new();
        for (name, cell) in headers.iter().zip(row.iter()) {
            let (kind, nullable) = &kinds[name];
            let v = if cell.is_empty() && *nullable {
                Json::Null
            } else {
                match kind {
                    FieldKind::Int | FieldKind::Long => cell
                        .parse::<i64>()
                        .map(Json::from)
                        .unwrap_or_else(|_| Json::String(cell.to_owned())),
                    FieldKind::Float | FieldKind::Double => cell
                        .parse::<f64>()
                        .ok()
                        .and_then(|f| serde_json::Number::from_f64(f).map(Json::Number))
                        .unwrap_or_else(|| Json::String(cell.to_owned())),
                    FieldKind::Boolean => match cell {
                        "true" => Json::Bool(true),
                        "false" => Json::Bool(false),
                        other => Json::String(other.to_owned()),
                    },
                    _ => Json::String(cell.to_owned()),
                }
            };
            obj.insert(name.to_owned(), v);
        }
        out.push((line, Json::Object(obj)));
    }
    Ok(out)
}

pub fn run(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let records = read_records(&args)?;
    let digest = sha2::Sha256::digest(std::fs::read(&args.file)?);
    let file_id: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let url = format!(
        "{}/v1/datasets/{}/records",
        args.gateway.trim_end_matches('/'),
        args.dataset
    );
    let bar = indicatif::ProgressBar::new(records.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} records {per_sec} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let (mut accepted, mut rejections) = (0usize, Vec::new());
    for (n, chunk) in records.chunks(args.batch.max(1)).enumerate() {
        let body = serde_json::to_vec(&chunk.iter().map(|(_, r)| r).collect::<Vec<_>>())?;
        let mut response = agent
            .post(&url)
            .header("authorization", &format!("Bearer {}", args.token))
            .header("content-type", "application/json")
            .header("idempotency-key", &format!("publish-{file_id}-{n}"))
            .send(&body[..])
            .with_context(|| format!("POST {url}"))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let v: Json = serde_json::from_str(&text).unwrap_or(Json::Null);
        match status {
            200 | 422 => {
                accepted += v["accepted"].as_u64().unwrap_or(0) as usize;
                for r in v["results"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|r| r["status"] != "accepted")
                {
                    let idx = r["index"].as_u64().unwrap_or(0) as usize;
                    let line = chunk.get(idx).map_or(0, |(l, _)| *l);
                    let field = r["field"]
                        .as_str()
                        .map(|f| format!(" at `{f}`"))
                        .unwrap_or_default();
                    rejections.push(format!(
                        "{}:{line}: {} {}{field}: {}",
                        args.file.display(),
                        r["status"].as_str().unwrap_or(""),
                        r["reason"].as_str().unwrap_or(""),
                        r["detail"].as_str().unwrap_or("")
                    ));
                }
            }
            _ => {
                bar.abandon();
                anyhow::bail!(
                    "the gateway answered {status}: {}",
                    v["detail"].as_str().unwrap_or(&text)
                );
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    for r in &rejections {
        println!("{r}");
    }
    println!(
        "{}: {accepted} accepted, {} rejected ({})",
        args.file.display(),
        rejections.len(),
        args.dataset
    );
    // The README's exit codes: 0 all published, 2 published with some
    // records rejected, 1 nothing published.
    Ok(if rejections.is_empty() {
        ExitCode::SUCCESS
    } else if accepted > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    })
}
