//! What every adapter shares — the table-dump adapter (`govbus-snapshot`)
//! and change capture (`govbus-capture`) alike: a source row ([`row`]),
//! its mapping and normalization to a dataset's fields ([`mapping`],
//! [`normalize`]), the [`Change`] an adapter publishes and where it goes
//! ([`Publisher`]; [`publish::KafkaPublisher`] in production: the ingest
//! topic, CloudEvents headers, every change acknowledged at `flush`, one
//! trace span per flush).
//!
//! Validation is the caller's (with `govbus-validate`, as the gateway does):
//! this crate maps and publishes, it does not decide.

pub mod mapping;
pub mod normalize;
pub mod publish;
pub mod row;

/// One change to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The dataset (`ce_type`).
    pub dataset: String,
    /// `create`, `update` or `delete`.
    pub op: &'static str,
    /// The record key.
    pub key: String,
    /// The canonical value (`None` for a delete).
    pub value: Option<Vec<u8>>,
    /// Source version: the same for every change of a run.
    pub version: u64,
    /// Event id, stable across re-runs of the same dump.
    pub id: String,
}

/// Why a change was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The producer refused the change as it was handed over (a record too
    /// large for the producer, a producer that failed).
    #[error("kafka: {0}")]
    Refused(#[from] rdkafka::error::KafkaError),
    /// Changes were handed over but not all acknowledged.
    #[error(transparent)]
    Unacknowledged(#[from] govbus_kafka::produce::AckError),
    /// Another publisher's own failure (a test's, a bench's).
    #[error("{0}")]
    Other(String),
}

impl PublishError {
    /// Whether the change itself is too large to publish: refused on every
    /// retry, it must be rejected like a row that does not validate rather
    /// than hold the adapter's position for ever.
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            PublishError::Refused(rdkafka::error::KafkaError::MessageProduction(
                rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge
            ))
        )
    }
}

/// Where changes go (Kafka in production, a vector in tests).
pub trait Publisher {
    /// Queues one change.
    fn publish(&mut self, change: &Change) -> Result<(), PublishError>;
    /// Returns once every queued change is acknowledged.
    fn flush(&mut self) -> Result<(), PublishError>;
}

#[cfg(test)]
mod tests {
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaErrorCode;

    use super::PublishError;

    #[test]
    fn only_a_record_the_producer_finds_too_large_is_too_large() {
        let too_large = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert!(PublishError::from(too_large).is_too_large());
        let full = KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull);
        assert!(!PublishError::from(full).is_too_large());
        // A failed delivery report is the broker's, and may pass.
        let failed = govbus_kafka::produce::AckError::Failed {
            failed: 1,
            first: "Broker: Message size too large".into(),
        };
        assert!(!PublishError::from(failed).is_too_large());
    }
}
