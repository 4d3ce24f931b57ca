//! JSON records to Avro binary, directed by the compiled schema.
//!
//! Accepted JSON, per Avro type (the conventions a department developer
//! expects, plus Avro's own JSON encoding where it is unambiguous):
//!
//! | schema | JSON |
//! |---|---|
//! | record | object; unknown members rejected; missing members take the field default |
//! | `["null", T]` | `null`, a plain `T`, or Avro's `{"T": value}` |
//! | int, long | integer number (no fraction, no exponent) |
//! | float, double | number (nearest float; out of range or flushed to zero: rejected) |
//! | string | string |
//! | enum | symbol string |
//! | date | `"YYYY-MM-DD"` or days since 1970-01-01 |
//! | timestamp-millis/micros | RFC 3339 string or an integer in the unit |
//! | decimal | decimal string `"1234.50"` or number (`1234.5`, `1.2345e3`), both exact from their digits; a value the decimal type cannot hold exactly is rejected, never rounded |
//!
//! Numbers are read from their literal text (serde_json's
//! `arbitrary_precision`, enabled for the workspace): no decimal or integer
//! passes through `f64`.
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
    /// A map's value: its key is data (an ID number, a name), never put in
    /// a field path, which goes into DLQ headers, logs and answers.
    MapValue,
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
                Seg::MapValue => s.push_str(".*"),
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
        let Json::Number(n) = v else {
            return Err(self.mismatch(&format!("an integer ({what})"), v));
        };
        let text = n.to_string();
        // An integer literal: digits only. `1E2` and `5.0` are not written as
        // integers, whatever their value.
        let digits = text.strip_prefix('-').unwrap_or(&text);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.reject(
                Reason::JsonTypeMismatch,
                format!("expected an integer for {what}"),
            ));
        }
        match text.parse::<i64>() {
            Ok(i) if (lo..=hi).contains(&i) => Ok(i),
            _ => Err(self.reject(
                Reason::JsonNumberOutOfRange,
                format!("does not fit in {what}"),
            )),
        }
    }

    /// A float or double: the nearest value, or a rejection when the number
    /// is beyond the type's range or so small that it would become zero.
    fn float(&self, n: &serde_json::Number, single: bool) -> Result<[u8; 8], Rejection> {
        let text = n.to_string();
        let what = if single { "float" } else { "double" };
        let out_of_range = || {
            self.reject(
                Reason::JsonNumberOutOfRange,
                format!("does not fit in {what}"),
            )
        };
        let f: f64 = text.parse().map_err(|_| out_of_range())?;
        let nonzero = literal_is_nonzero(&text);
        let mut buf = [0u8; 8];
        if single {
            let g = f as f32;
            if !g.is_finite() || (g == 0.0 && nonzero) {
                return Err(out_of_range());
            }
            buf[..4].copy_from_slice(&g.to_le_bytes());
        } else {
            if !f.is_finite() || (f == 0.0 && nonzero) {
                return Err(out_of_range());
            }
            buf = f.to_le_bytes();
        }
        Ok(buf)
    }

    /// A decimal from a JSON number's or string's digits, exactly at the
    /// field's scale, or a rejection saying why it cannot be.
    fn decimal(&self, v: &Json, precision: u32, scale: u32) -> Result<Decimal, Rejection> {
        let literal = match v {
            Json::String(s) => Literal::parse(s.trim(), false),
            Json::Number(n) => Literal::parse(&n.to_string(), true),
            _ => return Err(self.mismatch("a decimal string like \"1234.50\"", v)),
        };
        let literal = literal.ok_or_else(|| {
            self.reject(
                Reason::JsonTypeMismatch,
                "expected a decimal like \"1234.50\" (an exponent only in a JSON number)",
            )
        })?;
        let why = |reason, what: String| {
            self.reject(
                reason,
                format!("cannot be represented exactly at scale {scale} / precision {precision}: {what}"),
            )
        };
        literal.at_scale(precision, scale).map_err(|e| match e {
            Inexact::Scale => why(
                Reason::DecimalScale,
                format!("more than {scale} digits after the point"),
            ),
            Inexact::Precision => why(
                Reason::DecimalPrecision,
                format!("more than {precision} digits"),
            ),
        })
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
                let single = matches!(prog.nodes[node], Node::Float);
                let bytes = self.float(n, single)?;
                self.out
                    .extend_from_slice(&bytes[..if single { 4 } else { 8 }]);
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
                        // A digit the unit cannot hold would be cut
                        // silently: refused, as a decimal's extra digits are.
                        let (unit, digits) = if micros_unit { (6, 1) } else { (3, 1000) };
                        if time::fraction_digits(s) > unit {
                            return Err(self.reject(
                                Reason::TemporalPrecision,
                                if micros_unit {
                                    "finer than a microsecond: the field is timestamp-micros (at most 6 fraction digits)"
                                } else {
                                    "finer than a millisecond: the field is timestamp-millis (at most 3 fraction digits, or ask the dataset's owner for timestamp-micros)"
                                },
                            ));
                        }
                        us.div_euclid(digits)
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
                let d = self.decimal(v, *precision, *scale)?;
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
                        self.path.push(Seg::MapValue);
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
                        // The name is the department's text: repeated only
                        // when it is a slip on one of the schema's field
                        // names; anything else — an ID number, a passport
                        // number, a person's name used as a key — may be
                        // data, and the path goes into DLQ headers and logs.
                        let Some(meant) = meant_field(k, fields.iter().map(|f| f.name.as_str()))
                        else {
                            return Err(self.reject(
                                Reason::JsonUnknownField,
                                "has a member that is not a field of the schema (its name is not repeated here: it is close to no field's name, so it may be data)",
                            ));
                        };
                        self.path.push(Seg::Field(k));
                        let e = self.reject(
                            Reason::JsonUnknownField,
                            format!("the schema has no such field; did you mean `{meant}`?"),
                        );
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

/// The field `name` is a slip on, if any: `name` is an Avro name
/// (`[A-Za-z_][A-Za-z0-9_]*`, at most 64 bytes) within edit distance
/// (insertions, deletions, substitutions, adjacent swaps; case ignored) of
/// one field — at most 1 for names of up to 4 bytes, else at most 2 — and
/// the nearest such field. Whatever is not such a slip is not repeated.
fn meant_field<'a>(name: &str, fields: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let b = name.as_bytes();
    let is_name = !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_');
    if !is_name {
        return None;
    }
    let limit = if b.len() <= 4 { 1 } else { 2 };
    fields
        .filter(|f| f.len() <= 64)
        .map(|f| (edit_distance(b, f.as_bytes()), f))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, f)| f)
}

/// Optimal-string-alignment distance between two short ASCII names, case
/// ignored.
fn edit_distance(a: &[u8], b: &[u8]) -> usize {
    let (n, m) = (a.len(), b.len());
    let same = |i: usize, j: usize| a[i].eq_ignore_ascii_case(&b[j]);
    let mut d = vec![vec![0usize; m + 1]; n + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=n {
        for j in 1..=m {
            let cost = usize::from(!same(i - 1, j - 1));
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && same(i - 1, j - 2) && same(i - 2, j - 1) {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[n][m]
}

/// Whether a JSON number's text has a nonzero digit before its exponent.
fn literal_is_nonzero(text: &str) -> bool {
    text.bytes()
        .take_while(|b| !matches!(b, b'e' | b'E'))
        .any(|b| matches!(b, b'1'..=b'9'))
}

/// A number as written: `digits × 10^exp`, the digits without leading or
/// trailing zeros (empty for zero). Exact for any length of text.
#[derive(Debug, PartialEq, Eq)]
struct Literal {
    negative: bool,
    digits: String,
    exp: i64,
}

/// Why a literal is not a value of a decimal type.
#[derive(Debug, PartialEq, Eq)]
enum Inexact {
    /// More digits after the point than the scale (they are not zeros).
    Scale,
    /// More digits in all than the precision.
    Precision,
}

/// Exponents beyond this are all "huge": the answer no longer depends on them.
const EXP_LIMIT: i64 = 1 << 40;

impl Literal {
    /// `-12.50`, `+7`, `.25`, `5.`; with `exponent`, also `1.5e3`, `1E-2`.
    fn parse(text: &str, exponent: bool) -> Option<Literal> {
        let (negative, body) = match text.as_bytes().first()? {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        let (mantissa, exp) = match body.find(['e', 'E']) {
            Some(i) if exponent => (&body[..i], parse_exponent(&body[i + 1..])?),
            Some(_) => return None,
            None => (body, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if (int.is_empty() && frac.is_empty())
            || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let all = format!("{int}{frac}");
        let trimmed = all.trim_start_matches('0').trim_end_matches('0');
        if trimmed.is_empty() {
            return Some(Literal {
                negative,
                digits: String::new(),
                exp: 0,
            });
        }
        let trailing_zeros = all.len() - all.trim_end_matches('0').len();
        let exp = exp - i64::try_from(frac.len()).ok()? + i64::try_from(trailing_zeros).ok()?;
        Some(Literal {
            negative,
            digits: trimmed.to_owned(),
            exp,
        })
    }

    /// The value as a decimal of `scale`, if `decimal(precision, scale)` holds it exactly.
    fn at_scale(&self, precision: u32, scale: u32) -> Result<Decimal, Inexact> {
        if self.digits.is_empty() {
            return Ok(Decimal { unscaled: 0, scale });
        }
        // The unscaled value is digits × 10^shift.
        let shift = self.exp + i64::from(scale);
        if shift < 0 {
            return Err(Inexact::Scale);
        }
        let len = i64::try_from(self.digits.len()).unwrap_or(i64::MAX);
        if len.saturating_add(shift) > i64::from(precision) {
            return Err(Inexact::Precision);
        }
        let mut unscaled: i128 = 0;
        for b in self.digits.bytes().chain(std::iter::repeat_n(
            b'0',
            usize::try_from(shift).unwrap_or(usize::MAX),
        )) {
            unscaled = unscaled
                .checked_mul(10)
                .and_then(|u| u.checked_add(i128::from(b - b'0')))
                .ok_or(Inexact::Precision)?;
        }
        Ok(Decimal {
            unscaled: if self.negative { -unscaled } else { unscaled },
            scale,
        })
    }
}

/// `+12`, `-3`, `7`, saturating at ±[`EXP_LIMIT`].
fn parse_exponent(text: &str) -> Option<i64> {
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let magnitude = digits.bytes().fold(0i64, |acc, b| {
        (acc * 10 + i64::from(b - b'0')).min(EXP_LIMIT)
    });
    Some(if negative { -magnitude } else { magnitude })
}

#[cfg(test)]
mod tests;
