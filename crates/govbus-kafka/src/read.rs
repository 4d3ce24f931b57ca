//! Reading a whole topic, for the operator tools (`dlq`, `audit`).

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

/// The partitions of `topic`, or none when it does not exist (yet) or the
/// broker does not answer within `timeout`.
pub fn partitions<T: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<T>,
    topic: &str,
    timeout: Duration,
) -> Vec<i32> {
    consumer
        .fetch_metadata(Some(topic), timeout)
        .map(|m| {
            m.topics()
                .iter()
                .filter(|t| t.error().is_none())
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect()
        })
        .unwrap_or_default()
}

/// One record, owned.
#[derive(Debug, Clone)]
pub struct Record {
    /// Partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// The record's timestamp, when it has one.
    pub timestamp_ms: Option<i64>,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes (`None` for a tombstone).
    pub value: Option<Vec<u8>>,
    /// Headers in order.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Record {
    /// The first header `name` as UTF-8, or `""`.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
            .and_then(|v| std::str::from_utf8(v).ok())
            .unwrap_or("")
    }
}

/// Reads `topic` from the beginning until it has been quiet for `quiet`
/// (at most `limit` overall), sorted by partition and offset. Watermarks
/// alone are not trusted: Tansu 0.6.0 reports a partition's end as the last
/// *batch* offset + 1, short of the records in a multi-record batch.
pub fn read_all(
    bootstrap: &str,
    topic: &str,
    quiet: Duration,
    limit: Duration,
) -> Result<Vec<Record>, KafkaError> {
    let mut out = Vec::new();
    each(bootstrap, topic, quiet, limit, |r| out.push(r))?;
    out.sort_by_key(|d| (d.partition, d.offset));
    Ok(out)
}

/// Like [`read_all`], handing each record to `f` as it arrives (partitions
/// interleave; within a partition, offsets ascend).
pub fn each(
    bootstrap: &str,
    topic: &str,
    quiet: Duration,
    limit: Duration,
    f: impl FnMut(Record),
) -> Result<(), KafkaError> {
    each_from(
        bootstrap,
        topic,
        |_| Offset::Beginning,
        quiet,
        limit,
        false,
        f,
    )
}

/// Like [`each`], starting partition `p` at `start(p)`. With `to_end`, it
/// also stops once every partition has reached the high watermark it had at
/// the start (what was written before the call), however busy the topic is.
pub fn each_from(
    bootstrap: &str,
    topic: &str,
    start: impl Fn(i32) -> Offset,
    quiet: Duration,
    limit: Duration,
    to_end: bool,
    mut f: impl FnMut(Record),
) -> Result<(), KafkaError> {
    let consumer: BaseConsumer = crate::config::fetching(bootstrap)
        .set("group.id", "govbus-tool")
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for t in metadata.topics() {
        if let Some(e) = t.error() {
            return Err(KafkaError::MetadataFetch(e.into()));
        }
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), start(p.id()))?;
        }
    }
    consumer.assign(&tpl)?;
    // Partition → high watermark still to reach (only with `to_end`).
    let mut ends: std::collections::HashMap<i32, i64> = std::collections::HashMap::new();
    if to_end {
        for e in tpl.elements() {
            let (low, high) =
                consumer.fetch_watermarks(topic, e.partition(), Duration::from_secs(10))?;
            let from = match e.offset() {
                Offset::Offset(o) => o,
                _ => low,
            };
            if high > from {
                ends.insert(e.partition(), high);
            }
        }
        if ends.is_empty() {
            return Ok(());
        }
    }
    let deadline = Instant::now() + limit;
    let mut last = Instant::now();
    while last.elapsed() < quiet && Instant::now() < deadline {
        if to_end && ends.is_empty() {
            // Whatever already arrived with the last batches, then stop.
            let Some(m) = consumer.poll(Duration::ZERO) else {
                break;
            };
            f(owned(&m?));
            continue;
        }
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m?;
        last = Instant::now();
        if ends
            .get(&m.partition())
            .is_some_and(|high| m.offset() + 1 >= *high)
        {
            ends.remove(&m.partition());
        }
        f(owned(&m));
    }
    Ok(())
}

fn owned(m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
    let headers = m
        .headers()
        .map(|hs| {
            crate::headers::raw(hs)
                .map(|(name, value)| {
                    let name = String::from_utf8_lossy(name).into_owned();
                    (name, value.map(<[u8]>::to_vec))
                })
                .collect()
        })
        .unwrap_or_default();
    Record {
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis(),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        headers,
    }
}
