//! The state builder of one dataset: reads `data.<dataset>` and applies it to
//! the store, one transaction per batch, the batch's offsets inside it. It
//! is a stage of the one stage engine (`govbus_kafka::stage::run`), run on
//! a thread of its own: the store's write goes to the blocking pool, and
//! meanwhile the engine reads and decodes the next batch (the consumer is
//! assigned its partitions, so it may read ahead).
//!
//! Every instance reads every partition itself (assigned, no consumer group,
//! nothing committed to Kafka): its position is the store's, so a restart
//! resumes after the last committed batch and a lost store starts again from
//! the beginning of the (compacted) topic.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use govbus_catalog::{time, Catalog};
use govbus_kafka::headers as h;
use govbus_kafka::stage::{self, blocking, Fenced, Prepare, Revocations, Settled, Stage};
use govbus_state::records::{self, Change};
use govbus_state::{StateError, Store};
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// How current one dataset's state is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Freshness {
    /// Time of the newest change applied (milliseconds since the epoch; 0: none).
    pub newest_ms: i64,
    /// Records in the topic not yet applied (at the last check, every 2 s).
    pub lag: i64,
    /// Live keys.
    pub keys: u64,
    /// Whether the builder has reached the end of the topic once since start.
    pub caught_up: bool,
    /// Whether the builder's last attempt failed (it retries every second):
    /// answers would come from a state that may be missing changes.
    pub failing: bool,
}

/// A dataset's state as the API sees it: its freshness, and a signal bumped
/// after every commit (wait-for-version waits on it).
#[derive(Debug)]
pub struct DatasetState {
    /// The dataset.
    pub dataset: String,
    freshness: Mutex<Freshness>,
    commits: watch::Sender<u64>,
}

impl DatasetState {
    /// Its current freshness.
    pub fn freshness(&self) -> Freshness {
        self.freshness.lock().map(|f| *f).unwrap_or_default()
    }

    /// A receiver that changes after every commit.
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.commits.subscribe()
    }

    fn update(&self, f: impl FnOnce(&mut Freshness)) {
        if let Ok(mut g) = self.freshness.lock() {
            f(&mut g);
        }
    }
}

/// What a builder needs.
#[derive(Debug, Clone)]
pub struct BuilderConfig {
    /// Kafka bootstrap servers.
    pub bootstrap: String,
    /// The canonical topic.
    pub topic: String,
    /// The dataset.
    pub dataset: String,
    /// Most records per transaction.
    pub max_batch: usize,
    /// Extra librdkafka settings.
    pub client_overrides: Vec<(String, String)>,
}

/// Starts the builder of one dataset on its own thread.
pub fn spawn(
    config: BuilderConfig,
    store: Store,
    catalog: watch::Receiver<Arc<Catalog>>,
    metrics: Metrics,
    stop: Arc<AtomicBool>,
) -> Arc<DatasetState> {
    let state = Arc::new(DatasetState {
        dataset: config.dataset.clone(),
        freshness: Mutex::new(Freshness::default()),
        commits: watch::channel(0).0,
    });
    if let Ok(r) = store.read() {
        if let Ok((keys, newest_ms)) = records::stats(&r, &config.dataset) {
            state.update(|f| {
                f.keys = keys;
                f.newest_ms = newest_ms;
            });
        }
    }
    let st = state.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("state-{}", config.dataset))
        .spawn(move || {
            let mut b = Builder {
                config,
                store,
                catalog,
                metrics,
                state: st,
                layout: String::new(),
            };
            // The engine is async: this thread drives it on a runtime of
            // its own (the store's writes go to the runtime's blocking pool).
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(message = "Cannot start a state builder's runtime.", dataset = %b.config.dataset, error = %e);
                    return;
                }
            };
            while !stop.load(Ordering::Relaxed) {
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    runtime.block_on(b.run(&stop))
                }));
                let error = match outcome {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "the builder panicked (a bug); see the log above".to_owned(),
                };
                b.metrics.error(&b.config.dataset);
                b.state.update(|f| f.failing = true);
                tracing::error!(message = "State builder failed; restarting it from the store's position in 1 s. Until it succeeds the dataset's calls answer 503.", dataset = %b.config.dataset, error = %error);
                std::thread::sleep(Duration::from_secs(1));
            }
        });
    if let Err(e) = spawned {
        tracing::error!(message = "Cannot start a state builder thread.", error = %e);
    }
    state
}

#[derive(Debug, thiserror::Error)]
enum BuildError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("store writer: {0}")]
    Thread(String),
    #[error("the record at partition {partition} offset {offset} does not decode with this process's catalog ({detail}); its lookup fields cannot be indexed, so the state stops here until the catalog has its schema")]
    Undecodable {
        partition: i32,
        offset: i64,
        detail: String,
    },
}

struct Builder {
    config: BuilderConfig,
    store: Store,
    catalog: watch::Receiver<Arc<Catalog>>,
    metrics: Metrics,
    state: Arc<DatasetState>,
    layout: String,
}

/// The lookup fields of `dataset` as one string: when it changes, the
/// indexes are rebuilt.
fn layout_of(catalog: &Catalog, dataset: &str) -> String {
    catalog.dataset(dataset).map_or(String::new(), |d| {
        d.lookup
            .iter()
            .map(|l| l.field.as_str())
            .collect::<Vec<_>>()
            .join(",")
    })
}

impl Builder {
    /// Makes the stored layout equal the catalog's; a change clears the
    /// dataset's state and position (it is rebuilt from the topic).
    fn check_layout(&mut self) -> Result<bool, StateError> {
        let layout = layout_of(&self.catalog.borrow(), &self.config.dataset);
        if layout == self.layout {
            return Ok(false);
        }
        let key = format!("layout:{}", self.config.dataset);
        let tx = self.store.write()?;
        let stored = tx.meta(&key)?;
        let rebuilt = match stored {
            Some(s) if s == layout.as_bytes() => false,
            None => {
                // A new store (or one from before layouts): whatever it holds
                // was indexed by nothing; start clean.
                let had = !tx.offsets(&self.config.topic)?.is_empty();
                if had {
                    records::clear(&tx, &self.config.dataset)?;
                    tx.clear_offsets(&self.config.topic)?;
                }
                had
            }
            Some(_) => {
                records::clear(&tx, &self.config.dataset)?;
                tx.clear_offsets(&self.config.topic)?;
                true
            }
        };
        tx.set_meta(&key, layout.as_bytes())?;
        tx.commit()?;
        if rebuilt {
            tracing::warn!(message = "The dataset's lookup fields changed: rebuilding its state from the topic.", dataset = %self.config.dataset, lookup = %layout);
            self.state.update(|f| *f = Freshness::default());
        }
        self.layout = layout;
        Ok(rebuilt)
    }

    fn consumer(&self) -> Result<StreamConsumer<Assigned>, BuildError> {
        let mut c: ClientConfig = govbus_kafka::config::consumer(
            &self.config.bootstrap,
            &format!("govbus.query.{}", self.config.dataset),
        );
        c.set("enable.auto.commit", "false")
            .set("statistics.interval.ms", "0")
            .set("fetch.wait.max.ms", "50");
        for (k, v) in &self.config.client_overrides {
            c.set(k, v);
        }
        Ok(c.create_with_context(Assigned::default())?)
    }

    /// Assigns every partition at the store's position (the beginning where
    /// it has none). Returns the positions.
    fn assign(
        &self,
        consumer: &StreamConsumer<Assigned>,
    ) -> Result<BTreeMap<i32, i64>, BuildError> {
        let topic = &self.config.topic;
        let stored = self.store.read()?.offsets(topic)?;
        let metadata = blocking(|| consumer.fetch_metadata(Some(topic), Duration::from_secs(10)))?;
        let mut tpl = TopicPartitionList::new();
        let mut positions = BTreeMap::new();
        for t in metadata.topics() {
            if t.error().is_some() {
                continue;
            }
            for p in t.partitions() {
                let offset = stored.get(&p.id()).copied();
                tpl.add_partition_offset(
                    topic,
                    p.id(),
                    offset.map_or(Offset::Beginning, Offset::Offset),
                )?;
                positions.insert(p.id(), offset.unwrap_or(0));
            }
        }
        consumer.assign(&tpl)?;
        Ok(positions)
    }

    /// Builds until `stop` (`Ok`), the lookup fields change (`Ok`: run
    /// again, from the beginning of the topic), or a fault (`Err`).
    async fn run(&mut self, stop: &AtomicBool) -> Result<(), BuildError> {
        self.check_layout()?;
        let consumer = self.consumer()?;
        let mut positions = self.assign(&consumer)?;
        while positions.is_empty() && !stop.load(Ordering::Relaxed) {
            tracing::warn!(message = "The dataset's canonical topic does not exist yet; waiting for it.", topic = %self.config.topic);
            tokio::time::sleep(Duration::from_secs(2)).await;
            positions = self.assign(&consumer)?;
        }
        tracing::info!(message = "State builder started.", dataset = %self.config.dataset, resume = %positions.iter().map(|(p, o)| format!("{p}:{o}")).collect::<Vec<_>>().join(","));
        let options = stage::Options {
            max_batch: self.config.max_batch,
            linger: Duration::from_millis(5),
            idle_wait: Some(Duration::from_millis(100)),
            in_flight: 0,
            // The offsets are the store's, written with the changes.
            store_offsets: false,
        };
        let mut building = Building {
            builder: self,
            consumer: &consumer,
            positions,
            last_lag: None,
        };
        let stopping = async {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        match stage::run(
            &consumer,
            &mut building,
            Consumed::from_message,
            &options,
            stopping,
        )
        .await
        {
            None | Some(Ended::Rebuilt) => Ok(()),
            Some(Ended::Failed(e)) => Err(e),
        }
    }

    fn writer(&self) -> Writer {
        Writer {
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            state: self.state.clone(),
            dataset: self.config.dataset.clone(),
            topic: self.config.topic.clone(),
        }
    }

    fn decoder(&self) -> Decoder {
        Decoder {
            catalog: self.catalog.clone(),
            dataset: self.config.dataset.clone(),
            metrics: self.metrics.clone(),
        }
    }

    fn publish_state(&self) {
        publish_state(&self.metrics, &self.state);
    }

    fn measure_lag(&self, consumer: &StreamConsumer<Assigned>, positions: &BTreeMap<i32, i64>) {
        let mut lag = 0;
        for (p, pos) in positions {
            match consumer.fetch_watermarks(&self.config.topic, *p, Duration::from_secs(5)) {
                Ok((low, high)) => lag += (high - (*pos).max(low)).max(0),
                Err(_) => return,
            }
        }
        self.metrics.lag(&self.config.dataset, lag);
        self.publish_state();
        let first = !self.state.freshness().caught_up && lag == 0;
        self.state.update(|f| {
            f.lag = lag;
            f.caught_up |= lag == 0;
            f.failing = false;
        });
        if first {
            tracing::info!(message = "State caught up with the topic.", dataset = %self.config.dataset, keys = self.state.freshness().keys);
            self.state.commits.send_modify(|n| *n += 1);
        }
    }
}

fn publish_state(metrics: &Metrics, state: &DatasetState) {
    let f = state.freshness();
    let age = if f.newest_ms > 0 {
        (now_ms() - f.newest_ms).max(0) as f64 / 1000.0
    } else {
        0.0
    };
    metrics.state(&state.dataset, f.keys, age);
}

/// Decodes batches under the catalog of the moment (the engine reads and
/// decodes the next batch while one is written).
struct Decoder {
    /// Read when a batch is decoded, not when the decoder is made: a
    /// schema that arrived while the batch before was written is known.
    catalog: watch::Receiver<Arc<Catalog>>,
    dataset: String,
    metrics: Metrics,
}

impl Decoder {
    /// Decodes a batch into store changes (with its lookup-field
    /// index entries) and the offsets it ends at.
    fn decode(&self, batch: &mut [Consumed]) -> Result<Prepared, BuildError> {
        let catalog = self.catalog.borrow().clone();
        let catalog = &catalog;
        let dataset = catalog.dataset(&self.dataset);
        let mut changes = Vec::with_capacity(batch.len());
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        for c in batch {
            next.insert(c.partition, c.offset + 1);
            // Moved out: the record keeps only its position.
            let value = c.value.take();
            let mut index = Vec::new();
            if let (Some(ds), Some(v)) = (dataset, &value) {
                if !ds.lookup.is_empty() {
                    // Only the lookup fields are built; the rest is checked.
                    let lookup = |f: &str| ds.lookup.iter().any(|l| l.field == f);
                    match govbus_sink::decode::to_json_only(catalog, v, &lookup) {
                        Ok(record) => {
                            for l in &ds.lookup {
                                let tag = ds.personal_data.get(&l.field).copied();
                                if let Some(text) =
                                    record.get(&l.field).and_then(|v| crate::index_text(tag, v))
                                {
                                    index.push((l.field.clone(), text));
                                }
                            }
                        }
                        Err(e) => {
                            self.metrics.undecodable(&self.dataset);
                            return Err(BuildError::Undecodable {
                                partition: c.partition,
                                offset: c.offset,
                                detail: e.to_string(),
                            });
                        }
                    }
                }
            }
            changes.push(Change {
                key: std::mem::take(&mut c.key),
                version: c.version,
                value,
                time_ms: c.time_ms,
                id: std::mem::take(&mut c.id),
                index,
            });
        }
        Ok(Prepared { changes, next })
    }
}

impl Prepare<Consumed> for Decoder {
    type Prepared = Result<Prepared, BuildError>;

    async fn prepare(self, mut records: Vec<Consumed>) -> (Vec<Consumed>, Self::Prepared) {
        let prepared = self.decode(&mut records);
        (records, prepared)
    }
}

/// Why a builder's engine stopped.
enum Ended {
    /// The lookup fields changed: the state was cleared; build it again.
    Rebuilt,
    /// A fault: restarted from the store's position after a pause.
    Failed(BuildError),
}

impl From<BuildError> for Ended {
    fn from(e: BuildError) -> Ended {
        Ended::Failed(e)
    }
}

impl From<StateError> for Ended {
    fn from(e: StateError) -> Ended {
        Ended::Failed(e.into())
    }
}

/// The builder's consumer context: assigned partitions, no group, so no
/// revocation ever comes (the engine's fence stays empty).
#[derive(Default)]
struct Assigned(Revocations);

impl ClientContext for Assigned {}
impl ConsumerContext for Assigned {}
impl Fenced for Assigned {
    fn revocations(&self) -> &Revocations {
        &self.0
    }
}

/// The builder as a stage of the engine: a batch's changes and offsets are
/// written in one store transaction, on the blocking pool.
struct Building<'a> {
    builder: &'a mut Builder,
    consumer: &'a StreamConsumer<Assigned>,
    /// The store's position per partition (written offsets only).
    positions: BTreeMap<i32, i64>,
    last_lag: Option<Instant>,
}

impl Building<'_> {
    /// Measures the lag every 2 s, and whenever the state is not caught up
    /// yet and the input is idle. Lag counts from written offsets only.
    fn measure_lag_if_due(&mut self, idle: bool) {
        let due = self
            .last_lag
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(2));
        if due || (idle && !self.builder.state.freshness().caught_up) {
            self.last_lag = Some(Instant::now());
            let (consumer, positions) = (self.consumer, &self.positions);
            blocking(|| self.builder.measure_lag(consumer, positions));
        }
    }
}

impl Stage for Building<'_> {
    type Record = Consumed;
    type Started = usize;
    type Stop = Ended;
    type Preparer = Decoder;

    fn read_ahead(&self) -> Option<Decoder> {
        Some(self.builder.decoder())
    }

    async fn start(
        &mut self,
        mut records: Vec<Consumed>,
        prepared: Option<Result<Prepared, BuildError>>,
    ) -> Result<usize, Ended> {
        let prepared = match prepared {
            Some(p) => p?,
            None => self.builder.decoder().decode(&mut records)?,
        };
        if self.builder.check_layout()? {
            // Cleared: built again from the beginning (this batch with it).
            return Err(Ended::Rebuilt);
        }
        let writer = self.builder.writer();
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let _written = Written(Some(wait));
        let next = tokio::task::spawn_blocking(move || {
            let written = writer.write(&prepared).map(|()| prepared.next);
            let _ = done.send(());
            written
        })
        .await
        .map_err(|e| BuildError::Thread(format!("the write panicked (a bug): {e}")))??;
        self.positions.extend(next);
        self.measure_lag_if_due(false);
        Ok(records.len())
    }

    async fn settle(&mut self, written: usize) -> Settled<Ended> {
        Settled::Done(written)
    }

    async fn idle(&mut self) -> Result<(), Ended> {
        if self.builder.check_layout()? {
            return Err(Ended::Rebuilt);
        }
        self.measure_lag_if_due(true);
        Ok(())
    }
}

/// A store write on the blocking pool. Dropped before the write ended (a
/// panic unwinding the builder's thread while the batch read ahead was
/// decoded), it still waits for it: no write may land after the next run
/// has started (a write landing after a rebuild cleared the store would
/// leave it holding offsets past changes it does not have).
struct Written(Option<std::sync::mpsc::Receiver<()>>);

impl Drop for Written {
    fn drop(&mut self) {
        if let Some(wait) = self.0.take() {
            // Ends when the write sent its end, or dropped the sender (a
            // panic in the write).
            let _ = wait.recv();
        }
    }
}

/// A decoded batch: its changes and the offsets it ends at.
struct Prepared {
    changes: Vec<Change>,
    next: BTreeMap<i32, i64>,
}

/// Writes prepared batches to the store: the changes and the offsets they
/// end at in one transaction.
struct Writer {
    store: Store,
    metrics: Metrics,
    state: Arc<DatasetState>,
    dataset: String,
    topic: String,
}

impl Writer {
    fn write(&self, p: &Prepared) -> Result<(), BuildError> {
        let tx = self.store.write()?;
        let applied = records::apply(&tx, &self.dataset, &p.changes)?;
        for (partition, offset) in &p.next {
            tx.set_offset(&self.topic, *partition, *offset)?;
        }
        tx.commit()?;
        self.metrics.applied(
            &self.dataset,
            applied.written,
            applied.deleted,
            applied.stale,
        );
        self.state.update(|f| {
            f.keys = applied.live;
            f.newest_ms = applied.newest_ms;
            f.failing = false;
        });
        publish_state(&self.metrics, &self.state);
        self.state.commits.send_modify(|n| *n += 1);
        Ok(())
    }
}

/// One consumed record, owned.
struct Consumed {
    partition: i32,
    offset: i64,
    key: String,
    version: u64,
    value: Option<Vec<u8>>,
    time_ms: i64,
    id: String,
}

impl Consumed {
    fn from_message(m: BorrowedMessage<'_>) -> Consumed {
        Consumed::from(&m)
    }
}

impl From<&BorrowedMessage<'_>> for Consumed {
    fn from(m: &BorrowedMessage<'_>) -> Consumed {
        let header =
            |name: &str| -> Option<&str> { m.headers().and_then(|hs| h::get_str(hs, name)) };
        let key = header(h::CE_SUBJECT)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .or_else(|| {
                m.key()
                    .and_then(|k| std::str::from_utf8(k).ok())
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        let kafka_ms = m.timestamp().to_millis().unwrap_or(0);
        Consumed {
            partition: m.partition(),
            offset: m.offset(),
            key,
            version: header(h::CE_SOURCEVERSION)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            value: m.payload().map(<[u8]>::to_vec),
            time_ms: header(h::CE_TIME)
                .and_then(time::parse_rfc3339_micros)
                .map_or(kafka_ms, |us| us.div_euclid(1000)),
            id: header(h::CE_ID).unwrap_or("").to_owned(),
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
