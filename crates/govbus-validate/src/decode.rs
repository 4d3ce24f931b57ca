//! Canonical Avro straight to JSON, by the same compiled program and the
//! same checked byte walker the validator uses: no `apache_avro::Value` tree
//! in between. This is the delivery side's hot path (sinks, live
//! interfaces, the state builder's lookup index).
//!
//! The JSON follows the conventions the gateway accepts, so that what a
//! subscriber receives could be published again unchanged: dates
//! `YYYY-MM-DD`, timestamps RFC 3339 with every digit they hold (local
//! timestamps without a zone), decimals as exact strings, enums as symbols,
//! `["null", T]` as `null` or a plain `T`, bytes and fixed as one character
//! per byte, durations as `{months, days, millis}`.

use govbus_catalog::{time, Decimal};
use serde_json::{Map, Number, Value as Json};

use apache_avro::Schema;

use crate::program::{CompileError, Flavor, Node, NodeId, Program};
use crate::walk::Cursor;
use crate::{Limits, Reason};

/// One schema version compiled for decoding. Build once per schema
/// version; share across threads.
#[derive(Debug, Clone)]
pub struct JsonDecoder {
    program: Program,
    limits: Limits,
    /// Whether the walker and this decoder disagree on some node of the
    /// schema (a `uuid` string must parse here; a non-finite float is
    /// refused by the walker, read as `null` here): skipped fields are then
    /// decoded and dropped, so that a projection accepts exactly what a
    /// whole decode accepts.
    skip_decodes: bool,
}

impl JsonDecoder {
    /// Compiles `schema` (a record). Refuses the `big-decimal` logical type
    /// and a `uuid` on bytes or fixed, which this walker does not read;
    /// callers fall back to a generic decoder for such a schema.
    pub fn compile(schema: &Schema) -> Result<JsonDecoder, CompileError> {
        let program = Program::compile(schema)?;
        if program.flavors.contains(&Flavor::BigDecimal) {
            return Err(CompileError("big-decimal is not supported".into()));
        }
        if program.flavors.contains(&Flavor::BinaryUuid) {
            return Err(CompileError(
                "a uuid on bytes or fixed is not supported".into(),
            ));
        }
        if !matches!(program.nodes[program.root], Node::Record { .. }) {
            return Err(CompileError("the top-level schema is not a record".into()));
        }
        let skip_decodes = program.flavors.contains(&Flavor::Uuid)
            || program
                .nodes
                .iter()
                .any(|n| matches!(n, Node::Float | Node::Double));
        Ok(JsonDecoder {
            program,
            skip_decodes,
            // Canonical values passed the router's limits (the defaults:
            // they are not configurable); twice those, so nothing routed is
            // refused, while a hostile value still cannot make it build an
            // unbounded tree (an array of nulls costs no bytes per item).
            limits: Limits {
                max_message_bytes: usize::MAX,
                max_depth: Limits::default().max_depth * 2,
                max_items: Limits::default().max_items * 2,
            },
        })
    }

    /// Decodes an Avro datum (without the 5-byte Confluent header) into a
    /// JSON object. Every byte must be consumed.
    pub fn to_json(&self, datum: &[u8]) -> Result<Map<String, Json>, Reason> {
        let mut cur = Cursor::new(datum, &self.limits);
        let Json::Object(o) = self.value(&mut cur, self.program.root, 0)? else {
            return Err(Reason::AvroTruncated);
        };
        if cur.pos != datum.len() {
            return Err(Reason::AvroTrailingBytes);
        }
        Ok(o)
    }

    /// [`JsonDecoder::to_json`] keeping only the top-level fields `keep`
    /// names: the others are walked with the same checks (a datum decodes
    /// here exactly when it decodes whole) but not built, so a caller that
    /// needs three fields of thirty does not allocate the other
    /// twenty-seven.
    pub fn to_json_only(
        &self,
        datum: &[u8],
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<Map<String, Json>, Reason> {
        let Node::Record { fields, .. } = &self.program.nodes[self.program.root] else {
            return Err(Reason::AvroTruncated);
        };
        let mut cur = Cursor::new(datum, &self.limits);
        let depth = cur.deeper(0)?;
        let mut out = Map::new();
        for f in fields {
            if keep(&f.name) {
                out.insert(f.name.clone(), self.value(&mut cur, f.node, depth)?);
            } else if self.skip_decodes {
                self.value(&mut cur, f.node, depth)?;
            } else {
                cur.value(&self.program, f.node, depth)?;
            }
        }
        if cur.pos != datum.len() {
            return Err(Reason::AvroTrailingBytes);
        }
        Ok(out)
    }

    fn value(&self, cur: &mut Cursor<'_>, node: NodeId, depth: u32) -> Result<Json, Reason> {
        let prog = &self.program;
        Ok(match &prog.nodes[node] {
            Node::Null => Json::Null,
            Node::Boolean => match cur.take(1)?[0] {
                0 => Json::Bool(false),
                1 => Json::Bool(true),
                _ => return Err(Reason::AvroInvalidBoolean),
            },
            Node::Int => Json::from(cur.int()?),
            Node::Long => {
                let v = cur.long()?;
                match prog.flavors[node] {
                    Flavor::Nanos => {
                        Json::String(time::format_rfc3339_fraction(v, 1_000_000_000, true))
                    }
                    Flavor::LocalNanos => {
                        Json::String(time::format_rfc3339_fraction(v, 1_000_000_000, false))
                    }
                    _ => Json::from(v),
                }
            }
            Node::Float => number(f64::from(f32::from_le_bytes(fixed4(cur.take(4)?)))),
            Node::Double => {
                let b = cur.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                number(f64::from_le_bytes(a))
            }
            Node::String => {
                let text = cur.str()?.0;
                if prog.flavors[node] == Flavor::Uuid {
                    // As apache-avro reads it: parsed, written lowercase
                    // and hyphenated; text that is no UUID does not decode.
                    let u = uuid::Uuid::parse_str(text).map_err(|_| Reason::PatternMismatch)?;
                    Json::String(u.to_string())
                } else {
                    Json::String(text.to_owned())
                }
            }
            Node::Bytes => Json::String(latin1(cur.bytes()?)),
            Node::Fixed(n) => {
                let b = cur.take(*n)?;
                if prog.flavors[node] == Flavor::Duration && b.len() == 12 {
                    let u = |i: usize| u32::from_le_bytes(fixed4(&b[i..i + 4]));
                    serde_json::json!({ "months": u(0), "days": u(4), "millis": u(8) })
                } else {
                    Json::String(latin1(b))
                }
            }
            Node::Enum(symbols) => {
                let i = cur.long()?;
                let s = usize::try_from(i)
                    .ok()
                    .and_then(|i| symbols.get(i))
                    .ok_or(Reason::AvroEnumIndex)?;
                Json::String(s.clone())
            }
            Node::Date => Json::String(time::format_date(cur.int()?)),
            Node::TimestampMillis => {
                let ms = cur.long()?;
                Json::String(if prog.flavors[node] == Flavor::Local {
                    time::format_rfc3339_fraction(ms, 1_000, false)
                } else {
                    time::format_rfc3339_millis(ms)
                })
            }
            Node::TimestampMicros => {
                let us = cur.long()?;
                let zulu = prog.flavors[node] != Flavor::Local;
                Json::String(time::format_rfc3339_fraction(us, 1_000_000, zulu))
            }
            Node::Decimal { scale, fixed, .. } => {
                let b = match fixed {
                    Some(n) => cur.take(*n)?,
                    None => cur.bytes()?,
                };
                Decimal::from_be_bytes(b, *scale)
                    .map_or(Json::Null, |d| Json::String(d.to_string()))
            }
            Node::Union(branches) => {
                let i = cur.long()?;
                let branch = usize::try_from(i)
                    .ok()
                    .and_then(|i| branches.get(i))
                    .ok_or(Reason::AvroUnionIndex)?;
                self.value(cur, *branch, cur.deeper(depth)?)?
            }
            Node::Record { fields, .. } => {
                let depth = cur.deeper(depth)?;
                let mut out = Map::new();
                for f in fields {
                    let v = self.value(cur, f.node, depth)?;
                    out.insert(f.name.clone(), v);
                }
                Json::Object(out)
            }
            Node::Array(item) => {
                let depth = cur.deeper(depth)?;
                let mut out = Vec::new();
                loop {
                    let n = cur.block()?;
                    if n == 0 {
                        break;
                    }
                    for _ in 0..n {
                        out.push(self.value(cur, *item, depth)?);
                    }
                }
                Json::Array(out)
            }
            Node::Map(value) => {
                let depth = cur.deeper(depth)?;
                let mut out = Map::new();
                loop {
                    let n = cur.block()?;
                    if n == 0 {
                        break;
                    }
                    for _ in 0..n {
                        let k = cur.str()?.0.to_owned();
                        let v = self.value(cur, *value, depth)?;
                        out.insert(k, v);
                    }
                }
                Json::Object(out)
            }
        })
    }
}

fn fixed4(b: &[u8]) -> [u8; 4] {
    [b[0], b[1], b[2], b[3]]
}

/// A float as JSON; a non-finite one (never in a canonical value: the router
/// refuses them) as `null`, as the generic decoder did.
fn number(f: f64) -> Json {
    Number::from_f64(f).map_or(Json::Null, Json::Number)
}

/// One character per byte (U+0000..U+00FF), Avro's JSON encoding of bytes.
fn latin1(b: &[u8]) -> String {
    b.iter().map(|&c| char::from(c)).collect()
}
