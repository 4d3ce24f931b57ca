//! Delivery (共享): what subscribing departments and apps receive — live data
//! instead of static dumps, and only what their grant allows.
//!
//! - [`policy`]: a subscription's field policy (include/exclude, mask,
//!   keyed pseudonym) and row filter.
//! - [`event`]: a canonical record after the policy, as a CloudEvent.
//! - [`sinks`]: webhook (Standard Webhooks), PostgreSQL (exactly-once
//!   effect), Kafka view and rolling files.
//! - [`sse`]: the live stream (Server-Sent Events), resumable by offset cursor.
//! - [`ledger`]: the hash-chained delivery ledger `_govbus.audit`.
//! - [`run`]: one consumer group per subscription; the grant is checked on
//!   every batch; offsets move only after the effect is durable and the
//!   delivery is in the ledger.

pub mod crypto;
pub mod decode;
pub mod event;
mod hub;
pub mod ledger;
pub mod metrics;
pub mod policy;
pub mod run;
pub mod sinks;
pub mod sse;

pub use metrics::Metrics;
pub use run::{SinkConfig, SinkError, Sinks};
