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

/// Where changes go (Kafka in production, a vector in tests).
pub trait Publisher {
    /// Queues one change.
    fn publish(&mut self, change: &Change) -> Result<(), String>;
    /// Returns once every queued change is acknowledged.
    fn flush(&mut self) -> Result<(), String>;
}
