//! Fencing a batch against rebalances: records fetched before their
//! partition was revoked are not delivered by this instance.
//!
//! A sink collects a batch over several `recv` calls, and a rebalance runs
//! inside one of them (librdkafka serves the rebalance callback on the
//! polling thread). Records of a partition collected before it was revoked
//! could still be delivered, but their offsets can no longer be stored or
//! committed: the partition's next owner starts from the offset committed in
//! the revocation callback and delivers them again. Dropping them instead is
//! safe: nothing of theirs was delivered or stored here, so whoever owns the
//! partition next — another instance, or this one after a re-assignment,
//! both starting from the committed offset — fetches them again. Keeping a
//! record is always safe (a repeat at worst), so whenever the log cannot
//! tell, the record is kept.

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

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> (String, i32) {
        ("data.x".to_owned(), n)
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
