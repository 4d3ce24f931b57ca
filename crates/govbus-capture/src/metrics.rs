//! Capture telemetry: changes by table and operation, rejections by reason,
//! heartbeats, the slot's position and the WAL it holds back. Labels are
//! bounded: configured table names, operations, reason codes, and the
//! capture's configured `name` on what belongs to one capture (its position,
//! heartbeats, retained WAL, last change), so that captures sharing a process
//! (`govbus demo`) each keep their own.

use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

/// The capture's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    changes: IntCounterVec,
    rejected: IntCounterVec,
    heartbeats: IntCounterVec,
    retained: IntGaugeVec,
    position: IntGaugeVec,
    last_change: IntGaugeVec,
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
            IntGaugeVec::new(Opts::new(name, help), &["capture"])
                .unwrap_or_else(|e| unreachable!("metric {name}: {e}"))
        };
        Metrics {
            changes: reg(&r, vec("govbus_capture_changes_total", "Changes published (acknowledged by Kafka).", &["table", "op"])),
            rejected: reg(&r, vec("govbus_capture_rejected_total", "Rows rejected at the edge, by the owning department (for the scorecard), dataset, table and reason.", &["department", "dataset", "table", "reason"])),
            heartbeats: reg(&r, vec("govbus_capture_heartbeats_total", "Heartbeats written to move an idle slot, by capture.", &["capture"])),
            retained: reg(&r, gauge("govbus_capture_slot_retained_bytes", "WAL the replication slot holds back (current WAL position minus confirmed position).")),
            position: reg(&r, gauge("govbus_capture_position_lsn", "Logical: the replication slot's confirmed position as a number (set at start from the slot, then on every advance); poll: the highest version read.")),
            ddl: reg(&r, vec("govbus_capture_ddl_total", "Statements that changed a captured table's structure or emptied it (MySQL binlog), by table.", &["table"])),
            last_change: reg(&r, gauge("govbus_capture_last_change_timestamp_seconds", "When the last change was published (Unix time).")),
            registry: r,
        }
    }

    pub(crate) fn published(&self, capture: &str, table: &str, op: &str) {
        self.changes.with_label_values(&[table, op]).inc();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
        self.last_change.with_label_values(&[capture]).set(now);
    }

    pub(crate) fn rejected(&self, department: &str, dataset: &str, table: &str, reason: &str) {
        self.rejected
            .with_label_values(&[department, dataset, table, reason])
            .inc();
    }

    pub(crate) fn ddl(&self, table: &str) {
        self.ddl.with_label_values(&[table]).inc();
    }

    /// Shows a capture's series (at 0) from its start, before anything
    /// sets them: a scrape never finds them missing.
    pub(crate) fn start(&self, capture: &str) {
        self.heartbeats.with_label_values(&[capture]);
        self.retained.with_label_values(&[capture]);
        self.position.with_label_values(&[capture]);
        self.last_change.with_label_values(&[capture]);
    }

    pub(crate) fn heartbeat(&self, capture: &str) {
        self.heartbeats.with_label_values(&[capture]).inc();
    }

    pub(crate) fn position(&self, capture: &str, lsn: u64) {
        self.position
            .with_label_values(&[capture])
            .set(i64::try_from(lsn).unwrap_or(i64::MAX));
    }

    pub(crate) fn retained(&self, capture: &str, bytes: i64) {
        self.retained.with_label_values(&[capture]).set(bytes);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::Metrics;

    /// Two captures in one process (`govbus demo`) keep their own position,
    /// retained WAL, heartbeats and last change instead of overwriting one.
    #[test]
    fn captures_sharing_a_registry_keep_their_own_gauges() {
        let m = Metrics::new();
        m.start("pg");
        assert!(m
            .render()
            .contains("govbus_capture_heartbeats_total{capture=\"pg\"} 0"));
        m.position("pg", 100);
        m.position("my", 7);
        m.retained("pg", 4096);
        m.heartbeat("pg");
        m.published("my", "db.t", "create");
        let text = m.render();
        for line in [
            "govbus_capture_position_lsn{capture=\"pg\"} 100",
            "govbus_capture_position_lsn{capture=\"my\"} 7",
            "govbus_capture_slot_retained_bytes{capture=\"pg\"} 4096",
            "govbus_capture_heartbeats_total{capture=\"pg\"} 1",
            "govbus_capture_changes_total{op=\"create\",table=\"db.t\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
        assert!(text.contains("govbus_capture_last_change_timestamp_seconds{capture=\"my\"}"));
        assert!(text.contains("govbus_capture_last_change_timestamp_seconds{capture=\"pg\"} 0"));
    }
}
