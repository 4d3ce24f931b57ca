//! The delivery targets, one module each, behind one [`Sink`] trait.
//!
//! [`crate::run`] (a stage of the one stage engine, `govbus_kafka::stage::run`,
//! which alone moves the offsets) owns everything a subscription does around
//! a target: the consumer, the grant checked on every batch, the policy
//! applied to every record before a sink sees it (a sink receives
//! [`Delivery`]s, never canonical values), the subscription's dead letters,
//! the ledger, the traces and the metrics. A sink only delivers, and says how far
//! it got. A new sink is a new module here, one arm in `run::Shared::deliver_while_granted`,
//! and one line in the conformance suite (`tests/conformance.rs`).
//!
//! The live stream (`crate::sse`) is served to clients over HTTP rather than
//! run as a subscription task, and is not a [`Sink`].

use std::collections::HashMap;
use std::future::Future;

use govbus_catalog::Subscription;
use tokio::sync::watch;

use crate::event::{Canonical, Delivery};
use crate::policy::Policy;
use crate::run::Shared;

pub mod file;
pub mod postgres;
pub mod view;
pub mod webhook;

/// A destination's fault outside delivering a batch: reading its stored
/// offsets, its idle housekeeping, closing it. The loop ends
/// ([`Ended::Failed`]) and the sink is opened again from its committed
/// position.
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    /// The PostgreSQL sink's database, described without values. Not a
    /// `source`: the driver's own text can hold row values (a constraint's
    /// DETAIL), and a chain printed in full would show it.
    #[error("PostgreSQL: {}", govbus_pg::describe(.0))]
    Postgres(tokio_postgres::Error),
    /// The file sink's directory or files.
    #[error("file sink: {0}")]
    File(std::io::Error),
}

/// Why a subscription's delivery loop ended.
pub(crate) enum Ended {
    /// The process is stopping.
    Shutdown,
    /// The grant no longer allows delivery (revoked, expired, removed).
    Inactive(&'static str),
    /// The grant changed in a way that needs the sink opened again.
    Reconfigure,
    /// The destination asked never to be called again (HTTP 410).
    Gone,
    /// The sink failed; it is opened again from its committed position.
    Failed(String),
}

/// How far delivery of a batch got.
pub(crate) struct Progress {
    /// Deliveries `[..done]` were dealt with (delivered or dead-lettered).
    pub done: usize,
    /// Delivery index, reason code and bounded detail of those the
    /// destination refused for good: the engine dead-letters them.
    pub dead: Vec<(usize, &'static str, String)>,
    /// Why delivery stopped early.
    pub stop: Option<Ended>,
}

impl Progress {
    /// Every delivery dealt with, none refused.
    pub fn all(n: usize) -> Progress {
        Progress {
            done: n,
            dead: Vec::new(),
            stop: None,
        }
    }

    /// Nothing delivered: the sink stopped with `error`, and the whole batch
    /// comes again when it is opened again.
    pub fn failed(error: String) -> Progress {
        Progress {
            done: 0,
            dead: Vec::new(),
            stop: Some(Ended::Failed(error)),
        }
    }
}

/// One batch as the engine hands it to a sink.
pub(crate) struct Batch<'a> {
    /// The process's shared parts: ledger, metrics, producer, the grant check.
    pub shared: &'a Shared,
    /// The grant the deliveries were prepared under.
    pub policy: &'a Policy,
    /// The canonical records of the batch, in offset order.
    pub records: &'a [Canonical],
    /// What the policy made of them, in the same order.
    pub events: &'a [Delivery],
    /// Turns true when the process stops.
    pub shutdown: &'a watch::Receiver<bool>,
}

/// A delivery target. The engine calls [`Sink::deliver`] once per batch;
/// everything before the returned [`Progress::done`] is settled (dead
/// letters written, ledger appended, offsets moved), the rest comes again.
pub(crate) trait Sink: Send + Sized {
    /// Whether the sink keeps its own consumed offsets, committed in the
    /// same transaction as its effect, and records its own deliveries on
    /// the ledger before that commit. Such a sink is assigned its
    /// partitions from [`Sink::offsets`] instead of joining the
    /// subscription's group, and the engine dead-letters what cannot be
    /// delivered *before* handing it the batch (its commit moves past every
    /// record of the batch). Default: no — the engine records deliveries
    /// and stores offsets after the batch.
    fn keeps_offsets(&self) -> bool {
        false
    }

    /// Where to resume, per partition, when [`Sink::keeps_offsets`].
    fn offsets(&self) -> impl Future<Output = Result<HashMap<i32, i64>, DestinationError>> + Send {
        async { Ok(HashMap::new()) }
    }

    /// Whether the sink keeps state per key (a table) and so must also be
    /// told about changes that moved a key out of the row filter: it gets
    /// them as `out_of_scope` deletes carrying nothing but the key, and
    /// drops the row it holds. A sink of events never sees them.
    fn keeps_state(&self) -> bool {
        false
    }

    /// Why this destination cannot store `event`, when it cannot (checked
    /// before the batch is handed over; the engine dead-letters it).
    fn unstorable(&self, _event: &Delivery) -> Option<String> {
        None
    }

    /// Whether a change of the grant's field policy to `next` needs the
    /// sink opened again (its columns follow the grant). Otherwise the
    /// engine only rebuilds the policy.
    fn reopens_for(&self, _next: &Subscription) -> bool {
        false
    }

    /// Delivers one batch.
    fn deliver(&mut self, batch: Batch<'_>) -> impl Future<Output = Progress> + Send;

    /// Called when a poll brought nothing (at most every 250 ms):
    /// housekeeping such as rolling a file. `caught_up` says whether every
    /// assigned partition has been read to its end.
    fn idle(
        &mut self,
        _caught_up: &(dyn Fn() -> bool + Sync),
    ) -> impl Future<Output = Result<(), DestinationError>> + Send {
        async { Ok(()) }
    }

    /// Called once when the loop ends for any reason but a crash: whatever
    /// is open is finished (a file renamed into place).
    fn close(&mut self) -> Result<(), DestinationError> {
        Ok(())
    }
}
