//! Running subscriptions: one consumer group per subscription
//! (`govbus.sub.<id>`), the grant checked on every batch, offsets stored only
//! after the effect is durable and the delivery is in the ledger.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use govbus_catalog::{Catalog, Dataset, SchemaId, SinkSpec, Subscription};
use govbus_kafka::headers as h;
use govbus_kafka::retry::Backoff;
use govbus_kafka::stage::{self, blocking, Fenced, Prepare, Revocations, Settled, Stage};
use govbus_kafka::topics::Topics;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::decode::DecodeError;
use crate::event::{
    prepare, Canonical, Delivery, Prepared, SchemaWait, OUT_OF_SCOPE, SCHEMA_RECHECK, SCHEMA_WAIT,
};
use crate::ledger::{self, Ledger};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::sinks::file::FileSink;
use crate::sinks::postgres::{self, PgSink};
use crate::sinks::view::ViewSink;
use crate::sinks::webhook::Webhook;
use crate::sinks::{Batch, Ended, Sink};

/// Settings of a sink process.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Kafka bootstrap servers.
    pub bootstrap: String,
    /// Topic names.
    pub topics: Topics,
    /// Secret from which per-subscriber pseudonym keys are derived.
    pub pseudonym_secret: Vec<u8>,
    /// Key authenticating the delivery ledger's entries (`GOVBUS_LEDGER_KEY`).
    pub ledger_key: Vec<u8>,
    /// PEM file of the CAs an https:// webhook's certificate must chain to
    /// (replacing the Mozilla root set). Default: none.
    pub webhook_ca: Option<std::path::PathBuf>,
    /// The directory file sinks' `dir`s are below. Default: the working directory.
    pub file_root: std::path::PathBuf,
    /// Default PostgreSQL connection for `postgres` sinks without `conninfo`.
    pub postgres: Option<String>,
    /// Run only these subscriptions (empty: every non-SSE subscription).
    pub only: Vec<String>,
    /// Records per batch.
    pub max_batch: usize,
    /// How long a batch waits to fill.
    pub linger: Duration,
    /// Extra librdkafka settings (`key=value`) for every client.
    pub client_overrides: Vec<(String, String)>,
    /// Create `_govbus.audit`, `dlq.sub.*` and `view.*` when missing (off for
    /// brokers without CreateTopics, where they are provisioned).
    pub create_topics: bool,
}

impl SinkConfig {
    /// Defaults for `bootstrap`.
    pub fn new(bootstrap: impl Into<String>) -> SinkConfig {
        SinkConfig {
            bootstrap: bootstrap.into(),
            topics: Topics::default(),
            pseudonym_secret: Vec::new(),
            ledger_key: crate::ledger::DEV_LEDGER_KEY.to_vec(),
            file_root: std::path::PathBuf::from("."),
            webhook_ca: None,
            postgres: None,
            only: Vec::new(),
            max_batch: 1000,
            linger: Duration::from_millis(20),
            client_overrides: Vec::new(),
            create_topics: true,
        }
    }

    /// The consumer group of subscription `id`.
    pub fn group(&self, id: &str) -> String {
        format!("{}govbus.sub.{id}", self.topics.prefix())
    }

    /// `<prefix>dlq.sub.<id>`.
    pub fn dlq(&self, id: &str) -> String {
        self.topics.subscription_dlq(id)
    }

    /// `<prefix>view.<id>`.
    pub fn view(&self, id: &str) -> String {
        self.topics.view(id)
    }

    /// `<prefix>_govbus.audit`.
    pub fn audit(&self) -> String {
        self.topics.audit()
    }

    /// `c` with the overrides; consumer-only settings are given to
    /// consumers only (librdkafka warns about them elsewhere).
    fn client(&self, mut c: ClientConfig) -> ClientConfig {
        let consumer = c.get("group.id").is_some();
        for (k, v) in &self.client_overrides {
            let consumer_only = [
                "session.",
                "heartbeat.",
                "fetch.",
                "auto.",
                "enable.auto.",
                "isolation.",
                "max.poll.",
                "queued.",
                "group.",
            ]
            .iter()
            .any(|p| k.starts_with(p));
            if consumer || !consumer_only {
                c.set(k, v);
            }
        }
        c
    }
}

/// Why a sink cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Kafka client creation or subscription failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The ledger could not be opened.
    #[error(transparent)]
    Ledger(#[from] ledger::LedgerError),
}

pub(crate) struct Shared {
    pub(crate) config: SinkConfig,
    pub(crate) catalog: watch::Receiver<Arc<Catalog>>,
    pub(crate) metrics: Metrics,
    pub(crate) ledger: Arc<Ledger>,
    pub(crate) producer: FutureProducer,
}

/// A running sink process: every subscription it is responsible for.
pub struct Sinks {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Sinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sinks").finish_non_exhaustive()
    }
}

/// How long a stop waits for a batch in hand when the broker or the
/// destination does not answer (the ledger's close entry then gets 5 s).
pub const STOP_GRACE: Duration = Duration::from_secs(15);

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Creates `topics` when the configuration allows it
/// ([`govbus_kafka::admin::ensure_topics`]).
pub async fn ensure_topics(config: &SinkConfig, topics: &[(String, i32)]) {
    if config.create_topics {
        govbus_kafka::admin::ensure_topics(&config.bootstrap, topics).await;
    }
}

impl Sinks {
    /// Opens the ledger and the shared producer.
    pub async fn start(
        config: SinkConfig,
        catalog: watch::Receiver<Arc<Catalog>>,
        metrics: Metrics,
    ) -> Result<Sinks, SinkError> {
        ensure_topics(&config, &[(config.audit(), 1)]).await;
        let ledger =
            Arc::new(Ledger::open(&config.bootstrap, &config.audit(), &config.ledger_key).await?);
        let producer: FutureProducer = config
            .client(govbus_kafka::config::producer(&config.bootstrap))
            .create()?;
        tracing::info!(message = "Delivery ledger ready; its chain opens with the first entry.", writer = %ledger.writer(), topic = %config.audit());
        Ok(Sinks {
            shared: Arc::new(Shared {
                config,
                catalog,
                metrics,
                ledger,
                producer,
            }),
        })
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Runs every selected subscription until `shutdown` turns true, then
    /// finishes the batches in hand and closes the ledger chain.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut running: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
        let mut live_streams: HashSet<String> = HashSet::new();
        // Subscriptions whose task panicked: panics so far, and not restarted
        // before this instant (1 s, 2 s, 4 s … at most 60 s), so a panic on
        // every run does not rebalance the group every second.
        let mut held: HashMap<String, (u32, tokio::time::Instant)> = HashMap::new();
        loop {
            let catalog = self.shared.catalog.borrow().clone();
            for id in reap(&mut running, &self.shared.metrics).await {
                let n = held.get(&id).map_or(1, |(n, _)| n + 1);
                let wait = Duration::from_secs(1 << (n - 1).min(6)).min(Duration::from_secs(60));
                held.insert(id, (n, tokio::time::Instant::now() + wait));
            }
            let now = tokio::time::Instant::now();
            self.shared
                .metrics
                .tasks_held(held.values().filter(|(_, until)| *until > now).count());
            for sub in catalog.subscriptions() {
                let selected = if self.shared.config.only.is_empty() {
                    !sub.sink.is_served()
                } else {
                    self.shared.config.only.contains(&sub.id)
                };
                let holding = held.get(&sub.id).is_some_and(|(_, until)| *until > now);
                if selected && !holding && !running.contains_key(&sub.id) && !sub.sink.is_served() {
                    let shared = self.shared.clone();
                    let id = sub.id.clone();
                    let sd = shutdown.clone();
                    running.insert(
                        sub.id.clone(),
                        tokio::spawn(async move { shared.run_subscription(id, sd).await }),
                    );
                }
            }
            self.shared
                .report_live_streams(&catalog, &mut live_streams, &running);
            tokio::select! {
                _ = shutdown.changed() => break,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if *shutdown.borrow() {
                break;
            }
        }
        for (_, task) in running {
            let _ = task.await;
        }
        // The close entry is acknowledged in milliseconds by a broker that
        // writes; one that took no entry within the batches' grace will not
        // take this one either.
        let close_wait = Duration::from_secs(5);
        match tokio::time::timeout(close_wait, self.shared.ledger.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(message = "Could not close the ledger chain.", %error);
            }
            Err(_) => {
                tracing::warn!(message = "The ledger did not take the chain's close entry in time; stopping without it (the chain reads as unclosed).", wait_s = close_wait.as_secs());
            }
        }
    }
}

/// Forgets every finished subscription task, so that the loop starts it
/// again. A task ends by itself only at shutdown or when its subscription
/// became a live stream; one that panicked is a bug: it is logged and
/// counted (`govbus_sink_task_panics_total`), then restarted from its
/// committed position like after a crash (after a growing pause), so
/// nothing is lost. Returns the subscriptions whose task panicked.
async fn reap(
    running: &mut HashMap<String, tokio::task::JoinHandle<()>>,
    metrics: &Metrics,
) -> Vec<String> {
    let mut panicked = Vec::new();
    let finished: Vec<String> = running
        .iter()
        .filter(|(_, task)| task.is_finished())
        .map(|(id, _)| id.clone())
        .collect();
    for id in finished {
        let Some(task) = running.remove(&id) else {
            continue;
        };
        if let Err(e) = task.await {
            if e.is_panic() {
                tracing::error!(message = "A subscription task panicked; it restarts from its committed position. Please report this as a bug.", subscription = %id);
                metrics.task_panicked(&id);
                panicked.push(id);
            }
        }
    }
    panicked
}

struct LagContext {
    metrics: Metrics,
    subscription: String,
    revocations: Revocations,
    /// Whether stored offsets are committed before a revocation (not for
    /// a sink that keeps its offsets with its effect).
    commits: bool,
}

impl ClientContext for LagContext {
    fn stats(&self, stats: Statistics) {
        let lag: i64 = stats
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
            .map(|p| p.consumer_lag)
            .sum();
        self.metrics.lag_records(&self.subscription, lag);
    }
}
impl ConsumerContext for LagContext {
    /// Records the revocation and commits what was delivered and stored:
    /// the new owner starts there (`stage::before_rebalance`).
    fn pre_rebalance(
        &self,
        consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        stage::before_rebalance(consumer, rebalance, self.commits);
    }
}

impl Fenced for LagContext {
    fn revocations(&self) -> &Revocations {
        &self.revocations
    }
}

type SubConsumer = StreamConsumer<LagContext>;

impl Shared {
    pub(crate) fn grant(&self, id: &str) -> Result<(Subscription, Dataset), &'static str> {
        let catalog = self.catalog.borrow().clone();
        let Some(sub) = catalog.subscription(id) else {
            return Err("deleted from the catalog");
        };
        if let Some(reason) = sub.inactive_reason(now_ms()) {
            return Err(reason);
        }
        let ds = catalog.dataset(&sub.dataset).ok_or("dataset removed")?;
        Ok((sub.clone(), ds.clone()))
    }

    /// Whether what was prepared under `sub` may still be delivered: the
    /// grant is valid and says what it said then (sink and destination,
    /// subscriber, dataset, field policy). A retried webhook body is built
    /// once; a grant narrowed or given to another department meanwhile
    /// must not receive it.
    pub(crate) fn as_granted(&self, policy: &Policy) -> Result<(), Ended> {
        let sub = policy.subscription();
        let (current, ds) = self.grant(&sub.id).map_err(Ended::Inactive)?;
        if current.sink != sub.sink
            || current.subscriber != sub.subscriber
            || current.dataset != sub.dataset
            || !policy.is_current(&current, &ds)
        {
            tracing::info!(message = "The grant changed while a webhook batch was being delivered; the rest is prepared again under the new grant.", subscription = %sub.id, policy = %current.policy_version);
            return Err(Ended::Reconfigure);
        }
        Ok(())
    }

    /// `govbus_sink_active` for live streams, refreshed every second by the
    /// supervisor: a live-stream subscription has no task of its own — the
    /// process's HTTP endpoint serves every one in the catalog — so it is
    /// active while its grant allows delivery, whether or not a client is
    /// connected (`govbus_sink_sse_clients` counts those). Subscriptions that
    /// stopped being live streams are reported inactive unless a task now
    /// runs them (it reports for itself).
    fn report_live_streams(
        &self,
        catalog: &Catalog,
        seen: &mut HashSet<String>,
        running: &HashMap<String, tokio::task::JoinHandle<()>>,
    ) {
        let mut now = HashSet::new();
        for sub in catalog.subscriptions().filter(|s| s.sink == SinkSpec::Sse) {
            self.metrics.active(&sub.id, self.grant(&sub.id).is_ok());
            now.insert(sub.id.clone());
        }
        for gone in seen.difference(&now) {
            if !running.contains_key(gone) {
                self.metrics.active(gone, false);
            }
        }
        *seen = now;
    }

    async fn run_subscription(self: Arc<Self>, id: String, mut shutdown: watch::Receiver<bool>) {
        let mut disabled: Option<SinkSpec> = None;
        let mut last_state = "";
        // A sink that failed starts again after 1 s, 2 s … at most 30 s;
        // one that ran for 30 s before failing starts from 1 s again.
        let mut restart = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        loop {
            if *shutdown.borrow() {
                return;
            }
            let granted = self.grant(&id);
            if matches!(&granted, Ok((sub, _)) if sub.sink.is_served()) {
                // Now served over HTTP (a live stream or a live interface);
                // the process serving it reports it.
                return;
            }
            let ready = match &granted {
                Ok((sub, _)) if disabled.as_ref() == Some(&sub.sink) => Err("disabled (HTTP 410)"),
                Ok(g) => Ok(g.clone()),
                Err(e) => Err(*e),
            };
            let (sub, ds) = match ready {
                Ok(g) => g,
                Err(state) => {
                    self.metrics.active(&id, false);
                    if state != last_state {
                        tracing::info!(message = "Subscription not delivering.", subscription = %id, state);
                        last_state = state;
                    }
                    tokio::select! {
                        _ = shutdown.changed() => {}
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                    continue;
                }
            };
            disabled = None;
            last_state = "";
            self.metrics.active(&id, true);
            tracing::info!(message = "Subscription delivering.", subscription = %id, subscriber = %sub.subscriber, dataset = %sub.dataset, sink = sub.sink.kind(), policy = %sub.policy_version);
            let began = Instant::now();
            let ended = self.deliver_while_granted(&sub, &ds, &mut shutdown).await;
            if began.elapsed() >= restart.cap() {
                restart.reset();
            }
            match ended {
                Ended::Shutdown => return,
                Ended::Inactive(reason) => {
                    self.metrics.active(&id, false);
                    tracing::warn!(message = "Delivery stopped: the grant no longer allows it.", subscription = %id, reason);
                }
                Ended::Reconfigure => {
                    tracing::info!(message = "Sink configuration changed; reopening.", subscription = %id);
                }
                Ended::Gone => {
                    self.metrics.active(&id, false);
                    tracing::error!(message = "Endpoint answered 410 Gone: delivery disabled until the subscription's sink changes.", subscription = %id);
                    disabled = Some(sub.sink.clone());
                }
                Ended::Failed(error) => {
                    self.metrics.active(&id, false);
                    let wait = restart.next_delay();
                    tracing::error!(message = "Sink failed; starting it again from its committed position.", subscription = %id, %error, attempt = restart.attempts(), wait_ms = wait.as_millis() as u64);
                    tokio::select! {
                        _ = shutdown.changed() => {}
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// Opens the subscription's sink and runs it while the grant allows.
    /// The one place that knows every sink kind.
    async fn deliver_while_granted(
        &self,
        sub: &Subscription,
        ds: &Dataset,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Ended {
        let topic = self.config.topics.data(&sub.dataset);
        match &sub.sink {
            SinkSpec::Webhook { .. } => {
                match Webhook::new(&sub.sink, self.config.webhook_ca.as_deref()) {
                    Ok(w) => self.run_sink(Arc::new(w), sub, ds, shutdown).await,
                    Err(e) => Ended::Failed(e.to_string()),
                }
            }
            SinkSpec::File {
                dir,
                format,
                roll_records,
                roll_interval,
            } => {
                let cols = postgres::columns(sub, ds)
                    .into_iter()
                    .map(|(c, _)| c)
                    .collect();
                // The catalog admits only relative dirs that stay below the
                // root (`catalog check`); the root is the operator's.
                let dir = self.config.file_root.join(dir);
                match FileSink::open(&dir, &sub.id, *format, *roll_records, *roll_interval, cols) {
                    Ok(f) => self.run_sink(f, sub, ds, shutdown).await,
                    Err(e) => Ended::Failed(format!("file sink {}: {e}", dir.display())),
                }
            }
            SinkSpec::KafkaView => {
                let topic = self.config.view(&sub.id);
                ensure_topics(&self.config, &[(topic.clone(), 1)]).await;
                self.run_sink(ViewSink { topic }, sub, ds, shutdown).await
            }
            SinkSpec::Postgres { table, conninfo } => {
                let Some(conninfo) = conninfo.clone().or_else(|| self.config.postgres.clone())
                else {
                    return Ended::Failed(
                        "a postgres sink needs `conninfo` or the sink's --postgres".into(),
                    );
                };
                match PgSink::open(&conninfo, table, sub, ds, &topic).await {
                    Ok(pg) => self.run_sink(pg, sub, ds, shutdown).await,
                    Err(e) => Ended::Failed(format!("PostgreSQL: {e}")),
                }
            }
            SinkSpec::Sse | SinkSpec::Api { .. } => {
                Ended::Failed("live streams and live interfaces are served, not run".into())
            }
        }
    }

    /// The delivery loop every sink runs on: batches from the
    /// subscription's consumer, the grant checked on every batch, the
    /// policy applied before the sink sees a record, then the sink, the
    /// subscription's dead letters, the ledger and the offsets — in that
    /// order. Ends when the grant stops or changes, the sink fails, or the
    /// process stops; the sink is closed whatever the reason.
    async fn run_sink<S: Sink>(
        &self,
        mut sink: S,
        sub: &Subscription,
        ds: &Dataset,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Ended {
        let ended = self.deliver_with(&mut sink, sub, ds, shutdown).await;
        if let Err(error) = sink.close() {
            // Opened again at once, it would meet the same fault.
            if matches!(ended, Ended::Reconfigure) {
                return Ended::Failed(error.to_string());
            }
            tracing::warn!(message = "Sink not closed cleanly; what it holds open is finished when it opens again.", subscription = %sub.id, %error);
        }
        ended
    }

    async fn deliver_with<S: Sink>(
        &self,
        sink: &mut S,
        sub: &Subscription,
        ds: &Dataset,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Ended {
        let topic = self.config.topics.data(&sub.dataset);
        let dlq = self.config.dlq(&sub.id);
        ensure_topics(&self.config, &[(dlq.clone(), 1)]).await;
        let own_offsets = sink.keeps_offsets();
        let mut cc = self.config.client(govbus_kafka::config::consumer(
            &self.config.bootstrap,
            &self.config.group(&sub.id),
        ));
        if own_offsets {
            cc.set("enable.auto.commit", "false");
        }
        let consumer: SubConsumer = match cc.create_with_context(LagContext {
            metrics: self.metrics.clone(),
            subscription: sub.id.clone(),
            revocations: Revocations::default(),
            commits: !own_offsets,
        }) {
            Ok(c) => c,
            Err(e) => return Ended::Failed(e.to_string()),
        };
        let started = if own_offsets {
            match sink.offsets().await {
                Ok(stored) => self.assign_from(&consumer, &stored, &topic).await,
                Err(e) => Err(e.to_string()),
            }
        } else {
            consumer
                .subscribe(&[topic.as_str()])
                .map_err(|e| e.to_string())
        };
        if let Err(e) = started {
            return Ended::Failed(e);
        }
        let secret = self.config.pseudonym_secret.clone();
        let policy = Arc::new(Policy::new(sub, ds, &secret));
        let options = stage::Options {
            max_batch: self.config.max_batch,
            linger: self.config.linger,
            idle_wait: Some(Duration::from_millis(250)),
            // A group member does not poll while it delivers (a poll
            // serves a revocation mid-delivery: see `Delivering::read_ahead`);
            // it does while a delivered batch's ledger entry is on its way
            // (nothing more reaches the destination for that batch, and
            // its offsets move only once the entry is acknowledged).
            in_flight: if own_offsets { 0 } else { 1 },
            // A sink that keeps its offsets commits them with its effect.
            store_offsets: !own_offsets,
        };
        let mut delivering = Delivering {
            shared: self,
            sink,
            sub,
            ds,
            consumer: &consumer,
            topic,
            dlq,
            own_offsets,
            secret,
            policy,
            catalog: self.catalog.borrow().clone(),
            schema_wait: SchemaWait::default(),
            shutdown: shutdown.clone(),
            previous: None,
        };
        let mut stop = shutdown.clone();
        let stopping = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        stage::run(&consumer, &mut delivering, keep, &options, stopping)
            .await
            .unwrap_or(Ended::Shutdown)
    }

    /// Writes `dead` to the subscription's dead-letter topic, counts them
    /// and records them on the ledger (nothing when `dead` is empty).
    async fn settle_dead(
        &self,
        dlq: &str,
        policy: &Policy,
        topic: &str,
        batch: &[Canonical],
        dead: &[(usize, &'static str, String)],
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), Ended> {
        if dead.is_empty() {
            return Ok(());
        }
        let sub = policy.subscription();
        if self
            .unless_stuck(shutdown, self.dead_letter(dlq, sub, topic, batch, dead))
            .await
            .is_none()
        {
            return Err(Ended::Shutdown);
        }
        self.metrics
            .dead_lettered(&sub.id, sub.sink.kind(), dead.len());
        let ids = dead
            .iter()
            .map(|(i, _, _)| batch[*i].event_id(&sub.dataset))
            .collect();
        self.record(policy, "dead_lettered", ids, shutdown).await
    }

    /// Appends one ledger entry for `events` under the subscription's
    /// current policy (a stop abandons it after [`STOP_GRACE`]).
    async fn record(
        &self,
        policy: &Policy,
        outcome: &'static str,
        events: Vec<String>,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), Ended> {
        let entry = self
            .record_started(policy, outcome, events, shutdown)
            .await?;
        self.recorded(entry, outcome, shutdown).await
    }

    /// [`Shared::record`] up to handing the entry to the ledger's producer:
    /// it holds its place in the chain; [`Shared::recorded`] waits for it.
    async fn record_started(
        &self,
        policy: &Policy,
        outcome: &'static str,
        events: Vec<String>,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<ledger::Appending, Ended> {
        let sub = policy.subscription();
        let entry = ledger::Record::events(sub, outcome, events);
        match self
            .unless_stuck(shutdown, self.ledger.append_started(&entry))
            .await
        {
            None => Err(Ended::Shutdown),
            Some(Err(e)) => Err(Ended::Failed(e.to_string())),
            Some(Ok(appending)) => Ok(appending),
        }
    }

    /// Waits until the broker has an entry [`Shared::record_started`] handed
    /// over (a stop abandons it after [`STOP_GRACE`]).
    async fn recorded(
        &self,
        entry: ledger::Appending,
        outcome: &'static str,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), Ended> {
        match self.unless_stuck(shutdown, entry.acknowledged()).await {
            None => Err(Ended::Shutdown),
            Some(Err(e)) => Err(Ended::Failed(e.to_string())),
            Some(Ok(())) => {
                self.metrics.ledger_entry(outcome);
                Ok(())
            }
        }
    }

    /// Runs `work` to its end, unless a stop was asked and `work` has not
    /// ended [`STOP_GRACE`] later (a broker or destination that does not
    /// answer): then `None`, and the caller stops without moving offsets —
    /// the batch in hand is delivered again after a restart, as after a
    /// crash, instead of holding the stop for ever.
    async fn unless_stuck<T>(
        &self,
        shutdown: &watch::Receiver<bool>,
        work: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        let mut stop = shutdown.clone();
        let stuck = async move {
            let _ = stop.wait_for(|s| *s).await;
            tokio::time::sleep(STOP_GRACE).await;
        };
        tokio::select! {
            out = work => Some(out),
            () = stuck => {
                tracing::warn!(message = "Stopping with a batch in hand: the broker or the destination did not answer. Its offsets did not move; it is delivered again after a restart.", grace_s = STOP_GRACE.as_secs());
                None
            }
        }
    }

    /// Assigns every partition of `topic`, each from its `stored` next
    /// offset (the beginning where none is stored).
    async fn assign_from(
        &self,
        consumer: &SubConsumer,
        stored: &HashMap<i32, i64>,
        topic: &str,
    ) -> Result<(), String> {
        let metadata = blocking(|| consumer.fetch_metadata(Some(topic), Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let mut tpl = TopicPartitionList::new();
        for t in metadata.topics() {
            for p in t.partitions() {
                let offset = stored
                    .get(&p.id())
                    .map_or(Offset::Beginning, |o| Offset::Offset(*o));
                tpl.add_partition_offset(topic, p.id(), offset)
                    .map_err(|e| e.to_string())?;
            }
        }
        if tpl.count() == 0 {
            return Err(format!("topic {topic} has no partitions (does it exist?)"));
        }
        consumer.assign(&tpl).map_err(|e| e.to_string())
    }

    async fn dead_letter(
        &self,
        dlq: &str,
        sub: &Subscription,
        topic: &str,
        batch: &[Canonical],
        dead: &[(usize, &'static str, String)],
    ) {
        for (i, reason, detail) in dead {
            let c = &batch[*i];
            let mut backoff = Backoff::broker();
            loop {
                // The key stays in the message key; headers carry no personal
                // data. What is too large to copy is left out, and said so.
                let fitted = h::fitted_dead_letter(
                    c.key.as_deref(),
                    c.value.as_deref(),
                    c.headers.iter().map(|(k, v)| (k, Some(v))),
                    &[h::CE_SUBJECT],
                    &h::ErrorHeaders {
                        reason,
                        stage: "delivery",
                        detail,
                        topic,
                        partition: c.partition,
                        offset: c.offset,
                        dataset: Some(&sub.dataset),
                        subscription: Some(&sub.id),
                        ..h::ErrorHeaders::default()
                    },
                );
                if fitted.trimmed {
                    self.metrics.dead_letter_trimmed(&sub.id);
                    tracing::warn!(message = "Dead letter written without part of the record (its headers, value or key: too large to copy); the original stays on its topic until compacted.", subscription = %sub.id, %topic, partition = c.partition, offset = c.offset);
                }
                let (key, value, headers) = (fitted.key, fitted.value, fitted.headers);
                let mut record = FutureRecord::to(dlq).headers(headers);
                if let Some(k) = key {
                    record = record.key(k);
                }
                if let Some(v) = value {
                    record = record.payload(v);
                }
                match self.producer.send(record, Duration::from_secs(30)).await {
                    Ok(_) => break,
                    Err((error, _)) => {
                        let wait = backoff.next_delay();
                        tracing::warn!(message = "Subscriber DLQ write failed; retrying (offsets do not move).", %dlq, %error, attempt = backoff.attempts(), wait_ms = wait.as_millis() as u64);
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
    }
}

/// Whether the consumer has read every assigned partition of `topic` to its
/// high watermark, and read something: an empty topic (or none assigned)
/// is never "caught up", so a sweep cannot empty a table because the topic
/// is empty or was recreated.
fn caught_up(consumer: &SubConsumer, topic: &str) -> bool {
    blocking(|| {
        let Ok(position) = consumer.position() else {
            return false;
        };
        let mut read = false;
        let all = position.elements_for_topic(topic).iter().all(|e| {
            let Ok((low, high)) =
                consumer.fetch_watermarks(topic, e.partition(), Duration::from_secs(2))
            else {
                return false;
            };
            match e.offset() {
                Offset::Offset(o) => {
                    read |= o > low;
                    o >= high
                }
                _ => low == high,
            }
        });
        all && read
    })
}

/// What the sink keeps of a consumed record.
fn keep(message: BorrowedMessage<'_>) -> Canonical {
    Canonical::from_message(&message)
}

/// One subscription's delivery as a stage of the engine
/// ([`govbus_kafka::stage::run`]): the grant checked on every batch, the
/// policy applied before the sink sees a record, then the sink, the
/// subscription's dead letters and the ledger — the engine moves the
/// offsets after. A batch reaches the destination only once the batch
/// before is settled but for its ledger entry, which it waits for first.
struct Delivering<'a, S: Sink> {
    shared: &'a Shared,
    sink: &'a mut S,
    sub: &'a Subscription,
    ds: &'a Dataset,
    consumer: &'a SubConsumer,
    topic: String,
    dlq: String,
    own_offsets: bool,
    secret: Vec<u8>,
    /// The policy deliveries are prepared under, rebuilt on any catalog change.
    policy: Arc<Policy>,
    /// The catalog the policy was built from.
    catalog: Arc<Catalog>,
    schema_wait: SchemaWait,
    shutdown: watch::Receiver<bool>,
    /// The ledger entry of the batch delivered last, until it is
    /// acknowledged.
    previous: Option<Entry>,
}

/// Prepares a batch read ahead under the policy and catalog of the moment
/// (prepared again at its turn if the catalog changed meanwhile).
struct Ahead {
    catalog: Arc<Catalog>,
    policy: Arc<Policy>,
}

impl Prepare<Canonical> for Ahead {
    type Prepared = (Arc<Catalog>, Vec<Prepared>);

    /// On the blocking pool: the delivery of the batch before runs on this
    /// task meanwhile, and its replies (a database's, say) do not wait
    /// for a whole batch's decoding — on a machine with a core to spare
    /// the two run at once.
    async fn prepare(self, records: Vec<Canonical>) -> (Vec<Canonical>, Self::Prepared) {
        let (records, prepared) = prepare_all(&self.catalog, &self.policy, records, false).await;
        (records, (self.catalog, prepared))
    }
}

/// Batches of at least this many records are prepared in parts, one per
/// core, on the blocking pool ([`prepare_all`]).
const PREPARE_IN_PARTS_FROM: usize = 256;

/// Applies the policy to every record of a batch, in order. A batch of
/// [`PREPARE_IN_PARTS_FROM`] or more is cut into one part per core (at most
/// four), each prepared on the blocking pool, the first one here when
/// `first_here` (a task with nothing else to do meanwhile): decoding is
/// most of a delivery's CPU, and a sink that reads no batch ahead (a group
/// member) would otherwise leave the other cores idle while it decodes.
async fn prepare_all(
    catalog: &Arc<Catalog>,
    policy: &Arc<Policy>,
    records: Vec<Canonical>,
    first_here: bool,
) -> (Vec<Canonical>, Vec<Prepared>) {
    static PARTS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let parts = if records.len() >= PREPARE_IN_PARTS_FROM {
        *PARTS.get_or_init(|| {
            std::thread::available_parallelism()
                .map_or(1, usize::from)
                .clamp(1, 4)
        })
    } else {
        1
    };
    if parts == 1 && first_here {
        let prepared = records
            .iter()
            .map(|c| prepare(catalog, policy, c))
            .collect();
        return (records, prepared);
    }
    let size = records.len().div_ceil(parts).max(1);
    let mut chunks = Vec::with_capacity(parts);
    let mut rest = records;
    while rest.len() > size {
        let tail = rest.split_off(size);
        chunks.push(rest);
        rest = tail;
    }
    chunks.push(rest);
    let mut chunks = chunks.into_iter();
    let here = if first_here { chunks.next() } else { None };
    let span = tracing::Span::current();
    let elsewhere: Vec<_> = chunks
        .map(|chunk| {
            let (catalog, policy, span) = (catalog.clone(), policy.clone(), span.clone());
            tokio::task::spawn_blocking(move || {
                let _in = span.enter();
                let prepared: Vec<Prepared> = chunk
                    .iter()
                    .map(|c| prepare(&catalog, &policy, c))
                    .collect();
                (chunk, prepared)
            })
        })
        .collect();
    let (mut records, mut prepared) = match here {
        Some(chunk) => {
            let p: Vec<Prepared> = chunk.iter().map(|c| prepare(catalog, policy, c)).collect();
            (chunk, p)
        }
        None => (Vec::new(), Vec::new()),
    };
    for task in elsewhere {
        let (chunk, p) = match task.await {
            Ok(out) => out,
            // A panic in the preparation is the stage's, as if it ran here.
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // Cancelled: only when the runtime shuts down, which drops
                // this task too.
                Err(_) => std::future::pending().await,
            },
        };
        if records.is_empty() {
            (records, prepared) = (chunk, p);
        } else {
            records.extend(chunk);
            prepared.extend(p);
        }
    }
    (records, prepared)
}

impl<S: Sink> Delivering<'_, S> {
    /// The grant, checked at delivery time (on every batch and when idle):
    /// an error ends the loop. The policy is rebuilt when the catalog changed.
    fn check_grant(&mut self) -> Result<(), Ended> {
        let (sub, ds) = (self.sub, self.ds);
        // The catalog is taken first: a change after it is seen next batch.
        let now = self.shared.catalog.borrow().clone();
        let (current, current_ds) = self.shared.grant(&sub.id).map_err(Ended::Inactive)?;
        // Another sink, another department (pseudonyms and the ledger
        // are the subscriber's) or another dataset (another topic):
        // start again under the new grant.
        if current.sink != sub.sink
            || current.subscriber != sub.subscriber
            || current.dataset != sub.dataset
        {
            return Err(Ended::Reconfigure);
        }
        if current.policy_version != self.policy.subscription().policy_version {
            tracing::info!(message = "Field policy changed.", subscription = %sub.id, policy = %current.policy_version);
            // A sink whose shape is the grant's fields (a table's
            // columns, a CSV file's header) is opened again under the
            // new grant, as is every sink when the schema changed.
            if self.sink.reopens_for(&current) || current_ds.latest().id != ds.latest().id {
                return Err(Ended::Reconfigure);
            }
        }
        // Any catalog change rebuilds the policy: the dataset's
        // personal-data tags or key may have changed without the
        // grant's policy version.
        if !Arc::ptr_eq(&now, &self.catalog) {
            self.policy = Arc::new(Policy::new(&current, &current_ds, &self.secret));
            self.catalog = now;
            self.schema_wait.catalog_changed();
        }
        Ok(())
    }

    /// Delivers one batch (waiting, with it, for a schema id the catalog
    /// does not have yet) and says how far it got. An error: nothing of
    /// the batch moves.
    async fn deliver(
        &mut self,
        mut batch: Vec<Canonical>,
        mut ahead: Option<(Arc<Catalog>, Vec<Prepared>)>,
    ) -> Result<Delivered, Ended> {
        let shared = self.shared;
        let sub = self.sub;
        loop {
            self.check_grant()?;
            // Decoded with the catalog the policy was built from: what was
            // prepared ahead under another catalog is prepared again.
            let prepared: Vec<Prepared> = match ahead.take() {
                Some((under, p)) if Arc::ptr_eq(&under, &self.catalog) => p,
                _ => {
                    let (again, p) = prepare_all(
                        &self.catalog,
                        &self.policy,
                        std::mem::take(&mut batch),
                        true,
                    )
                    .await;
                    batch = again;
                    p
                }
            };
            let mut deliveries: Vec<Delivery> = Vec::with_capacity(batch.len());
            let mut from: Vec<usize> = Vec::with_capacity(batch.len());
            let mut undecodable: Vec<(usize, String)> = Vec::new();
            // Batch indices of records outside the row filter.
            let mut filtered: Vec<usize> = Vec::new();
            // Batch indices of records the destination cannot store, and why.
            let mut unstorable: Vec<(usize, String)> = Vec::new();
            let keeps_state = self.sink.keeps_state();
            let mut unknown_schema: Vec<SchemaId> = Vec::new();
            for (i, p) in prepared.into_iter().enumerate() {
                match p {
                    Prepared::Deliver(d) => {
                        if let Some(why) = self.sink.unstorable(&d) {
                            unstorable.push((i, why));
                            continue;
                        }
                        deliveries.push(d);
                        from.push(i);
                    }
                    // Only a sink that keeps state per key drops what it
                    // holds of a key that left the filter; no one else
                    // hears of keys outside it (nor may such a key reach
                    // the subscription's DLQ: one the sink cannot hold, it
                    // never held).
                    Prepared::Filtered(d) => {
                        filtered.push(i);
                        if keeps_state && self.sink.unstorable(&d).is_none() {
                            deliveries.push(d);
                            from.push(i);
                        }
                    }
                    Prepared::Undecodable(e) => {
                        if let DecodeError::UnknownSchema(id) = e {
                            if !self.schema_wait.given_up(&id) {
                                unknown_schema.push(id);
                            }
                        }
                        undecodable.push((i, e.to_string()));
                    }
                }
            }
            // A record under an id not known *yet* waits for it, with its
            // whole batch, rather than being dead-lettered as undecodable
            // (`SchemaWait`). A group member's wait never polls the
            // consumer, so no rebalance can revoke the batch's partitions
            // under it; one that comes waits until it ends. (The PostgreSQL
            // sink, assigned its partitions, reads its next batch ahead
            // meanwhile.) Past the wait it is dead-lettered.
            if unknown_schema.is_empty() {
                self.schema_wait.settled();
            } else if self.schema_wait.hold(&unknown_schema, || {
                tracing::warn!(message = "A record names a schema id this catalog does not have yet; its batch waits for the catalog.", subscription = %sub.id, wait_s = SCHEMA_WAIT.as_secs());
            }) {
                if *self.shutdown.borrow() {
                    return Err(Ended::Shutdown);
                }
                tokio::time::sleep(SCHEMA_RECHECK).await;
                continue;
            } else {
                tracing::warn!(message = "The schema id stayed unknown; its records are dead-lettered as undecodable (until the catalog changes, without waiting again).", subscription = %sub.id);
            }
            // One span per trace the delivered records carry; each
            // delivery leaves with its span's context.
            let trace = crate::event::sink_spans(sub);
            for d in &mut deliveries {
                d.continue_in(trace.as_ref());
            }
            let oldest = batch.iter().map(|c| c.timestamp_ms).min().unwrap_or(0);
            shared
                .metrics
                .oldest_undelivered(&sub.id, ((now_ms() - oldest).max(0) as f64) / 1000.0);

            // A sink that commits its offsets with its effect moves past
            // every record of the batch: what cannot be delivered is
            // dead-lettered and recorded before, or a crash in between would
            // lose it without a trace. (For the others it is dead-lettered
            // after the delivery, up to where the delivery got.)
            let mut early: Vec<(usize, &'static str, String)> = Vec::new();
            if self.own_offsets {
                early.extend(
                    std::mem::take(&mut undecodable)
                        .into_iter()
                        .map(|(i, e)| (i, "undecodable", e))
                        .chain(
                            std::mem::take(&mut unstorable)
                                .into_iter()
                                .map(|(i, e)| (i, "unstorable", e)),
                        ),
                );
            }
            if !early.is_empty() {
                early.sort_unstable_by_key(|(i, _, _)| *i);
                shared
                    .settle_dead(
                        &self.dlq,
                        &self.policy,
                        &self.topic,
                        &batch,
                        &early,
                        &self.shutdown,
                    )
                    .await?;
            }
            // The batch before is recorded before this one reaches the
            // destination (read and prepared meanwhile).
            if let Some(previous) = self.previous.take() {
                previous.acknowledged(shared, &self.shutdown).await?;
            }
            let delivering = self.sink.deliver(Batch {
                shared,
                policy: &self.policy,
                records: &batch,
                events: &deliveries,
                shutdown: &self.shutdown,
            });
            let Some(progress) = shared.unless_stuck(&self.shutdown, delivering).await else {
                if let Some(t) = &trace {
                    t.fail("stopped with the batch in hand; it is delivered again after a restart");
                }
                return Err(Ended::Shutdown);
            };
            if let Some(t) = &trace {
                if !progress.dead.is_empty() {
                    t.set(govbus_trace::Attribute::new(
                        "govbus.dead_lettered",
                        progress.dead.len() as i64,
                    ));
                }
                if progress.stop.is_some() || progress.done < deliveries.len() {
                    t.fail("the batch was not delivered whole; the rest is delivered again");
                }
            }
            // Everything before the first undelivered canonical record is settled.
            let settled = if progress.done < deliveries.len() {
                from[progress.done]
            } else {
                batch.len()
            };
            let mut dead: Vec<(usize, &'static str, String)> = undecodable
                .into_iter()
                .map(|(i, e)| (i, "undecodable", e))
                .chain(unstorable.into_iter().map(|(i, e)| (i, "unstorable", e)))
                .filter(|(i, _, _)| *i < settled)
                .collect();
            dead.extend(
                progress
                    .dead
                    .iter()
                    .map(|(d, r, w)| (from[*d], *r, w.clone())),
            );
            shared
                .settle_dead(
                    &self.dlq,
                    &self.policy,
                    &self.topic,
                    &batch,
                    &dead,
                    &self.shutdown,
                )
                .await?;
            let dead_set: HashSet<usize> = progress.dead.iter().map(|(d, _, _)| *d).collect();
            let delivered: Vec<String> = deliveries[..progress.done]
                .iter()
                .enumerate()
                .filter(|(i, d)| !dead_set.contains(i) && d.op != OUT_OF_SCOPE)
                .map(|(_, d)| d.id.clone())
                .collect();
            let n = delivered.len();
            // A sink that keeps its offsets recorded its deliveries before
            // its commit. For the others the entry is handed to the ledger
            // here, in its place in the chain, and its acknowledgement is
            // waited for when the batch is settled — while the next batch
            // is read and delivered.
            let ledger = if n > 0 && !self.own_offsets {
                let entry = Entry::new(
                    shared
                        .record_started(&self.policy, "delivered", delivered, &self.shutdown)
                        .await?,
                );
                self.previous = Some(entry.clone());
                Some(entry)
            } else {
                None
            };
            return Ok(Delivered {
                settled: match progress.stop {
                    Some(why) => Settled::Stop { done: settled, why },
                    None => Settled::Done(settled),
                },
                ledger,
                delivered: n,
                // Counted once, when its offset moves (a record after
                // `settled` comes again in the next batch).
                filtered: filtered.iter().filter(|&&i| i < settled).count(),
                last_timestamp_ms: batch[..settled].iter().map(|c| c.timestamp_ms).max(),
            });
        }
    }
}

/// A batch delivered whose ledger entry may still be on its way to the
/// broker; its offsets move once the entry is acknowledged
/// ([`Stage::settle`]).
struct Delivered {
    settled: Settled<Ended>,
    /// The `delivered` entry, enqueued (`None`: nothing to record, or the
    /// sink recorded it itself).
    ledger: Option<Entry>,
    /// Deliveries the entry records.
    delivered: usize,
    /// Records outside the row filter whose offsets move.
    filtered: usize,
    /// Kafka timestamp of the newest record whose offset moves.
    last_timestamp_ms: Option<i64>,
}

/// A batch's `delivered` ledger entry on its way to the broker, waited for
/// by whichever comes first: the next batch, before it reaches the
/// destination, or the batch's settling. So nothing is delivered after an
/// entry the broker refused (the sink stops, and what follows is delivered
/// again after it, in order), and no later entry is enqueued behind it.
#[derive(Clone)]
struct Entry(Arc<tokio::sync::Mutex<EntryState>>);

enum EntryState {
    Sent(ledger::Appending),
    Acknowledged,
    /// Refused by the broker: the sink's stop, for everyone who asks.
    Refused(String),
    /// Abandoned at a stop.
    Abandoned,
}

impl Entry {
    fn new(appending: ledger::Appending) -> Entry {
        Entry(Arc::new(tokio::sync::Mutex::new(EntryState::Sent(
            appending,
        ))))
    }

    /// Waits for the broker (once; later calls get the same answer).
    async fn acknowledged(
        &self,
        shared: &Shared,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), Ended> {
        let mut state = self.0.lock().await;
        let (next, answer) = match std::mem::replace(&mut *state, EntryState::Abandoned) {
            EntryState::Sent(appending) => {
                match shared.recorded(appending, "delivered", shutdown).await {
                    Ok(()) => (EntryState::Acknowledged, Ok(())),
                    Err(Ended::Failed(e)) => {
                        (EntryState::Refused(e.clone()), Err(Ended::Failed(e)))
                    }
                    Err(other) => (EntryState::Abandoned, Err(other)),
                }
            }
            EntryState::Acknowledged => (EntryState::Acknowledged, Ok(())),
            EntryState::Refused(e) => (EntryState::Refused(e.clone()), Err(Ended::Failed(e))),
            EntryState::Abandoned => (EntryState::Abandoned, Err(Ended::Shutdown)),
        };
        *state = next;
        answer
    }
}

impl<S: Sink> Stage for Delivering<'_, S> {
    type Record = Canonical;
    type Started = Delivered;
    type Stop = Ended;
    type Preparer = Ahead;

    /// Only a sink assigned its partitions reads ahead: a group member
    /// that polls while it delivers serves a revocation in the middle of
    /// the delivery, and the partition's next owner would deliver the same
    /// records again *while* this one still delivers them (a late retry
    /// landing after newer versions: per-key order broken at the
    /// subscriber). Without a poll, the group waits for the batch to be
    /// settled first.
    fn read_ahead(&self) -> Option<Ahead> {
        self.own_offsets.then(|| Ahead {
            catalog: self.catalog.clone(),
            policy: self.policy.clone(),
        })
    }

    async fn start(
        &mut self,
        batch: Vec<Canonical>,
        prepared: Option<(Arc<Catalog>, Vec<Prepared>)>,
    ) -> Result<Delivered, Ended> {
        self.deliver(batch, prepared).await
    }

    /// A delivery that stopped part way is settled before anything more is
    /// read or delivered.
    fn stops(&self, started: &Delivered) -> bool {
        matches!(started.settled, Settled::Stop { .. })
    }

    /// Waits for the batch's ledger entry; an entry the broker did not take
    /// stops the sink with nothing of the batch moved (it is delivered and
    /// recorded again after the restart).
    async fn settle(&mut self, d: Delivered) -> Settled<Ended> {
        let (shared, sub) = (self.shared, self.sub);
        if let Some(entry) = d.ledger {
            if let Err(why) = entry.acknowledged(shared, &self.shutdown).await {
                return Settled::Stop { done: 0, why };
            }
        }
        let kind = sub.sink.kind();
        if d.delivered > 0 {
            shared.metrics.delivered(&sub.id, kind, d.delivered);
        }
        shared.metrics.filtered(&sub.id, kind, d.filtered);
        if let Some(last) = d.last_timestamp_ms {
            shared
                .metrics
                .lag_seconds(&sub.id, ((now_ms() - last).max(0) as f64) / 1000.0);
        }
        shared.metrics.oldest_undelivered(&sub.id, 0.0);
        d.settled
    }

    async fn idle(&mut self) -> Result<(), Ended> {
        self.check_grant()?;
        let (consumer, topic) = (self.consumer, self.topic.as_str());
        if let Err(e) = self.sink.idle(&|| caught_up(consumer, topic)).await {
            return Err(Ended::Failed(e.to_string()));
        }
        self.shared.metrics.lag_seconds(&self.sub.id, 0.0);
        self.shared.metrics.oldest_undelivered(&self.sub.id, 0.0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicked_subscription_task_is_counted_and_forgotten_so_it_restarts() {
        let metrics = Metrics::new();
        let mut running = HashMap::new();
        running.insert(
            "sub-panics".to_owned(),
            tokio::spawn(async { panic!("a bug in a sink") }),
        );
        running.insert("sub-ended".to_owned(), tokio::spawn(async {}));
        running.insert(
            "sub-runs".to_owned(),
            tokio::spawn(tokio::time::sleep(Duration::from_secs(60))),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(reap(&mut running, &metrics).await, ["sub-panics"]);
        assert_eq!(running.keys().collect::<Vec<_>>(), ["sub-runs"]);
        assert_eq!(metrics.task_panics("sub-panics"), 1);
        assert_eq!(metrics.task_panics("sub-ended"), 0);
        assert!(metrics.render().contains("govbus_sink_task_panics_total"));
        // /ready answers 503 while a panicked task waits to restart.
        assert!(metrics.is_ready());
        metrics.tasks_held(1);
        assert!(!metrics.is_ready());
        assert!(metrics.render().contains("govbus_sink_tasks_held 1"));
        metrics.tasks_held(0);
        assert!(metrics.is_ready());
    }
}
