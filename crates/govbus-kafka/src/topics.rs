//! Topic naming (DESIGN.md §3).

/// Prefix of the topics departments publish to.
pub const INGEST_PREFIX: &str = "ingest.";
/// Prefix of the canonical, validated topics.
pub const DATA_PREFIX: &str = "data.";
/// Prefix of the per-department dead-letter topics.
pub const DLQ_PREFIX: &str = "dlq.";
/// The regex subscription that picks up every ingest topic, including ones
/// created later (librdkafka treats a leading `^` as a regex).
pub const INGEST_PATTERN: &str = "^ingest\\..+";

/// `ingest.<dept>`.
pub fn ingest(department: &str) -> String {
    format!("{INGEST_PREFIX}{department}")
}

/// `data.<dataset>`.
pub fn data(dataset: &str) -> String {
    format!("{DATA_PREFIX}{dataset}")
}

/// `dlq.<dept>`.
pub fn dlq(department: &str) -> String {
    format!("{DLQ_PREFIX}{department}")
}

/// The department an ingest topic belongs to.
pub fn department_of_ingest(topic: &str) -> Option<&str> {
    topic.strip_prefix(INGEST_PREFIX).filter(|d| !d.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(ingest("hrss"), "ingest.hrss");
        assert_eq!(data("hrss.pension_payment"), "data.hrss.pension_payment");
        assert_eq!(dlq("hrss"), "dlq.hrss");
        assert_eq!(department_of_ingest("ingest.hrss"), Some("hrss"));
        assert_eq!(department_of_ingest("ingest."), None);
        assert_eq!(department_of_ingest("data.x"), None);
    }
}
