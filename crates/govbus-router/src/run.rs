//! The consume → decide → produce → store-offset loop.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use govbus_kafka::config as kconfig;
use govbus_kafka::headers as h;
use govbus_kafka::retry::Backoff;
use govbus_kafka::stage::{self, blocking, Fenced, NoReadAhead, Revocations, Settled, Stage};
use govbus_kafka::topics::Topics;
use govbus_validate::{Context, Engine};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::config::{Mode, RouterConfig};
use crate::gate::{decide_traced, DeadLetter, Decision, Incoming};
use crate::metrics::{Metrics, Tally};

/// What can stop the router.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// A Kafka client could not be created or configured (permanent).
    #[error("kafka client: {0}")]
    Client(#[from] KafkaError),
}

/// Feeds client statistics to the metrics: readiness and consumer lag.
struct RouterContext {
    metrics: Metrics,
    topics: Topics,
    /// Revoked partitions, so a batch leaves out what it can no longer settle.
    revocations: Revocations,
    /// Whether stored offsets are committed before a revocation (not in
    /// transactional mode: a transaction carries the offsets).
    commits: bool,
}

impl ClientContext for RouterContext {
    fn stats(&self, stats: Statistics) {
        let up = stats
            .brokers
            .values()
            .any(|b| b.nodeid >= 0 && b.state == "UP");
        self.metrics.set_ready(up);
        let mut lag: HashMap<&str, i64> = HashMap::new();
        for (topic, t) in &stats.topics {
            let Some(dept) = self.topics.department_of_ingest(topic) else {
                continue;
            };
            let total: i64 = t
                .partitions
                .values()
                .filter(|p| p.partition >= 0)
                .map(|p| p.consumer_lag.max(0))
                .sum();
            *lag.entry(dept).or_default() += total;
        }
        for (dept, l) in lag {
            self.metrics.lag(dept, l);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::AllBrokersDown)
        ) {
            self.metrics.set_ready(false);
        }
        tracing::warn!(message = "Kafka client error.", %error, reason);
    }
}

impl ConsumerContext for RouterContext {
    fn pre_rebalance(
        &self,
        consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        stage::before_rebalance(consumer, rebalance, self.commits);
    }

    fn post_rebalance(
        &self,
        consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        // The whole assignment after the change (a cooperative rebalance
        // hands over only the difference).
        let owned = consumer.assignment().map_or(0, |a| a.count());
        self.metrics.set_assigned(owned);
        if let rdkafka::consumer::Rebalance::Assign(_) = rebalance {
            tracing::info!(message = "Partitions assigned.", partitions = owned);
        }
    }
}

impl Fenced for RouterContext {
    fn revocations(&self) -> &Revocations {
        &self.revocations
    }
}

/// The router as a stage of the engine: the consumer's batches decided and
/// written, with the producer and the schema log it writes and follows.
struct Routing<'r, 'c> {
    router: &'r Router,
    _records: std::marker::PhantomData<BorrowedMessage<'c>>,
    consumer: &'r StreamConsumer<RouterContext>,
    /// Replaced after a transaction that failed beyond an abort.
    producer: FutureProducer,
    schema_log: Option<Arc<govbus_kafka::schema_log::Tail>>,
}

/// A batch the router started.
enum Routed {
    /// At least once: written, acknowledgements pending.
    InFlight(InFlight),
    /// Transactional: committed with its offsets (`records` of them).
    Committed(usize),
    /// Transactional: aborted; read again.
    Aborted,
}

impl<'c> Stage for Routing<'_, 'c> {
    type Record = BorrowedMessage<'c>;
    type Started = Routed;
    type Stop = RouterError;
    type Preparer = NoReadAhead;

    async fn start(
        &mut self,
        batch: Vec<BorrowedMessage<'c>>,
        _prepared: Option<()>,
    ) -> Result<Routed, RouterError> {
        let router = self.router;
        // A schema id this engine does not know may have just been
        // registered: apply the log up to its end before dead-lettering.
        if let Some(log) = &self.schema_log {
            let engine = router.engine();
            if batch.iter().any(|m| unknown_schema(&engine, m.payload())) {
                let log = log.clone();
                let _ =
                    tokio::task::spawn_blocking(move || log.catch_up(Duration::from_secs(5))).await;
            }
        }
        if router.config.mode == Mode::AtLeastOnce {
            return Ok(Routed::InFlight(
                router.start_batch(&self.producer, batch).await,
            ));
        }
        let trace = batch_spans();
        let Err(error) = router
            .route_transaction(&self.producer, self.consumer, &batch, trace.as_ref())
            .await
        else {
            return Ok(Routed::Committed(batch.len()));
        };
        if let Some(t) = &trace {
            t.fail("the transaction failed; the batch is routed again");
        }
        tracing::warn!(message = "Transaction failed; rewinding the batch.", %error);
        let limit = Timeout::After(router.config.transaction_timeout);
        if error.rdkafka_error_code().is_none()
            || !matches!(blocking(|| self.producer.abort_transaction(limit)), Ok(()))
        {
            // librdkafka lacks KIP-890: after a timed-out or fatal
            // commit/abort only a new producer (same transactional
            // id, so the old one is fenced) is safe.
            self.producer = router.producer()?;
        }
        Ok(Routed::Aborted)
    }

    async fn settle(&mut self, started: Routed) -> Settled<RouterError> {
        match started {
            Routed::InFlight(b) => Settled::Done(self.router.settle(&self.producer, b).await),
            Routed::Committed(n) => Settled::Done(n),
            Routed::Aborted => Settled::Rewind,
        }
    }
}

/// One record to write, owning its bytes.
struct Outgoing {
    topic: String,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    /// Moved into the record when it is sent; recovered from the failed
    /// delivery if it has to be sent again.
    headers: Option<OwnedHeaders>,
    dlq: bool,
}

/// A batch whose records are enqueued and whose acknowledgements are pending.
struct InFlight {
    out: Vec<Outgoing>,
    deliveries: Vec<Result<DeliveryFuture, KafkaError>>,
    /// Input records of the batch (all settled with it).
    records: usize,
    started: Instant,
    decided: f64,
    /// The batch's spans: they end when it is settled (dropped).
    _trace: Option<govbus_trace::Batch>,
}

/// The router's spans for one batch (`None` while tracing is off).
fn batch_spans() -> Option<govbus_trace::Batch> {
    govbus_trace::Batch::start(
        "govbus.router route",
        govbus_trace::Kind::Consumer,
        vec![govbus_trace::Attribute::new("govbus.stage", "router")],
    )
}

/// Batches in flight at once (at-least-once mode): while batch N's
/// acknowledgements travel, batch N+1 is already being decided and sent.
const MAX_IN_FLIGHT: usize = 4;

/// The router: build with [`Router::new`], run with [`Router::run`].
pub struct Router {
    /// The compiled catalog; replaced when the schema log adds a version.
    engine: govbus_validate::SharedEngine,
    /// The catalog the engine was compiled from, when following the schema log.
    catalog: Option<govbus_catalog::Catalog>,
    config: RouterConfig,
    metrics: Metrics,
    /// Output topics known to exist. A record for any other topic (the DLQ of
    /// a department missing from the catalog) has its topic created first:
    /// the producer would otherwise wait for it forever.
    known_topics: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn client_config(base: ClientConfig, overrides: &[(String, String)]) -> ClientConfig {
    let mut c = base;
    for (k, v) in overrides {
        c.set(k, v);
    }
    c
}

impl Router {
    /// A router over a compiled catalog.
    pub fn new(engine: Arc<Engine>, config: RouterConfig, metrics: Metrics) -> Router {
        Router {
            engine: govbus_validate::SharedEngine::new(engine),
            catalog: None,
            config,
            metrics,
            known_topics: std::sync::Mutex::default(),
        }
    }

    /// Also accepts schema versions registered at run time: replays and tails
    /// the schema log (`<prefix>_govbus.schemas`), checking each version
    /// against `catalog` exactly like a catalog file, and recompiling.
    pub fn follow_schema_log(mut self, catalog: govbus_catalog::Catalog) -> Router {
        self.catalog = Some(catalog);
        self
    }

    fn engine(&self) -> Arc<Engine> {
        self.engine.current()
    }

    fn start_schema_log(&self) -> Option<govbus_kafka::schema_log::Tail> {
        let catalog = self.catalog.clone()?;
        govbus_kafka::schema_log::follow(&self.config.bootstrap, &self.config.topics, catalog, {
            let engine = self.engine.clone();
            move |c| engine.recompile(c)
        })
    }

    /// The metrics it reports (serve them with [`crate::http::serve`]).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn producer(&self) -> Result<FutureProducer, KafkaError> {
        let mut c = client_config(
            kconfig::producer(&self.config.bootstrap),
            &self.config.client_overrides,
        );
        if self.config.mode == Mode::Transactional {
            c.set(
                "transactional.id",
                format!("govbus-router-{}", self.config.instance),
            )
            .set(
                "transaction.timeout.ms",
                self.config.transaction_timeout.as_millis().to_string(),
            );
        }
        let p: FutureProducer = c.create()?;
        if self.config.mode == Mode::Transactional {
            p.init_transactions(Timeout::After(self.config.transaction_timeout))?;
        }
        Ok(p)
    }

    /// Creates `data.<dataset>` for every dataset and `dlq.<dept>` for every
    /// department (existing topics are left as they are). A broker that
    /// refuses (no CreateTopics API, no permission) is not fatal: topics may
    /// be provisioned by operators or auto-created.
    async fn ensure_topics(&self) {
        if !self.config.create_topics {
            return;
        }
        let t = &self.config.topics;
        let engine = self.engine();
        let mut names: Vec<String> = engine.datasets().map(|d| t.data(d.name())).collect();
        names.extend(engine.departments().map(|d| t.dlq(d)));
        if let Err(error) = create_topics(&self.config, &names).await {
            tracing::warn!(message = "Cannot create output topics; expecting them to exist or be auto-created.", %error);
        }
        if let Ok(mut known) = self.known_topics.lock() {
            known.extend(names);
        }
    }

    /// Creates any output topic of `out` not known to exist.
    async fn ensure_output_topics(&self, out: &[Outgoing]) {
        if !self.config.create_topics {
            return;
        }
        let missing: Vec<String> = match self.known_topics.lock() {
            Ok(known) => {
                let mut m: Vec<String> = out
                    .iter()
                    .filter(|o| !known.contains(&o.topic))
                    .map(|o| o.topic.clone())
                    .collect();
                m.dedup();
                m
            }
            Err(_) => return,
        };
        if missing.is_empty() {
            return;
        }
        // Tried once per topic: a broker that refuses will not change its mind per batch.
        if let Err(error) = create_topics(&self.config, &missing).await {
            tracing::warn!(message = "Cannot create output topics.", %error);
        }
        if let Ok(mut known) = self.known_topics.lock() {
            known.extend(missing);
        }
    }

    /// Routes until `shutdown` completes, then finishes the batches in
    /// flight, commits, and returns. The loop is the stage engine's
    /// ([`govbus_kafka::stage::run`]); the router is a [`Stage`] of it.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), RouterError> {
        // The producer first: an idempotent producer is given its producer
        // id on librdkafka's next 500 ms retry after its connection to a
        // broker is up (`kconfig::producer` opens it at once), and a record
        // sent before that waits for it. Created first, the id is fetched
        // while the topics are checked and the group is joined.
        let producer = self.producer()?;
        self.ensure_topics().await;
        let mut cc = client_config(
            kconfig::consumer(&self.config.bootstrap, &self.config.group),
            &self.config.client_overrides,
        );
        if self.config.mode == Mode::Transactional {
            cc.set("enable.auto.commit", "false")
                .set("isolation.level", "read_committed");
        }
        let consumer: StreamConsumer<RouterContext> = cc.create_with_context(RouterContext {
            metrics: self.metrics.clone(),
            topics: self.config.topics.clone(),
            revocations: Revocations::default(),
            commits: self.config.mode == Mode::AtLeastOnce,
        })?;
        consumer.subscribe(&[self.config.topics.ingest_pattern().as_str()])?;
        let schema_log = self.start_schema_log().map(Arc::new);
        tracing::info!(message = "Router started.", instance = %self.config.instance, group = %self.config.group, mode = ?self.config.mode);
        let at_least_once = self.config.mode == Mode::AtLeastOnce;
        let options = stage::Options {
            max_batch: self.config.max_batch,
            linger: self.config.linger,
            idle_wait: None,
            // A transaction is committed before the next batch is read.
            in_flight: if at_least_once { MAX_IN_FLIGHT } else { 0 },
            // A transaction carries its offsets.
            store_offsets: at_least_once,
        };
        let mut routing = Routing {
            router: &self,
            _records: std::marker::PhantomData,
            consumer: &consumer,
            producer,
            schema_log,
        };
        let stopped = stage::run(&consumer, &mut routing, |m| m, &options, shutdown).await;
        tracing::info!(message = "Router stopped.");
        stopped.map_or(Ok(()), Err)
    }

    /// Decides a batch and hands its records to the producer.
    async fn start_batch(
        &self,
        producer: &FutureProducer,
        batch: Vec<BorrowedMessage<'_>>,
    ) -> InFlight {
        let started = Instant::now();
        let trace = batch_spans();
        let mut out = self.decide_batch(&batch, trace.as_ref());
        let decided = started.elapsed().as_secs_f64();
        let records = batch.len();
        drop(batch);
        self.ensure_output_topics(&out).await;
        let deliveries = enqueue_all(producer, &mut out).await;
        InFlight {
            out,
            deliveries,
            records,
            started,
            decided,
            _trace: trace,
        }
    }

    fn decide_batch(
        &self,
        batch: &[BorrowedMessage<'_>],
        trace: Option<&govbus_trace::Batch>,
    ) -> Vec<Outgoing> {
        let engine = self.engine();
        let ctx = Context::now();
        let topics = &self.config.topics;
        let mut tally = Tally::default();
        let mut dead_letters: Vec<DeadLetter> = Vec::new();
        let mut out = Vec::with_capacity(batch.len());
        for m in batch {
            let incoming = Incoming {
                topic: m.topic(),
                partition: m.partition(),
                offset: m.offset(),
                timestamp_ms: m.timestamp().to_millis(),
                key: m.key(),
                value: m.payload(),
                headers: m.headers(),
            };
            let department = topics.department_of_ingest(m.topic()).unwrap_or(m.topic());
            tally.record_in(department, m.payload_len());
            match decide_traced(&engine, topics, &incoming, &ctx, trace) {
                Decision::Route(r) => {
                    let age = (ctx.now_millis - r.event_time_ms) as f64 / 1000.0;
                    tally.routed(department, r.dataset.name(), age);
                    out.push(Outgoing {
                        topic: topics.data(r.dataset.name()),
                        key: Some(r.key.into_bytes()),
                        value: r.value,
                        headers: Some(r.headers),
                        dlq: false,
                    });
                }
                Decision::Reject(dead) => {
                    out.push(dead_letter(m, &dead, topics, &self.metrics));
                    dead_letters.push(dead);
                }
            }
        }
        for dead in &dead_letters {
            tally.rejected(dead);
        }
        self.metrics.flush(tally);
        out
    }

    /// Waits for every acknowledgement of a batch — re-sending, with backoff
    /// and for as long as it takes, any record whose write failed. Nothing
    /// is skipped: the whole batch is settled (the engine moves its offsets).
    async fn settle(&self, producer: &FutureProducer, mut b: InFlight) -> usize {
        for (i, d) in std::mem::take(&mut b.deliveries).into_iter().enumerate() {
            let failed = match d {
                Ok(f) => match f.await {
                    Ok(Ok(_)) => None,
                    Ok(Err((e, msg))) => {
                        b.out[i].headers = msg.headers().map(|h| h.as_borrowed().detach());
                        Some(e)
                    }
                    Err(_) => Some(KafkaError::Canceled),
                },
                Err(e) => Some(e),
            };
            if let Some(error) = failed {
                self.resend(producer, &mut b.out[i], error).await;
            }
        }
        let rejected = b.out.iter().filter(|o| o.dlq).count();
        self.metrics.batch(
            b.started.elapsed().as_secs_f64(),
            b.decided,
            b.out.len() - rejected,
            rejected,
        );
        b.records
    }

    async fn resend(
        &self,
        producer: &FutureProducer,
        record: &mut Outgoing,
        mut error: KafkaError,
    ) {
        let mut backoff = Backoff::broker();
        loop {
            let kind = if record.dlq { "dlq" } else { "data" };
            self.metrics.produce_error(kind, &error);
            if matches!(
                error.rdkafka_error_code(),
                Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic)
            ) {
                if let Err(e) =
                    create_topics(&self.config, std::slice::from_ref(&record.topic)).await
                {
                    tracing::warn!(message = "Cannot create topic.", topic = %record.topic, error = %e);
                }
            }
            backoff.wait().await;
            match enqueue(producer, record) {
                Ok(f) => match f.await {
                    Ok(Ok(_)) => return,
                    Ok(Err((e, msg))) => {
                        record.headers = msg.headers().map(|h| h.as_borrowed().detach());
                        error = e;
                    }
                    Err(_) => error = KafkaError::Canceled,
                },
                Err(e) => error = e,
            }
        }
    }

    async fn route_transaction(
        &self,
        producer: &FutureProducer,
        consumer: &StreamConsumer<RouterContext>,
        batch: &[BorrowedMessage<'_>],
        trace: Option<&govbus_trace::Batch>,
    ) -> Result<(), KafkaError> {
        let started = Instant::now();
        let mut out = self.decide_batch(batch, trace);
        let decided = started.elapsed().as_secs_f64();
        self.ensure_output_topics(&out).await;
        blocking(|| producer.begin_transaction())?;
        for d in enqueue_all(producer, &mut out).await {
            d?.await
                .map_err(|_| KafkaError::Canceled)?
                .map_err(|(e, _)| e)?;
        }
        let mut offsets = TopicPartitionList::new();
        for (tp, next) in next_offsets(batch) {
            offsets.add_partition_offset(tp.0, tp.1, Offset::Offset(next))?;
        }
        let group = consumer
            .group_metadata()
            .ok_or_else(|| KafkaError::Subscription("no group metadata".into()))?;
        let limit = Timeout::After(self.config.transaction_timeout);
        blocking(|| {
            producer.send_offsets_to_transaction(&offsets, &group, limit)?;
            producer.commit_transaction(limit)
        })?;
        let rejected = out.iter().filter(|o| o.dlq).count();
        self.metrics.batch(
            started.elapsed().as_secs_f64(),
            decided,
            out.len() - rejected,
            rejected,
        );
        Ok(())
    }
}

/// The DLQ record: original key, value and headers (minus forged
/// `govbus.error.*` ones, or none when there were too many) plus the error headers.
fn dead_letter(
    m: &BorrowedMessage<'_>,
    dead: &DeadLetter,
    topics: &Topics,
    metrics: &Metrics,
) -> Outgoing {
    let too_many = dead.reason == govbus_validate::Reason::HeadersTooMany;
    // Headers whose names are not UTF-8 cannot be written again: counted.
    let (original, unreadable) = match m.headers() {
        Some(hs) if !too_many => h::named(hs),
        _ => (Vec::new(), 0),
    };
    let errors = h::ErrorHeaders {
        reason: dead.reason.code(),
        stage: dead.stage.as_str(),
        detail: dead.detail.as_ref(),
        topic: m.topic(),
        partition: m.partition(),
        offset: m.offset(),
        field: dead.field.as_deref(),
        dataset: dead.dataset.as_deref(),
        subscription: None,
        headers_dropped: if too_many {
            m.headers().map_or(0, |hs| hs.count())
        } else {
            unreadable
        },
        record_omitted: None,
        key_omitted: None,
    };
    let fitted = h::fitted_dead_letter(m.key(), m.payload(), original, &[], &errors);
    if fitted.trimmed {
        metrics.dead_letter_trimmed(&dead.department);
        tracing::warn!(message = "Dead letter written without part of the record (its headers, value or key: too large to copy); the original stays on its topic for that topic's retention.", topic = m.topic(), partition = m.partition(), offset = m.offset(), bytes = m.payload_len());
    }
    let (key, value, headers) = (fitted.key, fitted.value, fitted.headers);
    Outgoing {
        topic: topics.dlq(&dead.department),
        key: key.map(<[u8]>::to_vec),
        value: value.map(<[u8]>::to_vec),
        headers: Some(headers),
        dlq: true,
    }
}

/// Hands every record of `out` to librdkafka, in order. On `QueueFull` it
/// waits 1 ms and tries again: the queue empties as acknowledgements come
/// (librdkafka's thread takes them, awaited or not).
async fn enqueue_all(
    producer: &FutureProducer,
    out: &mut [Outgoing],
) -> Vec<Result<DeliveryFuture, KafkaError>> {
    let mut deliveries = Vec::with_capacity(out.len());
    for o in out {
        deliveries.push(loop {
            match enqueue(producer, o) {
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                other => break other,
            }
        });
    }
    deliveries
}

/// Hands one record to librdkafka (moving its headers in). `QueueFull` is
/// returned to the caller, which decides how to make room.
fn enqueue(producer: &FutureProducer, o: &mut Outgoing) -> Result<DeliveryFuture, KafkaError> {
    let mut r: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&o.topic);
    if let Some(k) = &o.key {
        r = r.key(k.as_slice());
    }
    if let Some(v) = &o.value {
        r = r.payload(v.as_slice());
    }
    if let Some(h) = o.headers.take() {
        r = r.headers(h);
    }
    producer.send_result(r).map_err(|(e, rec)| {
        o.headers = rec.headers;
        e
    })
}

/// Whether a value is Confluent-framed Avro under a schema id `engine` lacks.
fn unknown_schema(engine: &Engine, value: Option<&[u8]>) -> bool {
    match value {
        Some(v) if v.len() >= 5 && v[0] == 0 => engine
            .dataset_of(govbus_catalog::SchemaId(u32::from_be_bytes([
                v[1], v[2], v[3], v[4],
            ])))
            .is_none(),
        _ => false,
    }
}

/// The next offset to read, per partition, after this batch.
fn next_offsets<'a>(batch: &'a [BorrowedMessage<'_>]) -> HashMap<(&'a str, i32), i64> {
    let mut next: HashMap<(&str, i32), i64> = HashMap::new();
    for m in batch {
        let e = next.entry((m.topic(), m.partition())).or_insert(0);
        *e = (*e).max(m.offset() + 1);
    }
    next
}

async fn create_topics(config: &RouterConfig, names: &[String]) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(ClientConfig::new(), &[])
        .set("bootstrap.servers", &config.bootstrap)
        .create()?;
    let new: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| NewTopic::new(n, config.partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, e)) => tracing::warn!(message = "Topic not created.", topic, error = %e),
        }
    }
    Ok(())
}
