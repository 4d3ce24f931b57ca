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
//!
//! **Authenticated entries.** A hash chain alone proves nothing against
//! someone who can write the topic: they can rewrite an entry and recompute
//! the rest of the chain, append a forged chain, or cut an open chain's tail.
//! So each entry also carries `mac`, HMAC-SHA256 of its hash under the
//! *ledger key* that only the writers (sink processes) and the auditor hold
//! (`GOVBUS_LEDGER_KEY`): without the key no entry can be forged or
//! rewritten. Against an insider who holds the key, and against truncation,
//! the auditor keeps **checkpoints** outside the bus ([`Checkpoint`]: every
//! chain's head — writer, seq, hash — at a moment, MAC'd, from
//! `govbus audit checkpoint`); [`verify`] against a kept checkpoint finds a
//! chain cut below its checkpointed head and any entry at or below it that
//! differs. What stays undetectable: an insider with the key rewriting what
//! was written after the auditor's last checkpoint.

use std::time::Duration;

use govbus_catalog::time;
use govbus_kafka::retry::Backoff;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::crypto::sha256_hex;

/// Most event ids in one entry. An id is at most 256 visible ASCII
/// characters, 512 bytes in JSON if every one is escaped: 1,000 of them stay
/// far below the 1,000,000 bytes a producer writes, so no `--max-batch`
/// makes an entry that the producer refuses on every attempt (which would
/// stop the sink for good).
pub const MAX_EVENTS_PER_ENTRY: usize = 1_000;

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
    /// Live-interface calls answered (sink `api`); absent otherwise, so
    /// entries written before calls existed hash as they did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<Call>,
    /// SHA-256 over `prev` and the entry with an empty `hash` and `mac`.
    pub hash: String,
    /// HMAC-SHA256 of `hash` under the ledger key (hex); empty in entries
    /// written before entries were authenticated.
    #[serde(default)]
    pub mac: String,
}

impl Entry {
    /// The hash this entry should carry.
    pub fn compute_hash(&self) -> String {
        // An entry being written has neither yet: no copy needed.
        let body = if self.hash.is_empty() && self.mac.is_empty() {
            serde_json::to_vec(self)
        } else {
            let mut copy = self.clone();
            copy.hash = String::new();
            copy.mac = String::new();
            serde_json::to_vec(&copy)
        }
        .unwrap_or_default();
        sha256_hex(&[self.prev.as_bytes(), b"\n", &body])
    }

    /// The MAC this entry should carry under `key`.
    pub fn compute_mac(&self, key: &[u8]) -> String {
        mac(key, &[b"govbus-ledger-entry\n", self.hash.as_bytes()])
    }
}

fn mac(key: &[u8], parts: &[&[u8]]) -> String {
    crate::crypto::hex(&crate::crypto::hmac_sha256(key, parts))
}

/// The ledger key used when none is configured: for development only (anyone
/// can forge entries under it). `govbus sink` and `govbus up` warn when they
/// use it, and `govbus check` refuses it with a broker configured.
pub const DEV_LEDGER_KEY: &[u8] = b"govbus-development-ledger-key-not-secret";

/// Every chain's head at one moment, authenticated with the ledger key:
/// what an auditor keeps outside the bus (`govbus audit checkpoint`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// When it was taken (RFC 3339).
    pub taken: String,
    /// Entries in the ledger then.
    pub entries: u64,
    /// Each chain's last entry then.
    pub heads: Vec<Head>,
    /// HMAC-SHA256 of the above under the ledger key.
    pub mac: String,
}

/// A chain's last entry at a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// The writer.
    pub writer: String,
    /// Its last seq.
    pub seq: u64,
    /// That entry's hash.
    pub hash: String,
}

impl Checkpoint {
    fn compute_mac(&self, key: &[u8]) -> String {
        let mut copy = self.clone();
        copy.mac = String::new();
        let body = serde_json::to_vec(&copy).unwrap_or_default();
        mac(key, &[b"govbus-ledger-checkpoint\n", &body])
    }

    /// The heads of every chain in `entries` (which should verify first).
    pub fn take(entries: &[(u64, Option<Entry>)], key: &[u8]) -> Checkpoint {
        let mut heads: std::collections::BTreeMap<&str, (u64, &str)> = Default::default();
        for e in entries.iter().filter_map(|(_, e)| e.as_ref()) {
            let h = heads.entry(&e.writer).or_insert((e.seq, &e.hash));
            if e.seq >= h.0 {
                *h = (e.seq, &e.hash);
            }
        }
        let mut c = Checkpoint {
            taken: now_rfc3339(),
            entries: entries.len() as u64,
            heads: heads
                .into_iter()
                .map(|(w, (seq, hash))| Head {
                    writer: w.to_owned(),
                    seq,
                    hash: hash.to_owned(),
                })
                .collect(),
            mac: String::new(),
        };
        c.mac = c.compute_mac(key);
        c
    }
}

/// One live-interface call, as the ledger keeps it: what was asked and how
/// it was answered, never a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Call {
    /// When it was answered (RFC 3339, UTC).
    pub time: String,
    /// `lookup` or `verify`.
    pub operation: String,
    /// The HTTP status answered.
    pub status: u16,
    /// Keys or values asked for.
    pub keys: u32,
    /// Count of each result (`found`, `absent`, `match`, `no_match`, ...).
    pub outcomes: std::collections::BTreeMap<String, u32>,
    /// Per looked-up value, the first 16 hex digits of its HMAC-SHA256 under
    /// the ledger key ([`lookup_hash`]): an auditor holding the key can tell
    /// whether a given value was looked up; nobody else learns the value.
    pub lookups: Vec<String>,
}

/// The ledger's keyed hash of one looked-up value (see [`Call::lookups`]).
pub fn lookup_hash(key: &[u8], value: &str) -> String {
    let h = crate::crypto::hmac_sha256(key, &[b"govbus-query-lookup\n", value.as_bytes()]);
    crate::crypto::hex(&h[..8])
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
    /// Live-interface calls (sink `api`).
    pub calls: Vec<Call>,
}

impl<'a> Record<'a> {
    /// An entry for `events` of subscription `sub`, under its sink kind and
    /// policy version.
    pub fn events(
        sub: &'a govbus_catalog::Subscription,
        outcome: &'a str,
        events: Vec<String>,
    ) -> Record<'a> {
        Record {
            subscription: &sub.id,
            subscriber: &sub.subscriber,
            dataset: &sub.dataset,
            sink: sub.sink.kind(),
            policy: &sub.policy_version,
            outcome,
            events,
            calls: Vec::new(),
        }
    }
}

struct Chain {
    writer: String,
    seq: u64,
    prev: String,
}

impl Chain {
    fn new() -> Chain {
        Chain {
            writer: new_writer_id(),
            seq: 0,
            prev: GENESIS.to_owned(),
        }
    }
}

/// The chain's `open` entry: enqueued when the chain starts, awaited by
/// the first entry after it.
enum Opening {
    Pending(rdkafka::producer::DeliveryFuture),
    Done,
}

/// Appends entries to one writer's chain.
pub struct Ledger {
    producer: FutureProducer,
    topic: String,
    key: Vec<u8>,
    chain: Mutex<Chain>,
    /// The chain's writer id, for logs (the chain holds the one entries use).
    writer: std::sync::Mutex<String>,
    /// The `open` entry is enqueued at start but not awaited there, so a
    /// process started while the broker refuses writes still starts (and
    /// serves its health and metrics); the first entry after it waits for
    /// its acknowledgement. Awaited under this lock and by reference, so a
    /// caller that gives up (a client that disconnects) leaves it to the
    /// next one.
    opening: Mutex<Opening>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("topic", &self.topic)
            .field("writer", &self.writer())
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
    /// A new chain on `topic`, its entries authenticated with `key`. The
    /// chain's `open` entry is enqueued here and acknowledged before the
    /// chain's next entry is enqueued: nothing waits for the broker until
    /// there is something to record.
    pub async fn open(bootstrap: &str, topic: &str, key: &[u8]) -> Result<Ledger, LedgerError> {
        // No linger: every writer awaits its entry before going on (a sink
        // its batch's, the query API its round of calls), so a linger would
        // only add to each wait; entries enqueued together still share a
        // produce request.
        let producer: FutureProducer = govbus_kafka::config::producer(bootstrap)
            .set("linger.ms", "0")
            .create()
            .map_err(|source| LedgerError {
                topic: topic.to_owned(),
                source,
            })?;
        let mut chain = Chain::new();
        let writer = std::sync::Mutex::new(chain.writer.clone());
        let ledger = Ledger {
            producer,
            topic: topic.to_owned(),
            key: key.to_vec(),
            writer,
            opening: Mutex::new(Opening::Done),
            chain: Mutex::new(Chain::new()),
        };
        let first = ledger
            .enqueue(&mut chain, "open", &Record::default())
            .await?;
        *ledger.chain.lock().await = chain;
        *ledger.opening.lock().await = Opening::Pending(first);
        Ok(ledger)
    }

    /// Waits until the chain's `open` entry is acknowledged. If the broker
    /// refused it for good, the chain starts again — a new writer id, seq
    /// 0, a new `open` enqueued — and this call fails: a chain never holds
    /// entries after an `open` that is not there (which `verify` would
    /// report as deleted entries).
    async fn ensure_open(&self) -> Result<(), LedgerError> {
        let mut opening = self.opening.lock().await;
        let Opening::Pending(first) = &mut *opening else {
            return Ok(());
        };
        let error = match first.await {
            Ok(Ok(_)) => {
                *opening = Opening::Done;
                return Ok(());
            }
            Ok(Err((source, _))) => source,
            Err(_) => rdkafka::error::KafkaError::Canceled,
        };
        let mut chain = self.chain.lock().await;
        *chain = Chain::new();
        tracing::error!(message = "The ledger refused this chain's open entry; starting a new chain.", topic = %self.topic, error = %error, writer = %chain.writer);
        if let Ok(mut w) = self.writer.lock() {
            w.clone_from(&chain.writer);
        }
        *opening = Opening::Pending(self.enqueue(&mut chain, "open", &Record::default()).await?);
        Err(LedgerError {
            topic: self.topic.clone(),
            source: error,
        })
    }

    /// This writer's id.
    pub fn writer(&self) -> String {
        self.writer.lock().map(|w| w.clone()).unwrap_or_default()
    }

    /// The key entries are authenticated with (also keys [`lookup_hash`]).
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// Appends a delivery entry — or, for more than
    /// [`MAX_EVENTS_PER_ENTRY`] events, one entry per that many, in order —
    /// and returns once the broker has them.
    pub async fn append(&self, record: &Record<'_>) -> Result<(), LedgerError> {
        self.append_started(record).await?.acknowledged().await
    }

    /// [`Ledger::append`] up to handing the entries to the producer: they
    /// hold their place in the chain (an entry appended later comes after
    /// them), and [`Appending::acknowledged`] waits for the broker.
    pub async fn append_started(&self, record: &Record<'_>) -> Result<Appending, LedgerError> {
        self.ensure_open().await?;
        let mut deliveries = Vec::with_capacity(1);
        if record.events.len() <= MAX_EVENTS_PER_ENTRY {
            deliveries.push(self.start_write("delivery", record).await?);
        } else {
            for events in record.events.chunks(MAX_EVENTS_PER_ENTRY) {
                let part = Record {
                    events: events.to_vec(),
                    ..record.clone()
                };
                deliveries.push(self.start_write("delivery", &part).await?);
            }
        }
        Ok(Appending {
            topic: self.topic.clone(),
            deliveries,
        })
    }

    /// Writes the `close` entry: the chain ends here.
    pub async fn close(&self) -> Result<(), LedgerError> {
        self.ensure_open().await?;
        self.write("close", &Record::default()).await
    }

    async fn write(&self, kind: &str, r: &Record<'_>) -> Result<(), LedgerError> {
        Appending {
            topic: self.topic.clone(),
            deliveries: vec![self.start_write(kind, r).await?],
        }
        .acknowledged()
        .await
    }

    /// Builds the chain's next entry and enqueues it.
    async fn start_write(
        &self,
        kind: &str,
        r: &Record<'_>,
    ) -> Result<rdkafka::producer::DeliveryFuture, LedgerError> {
        // The lock covers building the entry and *enqueueing* it, not its
        // acknowledgement: entries reach the one-partition topic in seq order
        // (the producer is idempotent, which keeps the order of messages in
        // flight), and many writers' entries can be in flight at once.
        let mut chain = self.chain.lock().await;
        self.enqueue(&mut chain, kind, r).await
    }

    /// Builds the chain's next entry and hands it to the producer (the
    /// caller holds the chain's lock).
    async fn enqueue(
        &self,
        chain: &mut Chain,
        kind: &str,
        r: &Record<'_>,
    ) -> Result<rdkafka::producer::DeliveryFuture, LedgerError> {
        {
            let mut entry = Entry {
                writer: chain.writer.clone(),
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
                calls: r.calls.clone(),
                hash: String::new(),
                mac: String::new(),
            };
            entry.hash = entry.compute_hash();
            entry.mac = entry.compute_mac(&self.key);
            let body = serde_json::to_vec(&entry).unwrap_or_default();
            // A full queue drains in milliseconds; a broker that is down
            // takes longer.
            let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
            let delivery = loop {
                let record = FutureRecord::to(&self.topic)
                    .key(chain.writer.as_bytes())
                    .payload(&body);
                match self.producer.send_result(record) {
                    Ok(d) => break d,
                    Err((e, _)) if is_retriable(&e) => {
                        let wait = backoff.next_delay();
                        tracing::warn!(topic = %self.topic, error = %e, attempt = backoff.attempts(), wait_ms = wait.as_millis() as u64, "ledger write not accepted by the producer; retrying");
                        tokio::time::sleep(wait).await;
                    }
                    Err((source, _)) => {
                        return Err(LedgerError {
                            topic: self.topic.clone(),
                            source,
                        })
                    }
                }
            };
            chain.seq += 1;
            chain.prev = entry.hash;
            Ok(delivery)
        }
    }
}

/// Ledger entries handed to the producer, in their place in the chain
/// ([`Ledger::append_started`]).
#[must_use = "an entry counts only once the broker has it"]
pub struct Appending {
    topic: String,
    deliveries: Vec<rdkafka::producer::DeliveryFuture>,
}

impl std::fmt::Debug for Appending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Appending")
            .field("topic", &self.topic)
            .field("entries", &self.deliveries.len())
            .finish()
    }
}

impl Appending {
    /// Waits until the broker has every entry.
    pub async fn acknowledged(self) -> Result<(), LedgerError> {
        for delivery in self.deliveries {
            // The producer never gives up on a message (message.timeout.ms
            // = 0): an error here is fatal, and the entry is missing from
            // the chain — which `govbus audit verify` then reports as a
            // broken link.
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((source, _))) => {
                    return Err(LedgerError {
                        topic: self.topic,
                        source,
                    })
                }
                Err(_) => {
                    return Err(LedgerError {
                        topic: self.topic,
                        source: rdkafka::error::KafkaError::Canceled,
                    })
                }
            }
        }
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
    /// Chains written before entries were authenticated (no MAC from their
    /// first entry on): their links are checked, their content cannot be
    /// authenticated. After an upgrade there should be no new ones.
    pub legacy_chains: Vec<String>,
    /// Every problem found; empty means the ledger is intact.
    pub findings: Vec<Finding>,
}

/// What to check entries against.
#[derive(Debug, Clone, Copy, Default)]
pub struct Against<'a> {
    /// The ledger key: every entry's MAC must verify under it.
    pub key: Option<&'a [u8]>,
    /// A checkpoint the auditor kept: every chain it names must still reach
    /// its head, with the same entry there.
    pub checkpoint: Option<&'a Checkpoint>,
}

/// Checks every chain in `entries` (in log order; `None` for a value that
/// is not a ledger entry): the links, and with [`Against`] the entries'
/// MACs and a kept checkpoint.
pub fn verify(entries: &[(u64, Option<Entry>)]) -> Verified {
    verify_against(entries, Against::default())
}

/// [`verify`], against a key and a checkpoint.
pub fn verify_against(entries: &[(u64, Option<Entry>)], against: Against<'_>) -> Verified {
    use std::collections::BTreeMap;
    struct State {
        seq: u64,
        hash: String,
        closed: bool,
    }
    let mut chains: BTreeMap<String, State> = BTreeMap::new();
    let mut legacy_chains: BTreeMap<String, bool> = BTreeMap::new();
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
        } else if let Some(key) = against.key {
            // A chain whose first entry carries no MAC was written before
            // entries were authenticated; in any other chain a missing MAC
            // is a finding like a wrong one.
            let legacy = match legacy_chains.get(e.writer.as_str()) {
                Some(l) => *l,
                None => {
                    let l = e.mac.is_empty() && e.seq == 0;
                    legacy_chains.insert(e.writer.clone(), l);
                    l
                }
            };
            if !(legacy && e.mac.is_empty()) && e.mac != e.compute_mac(key) {
                find(
                    *pos,
                    &e.writer,
                    format!(
                        "seq {}: not authenticated by the ledger key (forged, rewritten, or written under another key)",
                        e.seq
                    ),
                );
            }
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
    if let Some(c) = against.checkpoint {
        check_checkpoint(entries, c, against.key, &mut v);
    }
    v.legacy_chains = legacy_chains
        .into_iter()
        .filter(|(_, l)| *l)
        .map(|(w, _)| w)
        .collect();
    v.chains = chains.len() as u64;
    v.open_chains = chains
        .iter()
        .filter(|(_, s)| !s.closed)
        .map(|(w, _)| w.clone())
        .collect();
    v
}

/// Every head of a kept checkpoint must still be in the ledger, unchanged.
fn check_checkpoint(
    entries: &[(u64, Option<Entry>)],
    c: &Checkpoint,
    key: Option<&[u8]>,
    v: &mut Verified,
) {
    let mut find = |writer: &str, problem: String| {
        v.findings.push(Finding {
            position: 0,
            writer: writer.to_owned(),
            problem,
        });
    };
    if let Some(key) = key {
        if c.mac != c.compute_mac(key) {
            find(
                "-",
                "the checkpoint is not authenticated by the ledger key (altered, or another key)"
                    .into(),
            );
        }
    }
    for head in &c.heads {
        let chain: Vec<&Entry> = entries
            .iter()
            .filter_map(|(_, e)| e.as_ref())
            .filter(|e| e.writer == head.writer)
            .collect();
        match chain.iter().find(|e| e.seq == head.seq) {
            Some(e) if e.hash == head.hash => {}
            Some(_) => find(
                &head.writer,
                format!(
                    "seq {} differs from the checkpoint of {} (rewritten)",
                    head.seq, c.taken
                ),
            ),
            None => {
                let last = chain.iter().map(|e| e.seq).max();
                find(
                    &head.writer,
                    match last {
                        Some(l) => format!(
                            "the chain ends at seq {l}, but the checkpoint of {} saw seq {} (tail removed)",
                            c.taken, head.seq
                        ),
                        None => format!(
                            "the chain is gone; the checkpoint of {} saw it up to seq {} (removed)",
                            c.taken, head.seq
                        ),
                    },
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"the writers' ledger key, 32 bytes";

    fn keyed(l: &[(u64, Option<Entry>)], c: Option<&Checkpoint>) -> Verified {
        verify_against(
            l,
            Against {
                key: Some(KEY),
                checkpoint: c,
            },
        )
    }

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
                    calls: Vec::new(),
                    hash: String::new(),
                    mac: String::new(),
                };
                e.hash = e.compute_hash();
                e.mac = e.compute_mac(KEY);
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

    /// The three attacks of issue #14, each against the key and a kept
    /// checkpoint. Chain "a" is still open (no close entry) when the
    /// checkpoint is taken.
    #[test]
    fn rewriting_forging_and_truncating_are_found_with_the_key_and_a_checkpoint() {
        let mut a = chain("a", 6);
        a.pop(); // open: seq 0..=4
        let b = chain("b", 4);
        let mut all: Vec<Entry> = a.iter().chain(&b).cloned().collect();
        let checkpoint = Checkpoint::take(&log(all.clone()), KEY);
        assert!(keyed(&log(all.clone()), Some(&checkpoint))
            .findings
            .is_empty());

        // 1. Truncate the open chain's tail: links and MACs are fine, the checkpoint is not.
        let mut cut = all.clone();
        cut.retain(|e| !(e.writer == "a" && e.seq >= 3));
        assert!(
            verify(&log(cut.clone())).findings.is_empty(),
            "a hash chain alone cannot see it"
        );
        let v = keyed(&log(cut), Some(&checkpoint));
        assert!(
            v.findings
                .iter()
                .any(|f| f.problem.contains("tail removed")),
            "{:?}",
            v.findings
        );

        // 2. Rewrite an entry and recompute the rest of the chain, without the key.
        let mut rewritten = all.clone();
        let mut prev = rewritten[1].prev.clone();
        for e in rewritten
            .iter_mut()
            .filter(|e| e.writer == "a" && e.seq >= 1)
        {
            if e.seq == 1 {
                e.events = vec!["someone-else".into()];
            }
            e.prev = prev.clone();
            e.hash = e.compute_hash();
            prev = e.hash.clone();
        }
        assert!(
            verify(&log(rewritten.clone())).findings.is_empty(),
            "an unkeyed chain verifies"
        );
        let v = keyed(&log(rewritten.clone()), None);
        assert!(
            v.findings
                .iter()
                .any(|f| f.problem.contains("not authenticated")),
            "{:?}",
            v.findings
        );
        //    ... and by an insider with the key: the checkpoint catches it.
        for e in rewritten.iter_mut() {
            e.mac = e.compute_mac(KEY);
        }
        let v = keyed(&log(rewritten), Some(&checkpoint));
        assert!(
            v.findings.iter().any(|f| f.problem.contains("rewritten")),
            "{:?}",
            v.findings
        );

        // 3. Append a forged chain (without the key).
        let mut forged = chain("c", 3);
        for e in &mut forged {
            e.mac = e.compute_mac(b"a guessed key");
        }
        all.extend(forged);
        let v = keyed(&log(all), Some(&checkpoint));
        assert_eq!(
            v.findings
                .iter()
                .filter(|f| f.problem.contains("not authenticated"))
                .count(),
            3,
            "{:?}",
            v.findings
        );

        // An altered checkpoint is refused too.
        let mut bad = checkpoint.clone();
        bad.heads[0].seq = 1;
        let v = keyed(&log(a.iter().chain(&b).cloned().collect()), Some(&bad));
        assert!(v
            .findings
            .iter()
            .any(|f| f.problem.contains("checkpoint is not authenticated")));
    }

    #[test]
    fn chains_from_before_authentication_are_noted_not_failed() {
        let mut old = chain("old", 4);
        for e in &mut old {
            e.mac = String::new();
        }
        let mut new = chain("new", 3);
        new[1].mac = String::new();
        let all: Vec<Entry> = old.into_iter().chain(new).collect();
        let v = keyed(&log(all), None);
        assert_eq!(v.legacy_chains, vec!["old".to_owned()]);
        assert_eq!(v.findings.len(), 1, "{:?}", v.findings);
        assert_eq!(
            v.findings[0].writer, "new",
            "a stripped MAC in an authenticated chain"
        );
    }
}
