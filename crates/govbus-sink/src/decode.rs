//! Canonical values (Confluent-framed Avro) to JSON, in the same conventions
//! the gateway accepts: dates `YYYY-MM-DD`, timestamps RFC 3339, decimals as
//! exact strings, enums as symbols, `["null", T]` as `null` or a plain `T`.
//! What a subscriber receives could be published again unchanged.
//!
//! The hot path is [`govbus_validate::JsonDecoder`]: the validator's
//! compiled program and checked byte walker, straight to JSON, compiled once
//! per schema version per catalog per thread. The generic decoder
//! ([`to_json_generic`], apache-avro's `Value` tree converted to JSON) stays
//! as the fallback for what the walker does not read (`big-decimal`, a
//! `uuid` on bytes or fixed) and as the oracle the fast one is tested and
//! benchmarked against.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Weak};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::Schema;
use govbus_catalog::{time, Catalog, Decimal, SchemaId};
use govbus_validate::JsonDecoder;
use serde_json::{Map, Value as Json};

/// Why a canonical value could not be decoded. Never holds a value.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than the 5-byte Confluent header or a wrong magic byte.
    #[error("not a Confluent-framed value ({0} bytes)")]
    Framing(usize),
    /// The schema id is not in the catalog.
    #[error("schema id {0} is not in the catalog")]
    UnknownSchema(SchemaId),
    /// The datum does not match its schema.
    #[error("Avro datum does not decode under schema id {0}")]
    Datum(SchemaId),
    /// `ce_sourceversion` is not an integer from 0 to 2^63-1 (the router
    /// writes none such; a record written to the topic some other way can).
    #[error("ce_sourceversion is not an integer from 0 to 9223372036854775807")]
    SourceVersion,
    /// `ce_op` is not one the router writes (a record written to the topic
    /// some other way can carry anything, line breaks included).
    #[error("ce_op is not create, update, delete or snapshot")]
    Op,
}

/// The schema id of a framed value.
pub fn schema_id(framed: &[u8]) -> Result<SchemaId, DecodeError> {
    match framed {
        [0, a, b, c, d, ..] => Ok(SchemaId(u32::from_be_bytes([*a, *b, *c, *d]))),
        _ => Err(DecodeError::Framing(framed.len())),
    }
}

/// Decodes a framed canonical value into a JSON object.
pub fn to_json(catalog: &Arc<Catalog>, framed: &[u8]) -> Result<Map<String, Json>, DecodeError> {
    let id = schema_id(framed)?;
    match compiled(catalog, id)? {
        Some(decoder) => decoder
            .to_json(&framed[5..])
            .map_err(|_| DecodeError::Datum(id)),
        None => to_json_generic(catalog, framed),
    }
}

/// [`to_json`] keeping only the top-level fields `keep` names (the others
/// are checked, not built): for a caller that needs a few fields of a wide
/// record. A value decodes here exactly when it decodes with [`to_json`].
pub fn to_json_only(
    catalog: &Arc<Catalog>,
    framed: &[u8],
    keep: &dyn Fn(&str) -> bool,
) -> Result<Map<String, Json>, DecodeError> {
    let id = schema_id(framed)?;
    match compiled(catalog, id)? {
        Some(decoder) => decoder
            .to_json_only(&framed[5..], keep)
            .map_err(|_| DecodeError::Datum(id)),
        None => to_json_generic(catalog, framed).map(|mut m| {
            m.retain(|k, _| keep(k));
            m
        }),
    }
}

/// Compiled decoders of the catalogs this thread decoded with lately; a
/// catalog is told apart by its allocation, which the `Weak` keeps from
/// being reused.
type Compiled = Vec<(Weak<Catalog>, HashMap<SchemaId, Option<Rc<JsonDecoder>>>)>;

thread_local! {
    static COMPILED: RefCell<Compiled> = const { RefCell::new(Vec::new()) };
}

/// Catalogs remembered per thread (a running bus has one at a time; a
/// catalog change makes a second for as long as a batch still holds the old).
const REMEMBERED: usize = 4;

/// The compiled decoder of schema `id` in `catalog`; `None` when the walker
/// cannot read that schema and the generic decoder must.
fn compiled(catalog: &Arc<Catalog>, id: SchemaId) -> Result<Option<Rc<JsonDecoder>>, DecodeError> {
    COMPILED.with(|cell| {
        let mut all = cell.borrow_mut();
        let at = match all
            .iter()
            .position(|(w, _)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(catalog)))
        {
            Some(i) => i,
            None => {
                all.retain(|(w, _)| w.strong_count() > 0);
                if all.len() >= REMEMBERED {
                    all.remove(0);
                }
                all.push((Arc::downgrade(catalog), HashMap::new()));
                all.len() - 1
            }
        };
        let decoders = &mut all[at].1;
        if let Some(d) = decoders.get(&id) {
            return Ok(d.clone());
        }
        let (_, sv) = catalog.schema(id).ok_or(DecodeError::UnknownSchema(id))?;
        let d = JsonDecoder::compile(&sv.schema).ok().map(Rc::new);
        decoders.insert(id, d.clone());
        Ok(d)
    })
}

/// [`to_json`] through apache-avro's generic `Value` tree: the fallback and
/// the reference.
pub fn to_json_generic(catalog: &Catalog, framed: &[u8]) -> Result<Map<String, Json>, DecodeError> {
    let id = schema_id(framed)?;
    let (_, sv) = catalog.schema(id).ok_or(DecodeError::UnknownSchema(id))?;
    datum_to_json_generic(&sv.schema, &framed[5..]).ok_or(DecodeError::Datum(id))
}

/// An unframed datum under `schema` through apache-avro's generic decoder;
/// `None` when it does not decode to a record. For tests and benchmarks.
#[doc(hidden)]
pub fn datum_to_json_generic(schema: &Schema, mut datum: &[u8]) -> Option<Map<String, Json>> {
    let reader = GenericDatumReader::builder(schema).build().ok()?;
    let value = reader.read_value(&mut datum).ok()?;
    match convert(schema, value) {
        Json::Object(o) => Some(o),
        _ => None,
    }
}

fn convert(schema: &Schema, value: Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(b),
        Value::Int(i) => Json::from(i),
        Value::Long(l) => Json::from(l),
        Value::Float(f) => {
            serde_json::Number::from_f64(f64::from(f)).map_or(Json::Null, Json::Number)
        }
        Value::Double(f) => serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number),
        Value::Bytes(b) | Value::Fixed(_, b) => {
            Json::String(b.iter().map(|&c| char::from(c)).collect())
        }
        Value::String(s) | Value::Enum(_, s) => Json::String(s),
        Value::Union(i, v) => {
            let inner = match schema {
                Schema::Union(u) => u.variants().get(i as usize).unwrap_or(schema),
                _ => schema,
            };
            convert(inner, *v)
        }
        Value::Array(items) => {
            let inner = match schema {
                Schema::Array(a) => &a.items,
                _ => schema,
            };
            Json::Array(items.into_iter().map(|v| convert(inner, v)).collect())
        }
        Value::Map(m) => {
            let inner = match schema {
                Schema::Map(m) => &m.types,
                _ => schema,
            };
            let mut entries: Vec<_> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Json::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, convert(inner, v)))
                    .collect(),
            )
        }
        Value::Record(fields) => {
            let schemas = match schema {
                Schema::Record(r) => Some(r),
                _ => None,
            };
            let mut out = Map::with_capacity(fields.len());
            for (name, v) in fields {
                let fs = schemas
                    .and_then(|r| r.lookup.get(&name).map(|&i| &r.fields[i].schema))
                    .unwrap_or(schema);
                out.insert(name, convert(fs, v));
            }
            Json::Object(out)
        }
        Value::Date(d) => Json::String(time::format_date(i64::from(d))),
        // Every digit the value has (micro- and nanoseconds were cut to
        // milliseconds); a local timestamp has no zone, so none is added.
        Value::TimestampMillis(ms) => Json::String(time::format_rfc3339_millis(ms)),
        Value::LocalTimestampMillis(ms) => {
            Json::String(time::format_rfc3339_fraction(ms, 1_000, false))
        }
        Value::TimestampMicros(us) => {
            Json::String(time::format_rfc3339_fraction(us, 1_000_000, true))
        }
        Value::LocalTimestampMicros(us) => {
            Json::String(time::format_rfc3339_fraction(us, 1_000_000, false))
        }
        Value::TimestampNanos(ns) => {
            Json::String(time::format_rfc3339_fraction(ns, 1_000_000_000, true))
        }
        Value::LocalTimestampNanos(ns) => {
            Json::String(time::format_rfc3339_fraction(ns, 1_000_000_000, false))
        }
        Value::TimeMillis(t) => Json::from(t),
        Value::TimeMicros(t) => Json::from(t),
        Value::Decimal(d) => {
            let scale = match schema {
                Schema::Decimal(ds) => ds.scale as u32,
                _ => 0,
            };
            let bytes: Vec<u8> = Vec::try_from(&d).unwrap_or_default();
            Decimal::from_be_bytes(&bytes, scale)
                .map_or(Json::Null, |d| Json::String(d.to_string()))
        }
        Value::BigDecimal(b) => Json::String(b.to_string()),
        Value::Uuid(u) => Json::String(u.to_string()),
        // Was null: a value that was published is delivered, never dropped.
        Value::Duration(d) => serde_json::json!({
            "months": u32::from(d.months()),
            "days": u32::from(d.days()),
            "millis": u32::from(d.millis()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timestamps_and_durations_keep_everything_they_hold() {
        let s = Schema::Null;
        let us = 1_700_000_000_123_456_i64;
        for (value, expected) in [
            (
                Value::TimestampMicros(us),
                json!("2023-11-14T22:13:20.123456Z"),
            ),
            (
                Value::LocalTimestampMicros(us),
                json!("2023-11-14T22:13:20.123456"),
            ),
            (
                Value::TimestampNanos(us * 1000 + 789),
                json!("2023-11-14T22:13:20.123456789Z"),
            ),
            (
                Value::TimestampMillis(1_700_000_000_123),
                json!("2023-11-14T22:13:20.123Z"),
            ),
            (
                Value::Duration(apache_avro::Duration::new(
                    apache_avro::Months::new(1),
                    apache_avro::Days::new(2),
                    apache_avro::Millis::new(3),
                )),
                json!({"months": 1, "days": 2, "millis": 3}),
            ),
        ] {
            assert_eq!(convert(&s, value), expected);
        }
    }
}
