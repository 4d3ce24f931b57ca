//! The one retry policy of govbus: every loop that waits out a transient
//! failure — a write the broker refused, a dead letter, a ledger append, a
//! Kafka view write, a webhook endpoint answering 5xx, a sink that failed
//! and starts again — waits by a [`Backoff`].
//!
//! The wait grows exponentially from `first` up to `cap`, with jitter: the
//! n-th wait is in `[d/2, d]` with `d = min(cap, first × 2^(n-1))`, so many
//! sinks failing at the same moment do not retry in step. `reset` after a
//! success starts the next failure from `first` again.
//!
//! What is transient is the caller's decision (a refused write is retried,
//! a record the destination rejects is dead-lettered); the policy only says
//! how long to wait.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Exponential backoff with jitter. See the module documentation.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    attempt: u32,
    state: u64,
}

impl Backoff {
    /// Waits from `first` up to `cap` (`cap` below `first` is raised to it).
    pub fn new(first: Duration, cap: Duration) -> Backoff {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        // Distinct per instance even when made in the same nanosecond.
        static MADE: AtomicU64 = AtomicU64::new(0);
        let n = MADE.fetch_add(1, Ordering::Relaxed);
        Backoff {
            first,
            cap: cap.max(first),
            attempt: 0,
            state: (u64::from(nanos) ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1,
        }
    }

    /// For writes to the broker (produce, dead letters, ledger appends,
    /// views): 100 ms up to 5 s.
    pub fn broker() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// Failures so far since the last `reset`.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The longest wait.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// Counts a failure and returns how long to wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64: jitter only, not a secret.
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        delay(self.first, self.cap, self.attempt, x)
    }

    /// Counts a failure and sleeps for the next wait.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// After a success: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The `attempt`-th wait (from 1) for a given random `draw`: in `[d/2, d]`,
/// `d = min(cap, first × 2^(attempt-1))`.
pub fn delay(first: Duration, cap: Duration, attempt: u32, draw: u64) -> Duration {
    let d = first
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(cap.max(first));
    let half = d / 2;
    let span = u64::try_from((d - half).as_micros())
        .unwrap_or(u64::MAX)
        .max(1);
    (half + Duration::from_micros(draw % span.saturating_add(1))).min(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_to_the_cap_with_jitter_and_start_over_after_a_reset() {
        let (first, cap) = (Duration::from_millis(100), Duration::from_secs(5));
        let mut b = Backoff::new(first, cap);
        let waits: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        assert_eq!(b.attempts(), 12);
        for (i, w) in waits.iter().enumerate() {
            let d = first.saturating_mul(1 << i).min(cap);
            assert!(
                *w >= d / 2 && *w <= d,
                "wait {i}: {w:?} outside [{:?}, {d:?}]",
                d / 2
            );
        }
        assert!(waits[11] >= cap / 2);
        b.reset();
        assert!(b.next_delay() <= first);
    }

    #[test]
    fn the_bounds_hold_for_any_draw() {
        let (first, cap) = (Duration::from_millis(200), Duration::from_millis(300));
        for draw in [0, 1, u64::MAX, 12_345_678_901] {
            for attempt in [0, 1, 2, 3, 40, u32::MAX] {
                let w = delay(first, cap, attempt, draw);
                assert!(w <= cap && w >= first / 2, "{attempt} {draw}: {w:?}");
            }
        }
        // A cap below `first` does not shrink the first wait.
        assert!(delay(first, Duration::ZERO, 1, 7) >= first / 2);
    }

    #[test]
    fn two_backoffs_made_at_once_do_not_wait_in_step() {
        let mut a = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let same = (0..8).filter(|_| a.next_delay() == b.next_delay()).count();
        assert!(same < 8);
    }
}
