//! The schema log: `<prefix>_govbus.schemas`, one partition, one record per
//! change made at run time, as `govbus_catalog::Catalog::apply_change` reads
//! it: a schema version (key = dataset, value = the Avro schema text) or a
//! compatibility level (key = `config:<dataset>`, value = the level). Every registry, router and gateway instance replays it from
//! the start and tails it, so they all serve and accept the same versions —
//! with the same derived ids — without any other coordination.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use govbus_catalog::Catalog;

use crate::topics::Topics;

/// Replays and tails the schema log under `topics`, applying each change to
/// `catalog` (the same checks as a catalog file) and handing the changed
/// catalog to `adopt` — the caller recompiles what it serves from it
/// (`govbus_validate::SharedEngine::recompile`). A change `adopt` refuses is
/// logged and left out: the catalog stays as it was. Keep the returned tail
/// alive; `None` (logged) if the log cannot be followed.
pub fn follow<E: std::fmt::Display>(
    bootstrap: &str,
    topics: &Topics,
    catalog: Catalog,
    mut adopt: impl FnMut(&Catalog) -> Result<(), E> + Send + 'static,
) -> Option<Tail> {
    let mut catalog = catalog;
    Tail::start(bootstrap, &topic(topics), move |key, value| {
        match catalog.apply_change(key, value) {
            Ok(c) => match adopt(&c) {
                Ok(()) => {
                    catalog = c;
                    tracing::info!(message = "Schema log change applied.", key);
                }
                Err(error) => {
                    tracing::warn!(message = "Schema log change does not compile.", key, %error)
                }
            },
            Err(error) => tracing::warn!(message = "Schema log change refused.", key, %error),
        }
    })
    .map_err(|error| tracing::warn!(message = "Cannot follow the schema log.", %error))
    .ok()
}

/// The log's topic under a namespace.
pub fn topic(topics: &Topics) -> String {
    format!("{}_govbus.schemas", topics.prefix())
}

/// Appends one registration and waits for the broker's acknowledgement.
pub fn append(bootstrap: &str, topic: &str, dataset: &str, schema: &str) -> Result<(), KafkaError> {
    let producer: BaseProducer = crate::config::idempotent(bootstrap)
        .set("message.timeout.ms", "30000")
        .create()?;
    producer
        .send(
            BaseRecord::to(topic)
                .key(dataset)
                .payload(schema)
                .partition(0),
        )
        .map_err(|(e, _)| e)?;
    producer.flush(Duration::from_secs(30))
}

/// A thread replaying and tailing the log.
#[derive(Debug)]
pub struct Tail {
    bootstrap: String,
    topic: String,
    /// Offset of the next entry to apply.
    next: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
}

impl Tail {
    /// Starts replaying the log from the beginning, calling `apply(dataset,
    /// schema)` for each entry in order, then keeps tailing it.
    pub fn start(
        bootstrap: &str,
        topic: &str,
        mut apply: impl FnMut(&str, &str) + Send + 'static,
    ) -> Result<Tail, KafkaError> {
        let consumer: BaseConsumer = crate::config::fetching(bootstrap)
            .set("group.id", "govbus-schema-log")
            .set("enable.auto.commit", "false")
            .set("topic.metadata.refresh.interval.ms", "1000")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
        consumer.assign(&tpl)?;
        let next = Arc::new(AtomicI64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (n, s) = (next.clone(), stop.clone());
        std::thread::Builder::new()
            .name("govbus-schema-log".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                        let key = m
                            .key()
                            .and_then(|k| std::str::from_utf8(k).ok())
                            .unwrap_or("");
                        let value = m
                            .payload()
                            .and_then(|v| std::str::from_utf8(v).ok())
                            .unwrap_or("");
                        apply(key, value);
                        n.store(m.offset() + 1, Ordering::Release);
                    }
                }
            })
            .map_err(|e| KafkaError::Subscription(e.to_string()))?;
        Ok(Tail {
            bootstrap: bootstrap.to_owned(),
            topic: topic.to_owned(),
            next,
            stop,
        })
    }

    /// Waits (at most `timeout`) until every entry appended so far is applied.
    /// Returns whether it caught up.
    pub fn catch_up(&self, timeout: Duration) -> bool {
        let Ok(consumer) = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create::<BaseConsumer>()
        else {
            return false;
        };
        let Ok((_, high)) = consumer.fetch_watermarks(&self.topic, 0, timeout) else {
            return false;
        };
        let deadline = Instant::now() + timeout;
        while self.next.load(Ordering::Acquire) < high {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
