//! JSON records to Avro binary, directed by the compiled schema.
//!
//! Accepted JSON, per Avro type (the conventions a department developer
//! expects, plus Avro's own JSON encoding where it is unambiguous):
//!
//! | schema | JSON |
//! |---|---|
//! | record | object; unknown members rejected; missing members take the field default |
//! | `["null", T]` | `null`, a plain `T`, or Avro's `{"T": value}` |
//! | int, long | integer number |
//! | float, double | number |
//! | string | string |
//! | enum | symbol string |
//! | date | `"YYYY-MM-DD"` or days since 1970-01-01 |
//! | timestamp-millis/micros | RFC 3339 string or an integer in the unit |
//! | decimal | decimal string `"1234.50"` (exact) or number; no more digits after the point than the scale |
//! | bytes, fixed | string of code points 0–255 (Avro JSON encoding) |
//! | array, map | array, object |

use std::fmt::Write as _;

use govbus_catalog::time;
use govbus_catalog::Decimal;
use serde_json::Value as Json;

use crate::program::{Node, NodeId, Program};
use crate::{Reason, Rejection};

enum Seg<'a> {
    Field(&'a str),
    Index(usize),
}

struct Encoder<'p, 'j> {
    prog: &'p Program,
    path: Vec<Seg<'j>>,
    out: &'p mut Vec<u8>,
}

/// Appends the Avro binary encoding of `json` under the program's root record.
pub(crate) fn encode(prog: &Program, json: &Json, out: &mut Vec<u8>) -> Result<(), Rejection> {
    let mut enc = Encoder {
        prog,
        path: Vec::new(),
        out,
    };
    enc.value(prog.root, json)
}

pub(crate) fn write_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

impl<'p: 'j, 'j> Encoder<'p, 'j> {
    fn path(&self) -> String {
        let mut s = String::new();
        for seg in &self.path {
            match seg {
                Seg::Field(f) => {
                    if !s.is_empty() {
                        s.push('.');
                    }
                    s.push_str(f);
                }
                Seg::Index(i) => {
                    let _ = write!(s, "[{i}]");
                }
            }
        }
        s
    }

    fn reject(
        &self,
        reason: Reason,
        detail: impl Into<std::borrow::Cow<'static, str>>,
    ) -> Rejection {
        let path = self.path();
        Rejection {
            reason,
            field: (!path.is_empty()).then_some(path),
            detail: detail.into(),
        }
    }

    fn mismatch(&self, expected: &str, got: &Json) -> Rejection {
        if got.is_null() {
            return self.reject(
                Reason::RequiredMissing,
                "is null, and the schema does not allow null",
            );
        }
        self.reject(
            Reason::JsonTypeMismatch,
            format!("expected {expected}, got {}", json_kind(got)),
        )
    }

    fn integer(&self, v: &Json, lo: i64, hi: i64, what: &str) -> Result<i64, Rejection> {
        match v {
            Json::Number(n) => match n.as_i64() {
                Some(i) if (lo..=hi).contains(&i) => Ok(i),
                Some(_) => Err(self.reject(
                    Reason::JsonNumberOutOfRange,
                    format!("does not fit in {what}"),
                )),
                None if n.is_u64() => Err(self.reject(
                    Reason::JsonNumberOutOfRange,
                    format!("does not fit in {what}"),
                )),
                None => Err(self.reject(
                    Reason::JsonTypeMismatch,
                    format!("expected an integer for {what}"),
                )),
            },
            _ => Err(self.mismatch(&format!("an integer ({what})"), v)),
        }
    }

    fn value(&mut self, node: NodeId, v: &'j Json) -> Result<(), Rejection> {
        let prog = self.prog;
        match &prog.nodes[node] {
            Node::Null => match v {
                Json::Null => Ok(()),
                _ => Err(self.mismatch("null", v)),
            },
            Node::Boolean => match v {
                Json::Bool(b) => {
                    self.out.push(u8::from(*b));
                    Ok(())
                }
                _ => Err(self.mismatch("a boolean", v)),
            },
            Node::Int => {
                let i = self.integer(v, i64::from(i32::MIN), i64::from(i32::MAX), "int")?;
                write_long(self.out, i);
                Ok(())
            }
            Node::Long => {
                let i = self.integer(v, i64::MIN, i64::MAX, "long")?;
                write_long(self.out, i);
                Ok(())
            }
            Node::Float | Node::Double => {
                let Json::Number(n) = v else {
                    return Err(self.mismatch("a number", v));
                };
                let f = n.as_f64().unwrap_or(f64::NAN);
                if matches!(prog.nodes[node], Node::Float) {
                    let f32v = f as f32;
                    if !f32v.is_finite() {
                        return Err(
                            self.reject(Reason::JsonNumberOutOfRange, "does not fit in float")
                        );
                    }
                    self.out.extend_from_slice(&f32v.to_le_bytes());
                } else {
                    self.out.extend_from_slice(&f.to_le_bytes());
                }
                Ok(())
            }
            Node::String => match v {
                Json::String(s) => {
                    write_long(self.out, s.len() as i64);
                    self.out.extend_from_slice(s.as_bytes());
                    Ok(())
                }
                _ => Err(self.mismatch("a string", v)),
            },
            Node::Bytes | Node::Fixed(_) => {
                let Json::String(s) = v else {
                    return Err(self.mismatch("a string of bytes", v));
                };
                let mut bytes = Vec::with_capacity(s.len());
                for ch in s.chars() {
                    let b = u8::try_from(u32::from(ch)).map_err(|_| {
                        self.reject(
                            Reason::JsonTypeMismatch,
                            "bytes are written as a string of code points 0-255",
                        )
                    })?;
                    bytes.push(b);
                }
                if let Node::Fixed(n) = prog.nodes[node] {
                    if bytes.len() != n {
                        return Err(self.reject(
                            Reason::JsonTypeMismatch,
                            format!("expected exactly {n} bytes, got {}", bytes.len()),
                        ));
                    }
                } else {
                    write_long(self.out, bytes.len() as i64);
                }
                self.out.extend_from_slice(&bytes);
                Ok(())
            }
            Node::Enum(symbols) => match v {
                Json::String(s) => match symbols.iter().position(|x| x == s) {
                    Some(i) => {
                        write_long(self.out, i as i64);
                        Ok(())
                    }
                    None => Err(self.reject(
                        Reason::ValueNotAllowed,
                        format!("must be one of {}", symbols.join(", ")),
                    )),
                },
                _ => Err(self.mismatch("an enum symbol string", v)),
            },
            Node::Date => {
                let days = match v {
                    Json::String(s) => time::parse_date(s).ok_or_else(|| {
                        self.reject(Reason::JsonInvalidTemporal, "expected a date as YYYY-MM-DD")
                    })?,
                    _ => self.integer(
                        v,
                        i64::from(i32::MIN),
                        i64::from(i32::MAX),
                        "a date in days",
                    )?,
                };
                let days = i32::try_from(days)
                    .map_err(|_| self.reject(Reason::DateOutOfRange, "outside years 0001-9999"))?;
                write_long(self.out, i64::from(days));
                Ok(())
            }
            Node::TimestampMillis | Node::TimestampMicros => {
                let micros_unit = matches!(prog.nodes[node], Node::TimestampMicros);
                let t = match v {
                    Json::String(s) => {
                        let us = time::parse_rfc3339_micros(s).ok_or_else(|| {
                            self.reject(
                                Reason::JsonInvalidTemporal,
                                "expected an RFC 3339 timestamp like 2026-11-30T08:00:00+08:00",
                            )
                        })?;
                        if micros_unit {
                            us
                        } else {
                            us.div_euclid(1000)
                        }
                    }
                    _ => self.integer(v, i64::MIN, i64::MAX, "a timestamp")?,
                };
                write_long(self.out, t);
                Ok(())
            }
            Node::Decimal {
                precision,
                scale,
                fixed,
            } => {
                let parsed = match v {
                    Json::String(s) => Decimal::parse(s.trim()),
                    Json::Number(n) => Decimal::parse(&n.to_string()),
                    _ => return Err(self.mismatch("a decimal string like \"1234.50\"", v)),
                };
                let d = parsed.ok_or_else(|| {
                    self.reject(
                        Reason::JsonTypeMismatch,
                        "expected a decimal like \"1234.50\" (no exponent)",
                    )
                })?;
                let d = d.rescale(*scale).ok_or_else(|| {
                    self.reject(
                        Reason::DecimalScale,
                        format!("more than {scale} digits after the point"),
                    )
                })?;
                if d.digits() > *precision {
                    return Err(self.reject(
                        Reason::DecimalPrecision,
                        format!("more than {precision} digits"),
                    ));
                }
                let bytes = d.to_be_bytes();
                match fixed {
                    None => {
                        write_long(self.out, bytes.len() as i64);
                        self.out.extend_from_slice(&bytes);
                    }
                    Some(n) => {
                        if bytes.len() > *n {
                            return Err(self
                                .reject(Reason::DecimalPrecision, "does not fit the fixed size"));
                        }
                        let fill = if d.unscaled < 0 { 0xff } else { 0 };
                        self.out.extend(std::iter::repeat_n(fill, n - bytes.len()));
                        self.out.extend_from_slice(&bytes);
                    }
                }
                Ok(())
            }
            Node::Array(item) => {
                let Json::Array(items) = v else {
                    return Err(self.mismatch("an array", v));
                };
                if !items.is_empty() {
                    write_long(self.out, items.len() as i64);
                    for (i, x) in items.iter().enumerate() {
                        self.path.push(Seg::Index(i));
                        self.value(*item, x)?;
                        self.path.pop();
                    }
                }
                self.out.push(0);
                Ok(())
            }
            Node::Map(value) => {
                let Json::Object(members) = v else {
                    return Err(self.mismatch("an object", v));
                };
                if !members.is_empty() {
                    write_long(self.out, members.len() as i64);
                    for (k, x) in members {
                        write_long(self.out, k.len() as i64);
                        self.out.extend_from_slice(k.as_bytes());
                        self.path.push(Seg::Field(k));
                        self.value(*value, x)?;
                        self.path.pop();
                    }
                }
                self.out.push(0);
                Ok(())
            }
            Node::Union(branches) => self.union(branches, v),
            Node::Record { fields, .. } => {
                let Json::Object(members) = v else {
                    return Err(self.mismatch("an object", v));
                };
                for k in members.keys() {
                    if !fields.iter().any(|f| f.name == *k) {
                        self.path.push(Seg::Field(k));
                        let e =
                            self.reject(Reason::JsonUnknownField, "the schema has no such field");
                        self.path.pop();
                        return Err(e);
                    }
                }
                for f in fields {
                    self.path.push(Seg::Field(&f.name));
                    match (members.get(&f.name), &f.default) {
                        (Some(x), _) => self.value(f.node, x)?,
                        (None, Some(default)) => self.default(f.node, default)?,
                        (None, None) => {
                            return Err(self.reject(
                                Reason::JsonMissingField,
                                "missing, and the field has no default",
                            ))
                        }
                    }
                    self.path.pop();
                }
                Ok(())
            }
        }
    }

    /// A field default: for a union it applies to the first branch (Avro spec).
    fn default(&mut self, node: NodeId, default: &Json) -> Result<(), Rejection> {
        let prog = self.prog;
        if let Node::Union(branches) = &prog.nodes[node] {
            let first = branches
                .first()
                .copied()
                .ok_or_else(|| self.reject(Reason::JsonTypeMismatch, "empty union"))?;
            write_long(self.out, 0);
            // Defaults come from the catalog, not the input, so they outlive it.
            let owned = default.clone();
            let mut enc = Encoder {
                prog,
                path: Vec::new(),
                out: &mut *self.out,
            };
            return enc.value(first, &owned).map_err(|mut e| {
                e.field = Some(self.path());
                e
            });
        }
        let owned = default.clone();
        let mut enc = Encoder {
            prog,
            path: Vec::new(),
            out: &mut *self.out,
        };
        enc.value(node, &owned).map_err(|mut e| {
            e.field = Some(self.path());
            e
        })
    }

    fn union(&mut self, branches: &[NodeId], v: &'j Json) -> Result<(), Rejection> {
        let prog = self.prog;
        let nodes = &prog.nodes;
        // Avro's own JSON encoding: {"string": "..."} names the branch.
        if let Json::Object(m) = v {
            if m.len() == 1 {
                if let Some((name, inner)) = m.iter().next() {
                    let named = branches.iter().position(|b| {
                        let n = nodes[*b].type_name();
                        n == name || n.rsplit('.').next() == Some(name.as_str())
                    });
                    if let Some(i) = named {
                        if !matches!(nodes[branches[i]], Node::Record { .. } | Node::Map(_))
                            || !inner.is_null()
                        {
                            write_long(self.out, i as i64);
                            return self.value(branches[i], inner);
                        }
                    }
                }
            }
        }
        let fits = |b: NodeId| {
            matches!(
                (&nodes[b], v),
                (Node::Null, Json::Null)
                    | (Node::Boolean, Json::Bool(_))
                    | (
                        Node::Int | Node::Long | Node::Float | Node::Double,
                        Json::Number(_)
                    )
                    | (
                        Node::Date | Node::TimestampMillis | Node::TimestampMicros,
                        Json::Number(_) | Json::String(_)
                    )
                    | (Node::Decimal { .. }, Json::Number(_) | Json::String(_))
                    | (
                        Node::String | Node::Bytes | Node::Fixed(_) | Node::Enum(_),
                        Json::String(_)
                    )
                    | (Node::Array(_), Json::Array(_))
                    | (Node::Record { .. } | Node::Map(_), Json::Object(_))
            )
        };
        match branches.iter().position(|b| fits(*b)) {
            Some(i) => {
                write_long(self.out, i as i64);
                self.value(branches[i], v)
            }
            None => {
                let names: Vec<&str> = branches.iter().map(|b| nodes[*b].type_name()).collect();
                if v.is_null() {
                    return Err(self.reject(
                        Reason::RequiredMissing,
                        "is null, and the schema does not allow null",
                    ));
                }
                Err(self.reject(
                    Reason::JsonTypeMismatch,
                    format!(
                        "{} does not match any of {}",
                        json_kind(v),
                        names.join(", ")
                    ),
                ))
            }
        }
    }
}
