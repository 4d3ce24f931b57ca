//! Idempotency keys: race-free within an instance, durable and shared
//! between instances through Kafka.
//!
//! A key is 1–255 visible ASCII characters; anything else is refused with
//! 400, never ignored. Keys are identified by `SHA-256(department \0 key)`:
//! the caller's text is kept nowhere (not in memory, not on the topic, not in
//! event ids — a department that uses a person's ID number as its key leaks
//! nothing).
//!
//! - **In flight**: the first request with a key reserves it; a concurrent
//!   duplicate waits for the first one's answer and returns it (or takes the
//!   key over if the first one failed without an answer to keep).
//! - **Durable and shared**: a kept answer is written to the compacted topic
//!   `_govbus.idempotency` (key = the key's hash) and acknowledged *before*
//!   the response is sent. Every instance reads that topic from the start
//!   when it starts (requests with a key wait until it has caught up) and
//!   follows it, so a retry after a restart, or through another instance,
//!   gets the first answer.
//! - **Bounds**: answers are kept for `ttl` (default 24 h) and up to
//!   `max_bytes` of answer bodies per instance (default 256 MiB), oldest
//!   forgotten first.
//!
//! Not covered: two *concurrent* requests with one key sent to two different
//! instances (each reserves it locally); and a crash between the broker's
//! acknowledgement of the records and that of the answer (a retry then
//! publishes again, with new event ids). Subscribers dedupe by event id.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::sync::watch;

/// Longest accepted `Idempotency-Key`.
pub const MAX_KEY_LEN: usize = 255;

/// The key's identity: `SHA-256(department \0 key)`.
pub(crate) type KeyHash = [u8; 32];

/// Checks an `Idempotency-Key` value and hashes it with the department.
pub(crate) fn key_hash(department: &str, raw: &[u8]) -> Result<KeyHash, &'static str> {
    if raw.is_empty() || raw.len() > MAX_KEY_LEN || !raw.iter().all(u8::is_ascii_graphic) {
        return Err(
            "an Idempotency-Key is 1-255 visible ASCII characters (no spaces); use e.g. a UUID",
        );
    }
    let mut h = sha2::Sha256::new();
    h.update(department.as_bytes());
    h.update([0]);
    h.update(raw);
    Ok(h.finalize().into())
}

/// A kept answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The response body.
    pub body: String,
    /// SHA-256 (hex) of what was asked (dataset, content type, body): a key
    /// reused for a different request is refused, not answered from here.
    pub request: String,
    /// When it was answered, ms since the epoch.
    pub at_ms: u64,
}

enum Entry {
    /// Being answered; dropped sender = the owner gave up.
    InFlight(watch::Receiver<()>),
    Done(Answer),
}

#[derive(Default)]
struct Inner {
    entries: HashMap<KeyHash, Entry>,
    /// Done keys in the order they were kept, with their body sizes and
    /// `at_ms` (an entry is forgotten only if it is still that answer).
    order: VecDeque<(KeyHash, usize, u64)>,
    bytes: usize,
}

/// What a request with a key does next.
pub(crate) enum Begin {
    /// Answered before: replay (or 409 if the request differs).
    Replay(Answer),
    /// Another request with the key is in flight: wait, then ask again.
    Wait(watch::Receiver<()>),
    /// This request owns the key until the guard is finished or dropped.
    Owner(Reservation),
}

/// The idempotency store of one gateway instance.
pub(crate) struct Store {
    inner: Mutex<Inner>,
    ttl: Duration,
    max_bytes: usize,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Store {
    pub(crate) fn new(ttl: Duration, max_bytes: usize) -> Arc<Store> {
        Arc::new(Store {
            inner: Mutex::new(Inner::default()),
            ttl,
            max_bytes,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fresh(&self, a: &Answer) -> bool {
        now_ms().saturating_sub(a.at_ms) <= self.ttl.as_millis() as u64
    }

    /// Reserves `key`, or says what to do instead.
    pub(crate) fn begin(self: &Arc<Store>, key: KeyHash) -> Begin {
        let mut inner = self.lock();
        match inner.entries.get(&key) {
            Some(Entry::Done(a)) if self.fresh(a) => return Begin::Replay(a.clone()),
            Some(Entry::InFlight(rx)) if rx.has_changed().is_ok() => {
                return Begin::Wait(rx.clone())
            }
            _ => {}
        }
        let (tx, rx) = watch::channel(());
        inner.entries.insert(key, Entry::InFlight(rx));
        Begin::Owner(Reservation {
            store: self.clone(),
            key,
            tx: Some(tx),
        })
    }

    /// Keeps an answer (from this instance or read from the topic).
    pub(crate) fn keep(&self, key: KeyHash, answer: Answer) {
        if !self.fresh(&answer) {
            return;
        }
        let mut inner = self.lock();
        let size = answer.body.len() + 96;
        if let Some(Entry::Done(old)) = inner.entries.get(&key) {
            if old.at_ms >= answer.at_ms {
                return;
            }
        }
        let at = answer.at_ms;
        inner.entries.insert(key, Entry::Done(answer));
        inner.order.push_back((key, size, at));
        inner.bytes += size;
        while inner.bytes > self.max_bytes {
            let Some((old, size, at)) = inner.order.pop_front() else {
                break;
            };
            inner.bytes -= size;
            // Only forget a key whose kept answer is this one (O(1)).
            if matches!(inner.entries.get(&old), Some(Entry::Done(a)) if a.at_ms == at) {
                inner.entries.remove(&old);
            }
        }
    }

    /// Answers kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock()
            .entries
            .values()
            .filter(|e| matches!(e, Entry::Done(_)))
            .count()
    }
}

/// Ownership of an in-flight key. Dropped without [`Reservation::finish`]
/// (an error, a 503), the key is released and a waiting duplicate takes over.
pub(crate) struct Reservation {
    store: Arc<Store>,
    key: KeyHash,
    tx: Option<watch::Sender<()>>,
}

impl Reservation {
    pub(crate) fn key(&self) -> KeyHash {
        self.key
    }

    /// Keeps `answer` for the key and wakes the duplicates waiting for it.
    pub(crate) fn finish(mut self, answer: Answer) {
        self.store.keep(self.key, answer);
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.tx.is_some() {
            let mut inner = self.store.lock();
            if matches!(inner.entries.get(&self.key), Some(Entry::InFlight(_))) {
                inner.entries.remove(&self.key);
            }
        }
        // Dropping the sender wakes the waiters either way.
    }
}

/// The topic record's key: the key hash in hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn unhex(s: &[u8]) -> Option<KeyHash> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

pub(crate) fn answer_now(status: u16, body: String, request: &[u8; 32]) -> Answer {
    Answer {
        status,
        body,
        request: hex(request),
        at_ms: now_ms(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_and_never_kept_as_text() {
        assert!(key_hash("hrss", b"batch-1").is_ok());
        assert!(key_hash("hrss", &[b'k'; 255]).is_ok());
        for bad in [
            &b""[..],
            b"a b",
            &[b'k'; 256],
            "身份".as_bytes(),
            b"tab\there",
            b"nl\n",
        ] {
            assert!(key_hash("hrss", bad).is_err(), "{bad:?}");
        }
        assert_ne!(key_hash("hrss", b"k"), key_hash("civil_affairs", b"k"));
        assert_eq!(unhex(hex(&[7u8; 32]).as_bytes()), Some([7u8; 32]));
    }

    #[test]
    fn a_duplicate_waits_and_a_failed_owner_hands_over() {
        let store = Store::new(Duration::from_secs(60), 1 << 20);
        let k = [1u8; 32];
        let Begin::Owner(first) = store.begin(k) else {
            panic!("first owns")
        };
        let Begin::Wait(rx) = store.begin(k) else {
            panic!("second waits")
        };
        drop(first);
        assert!(rx.has_changed().is_err(), "the owner gave up");
        let Begin::Owner(second) = store.begin(k) else {
            panic!("then the key is free")
        };
        second.finish(answer_now(200, "{}".into(), &[0; 32]));
        assert!(matches!(store.begin(k), Begin::Replay(a) if a.status == 200));
    }

    #[test]
    fn answers_are_bounded_by_bytes_and_age() {
        let store = Store::new(Duration::from_secs(60), 1000);
        for i in 0..20u8 {
            store.keep([i; 32], answer_now(200, "x".repeat(100), &[0; 32]));
        }
        assert!(store.len() <= 5, "{}", store.len());
        assert!(matches!(store.begin([19; 32]), Begin::Replay(_)));
        let mut old = answer_now(200, "{}".into(), &[0; 32]);
        old.at_ms -= 61_000;
        store.keep([99; 32], old);
        assert!(matches!(store.begin([99; 32]), Begin::Owner(_)));
    }
}
