//! The govbus test kit: real components for integration tests.
//!
//! - [`Broker`]: a real Tansu broker on a free loopback port. [`Broker::shared`]
//!   gives one memory-backed broker per test process (or the one named by
//!   `GOVBUS_TEST_BOOTSTRAP`, which `scripts/test` starts for the whole suite);
//!   [`Broker::start`] gives a private one. [`Storage::Sqlite`] (Tansu's
//!   libSQL engine, with the index its schema lacks) keeps the data in a
//!   file across [`Broker::restart`] — the reliability suite's choice;
//!   [`Storage::Durable`] keeps it in S3-compatible object storage (a local
//!   `moto` server), which loses records across a restart under load
//!   (RELIABILITY.md).
//! - [`ProduceStall`]: a loopback proxy in front of a private broker
//!   ([`Broker::start_behind`]) that holds Produce requests while reads go
//!   on — a partition leader for writes gone, which one broker cannot do.
//! - [`unique`] names, and client configs ([`consumer_config`],
//!   [`producer_config`]) tuned for Tansu: fast group joins, short fetch waits,
//!   batching producers.
//! - [`copy_dir`] and [`replace_in_file`], for tests that break a copy of
//!   the catalog on purpose.
//! - [`headers::with_raw_name`]: a header whose name is not UTF-8, which a
//!   department's own client can send and rdkafka's API cannot build.
//! - [`PgSchema`]: a throwaway schema in the machine's PostgreSQL, dropped
//!   when the value is.
//! - [`pki::Pki`]: a throwaway CA with server and client certificates, and
//!   [`pki::Https`], requests through Python `httpx`, for TLS tests.
//!
//! Child processes are started from one long-lived thread with
//! `PR_SET_PDEATHSIG`, so a crashed or killed test never leaves a broker behind.
//!
//! This crate is a dev-dependency only; nothing in production links it.

mod broker;
pub mod conservation;
mod files;
pub mod headers;
pub mod ids;
mod names;
mod pg;
pub mod pki;
mod spawn;
mod stall;

pub use broker::{tansu_binary, Broker, Storage};
pub use files::{copy_dir, replace_in_file};
pub use names::{consumer_config, create_topic, producer_config, unique, wait_for};
pub use pg::PgSchema;
pub use spawn::spawn;
pub use stall::ProduceStall;
