//! What every consuming stage shares — the router, every sink and the live
//! interfaces' state builder alike: [`run`] (the [`engine`]) is the one
//! consume → effect → settle loop they run on and the only place offsets
//! move; [`next_batch`] collects a batch from a consumer, [`Revocations`]
//! fences it against rebalances, and [`blocking`] runs what blocks (an
//! fsync, a transaction's commit, a metadata request) off the async worker.
//!
//! **Fencing a batch.** A stage collects a batch over several `recv` calls,
//! and a rebalance runs inside one of them (librdkafka serves the rebalance
//! callback on the polling thread). Records of a partition collected before
//! it was revoked could still be processed, but their offsets can no longer
//! be stored or committed: the partition's next owner starts from the
//! offset committed in the revocation and processes them again (a duplicate
//! routed record, a duplicate delivery). Dropping them instead is safe:
//! nothing of theirs was done or stored here, so whoever owns the partition
//! next — another instance, or this one after a re-assignment, both starting
//! from the committed offset — fetches them again. Keeping a record is
//! always safe (a repeat at worst), so whenever the log cannot tell, the
//! record is kept.

use std::time::Duration;

pub mod engine;
pub use engine::{before_rebalance, run, Fenced, NoReadAhead, Options, Prepare, Settled, Stage};

use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Revocations recorded before the oldest are forgotten. A batch lingers
/// for milliseconds; rebalances come seconds apart.
const KEPT: u64 = 64;

/// The revocations a consumer went through, numbered from 1.
#[derive(Debug, Default)]
pub struct Revocations {
    count: AtomicU64,
    log: Mutex<Log>,
}

#[derive(Debug, Default)]
struct Log {
    /// Revocations up to this number are forgotten.
    forgotten: u64,
    /// `(number, topic, partition)` of each revoked partition, oldest first.
    revoked: Vec<(u64, String, i32)>,
}

impl Revocations {
    /// How many revocations happened so far: a record fetched now is
    /// fenced by any later revocation of its partition.
    pub fn seen(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// Records one revocation of `partitions` (called from the rebalance
    /// callback, before the partitions are given up).
    pub fn revoke(&self, partitions: impl IntoIterator<Item = (String, i32)>) {
        let mut log = self.log();
        let n = self.count.load(Ordering::Acquire) + 1;
        log.revoked
            .extend(partitions.into_iter().map(|(t, p)| (n, t, p)));
        log.forgotten = n.saturating_sub(KEPT);
        let forgotten = log.forgotten;
        log.revoked.retain(|e| e.0 > forgotten);
        self.count.store(n, Ordering::Release);
    }

    /// Records a revocation, when `rebalance` is one (call it from a
    /// consumer context's `pre_rebalance`).
    pub fn on_rebalance(&self, rebalance: &rdkafka::consumer::Rebalance<'_>) {
        if let rdkafka::consumer::Rebalance::Revoke(revoked) = rebalance {
            self.revoke(
                revoked
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition())),
            );
        }
    }

    /// Whether `partition` of `topic` was revoked after revocation number
    /// `seen` (false when the log no longer reaches back that far: keeping
    /// a record is the safe side).
    pub fn revoked_since(&self, seen: u64, topic: &str, partition: i32) -> bool {
        if self.count.load(Ordering::Acquire) == seen {
            return false;
        }
        let log = self.log();
        seen >= log.forgotten
            && log
                .revoked
                .iter()
                .any(|(n, t, p)| *n > seen && *p == partition && t == topic)
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Runs `f`, which blocks (an fsync, a transaction's commit, a metadata
/// request), without stalling the async worker it is called on: on a
/// multi-threaded runtime through `block_in_place` (the worker's other tasks
/// move to another thread meanwhile); on a current-thread runtime (tests)
/// or outside any runtime, in place.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// How long a batch in collection waits for its next record before it
/// closes early: records already fetched come at once, so a batch fills to
/// `max` under load, and at a low rate it goes as soon as the records in
/// hand are taken instead of waiting out the whole linger (every stage's
/// linger adds to the end-to-end latency).
pub const IDLE_GAP: Duration = Duration::from_millis(2);

/// Collects the next batch: waits `wait` for a first record (`None`: until
/// one comes), then up to `max` records in all for at most `linger` more,
/// closing early when no record comes for [`IDLE_GAP`].
/// With `fence`, records whose partition was revoked while the batch was
/// being collected are left out (their next owner processes them). An
/// empty batch means idle (or a failed poll, logged, after a 200 ms pause).
/// `keep` turns each record into what the stage keeps of it.
///
/// Cancel-safe in the way a stage needs: a batch dropped half collected
/// stored no offsets, so its records come again after a restart (but not
/// from this consumer: a stage that goes on reading with it must not drop a
/// batch half collected — see [`first_record`] and [`fill`], its halves).
pub async fn next_batch<'c, C: ConsumerContext + 'static, T>(
    consumer: &'c StreamConsumer<C>,
    wait: Option<Duration>,
    max: usize,
    linger: Duration,
    fence: Option<&Revocations>,
    keep: impl FnMut(BorrowedMessage<'c>) -> T,
) -> Vec<T> {
    match first_record(consumer, wait, fence).await {
        Some(first) => fill(consumer, first, max, linger, fence, keep).await,
        None => Vec::new(),
    }
}

/// The first record of a batch, with the revocations seen when it was
/// fetched (see [`first_record`]).
pub struct First<'c> {
    seen: u64,
    message: BorrowedMessage<'c>,
}

impl std::fmt::Debug for First<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("First")
            .field("topic", &self.message.topic())
            .field("partition", &self.message.partition())
            .field("offset", &self.message.offset())
            .finish_non_exhaustive()
    }
}

/// The first half of [`next_batch`]: waits `wait` for a first record
/// (`None`: until one comes). `None` means idle, or a failed poll (logged,
/// after a 200 ms pause). **Cancel-safe**: dropped before it returns, it
/// took nothing from the consumer, so a stage may race it against other
/// work (collect its next batch while the current one is delivered) and
/// drop it when that work ends first.
pub async fn first_record<'c, C: ConsumerContext + 'static>(
    consumer: &'c StreamConsumer<C>,
    wait: Option<Duration>,
    fence: Option<&Revocations>,
) -> Option<First<'c>> {
    // Revocations seen when the record was fetched: the rebalance callback
    // runs inside `recv`, so a record returned after it belongs to the
    // assignment as it is after the change.
    let first = match wait {
        Some(wait) => tokio::time::timeout(wait, consumer.recv()).await.ok()?,
        None => consumer.recv().await,
    };
    match first {
        Ok(message) => Some(First {
            seen: fence.map_or(0, Revocations::seen),
            message,
        }),
        Err(error) => {
            tracing::warn!(message = "Consume failed; retrying.", %error);
            tokio::time::sleep(Duration::from_millis(200)).await;
            None
        }
    }
}

/// The second half of [`next_batch`]: from `first`, up to `max` records in
/// all for at most `linger`, closing early when no record comes for
/// [`IDLE_GAP`], fenced by `fence`. **Not cancel-safe** for a stage that
/// goes on reading with the same consumer: the records it took are gone
/// from the consumer's position, so once [`first_record`] returned, the
/// batch is collected to its end.
pub async fn fill<'c, C: ConsumerContext + 'static, T>(
    consumer: &'c StreamConsumer<C>,
    first: First<'c>,
    max: usize,
    linger: Duration,
    fence: Option<&Revocations>,
    mut keep: impl FnMut(BorrowedMessage<'c>) -> T,
) -> Vec<T> {
    let seen = || fence.map_or(0, Revocations::seen);
    let mut out = vec![(first.seen, first.message)];
    let deadline = tokio::time::Instant::now() + linger;
    while out.len() < max {
        let until = deadline.min(tokio::time::Instant::now() + IDLE_GAP);
        match tokio::time::timeout_at(until, consumer.recv()).await {
            Ok(Ok(m)) => {
                out.push((seen(), m));
                // Records already fetched are ready at once: without this
                // the loop would hold its task for the whole batch, and
                // work sharing the task (a delivery the next batch is read
                // beside: `while_reading_ahead`) would wait for it.
                tokio::task::consume_budget().await;
            }
            Ok(Err(error)) => {
                tracing::warn!(message = "Consume failed.", %error);
                break;
            }
            Err(_) => break,
        }
    }
    let Some(fence) = fence else {
        return out.into_iter().map(|(_, m)| keep(m)).collect();
    };
    let fetched = out.len();
    let kept: Vec<T> = out
        .into_iter()
        .filter(|(seen, m)| !fence.revoked_since(*seen, m.topic(), m.partition()))
        .map(|(_, m)| keep(m))
        .collect();
    if kept.len() < fetched {
        tracing::info!(message = "Left out records whose partition was revoked while the batch was collected; the partition's next owner processes them.", records = fetched - kept.len());
    }
    kept
}

/// Runs `work` (a batch's delivery) and meanwhile collects the next batch
/// and hands it to `then` (which prepares it), so that reading and
/// preparing overlap with the destination's work instead of waiting for
/// it. The next batch is started only by a record that comes before `work`
/// ends: until then nothing is taken from the consumer ([`first_record`] is
/// cancel-safe) and the read is dropped; once a record is taken the batch
/// is collected to its end ([`fill`]: up to `linger`), prepared, and
/// returned with `work`'s output, to be processed next.
///
/// `work` and the read share one task: `then` should yield now and then
/// so `work`'s replies are not kept waiting.
///
/// **Only for a consumer assigned its partitions, not a group member.** The
/// read polls the consumer, and a poll serves a rebalance: a group member
/// would give up the partitions of the batch `work` is still delivering,
/// and their next owner would deliver the same records again *while*
/// `work` still delivers them — a late write landing after newer versions
/// of the same keys, per-key order broken downstream. A group member that
/// does not poll while it delivers makes the group wait for it instead.
pub async fn while_reading_ahead<'c, C, T, W, N, P>(
    work: W,
    consumer: &'c StreamConsumer<C>,
    max: usize,
    linger: Duration,
    fence: Option<&Revocations>,
    keep: impl FnMut(BorrowedMessage<'c>) -> T,
    then: impl FnOnce(Vec<T>) -> P,
) -> (W::Output, Option<N>)
where
    C: ConsumerContext + 'static,
    W: std::future::Future,
    P: std::future::Future<Output = N>,
{
    let first = first_record(consumer, None, fence);
    tokio::pin!(work);
    tokio::pin!(first);
    let first = tokio::select! {
        biased;
        out = &mut work => return (out, None),
        first = &mut first => first,
    };
    let Some(first) = first else {
        return (work.await, None);
    };
    let collect = async {
        let batch = fill(consumer, first, max, linger, fence, keep).await;
        then(batch).await
    };
    let (out, next) = tokio::join!(work, collect);
    (out, Some(next))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn p(n: i32) -> (String, i32) {
        ("data.x".to_owned(), n)
    }

    #[test]
    fn blocking_work_runs_on_every_kind_of_runtime_and_outside_one() {
        assert_eq!(blocking(|| 1), 1);
        let current = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        assert_eq!(current.block_on(async { blocking(|| 2) }), 2);
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("runtime");
        assert_eq!(
            multi
                .block_on(async { tokio::spawn(async { blocking(|| 3) }).await })
                .ok(),
            Some(3)
        );
    }

    #[test]
    fn a_record_is_fenced_only_by_a_later_revocation_of_its_own_partition() {
        let r = Revocations::default();
        let before = r.seen();
        r.revoke([p(1), p(2)]);
        let between = r.seen();
        assert!(r.revoked_since(before, "data.x", 1));
        assert!(r.revoked_since(before, "data.x", 2));
        assert!(!r.revoked_since(before, "data.x", 3), "not revoked");
        assert!(!r.revoked_since(before, "data.y", 1), "another topic");
        // Fetched after the revocation (a re-assignment): kept.
        assert!(!r.revoked_since(between, "data.x", 1));
        r.revoke([p(3)]);
        assert!(r.revoked_since(between, "data.x", 3));
        assert!(!r.revoked_since(between, "data.x", 1));
        assert!(r.revoked_since(before, "data.x", 1));
    }

    #[test]
    fn a_revocation_of_nothing_still_counts_but_fences_nothing() {
        let r = Revocations::default();
        r.revoke([]);
        assert_eq!(r.seen(), 1);
        assert!(!r.revoked_since(0, "data.x", 0));
        r.revoke([p(0)]);
        assert!(r.revoked_since(0, "data.x", 0));
    }

    #[test]
    fn when_the_log_no_longer_reaches_back_the_record_is_kept() {
        let r = Revocations::default();
        for i in 0..(KEPT as i32 + 10) {
            r.revoke([p(i)]);
        }
        // Revocation 1 (partition 0) is forgotten: keep, never drop blindly.
        assert!(!r.revoked_since(0, "data.x", 0));
        // Recent ones are still known.
        let last = r.seen();
        assert!(r.revoked_since(last - 1, "data.x", KEPT as i32 + 9));
        assert!(!r.revoked_since(last, "data.x", KEPT as i32 + 9));
    }

    /// A mock cluster whose topic `t` (one partition) holds the records
    /// `0..n`, and a consumer of it in group `g` with `context` (offsets
    /// stored only when told). Shared with the engine's tests.
    pub(crate) async fn mock_topic<C: ConsumerContext + 'static>(
        n: usize,
        context: C,
    ) -> (
        rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
        StreamConsumer<C>,
    ) {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let mock = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
        mock.create_topic("t", 1, 1).expect("topic");
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .create()
            .expect("producer");
        for i in 0..n {
            let v = i.to_string();
            producer
                .send(
                    FutureRecord::<(), _>::to("t").payload(&v),
                    Duration::from_secs(5),
                )
                .await
                .expect("acknowledged");
        }
        let consumer: StreamConsumer<C> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .set("group.id", "g")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.offset.store", "false")
            .create_with_context(context)
            .expect("consumer");
        rdkafka::consumer::Consumer::subscribe(&consumer, &["t"]).expect("subscribe");
        (mock, consumer)
    }

    /// A consumer of `n` records on the mock cluster's topic `t`.
    async fn mock_with(
        n: usize,
    ) -> (
        rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
        StreamConsumer,
    ) {
        mock_topic(n, rdkafka::consumer::DefaultConsumerContext).await
    }

    fn offset(m: BorrowedMessage<'_>) -> i64 {
        m.offset()
    }

    const LINGER: Duration = Duration::from_millis(200);

    /// The next batch of up to `max` offsets, as a stage takes it.
    async fn batch(consumer: &StreamConsumer, max: usize) -> Vec<i64> {
        next_batch(
            consumer,
            Some(Duration::from_secs(10)),
            max,
            LINGER,
            None,
            offset,
        )
        .await
    }

    /// What is read ahead while `work` runs (its offsets, untouched).
    async fn read_during(
        consumer: &StreamConsumer,
        work: impl std::future::Future<Output = ()>,
    ) -> Option<Vec<i64>> {
        let ((), ahead) = while_reading_ahead(
            work,
            consumer,
            10,
            LINGER,
            None,
            offset,
            |b| async move { b },
        )
        .await;
        ahead
    }

    #[tokio::test]
    async fn a_read_ahead_is_dropped_only_before_it_took_a_record_and_nothing_is_skipped() {
        let (_mock, consumer) = mock_with(30).await;
        assert_eq!(batch(&consumer, 10).await, (0..10).collect::<Vec<i64>>());
        // Work that ends at once: nothing read ahead, nothing taken.
        assert_eq!(read_during(&consumer, async {}).await, None);
        // Work that takes a while: the next batch is read meanwhile and
        // handed over.
        let ahead = read_during(&consumer, tokio::time::sleep(Duration::from_millis(500))).await;
        assert_eq!(ahead, Some((10..20).collect()));
        // The consumer goes on right after the batch read ahead: no record
        // skipped, none repeated.
        assert_eq!(batch(&consumer, 100).await, (20..30).collect::<Vec<i64>>());
        // At the end of the topic, work that ends first drops the waiting read.
        let ahead = read_during(&consumer, tokio::time::sleep(Duration::from_millis(100))).await;
        assert_eq!(ahead, None);
    }
}
