//! Topic naming (DESIGN.md §3), under an optional namespace prefix.
//!
//! With the default empty prefix the names are `ingest.<dept>`,
//! `data.<dataset>` and `dlq.<dept>`. A prefix (`staging.`) lets several
//! environments — or parallel tests — share one cluster without seeing each
//! other's topics.

/// Prefix of the topics departments publish to.
pub const INGEST_PREFIX: &str = "ingest.";
/// Prefix of the canonical, validated topics.
pub const DATA_PREFIX: &str = "data.";
/// Prefix of the per-department dead-letter topics.
pub const DLQ_PREFIX: &str = "dlq.";

/// Topic names under a namespace prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    /// Names under `prefix` (empty for none; a non-empty prefix should end in `.`).
    pub fn new(prefix: impl Into<String>) -> Topics {
        Topics {
            prefix: prefix.into(),
        }
    }

    /// The namespace prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>ingest.<dept>`.
    pub fn ingest(&self, department: &str) -> String {
        format!("{}{INGEST_PREFIX}{department}", self.prefix)
    }

    /// `<prefix>data.<dataset>`.
    pub fn data(&self, dataset: &str) -> String {
        format!("{}{DATA_PREFIX}{dataset}", self.prefix)
    }

    /// `<prefix>dlq.<dept>`.
    pub fn dlq(&self, department: &str) -> String {
        format!("{}{DLQ_PREFIX}{department}", self.prefix)
    }

    /// `<prefix>view.<subscription>`: a subscription's Kafka view.
    pub fn view(&self, subscription: &str) -> String {
        format!("{}view.{subscription}", self.prefix)
    }

    /// `<prefix>dlq.sub.<subscription>`: what a subscription could not deliver.
    pub fn subscription_dlq(&self, subscription: &str) -> String {
        format!("{}dlq.sub.{subscription}", self.prefix)
    }

    /// `<prefix>_govbus.audit`: the delivery ledger.
    pub fn audit(&self) -> String {
        format!("{}_govbus.audit", self.prefix)
    }

    /// `<prefix>_govbus.idempotency`: the gateway's kept answers per
    /// idempotency key (compacted; key = hash of department and key).
    pub fn idempotency(&self) -> String {
        format!("{}_govbus.idempotency", self.prefix)
    }

    /// The department an ingest topic belongs to.
    pub fn department_of_ingest<'t>(&self, topic: &'t str) -> Option<&'t str> {
        topic
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(INGEST_PREFIX)
            .filter(|d| !d.is_empty())
    }

    /// The regex subscription for every ingest topic, including ones created
    /// later (librdkafka treats a leading `^` as a regex).
    pub fn ingest_pattern(&self) -> String {
        let mut p = String::from("^");
        for ch in self.prefix.chars() {
            if !ch.is_ascii_alphanumeric() && ch != '_' {
                p.push('\\');
            }
            p.push(ch);
        }
        p.push_str("ingest\\..+");
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let t = Topics::default();
        assert_eq!(t.ingest("hrss"), "ingest.hrss");
        assert_eq!(t.data("hrss.pension_payment"), "data.hrss.pension_payment");
        assert_eq!(t.dlq("hrss"), "dlq.hrss");
        assert_eq!(t.view("s"), "view.s");
        assert_eq!(t.subscription_dlq("s"), "dlq.sub.s");
        assert_eq!(t.audit(), "_govbus.audit");
        assert_eq!(t.department_of_ingest("ingest.hrss"), Some("hrss"));
        assert_eq!(t.department_of_ingest("ingest."), None);
        assert_eq!(t.department_of_ingest("data.x"), None);
        assert_eq!(t.ingest_pattern(), "^ingest\\..+");
        let s = Topics::new("t-1.");
        assert_eq!(s.ingest("hrss"), "t-1.ingest.hrss");
        assert_eq!(s.department_of_ingest("t-1.ingest.hrss"), Some("hrss"));
        assert_eq!(s.department_of_ingest("ingest.hrss"), None);
        assert_eq!(s.ingest_pattern(), "^t\\-1\\.ingest\\..+");
    }
}
