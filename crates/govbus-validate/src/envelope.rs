//! The change-event envelope: `op`, `id`, `time`, `sourceversion` and a
//! structured CloudEvent's attributes, checked the same way wherever a record
//! enters the bus — the router (Kafka headers, structured-mode CloudEvents)
//! and the gateway (CloudEvents batches) call these functions, so what the
//! gateway accepts the router routes.

use std::borrow::Cow;

use govbus_catalog::time;
use serde_json::{Map, Value as Json};

use crate::{Reason, Rejection};

/// Longest accepted event id (`ce_id`, a CloudEvent's `id`).
pub const MAX_ID_LEN: usize = 256;

/// The change operation (`ce_op`, a CloudEvent's `op`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A new record.
    Create,
    /// A changed record (full after-image).
    Update,
    /// A removed record: routed as a tombstone.
    Delete,
    /// A record read by an initial snapshot.
    Snapshot,
}

impl Op {
    /// The canonical names and Debezium's one-letter codes.
    pub fn parse(s: &str) -> Option<Op> {
        match s {
            "create" | "c" => Some(Op::Create),
            "update" | "u" => Some(Op::Update),
            "delete" | "d" => Some(Op::Delete),
            "snapshot" | "r" => Some(Op::Snapshot),
            _ => None,
        }
    }

    /// The canonical name.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Snapshot => "snapshot",
        }
    }
}

/// An `envelope_invalid` rejection for `field`.
pub fn error(field: &str, detail: &'static str) -> Rejection {
    Rejection {
        reason: Reason::EnvelopeInvalid,
        field: Some(field.to_owned()),
        detail: Cow::Borrowed(detail),
    }
}

/// An operation name, or why not.
pub fn op(s: &str, field: &str) -> Result<Op, Rejection> {
    Op::parse(s).ok_or_else(|| error(field, "must be create, update, delete or snapshot"))
}

/// An event id: 1–256 visible ASCII characters.
pub fn id(s: &str, field: &str) -> Result<(), Rejection> {
    if s.is_empty() || s.len() > MAX_ID_LEN || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(error(field, "must be 1-256 visible ASCII characters"));
    }
    Ok(())
}

/// An RFC 3339 timestamp, in milliseconds since the epoch.
pub fn time_ms(s: &str, field: &str) -> Result<i64, Rejection> {
    time::parse_rfc3339_micros(s)
        .map(|us| us.div_euclid(1000))
        .ok_or_else(|| error(field, "is not an RFC 3339 timestamp"))
}

/// The largest source version: a version is a PostgreSQL `bigint` at the
/// sinks and a signed 64-bit integer in most department systems.
pub const MAX_SOURCE_VERSION: u64 = i64::MAX as u64;

const SOURCE_VERSION_RULE: &str = "must be an integer from 0 to 9223372036854775807";

/// A source version: an integer from 0 to [`MAX_SOURCE_VERSION`] (as text).
/// A larger one is refused, not accepted: no PostgreSQL sink could store it,
/// and it would stop the dataset's delivery there on every attempt.
pub fn source_version(s: &str, field: &str) -> Result<u64, Rejection> {
    s.parse::<u64>()
        .ok()
        .filter(|v| *v <= MAX_SOURCE_VERSION)
        .ok_or_else(|| error(field, SOURCE_VERSION_RULE))
}

/// The attributes of a structured-mode CloudEvent (or one event of a
/// CloudEvents batch) that govbus reads, each checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    /// `type`: the dataset.
    pub dataset: Option<String>,
    /// `id`.
    pub id: Option<String>,
    /// `time` as given (checked), and in ms.
    pub time: Option<(String, i64)>,
    /// `op`.
    pub op: Option<Op>,
    /// `sourceversion` (a number or a string of digits).
    pub source_version: Option<u64>,
}

/// Reads and checks a CloudEvent's attributes. `specversion` must be `"1.0"`
/// when `require_specversion` (structured mode) or when present (a batch);
/// every attribute govbus uses must be of the right type — a non-string `id`
/// is an error, not an absent id.
pub fn attributes(
    ce: &Map<String, Json>,
    require_specversion: bool,
) -> Result<Attributes, Rejection> {
    match ce.get("specversion") {
        Some(Json::String(v)) if v == "1.0" => {}
        None if !require_specversion => {}
        _ => return Err(error("specversion", "must be \"1.0\"")),
    }
    let text = |k: &'static str, detail: &'static str| -> Result<Option<&str>, Rejection> {
        match ce.get(k) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(error(k, detail)),
        }
    };
    let mut a = Attributes {
        dataset: text("type", "must be a string (the dataset)")?.map(str::to_owned),
        ..Attributes::default()
    };
    if let Some(s) = text("id", "must be 1-256 visible ASCII characters")? {
        id(s, "id")?;
        a.id = Some(s.to_owned());
    }
    if let Some(s) = text("time", "is not an RFC 3339 timestamp")? {
        a.time = Some((s.to_owned(), time_ms(s, "time")?));
    }
    if let Some(s) = text("op", "must be create, update, delete or snapshot")? {
        a.op = Some(op(s, "op")?);
    }
    a.source_version = match ce.get("sourceversion") {
        None | Some(Json::Null) => None,
        Some(Json::Number(n)) => Some(
            n.as_u64()
                .filter(|v| *v <= MAX_SOURCE_VERSION)
                .ok_or_else(|| error("sourceversion", SOURCE_VERSION_RULE))?,
        ),
        Some(Json::String(s)) => Some(source_version(s, "sourceversion")?),
        Some(_) => return Err(error("sourceversion", SOURCE_VERSION_RULE)),
    };
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(event: Json, expected: Result<(), &str>) {
        let Json::Object(m) = event else {
            unreachable!()
        };
        let got = attributes(&m, false).map(|_| ()).map_err(|r| {
            assert_eq!(r.reason, Reason::EnvelopeInvalid);
            r.field.unwrap_or_default()
        });
        assert_eq!(got, expected.map_err(str::to_owned), "{m:?}");
    }

    #[test]
    fn every_attribute_is_checked_the_same_way() {
        check(
            json!({"id": "a-1", "time": "2024-01-05T08:00:00+08:00", "op": "update", "sourceversion": 7}),
            Ok(()),
        );
        check(json!({"sourceversion": "7", "op": "d"}), Ok(()));
        check(json!({"id": "a b"}), Err("id"));
        check(json!({"id": ""}), Err("id"));
        check(json!({"id": "x".repeat(257)}), Err("id"));
        check(json!({"id": "身份"}), Err("id"));
        check(json!({"id": 7}), Err("id"));
        check(json!({"time": "yesterday"}), Err("time"));
        check(json!({"time": 1700000000}), Err("time"));
        check(json!({"op": "frobnicate"}), Err("op"));
        check(json!({"sourceversion": -1}), Err("sourceversion"));
        check(json!({"sourceversion": 1.5}), Err("sourceversion"));
        check(json!({"sourceversion": "v1"}), Err("sourceversion"));
        // Above 2^63-1 no PostgreSQL sink can store it (a bigint): refused.
        check(json!({"sourceversion": 9223372036854775807u64}), Ok(()));
        check(json!({"sourceversion": "9223372036854775807"}), Ok(()));
        check(
            json!({"sourceversion": 9223372036854775808u64}),
            Err("sourceversion"),
        );
        check(json!({"sourceversion": u64::MAX}), Err("sourceversion"));
        check(
            json!({"sourceversion": "9223372036854775808"}),
            Err("sourceversion"),
        );
        assert!(source_version("18446744073709551615", "ce_sourceversion").is_err());
        check(json!({"specversion": "0.3"}), Err("specversion"));
        check(json!({"type": 3}), Err("type"));
    }

    #[test]
    fn structured_mode_requires_specversion() {
        let Json::Object(m) = json!({"id": "a"}) else {
            unreachable!()
        };
        assert!(attributes(&m, true).is_err());
        assert!(attributes(&m, false).is_ok());
    }
}
