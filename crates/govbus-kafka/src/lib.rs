//! Kafka plumbing shared by every govbus component, so that topic names,
//! header names and client settings are written down once.
//!
//! - [`topics`]: `ingest.<dept>`, `data.<dataset>`, `dlq.<dept>`.
//! - [`headers`]: the CloudEvents binary-mode headers on canonical records and
//!   the `govbus.error.*` headers on dead letters, with readers for both.
//! - [`config`]: consumer and producer settings that every component starts from.
//!
//! It knows nothing about the catalog or validation.

pub mod config;
pub mod headers;
pub mod schema_log;
pub mod topics;
