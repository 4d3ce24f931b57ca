//! Quality rules: how they are written in `dataset.toml`, and their validated form.

use std::time::Duration;

use regex::Regex;
use serde::Deserialize;

use crate::decimal::Decimal;
use crate::fields::FieldKind;
use crate::time;

/// A rule as written in `dataset.toml` (`[[rule]]` tables, `check = "..."`).
#[derive(Debug, Deserialize)]
#[serde(tag = "check", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum RuleSpec {
    Required {
        field: String,
    },
    Length {
        field: String,
        min: Option<u32>,
        max: Option<u32>,
    },
    Pattern {
        field: String,
        regex: String,
    },
    OneOf {
        field: String,
        values: Vec<String>,
    },
    Range {
        field: String,
        min: Option<toml::Value>,
        max: Option<toml::Value>,
    },
    DecimalScale {
        field: String,
        max_scale: u32,
    },
    NotFuture {
        field: String,
        tolerance: Option<String>,
    },
    DateRange {
        field: String,
        min: Option<String>,
        max: Option<String>,
    },
    NotBefore {
        field: String,
        other: String,
    },
    ResidentId {
        field: String,
    },
    CreditCode {
        field: String,
    },
    MobilePhone {
        field: String,
    },
}

/// A validated quality rule on one top-level field.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The field it checks.
    pub field: String,
    /// What it checks.
    pub check: Check,
}

/// What a rule checks. Every rule except [`Check::Required`] passes on null.
#[derive(Debug, Clone)]
pub enum Check {
    /// Not null; a string is not empty or blank.
    Required,
    /// String length in characters (Unicode scalar values).
    Length {
        /// Inclusive minimum.
        min: Option<u32>,
        /// Inclusive maximum.
        max: Option<u32>,
    },
    /// The whole string matches (the regex should anchor itself).
    Pattern(Regex),
    /// The string or enum symbol is one of these.
    OneOf(Vec<String>),
    /// Numeric bounds, inclusive.
    Range {
        /// Inclusive minimum.
        min: Option<Decimal>,
        /// Inclusive maximum.
        max: Option<Decimal>,
    },
    /// A decimal has at most this many significant digits after the point.
    DecimalScale(u32),
    /// A date or timestamp is not after "now" plus a tolerance for clock skew.
    NotFuture {
        /// Allowed skew.
        tolerance: Duration,
    },
    /// A date or timestamp lies within these days since the epoch, inclusive.
    DateRange {
        /// Inclusive minimum, in days since 1970-01-01.
        min_days: Option<i64>,
        /// Inclusive maximum, in days since 1970-01-01.
        max_days: Option<i64>,
    },
    /// This date/timestamp field is not earlier than `other` (e.g. death ≥ birth).
    NotBefore {
        /// The field it must not precede.
        other: String,
    },
    /// A Chinese resident ID number (GB 11643-1999).
    ResidentId,
    /// A unified social credit code (GB 32100-2015).
    CreditCode,
    /// A mainland mobile phone number, 11 digits starting `1[3-9]`.
    MobilePhone,
}

impl Check {
    /// The name used in `dataset.toml`.
    pub fn name(&self) -> &'static str {
        match self {
            Check::Required => "required",
            Check::Length { .. } => "length",
            Check::Pattern(_) => "pattern",
            Check::OneOf(_) => "one_of",
            Check::Range { .. } => "range",
            Check::DecimalScale(_) => "decimal_scale",
            Check::NotFuture { .. } => "not_future",
            Check::DateRange { .. } => "date_range",
            Check::NotBefore { .. } => "not_before",
            Check::ResidentId => "resident_id",
            Check::CreditCode => "credit_code",
            Check::MobilePhone => "mobile_phone",
        }
    }

    /// Whether the check applies to a field of this kind; `None` if it does,
    /// otherwise what kinds it needs.
    pub fn unsupported_on(&self, kind: &FieldKind) -> Option<&'static str> {
        let ok = match self {
            Check::Required => true,
            Check::Length { .. }
            | Check::Pattern(_)
            | Check::ResidentId
            | Check::CreditCode
            | Check::MobilePhone => matches!(kind, FieldKind::String),
            Check::OneOf(_) => matches!(kind, FieldKind::String | FieldKind::Enum(_)),
            Check::Range { .. } => kind.is_numeric(),
            Check::DecimalScale(_) => matches!(kind, FieldKind::Decimal { .. }),
            Check::NotFuture { .. } | Check::DateRange { .. } | Check::NotBefore { .. } => {
                kind.is_temporal()
            }
        };
        if ok {
            return None;
        }
        Some(match self {
            Check::Required => "any field",
            Check::Length { .. }
            | Check::Pattern(_)
            | Check::ResidentId
            | Check::CreditCode
            | Check::MobilePhone => "a string field",
            Check::OneOf(_) => "a string or enum field",
            Check::Range { .. } => "an int, long, float, double or decimal field",
            Check::DecimalScale(_) => "a decimal field",
            Check::NotFuture { .. } | Check::DateRange { .. } | Check::NotBefore { .. } => {
                "a date or timestamp field"
            }
        })
    }
}

fn decimal_bound(v: &toml::Value) -> Result<Decimal, String> {
    let parsed = match v {
        toml::Value::Integer(i) => Some(Decimal::from_i64(*i)),
        toml::Value::String(s) => Decimal::parse(s),
        toml::Value::Float(f) if f.is_finite() => Decimal::parse(&f.to_string()),
        _ => None,
    };
    parsed.ok_or_else(|| {
        format!("`{v}` is not a decimal number; write it as a string, e.g. \"0.01\"")
    })
}

fn date_bound(v: &str) -> Result<i64, String> {
    time::parse_date(v).ok_or_else(|| format!("`{v}` is not a date in YYYY-MM-DD form"))
}

impl RuleSpec {
    pub(crate) fn field(&self) -> &str {
        match self {
            RuleSpec::Required { field }
            | RuleSpec::Length { field, .. }
            | RuleSpec::Pattern { field, .. }
            | RuleSpec::OneOf { field, .. }
            | RuleSpec::Range { field, .. }
            | RuleSpec::DecimalScale { field, .. }
            | RuleSpec::NotFuture { field, .. }
            | RuleSpec::DateRange { field, .. }
            | RuleSpec::NotBefore { field, .. }
            | RuleSpec::ResidentId { field }
            | RuleSpec::CreditCode { field }
            | RuleSpec::MobilePhone { field } => field,
        }
    }

    /// Validates the parameters; every problem is reported as `(param, message)`.
    pub(crate) fn into_rule(self) -> Result<Rule, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        let field = self.field().to_owned();
        let check = match self {
            RuleSpec::Required { .. } => Check::Required,
            RuleSpec::Length { min, max, .. } => {
                if min.is_none() && max.is_none() {
                    problems.push(("min", "a length rule needs `min`, `max` or both".to_owned()));
                }
                if let (Some(a), Some(b)) = (min, max) {
                    if a > b {
                        problems.push(("min", format!("min {a} is greater than max {b}")));
                    }
                }
                Check::Length { min, max }
            }
            RuleSpec::Pattern { regex, .. } => match Regex::new(&regex) {
                Ok(re) => Check::Pattern(re),
                Err(e) => {
                    problems.push(("regex", format!("invalid regular expression: {e}")));
                    Check::Required
                }
            },
            RuleSpec::OneOf { values, .. } => {
                if values.is_empty() {
                    problems.push((
                        "values",
                        "a one_of rule needs at least one value".to_owned(),
                    ));
                }
                Check::OneOf(values)
            }
            RuleSpec::Range { min, max, .. } => {
                let mut bound = |name, v: Option<toml::Value>| match v.as_ref().map(decimal_bound) {
                    Some(Ok(d)) => Some(d),
                    Some(Err(e)) => {
                        problems.push((name, e));
                        None
                    }
                    None => None,
                };
                let (min, max) = (bound("min", min), bound("max", max));
                if min.is_none() && max.is_none() && problems.is_empty() {
                    problems.push(("min", "a range rule needs `min`, `max` or both".to_owned()));
                }
                if let (Some(a), Some(b)) = (min, max) {
                    if a > b {
                        problems.push(("min", format!("min {a} is greater than max {b}")));
                    }
                }
                Check::Range { min, max }
            }
            RuleSpec::DecimalScale { max_scale, .. } => Check::DecimalScale(max_scale),
            RuleSpec::NotFuture { tolerance, .. } => {
                let tolerance = match tolerance.as_deref().map(humantime::parse_duration) {
                    None => Duration::ZERO,
                    Some(Ok(d)) => d,
                    Some(Err(e)) => {
                        problems.push(("tolerance", format!("not a duration like \"5m\": {e}")));
                        Duration::ZERO
                    }
                };
                Check::NotFuture { tolerance }
            }
            RuleSpec::DateRange { min, max, .. } => {
                let mut bound = |name, v: Option<String>| match v.as_deref().map(date_bound) {
                    Some(Ok(d)) => Some(d),
                    Some(Err(e)) => {
                        problems.push((name, e));
                        None
                    }
                    None => None,
                };
                let (min_days, max_days) = (bound("min", min), bound("max", max));
                if min_days.is_none() && max_days.is_none() && problems.is_empty() {
                    problems.push((
                        "min",
                        "a date_range rule needs `min`, `max` or both".to_owned(),
                    ));
                }
                if let (Some(a), Some(b)) = (min_days, max_days) {
                    if a > b {
                        problems.push(("min", "min is later than max".to_owned()));
                    }
                }
                Check::DateRange { min_days, max_days }
            }
            RuleSpec::NotBefore { other, .. } => Check::NotBefore { other },
            RuleSpec::ResidentId { .. } => Check::ResidentId,
            RuleSpec::CreditCode { .. } => Check::CreditCode,
            RuleSpec::MobilePhone { .. } => Check::MobilePhone,
        };
        if problems.is_empty() {
            Ok(Rule { field, check })
        } else {
            Err(problems)
        }
    }
}
