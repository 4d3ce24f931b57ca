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

use rdkafka::message::{BorrowedHeaders, Header, Headers, OwnedHeaders};

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
/// Set when the record's value was too large to copy into its dead letter:
/// the value's size in bytes. The original is at
/// `govbus.error.topic/partition/offset` for as long as that topic keeps it.
pub const ERROR_RECORD_OMITTED: &str = "govbus.error.record_omitted";
/// Set when the record's key was too large to copy into its dead letter
/// (with the value and headers left out as well): the key's size in bytes.
pub const ERROR_KEY_OMITTED: &str = "govbus.error.key_omitted";

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
    /// The value's size, when it was left out (see [`ERROR_RECORD_OMITTED`]).
    pub record_omitted: Option<usize>,
    /// The key's size, when it was left out (see [`ERROR_KEY_OMITTED`]).
    pub key_omitted: Option<usize>,
}

/// The longest `govbus.error.detail` or `govbus.error.field` written: a
/// field path is built from the input's own names (a JSON object's keys), so
/// without a bound the error set alone could exceed what a producer writes.
pub const MAX_ERROR_TEXT: usize = 1024;

/// `text` cut at a character boundary to [`MAX_ERROR_TEXT`] bytes, saying so.
fn bounded(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= MAX_ERROR_TEXT {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = MAX_ERROR_TEXT - 32;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}… ({} bytes)", &text[..end], text.len()))
}

/// One header of a consumed record, read without trusting its name.
pub type RawHeader<'a> = (&'a [u8], Option<&'a [u8]>);

/// One header whose name is UTF-8 text.
pub type NamedHeader<'a> = (&'a str, Option<&'a [u8]>);

/// Every header of a consumed record in order, its name as bytes.
///
/// rdkafka's own [`Headers::iter`] (and `get`, `try_get`) unwraps the name
/// as UTF-8 and so panics on a record whose header name is not: a department
/// writing to its ingest topic with any Kafka client can send one. Nothing in
/// govbus reads a consumed record's headers any other way than through this
/// function or [`named`].
pub fn raw(headers: &impl Readable) -> impl Iterator<Item = RawHeader<'_>> {
    let headers = headers.borrowed();
    (0..headers.count()).map_while(move |i| header_at(headers, i))
}

/// Headers [`raw`] reads: a consumed record's, or a copy of them.
pub trait Readable {
    /// The native header list.
    fn borrowed(&self) -> &BorrowedHeaders;
}

impl Readable for BorrowedHeaders {
    fn borrowed(&self) -> &BorrowedHeaders {
        self
    }
}

impl Readable for OwnedHeaders {
    fn borrowed(&self) -> &BorrowedHeaders {
        self.as_borrowed()
    }
}

/// The headers of a consumed record whose names are UTF-8 text, in order,
/// and how many were left out because their names are not.
pub fn named(headers: &impl Readable) -> (Vec<NamedHeader<'_>>, usize) {
    let mut unreadable = 0;
    let named = raw(headers)
        .filter_map(|(name, value)| match std::str::from_utf8(name) {
            Ok(name) => Some((name, value)),
            Err(_) => {
                unreadable += 1;
                None
            }
        })
        .collect();
    (named, unreadable)
}

/// The header at `idx`: what [`Headers::try_get`] does, without its unwrap.
#[allow(unsafe_code)]
fn header_at(headers: &BorrowedHeaders, idx: usize) -> Option<RawHeader<'_>> {
    use rdkafka::bindings as rd;
    let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0usize);
    // SAFETY: a `&BorrowedHeaders` is rdkafka's zero-sized view of a native
    // `rd_kafka_headers_t`, its address the native pointer (rdkafka's own
    // `as_native_ptr` is this cast). `rd_kafka_header_get_all` reads the
    // header list, which lives as long as `headers`, and returns a
    // NUL-terminated name and a value of `size` bytes that live as long.
    unsafe {
        let list = headers as *const BorrowedHeaders as *const rd::rd_kafka_headers_t;
        let err = rd::rd_kafka_header_get_all(list, idx, &mut name, &mut value, &mut size);
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            return None;
        }
        let name = std::ffi::CStr::from_ptr(name).to_bytes();
        let value =
            (!value.is_null()).then(|| std::slice::from_raw_parts(value.cast::<u8>(), size));
        Some((name, value))
    }
}

/// A dead letter's headers: the record's own headers (never an input
/// `govbus.error.*` one — forged —, nor one named in `drop`), then the
/// error set (detail and field bounded to [`MAX_ERROR_TEXT`]).
pub fn dead_letter<'h>(
    original: impl IntoIterator<Item = (&'h str, Option<&'h [u8]>)>,
    drop: &[&str],
    e: &ErrorHeaders<'_>,
) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new();
    for (key, value) in original {
        if !key.starts_with(ERROR_PREFIX) && !drop.contains(&key) {
            headers = headers.insert(Header { key, value });
        }
    }
    let (partition, offset) = (e.partition.to_string(), e.offset.to_string());
    let dropped = e.headers_dropped.to_string();
    let omitted = e.record_omitted.map(|n| n.to_string());
    let key_omitted = e.key_omitted.map(|n| n.to_string());
    let (detail, field) = (bounded(e.detail), e.field.map(bounded));
    let errors = [
        (ERROR_REASON, Some(e.reason)),
        (ERROR_STAGE, Some(e.stage)),
        (ERROR_DETAIL, Some(detail.as_ref())),
        (ERROR_TOPIC, Some(e.topic)),
        (ERROR_PARTITION, Some(partition.as_str())),
        (ERROR_OFFSET, Some(offset.as_str())),
        (ERROR_FIELD, field.as_deref()),
        (ERROR_DATASET, e.dataset),
        (ERROR_SUBSCRIPTION, e.subscription),
        (
            ERROR_HEADERS_DROPPED,
            (e.headers_dropped > 0).then_some(dropped.as_str()),
        ),
        (ERROR_RECORD_OMITTED, omitted.as_deref()),
        (ERROR_KEY_OMITTED, key_omitted.as_deref()),
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

/// A dead letter that fits in [`MAX_RECORD_BYTES`]: the record's key, value
/// and own headers with the error set ([`dead_letter`]) — or, when that is
/// too large, the first of these that fits: without the record's headers
/// ([`ERROR_HEADERS_DROPPED`] counts them); without the value
/// ([`ERROR_RECORD_OMITTED`] gives its size), with and then without the
/// headers; the error set alone ([`ERROR_KEY_OMITTED`] gives the key's size).
/// The error set is bounded, so the last form always fits. A dead letter too
/// large to write must not stall its topic: librdkafka refuses it on every
/// attempt.
pub fn fitted_dead_letter<'h, 'r>(
    key: Option<&'r [u8]>,
    value: Option<&'r [u8]>,
    original: impl IntoIterator<Item = (&'h str, Option<&'h [u8]>)>,
    drop: &[&str],
    e: &ErrorHeaders<'_>,
) -> Fitted<'r> {
    let original: Vec<(&str, Option<&[u8]>)> = original.into_iter().collect();
    let own = original
        .iter()
        .filter(|(k, _)| !k.starts_with(ERROR_PREFIX) && !drop.contains(k))
        .count();
    // (keep the value, keep the record's headers); the key goes last.
    let mut forms = vec![(true, true)];
    if own > 0 {
        forms.push((true, false));
    }
    if value.is_some() {
        forms.push((false, true));
        if own > 0 {
            forms.push((false, false));
        }
    }
    for (i, (keep_value, keep_headers)) in forms.into_iter().enumerate() {
        let form = ErrorHeaders {
            record_omitted: (!keep_value).then(|| value.map_or(0, <[u8]>::len)),
            headers_dropped: e.headers_dropped + if keep_headers { 0 } else { own },
            ..*e
        };
        let headers = if keep_headers {
            dead_letter(original.iter().copied(), drop, &form)
        } else {
            dead_letter(std::iter::empty(), drop, &form)
        };
        let value = if keep_value { value } else { None };
        if record_bytes(key, value, Some(&headers)) <= MAX_RECORD_BYTES {
            return Fitted {
                key,
                value,
                headers,
                trimmed: i > 0,
            };
        }
    }
    let error_set_only = ErrorHeaders {
        record_omitted: value.map(<[u8]>::len),
        key_omitted: key.map(<[u8]>::len),
        headers_dropped: e.headers_dropped + own,
        ..*e
    };
    Fitted {
        key: None,
        value: None,
        headers: dead_letter(std::iter::empty(), drop, &error_set_only),
        trimmed: true,
    }
}

/// A dead letter as [`fitted_dead_letter`] makes it.
#[derive(Debug)]
pub struct Fitted<'r> {
    /// The record's key, unless left out.
    pub key: Option<&'r [u8]>,
    /// The record's value, unless left out.
    pub value: Option<&'r [u8]>,
    /// The record's own headers (unless left out) and the error set.
    pub headers: OwnedHeaders,
    /// Whether anything of the record was left out to fit: the caller logs
    /// and counts it (the original is then only where the error set says).
    pub trimmed: bool,
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
pub fn get_str<'a>(headers: &'a impl Readable, name: &str) -> Option<&'a str> {
    raw(headers)
        .find(|(key, _)| *key == name.as_bytes())
        .and_then(|(_, value)| value)
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
        let all: Vec<(String, String)> = raw(&h)
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v.unwrap_or_default()).into_owned(),
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
    fn a_dead_letter_too_large_to_write_leaves_out_the_headers_then_value_then_key() {
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
        let Fitted {
            key: k,
            value: v,
            headers: hs,
            ..
        } = fitted_dead_letter(Some(b"k"), Some(&small), own, &[], &e);
        assert_eq!((k, v), (Some(b"k".as_slice()), Some(small.as_slice())));
        assert_eq!(get_str(&hs, CE_ID), Some("e-1"));
        assert!(get_str(&hs, ERROR_RECORD_OMITTED).is_none());
        // Fits alone, not with the error set: the value is left out, the
        // key and the record's identity stay.
        let big = vec![b'v'; MAX_RECORD_BYTES - 60];
        let Fitted {
            key: k,
            value: v,
            headers: hs,
            ..
        } = fitted_dead_letter(Some(b"k"), Some(&big), own, &[], &e);
        assert_eq!((k, v), (Some(b"k".as_slice()), None));
        assert_eq!(get_str(&hs, CE_ID), Some("e-1"));
        assert_eq!(
            get_str(&hs, ERROR_RECORD_OMITTED),
            Some(big.len().to_string().as_str())
        );
        assert_eq!(get_str(&hs, ERROR_OFFSET), Some("7"));
        // A key too large as well: the error set alone, always small.
        let Fitted {
            key: k,
            value: v,
            headers: hs,
            ..
        } = fitted_dead_letter(Some(&big), Some(&big), own, &[], &e);
        assert!(k.is_none() && v.is_none());
        assert!(get_str(&hs, CE_ID).is_none());
        assert_eq!(get_str(&hs, ERROR_HEADERS_DROPPED), Some("1"));
        let len = big.len().to_string();
        assert_eq!(get_str(&hs, ERROR_KEY_OMITTED), Some(len.as_str()));
        assert_eq!(get_str(&hs, ERROR_RECORD_OMITTED), Some(len.as_str()));
        assert!(record_bytes(None, None, Some(&hs)) < 1024);
        // A huge header of the record's own: the headers go, key and value stay.
        let huge = [("x-huge", Some(big.as_slice()))];
        let Fitted {
            key: k,
            value: v,
            headers: hs,
            ..
        } = fitted_dead_letter(Some(b"k"), Some(&small), huge, &[], &e);
        assert_eq!((k, v), (Some(b"k".as_slice()), Some(small.as_slice())));
        assert_eq!(get_str(&hs, ERROR_HEADERS_DROPPED), Some("1"));
        assert!(get_str(&hs, ERROR_RECORD_OMITTED).is_none());
        // No value (a delete) and a key too large: said as such, no "0".
        assert!(!fitted_dead_letter(Some(b"k"), Some(&small), own, &[], &e).trimmed);
        assert!(fitted_dead_letter(Some(b"k"), Some(&small), huge, &[], &e).trimmed);
        assert!(fitted_dead_letter(Some(b"k"), Some(&big), own, &[], &e).trimmed);
        let Fitted {
            key: k,
            value: v,
            headers: hs,
            ..
        } = fitted_dead_letter(Some(&big), None, own, &[], &e);
        assert!(k.is_none() && v.is_none());
        assert!(get_str(&hs, ERROR_RECORD_OMITTED).is_none());
        assert_eq!(get_str(&hs, ERROR_KEY_OMITTED), Some(len.as_str()));
    }

    #[test]
    fn error_text_is_bounded_so_the_error_set_always_fits() {
        // A field path is built from the input's own JSON keys.
        let path = "a".repeat(999_887);
        let detail = "d".repeat(5_000);
        let e = ErrorHeaders {
            reason: "json_unknown_field",
            stage: "decode",
            detail: &detail,
            topic: "ingest.x",
            field: Some(&path),
            ..ErrorHeaders::default()
        };
        let Fitted {
            key: k,
            value: v,
            headers: hs,
            ..
        } = fitted_dead_letter(None, Some(b"{}"), [], &[], &e);
        assert_eq!((k, v), (None, Some(b"{}".as_slice())));
        let field = get_str(&hs, ERROR_FIELD).unwrap();
        assert!(field.len() <= MAX_ERROR_TEXT, "{}", field.len());
        assert!(field.ends_with("(999887 bytes)"), "{field}");
        assert!(get_str(&hs, ERROR_DETAIL).unwrap().len() <= MAX_ERROR_TEXT);
        assert!(record_bytes(None, None, Some(&hs)) < 3 * MAX_ERROR_TEXT);
        // Cut at a character boundary.
        let wide = "张".repeat(1_000);
        assert!(bounded(&wide).len() <= MAX_ERROR_TEXT);
    }

    #[test]
    fn a_header_name_that_is_not_utf8_is_read_as_bytes_not_a_panic() {
        let hs = OwnedHeaders::new().insert(Header {
            key: CE_ID,
            value: Some("e-1"),
        });
        let hs = govbus_testkit::headers::with_raw_name(hs, b"\xffname", b"v");
        let hs = hs.insert(Header {
            key: CE_TYPE,
            value: Some("a.b"),
        });
        let all: Vec<_> = raw(&hs).collect();
        assert_eq!(all.len(), 3);
        assert_eq!(all[1], (b"\xffname".as_slice(), Some(b"v".as_slice())));
        let (named, unreadable) = named(hs.as_borrowed());
        assert_eq!(unreadable, 1);
        assert_eq!(
            named.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            [CE_ID, CE_TYPE]
        );
        assert_eq!(get_str(&hs, CE_TYPE), Some("a.b"));
        assert_eq!(
            record_bytes(None, None, Some(&hs)),
            36 + (5 + 3 + 2) + (5 + 1 + 2) + (7 + 3 + 2)
        );
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
