//! The demo's departments and subscribers: publishing through the gateway,
//! straight to Kafka and by table dump; a webhook receiver; the tail of the
//! alerts dataset.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use govbus_adapter::publish::KafkaPublisher;
use govbus_catalog::Catalog;
use govbus_kafka::headers as h;
use govbus_kafka::topics::Topics;
use govbus_validate::Engine;
use prometheus::{Encoder, IntCounterVec, Opts, Registry, TextEncoder};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::BaseRecord;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value as Json;

use super::databases::Source;
use super::generate::{Path, Script};
use super::Seen;
use crate::up::System;

type MetricsSource = Arc<dyn Fn() -> String + Send + Sync>;

fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c =
        IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| unreachable!("{e}"));
    let _ = registry.register(Box::new(c.clone()));
    c
}

/// The five departments' systems.
pub struct Publisher {
    catalog: Catalog,
    engine: Engine,
    bootstrap: String,
    overrides: Vec<(String, String)>,
    topics: Topics,
    gateway: String,
    tokens: BTreeMap<String, String>,
    producer: govbus_kafka::produce::CountedProducer,
    acks: std::sync::Arc<govbus_kafka::produce::Acks>,
    dumps: PathBuf,
    state: PathBuf,
    registry: Registry,
    sent: IntCounterVec,
    dump_rejected: IntCounterVec,
    dump_changes: IntCounterVec,
    /// The path of each dataset.
    paths: Vec<(&'static str, Path)>,
    /// Department databases, by the dataset written to them.
    databases: BTreeMap<&'static str, Source>,
    runtime: tokio::runtime::Handle,
}

impl Publisher {
    /// Departments publishing into `system`.
    pub fn new(
        system: &System,
        catalog: &Catalog,
        tokens: &[(String, String)],
        dumps: PathBuf,
        state: PathBuf,
        paths: Vec<(&'static str, Path)>,
        databases: Vec<Source>,
    ) -> anyhow::Result<Publisher> {
        let gateway = system.addrs.gateway.context("the demo needs the gateway")?;
        let (producer, acks) =
            govbus_kafka::produce::counted(&govbus_kafka::config::producer(&system.bootstrap))?;
        std::fs::create_dir_all(&dumps)?;
        let registry = Registry::new();
        Ok(Publisher {
            catalog: catalog.clone(),
            engine: Engine::new(catalog)?,
            bootstrap: system.bootstrap.clone(),
            overrides: Vec::new(),
            topics: system.topics.clone(),
            gateway: format!("http://{gateway}"),
            tokens: tokens.iter().cloned().collect(),
            producer,
            acks,
            dumps,
            state,
            sent: counter(&registry, "govbus_demo_records_sent_total", "Records the demo's departments sent, by dataset, path and whether the bus must accept them.", &["dataset", "path", "expected"]),
            dump_rejected: counter(&registry, "govbus_snapshot_rejected_rows_total", "Table-dump rows that failed validation, by department, dataset and reason.", &["department", "dataset", "reason"]),
            dump_changes: counter(&registry, "govbus_snapshot_changes_total", "Changes a table dump published, by department, dataset and op.", &["department", "dataset", "op"]),
            registry,
            paths,
            databases: databases.into_iter().map(|d| (d.kind.dataset(), d)).collect(),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// The demo's own metrics.
    pub fn metrics_source(&self) -> MetricsSource {
        let r = self.registry.clone();
        Arc::new(move || render(&r))
    }

    /// Sends the script, one round per second, until done or `stop`, noting
    /// when each round started in `started_at`. Returns the (valid, invalid)
    /// records sent per dataset.
    pub fn play(
        mut self,
        script: Script,
        stop: &AtomicBool,
        started_at: &Mutex<Vec<Instant>>,
    ) -> anyhow::Result<BTreeMap<&'static str, (u64, u64)>> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let mut sent: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
        let mut tables: BTreeMap<&'static str, Vec<Json>> = BTreeMap::new();
        let mut pending_invalid: BTreeMap<&'static str, Vec<Json>> = BTreeMap::new();
        let started = Instant::now();
        let last = script.rounds.len().saturating_sub(1);
        for (r, round) in script.rounds.into_iter().enumerate() {
            while started.elapsed() < Duration::from_secs(r as u64) {
                if stop.load(Ordering::Relaxed) {
                    return Ok(sent);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Ok(mut v) = started_at.lock() {
                v.push(Instant::now());
            }
            for (dataset, path) in self.paths.clone() {
                let Some(items) = round.items.get(dataset) else {
                    continue;
                };
                let e = sent.entry(dataset).or_default();
                for i in items {
                    if i.valid {
                        e.0 += 1;
                    } else {
                        e.1 += 1;
                    }
                    let expected = if i.valid { "accepted" } else { "rejected" };
                    self.sent
                        .with_label_values(&[dataset, path.name(), expected])
                        .inc();
                }
                match path {
                    Path::Gateway => self.post(&agent, dataset, items.iter().map(|i| &i.record))?,
                    Path::Kafka => self.produce(dataset, items.iter().map(|i| &i.record))?,
                    Path::PostgresCapture | Path::MysqlCapture => {
                        let records: Vec<&Json> = items.iter().map(|i| &i.record).collect();
                        let db = self
                            .databases
                            .get_mut(dataset)
                            .context("no database for a captured dataset")?;
                        self.runtime
                            .block_on(db.insert(&records))
                            .with_context(|| format!("write {dataset} rows to {}", db.table))?;
                    }
                    Path::TableDump => {
                        for i in items {
                            if i.valid {
                                tables.entry(dataset).or_default().push(i.record.clone());
                            } else {
                                pending_invalid
                                    .entry(dataset)
                                    .or_default()
                                    .push(i.record.clone());
                            }
                        }
                    }
                }
            }
            // Table dumps arrive every five seconds, and once more at the end.
            if super::generate::dump_round(r, last + 1) == r {
                for (dataset, path) in self.paths.clone() {
                    if path == Path::TableDump {
                        let invalid = pending_invalid.remove(dataset).unwrap_or_default();
                        let rows = tables.get(dataset).map(Vec::as_slice).unwrap_or(&[]);
                        self.dump(dataset, rows, &invalid, r)?;
                    }
                }
            }
        }
        Ok(sent)
    }

    fn post<'a>(
        &self,
        agent: &ureq::Agent,
        dataset: &str,
        records: impl Iterator<Item = &'a Json>,
    ) -> anyhow::Result<()> {
        let owner = dataset.split('.').next().unwrap_or("");
        let token = self
            .tokens
            .get(owner)
            .context("no demo token for the owner")?;
        let body = serde_json::to_vec(&records.collect::<Vec<_>>())?;
        let url = format!("{}/v1/datasets/{dataset}/records", self.gateway);
        for attempt in 0..10 {
            let mut response = agent
                .post(&url)
                .header("authorization", &format!("Bearer {token}"))
                .header("content-type", "application/json")
                .send(&body[..])
                .with_context(|| format!("POST {url}"))?;
            match response.status().as_u16() {
                200 | 422 => return Ok(()),
                429 | 503 => std::thread::sleep(Duration::from_millis(200 * (attempt + 1))),
                other => {
                    let text = response.body_mut().read_to_string().unwrap_or_default();
                    anyhow::bail!("POST {url}: {other} {text}");
                }
            }
        }
        anyhow::bail!("POST {url}: the gateway kept answering 429/503")
    }

    fn produce<'a>(
        &self,
        dataset: &str,
        records: impl Iterator<Item = &'a Json>,
    ) -> anyhow::Result<()> {
        let owner = dataset.split('.').next().unwrap_or("");
        let topic = self.topics.ingest(owner);
        let ds = self
            .catalog
            .dataset(dataset)
            .context("dataset not in the catalog")?;
        let source = format!("/departments/{owner}");
        let time = govbus_catalog::time::format_rfc3339_millis(super::now_ms());
        for rec in records {
            let key: Vec<String> = ds
                .key
                .iter()
                .map(|k| rec[k].as_str().unwrap_or("").to_owned())
                .collect();
            let key = key.join("|");
            let id = format!("demo-{dataset}-{key}");
            let body = serde_json::to_vec(rec)?;
            let headers = h::owned([
                (h::CE_SPECVERSION, b"1.0".as_slice()),
                (h::CE_ID, id.as_bytes()),
                (h::CE_SOURCE, source.as_bytes()),
                (h::CE_TYPE, dataset.as_bytes()),
                (h::CE_TIME, time.as_bytes()),
                (h::CE_OP, b"create".as_slice()),
                (h::CONTENT_TYPE, b"application/json".as_slice()),
            ]);
            let record = BaseRecord::to(&topic)
                .key(key.as_bytes())
                .payload(&body)
                .headers(headers);
            govbus_kafka::produce::send_counted(&self.producer, record)?;
        }
        self.acks
            .settle(&self.producer, Some(Duration::from_secs(30)))
            .map_err(|e| {
                anyhow::anyhow!("the broker did not acknowledge the Kafka publisher's records: {e}")
            })?;
        Ok(())
    }

    /// Writes the table as a CSV dump and runs the table-dump adapter on it.
    fn dump(
        &self,
        dataset: &'static str,
        rows: &[Json],
        invalid: &[Json],
        round: usize,
    ) -> anyhow::Result<()> {
        let Some(first) = rows.first().or(invalid.first()) else {
            return Ok(());
        };
        let columns: Vec<String> = first
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        let file = self.dumps.join(format!("{dataset}-{round:04}.csv"));
        let mut w = csv::Writer::from_path(&file)?;
        w.write_record(&columns)?;
        for row in rows.iter().chain(invalid) {
            w.write_record(columns.iter().map(|c| match &row[c] {
                Json::String(s) => s.clone(),
                Json::Null => String::new(),
                other => other.to_string(),
            }))?;
        }
        w.flush()?;
        drop(w);
        let owner = dataset.split('.').next().unwrap_or("");
        let opts = govbus_snapshot::Options {
            dataset: dataset.to_owned(),
            file,
            format: None,
            mapping: govbus_adapter::mapping::MappingFile::default(),
            state_dir: self.state.join(dataset),
            dry_run: false,
            max_delete_fraction: 1.0,
            sort_memory: 16 << 20,
        };
        let mut publisher = KafkaPublisher::new(
            &self.bootstrap,
            &self.topics.ingest(owner),
            dataset,
            &self.overrides,
        )?;
        let summary = govbus_snapshot::run(
            &self.catalog,
            &self.engine,
            &opts,
            &govbus_snapshot::Quiet,
            &mut publisher,
        )
        .with_context(|| format!("table dump of {dataset}"))?;
        for i in &summary.invalid {
            self.dump_rejected
                .with_label_values(&[owner, dataset, i.reason])
                .inc();
        }
        for (op, n) in [
            ("create", summary.creates),
            ("update", summary.updates),
            ("delete", summary.deletes),
        ] {
            self.dump_changes
                .with_label_values(&[owner, dataset, op])
                .inc_by(n);
        }
        Ok(())
    }
}

/// The housing fund's webhook endpoint (the URL in its subscription), which
/// checks every batch's Standard Webhooks signature.
pub struct WebhookReceiver {
    registry: Registry,
    _server: tokio::task::JoinHandle<()>,
}

/// The secret the demo gives the housing fund's webhook when none is set.
const DEMO_WEBHOOK_SECRET: &str = "govbus-demo-housing-fund-webhook-secret";
const WEBHOOK_SECRET_ENV: &str = "GOVBUS_HOUSING_FUND_WEBHOOK_SECRET";

impl WebhookReceiver {
    /// Listens on the subscription's address; `None` when the port is taken.
    pub async fn start() -> Option<WebhookReceiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:8788").await.ok()?;
        let secret = std::env::var(WEBHOOK_SECRET_ENV).unwrap_or_else(|_| {
            std::env::set_var(WEBHOOK_SECRET_ENV, DEMO_WEBHOOK_SECRET);
            DEMO_WEBHOOK_SECRET.to_owned()
        });
        let key = govbus_sink::sinks::webhook::decode_secret(&secret).ok()?;
        let registry = Registry::new();
        let events = counter(
            &registry,
            "govbus_demo_webhook_events_total",
            "Events the demo's webhook receiver got, by whether the signature verified.",
            &["verified"],
        );
        let app = axum::Router::new().route(
            "/govbus/deaths",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let key = key.clone();
                    let events = events.clone();
                    async move {
                        let get =
                            |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
                        let ts: u64 = get("webhook-timestamp").parse().unwrap_or(0);
                        let expected =
                            govbus_sink::sinks::webhook::sign(&key, get("webhook-id"), ts, &body);
                        let verified = get("webhook-signature").split(' ').any(|s| s == expected);
                        let n = serde_json::from_slice::<Vec<Json>>(&body).map_or(0, |v| v.len());
                        events
                            .with_label_values(&[if verified { "yes" } else { "no" }])
                            .inc_by(n as u64);
                        if verified {
                            axum::http::StatusCode::NO_CONTENT
                        } else {
                            axum::http::StatusCode::UNAUTHORIZED
                        }
                    }
                },
            ),
        );
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Some(WebhookReceiver {
            registry,
            _server: server,
        })
    }

    /// Its metrics.
    pub fn metrics_source(&self) -> MetricsSource {
        let r = self.registry.clone();
        Arc::new(move || render(&r))
    }
}

/// Follows `topic` (the canonical alerts) from the start until `stop`.
pub fn tail_alerts(
    bootstrap: String,
    topic: String,
    catalog: Catalog,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok(consumer) = govbus_kafka::config::fetching(&bootstrap)
            .set("group.id", "govbus-demo")
            .set("enable.auto.commit", "false")
            .create::<BaseConsumer>()
        else {
            return;
        };
        // Wait for the topic (the router creates it on a real broker).
        let mut assigned = false;
        while !stop.load(Ordering::Relaxed) {
            if !assigned {
                let parts =
                    govbus_kafka::read::partitions(&consumer, &topic, Duration::from_secs(5));
                if parts.is_empty() {
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                }
                let mut tpl = TopicPartitionList::new();
                for p in parts {
                    let _ = tpl.add_partition_offset(&topic, p, Offset::Beginning);
                }
                assigned = consumer.assign(&tpl).is_ok();
                continue;
            }
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let Some(value) = m.payload() else { continue };
            let Ok(v) = govbus_sink::decode::to_json_generic(&catalog, value) else {
                continue;
            };
            if let Ok(mut s) = seen.lock() {
                s.take(Json::Object(v));
            }
        }
    })
}
