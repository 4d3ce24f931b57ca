//! One shared reader per data topic for the live streams' clients at its
//! head.
//!
//! A client that reads the live tail — a new client (`from=end`), or one
//! that resumed and caught up — does not need a Kafka consumer of its own:
//! a [`Hub`] reads the topic once and hands every batch to all of them
//! through a broadcast channel; each client applies its own grant, records
//! its own ledger entries and keeps its own cursor, exactly as before. A
//! client behind the head (a resume from an older `Last-Event-ID`,
//! `from=beginning`) reads with a consumer of its own until it reaches
//! where the hub was when the client subscribed to it, then drops that
//! consumer and continues from the hub, skipping what it already has — the
//! hub's channel holds everything after that point, so nothing is skipped
//! twice or missed. A client too slow for the channel (it lagged) goes back
//! to a consumer of its own from its cursor, and joins again later.
//!
//! The hub stops when its last client is gone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use govbus_kafka::stage::{blocking, next_batch};
use rdkafka::consumer::{Consumer, DefaultConsumerContext, StreamConsumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::broadcast;

use crate::event::Canonical;
use crate::sse::Cursor;

/// Batches a hub's channel holds for a client that is momentarily behind
/// (each up to [`HUB_BATCH`] records). A client takes its place on the hub
/// only when it is near the head (its own consumer's batches come back
/// short), so this covers the last stretch of a catch-up.
pub(crate) const CAPACITY: usize = 1024;
/// Records per batch a hub reads.
const HUB_BATCH: usize = 500;

/// A batch as the hub hands it out.
pub(crate) type Shared = Arc<Vec<Canonical>>;

/// The live-stream readers of a process, one per topic while it has clients.
#[derive(Debug, Default)]
pub(crate) struct Hubs {
    hubs: Mutex<HashMap<String, Weak<Hub>>>,
    /// Held while a hub is started, so that clients arriving together (a
    /// sink restart) start one, not one each. (One lock for every topic: a
    /// per-topic one is a known improvement.)
    starting: tokio::sync::Mutex<()>,
}

/// One topic's shared reader.
#[derive(Debug)]
pub(crate) struct Hub {
    tx: broadcast::Sender<Shared>,
    /// The next offset of every partition after the last batch sent; taken
    /// with the subscription under this lock, so a new receiver's first
    /// batch starts exactly there.
    head: Mutex<Cursor>,
    /// False once the reader's task ended (its clients then read on their
    /// own instead of waiting on a channel nothing sends to).
    alive: std::sync::atomic::AtomicBool,
}

/// A client's place on a hub: the channel, and where the hub was when the
/// client subscribed (the channel holds everything after it).
#[derive(Debug)]
pub(crate) struct Ticket {
    /// Keeps the hub (and its reader) running while the client holds it.
    _hub: Arc<Hub>,
    pub rx: broadcast::Receiver<Shared>,
    pub from: Cursor,
}

impl Ticket {
    /// Batches waiting in this ticket's channel.
    pub fn waiting(&self) -> usize {
        self.rx.len()
    }

    /// Whether the hub still reads.
    pub fn alive(&self) -> bool {
        self._hub.alive.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Hub {
    /// Subscribes: the channel and the position it starts after.
    pub fn subscribe(self: &Arc<Self>) -> Ticket {
        let head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        Ticket {
            _hub: self.clone(),
            rx: self.tx.subscribe(),
            from: head.clone(),
        }
    }
}

/// The records of `batch` past `position`, each partition's offsets only
/// growing, and `position` moved past them. A consumer at a partition's end
/// on Tansu 0.6.0 was seen to return the same offsets several times in one
/// batch (`(1, 14), (1, 15), (1, 14), (1, 15), …`); a live stream hands
/// each out once.
pub(crate) fn after(position: &mut Cursor, batch: Vec<Canonical>) -> Vec<Canonical> {
    let fresh = |position: &mut Cursor, c: &Canonical| {
        let at = position.entry(c.partition).or_insert(0);
        let new = c.offset >= *at;
        if new {
            *at = c.offset + 1;
        }
        new
    };
    let mut probe = position.clone();
    if batch.iter().all(|c| fresh(&mut probe, c)) {
        *position = probe;
        return batch;
    }
    batch.into_iter().filter(|c| fresh(position, c)).collect()
}

/// Whether `position` is at or past `head` on every partition of `head`,
/// and names no partition the hub does not read (one added to the topic
/// after the hub started: the client keeps its own consumer).
pub(crate) fn reached(position: &Cursor, head: &Cursor) -> bool {
    head.iter()
        .all(|(p, o)| position.get(p).is_some_and(|at| at >= o))
        && position.keys().all(|p| head.contains_key(p))
}

impl Hubs {
    /// The topic's hub, if one is running (one whose task ended is
    /// replaced by the next join).
    fn running(&self, topic: &str) -> Option<Arc<Hub>> {
        let hubs = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
        hubs.get(topic)
            .and_then(Weak::upgrade)
            .filter(|h| h.alive.load(std::sync::atomic::Ordering::Acquire))
    }

    /// The hub of `topic`, started when it has none: a consumer (no group,
    /// no commits) assigned every partition at its end.
    pub async fn join(
        &self,
        config: ClientConfig,
        topic: &str,
        metrics: &crate::Metrics,
    ) -> Result<Ticket, String> {
        if let Some(hub) = self.running(topic) {
            return Ok(hub.subscribe());
        }
        let _starting = self.starting.lock().await;
        if let Some(hub) = self.running(topic) {
            return Ok(hub.subscribe());
        }
        // One hub starts at a time (clients of other topics wait for this
        // one's metadata, bounded by its timeouts; a client's batch is
        // handed over before it joins).
        let consumer: StreamConsumer<DefaultConsumerContext> =
            config.create().map_err(|e| e.to_string())?;
        let metadata = blocking(|| consumer.fetch_metadata(Some(topic), Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let mut head = Cursor::new();
        let mut tpl = TopicPartitionList::new();
        for t in metadata.topics() {
            for p in t.partitions() {
                let (_, high) =
                    blocking(|| consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10)))
                        .map_err(|e| e.to_string())?;
                head.insert(p.id(), high);
                tpl.add_partition_offset(topic, p.id(), Offset::Offset(high))
                    .map_err(|e| e.to_string())?;
            }
        }
        if head.is_empty() {
            return Err(format!("topic {topic} has no partitions (does it exist?)"));
        }
        let mut hubs = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        let (tx, _) = broadcast::channel(CAPACITY);
        let hub = Arc::new(Hub {
            tx,
            head: Mutex::new(head),
            alive: std::sync::atomic::AtomicBool::new(true),
        });
        hubs.retain(|_, h| h.strong_count() > 0);
        hubs.insert(topic.to_owned(), Arc::downgrade(&hub));
        drop(hubs);
        let ticket = hub.subscribe();
        let weak = Arc::downgrade(&hub);
        let name = topic.to_owned();
        let metrics = metrics.clone();
        metrics.live_readers(1);
        tokio::spawn(async move {
            // Marks the hub dead however the task ends (a panic included).
            struct Ends(Weak<Hub>, crate::Metrics);
            impl Drop for Ends {
                fn drop(&mut self) {
                    if let Some(hub) = self.0.upgrade() {
                        hub.alive.store(false, std::sync::atomic::Ordering::Release);
                    }
                    self.1.live_readers(-1);
                }
            }
            let _ends = Ends(weak.clone(), metrics);
            tracing::debug!(message = "Live-stream reader started.", topic = %name);
            loop {
                let batch = next_batch(
                    &consumer,
                    Some(Duration::from_millis(250)),
                    HUB_BATCH,
                    Duration::from_millis(5),
                    None,
                    |m| Canonical::from_message(&m),
                )
                .await;
                // Gone with its last client.
                let Some(hub) = weak.upgrade() else { break };
                if batch.is_empty() {
                    continue;
                }
                let mut head = hub.head.lock().unwrap_or_else(|p| p.into_inner());
                let batch = after(&mut head, batch);
                // No receiver is fine: a client may be between two hubs.
                if !batch.is_empty() {
                    let _ = hub.tx.send(Arc::new(batch));
                }
            }
            tracing::debug!(message = "Live-stream reader stopped: no client left.", topic = %name);
        });
        Ok(ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(partition: i32, offset: i64) -> Canonical {
        Canonical {
            partition,
            offset,
            timestamp_ms: 0,
            value: None,
            key: None,
            headers: Default::default(),
        }
    }

    #[test]
    fn a_batch_keeps_only_offsets_past_the_position_and_each_once() {
        let mut position: Cursor = [(0, 10), (1, 14)].into_iter().collect();
        let batch = vec![
            rec(1, 14),
            rec(1, 15),
            rec(1, 14),
            rec(1, 15),
            rec(0, 9),
            rec(0, 10),
        ];
        let kept: Vec<(i32, i64)> = after(&mut position, batch)
            .iter()
            .map(|c| (c.partition, c.offset))
            .collect();
        assert_eq!(kept, [(1, 14), (1, 15), (0, 10)]);
        assert_eq!(position, [(0, 11), (1, 16)].into_iter().collect());
        // Already in order: kept whole.
        let kept = after(&mut position, vec![rec(0, 11), rec(1, 16)]);
        assert_eq!(kept.len(), 2);
        assert_eq!(position, [(0, 12), (1, 17)].into_iter().collect());
    }

    #[test]
    fn a_position_reaches_the_head_only_on_every_partition() {
        let head: Cursor = [(0, 10), (1, 5)].into_iter().collect();
        assert!(reached(&[(0, 10), (1, 5)].into_iter().collect(), &head));
        assert!(reached(&[(0, 12), (1, 7)].into_iter().collect(), &head));
        assert!(!reached(&[(0, 10), (1, 4)].into_iter().collect(), &head));
        assert!(!reached(&[(0, 10)].into_iter().collect(), &head));
        assert!(reached(&Cursor::new(), &Cursor::new()));
        // A partition the hub does not read: not there.
        assert!(!reached(
            &[(0, 10), (1, 5), (2, 0)].into_iter().collect(),
            &head
        ));
    }
}
