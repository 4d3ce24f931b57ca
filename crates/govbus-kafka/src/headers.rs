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

use crate::limits::{record_bytes, MAX_RECORD_BYTES};

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
/// The subscription whose delivery failed (a sink's dead letters).
pub const ERROR_SUBSCRIPTION: &str = "govbus.error.subscription";
/// Set when the record itself was too large to copy into its dead letter:
/// its size in bytes. The dead letter then holds no key, value or input
/// headers; the original is at `govbus.error.topic/partition/offset`.
pub const ERROR_RECORD_OMITTED: &str = "govbus.error.record_omitted";

/// What a dead letter says about itself: the whole `govbus.error.*` set,
/// written only by [`dead_letter`], for the router's and the sinks' dead
/// letters alike. Codes, names, positions and bounds; never a value.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorHeaders<'a> {
    /// A reason code.
    pub reason: &'a str,
    /// `gate`, `decode`, `rules` (router) or `delivery` (sinks).
    pub stage: &'a str,
    /// Bounds, lengths, positions; never a value.
    pub detail: &'a str,
    /// Where the record was read.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The field path the reason concerns.
    pub field: Option<&'a str>,
    /// The dataset, when identified.
    pub dataset: Option<&'a str>,
    /// The subscription, for a sink's dead letter.
    pub subscription: Option<&'a str>,
    /// Input headers not copied (there were too many).
    pub headers_dropped: usize,
    /// The record's size, when it was too large to copy (see
    /// [`ERROR_RECORD_OMITTED`]; the caller then leaves out key, value and
    /// input headers).
    pub record_omitted: Option<usize>,
}

/// A dead letter's headers: the record's own headers (never an input
/// `govbus.error.*` one — forged —, nor one named in `drop`), then the
/// error set.
pub fn dead_letter<'h>(
    original: impl IntoIterator<Item = (&'h str, Option<&'h [u8]>)>,
    drop: &[&str],
    e: &ErrorHeaders<'_>,
) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new();
    for (key, value) in original {
        if e.record_omitted.is_none() && !key.starts_with(ERROR_PREFIX) && !drop.contains(&key) {
            headers = headers.insert(Header { key, value });
        }
    }
    let (partition, offset) = (e.partition.to_string(), e.offset.to_string());
    let dropped = e.headers_dropped.to_string();
    let omitted = e.record_omitted.map(|n| n.to_string());
    let errors = [
        (ERROR_REASON, Some(e.reason)),
        (ERROR_STAGE, Some(e.stage)),
        (ERROR_DETAIL, Some(e.detail)),
        (ERROR_TOPIC, Some(e.topic)),
        (ERROR_PARTITION, Some(partition.as_str())),
        (ERROR_OFFSET, Some(offset.as_str())),
        (ERROR_FIELD, e.field),
        (ERROR_DATASET, e.dataset),
        (ERROR_SUBSCRIPTION, e.subscription),
        (
            ERROR_HEADERS_DROPPED,
            (e.headers_dropped > 0).then_some(dropped.as_str()),
        ),
        (ERROR_RECORD_OMITTED, omitted.as_deref()),
    ];
    for (key, value) in errors {
        if let Some(v) = value {
            headers = headers.insert(Header {
                key,
                value: Some(v.as_bytes()),
            });
        }
    }
    headers
}
/// A dead letter that fits in [`MAX_RECORD_BYTES`](crate::limits::MAX_RECORD_BYTES): the record's key, value
/// and own headers with the error set ([`dead_letter`]) — or, when that
/// would be too large to write, the error set alone with
/// [`ERROR_RECORD_OMITTED`] (the original stays where the error headers
/// say). A record too large to copy must not stall the dead-letter topic:
/// librdkafka refuses it on every attempt.
pub fn fitted_dead_letter<'h, 'r>(
    key: Option<&'r [u8]>,
    value: Option<&'r [u8]>,
    original: impl IntoIterator<Item = (&'h str, Option<&'h [u8]>)>,
    drop: &[&str],
    e: &ErrorHeaders<'_>,
) -> (Option<&'r [u8]>, Option<&'r [u8]>, OwnedHeaders) {
    let headers = dead_letter(original, drop, e);
    let size = record_bytes(key, value, Some(&headers));
    if size <= MAX_RECORD_BYTES {
        return (key, value, headers);
    }
    let omitted = ErrorHeaders {
        record_omitted: Some(size),
        ..*e
    };
    (None, None, dead_letter(std::iter::empty(), drop, &omitted))
}

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
    fn a_dead_letter_keeps_the_record_headers_and_writes_the_error_set_once() {
        let original = [
            ("ce_id", Some(b"e-1".as_slice())),
            ("govbus.error.reason", Some(b"forged".as_slice())),
            ("ce_subject", Some(b"11010519491231002X".as_slice())),
        ];
        let e = ErrorHeaders {
            reason: "retries_exhausted",
            stage: "delivery",
            detail: "8 attempts",
            topic: "data.x",
            partition: 2,
            offset: 41,
            subscription: Some("housing"),
            ..ErrorHeaders::default()
        };
        let h = dead_letter(original, &[CE_SUBJECT], &e);
        let all: Vec<(String, String)> = h
            .iter()
            .map(|x| {
                (
                    x.key.to_owned(),
                    String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                )
            })
            .collect();
        assert_eq!(get_str(&h, CE_ID), Some("e-1"));
        assert_eq!(get_str(&h, ERROR_REASON), Some("retries_exhausted"));
        assert_eq!(get_str(&h, ERROR_OFFSET), Some("41"));
        assert_eq!(get_str(&h, ERROR_SUBSCRIPTION), Some("housing"));
        assert!(
            !all.iter().any(|(k, v)| k == CE_SUBJECT || v == "forged"),
            "{all:?}"
        );
        assert!(get_str(&h, ERROR_FIELD).is_none() && get_str(&h, ERROR_HEADERS_DROPPED).is_none());
        assert!(all.iter().all(|(k, _)| !k.starts_with(ERROR_PREFIX)
            || [
                ERROR_REASON,
                ERROR_STAGE,
                ERROR_DETAIL,
                ERROR_TOPIC,
                ERROR_PARTITION,
                ERROR_OFFSET,
                ERROR_SUBSCRIPTION
            ]
            .contains(&k.as_str())));
    }

    #[test]
    fn a_dead_letter_too_large_to_write_keeps_only_the_error_set() {
        let e = ErrorHeaders {
            reason: "undecodable",
            stage: "delivery",
            detail: "bounded",
            topic: "data.x",
            partition: 1,
            offset: 7,
            ..ErrorHeaders::default()
        };
        let own = [(CE_ID, Some(b"e-1".as_slice()))];
        let small = vec![b'v'; 10];
        let (k, v, hs) = fitted_dead_letter(Some(b"k"), Some(&small), own, &[], &e);
        assert_eq!((k, v), (Some(b"k".as_slice()), Some(small.as_slice())));
        assert_eq!(get_str(&hs, CE_ID), Some("e-1"));
        assert!(get_str(&hs, ERROR_RECORD_OMITTED).is_none());
        // Fits alone, not with the error set.
        let big = vec![b'v'; MAX_RECORD_BYTES - 20];
        let (k, v, hs) = fitted_dead_letter(Some(b"k"), Some(&big), own, &[], &e);
        assert!(k.is_none() && v.is_none());
        assert!(get_str(&hs, CE_ID).is_none(), "no input header either");
        let n: usize = get_str(&hs, ERROR_RECORD_OMITTED).unwrap().parse().unwrap();
        assert!(n > MAX_RECORD_BYTES, "{n}");
        assert_eq!(get_str(&hs, ERROR_OFFSET), Some("7"));
        assert!(record_bytes(None, None, Some(&hs)) < 1024);
    }

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
