//! Delivery metrics, per subscription (a bounded label: subscriptions are
//! catalog entries) and sink type.

use prometheus::{Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

/// The sink process's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    delivered: IntCounterVec,
    filtered: IntCounterVec,
    skipped: IntCounterVec,
    failed: IntCounterVec,
    retried: IntCounterVec,
    dead_lettered: IntCounterVec,
    trimmed: IntCounterVec,
    lag_records: IntGaugeVec,
    lag_seconds: GaugeVec,
    oldest_undelivered: GaugeVec,
    active: IntGaugeVec,
    sse_clients: IntGaugeVec,
    ledger_entries: IntCounterVec,
    task_panics: IntCounterVec,
    held: prometheus::IntGauge,
    readers: prometheus::IntGauge,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    let _ = registry.register(Box::new(c.clone()));
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), &["subscription"])
        .unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    let _ = registry.register(Box::new(g.clone()));
    g
}

fn fgauge(registry: &Registry, name: &str, help: &str) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), &["subscription"])
        .unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    let _ = registry.register(Box::new(g.clone()));
    g
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

const SUB: &[&str] = &["subscription", "sink"];

impl Metrics {
    /// Registers every metric in a new registry.
    pub fn new() -> Metrics {
        let r = Registry::new();
        Metrics {
            delivered: counter(&r, "govbus_sink_delivered_total", "Events delivered (effect durable at the subscriber).", SUB),
            filtered: counter(&r, "govbus_sink_filtered_total", "Events outside the subscription's row filter (delivered as out_of_scope, without data).", SUB),
            skipped: counter(&r, "govbus_sink_skipped_total", "Records a live stream could not decode with its catalog (a schema id it does not know, a damaged value): its clients get `event: skipped` with the position and the reason, no data. Other sinks dead-letter such a record instead (govbus_sink_dead_lettered_total).", SUB),
            failed: counter(&r, "govbus_sink_failed_total", "Delivery attempts that failed (each attempt counts).", SUB),
            retried: counter(&r, "govbus_sink_retried_total", "Delivery attempts that were retries.", SUB),
            dead_lettered: counter(&r, "govbus_sink_dead_lettered_total", "Events written to dlq.sub.<subscription>.", SUB),
            trimmed: counter(&r, "govbus_sink_dead_letters_trimmed_total", "Dead letters written without part of their record (its headers, value or key: too large to copy); the original stays only at the topic, partition and offset the dead letter names, until compacted.", &["subscription"]),
            lag_records: gauge(&r, "govbus_sink_lag_records", "Records in data.<dataset> not yet consumed by the subscription."),
            lag_seconds: fgauge(&r, "govbus_sink_lag_seconds", "Age of the newest delivered record when it was delivered (0 when caught up)."),
            oldest_undelivered: fgauge(&r, "govbus_sink_oldest_undelivered_seconds", "Age of the oldest consumed, not yet delivered record (0 when none)."),
            active: gauge(&r, "govbus_sink_active", "1 while the subscription's grant is valid and its sink runs (a live stream: while the grant is valid and this process serves its endpoint, whether or not a client is connected; clients: govbus_sink_sse_clients); 0 when revoked, expired or disabled."),
            sse_clients: gauge(&r, "govbus_sink_sse_clients", "Connected live-stream clients."),
            ledger_entries: counter(&r, "govbus_audit_entries_total", "Entries appended to the delivery ledger.", &["outcome"]),
            task_panics: counter(&r, "govbus_sink_task_panics_total", "Subscription tasks that panicked (each is restarted within a second; any increase is a bug to report).", &["subscription"]),
            held: {
                let g = prometheus::IntGauge::new("govbus_sink_tasks_held", "Subscription tasks that panicked and wait to be started again (1 s, doubling per repeat up to 60 s); /ready answers 503 while it is above 0.")
                    .unwrap_or_else(|e| unreachable!("metric govbus_sink_tasks_held: {e}"));
                let _ = r.register(Box::new(g.clone()));
                g
            },
            readers: {
                let g = prometheus::IntGauge::new("govbus_sink_sse_readers", "Shared live-stream readers (one Kafka consumer per data topic with clients at its head; a client behind the head reads with its own consumer until it catches up).")
                    .unwrap_or_else(|e| unreachable!("metric govbus_sink_sse_readers: {e}"));
                let _ = r.register(Box::new(g.clone()));
                g
            },
            registry: r,
        }
    }

    /// A shared live-stream reader started (+1) or stopped (-1).
    pub fn live_readers(&self, delta: i64) {
        self.readers.add(delta);
    }

    /// How many subscription tasks wait to restart after a panic.
    pub fn tasks_held(&self, n: usize) {
        self.held.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Whether every subscription this process runs has a task: false while
    /// one that panicked waits to be started again.
    pub fn is_ready(&self) -> bool {
        self.held.get() == 0
    }

    /// A subscription task panicked.
    pub fn task_panicked(&self, sub: &str) {
        self.task_panics.with_label_values(&[sub]).inc();
    }

    /// Panics counted for `sub`.
    pub fn task_panics(&self, sub: &str) -> u64 {
        self.task_panics.with_label_values(&[sub]).get()
    }

    /// Events delivered.
    pub fn delivered(&self, sub: &str, sink: &str, n: usize) {
        self.delivered
            .with_label_values(&[sub, sink])
            .inc_by(n as u64);
    }
    /// Events filtered out.
    pub fn filtered(&self, sub: &str, sink: &str, n: usize) {
        if n > 0 {
            self.filtered
                .with_label_values(&[sub, sink])
                .inc_by(n as u64);
        }
    }
    /// Records a live stream's clients were told it skipped.
    pub fn skipped(&self, sub: &str, sink: &str, n: usize) {
        if n > 0 {
            self.skipped
                .with_label_values(&[sub, sink])
                .inc_by(n as u64);
        }
    }
    /// One failed attempt.
    pub fn failed(&self, sub: &str, sink: &str) {
        self.failed.with_label_values(&[sub, sink]).inc();
    }
    /// One retry.
    pub fn retried(&self, sub: &str, sink: &str) {
        self.retried.with_label_values(&[sub, sink]).inc();
    }
    /// Events dead-lettered.
    pub fn dead_lettered(&self, sub: &str, sink: &str, n: usize) {
        self.dead_lettered
            .with_label_values(&[sub, sink])
            .inc_by(n as u64);
    }
    /// A dead letter written without part of its record.
    pub fn dead_letter_trimmed(&self, sub: &str) {
        self.trimmed.with_label_values(&[sub]).inc();
    }
    /// Lag in records.
    pub fn lag_records(&self, sub: &str, n: i64) {
        self.lag_records.with_label_values(&[sub]).set(n);
    }
    /// Lag in seconds.
    pub fn lag_seconds(&self, sub: &str, s: f64) {
        self.lag_seconds.with_label_values(&[sub]).set(s);
    }
    /// Age of the oldest undelivered record.
    pub fn oldest_undelivered(&self, sub: &str, s: f64) {
        self.oldest_undelivered.with_label_values(&[sub]).set(s);
    }
    /// Whether the subscription delivers.
    pub fn active(&self, sub: &str, on: bool) {
        self.active.with_label_values(&[sub]).set(i64::from(on));
    }
    /// Live-stream clients connected (+1 / -1).
    pub fn sse_clients(&self, sub: &str, delta: i64) {
        self.sse_clients.with_label_values(&[sub]).add(delta);
    }
    /// One ledger entry.
    pub fn ledger_entry(&self, outcome: &str) {
        self.ledger_entries.with_label_values(&[outcome]).inc();
    }

    /// Events delivered so far by `sub` through `sink` (benchmarks, tests).
    pub fn delivered_total(&self, sub: &str, sink: &str) -> u64 {
        self.delivered.with_label_values(&[sub, sink]).get()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
