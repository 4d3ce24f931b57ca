//! The anti-fraud app: a consumer of govbus that matches death
//! registrations, pension payments, social insurance contributions and
//! unemployment benefit payments as they happen, and publishes what it finds
//! as a dataset of its own, `hrss.fraud_alert` — and withdraws what later
//! corrections and deletions disprove.
//!
//! It holds four grants of HRSS (`schemas/subscriptions/hrss_fraud_*.toml`),
//! each delivered to a Kafka view with the ID number replaced by HRSS's
//! pseudonym — the same person has the same pseudonym in all four feeds, so
//! the app can match people without ever seeing who they are.
//!
//! Key types: [`judge`] and [`oracle`] (the rules as pure functions of the
//! current records), [`apply`] (the same rules, incrementally, over any
//! [`Kv`]: one change in, alert outcomes out), [`Detector`] (that, in
//! memory), [`AppConfig`] and [`run`] (Kafka in, Kafka out, state in a
//! `govbus-state` store committed with the input offsets).
//!
//! It does not keep its state in memory (the store has a bounded cache), and
//! never logs a pseudonym or a record id.

mod app;
mod detect;
mod state;

pub use app::{run, AppConfig, AppError, Metrics, FEEDS, STORE_FILE};
pub use detect::{
    alert_id, judge, oracle, Alert, Change, Evidence, Feed, Input, InputError, Payment, Rule,
    RuleParams, ALERTS, CONTRIBUTIONS, DEATHS, PENSIONS, UNEMPLOYMENT,
};
pub use state::{
    alerts, apply, records, recover_alert, AlertRow, Applied, Detector, Kv, MemKv, Outcome, Reason,
    Status, Stored, Tbl, TxnKv,
};
