//! The app around the [`Detector`]: reads the four Kafka views, publishes
//! alerts to `ingest.<owner>` (the router checks them like any record), and
//! keeps its state in a checkpoint file.
//!
//! Restart safety. The checkpoint holds the detector, the next input offset
//! of every view partition and the output offsets reached when it was
//! written. Alerts are acknowledged by the broker before the checkpoint that
//! covers them is written, so a crash can only lose checkpoints, never
//! alerts: the restarted app re-reads the inputs from the checkpoint (nothing
//! missed) and, before raising anything, reads its own output from the
//! checkpoint's output offsets and marks every alert id found there as raised
//! (nothing repeated).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use govbus_kafka::headers as h;
use govbus_kafka::topics::Topics;
use prometheus::{Encoder, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::detect::{Alert, Detector, Input, ALERTS};

/// The subscriptions (in the sample catalog) whose views feed the app.
pub const FEEDS: [&str; 4] = [
    "hrss_fraud_deaths",
    "hrss_fraud_pensions",
    "hrss_fraud_unemployment",
    "hrss_fraud_contributions",
];

/// What the app needs to run.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// Kafka bootstrap servers.
    pub bootstrap: String,
    /// Topic namespace.
    pub topics: Topics,
    /// Subscriptions whose Kafka views are read (default [`FEEDS`]).
    pub feeds: Vec<String>,
    /// The department publishing the alerts (the owner of `hrss.fraud_alert`).
    pub department: String,
    /// Where the checkpoint lives.
    pub state_dir: PathBuf,
    /// Extra librdkafka settings.
    pub client_overrides: Vec<(String, String)>,
}

impl AppConfig {
    /// The sample feeds, publishing as `hrss`, state in `state_dir`.
    pub fn new(bootstrap: impl Into<String>, topics: Topics, state_dir: PathBuf) -> AppConfig {
        AppConfig {
            bootstrap: bootstrap.into(),
            topics,
            feeds: FEEDS.iter().map(|s| (*s).to_owned()).collect(),
            department: "hrss".to_owned(),
            state_dir,
            client_overrides: Vec::new(),
        }
    }

    fn client(&self, mut c: ClientConfig) -> ClientConfig {
        for (k, v) in &self.client_overrides {
            c.set(k, v);
        }
        c
    }
}

/// Why the app stopped.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A Kafka client could not be created or failed for good.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The checkpoint could not be read or written.
    #[error("checkpoint {path}: {detail}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
}

/// The app's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    inputs: IntCounterVec,
    unreadable: IntCounterVec,
    alerts: IntCounterVec,
    raised: IntGauge,
    recovered: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers the metrics.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label])
                .unwrap_or_else(|e| unreachable!("{e}"));
            let _ = registry.register(Box::new(c.clone()));
            c
        };
        let inputs = vec(
            "govbus_fraud_inputs_total",
            "Feed records read, by dataset.",
            "dataset",
        );
        let unreadable = vec(
            "govbus_fraud_unreadable_total",
            "Feed records the rules could not read (a field missing from the grant), by dataset.",
            "dataset",
        );
        let alerts = vec(
            "govbus_fraud_alerts_total",
            "Alerts published, by rule.",
            "rule",
        );
        let raised = IntGauge::new(
            "govbus_fraud_alerts_raised",
            "Distinct alerts raised so far (kept across restarts).",
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        let _ = registry.register(Box::new(raised.clone()));
        let recovered = IntGauge::new(
            "govbus_fraud_recovered_alerts",
            "Alerts found in the app's own output at start that the checkpoint did not cover yet (not raised again).",
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        let _ = registry.register(Box::new(recovered.clone()));
        Metrics {
            recovered,
            registry,
            inputs,
            unreadable,
            alerts,
            raised,
        }
    }

    /// Alerts published by this process, by rule.
    pub fn alerts(&self, rule: &str) -> u64 {
        self.alerts.with_label_values(&[rule]).get()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkpoint {
    /// topic → partition → next offset to read.
    inputs: BTreeMap<String, BTreeMap<i32, i64>>,
    /// Output partition → offset after the last acknowledged alert.
    output: BTreeMap<i32, i64>,
    detector: Detector,
}

impl Checkpoint {
    fn path(dir: &Path) -> PathBuf {
        dir.join("fraud-checkpoint.json")
    }

    fn load(dir: &Path) -> Result<Checkpoint, AppError> {
        let path = Checkpoint::path(dir);
        let err = |detail: String| AppError::Checkpoint {
            path: path.clone(),
            detail,
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| err(format!("not a checkpoint: {e}")))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Checkpoint::default()),
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// Writes a temporary file, syncs it and renames it over the old one.
    fn save(&self, dir: &Path) -> Result<(), AppError> {
        use std::io::Write as _;
        let path = Checkpoint::path(dir);
        let err = |e: std::io::Error| AppError::Checkpoint {
            path: path.clone(),
            detail: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        let tmp = dir.join("fraud-checkpoint.json.tmp");
        let bytes = serde_json::to_vec(self).map_err(|e| err(std::io::Error::other(e)))?;
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)
    }
}

#[derive(Default)]
struct Acks {
    /// partition → highest acknowledged offset + 1.
    reached: BTreeMap<i32, i64>,
    failed: u64,
    first_error: Option<String>,
}

struct Ctx(Arc<Mutex<Acks>>);
impl ClientContext for Ctx {}
impl ProducerContext for Ctx {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let Ok(mut acks) = self.0.lock() else { return };
        match result {
            Ok(m) => {
                let e = acks.reached.entry(m.partition()).or_default();
                *e = (*e).max(m.offset() + 1);
            }
            Err((e, _)) => {
                acks.failed += 1;
                acks.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// Runs until `stop` is set: a clean stop writes a last checkpoint.
pub fn run(config: &AppConfig, metrics: &Metrics, stop: &AtomicBool) -> Result<(), AppError> {
    let mut checkpoint = Checkpoint::load(&config.state_dir)?;
    let output = config.topics.ingest(&config.department);
    let recovered = recover_raised(config, &output, &mut checkpoint)?;
    tracing::info!(
        message = "Anti-fraud app starting.",
        raised_before = checkpoint.detector.raised(),
        found_in_output_after_checkpoint = recovered
    );
    metrics.raised.set(checkpoint.detector.raised() as i64);
    metrics.recovered.set(recovered as i64);
    // Fault injection for the restart test: die between the broker's
    // acknowledgement of alerts and the checkpoint that covers them.
    let crash_after_publish =
        std::env::var("GOVBUS_FRAUD_FAIL_POINT").as_deref() == Ok("after_publish");

    let acks = Arc::new(Mutex::new(Acks::default()));
    let producer: ThreadedProducer<Ctx> = config
        .client(govbus_kafka::config::producer(&config.bootstrap))
        .create_with_context(Ctx(acks.clone()))?;
    let consumer: BaseConsumer = config.client(consumer_config(&config.bootstrap)).create()?;
    let views: Vec<String> = config.feeds.iter().map(|f| config.topics.view(f)).collect();
    assign(&consumer, &views, &checkpoint, stop)?;

    let mut last_save = Instant::now();
    let mut dirty = false;
    while !stop.load(Ordering::Relaxed) {
        let batch = poll_batch(&consumer, 500, Duration::from_millis(200));
        let mut alerts = Vec::new();
        for m in &batch {
            let m = match m {
                Ok(m) => m,
                Err(error) => {
                    tracing::warn!(message = "Reading a feed failed; retrying.", %error);
                    continue;
                }
            };
            let topic = m.topic().to_owned();
            checkpoint
                .inputs
                .entry(topic)
                .or_default()
                .insert(m.partition(), m.offset() + 1);
            dirty = true;
            let headers = m.headers();
            let dataset = headers
                .and_then(|hs| h::get_str(hs, h::CE_TYPE))
                .unwrap_or("");
            metrics.inputs.with_label_values(&[label(dataset)]).inc();
            // Deletes carry no value: an alert, once raised, stands.
            let Some(value) = m.payload() else { continue };
            let read = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(value)
                .map_err(|e| e.to_string())
                .and_then(|v| Input::from_json(dataset, &v).map_err(|e| e.to_string()));
            match read {
                Ok(input) => alerts.extend(checkpoint.detector.observe(input)),
                Err(problem) => {
                    metrics
                        .unreadable
                        .with_label_values(&[label(dataset)])
                        .inc();
                    tracing::warn!(message = "A feed record could not be read; skipped.", dataset = label(dataset), %problem);
                }
            }
        }
        if !alerts.is_empty() {
            publish(&producer, &acks, &output, &config.department, &alerts)?;
            for a in &alerts {
                metrics.alerts.with_label_values(&[a.rule.code()]).inc();
            }
            metrics.raised.set(checkpoint.detector.raised() as i64);
            if let Ok(a) = acks.lock() {
                checkpoint
                    .output
                    .extend(a.reached.iter().map(|(p, o)| (*p, *o)));
            }
            if crash_after_publish {
                tracing::error!(
                    message =
                        "GOVBUS_FRAUD_FAIL_POINT=after_publish: aborting before the checkpoint."
                );
                std::process::abort();
            }
        }
        if dirty && (!alerts.is_empty() || last_save.elapsed() >= Duration::from_secs(1)) {
            checkpoint.save(&config.state_dir)?;
            last_save = Instant::now();
            dirty = false;
        }
    }
    checkpoint.save(&config.state_dir)?;
    tracing::info!(
        message = "Anti-fraud app stopped.",
        raised = checkpoint.detector.raised()
    );
    Ok(())
}

/// Metric label for a dataset header: a feed name, or `other`.
fn label(dataset: &str) -> &str {
    use crate::detect::{CONTRIBUTIONS, DEATHS, PENSIONS, UNEMPLOYMENT};
    match dataset {
        DEATHS | PENSIONS | UNEMPLOYMENT | CONTRIBUTIONS => dataset,
        _ => "other",
    }
}

fn consumer_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("group.id", "govbus-fraud")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .set("enable.partition.eof", "false");
    c
}

/// Reads the app's own output after the checkpoint and marks the alerts found
/// there as raised. Returns how many it found.
fn recover_raised(
    config: &AppConfig,
    output: &str,
    checkpoint: &mut Checkpoint,
) -> Result<usize, AppError> {
    let probe: BaseConsumer = config.client(consumer_config(&config.bootstrap)).create()?;
    let exists =
        !govbus_kafka::read::partitions(&probe, output, Duration::from_secs(10)).is_empty();
    if !exists {
        return Ok(0);
    }
    let mut found = 0;
    let mut reached = checkpoint.output.clone();
    let from = checkpoint.output.clone();
    govbus_kafka::read::each_from(
        &config.bootstrap,
        output,
        |p| {
            from.get(&p)
                .map_or(Offset::Beginning, |o| Offset::Offset(*o))
        },
        Duration::from_secs(5),
        Duration::from_secs(60),
        true,
        |r| {
            let e = reached.entry(r.partition).or_default();
            *e = (*e).max(r.offset + 1);
            if r.header(h::CE_TYPE) == ALERTS {
                checkpoint.detector.already_raised(r.header(h::CE_ID));
                found += 1;
            }
        },
    )?;
    checkpoint.output = reached;
    Ok(found)
}

/// Assigns every partition of the views at the checkpoint's offsets, waiting
/// for views that do not exist yet (the sink creates them when it starts).
fn assign(
    consumer: &BaseConsumer,
    views: &[String],
    checkpoint: &Checkpoint,
    stop: &AtomicBool,
) -> Result<(), AppError> {
    let mut tpl = TopicPartitionList::new();
    let mut waiting_logged = false;
    for view in views {
        loop {
            let partitions =
                govbus_kafka::read::partitions(consumer, view, Duration::from_secs(10));
            if !partitions.is_empty() {
                for p in partitions {
                    let offset = checkpoint
                        .inputs
                        .get(view)
                        .and_then(|m| m.get(&p))
                        .map_or(Offset::Beginning, |o| Offset::Offset(*o));
                    tpl.add_partition_offset(view, p, offset)?;
                }
                break;
            }
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            if !waiting_logged {
                tracing::info!(message = "Waiting for a feed's Kafka view to exist (is the sink running?).", topic = %view);
                waiting_logged = true;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    consumer.assign(&tpl)?;
    Ok(())
}

fn poll_batch(
    consumer: &BaseConsumer,
    max: usize,
    wait: Duration,
) -> Vec<rdkafka::error::KafkaResult<rdkafka::message::BorrowedMessage<'_>>> {
    let mut out = Vec::new();
    if let Some(first) = consumer.poll(wait) {
        out.push(first);
        while out.len() < max {
            match consumer.poll(Duration::ZERO) {
                Some(m) => out.push(m),
                None => break,
            }
        }
    }
    out
}

/// Publishes the alerts as JSON records of `hrss.fraud_alert` and waits
/// until the broker acknowledged every one.
fn publish(
    producer: &ThreadedProducer<Ctx>,
    acks: &Mutex<Acks>,
    topic: &str,
    department: &str,
    alerts: &[Alert],
) -> Result<(), AppError> {
    let now = now_ms();
    let time = govbus_catalog::time::format_rfc3339_millis(now);
    let source = format!("/departments/{department}");
    for a in alerts {
        let body = serde_json::json!({
            "alert_id": a.alert_id,
            "rule": a.rule.code(),
            "person_ref": a.person_ref,
            "month": a.month,
            "benefit_dataset": a.benefit_dataset,
            "benefit_record": a.benefit_record,
            "amount": two_places(&a.amount),
            "evidence_dataset": a.evidence_dataset,
            "evidence_record": a.evidence_record,
            "detected_at": time,
        })
        .to_string();
        let headers = h::owned([
            (h::CE_SPECVERSION, b"1.0".as_slice()),
            (h::CE_ID, a.alert_id.as_bytes()),
            (h::CE_SOURCE, source.as_bytes()),
            (h::CE_TYPE, ALERTS.as_bytes()),
            (h::CE_TIME, time.as_bytes()),
            (h::CE_OP, b"create".as_slice()),
            (h::CONTENT_TYPE, b"application/json".as_slice()),
        ]);
        let record = BaseRecord::to(topic)
            .key(a.alert_id.as_bytes())
            .payload(body.as_bytes())
            .headers(headers);
        govbus_kafka::produce::send_waiting(producer, record)?;
    }
    while producer.flush(Duration::from_secs(5)).is_err() {
        tracing::warn!(message = "Alerts not acknowledged yet; waiting for the broker.");
    }
    if let Ok(mut a) = acks.lock() {
        if a.failed > 0 {
            let detail = a.first_error.take().unwrap_or_default();
            a.failed = 0;
            return Err(AppError::Kafka(
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::Fail,
                ),
            ))
            .inspect_err(
                |_| tracing::error!(message = "An alert could not be published.", %detail),
            );
        }
    }
    Ok(())
}

/// A decimal string with at most two places (payments are whole cents; the
/// feeds may carry trailing zeros, `1234.5000`).
fn two_places(amount: &str) -> String {
    match amount.split_once('.') {
        Some((whole, frac)) => {
            let frac = frac.trim_end_matches('0');
            let frac = if frac.len() < 2 {
                format!("{frac:0<2}")
            } else {
                frac.to_owned()
            };
            format!("{whole}.{frac}")
        }
        None => format!("{amount}.00"),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn amounts_keep_two_places() {
        assert_eq!(two_places("1234.5000"), "1234.50");
        assert_eq!(two_places("1234.0000"), "1234.00");
        assert_eq!(two_places("7"), "7.00");
        assert_eq!(two_places("0.125"), "0.125");
    }

    #[test]
    fn a_checkpoint_survives_a_round_trip_and_a_torn_write_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Checkpoint::default();
        c.inputs.entry("view.x".into()).or_default().insert(3, 42);
        c.output.insert(0, 7);
        c.detector.already_raised("fa-1");
        c.save(dir.path()).unwrap();
        let back = Checkpoint::load(dir.path()).unwrap();
        assert_eq!(back.inputs["view.x"][&3], 42);
        assert_eq!(back.output[&0], 7);
        assert_eq!(back.detector.raised(), 1);
        std::fs::write(Checkpoint::path(dir.path()), b"{\"inputs\": {").unwrap();
        let e = Checkpoint::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a checkpoint"), "{e}");
    }
}
