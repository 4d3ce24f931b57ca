//! A dataset version's checks, compiled: per top-level field, what to verify
//! as the walker passes it, plus the cross-field checks and the key.

use std::borrow::Cow;

use govbus_catalog::fields::{describe, FieldKind};
use govbus_catalog::time::{self, MILLIS_PER_DAY};
use govbus_catalog::{Check, Dataset, Decimal, SchemaId, SchemaVersion};
use regex::Regex;

use crate::ids::{check_credit_code, check_mobile_phone, check_resident_id, IdNormalization};
use crate::program::{CompileError, Node, Program};
use crate::walk::{Cursor, Val};
use crate::{Context, Limits, Reason, Rejection};

/// Values kept for the key and cross-field checks, per record, on the stack.
const MAX_SLOTS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Days,
    Millis,
    Micros,
}

impl Unit {
    fn to_millis(self, v: i64) -> i64 {
        match self {
            Unit::Days => v.saturating_mul(MILLIS_PER_DAY),
            Unit::Millis => v,
            Unit::Micros => v.div_euclid(1000),
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Required,
    Length {
        min: Option<u32>,
        max: Option<u32>,
    },
    Pattern(Regex),
    OneOfStr(Vec<String>),
    OneOfEnum(Vec<bool>),
    Range {
        min: Option<Decimal>,
        max: Option<Decimal>,
    },
    DecimalScale(u32),
    NotFuture {
        tolerance_ms: i64,
    },
    DateRange {
        min_ms: Option<i64>,
        max_ms: Option<i64>,
    },
    ResidentId,
    CreditCode,
    MobilePhone,
}

#[derive(Debug, Clone)]
struct FieldPlan {
    name: String,
    node: usize,
    temporal: Option<Unit>,
    /// (precision, scale) of a decimal field.
    decimal: Option<(u32, u32)>,
    ops: Vec<Op>,
    slot: Option<usize>,
}

#[derive(Debug, Clone)]
struct NotBefore {
    field: String,
    other: String,
    slot: usize,
    other_slot: usize,
}

#[derive(Debug, Clone)]
struct KeyPart {
    slot: usize,
    symbols: Option<Vec<String>>,
}

/// The validated outcome of walking a datum.
pub(crate) struct Walked {
    pub key: String,
    /// Offsets in the datum of a trailing `x` to uppercase.
    pub patches: Vec<usize>,
}

#[derive(Debug, Clone)]
pub(crate) struct VersionPlan {
    pub id: SchemaId,
    pub version: u32,
    pub prog: Program,
    fields: Vec<FieldPlan>,
    not_before: Vec<NotBefore>,
    key: Vec<KeyPart>,
}

fn unit_of(kind: &FieldKind) -> Option<Unit> {
    match kind {
        FieldKind::Date => Some(Unit::Days),
        FieldKind::TimestampMillis => Some(Unit::Millis),
        FieldKind::TimestampMicros => Some(Unit::Micros),
        _ => None,
    }
}

impl VersionPlan {
    pub fn compile(ds: &Dataset, sv: &SchemaVersion) -> Result<VersionPlan, CompileError> {
        let prog = Program::compile(&sv.schema)?;
        let Node::Record { fields: top, .. } = &prog.nodes[prog.root] else {
            return Err(CompileError("a dataset schema must be a record".into()));
        };
        let apache_avro::Schema::Record(record) = &sv.schema else {
            return Err(CompileError("a dataset schema must be a record".into()));
        };
        let mut slots: Vec<String> = Vec::new();
        let mut slot_of = |name: &str| -> Result<usize, CompileError> {
            if let Some(i) = slots.iter().position(|s| s == name) {
                return Ok(i);
            }
            if slots.len() == MAX_SLOTS {
                return Err(CompileError(format!(
                    "more than {MAX_SLOTS} key and cross-field rule fields"
                )));
            }
            slots.push(name.to_owned());
            Ok(slots.len() - 1)
        };
        let mut key = Vec::new();
        for k in &ds.key {
            let f = record
                .fields
                .iter()
                .find(|f| &f.name == k)
                .ok_or_else(|| CompileError(format!("key field `{k}` missing")))?;
            let symbols = match describe(&f.schema).kind {
                FieldKind::Enum(s) => Some(s),
                _ => None,
            };
            key.push(KeyPart {
                slot: slot_of(k)?,
                symbols,
            });
        }
        let mut not_before = Vec::new();
        for rule in &ds.rules {
            if let Check::NotBefore { other } = &rule.check {
                let present = |n: &str| record.fields.iter().any(|f| f.name == n);
                if present(&rule.field) && present(other) {
                    not_before.push(NotBefore {
                        field: rule.field.clone(),
                        other: other.clone(),
                        slot: slot_of(&rule.field)?,
                        other_slot: slot_of(other)?,
                    });
                }
            }
        }
        let mut fields = Vec::with_capacity(top.len());
        for (fnode, f) in top.iter().zip(&record.fields) {
            let info = describe(&f.schema);
            let mut ops = Vec::new();
            for rule in ds.rules.iter().filter(|r| r.field == f.name) {
                ops.push(match &rule.check {
                    Check::Required => Op::Required,
                    Check::Length { min, max } => Op::Length {
                        min: *min,
                        max: *max,
                    },
                    Check::Pattern(re) => Op::Pattern(re.clone()),
                    Check::OneOf(values) => match &info.kind {
                        FieldKind::Enum(symbols) => {
                            Op::OneOfEnum(symbols.iter().map(|s| values.contains(s)).collect())
                        }
                        _ => Op::OneOfStr(values.clone()),
                    },
                    Check::Range { min, max } => Op::Range {
                        min: *min,
                        max: *max,
                    },
                    Check::DecimalScale(s) => Op::DecimalScale(*s),
                    Check::NotFuture { tolerance } => Op::NotFuture {
                        tolerance_ms: i64::try_from(tolerance.as_millis()).unwrap_or(i64::MAX),
                    },
                    Check::DateRange { min_days, max_days } => Op::DateRange {
                        min_ms: min_days.map(|d| d * MILLIS_PER_DAY),
                        max_ms: max_days.map(|d| (d + 1) * MILLIS_PER_DAY - 1),
                    },
                    Check::NotBefore { .. } => continue,
                    Check::ResidentId => Op::ResidentId,
                    Check::CreditCode => Op::CreditCode,
                    Check::MobilePhone => Op::MobilePhone,
                });
            }
            fields.push(FieldPlan {
                name: f.name.clone(),
                node: fnode.node,
                temporal: unit_of(&info.kind),
                decimal: match info.kind {
                    FieldKind::Decimal { precision, scale } => Some((precision, scale)),
                    _ => None,
                },
                ops,
                slot: slots.iter().position(|s| *s == f.name),
            });
        }
        Ok(VersionPlan {
            id: sv.id,
            version: sv.version,
            prog,
            fields,
            not_before,
            key,
        })
    }

    /// Walks the whole datum, checking every field and rule.
    pub fn walk(&self, datum: &[u8], ctx: &Context, limits: &Limits) -> Result<Walked, Rejection> {
        let mut cur = Cursor::new(datum, limits);
        let mut slots = [Val::Null; MAX_SLOTS];
        let mut patches = Vec::new();
        for f in &self.fields {
            let v = cur
                .value(&self.prog, f.node, 0)
                .map_err(|r| decode_rejection(r, &f.name, cur.pos))?;
            f.check(v, ctx, &mut patches)?;
            if let Some(s) = f.slot {
                slots[s] = v;
            }
        }
        if cur.pos != datum.len() {
            return Err(Rejection::new(
                Reason::AvroTrailingBytes,
                format!(
                    "{} bytes remain after the datum ends at byte {}",
                    datum.len() - cur.pos,
                    cur.pos
                ),
            ));
        }
        for nb in &self.not_before {
            let (Some(a), Some(b)) = (
                self.millis(nb.slot, &slots[nb.slot]),
                self.millis(nb.other_slot, &slots[nb.other_slot]),
            ) else {
                continue;
            };
            if a < b {
                return Err(Rejection::at(
                    Reason::FieldOrder,
                    nb.field.clone(),
                    format!("must not be earlier than `{}`", nb.other),
                ));
            }
        }
        let key = self.key(&slots, &patches)?;
        Ok(Walked { key, patches })
    }

    fn millis(&self, slot: usize, v: &Val<'_>) -> Option<i64> {
        let unit = self
            .fields
            .iter()
            .find(|f| f.slot == Some(slot))?
            .temporal?;
        match v {
            Val::Int(i) => Some(unit.to_millis(*i)),
            _ => None,
        }
    }

    fn key(&self, slots: &[Val<'_>; MAX_SLOTS], patches: &[usize]) -> Result<String, Rejection> {
        let mut key = String::new();
        for (i, part) in self.key.iter().enumerate() {
            let text: Cow<'_, str> = match slots[part.slot] {
                Val::Str(s, at) => {
                    if !s.is_empty() && patches.contains(&(at + s.len() - 1)) {
                        Cow::Owned(s.to_ascii_uppercase())
                    } else {
                        Cow::Borrowed(s)
                    }
                }
                Val::Int(n) => Cow::Owned(n.to_string()),
                Val::Enum(e) => Cow::Borrowed(
                    part.symbols
                        .as_ref()
                        .and_then(|s| s.get(e as usize))
                        .map_or("", String::as_str),
                ),
                _ => Cow::Borrowed(""),
            };
            if text.trim().is_empty() {
                let name = self
                    .fields
                    .iter()
                    .find(|f| f.slot == Some(part.slot))
                    .map_or("", |f| f.name.as_str());
                return Err(Rejection::at(
                    Reason::KeyMissing,
                    name,
                    "key fields must not be empty",
                ));
            }
            if self.key.len() == 1 {
                return Ok(text.into_owned());
            }
            if i > 0 {
                key.push('/');
            }
            // Composite keys join their parts with `/`; escape it and `%` inside parts.
            for ch in text.chars() {
                match ch {
                    '%' => key.push_str("%25"),
                    '/' => key.push_str("%2F"),
                    c => key.push(c),
                }
            }
        }
        Ok(key)
    }
}

fn decode_rejection(reason: Reason, field: &str, pos: usize) -> Rejection {
    let detail: Cow<'static, str> = match reason {
        Reason::NumberNotFinite => "NaN and infinite numbers are not accepted".into(),
        _ => format!("{} (near byte {pos})", reason.description()).into(),
    };
    Rejection::at(reason, field, detail)
}

impl FieldPlan {
    #[inline]
    fn check(&self, v: Val<'_>, ctx: &Context, patches: &mut Vec<usize>) -> Result<(), Rejection> {
        if let (Some(unit), Val::Int(raw)) = (self.temporal, v) {
            let ms = unit.to_millis(raw);
            if !(time::MIN_DAYS * MILLIS_PER_DAY..time::MAX_DAYS_EXCLUSIVE * MILLIS_PER_DAY)
                .contains(&ms)
            {
                return Err(self.reject(Reason::DateOutOfRange, "outside years 0001-9999".into()));
            }
        }
        let decimal = match (self.decimal, v) {
            (Some((precision, scale)), Val::Bytes(b)) => {
                let d = Decimal::from_be_bytes(b, scale).ok_or_else(|| {
                    self.reject(
                        Reason::DecimalPrecision,
                        "the decimal does not fit in 38 digits".into(),
                    )
                })?;
                if d.digits() > precision {
                    return Err(self.reject(
                        Reason::DecimalPrecision,
                        format!("more than {precision} digits").into(),
                    ));
                }
                Some(d)
            }
            _ => None,
        };
        for op in &self.ops {
            self.apply(op, v, decimal, ctx, patches)?;
        }
        Ok(())
    }

    fn reject(&self, reason: Reason, detail: Cow<'static, str>) -> Rejection {
        Rejection::at(reason, self.name.clone(), detail)
    }

    fn apply(
        &self,
        op: &Op,
        v: Val<'_>,
        decimal: Option<Decimal>,
        ctx: &Context,
        patches: &mut Vec<usize>,
    ) -> Result<(), Rejection> {
        if let Val::Null = v {
            return match op {
                Op::Required => Err(self.reject(Reason::RequiredMissing, "is null".into())),
                _ => Ok(()),
            };
        }
        let fail = |reason: Reason, detail: Cow<'static, str>| Err(self.reject(reason, detail));
        match (op, v) {
            (Op::Required, Val::Str(s, _)) if s.trim().is_empty() => {
                fail(Reason::RequiredMissing, "is empty or blank".into())
            }
            (Op::Required, Val::Bytes(b)) if b.is_empty() && decimal.is_none() => {
                fail(Reason::RequiredMissing, "is empty".into())
            }
            (Op::Length { min, max }, Val::Str(s, _)) => {
                let n = if s.is_ascii() {
                    s.len()
                } else {
                    s.chars().count()
                };
                let n = u32::try_from(n).unwrap_or(u32::MAX);
                if min.is_some_and(|m| n < m) || max.is_some_and(|m| n > m) {
                    let bounds = format!(
                        "{}..={}",
                        min.map(|m| m.to_string()).unwrap_or_default(),
                        max.map(|m| m.to_string()).unwrap_or_default()
                    );
                    return fail(
                        Reason::LengthOutOfRange,
                        format!("length {n} is outside {bounds}").into(),
                    );
                }
                Ok(())
            }
            (Op::Pattern(re), Val::Str(s, _)) if !re.is_match(s) => fail(
                Reason::PatternMismatch,
                format!("does not match {}", re.as_str()).into(),
            ),
            (Op::OneOfStr(values), Val::Str(s, _)) if !values.iter().any(|x| x == s) => fail(
                Reason::ValueNotAllowed,
                format!("must be one of {}", values.join(", ")).into(),
            ),
            (Op::OneOfEnum(allowed), Val::Enum(i))
                if !allowed.get(i as usize).copied().unwrap_or(false) =>
            {
                fail(
                    Reason::ValueNotAllowed,
                    "this enum symbol is not allowed".into(),
                )
            }
            (Op::Range { min, max }, _) => {
                let out = match (v, decimal) {
                    (_, Some(d)) => min.is_some_and(|m| d < m) || max.is_some_and(|m| d > m),
                    (Val::Int(i), None) => {
                        let d = Decimal::from_i64(i);
                        min.is_some_and(|m| d < m) || max.is_some_and(|m| d > m)
                    }
                    (Val::Float(f), None) => {
                        min.is_some_and(|m| f < m.to_f64()) || max.is_some_and(|m| f > m.to_f64())
                    }
                    _ => false,
                };
                if out {
                    let bounds = format!(
                        "{}..={}",
                        min.map(|m| m.to_string()).unwrap_or_default(),
                        max.map(|m| m.to_string()).unwrap_or_default()
                    );
                    return fail(Reason::RangeOutOfBounds, format!("outside {bounds}").into());
                }
                Ok(())
            }
            (Op::DecimalScale(max), _) => match decimal {
                Some(d) if d.significant_scale() > *max => fail(
                    Reason::DecimalScale,
                    format!("more than {max} digits after the point").into(),
                ),
                _ => Ok(()),
            },
            (Op::NotFuture { tolerance_ms }, Val::Int(raw)) => {
                let unit = self.temporal.unwrap_or(Unit::Millis);
                let ms = unit.to_millis(raw);
                let limit = if unit == Unit::Days {
                    // A date is in the future only once its day starts after today.
                    ctx.now_millis.div_euclid(MILLIS_PER_DAY) * MILLIS_PER_DAY
                } else {
                    ctx.now_millis.saturating_add(*tolerance_ms)
                };
                if ms > limit {
                    return fail(Reason::DateInFuture, "is later than now".into());
                }
                Ok(())
            }
            (Op::DateRange { min_ms, max_ms }, Val::Int(raw)) => {
                let ms = self.temporal.unwrap_or(Unit::Millis).to_millis(raw);
                if min_ms.is_some_and(|m| ms < m) || max_ms.is_some_and(|m| ms > m) {
                    let show = |m: Option<i64>| {
                        m.map(|m| time::format_date(m.div_euclid(MILLIS_PER_DAY)))
                            .unwrap_or_default()
                    };
                    return fail(
                        Reason::DateOutOfRange,
                        format!("outside {}..={}", show(*min_ms), show(*max_ms)).into(),
                    );
                }
                Ok(())
            }
            (Op::ResidentId, Val::Str(s, at)) => {
                match check_resident_id(s.as_bytes(), ctx.now_millis.div_euclid(MILLIS_PER_DAY)) {
                    Ok(IdNormalization::None) => Ok(()),
                    Ok(IdNormalization::UppercaseCheckX) => {
                        patches.push(at + s.len() - 1);
                        Ok(())
                    }
                    Err(reason) => fail(reason, reason.description().into()),
                }
            }
            (Op::CreditCode, Val::Str(s, _)) => {
                check_credit_code(s.as_bytes()).or_else(|r| fail(r, r.description().into()))
            }
            (Op::MobilePhone, Val::Str(s, _)) => {
                check_mobile_phone(s.as_bytes()).or_else(|r| fail(r, r.description().into()))
            }
            _ => Ok(()),
        }
    }
}
