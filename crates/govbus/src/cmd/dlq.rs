//! `govbus dlq list|show|replay`: the dead-letter tooling an operator uses to
//! see what a department's systems send wrong, and to re-send records once
//! the cause is fixed. Personal data is masked in everything it prints.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use apache_avro::reader::datum::GenericDatumReader;
use clap::{Args, Subcommand};
use govbus_catalog::mask::mask;
use govbus_catalog::{Catalog, SchemaId};
use govbus_kafka::headers as h;
use govbus_kafka::topics::Topics;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use serde_json::{json, Value as Json};

use super::{escape, print_table, to_json_pretty, Format};
use crate::catalog_source;

#[derive(Subcommand)]
pub enum DlqCommand {
    /// List a department's dead letters: where, when, dataset, reason, field.
    List(ListArgs),
    /// Show one dead letter: its error headers and the record, personal fields masked.
    Show(ShowArgs),
    /// Send selected dead letters back to ingest.<dept> (dry run unless --execute).
    Replay(ReplayArgs),
}

#[derive(Args)]
pub struct Common {
    /// Kafka bootstrap servers.
    #[arg(long, env = "GOVBUS_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// The department whose dlq.<dept> to read.
    #[arg(long)]
    department: String,
    /// Topic namespace prefix, as given to the router.
    #[arg(long, default_value = "")]
    topic_prefix: String,
    /// Catalog directory. Default: the embedded sample catalog.
    #[arg(long, env = "GOVBUS_CATALOG")]
    catalog: Option<PathBuf>,
}

#[derive(Args)]
pub struct Filter {
    /// Only this reason code.
    #[arg(long)]
    reason: Option<String>,
    /// Only this dataset.
    #[arg(long)]
    dataset: Option<String>,
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    filter: Filter,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Args)]
pub struct ShowArgs {
    #[command(flatten)]
    common: Common,
    /// The dead letter, as PARTITION:OFFSET (from `dlq list`).
    #[arg(long)]
    at: String,
}

#[derive(Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    filter: Filter,
    /// Only these dead letters, PARTITION:OFFSET (repeatable).
    #[arg(long)]
    at: Vec<String>,
    /// Actually send them; without it, only show what would be sent.
    #[arg(long)]
    execute: bool,
}

pub fn run(cmd: DlqCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DlqCommand::List(a) => list(a),
        DlqCommand::Show(a) => show(a),
        DlqCommand::Replay(a) => replay(a),
    }
}

type Dead = govbus_kafka::read::Record;

trait DeadExt {
    fn at(&self) -> String;
    fn matches(&self, f: &Filter) -> bool;
}

impl DeadExt for Dead {
    fn at(&self) -> String {
        format!("{}:{}", self.partition, self.offset)
    }

    fn matches(&self, f: &Filter) -> bool {
        f.reason
            .as_deref()
            .is_none_or(|r| self.header(h::ERROR_REASON) == r)
            && f.dataset
                .as_deref()
                .is_none_or(|d| self.header(h::ERROR_DATASET) == d)
    }
}

/// Reads `topic` from the beginning to its current end.
fn read_all(bootstrap: &str, topic: &str) -> anyhow::Result<Vec<Dead>> {
    govbus_kafka::read::read_all(
        bootstrap,
        topic,
        Duration::from_secs(1),
        Duration::from_secs(120),
    )
    .with_context(|| format!("read {}", escape(topic)))
}

fn load(common: &Common) -> anyhow::Result<(Catalog, Topics, Vec<Dead>)> {
    let catalog = catalog_source::load_checked(common.catalog.as_deref())?;
    let topics = Topics::new(common.topic_prefix.clone());
    let dead = read_all(&common.bootstrap, &topics.dlq(&common.department))?;
    Ok((catalog, topics, dead))
}

fn list(a: ListArgs) -> anyhow::Result<ExitCode> {
    let (_, _, dead) = load(&a.common)?;
    let rows: Vec<&Dead> = dead.iter().filter(|d| d.matches(&a.filter)).collect();
    match a.format {
        Format::Json => {
            let v: Vec<Json> = rows
                .iter()
                .map(|d| {
                    json!({
                        "at": d.at(), "timestamp_ms": d.timestamp_ms,
                        "dataset": d.header(h::ERROR_DATASET), "reason": d.header(h::ERROR_REASON),
                        "field": d.header(h::ERROR_FIELD), "stage": d.header(h::ERROR_STAGE),
                        "detail": d.header(h::ERROR_DETAIL),
                        "original": format!("{}/{}/{}", d.header(h::ERROR_TOPIC), d.header(h::ERROR_PARTITION), d.header(h::ERROR_OFFSET)),
                    })
                })
                .collect();
            println!("{}", to_json_pretty(&v)?);
        }
        Format::Table => {
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|d| {
                    vec![
                        d.at(),
                        d.timestamp_ms
                            .map(govbus_catalog::time::format_rfc3339_millis)
                            .unwrap_or_default(),
                        d.header(h::ERROR_DATASET).to_owned(),
                        d.header(h::ERROR_REASON).to_owned(),
                        d.header(h::ERROR_FIELD).to_owned(),
                        format!(
                            "{}/{}",
                            d.header(h::ERROR_PARTITION),
                            d.header(h::ERROR_OFFSET)
                        ),
                    ]
                })
                .collect();
            print_table(
                &["AT", "TIME", "DATASET", "REASON", "FIELD", "INGEST P/O"],
                &table,
            );
            println!(
                "{} of {} dead letters in {}",
                rows.len(),
                dead.len(),
                escape(&Topics::new(a.common.topic_prefix.clone()).dlq(&a.common.department))
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The record as JSON with every tagged personal field masked. Without a
/// known dataset, every value is masked: nothing says which fields are personal.
fn masked_record(catalog: &Catalog, dataset: Option<&str>, value: &[u8]) -> Json {
    let ds = dataset.and_then(|d| catalog.dataset(d));
    let decoded: Option<Json> = if value.len() >= 5 && value[0] == 0 {
        let id = SchemaId(u32::from_be_bytes([value[1], value[2], value[3], value[4]]));
        catalog.schema(id).and_then(|(_, sv)| {
            let reader = GenericDatumReader::builder(&sv.schema).build().ok()?;
            let mut datum = &value[5..];
            let v = reader.read_value(&mut datum).ok()?;
            Json::try_from(v).ok()
        })
    } else {
        serde_json::from_slice::<Json>(value).ok().map(|v| match v {
            Json::Object(mut o) if o.contains_key("specversion") => {
                o.remove("data").unwrap_or(Json::Null)
            }
            other => other,
        })
    };
    let Some(Json::Object(mut fields)) = decoded else {
        return json!(format!(
            "({} bytes, not decodable as a record of this dataset)",
            value.len()
        ));
    };
    for (name, v) in fields.iter_mut() {
        let tag = match ds {
            Some(ds) => ds.personal_data.get(name).copied(),
            None => Some(govbus_catalog::PiiTag::Other),
        };
        if let Some(tag) = tag {
            *v = match v {
                Json::Null => Json::Null,
                Json::String(s) => Json::String(mask(tag, s)),
                _ => Json::String("***".into()),
            };
        }
    }
    Json::Object(fields)
}

fn parse_at(at: &str) -> anyhow::Result<(i32, i64)> {
    let (p, o) = at
        .split_once(':')
        .with_context(|| format!("`{}`: expected PARTITION:OFFSET", escape(at)))?;
    Ok((
        p.parse()
            .with_context(|| format!("`{}`: bad partition", escape(at)))?,
        o.parse()
            .with_context(|| format!("`{}`: bad offset", escape(at)))?,
    ))
}

fn show(a: ShowArgs) -> anyhow::Result<ExitCode> {
    let (partition, offset) = parse_at(&a.at)?;
    let (catalog, _, dead) = load(&a.common)?;
    let d = dead
        .iter()
        .find(|d| d.partition == partition && d.offset == offset)
        .with_context(|| {
            format!(
                "no dead letter at {} in dlq.{}",
                escape(&a.at),
                escape(&a.common.department)
            )
        })?;
    let errors: serde_json::Map<String, Json> = d
        .headers
        .iter()
        .filter(|(k, _)| k.starts_with(h::ERROR_PREFIX))
        .map(|(k, v)| {
            (
                k.clone(),
                Json::String(
                    String::from_utf8_lossy(v.as_deref().unwrap_or_default()).into_owned(),
                ),
            )
        })
        .collect();
    let dataset = Some(d.header(h::ERROR_DATASET)).filter(|s| !s.is_empty());
    let view = json!({
        "at": d.at(),
        "errors": errors,
        "other_headers": d.headers.iter().filter(|(k, _)| !k.starts_with(h::ERROR_PREFIX)).map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        "key_bytes": d.key.as_ref().map_or(0, Vec::len),
        "record": d.value.as_deref().map(|v| masked_record(&catalog, dataset, v)),
    });
    println!("{}", to_json_pretty(&view)?);
    Ok(ExitCode::SUCCESS)
}

fn replay(a: ReplayArgs) -> anyhow::Result<ExitCode> {
    let wanted: Vec<(i32, i64)> =
        a.at.iter()
            .map(|s| parse_at(s))
            .collect::<anyhow::Result<_>>()?;
    let (_, topics, dead) = load(&a.common)?;
    let ingest = topics.ingest(&a.common.department);
    let dlq = topics.dlq(&a.common.department);
    let selected: Vec<&Dead> = dead
        .iter()
        .filter(|d| d.matches(&a.filter))
        .filter(|d| wanted.is_empty() || wanted.contains(&(d.partition, d.offset)))
        .collect();
    for d in &selected {
        let (value, key) = (
            d.header(h::ERROR_RECORD_OMITTED),
            d.header(h::ERROR_KEY_OMITTED),
        );
        if !value.is_empty() || !key.is_empty() {
            anyhow::bail!(
                "dead letter {} holds no full copy of its record (too large to copy: value {} bytes, key {} bytes left out); the original is at {} partition {} offset {} for as long as that topic keeps it: publish it again from the source",
                d.at(),
                escape(if value.is_empty() { "0" } else { value }),
                escape(if key.is_empty() { "0" } else { key }),
                escape(d.header(h::ERROR_TOPIC)),
                escape(d.header(h::ERROR_PARTITION)),
                escape(d.header(h::ERROR_OFFSET))
            );
        }
        if d.header(h::ERROR_TOPIC) != ingest {
            anyhow::bail!(
                "dead letter {} came from `{}`, not {}; refusing to replay it elsewhere",
                d.at(),
                escape(d.header(h::ERROR_TOPIC)),
                escape(&ingest)
            );
        }
    }
    if !a.execute {
        for d in &selected {
            println!(
                "would replay {} ({} {}) to {}",
                d.at(),
                escape(d.header(h::ERROR_DATASET)),
                escape(d.header(h::ERROR_REASON)),
                escape(&ingest)
            );
        }
        println!(
            "dry run: {} dead letter(s) selected; add --execute to send them",
            selected.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let (producer, acks) =
        govbus_kafka::produce::counted(&govbus_kafka::config::idempotent(&a.common.bootstrap))?;
    for d in &selected {
        let of = format!("{dlq}/{}/{}", d.partition, d.offset);
        let mut headers = OwnedHeaders::new();
        for (k, v) in d
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with(h::ERROR_PREFIX) && k != h::REPLAY_OF)
        {
            headers = headers.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        headers = headers.insert(Header {
            key: h::REPLAY_OF,
            value: Some(of.as_str()),
        });
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&ingest).headers(headers);
        if let Some(k) = &d.key {
            rec = rec.key(k.as_slice());
        }
        if let Some(v) = &d.value {
            rec = rec.payload(v.as_slice());
        }
        govbus_kafka::produce::send_counted(&producer, rec)?;
        tracing::info!(message = "Dead letter sent.", from = %of, to = %ingest, dataset = d.header(h::ERROR_DATASET), reason = d.header(h::ERROR_REASON));
    }
    // Said only once the broker acknowledged every one (a repeat of the
    // replay repeats the same event ids).
    acks.settle(&producer, Some(Duration::from_secs(30)))
        .map_err(|e| anyhow::anyhow!("the replay is not confirmed: {e}; the dead letters are still on {}, run the replay again (a repeat carries the same event ids)", escape(&dlq)))?;
    println!(
        "replayed {} dead letter(s) from {} to {}",
        selected.len(),
        escape(&dlq),
        escape(&ingest)
    );
    Ok(ExitCode::SUCCESS)
}
