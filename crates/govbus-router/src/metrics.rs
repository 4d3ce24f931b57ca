//! The router's telemetry. Every event is a method: it bumps its metrics and,
//! where an operator needs it, writes one log line. Labels are bounded:
//! department, dataset (catalog names or `unknown`), reason code, outcome.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use std::collections::HashMap;

use crate::gate::DeadLetter;

/// Counts for one batch, flushed into the metrics at once.
#[derive(Default)]
pub(crate) struct Tally<'a> {
    inputs: HashMap<&'a str, (u64, u64)>,
    routed: HashMap<(&'a str, &'a str), u64>,
    ages: HashMap<&'a str, Vec<f64>>,
    rejected: HashMap<(&'a str, &'a str, &'static str), u64>,
}

impl<'a> Tally<'a> {
    pub(crate) fn record_in(&mut self, department: &'a str, bytes: usize) {
        let e = self.inputs.entry(department).or_default();
        e.0 += 1;
        e.1 += bytes as u64;
    }

    pub(crate) fn routed(&mut self, department: &'a str, dataset: &'a str, age_seconds: f64) {
        *self.routed.entry((department, dataset)).or_default() += 1;
        self.ages.entry(dataset).or_default().push(age_seconds);
    }

    pub(crate) fn rejected(&mut self, dead: &'a DeadLetter) {
        let dataset = dead.dataset.as_deref().unwrap_or("unknown");
        *self
            .rejected
            .entry((dead.department.as_str(), dataset, dead.reason.code()))
            .or_default() += 1;
    }
}

/// The router's metrics, registered in their own registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    records_in: IntCounterVec,
    bytes_in: IntCounterVec,
    routed: IntCounterVec,
    rejected: IntCounterVec,
    batch_seconds: Histogram,
    settled: IntCounterVec,
    validate_seconds: Histogram,
    record_age_seconds: HistogramVec,
    lag: IntGaugeVec,
    produce_errors: IntCounterVec,
    trimmed: IntCounterVec,
    ready: IntGauge,
    assigned: IntGauge,
    last_routed: GaugeVec,
    freshness: GaugeVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    let _ = registry.register(Box::new(c.clone()));
    c
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    let _ = registry.register(Box::new(h.clone()));
    h
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Creates and registers every router metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let latency = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        let record_age_seconds = HistogramVec::new(
            HistogramOpts::new(
                "govbus_router_record_age_seconds",
                "Time from ce_time to routing, by dataset.",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0, 86_400.0,
            ]),
            &["dataset"],
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        let _ = registry.register(Box::new(record_age_seconds.clone()));
        let lag = IntGaugeVec::new(
            Opts::new(
                "govbus_router_consumer_lag",
                "Messages behind the ingest high watermark, by department.",
            ),
            &["department"],
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        let _ = registry.register(Box::new(lag.clone()));
        let ready = IntGauge::new("govbus_router_ready", "1 while connected to the broker.")
            .unwrap_or_else(|e| unreachable!("{e}"));
        let _ = registry.register(Box::new(ready.clone()));
        let assigned = IntGauge::new(
            "govbus_router_assigned_partitions",
            "Ingest partitions this instance owns (0 before its consumer group join completes and during a rebalance).",
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        let _ = registry.register(Box::new(assigned.clone()));
        let dataset_gauge = |name: &str, help: &str| {
            let g = GaugeVec::new(Opts::new(name, help), &["dataset"])
                .unwrap_or_else(|e| unreachable!("{e}"));
            let _ = registry.register(Box::new(g.clone()));
            g
        };
        let last_routed = dataset_gauge(
            "govbus_router_last_routed_timestamp_seconds",
            "When a record of the dataset was last routed (Unix time).",
        );
        let freshness = dataset_gauge(
            "govbus_catalog_freshness_seconds",
            "The catalog's freshness promise per dataset: the longest time between two records.",
        );
        Metrics {
            last_routed,
            freshness,
            records_in: counter(
                &registry,
                "govbus_router_records_in_total",
                "Records read from ingest topics.",
                &["department"],
            ),
            bytes_in: counter(
                &registry,
                "govbus_router_bytes_in_total",
                "Value bytes read from ingest topics.",
                &["department"],
            ),
            routed: counter(
                &registry,
                "govbus_router_records_routed_total",
                "Records written to data.<dataset>.",
                &["department", "dataset"],
            ),
            rejected: counter(
                &registry,
                "govbus_router_records_rejected_total",
                "Records written to dlq.<dept>.",
                &["department", "dataset", "reason"],
            ),
            produce_errors: counter(
                &registry,
                "govbus_router_produce_errors_total",
                "Failed writes, retried (never skipped).",
                &["topic_kind"],
            ),
            trimmed: counter(
                &registry,
                "govbus_router_dead_letters_trimmed_total",
                "Dead letters written without part of their record (its headers, value or key: too large to copy); the original stays only at the topic, partition and offset the dead letter names, for that topic's retention.",
                &["department"],
            ),
            settled: counter(
                &registry,
                "govbus_router_records_settled_total",
                "Records whose write (to data.* or dlq.*) the broker acknowledged, after which their input offsets were stored (or dropped for a partition revoked meanwhile, which its new owner routes again); routed + rejected count a record when it is decided.",
                &[],
            ),
            batch_seconds: histogram(
                &registry,
                "govbus_router_batch_duration_seconds",
                "Time to route one batch, read to acknowledged.",
                latency.clone(),
            ),
            validate_seconds: histogram(
                &registry,
                "govbus_router_validation_duration_seconds",
                "Time to decide one batch (gate + validation).",
                latency,
            ),
            record_age_seconds,
            lag,
            ready,
            assigned,
            registry,
        }
    }

    /// A dead letter written without part of its record.
    pub(crate) fn dead_letter_trimmed(&self, department: &str) {
        self.trimmed.with_label_values(&[department]).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Adds one batch's tally: a label lookup per distinct label set, not per record.
    pub(crate) fn flush(&self, tally: Tally<'_>) {
        for (department, (n, bytes)) in tally.inputs {
            self.records_in.with_label_values(&[department]).inc_by(n);
            self.bytes_in.with_label_values(&[department]).inc_by(bytes);
        }
        for ((department, dataset), n) in tally.routed {
            self.routed
                .with_label_values(&[department, dataset])
                .inc_by(n);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        for (dataset, ages) in tally.ages {
            self.last_routed.with_label_values(&[dataset]).set(now);
            let h = self.record_age_seconds.with_label_values(&[dataset]);
            for a in ages {
                h.observe(a.max(0.0));
            }
        }
        for ((department, dataset, reason), n) in tally.rejected {
            self.rejected
                .with_label_values(&[department, dataset, reason])
                .inc_by(n);
        }
    }

    pub(crate) fn batch(&self, seconds: f64, decide_seconds: f64, routed: usize, rejected: usize) {
        self.batch_seconds.observe(seconds);
        self.validate_seconds.observe(decide_seconds);
        self.settled
            .with_label_values(&[] as &[&str])
            .inc_by((routed + rejected) as u64);
        tracing::debug!(message = "Batch routed.", routed, rejected, seconds);
    }

    pub(crate) fn produce_error(&self, kind: &'static str, error: &dyn std::fmt::Display) {
        self.produce_errors.with_label_values(&[kind]).inc();
        tracing::warn!(message = "Write failed; retrying.", topic_kind = kind, %error);
    }

    pub(crate) fn lag(&self, department: &str, lag: i64) {
        self.lag.with_label_values(&[department]).set(lag);
    }

    pub(crate) fn set_assigned(&self, partitions: usize) {
        self.assigned
            .set(i64::try_from(partitions).unwrap_or(i64::MAX));
    }

    /// Ingest partitions this instance currently owns (0 before its group
    /// join completes, and while a rebalance moves them).
    pub fn assigned_partitions(&self) -> i64 {
        self.assigned.get()
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// Publishes each dataset's freshness promise, so that alert rules can
    /// compare it with `govbus_router_last_routed_timestamp_seconds`.
    pub fn set_freshness(&self, catalog: &govbus_catalog::Catalog) {
        for ds in catalog.datasets() {
            self.freshness
                .with_label_values(&[ds.name.as_str()])
                .set(ds.freshness.as_secs_f64());
        }
    }

    /// Whether the router is connected to the broker.
    pub fn is_ready(&self) -> bool {
        self.ready.get() == 1
    }
}
