//! `govbus audit`: verify the delivery ledger's hash chains and answer "did
//! department X receive record Y, and when".

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use govbus_kafka::headers as h;
use govbus_kafka::topics::Topics;
use govbus_sink::ledger::{self, Entry};

use crate::catalog_source;
use crate::cmd::{escape, print_table, to_json_line, to_json_pretty, Format};

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check every writer's hash chain; exit 1 if any entry was modified,
    /// deleted, inserted or reordered.
    Verify(VerifyArgs),
    /// Print every chain's head as a MAC'd checkpoint (JSON), after verifying
    /// the ledger: keep it outside the bus, and verify against it later.
    Checkpoint(SourceArgs),
    /// Deliveries of a subscription since a time, optionally of one record.
    Query(QueryArgs),
    /// Print the ledger as JSON lines (one entry per line).
    Export(SourceArgs),
}

#[derive(Args)]
pub struct SourceArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "GOVBUS_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Topic namespace prefix.
    #[arg(long, default_value = "")]
    topic_prefix: String,
    /// Read this topic instead of `<prefix>_govbus.audit`.
    #[arg(long)]
    topic: Option<String>,
    /// Read an exported ledger (JSON lines) instead of Kafka.
    #[arg(long, conflicts_with = "topic")]
    file: Option<PathBuf>,
}

#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// A checkpoint kept earlier (`govbus audit checkpoint`): every chain it
    /// saw must still reach its head, unchanged (finds a cut tail, and a
    /// rewrite by someone holding the ledger key).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Args)]
pub struct QueryArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Subscription id.
    #[arg(long)]
    subscription: String,
    /// Only deliveries at or after this time: RFC 3339, YYYY-MM-DD, or a
    /// duration ago (`2h`).
    #[arg(long)]
    since: Option<String>,
    /// Only deliveries containing this event id (`ce_id`).
    #[arg(long, conflicts_with = "key")]
    event: Option<String>,
    /// Only deliveries of this record key (looked up in the dataset's
    /// canonical topic; needs the catalog).
    #[arg(long)]
    key: Option<String>,
    /// Catalog directory (for --key). Default: the embedded sample.
    #[arg(long, env = "GOVBUS_CATALOG")]
    catalog: Option<PathBuf>,
    /// Only live-interface calls that looked this key or value up (matched
    /// by its keyed hash under GOVBUS_LEDGER_KEY; the ledger never holds it).
    #[arg(long, value_name = "VALUE", conflicts_with_all = ["key", "event"])]
    looked_up: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

pub fn run(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::Verify(a) => verify(a),
        AuditCommand::Checkpoint(a) => checkpoint(a),
        AuditCommand::Query(a) => query(a),
        AuditCommand::Export(a) => {
            for (_, e) in read(&a)? {
                match e {
                    Some(e) => println!("{}", to_json_line(&e)?),
                    None => println!("null"),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn read(a: &SourceArgs) -> anyhow::Result<Vec<(u64, Option<Entry>)>> {
    if let Some(path) = &a.file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read {}", escape(&path.display().to_string())))?;
        return Ok(text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| (i as u64 + 1, serde_json::from_str(l).ok()))
            .collect());
    }
    let topic = a.topic.clone().unwrap_or_else(|| {
        format!(
            "{}_govbus.audit",
            Topics::new(a.topic_prefix.clone()).prefix()
        )
    });
    let records = govbus_kafka::read::read_all(
        &a.bootstrap,
        &topic,
        Duration::from_secs(2),
        Duration::from_secs(300),
    )
    .with_context(|| format!("read the ledger {}", escape(&topic)))?;
    Ok(records
        .into_iter()
        .map(|r| {
            let entry = r
                .value
                .as_deref()
                .and_then(|v| serde_json::from_slice(v).ok());
            (u64::try_from(r.offset).unwrap_or(0), entry)
        })
        .collect())
}

/// The ledger key, as the sinks read it (`GOVBUS_LEDGER_KEY`).
fn key() -> anyhow::Result<Vec<u8>> {
    crate::cmd::sink::ledger_key()
}

fn checkpoint(a: SourceArgs) -> anyhow::Result<ExitCode> {
    let entries = read(&a)?;
    let key = key()?;
    let v = ledger::verify_against(
        &entries,
        ledger::Against {
            key: Some(&key),
            checkpoint: None,
        },
    );
    if !v.findings.is_empty() {
        anyhow::bail!(
            "the ledger does not verify ({} problems; see `govbus audit verify`): no checkpoint taken",
            v.findings.len()
        );
    }
    println!(
        "{}",
        to_json_pretty(&ledger::Checkpoint::take(&entries, &key))?
    );
    Ok(ExitCode::SUCCESS)
}

fn verify(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let entries = read(&a.source)?;
    let key = key()?;
    let kept: Option<ledger::Checkpoint> = match &a.checkpoint {
        Some(p) => Some(
            serde_json::from_str(
                &std::fs::read_to_string(p)
                    .with_context(|| format!("read {}", escape(&p.display().to_string())))?,
            )
            .with_context(|| format!("{} is not a checkpoint", escape(&p.display().to_string())))?,
        ),
        None => None,
    };
    let v = ledger::verify_against(
        &entries,
        ledger::Against {
            key: Some(&key),
            checkpoint: kept.as_ref(),
        },
    );
    if a.format == Format::Json {
        println!("{}", to_json_pretty(&v)?);
    } else {
        for f in &v.findings {
            println!(
                "TAMPERED  offset {}  writer {}: {}",
                f.position,
                escape(&f.writer),
                escape(&f.problem)
            );
        }
        if !v.open_chains.is_empty() {
            println!(
                "note: {} chain(s) have no close entry (a sink still running, or stopped without a clean shutdown): {}",
                v.open_chains.len(),
                escape(&v.open_chains.join(", "))
            );
        }
        if !v.legacy_chains.is_empty() {
            println!(
                "note: {} chain(s) were written before ledger entries were authenticated (links checked, content not authenticable): {}",
                v.legacy_chains.len(),
                escape(&v.legacy_chains.join(", "))
            );
        }
        if v.findings.is_empty() {
            println!("ledger OK: {} entries in {} chains", v.entries, v.chains);
        } else {
            println!(
                "ledger FAILED: {} problem(s) in {} entries",
                v.findings.len(),
                v.entries
            );
        }
    }
    Ok(if v.findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn parse_since(s: &str) -> anyhow::Result<String> {
    if let Ok(d) = humantime::parse_duration(s) {
        let now = govbus_sink::run::now_ms();
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        return Ok(govbus_catalog::time::format_rfc3339_millis(
            now.saturating_sub(ms),
        ));
    }
    if let Some(days) = govbus_catalog::time::parse_date(s) {
        return Ok(govbus_catalog::time::format_rfc3339_millis(
            days * govbus_catalog::time::MILLIS_PER_DAY,
        ));
    }
    let us = govbus_catalog::time::parse_rfc3339_micros(s).with_context(|| {
        format!(
            "--since {}: expected RFC 3339, YYYY-MM-DD or a duration like 2h",
            escape(s)
        )
    })?;
    Ok(govbus_catalog::time::format_rfc3339_millis(
        us.div_euclid(1000),
    ))
}

fn query(a: QueryArgs) -> anyhow::Result<ExitCode> {
    let since = a.since.as_deref().map(parse_since).transpose()?;
    let mut wanted: Option<Vec<String>> = a.event.clone().map(|e| vec![e]);
    if let Some(key) = &a.key {
        let catalog = catalog_source::load_checked(a.catalog.as_deref())?;
        let sub = catalog.subscription(&a.subscription).with_context(|| {
            format!(
                "--key needs subscription `{}` in the catalog",
                escape(&a.subscription)
            )
        })?;
        let topic = Topics::new(a.source.topic_prefix.clone()).data(&sub.dataset);
        let records = govbus_kafka::read::read_all(
            &a.source.bootstrap,
            &topic,
            Duration::from_secs(2),
            Duration::from_secs(300),
        )
        .with_context(|| format!("read {}", escape(&topic)))?;
        let ids: Vec<String> = records
            .iter()
            .filter(|r| r.header(h::CE_SUBJECT) == key)
            .map(|r| r.header(h::CE_ID).to_owned())
            .collect();
        if ids.is_empty() {
            println!("no record with that key in {}", escape(&topic));
            return Ok(ExitCode::from(1));
        }
        wanted = Some(ids);
    }
    let looked_up = match &a.looked_up {
        Some(v) => Some(govbus_sink::ledger::lookup_hash(
            &crate::cmd::sink::ledger_key()?,
            v,
        )),
        None => None,
    };
    let entries = read(&a.source)?;
    let mut rows = Vec::new();
    let mut json = Vec::new();
    for (pos, e) in entries {
        let Some(mut e) = e else { continue };
        if e.kind != "delivery" || e.subscription != a.subscription {
            continue;
        }
        if let Some(h) = &looked_up {
            e.calls.retain(|c| c.lookups.contains(h));
            if e.calls.is_empty() {
                continue;
            }
        }
        if since.as_deref().is_some_and(|s| e.time.as_str() < s) {
            continue;
        }
        let matched: Vec<&String> = match &wanted {
            Some(ids) => e.events.iter().filter(|x| ids.contains(x)).collect(),
            None => e.events.iter().collect(),
        };
        if wanted.is_some() && matched.is_empty() {
            continue;
        }
        rows.push(vec![
            e.time.clone(),
            e.subscriber.clone(),
            e.outcome.clone(),
            e.sink.clone(),
            e.policy.clone(),
            if wanted.is_some() {
                matched
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            } else if !e.calls.is_empty() {
                let mut ops: std::collections::BTreeMap<&str, usize> = Default::default();
                for c in &e.calls {
                    *ops.entry(c.operation.as_str()).or_default() += 1;
                }
                let ops: Vec<String> = ops.iter().map(|(o, n)| format!("{o} {n}")).collect();
                format!("{} calls ({})", e.calls.len(), ops.join(", "))
            } else {
                format!("{} events", e.events.len())
            },
            pos.to_string(),
        ]);
        json.push(serde_json::json!({
            "time": e.time, "subscriber": e.subscriber, "outcome": e.outcome, "sink": e.sink,
            "policy": e.policy, "events": matched, "calls": e.calls, "ledger_offset": pos,
        }));
    }
    if a.format == Format::Json {
        println!("{}", to_json_pretty(&json)?);
    } else {
        print_table(
            &[
                "TIME",
                "SUBSCRIBER",
                "OUTCOME",
                "SINK",
                "POLICY",
                "EVENTS",
                "LEDGER OFFSET",
            ],
            &rows,
        );
        println!("{} deliveries", rows.len());
    }
    Ok(
        if rows.is_empty() && (wanted.is_some() || looked_up.is_some()) {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        },
    )
}
