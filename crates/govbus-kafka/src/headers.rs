//! Header names and helpers.
//!
//! Canonical records carry the CloudEvents Kafka binary binding: `ce_specversion`
//! (`1.0`), `ce_id`, `ce_source` (`/departments/<dept>`), `ce_type` (the
//! dataset), `ce_subject` (the record key), `ce_time` (RFC 3339),
//! `content-type`, and the extensions `ce_op`, `ce_sourceversion`,
//! `ce_schemaid`; W3C `traceparent` is carried through.
//!
//! Dead letters carry the original key, value and headers plus the fixed set
//! below, modelled on Kafka Connect's `__connect.errors.*`. None of them ever
//! holds a value from the record.

use rdkafka::message::{Header, Headers, OwnedHeaders};

/// `1.0`.
pub const CE_SPECVERSION: &str = "ce_specversion";
/// Event id; stable across retries and replays.
pub const CE_ID: &str = "ce_id";
/// `/departments/<dept>`.
pub const CE_SOURCE: &str = "ce_source";
/// The dataset, `<owner>.<name>`.
pub const CE_TYPE: &str = "ce_type";
/// The record key.
pub const CE_SUBJECT: &str = "ce_subject";
/// When the change happened at the source (RFC 3339).
pub const CE_TIME: &str = "ce_time";
/// `create`, `update`, `delete` or `snapshot`.
pub const CE_OP: &str = "ce_op";
/// Per-key monotonically increasing version at the source.
pub const CE_SOURCEVERSION: &str = "ce_sourceversion";
/// The Confluent schema id of the value.
pub const CE_SCHEMAID: &str = "ce_schemaid";
/// Content type of the value.
pub const CONTENT_TYPE: &str = "content-type";
/// W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Content type of canonical values.
pub const AVRO_CONTENT_TYPE: &str = "application/avro";

/// Prefix of every dead-letter header; input headers with it are dropped.
pub const ERROR_PREFIX: &str = "govbus.error.";
/// Reason code (`govbus validate`'s bounded list).
pub const ERROR_REASON: &str = "govbus.error.reason";
/// Field path the reason concerns, when there is one.
pub const ERROR_FIELD: &str = "govbus.error.field";
/// `gate`, `decode` or `rules`.
pub const ERROR_STAGE: &str = "govbus.error.stage";
/// Human-readable detail (bounds, lengths, positions; never a value).
pub const ERROR_DETAIL: &str = "govbus.error.detail";
/// The dataset, when it was identified.
pub const ERROR_DATASET: &str = "govbus.error.dataset";
/// Original topic.
pub const ERROR_TOPIC: &str = "govbus.error.topic";
/// Original partition.
pub const ERROR_PARTITION: &str = "govbus.error.partition";
/// Original offset.
pub const ERROR_OFFSET: &str = "govbus.error.offset";
/// How many input headers were not copied (when there were too many).
pub const ERROR_HEADERS_DROPPED: &str = "govbus.error.headers_dropped";
/// Set on a record re-published by `govbus dlq replay`: `dlq.<dept>/<partition>/<offset>`.
pub const REPLAY_OF: &str = "govbus.replay.of";

/// Builds an `OwnedHeaders` from name/value pairs.
pub fn owned<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> OwnedHeaders {
    pairs
        .into_iter()
        .fold(OwnedHeaders::new(), |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(value),
            })
        })
}

/// The first header named `name`, as UTF-8.
pub fn get_str<'a, H: Headers>(headers: &'a H, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Whether `tp` is a well-formed W3C traceparent (version 00).
pub fn is_traceparent(tp: &[u8]) -> bool {
    tp.len() == 55
        && tp.starts_with(b"00-")
        && tp[35] == b'-'
        && tp[52] == b'-'
        && tp.iter().enumerate().all(|(i, b)| {
            matches!(i, 2 | 35 | 52) || b.is_ascii_digit() || (b'a'..=b'f').contains(b)
        })
        && tp[3..35].iter().any(|b| *b != b'0')
        && tp[36..52].iter().any(|b| *b != b'0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent() {
        assert!(is_traceparent(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!is_traceparent(
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert!(!is_traceparent(
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
        ));
        assert!(!is_traceparent(
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!is_traceparent(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"
        ));
    }
}
