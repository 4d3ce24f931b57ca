//! Prometheus metrics of the live interfaces. Labels are subscription ids,
//! dataset names, operations, statuses and result words: never a key or a
//! value.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric `govbus query` exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    calls: IntCounterVec,
    results: IntCounterVec,
    latency: HistogramVec,
    keys: IntGaugeVec,
    lag: IntGaugeVec,
    age: prometheus::GaugeVec,
    applied: IntCounterVec,
    undecodable: IntCounterVec,
    errors: IntCounterVec,
    active: IntGaugeVec,
    audit_waiting: IntGauge,
    audit_refused: IntCounterVec,
    audit_append: Histogram,
    audit_entry_calls: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[allow(clippy::expect_used)] // metric definitions are constants
impl Metrics {
    /// A fresh registry.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let calls = IntCounterVec::new(
            Opts::new(
                "govbus_query_calls_total",
                "Live-interface calls, by subscription, operation and HTTP status.",
            ),
            &["subscription", "operation", "status"],
        )
        .expect("metric");
        let results = IntCounterVec::new(
            Opts::new(
                "govbus_query_results_total",
                "Keys answered, by subscription, operation and result (found, absent, match, no_match, no_such_record).",
            ),
            &["subscription", "operation", "result"],
        )
        .expect("metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "govbus_query_latency_seconds",
                "Time to answer a live-interface call, audit record included.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
            ]),
            &["subscription", "operation"],
        )
        .expect("metric");
        let keys = IntGaugeVec::new(
            Opts::new(
                "govbus_query_state_keys",
                "Live records in the state of a dataset.",
            ),
            &["dataset"],
        )
        .expect("metric");
        let lag = IntGaugeVec::new(
            Opts::new(
                "govbus_query_state_lag_records",
                "Records in data.<dataset> not yet applied to the state.",
            ),
            &["dataset"],
        )
        .expect("metric");
        let age = prometheus::GaugeVec::new(
            Opts::new(
                "govbus_query_state_age_seconds",
                "Age of the newest change applied to the state of a dataset.",
            ),
            &["dataset"],
        )
        .expect("metric");
        let applied = IntCounterVec::new(
            Opts::new(
                "govbus_query_state_applied_total",
                "Changes applied to the state since start, by outcome (written, deleted, stale).",
            ),
            &["dataset", "outcome"],
        )
        .expect("metric");
        let undecodable = IntCounterVec::new(
            Opts::new(
                "govbus_query_state_undecodable_total",
                "Canonical values this process's catalog cannot decode (stored, not indexed).",
            ),
            &["dataset"],
        )
        .expect("metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "govbus_query_state_errors_total",
                "State store or Kafka errors of a dataset's state builder (it retries).",
            ),
            &["dataset"],
        )
        .expect("metric");
        let active = IntGaugeVec::new(
            Opts::new(
                "govbus_query_grant_active",
                "1 when a live-interface grant allows calls now, else 0.",
            ),
            &["subscription"],
        )
        .expect("metric");
        let audit_waiting = IntGauge::new(
            "govbus_query_audit_waiting_calls",
            "Calls waiting to be put into an audit ledger entry (a call is answered only after its entry is acknowledged); during a broker stall this includes calls already given up and answered 503, until a round drops them.",
        )
        .expect("metric");
        let audit_refused = IntCounterVec::new(
            Opts::new(
                "govbus_query_audit_refused_total",
                "Calls answered 503 because the audit ledger did not record them, by reason: not_taken (not put into an entry within 5 s), ack_late (entry not acknowledged 10 s after that), ledger_error (the append failed), closed (the ledger chain was closing).",
            ),
            &["reason"],
        )
        .expect("metric");
        let audit_append = Histogram::with_opts(
            HistogramOpts::new(
                "govbus_query_audit_append_seconds",
                "Time from enqueueing an audit ledger entry of calls to the broker's acknowledgement (or the append's failure).",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 15.0,
            ]),
        )
        .expect("metric");
        let audit_entry_calls = Histogram::with_opts(
            HistogramOpts::new(
                "govbus_query_audit_entry_calls",
                "Calls recorded in one audit ledger entry (group commit).",
            )
            .buckets(vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0,
            ]),
        )
        .expect("metric");
        registry
            .register(Box::new(audit_waiting.clone()))
            .expect("metric");
        // Every reason from 0, so that the first refusals after a start
        // show as an increase (an alert on increase() sees them).
        for reason in ["not_taken", "ack_late", "ledger_error", "closed"] {
            audit_refused.with_label_values(&[reason]);
        }
        for h in [&audit_append, &audit_entry_calls] {
            registry.register(Box::new(h.clone())).expect("metric");
        }
        for c in [
            &calls,
            &results,
            &applied,
            &undecodable,
            &errors,
            &audit_refused,
        ] {
            registry.register(Box::new(c.clone())).expect("metric");
        }
        for g in [&keys, &lag, &active] {
            registry.register(Box::new(g.clone())).expect("metric");
        }
        registry.register(Box::new(age.clone())).expect("metric");
        registry
            .register(Box::new(latency.clone()))
            .expect("metric");
        Metrics {
            registry,
            calls,
            results,
            latency,
            keys,
            lag,
            age,
            applied,
            undecodable,
            errors,
            active,
            audit_waiting,
            audit_refused,
            audit_append,
            audit_entry_calls,
        }
    }

    pub(crate) fn audit_waiting(&self, by: i64) {
        self.audit_waiting.add(by);
    }

    pub(crate) fn audit_refused(&self, reason: &str, n: u64) {
        self.audit_refused.with_label_values(&[reason]).inc_by(n);
    }

    pub(crate) fn audit_entry(&self, calls: usize, seconds: f64) {
        self.audit_entry_calls.observe(calls as f64);
        self.audit_append.observe(seconds);
    }

    pub(crate) fn call(&self, sub: &str, op: &str, status: u16, seconds: f64) {
        self.calls
            .with_label_values(&[sub, op, &status.to_string()])
            .inc();
        self.latency.with_label_values(&[sub, op]).observe(seconds);
    }

    /// A call refused before it was answered (no latency observed).
    pub(crate) fn refused(&self, sub: &str, op: &str, status: u16) {
        self.calls
            .with_label_values(&[sub, op, &status.to_string()])
            .inc();
    }

    pub(crate) fn result(&self, sub: &str, op: &str, result: &str, n: u64) {
        self.results.with_label_values(&[sub, op, result]).inc_by(n);
    }

    pub(crate) fn state(&self, dataset: &str, keys: u64, age_s: f64) {
        self.keys
            .with_label_values(&[dataset])
            .set(i64::try_from(keys).unwrap_or(i64::MAX));
        self.age.with_label_values(&[dataset]).set(age_s);
    }

    pub(crate) fn lag(&self, dataset: &str, lag: i64) {
        self.lag.with_label_values(&[dataset]).set(lag);
    }

    pub(crate) fn applied(&self, dataset: &str, written: u64, deleted: u64, stale: u64) {
        for (o, n) in [("written", written), ("deleted", deleted), ("stale", stale)] {
            if n > 0 {
                self.applied.with_label_values(&[dataset, o]).inc_by(n);
            }
        }
    }

    pub(crate) fn undecodable(&self, dataset: &str) {
        self.undecodable.with_label_values(&[dataset]).inc();
    }

    pub(crate) fn error(&self, dataset: &str) {
        self.errors.with_label_values(&[dataset]).inc();
    }

    pub(crate) fn active(&self, sub: &str, on: bool) {
        self.active.with_label_values(&[sub]).set(i64::from(on));
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
