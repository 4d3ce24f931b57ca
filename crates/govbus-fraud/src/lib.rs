//! The anti-fraud app: a consumer of govbus that matches death
//! registrations, pension payments, social insurance contributions and
//! unemployment benefit payments as they happen, and publishes what it finds
//! as a dataset of its own, `hrss.fraud_alert`.
//!
//! It holds four grants of HRSS (`schemas/subscriptions/hrss_fraud_*.toml`),
//! each delivered to a Kafka view with the ID number replaced by HRSS's
//! pseudonym — the same person has the same pseudonym in all four feeds, so
//! the app can match people without ever seeing who they are.
//!
//! Key types: [`Detector`] (the rules, no I/O), [`AppConfig`] and [`run`]
//! (Kafka in, Kafka out, restart-safe).

mod app;
mod detect;

pub use app::{run, AppConfig, AppError, Metrics, FEEDS};
pub use detect::{
    alert_id, Alert, Detector, Input, InputError, Rule, ALERTS, CONTRIBUTIONS, DEATHS, PENSIONS,
    UNEMPLOYMENT,
};
