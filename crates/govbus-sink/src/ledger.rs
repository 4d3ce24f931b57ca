//! The delivery ledger: every delivery appended to `_govbus.audit`,
//! hash-chained.
//!
//! Each sink process is one *writer* with its own chain: an `open` entry
//! (seq 0), one entry per delivered batch, and a `close` entry on a clean
//! stop. Entry `n` carries the hash of entry `n-1`; its own hash covers its
//! content and that link. A chain per writer needs no coordination between
//! instances (Kafka is the only coordinator), and the topic has one
//! partition, so the log order is the append order.
//!
//! [`verify`] finds a modified entry (hash), a deleted one (seq gap or broken
//! link), an inserted one (broken link or duplicate seq) and a reordered one
//! (seq going backwards). What a hash chain cannot show: the loss of a chain's
//! *tail* after its last entry — reported for chains without a `close` entry
//! as "open" — and the removal of a whole chain.
//!
//! Entries hold event ids, never keys or values: the ledger is not a second
//! copy of personal data.

use std::time::Duration;

use govbus_catalog::time;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::crypto::sha256_hex;

/// Hash of the link before a chain's first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One ledger entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The writer (sink process) whose chain this is.
    pub writer: String,
    /// 0, 1, 2, ... within the writer's chain.
    pub seq: u64,
    /// `hash` of the previous entry of the chain ([`GENESIS`] for seq 0).
    pub prev: String,
    /// When it was written (RFC 3339, UTC).
    pub time: String,
    /// `open`, `delivery` or `close`.
    pub kind: String,
    /// Subscription id (empty for open/close).
    pub subscription: String,
    /// Receiving department.
    pub subscriber: String,
    /// Dataset delivered.
    pub dataset: String,
    /// Sink type.
    pub sink: String,
    /// Field-policy version applied.
    pub policy: String,
    /// `delivered`, `dead_lettered`, `streamed` or `filtered`.
    pub outcome: String,
    /// `ce_id`s of the events in the delivery.
    pub events: Vec<String>,
    /// SHA-256 over `prev` and the entry with an empty `hash`.
    pub hash: String,
}

impl Entry {
    /// The hash this entry should carry.
    pub fn compute_hash(&self) -> String {
        let mut copy = self.clone();
        copy.hash = String::new();
        let body = serde_json::to_vec(&copy).unwrap_or_default();
        sha256_hex(&[self.prev.as_bytes(), b"\n", &body])
    }
}

/// What a delivery entry records.
#[derive(Debug, Clone, Default)]
pub struct Record<'a> {
    /// Subscription id.
    pub subscription: &'a str,
    /// Receiving department.
    pub subscriber: &'a str,
    /// Dataset.
    pub dataset: &'a str,
    /// Sink type.
    pub sink: &'a str,
    /// Policy version.
    pub policy: &'a str,
    /// Outcome.
    pub outcome: &'a str,
    /// Event ids.
    pub events: Vec<String>,
}

struct Chain {
    seq: u64,
    prev: String,
}

/// Appends entries to one writer's chain.
pub struct Ledger {
    producer: FutureProducer,
    topic: String,
    writer: String,
    chain: Mutex<Chain>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("topic", &self.topic)
            .field("writer", &self.writer)
            .finish_non_exhaustive()
    }
}

/// A ledger write failed; the delivery's offsets must not move.
#[derive(Debug, thiserror::Error)]
#[error("cannot append to the delivery ledger {topic}: {source}")]
pub struct LedgerError {
    topic: String,
    source: rdkafka::error::KafkaError,
}

fn now_rfc3339() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    time::format_rfc3339_millis(ms)
}

/// A writer id unique to this process start.
fn new_writer_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let id = sha256_hex(&[
        &nanos.to_le_bytes(),
        &std::process::id().to_le_bytes(),
        host.as_bytes(),
    ]);
    id[..16].to_owned()
}

impl Ledger {
    /// Opens a new chain on `topic` and writes its `open` entry.
    pub async fn open(bootstrap: &str, topic: &str) -> Result<Ledger, LedgerError> {
        let producer: FutureProducer = govbus_kafka::config::producer(bootstrap)
            .set("linger.ms", "2")
            .create()
            .map_err(|source| LedgerError {
                topic: topic.to_owned(),
                source,
            })?;
        let ledger = Ledger {
            producer,
            topic: topic.to_owned(),
            writer: new_writer_id(),
            chain: Mutex::new(Chain {
                seq: 0,
                prev: GENESIS.to_owned(),
            }),
        };
        ledger.write("open", &Record::default()).await?;
        Ok(ledger)
    }

    /// This writer's id.
    pub fn writer(&self) -> &str {
        &self.writer
    }

    /// Appends a delivery entry; returns once the broker has it.
    pub async fn append(&self, record: &Record<'_>) -> Result<(), LedgerError> {
        self.write("delivery", record).await
    }

    /// Writes the `close` entry: the chain ends here.
    pub async fn close(&self) -> Result<(), LedgerError> {
        self.write("close", &Record::default()).await
    }

    async fn write(&self, kind: &str, r: &Record<'_>) -> Result<(), LedgerError> {
        // Held across the send: entries reach the one-partition topic in seq order.
        let mut chain = self.chain.lock().await;
        let mut entry = Entry {
            writer: self.writer.clone(),
            seq: chain.seq,
            prev: chain.prev.clone(),
            time: now_rfc3339(),
            kind: kind.to_owned(),
            subscription: r.subscription.to_owned(),
            subscriber: r.subscriber.to_owned(),
            dataset: r.dataset.to_owned(),
            sink: r.sink.to_owned(),
            policy: r.policy.to_owned(),
            outcome: r.outcome.to_owned(),
            events: r.events.clone(),
            hash: String::new(),
        };
        entry.hash = entry.compute_hash();
        let body = serde_json::to_vec(&entry).unwrap_or_default();
        loop {
            let record = FutureRecord::to(&self.topic)
                .key(self.writer.as_bytes())
                .payload(&body);
            match self.producer.send(record, Duration::from_secs(30)).await {
                Ok(_) => break,
                Err((e, _)) if is_retriable(&e) => {
                    tracing::warn!(topic = %self.topic, error = %e, "ledger write failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err((source, _)) => {
                    return Err(LedgerError {
                        topic: self.topic.clone(),
                        source,
                    })
                }
            }
        }
        chain.seq += 1;
        chain.prev = entry.hash;
        Ok(())
    }
}

fn is_retriable(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode as C};
    matches!(
        e,
        KafkaError::MessageProduction(
            C::MessageTimedOut | C::QueueFull | C::BrokerTransportFailure | C::AllBrokersDown
        )
    )
}

/// One problem [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Position in the log (0-based), or the offset the caller gave.
    pub position: u64,
    /// Writer chain concerned (`-` when the entry did not parse).
    pub writer: String,
    /// What is wrong, in words.
    pub problem: String,
}

/// Summary of a verified ledger.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verified {
    /// Entries read.
    pub entries: u64,
    /// Writer chains seen.
    pub chains: u64,
    /// Chains without a `close` entry (still running, or stopped uncleanly;
    /// a lost tail would look the same).
    pub open_chains: Vec<String>,
    /// Every problem found; empty means the ledger is intact.
    pub findings: Vec<Finding>,
}

/// Checks every chain in `entries` (in log order; `None` for a value that
/// is not a ledger entry).
pub fn verify(entries: &[(u64, Option<Entry>)]) -> Verified {
    use std::collections::BTreeMap;
    struct State {
        seq: u64,
        hash: String,
        closed: bool,
    }
    let mut chains: BTreeMap<String, State> = BTreeMap::new();
    let mut v = Verified {
        entries: entries.len() as u64,
        ..Verified::default()
    };
    let mut find = |position: u64, writer: &str, problem: String| {
        v.findings.push(Finding {
            position,
            writer: writer.to_owned(),
            problem,
        });
    };
    for (pos, entry) in entries {
        let Some(e) = entry else {
            find(
                *pos,
                "-",
                "not a ledger entry (inserted or corrupted)".into(),
            );
            continue;
        };
        if e.compute_hash() != e.hash {
            find(
                *pos,
                &e.writer,
                format!("seq {}: content does not match its hash (modified)", e.seq),
            );
        }
        match chains.get_mut(&e.writer) {
            None => {
                if e.seq != 0 || e.prev != GENESIS {
                    find(
                        *pos,
                        &e.writer,
                        format!(
                            "chain starts at seq {} instead of 0 (entries before it deleted)",
                            e.seq
                        ),
                    );
                }
                chains.insert(
                    e.writer.clone(),
                    State {
                        seq: e.seq,
                        hash: e.hash.clone(),
                        closed: e.kind == "close",
                    },
                );
            }
            Some(s) => {
                if s.closed {
                    find(
                        *pos,
                        &e.writer,
                        format!("seq {} after the chain's close entry (inserted)", e.seq),
                    );
                }
                if e.seq <= s.seq {
                    find(
                        *pos,
                        &e.writer,
                        format!("seq {} after seq {} (reordered or inserted)", e.seq, s.seq),
                    );
                } else if e.seq > s.seq + 1 {
                    find(
                        *pos,
                        &e.writer,
                        format!(
                            "seq {} follows seq {}: {} entries missing (deleted)",
                            e.seq,
                            s.seq,
                            e.seq - s.seq - 1
                        ),
                    );
                } else if e.prev != s.hash {
                    find(
                        *pos,
                        &e.writer,
                        format!(
                            "seq {} does not link to seq {} (an entry was replaced or inserted)",
                            e.seq, s.seq
                        ),
                    );
                }
                if e.seq > s.seq {
                    s.seq = e.seq;
                    s.hash = e.hash.clone();
                }
                s.closed |= e.kind == "close";
            }
        }
    }
    v.chains = chains.len() as u64;
    v.open_chains = chains
        .iter()
        .filter(|(_, s)| !s.closed)
        .map(|(w, _)| w.clone())
        .collect();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(writer: &str, n: u64) -> Vec<Entry> {
        let mut prev = GENESIS.to_owned();
        (0..n)
            .map(|seq| {
                let kind = match seq {
                    0 => "open",
                    s if s == n - 1 => "close",
                    _ => "delivery",
                };
                let mut e = Entry {
                    writer: writer.into(),
                    seq,
                    prev: prev.clone(),
                    time: "2026-11-30T00:00:00.000Z".into(),
                    kind: kind.into(),
                    subscription: "s".into(),
                    subscriber: "hrss".into(),
                    dataset: "civil_affairs.death_registration".into(),
                    sink: "webhook".into(),
                    policy: "abc".into(),
                    outcome: "delivered".into(),
                    events: vec![format!("e{seq}")],
                    hash: String::new(),
                };
                e.hash = e.compute_hash();
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    fn log(entries: Vec<Entry>) -> Vec<(u64, Option<Entry>)> {
        entries
            .into_iter()
            .enumerate()
            .map(|(i, e)| (i as u64, Some(e)))
            .collect()
    }

    fn interleaved() -> Vec<Entry> {
        let a = chain("a", 6);
        let b = chain("b", 4);
        let mut out = Vec::new();
        let (mut ia, mut ib) = (a.into_iter(), b.into_iter());
        loop {
            match (ia.next(), ib.next()) {
                (None, None) => break,
                (x, y) => out.extend(x.into_iter().chain(y)),
            }
        }
        out
    }

    #[test]
    fn an_intact_ledger_verifies() {
        let v = verify(&log(interleaved()));
        assert_eq!(v.findings, vec![]);
        assert_eq!((v.entries, v.chains), (10, 2));
        assert!(v.open_chains.is_empty());
    }

    #[test]
    fn a_modified_entry_is_found() {
        let mut l = interleaved();
        l[4].events = vec!["someone-else".into()];
        let v = verify(&log(l));
        assert_eq!(v.findings.len(), 1, "{:?}", v.findings);
        assert!(v.findings[0].problem.contains("modified"));
    }

    #[test]
    fn a_modified_entry_with_a_recomputed_hash_breaks_the_next_link() {
        let mut l = interleaved();
        l[4].events = vec!["someone-else".into()];
        l[4].hash = l[4].compute_hash();
        let v = verify(&log(l));
        assert!(
            v.findings
                .iter()
                .any(|f| f.problem.contains("does not link")),
            "{:?}",
            v.findings
        );
    }

    #[test]
    fn a_deleted_entry_is_found() {
        let mut l = interleaved();
        l.remove(4);
        let v = verify(&log(l));
        assert!(
            v.findings
                .iter()
                .any(|f| f.problem.contains("missing (deleted)")),
            "{:?}",
            v.findings
        );
    }

    #[test]
    fn a_deleted_head_is_found() {
        let mut l = interleaved();
        l.remove(0);
        let v = verify(&log(l));
        assert!(
            v.findings
                .iter()
                .any(|f| f.problem.contains("instead of 0")),
            "{:?}",
            v.findings
        );
    }

    #[test]
    fn an_inserted_entry_is_found() {
        let mut l = interleaved();
        let mut forged = l[4].clone();
        forged.events = vec!["forged".into()];
        forged.hash = forged.compute_hash();
        l.insert(5, forged);
        let v = verify(&log(l));
        assert!(!v.findings.is_empty());
        let mut garbage = log(interleaved());
        garbage.insert(3, (99, None));
        assert!(verify(&garbage)
            .findings
            .iter()
            .any(|f| f.problem.contains("not a ledger entry")));
    }

    #[test]
    fn a_reordered_entry_is_found() {
        let mut l = interleaved();
        l.swap(4, 6);
        let v = verify(&log(l));
        assert!(
            v.findings.iter().any(|f| f.problem.contains("reordered")),
            "{:?}",
            v.findings
        );
    }

    #[test]
    fn a_lost_tail_shows_as_an_open_chain() {
        let mut l = interleaved();
        l.pop();
        let v = verify(&log(l));
        assert!(v.findings.is_empty());
        assert_eq!(v.open_chains, vec!["a".to_owned()]);
    }
}
