//! The govbus router: every record a department publishes to
//! `ingest.<dept>` is checked against the catalog before anyone sees it, and
//! lands in exactly one of `data.<dataset>` (canonical Avro with CloudEvents
//! headers) or `dlq.<dept>` (the original bytes with `govbus.error.*` headers).
//!
//! Key types: [`Router`] (the consume → decide → produce loop, at-least-once
//! or transactional — [`Mode`]), [`gate::decide`] (the pure routing decision
//! for one message), [`Metrics`] and [`http::serve`] (`/metrics`, `/health`,
//! `/ready`).
//!
//! Scale-out is Kafka's: every instance joins the same consumer group and
//! subscribes to `^ingest\..+`, so new departments need no restart and N
//! instances share the partitions.
//!
//! Not here: the catalog and validation (`govbus-validate`), header and topic
//! names (`govbus-kafka`), and process concerns such as signals (the binary).

mod config;
pub mod gate;
pub mod http;
mod metrics;
mod run;

pub use config::{Mode, RouterConfig};
pub use govbus_kafka::topics::Topics;
pub use metrics::Metrics;
pub use run::{Router, RouterError};
