//! Capture telemetry: changes by table and operation, rejections by reason,
//! heartbeats, the slot's position and the WAL it holds back. Labels are
//! bounded: configured table names, operations, reason codes.

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// The capture's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    changes: IntCounterVec,
    rejected: IntCounterVec,
    heartbeats: IntCounter,
    retained: IntGauge,
    position: IntGauge,
    last_change: IntGauge,
    ddl: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    let _ = r.register(Box::new(c.clone()));
    c
}

impl Metrics {
    /// Registers every metric in a new registry.
    pub fn new() -> Metrics {
        let r = Registry::new();
        let vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| unreachable!("metric {name}: {e}"))
        };
        let gauge = |name: &str, help: &str| {
            IntGauge::new(name, help).unwrap_or_else(|e| unreachable!("metric {name}: {e}"))
        };
        Metrics {
            changes: reg(&r, vec("govbus_capture_changes_total", "Changes published (acknowledged by Kafka).", &["table", "op"])),
            rejected: reg(&r, vec("govbus_capture_rejected_total", "Rows rejected at the edge, by the owning department (for the scorecard), dataset, table and reason.", &["department", "dataset", "table", "reason"])),
            heartbeats: reg(&r, IntCounter::new("govbus_capture_heartbeats_total", "Heartbeats written to move an idle slot.").unwrap_or_else(|e| unreachable!("{e}"))),
            retained: reg(&r, gauge("govbus_capture_slot_retained_bytes", "WAL the replication slot holds back (current WAL position minus confirmed position).")),
            position: reg(&r, gauge("govbus_capture_position_lsn", "Logical: the replication slot's confirmed position as a number (set at start from the slot, then on every advance); poll: the highest version read.")),
            ddl: reg(&r, vec("govbus_capture_ddl_total", "Statements that changed a captured table's structure or emptied it (MySQL binlog), by table.", &["table"])),
            last_change: reg(&r, gauge("govbus_capture_last_change_timestamp_seconds", "When the last change was published (Unix time).")),
            registry: r,
        }
    }

    pub(crate) fn published(&self, table: &str, op: &str) {
        self.changes.with_label_values(&[table, op]).inc();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
        self.last_change.set(now);
    }

    pub(crate) fn rejected(&self, department: &str, dataset: &str, table: &str, reason: &str) {
        self.rejected
            .with_label_values(&[department, dataset, table, reason])
            .inc();
    }

    pub(crate) fn ddl(&self, table: &str) {
        self.ddl.with_label_values(&[table]).inc();
    }

    pub(crate) fn heartbeat(&self) {
        self.heartbeats.inc();
    }

    pub(crate) fn position(&self, lsn: u64) {
        self.position.set(i64::try_from(lsn).unwrap_or(i64::MAX));
    }

    pub(crate) fn retained(&self, bytes: i64) {
        self.retained.set(bytes);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
