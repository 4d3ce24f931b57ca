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
//! - [`schema_log`]: run-time schema changes, and following them into a
//!   recompiled engine.
//!
//! It knows the catalog and the engine only to follow the schema log.

pub mod admin;
pub mod config;
pub mod headers;
pub mod limits;
pub mod produce;
pub mod provision;
pub mod read;
pub mod retry;
pub mod schema_log;
pub mod topics;
