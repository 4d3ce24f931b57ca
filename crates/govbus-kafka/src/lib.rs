//! Kafka plumbing shared by every govbus component, so that topic names,
//! header names and client settings are written down once.
//!
//! - [`topics`]: `ingest.<dept>`, `data.<dataset>`, `dlq.<dept>`.
//! - [`headers`]: the CloudEvents binary-mode headers on canonical records and
//!   the `govbus.error.*` headers on dead letters, with readers for both.
//! - [`admin`]: creating the topics a component writes to.
//! - [`provision`]: every topic the catalog implies, and creating the missing ones.
//! - [`config`]: consumer and producer settings that every component starts from.
//!
//! - [`read`]: a whole topic, for the operator tools.
//! - [`retry`]: the one backoff policy every retry loop waits by.
//! - [`stage`]: what every consuming stage shares: batches from a consumer,
//!   fenced against rebalances.
//! - [`schema_log`]: run-time schema changes, followed into a changed
//!   catalog.
//!
//! It knows the catalog to follow the schema log, and the engine's
//! rejection to name an oversized record.

pub mod admin;
pub mod config;
pub mod headers;
pub mod limits;
pub mod produce;
pub mod provision;
pub mod read;
pub mod retry;
pub mod schema_log;
pub mod stage;
pub mod topics;
