//! What every consuming stage shares — the router and every sink alike:
//! [`next_batch`] collects a batch from a consumer, [`Revocations`]
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
/// stored no offsets, so its records come again after a restart.
pub async fn next_batch<'c, C: ConsumerContext + 'static, T>(
    consumer: &'c StreamConsumer<C>,
    wait: Option<Duration>,
    max: usize,
    linger: Duration,
    fence: Option<&Revocations>,
    mut keep: impl FnMut(BorrowedMessage<'c>) -> T,
) -> Vec<T> {
    // Revocations seen when each record was fetched: the rebalance callback
    // runs inside `recv`, so a record returned after it belongs to the
    // assignment as it is after the change.
    let seen = || fence.map_or(0, Revocations::seen);
    let first = match wait {
        Some(wait) => match tokio::time::timeout(wait, consumer.recv()).await {
            Err(_) => return Vec::new(),
            Ok(r) => r,
        },
        None => consumer.recv().await,
    };
    let first = match first {
        Ok(m) => m,
        Err(error) => {
            tracing::warn!(message = "Consume failed; retrying.", %error);
            tokio::time::sleep(Duration::from_millis(200)).await;
            return Vec::new();
        }
    };
    let mut out = vec![(seen(), first)];
    let deadline = tokio::time::Instant::now() + linger;
    while out.len() < max {
        let until = deadline.min(tokio::time::Instant::now() + IDLE_GAP);
        match tokio::time::timeout_at(until, consumer.recv()).await {
            Ok(Ok(m)) => out.push((seen(), m)),
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

#[cfg(test)]
mod tests {
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
}
