//! The app around the rules: reads the four Kafka views, keeps its state in
//! a `govbus-state` store, publishes alert changes to `ingest.<owner>` (the
//! router checks them like any record).
//!
//! One batch is one store transaction: the records it changed, the alerts
//! it raised, updated or withdrew, the input offsets it consumed and the
//! output offsets its alerts reached commit together. The alerts are
//! acknowledged by the broker *before* that commit, so a crash can only lose
//! a commit, never an alert: the restarted app resumes from the last commit
//! (nothing missed) and, before anything else, reads its own output from the
//! committed output offsets and records every alert found there as
//! published (nothing repeated). Restart time depends on the uncommitted
//! tail, not on the size of the state.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use govbus_kafka::headers as h;
use govbus_kafka::limits::{record_bytes, MAX_PUBLISHED_BYTES, MAX_RECORD_BYTES};
use govbus_kafka::topics::Topics;
use govbus_state::{StateError, Store, DEFAULT_CACHE_BYTES};
use prometheus::{Encoder, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::detect::{Alert, Change, Feed, Input, Rule, RuleParams, ALERTS};
use crate::state::{self, AlertRow, Kv as _, Outcome, Reason, Status, Tbl, TxnKv};

/// The subscriptions (in the sample catalog) whose views feed the app.
pub const FEEDS: [&str; 4] = [
    "hrss_fraud_deaths",
    "hrss_fraud_pensions",
    "hrss_fraud_unemployment",
    "hrss_fraud_contributions",
];

/// The store file in the state directory.
pub const STORE_FILE: &str = "fraud.redb";

/// Header on each alert publication: the input positions (`topic:partition:next`,
/// comma-separated) of the batch that produced it. A restart after a crash
/// re-reads at least that far before it publishes anything, so the
/// re-processed records never publish a state the crashed run had already
/// moved past (an alert withdrawn and raised again only because the feeds
/// interleaved differently the second time).
const INPUTS_HEADER: &str = "govbus.fraud.inputs";

const META_STANDING: &str = "fraud.standing";
const META_WITHDRAWN: &str = "fraud.withdrawn";

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
    /// Where the state store lives ([`STORE_FILE`] inside).
    pub state_dir: PathBuf,
    /// Rule parameters (default: [`RuleParams::default`]).
    pub params: RuleParams,
    /// Records per batch (one store commit each); default 2,000.
    pub batch: usize,
    /// Page cache of the store, bytes (default [`DEFAULT_CACHE_BYTES`]).
    pub cache_bytes: usize,
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
            params: RuleParams::default(),
            batch: 2000,
            cache_bytes: DEFAULT_CACHE_BYTES,
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
    /// The state store failed.
    #[error("{0}")]
    State(#[from] StateError),
    /// The broker refused an alert.
    #[error("an alert could not be published: {0}")]
    Publish(String),
}

/// The app's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    inputs: IntCounterVec,
    unreadable: IntCounterVec,
    stale: IntCounterVec,
    alerts: IntCounterVec,
    updated: IntCounterVec,
    withdrawn: IntCounterVec,
    raised: IntGauge,
    standing: IntGauge,
    withdrawn_now: IntGauge,
    recovered: IntGauge,
    unpublishable: IntCounterVec,
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
        let vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| unreachable!("{e}"));
            let _ = registry.register(Box::new(c.clone()));
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).unwrap_or_else(|e| unreachable!("{e}"));
            let _ = registry.register(Box::new(g.clone()));
            g
        };
        Metrics {
            inputs: vec(
                "govbus_fraud_inputs_total",
                "Feed records read, by dataset.",
                &["dataset"],
            ),
            unreadable: vec(
                "govbus_fraud_unreadable_total",
                "Feed records the rules could not read (a field missing from the grant), by dataset.",
                &["dataset"],
            ),
            stale: vec(
                "govbus_fraud_stale_total",
                "Feed records older (by source version) than the version held, ignored, by dataset.",
                &["dataset"],
            ),
            alerts: vec(
                "govbus_fraud_alerts_total",
                "Alerts raised (published as standing: new, or again after a withdrawal) by this process, by rule.",
                &["rule"],
            ),
            updated: vec(
                "govbus_fraud_alerts_updated_total",
                "Standing alerts republished with other content (evidence or amount corrected) by this process, by rule.",
                &["rule"],
            ),
            withdrawn: vec(
                "govbus_fraud_alerts_withdrawn_total",
                "Alerts withdrawn (the records no longer support them) by this process, by rule and reason.",
                &["rule", "reason"],
            ),
            raised: gauge(
                "govbus_fraud_alerts_raised",
                "Distinct alerts ever raised, standing or withdrawn (kept across restarts).",
            ),
            standing: gauge(
                "govbus_fraud_alerts_standing",
                "Alerts standing now (kept across restarts).",
            ),
            withdrawn_now: gauge(
                "govbus_fraud_alerts_withdrawn",
                "Alerts withdrawn now (kept across restarts).",
            ),
            recovered: gauge(
                "govbus_fraud_recovered_alerts",
                "Alert publications found in the app's own output at start that the last commit did not cover (not published again).",
            ),
            unpublishable: vec(
                "govbus_fraud_alerts_unpublishable_total",
                "Alert publications left out because the record would exceed the bus's record size (the records they name have keys hundreds of kilobytes long), by rule. The alert stays in the app's state.",
                &["rule"],
            ),
            registry,
        }
    }

    /// Alert publications left out as too large, by rule.
    pub fn unpublishable(&self, rule: &str) -> u64 {
        self.unpublishable.with_label_values(&[rule]).get()
    }

    /// Alerts raised by this process, by rule.
    pub fn alerts(&self, rule: &str) -> u64 {
        self.alerts.with_label_values(&[rule]).get()
    }

    /// Alerts withdrawn by this process, by rule (every reason).
    pub fn withdrawn(&self, rule: &str) -> u64 {
        Reason::ALL
            .iter()
            .map(|r| self.withdrawn.with_label_values(&[rule, r.code()]).get())
            .sum()
    }

    /// Alerts standing and withdrawn now (kept in the store).
    pub fn standing_and_withdrawn(&self) -> (i64, i64) {
        (self.standing.get(), self.withdrawn_now.get())
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    fn count(&self, outcomes: &[Outcome]) {
        for o in outcomes {
            let rule = o.after.alert.rule.code();
            if o.raises() {
                self.alerts.with_label_values(&[rule]).inc();
            } else if o.withdraws() {
                if let Status::Withdrawn(r) = o.after.status {
                    self.withdrawn.with_label_values(&[rule, r.code()]).inc();
                }
            } else if o.after.status == Status::Standing {
                self.updated.with_label_values(&[rule]).inc();
            }
        }
    }

    fn set_counts(&self, c: Counts) {
        self.standing.set(c.standing);
        self.withdrawn_now.set(c.withdrawn);
        self.raised.set(c.standing + c.withdrawn);
    }
}

/// Alerts standing and withdrawn, kept in the store's metadata.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    standing: i64,
    withdrawn: i64,
}

impl Counts {
    fn read(
        meta: impl Fn(&str) -> Result<Option<Vec<u8>>, StateError>,
    ) -> Result<Counts, StateError> {
        let get = |k| -> Result<i64, StateError> {
            Ok(meta(k)?
                .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                .map_or(0, i64::from_be_bytes))
        };
        Ok(Counts {
            standing: get(META_STANDING)?,
            withdrawn: get(META_WITHDRAWN)?,
        })
    }

    fn write(self, tx: &govbus_state::WriteTxn) -> Result<(), StateError> {
        tx.set_meta(META_STANDING, &self.standing.to_be_bytes())?;
        tx.set_meta(META_WITHDRAWN, &self.withdrawn.to_be_bytes())
    }

    fn add(&mut self, o: &Outcome) {
        let delta = |s: Option<Status>| match s {
            Some(Status::Standing) => (1, 0),
            Some(Status::Withdrawn(_)) => (0, 1),
            None => (0, 0),
        };
        let (bs, bw) = delta(o.before.as_ref().map(|b| b.status));
        let (as_, aw) = delta(Some(o.after.status));
        self.standing += as_ - bs;
        self.withdrawn += aw - bw;
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

/// Runs until `stop` is set.
pub fn run(config: &AppConfig, metrics: &Metrics, stop: &AtomicBool) -> Result<(), AppError> {
    let path = config.state_dir.join(STORE_FILE);
    let (store, rebuilt) = Store::open_or_rebuild(&path, config.cache_bytes)?;
    if let Some(why) = rebuilt {
        tracing::warn!(message = "The fraud state store was damaged; rebuilding it from the feeds.", %why);
    }
    let output = config.topics.ingest(&config.department);
    let (recovered, mut frontier) = recover(config, &store, &output)?;
    let read = store.read()?;
    let counts = Counts::read(|k| read.meta(k))?;
    drop(read);
    metrics.set_counts(counts);
    metrics.recovered.set(recovered as i64);
    tracing::info!(
        message = "Anti-fraud app starting.",
        standing = counts.standing,
        withdrawn = counts.withdrawn,
        found_in_output_after_commit = recovered
    );
    // Fault injection for the restart tests: die between the broker's
    // acknowledgement of alerts and the commit that covers them.
    let crash_after_publish =
        std::env::var("GOVBUS_FRAUD_FAIL_POINT").as_deref() == Ok("after_publish");

    let acks = Arc::new(Mutex::new(Acks::default()));
    let producer: ThreadedProducer<Ctx> = config
        .client(govbus_kafka::config::producer(&config.bootstrap))
        .create_with_context(Ctx(acks.clone()))?;
    let consumer: BaseConsumer = config.client(consumer_config(&config.bootstrap)).create()?;
    let views: Vec<String> = config.feeds.iter().map(|f| config.topics.view(f)).collect();
    if !assign(&consumer, &views, &store, stop)? {
        return Ok(());
    }
    let mut positions = committed_positions(&store, &views)?;
    while !stop.load(Ordering::Relaxed) {
        let mut batch = poll_batch(&consumer, config.batch.max(1), Duration::from_millis(200));
        if batch.is_empty() {
            continue;
        }
        if !frontier.is_empty() {
            // After a crash: one batch up to where the crashed run had read
            // when it last published (see INPUTS_HEADER).
            let waiting = std::time::Instant::now();
            advance(&mut positions, &batch);
            while !reached(&positions, &frontier) && !stop.load(Ordering::Relaxed) {
                let more = poll_batch(&consumer, config.batch.max(1), Duration::from_millis(200));
                advance(&mut positions, &more);
                batch.extend(more);
                if waiting.elapsed() > Duration::from_secs(60) {
                    tracing::warn!(message = "The feeds did not reach the positions of the last publication within 60 s; going on (an alert may be published again).");
                    break;
                }
            }
            frontier.clear();
        }
        let tx = store.write()?;
        let mut counts = Counts::read(|k| tx.meta(k))?;
        let (net, inputs) = apply_batch(config, metrics, &tx, &batch)?;
        if !net.is_empty() {
            publish(
                &producer,
                &acks,
                metrics,
                &output,
                &config.department,
                &net,
                &inputs,
            )?;
            if let Ok(a) = acks.lock() {
                for (p, o) in &a.reached {
                    tx.set_offset(&output, *p, *o)?;
                }
            }
            for o in &net {
                counts.add(o);
            }
            counts.write(&tx)?;
            if crash_after_publish {
                tracing::error!(
                    message = "GOVBUS_FRAUD_FAIL_POINT=after_publish: aborting before the commit."
                );
                std::process::abort();
            }
        }
        tx.commit()?;
        metrics.count(&net);
        metrics.set_counts(counts);
    }
    tracing::info!(message = "Anti-fraud app stopped.");
    Ok(())
}

/// Applies a batch inside `tx`: records, alert rows, input offsets. Returns
/// each alert that changed, once, as it was before the batch and after it.
fn apply_batch(
    config: &AppConfig,
    metrics: &Metrics,
    tx: &govbus_state::WriteTxn,
    batch: &[rdkafka::error::KafkaResult<BorrowedMessage<'_>>],
) -> Result<(Vec<Outcome>, String), AppError> {
    let mut kv = TxnKv::open(tx)?;
    let mut offsets: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut net: Vec<Outcome> = Vec::new();
    let mut at: BTreeMap<String, usize> = BTreeMap::new();
    for m in batch {
        let m = match m {
            Ok(m) => m,
            Err(error) => {
                tracing::warn!(message = "Reading a feed failed; retrying.", %error);
                continue;
            }
        };
        offsets.insert((m.topic().to_owned(), m.partition()), m.offset() + 1);
        let dataset = m
            .headers()
            .and_then(|hs| h::get_str(hs, h::CE_TYPE))
            .unwrap_or("");
        metrics.inputs.with_label_values(&[label(dataset)]).inc();
        let change = match read_change(m, dataset) {
            Ok(c) => c,
            Err(problem) => {
                metrics
                    .unreadable
                    .with_label_values(&[label(dataset)])
                    .inc();
                tracing::warn!(message = "A feed record could not be read; skipped.", dataset = label(dataset), %problem);
                continue;
            }
        };
        let applied = state::apply(&mut kv, &config.params, &change)?;
        if applied.stale {
            metrics.stale.with_label_values(&[label(dataset)]).inc();
        }
        for o in applied.outcomes {
            match at.get(&o.after.alert.alert_id) {
                Some(&i) => net[i].after = o.after,
                None => {
                    at.insert(o.after.alert.alert_id.clone(), net.len());
                    net.push(o);
                }
            }
        }
    }
    // An alert raised and withdrawn within the batch was never seen: it is
    // forgotten, as if never raised. One that went and came back within the
    // batch is not published again.
    let mut kept = Vec::with_capacity(net.len());
    for o in net {
        match &o.before {
            None if o.after.status != Status::Standing => {
                kv.delete(Tbl::Alerts, o.after.alert.alert_id.as_bytes())?;
            }
            Some(b) if b.status == o.after.status && b.alert == o.after.alert => {}
            _ => kept.push(o),
        }
    }
    drop(kv);
    let mut inputs = Vec::with_capacity(offsets.len());
    for ((topic, p), next) in offsets {
        tx.set_offset(&topic, p, next)?;
        inputs.push(format!("{topic}:{p}:{next}"));
    }
    Ok((kept, inputs.join(",")))
}

type Positions = BTreeMap<(String, i32), i64>;

/// The store's committed input positions of `views`.
fn committed_positions(store: &Store, views: &[String]) -> Result<Positions, AppError> {
    let read = store.read()?;
    let mut out = Positions::new();
    for v in views {
        for (p, o) in read.offsets(v)? {
            out.insert((v.clone(), p), o);
        }
    }
    Ok(out)
}

fn advance(positions: &mut Positions, batch: &[rdkafka::error::KafkaResult<BorrowedMessage<'_>>]) {
    for m in batch.iter().flatten() {
        let e = positions
            .entry((m.topic().to_owned(), m.partition()))
            .or_default();
        *e = (*e).max(m.offset() + 1);
    }
}

fn reached(positions: &Positions, frontier: &Positions) -> bool {
    frontier
        .iter()
        .all(|(k, want)| positions.get(k).is_some_and(|have| have >= want))
}

/// Parses an [`INPUTS_HEADER`] value into `into` (the furthest position wins).
fn merge_inputs(value: &str, into: &mut Positions) {
    for item in value.split(',') {
        let mut parts = item.rsplitn(3, ':');
        let (Some(next), Some(p), Some(topic)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(next), Ok(p)) = (next.parse::<i64>(), p.parse::<i32>()) else {
            continue;
        };
        let e = into.entry((topic.to_owned(), p)).or_default();
        *e = (*e).max(next);
    }
}

/// Reads one view message as a change: the Kafka key names the record, the
/// value (none for a delete) is the record, `ce_sourceversion` its version.
fn read_change(m: &BorrowedMessage<'_>, dataset: &str) -> Result<Change, String> {
    let feed = Feed::of(dataset).ok_or_else(|| format!("not a feed of this app: {dataset}"))?;
    let version = m
        .headers()
        .and_then(|hs| h::get_str(hs, h::CE_SOURCEVERSION))
        .map_or(Ok(0), str::parse::<u64>)
        .map_err(|_| "ce_sourceversion is not a number".to_owned())?;
    let value = match m.payload() {
        None => None,
        Some(bytes) => {
            let v: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
            Some(Input::from_json(dataset, &v).map_err(|e| e.to_string())?)
        }
    };
    let key = match (m.key().map(std::str::from_utf8), &value) {
        (Some(Ok(k)), _) if !k.is_empty() => k.to_owned(),
        (_, Some(v)) => v.record().to_owned(),
        _ => return Err("a delete without a record key".to_owned()),
    };
    Ok(Change {
        feed,
        key,
        version,
        value,
    })
}

/// Metric label for a dataset header: a feed name, or `other`.
fn label(dataset: &str) -> &str {
    Feed::of(dataset).map_or("other", Feed::dataset)
}

fn consumer_config(bootstrap: &str) -> ClientConfig {
    let mut c = govbus_kafka::config::fetching(bootstrap);
    c.set("group.id", "govbus-fraud")
        .set("enable.auto.commit", "false")
        // A committed offset the broker no longer has (retention, a
        // recreated view) restarts the feed from its beginning: replaying is
        // safe (records are last-write-wins by version, alerts reconciled),
        // skipping to the end would lose records.
        .set("auto.offset.reset", "earliest");
    c
}

/// Reads the app's own output after the committed output offsets and
/// records every alert publication found there. Returns how many it found.
fn recover(
    config: &AppConfig,
    store: &Store,
    output: &str,
) -> Result<(usize, Positions), AppError> {
    let probe: BaseConsumer = config.client(consumer_config(&config.bootstrap)).create()?;
    let mut frontier = Positions::new();
    if govbus_kafka::read::partitions(&probe, output, Duration::from_secs(10)).is_empty() {
        return Ok((0, frontier));
    }
    let from = store.read()?.offsets(output)?;
    let mut reached = from.clone();
    let mut rows = Vec::new();
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
                merge_inputs(r.header(INPUTS_HEADER), &mut frontier);
                let version = r.header(h::CE_SOURCEVERSION).parse().unwrap_or(1);
                if let Some(row) = r.value.as_deref().and_then(|v| parse_alert(v, version)) {
                    rows.push(row);
                }
            }
        },
    )?;
    let tx = store.write()?;
    let mut counts = Counts::read(|k| tx.meta(k))?;
    {
        let mut kv = TxnKv::open(&tx)?;
        for row in &rows {
            if let Some(o) = state::recover_alert(&mut kv, row)? {
                counts.add(&o);
            }
        }
    }
    counts.write(&tx)?;
    for (p, o) in reached {
        tx.set_offset(output, p, o)?;
    }
    tx.commit()?;
    Ok((rows.len(), frontier))
}

/// An alert publication, as the app writes it (older ones have no status:
/// they stood).
fn parse_alert(body: &[u8], version: u64) -> Option<AlertRow> {
    let v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    let status = match s("status").as_deref() {
        Some("withdrawn") => Status::Withdrawn(
            s("withdrawn_reason")
                .as_deref()
                .and_then(Reason::from_code)
                .unwrap_or(Reason::EvidenceCorrected),
        ),
        _ => Status::Standing,
    };
    Some(AlertRow {
        version,
        status,
        alert: Alert {
            alert_id: s("alert_id")?,
            rule: Rule::from_code(&s("rule")?)?,
            person_ref: s("person_ref")?,
            month: s("month")?,
            benefit_dataset: s("benefit_dataset")?,
            benefit_record: s("benefit_record")?,
            amount: s("amount")?,
            evidence_dataset: s("evidence_dataset")?,
            evidence_record: s("evidence_record")?,
        },
    })
}

/// Assigns every partition of the views at the committed offsets, waiting
/// for views that do not exist yet (the sink creates them when it starts).
/// `false` when stopped while waiting.
fn assign(
    consumer: &BaseConsumer,
    views: &[String],
    store: &Store,
    stop: &AtomicBool,
) -> Result<bool, AppError> {
    let mut tpl = TopicPartitionList::new();
    let mut waiting_logged = false;
    let read = store.read()?;
    for view in views {
        let committed = read.offsets(view)?;
        loop {
            let partitions =
                govbus_kafka::read::partitions(consumer, view, Duration::from_secs(10));
            if !partitions.is_empty() {
                for p in partitions {
                    let offset = committed
                        .get(&p)
                        .map_or(Offset::Beginning, |o| Offset::Offset(*o));
                    tpl.add_partition_offset(view, p, offset)?;
                }
                break;
            }
            if stop.load(Ordering::Relaxed) {
                return Ok(false);
            }
            if !waiting_logged {
                tracing::info!(message = "Waiting for a feed's Kafka view to exist (is the sink running?).", topic = %view);
                waiting_logged = true;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    consumer.assign(&tpl)?;
    Ok(true)
}

fn poll_batch(
    consumer: &BaseConsumer,
    max: usize,
    wait: Duration,
) -> Vec<rdkafka::error::KafkaResult<BorrowedMessage<'_>>> {
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

/// The JSON record of `hrss.fraud_alert` for an alert as it is now.
pub(crate) fn alert_body(row: &AlertRow, detected_at: &str) -> serde_json::Value {
    let a = &row.alert;
    let reason = match row.status {
        Status::Standing => serde_json::Value::Null,
        Status::Withdrawn(r) => r.code().into(),
    };
    serde_json::json!({
        "alert_id": a.alert_id,
        "rule": a.rule.code(),
        "person_ref": a.person_ref,
        "month": a.month,
        "benefit_dataset": a.benefit_dataset,
        "benefit_record": a.benefit_record,
        "amount": a.amount,
        "evidence_dataset": a.evidence_dataset,
        "evidence_record": a.evidence_record,
        "detected_at": detected_at,
        "status": row.status.code(),
        "withdrawn_reason": reason,
    })
}

/// Publishes each changed alert as a record of `hrss.fraud_alert` (a create
/// the first time, an update after) and waits until the broker
/// acknowledged every one.
fn publish(
    producer: &ThreadedProducer<Ctx>,
    acks: &Mutex<Acks>,
    metrics: &Metrics,
    topic: &str,
    department: &str,
    changed: &[Outcome],
    inputs: &str,
) -> Result<(), AppError> {
    let time = govbus_catalog::time::format_rfc3339_millis(now_ms());
    let source = format!("/departments/{department}");
    for o in changed {
        let row = &o.after;
        let body = alert_body(row, &time).to_string();
        let id = format!("{}-{}", row.alert.alert_id, row.version);
        let version = row.version.to_string();
        let op: &[u8] = if o.before.is_none() {
            b"create"
        } else {
            b"update"
        };
        let headers = h::owned([
            (h::CE_SPECVERSION, b"1.0".as_slice()),
            (h::CE_ID, id.as_bytes()),
            (h::CE_SOURCE, source.as_bytes()),
            (h::CE_TYPE, ALERTS.as_bytes()),
            (h::CE_TIME, time.as_bytes()),
            (h::CE_OP, op),
            (h::CE_SOURCEVERSION, version.as_bytes()),
            (h::CONTENT_TYPE, b"application/json".as_slice()),
            (INPUTS_HEADER, inputs.as_bytes()),
        ]);
        let key = row.alert.alert_id.as_bytes();
        let bytes = record_bytes(Some(key), Some(body.as_bytes()), Some(&headers));
        // The publishing edge's bound (`limits::publishable`; canonical Avro
        // is never larger than this JSON), and the producer's own.
        if bytes > MAX_RECORD_BYTES || 2 * key.len() + body.len() > MAX_PUBLISHED_BYTES {
            // No producer writes it (on any attempt: publishing it would stop
            // the app for good), or the router would only dead-letter it.
            // Said and counted, never silent.
            let rule = row.alert.rule.code();
            metrics.unpublishable.with_label_values(&[rule]).inc();
            tracing::error!(message = "Alert not published: its record would exceed the bus's record size (the payment or evidence keys it names are that long). It stays in the app's state.", alert_id = %row.alert.alert_id, rule, bytes, limit = MAX_PUBLISHED_BYTES);
            continue;
        }
        let record = BaseRecord::to(topic)
            .key(key)
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
            return Err(AppError::Publish(detail));
        }
    }
    Ok(())
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
    fn input_positions_read_back_and_the_furthest_wins() {
        let mut f = Positions::new();
        merge_inputs("p.view.hrss_fraud_deaths:0:12,p.view.x:2:5", &mut f);
        merge_inputs(
            "p.view.hrss_fraud_deaths:0:9,garbage,:1:,p.view.x:2:7",
            &mut f,
        );
        merge_inputs("", &mut f);
        let want: Positions = [
            (("p.view.hrss_fraud_deaths".to_owned(), 0), 12),
            (("p.view.x".to_owned(), 2), 7),
        ]
        .into();
        assert_eq!(f, want);
        let mut at = Positions::new();
        assert!(!reached(&at, &want));
        at.insert(("p.view.hrss_fraud_deaths".to_owned(), 0), 12);
        at.insert(("p.view.x".to_owned(), 2), 6);
        assert!(!reached(&at, &want));
        at.insert(("p.view.x".to_owned(), 2), 8);
        assert!(reached(&at, &want));
    }

    #[test]
    fn a_published_alert_reads_back_as_the_same_row() {
        let row = AlertRow {
            version: 3,
            status: Status::Withdrawn(Reason::PaymentCorrected),
            alert: Alert {
                alert_id: crate::alert_id(Rule::PaidAfterDeath, crate::PENSIONS, "P-1"),
                rule: Rule::PaidAfterDeath,
                person_ref: "ps_1".into(),
                month: "2026-04".into(),
                benefit_dataset: crate::PENSIONS.into(),
                benefit_record: "P-1".into(),
                amount: "10.00".into(),
                evidence_dataset: crate::DEATHS.into(),
                evidence_record: "DR-1".into(),
            },
        };
        let body = alert_body(&row, "2026-05-01T00:00:00.000Z").to_string();
        assert_eq!(parse_alert(body.as_bytes(), 3), Some(row.clone()));
        let standing = AlertRow {
            status: Status::Standing,
            ..row
        };
        let body = alert_body(&standing, "2026-05-01T00:00:00.000Z");
        assert_eq!(body["withdrawn_reason"], serde_json::Value::Null);
        assert_eq!(parse_alert(body.to_string().as_bytes(), 3), Some(standing));
    }

    /// The catalog's checks (the router's) accept what the app publishes,
    /// standing and withdrawn, under the latest schema version.
    #[test]
    fn the_catalog_accepts_standing_and_withdrawn_alerts() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
        let catalog = govbus_catalog::Catalog::load(&dir).unwrap_or_else(|p| panic!("{p}"));
        let engine = govbus_validate::Engine::new(&catalog).unwrap();
        let now = now_ms();
        let ctx = govbus_validate::Context::at(now);
        let time = govbus_catalog::time::format_rfc3339_millis(now);
        let mut row = AlertRow {
            version: 1,
            status: Status::Standing,
            alert: Alert {
                alert_id: crate::alert_id(
                    Rule::UnemploymentWithPension,
                    crate::UNEMPLOYMENT,
                    "U-1",
                ),
                rule: Rule::UnemploymentWithPension,
                person_ref: "ps_1".into(),
                month: "2026-04".into(),
                benefit_dataset: crate::UNEMPLOYMENT.into(),
                benefit_record: "U-1".into(),
                amount: "1800.50".into(),
                evidence_dataset: crate::PENSIONS.into(),
                evidence_record: "P-1".into(),
            },
        };
        for status in [
            Status::Standing,
            Status::Withdrawn(Reason::PaymentDeleted),
            Status::Withdrawn(Reason::EvidenceCorrected),
        ] {
            row.status = status;
            let body = alert_body(&row, &time).to_string();
            let verdict = engine.validate_json(ALERTS, body.as_bytes(), &ctx);
            assert!(verdict.is_ok(), "{body}: {:?}", verdict.err());
        }
        let mut bad = alert_body(&row, &time);
        bad["status"] = "maybe".into();
        let verdict = engine.validate_json(ALERTS, bad.to_string().as_bytes(), &ctx);
        assert!(verdict.is_err(), "an unknown status passed");
    }
}
