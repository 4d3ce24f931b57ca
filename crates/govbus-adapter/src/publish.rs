//! Publishing changes to `ingest.<owner>` the way the gateway does: the
//! validated Confluent-framed Avro value, the record key, and the headers
//! `ce_type`, `ce_id`, `ce_op`, `ce_sourceversion`, `ce_time` and
//! `content-type`; a delete is a tombstone. The router then checks it again.

use std::sync::Arc;
use std::time::Duration;

use govbus_kafka::headers as h;
use govbus_kafka::produce::{Acks, CountedProducer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, Producer};

use crate::{Change, PublishError, Publisher};

/// Publishes to Kafka with an idempotent producer.
pub struct KafkaPublisher {
    producer: CountedProducer,
    bootstrap: String,
    acks: Arc<Acks>,
    topic: String,
    dataset: String,
    time: String,
    /// The spans of the changes published since the last flush: they end
    /// when the flush is acknowledged.
    trace: Option<govbus_trace::Batch>,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl KafkaPublisher {
    /// A publisher of `dataset` changes to `topic` (the owner's ingest topic).
    pub fn new(
        bootstrap: &str,
        topic: &str,
        dataset: &str,
        overrides: &[(String, String)],
    ) -> Result<KafkaPublisher, KafkaError> {
        let mut config = govbus_kafka::config::producer(bootstrap);
        config.set("linger.ms", "20");
        for (k, v) in overrides {
            config.set(k, v);
        }
        let (producer, acks) = govbus_kafka::produce::counted(&config)?;
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0));
        Ok(KafkaPublisher {
            producer,
            bootstrap: bootstrap.to_owned(),
            acks,
            topic: topic.to_owned(),
            dataset: dataset.to_owned(),
            time: govbus_catalog::time::format_rfc3339_millis(ms),
            trace: None,
        })
    }
}

/// No broker answered the reachability check. (The client's error is in
/// the message, not a `source`: an error chain printed in full would say it
/// twice.)
#[derive(Debug, thiserror::Error)]
#[error("no Kafka broker answered at {bootstrap} within {}s ({error}); check --bootstrap and that the broker is up", within.as_secs())]
pub struct Unreachable {
    /// The bootstrap address asked.
    pub bootstrap: String,
    /// How long it was given.
    pub within: Duration,
    /// The client's error.
    pub error: rdkafka::error::KafkaError,
}

impl KafkaPublisher {
    /// Fails unless a broker at the bootstrap address answers a metadata
    /// request within `timeout`. The producer itself would wait for an
    /// unreachable broker forever (`message.timeout.ms=0`, so that a slow
    /// broker never loses a change), so a run checks this before it reads the
    /// dump and before anything is written.
    pub fn check_reachable(&self, timeout: Duration) -> Result<(), Unreachable> {
        self.producer
            .client()
            .fetch_metadata(None, timeout)
            .map(|_| ())
            .map_err(|error| Unreachable {
                bootstrap: self.bootstrap.clone(),
                within: timeout,
                error,
            })
    }
}

impl Publisher for KafkaPublisher {
    fn publish(&mut self, c: &Change) -> Result<(), PublishError> {
        let version = c.version.to_string();
        let headers = h::owned([
            (
                h::CE_TYPE,
                if c.dataset.is_empty() {
                    &self.dataset
                } else {
                    &c.dataset
                }
                .as_bytes(),
            ),
            (h::CE_ID, c.id.as_bytes()),
            (h::CE_OP, c.op.as_bytes()),
            (h::CE_SOURCEVERSION, version.as_bytes()),
            (h::CE_TIME, self.time.as_bytes()),
            (h::CONTENT_TYPE, h::AVRO_CONTENT_TYPE.as_bytes()),
        ]);
        // One root span per published batch (while tracing is on).
        if self.trace.is_none() {
            let mut attributes = vec![govbus_trace::Attribute::new("govbus.stage", "adapter")];
            // A capture publishes several datasets through one publisher.
            if !self.dataset.is_empty() {
                attributes.push(govbus_trace::Attribute::new(
                    "govbus.dataset",
                    self.dataset.clone(),
                ));
            }
            self.trace = govbus_trace::Batch::start(
                "govbus.adapter publish",
                govbus_trace::Kind::Producer,
                attributes,
            );
        }
        let traceparent = self.trace.as_ref().and_then(|t| t.continue_from(None));
        let headers = match &traceparent {
            Some(tp) => headers.insert(rdkafka::message::Header {
                key: h::TRACEPARENT,
                value: Some(&tp[..]),
            }),
            None => headers,
        };
        let mut record: BaseRecord<'_, [u8], [u8], ()> = BaseRecord::to(&self.topic)
            .key(c.key.as_bytes())
            .headers(headers);
        if let Some(v) = &c.value {
            record = record.payload(v.as_slice());
        }
        Ok(govbus_kafka::produce::send_counted(&self.producer, record)?)
    }

    fn flush(&mut self) -> Result<(), PublishError> {
        let settled = self.acks.settle(&self.producer, None);
        if let (Err(_), Some(t)) = (&settled, &self.trace) {
            t.fail("the batch was not acknowledged");
        }
        // Ends the batch's spans.
        self.trace = None;
        Ok(settled?)
    }
}
