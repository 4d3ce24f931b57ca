//! Subscriptions (共享授权): which department receives which dataset, through
//! which sink, with which fields, masked how, filtered how, for what purpose
//! and for how long. One file per subscription: `subscriptions/<id>.toml`.
//!
//! Grants are checked at delivery time, so revoking (`revoked = true`),
//! expiring (`valid_until`) or deleting the file stops delivery as soon as a
//! sink reloads the catalog.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::decimal::Decimal;
use crate::fields::{FieldInfo, FieldKind};
use crate::load::{is_ident, toml_problem, Collector};
use crate::model::{Dataset, Department};
use crate::time;

/// How a personal-data field reaches the subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Treatment {
    /// The value as published. Needs a stated purpose (every grant has one).
    Clear,
    /// Masked per tag: ID number 6+4, name surname+`*`, phone last 4, else `***`.
    Mask,
    /// A keyed pseudonym, stable for one subscriber and different between
    /// subscribers, so two departments cannot link their copies.
    Pseudonym,
}

impl Treatment {
    /// The lowercase name used in files.
    pub fn as_str(self) -> &'static str {
        match self {
            Treatment::Clear => "clear",
            Treatment::Mask => "mask",
            Treatment::Pseudonym => "pseudonym",
        }
    }
}

/// A comparison in a row filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Op {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `in [..]`
    In,
}

impl Op {
    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::In => "in",
        }
    }

    /// Whether it orders values (`<`, `<=`, `>`, `>=`).
    pub fn is_ordering(self) -> bool {
        matches!(self, Op::Lt | Op::Le | Op::Gt | Op::Ge)
    }
}

/// One row-filter predicate as written, `field OP value`: checked for syntax
/// only. [`Condition`] is the same predicate checked against its field's type.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Predicate {
    /// A top-level field of the dataset.
    pub field: String,
    /// The comparison.
    pub op: Op,
    /// A JSON literal (a bare word or a `'quoted'` word is a string); a list for `in`.
    pub value: Json,
}

/// A value of a filtered field's type: a filter's literal, or a record's value
/// (the sink reads it from the delivered JSON with [`Scalar::from_record`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    /// `null`.
    Null,
    /// A boolean.
    Bool(bool),
    /// An `int` or `long`.
    Int(i64),
    /// A `float` or `double`.
    Float(f64),
    /// A decimal, exact.
    Decimal(Decimal),
    /// A date, days since 1970-01-01.
    Date(i64),
    /// A timestamp, microseconds since the epoch.
    Timestamp(i64),
    /// A string or an enum symbol.
    Text(String),
}

impl Scalar {
    /// Compares two values of one field; `None` when they do not compare
    /// (null, or different types).
    pub fn compare(&self, other: &Scalar) -> Option<Ordering> {
        match (self, other) {
            (Scalar::Bool(a), Scalar::Bool(b)) => Some(a.cmp(b)),
            (Scalar::Int(a), Scalar::Int(b))
            | (Scalar::Date(a), Scalar::Date(b))
            | (Scalar::Timestamp(a), Scalar::Timestamp(b)) => Some(a.cmp(b)),
            (Scalar::Float(a), Scalar::Float(b)) => a.partial_cmp(b),
            (Scalar::Decimal(a), Scalar::Decimal(b)) => Some(a.cmp(b)),
            (Scalar::Text(a), Scalar::Text(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }

    /// A record's value of a field of `kind`, as the sink delivers it (dates
    /// `YYYY-MM-DD`, timestamps RFC 3339, decimals as exact strings). `None`
    /// when it is not a value of that kind.
    pub fn from_record(kind: &FieldKind, v: &Json) -> Option<Scalar> {
        Some(match (kind, v) {
            (_, Json::Null) => Scalar::Null,
            (FieldKind::Boolean, Json::Bool(b)) => Scalar::Bool(*b),
            (FieldKind::Int | FieldKind::Long, Json::Number(n)) => Scalar::Int(n.as_i64()?),
            (FieldKind::Float | FieldKind::Double, Json::Number(n)) => {
                Scalar::Float(n.as_f64().filter(|f| f.is_finite())?)
            }
            (FieldKind::Decimal { .. }, Json::String(s)) => Scalar::Decimal(Decimal::parse(s)?),
            (FieldKind::Decimal { .. }, Json::Number(n)) => {
                Scalar::Decimal(Decimal::parse(&n.to_string())?)
            }
            (FieldKind::Date, Json::String(s)) => Scalar::Date(time::parse_date(s)?),
            (FieldKind::TimestampMillis | FieldKind::TimestampMicros, Json::String(s)) => {
                Scalar::Timestamp(time::parse_rfc3339_micros(s)?)
            }
            (FieldKind::String | FieldKind::Enum(_), Json::String(s)) => Scalar::Text(s.clone()),
            _ => return None,
        })
    }

    /// A filter's literal as a value of a field of `kind`, or why it is not one.
    fn literal(kind: &FieldKind, v: &Json) -> Result<Scalar, String> {
        let text = match v {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        };
        let grouped = text.contains(',') && text.bytes().any(|b| b.is_ascii_digit());
        if grouped
            && matches!(
                kind,
                FieldKind::Int
                    | FieldKind::Long
                    | FieldKind::Float
                    | FieldKind::Double
                    | FieldKind::Decimal { .. }
            )
        {
            return Err(format!(
                "`{text}`: write {} (no digit grouping: a comma in a number is ambiguous)",
                text.replace(',', "")
            ));
        }
        match kind {
            FieldKind::Boolean => match v {
                Json::Bool(b) => Ok(Scalar::Bool(*b)),
                _ => Err(format!("`{text}`: expected true or false")),
            },
            FieldKind::Int | FieldKind::Long => {
                let bits = if *kind == FieldKind::Int {
                    "int"
                } else {
                    "long"
                };
                let (lo, hi) = if *kind == FieldKind::Int {
                    (i64::from(i32::MIN), i64::from(i32::MAX))
                } else {
                    (i64::MIN, i64::MAX)
                };
                match v {
                    Json::Number(_) => text
                        .parse::<i64>()
                        .ok()
                        .filter(|i| (lo..=hi).contains(i))
                        .map(Scalar::Int)
                        .ok_or_else(|| {
                            format!("`{text}`: expected an integer that fits in {bits}")
                        }),
                    _ => Err(format!("`{text}`: expected an integer ({bits})")),
                }
            }
            FieldKind::Float | FieldKind::Double => match v {
                Json::Number(n) => n
                    .as_f64()
                    // A float field holds f32 values: `== 0.1` means the f32 nearest 0.1.
                    .map(|f| {
                        if *kind == FieldKind::Float {
                            f64::from(f as f32)
                        } else {
                            f
                        }
                    })
                    .filter(|f| f.is_finite())
                    .map(Scalar::Float)
                    .ok_or_else(|| format!("`{text}`: out of range")),
                _ => Err(format!("`{text}`: expected a number")),
            },
            FieldKind::Decimal { precision, scale } => {
                let what = format!("decimal({precision},{scale})");
                let d = match v {
                    Json::Number(_) | Json::String(_) => Decimal::parse(&text),
                    _ => None,
                }
                .ok_or_else(|| {
                    format!("`{text}`: expected a decimal like 1000 or 1234.50 (no exponent)")
                })?;
                if !d.has_at_most_scale(*scale) {
                    return Err(format!(
                        "`{text}` has more than {scale} digits after the point; the field is {what}"
                    ));
                }
                match d.rescale(*scale) {
                    Some(r) if r.digits() <= *precision => Ok(Scalar::Decimal(d)),
                    _ => Err(format!(
                        "`{text}` has more than {precision} digits; the field is {what}"
                    )),
                }
            }
            FieldKind::Date => match v {
                Json::String(s) => time::parse_date(s).map(Scalar::Date).ok_or_else(|| {
                    format!("`{text}`: expected a date as YYYY-MM-DD, like 2024-01-05")
                }),
                _ => Err(format!(
                    "`{text}`: write the date as YYYY-MM-DD, like 2024-01-05"
                )),
            },
            FieldKind::TimestampMillis | FieldKind::TimestampMicros => {
                let us = match v {
                    Json::String(s) => time::parse_rfc3339_micros(s),
                    _ => None,
                }
                .ok_or_else(|| {
                    format!("`{text}`: expected an RFC 3339 time with its offset, like 2024-01-05T08:00:00+08:00")
                })?;
                if us % 1000 != 0 {
                    return Err(format!(
                        "`{text}`: at most millisecond precision (deliveries carry milliseconds)"
                    ));
                }
                Ok(Scalar::Timestamp(us))
            }
            FieldKind::String => match v {
                Json::String(s) => Ok(Scalar::Text(s.clone())),
                _ => Err(format!(
                    "`{text}`: the field is a string; quote the value: \"{text}\""
                )),
            },
            FieldKind::Enum(symbols) => match v {
                Json::String(s) if symbols.contains(s) => Ok(Scalar::Text(s.clone())),
                _ => Err(format!(
                    "`{text}` is not a symbol of the field (symbols: {})",
                    symbols.join(", ")
                )),
            },
            FieldKind::Null | FieldKind::Bytes | FieldKind::Complex => {
                Err("filters compare scalar fields only".to_owned())
            }
        }
    }
}

/// A row-filter predicate checked against its field's type: its literals are
/// values of that type, and its operator applies to it. A record is delivered
/// when every condition of its subscription holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Condition {
    /// The predicate as written.
    #[serde(flatten)]
    pub predicate: Predicate,
    /// The field's type (in the latest schema version that has the field).
    #[serde(skip)]
    pub kind: FieldKind,
    /// The literal as a value of that type; for `in`, each item of the list.
    #[serde(skip)]
    pub operands: Vec<Scalar>,
}

impl Condition {
    /// Checks `predicate` against its field, or says why it does not apply.
    pub(crate) fn new(predicate: Predicate, field: &FieldInfo) -> Result<Condition, String> {
        let name = &predicate.field;
        let op = predicate.op;
        let type_name = kind_name(&field.kind);
        let comparable = matches!(
            field.kind,
            FieldKind::Boolean
                | FieldKind::Int
                | FieldKind::Long
                | FieldKind::Float
                | FieldKind::Double
                | FieldKind::Decimal { .. }
                | FieldKind::Date
                | FieldKind::TimestampMillis
                | FieldKind::TimestampMicros
                | FieldKind::String
                | FieldKind::Enum(_)
        );
        if !comparable {
            return Err(format!(
                "`{name}` is {type_name}; filters compare scalar fields only"
            ));
        }
        let ordered = field.kind.is_numeric() || field.kind.is_temporal();
        if op.is_ordering() && !ordered {
            return Err(format!(
                "`{}` does not apply to `{name}` ({type_name}): use ==, != or in",
                op.as_str()
            ));
        }
        let items: Vec<&Json> = match (&predicate.value, op) {
            (Json::Array(items), Op::In) if !items.is_empty() => items.iter().collect(),
            (Json::Array(_), Op::In) => return Err("`in` needs at least one value".to_owned()),
            (Json::Array(_), _) => {
                return Err(format!(
                    "a list applies to `in` only, not `{}`",
                    op.as_str()
                ))
            }
            (v, _) => vec![v],
        };
        let mut operands = Vec::with_capacity(items.len());
        for item in items {
            if item.is_null() {
                if !field.nullable {
                    return Err(format!("`{name}` is never null"));
                }
                if op.is_ordering() {
                    return Err(format!("`{}` does not compare with null", op.as_str()));
                }
                operands.push(Scalar::Null);
                continue;
            }
            let v = Scalar::literal(&field.kind, item)
                .map_err(|e| format!("{e} (`{name}` is {type_name})"))?;
            operands.push(v);
        }
        Ok(Condition {
            kind: field.kind.clone(),
            predicate,
            operands,
        })
    }

    /// The field it tests.
    pub fn field(&self) -> &str {
        &self.predicate.field
    }

    /// The comparison.
    pub fn op(&self) -> Op {
        self.predicate.op
    }
}

/// "a decimal(18,2)", "a date", ... for messages.
fn kind_name(kind: &FieldKind) -> String {
    match kind {
        FieldKind::Null => "always null".to_owned(),
        FieldKind::Boolean => "a boolean".to_owned(),
        FieldKind::Int => "an int".to_owned(),
        FieldKind::Long => "a long".to_owned(),
        FieldKind::Float => "a float".to_owned(),
        FieldKind::Double => "a double".to_owned(),
        FieldKind::String => "a string".to_owned(),
        FieldKind::Bytes => "bytes".to_owned(),
        FieldKind::Enum(_) => "an enum".to_owned(),
        FieldKind::Date => "a date".to_owned(),
        FieldKind::TimestampMillis | FieldKind::TimestampMicros => "a timestamp".to_owned(),
        FieldKind::Decimal { precision, scale } => format!("a decimal({precision},{scale})"),
        FieldKind::Complex => "a record, array, map or union".to_owned(),
    }
}

/// Where a subscription's records go.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkSpec {
    /// Batches of CloudEvents POSTed to a URL, signed per Standard Webhooks.
    Webhook {
        /// `http://` or `https://`.
        url: String,
        /// Name of the environment variable holding the signing secret
        /// (`whsec_<base64>`), or the secret itself in `secret` (development).
        #[serde(skip)]
        secret: SecretSource,
        /// Allow loopback and private targets (refused by default: SSRF guard).
        allow_private: bool,
        /// Per-request timeout.
        #[serde(serialize_with = "humantime_serde_str::serialize")]
        timeout: Duration,
        /// Attempts per batch before its events go to `dlq.sub.<id>`.
        max_attempts: u32,
        /// Longest wait between attempts (backoff and `Retry-After` are capped by it).
        #[serde(serialize_with = "humantime_serde_str::serialize")]
        max_backoff: Duration,
        /// Events per POST.
        batch_max: usize,
    },
    /// A live table in the subscriber's PostgreSQL database.
    Postgres {
        /// `schema.table` or `table`.
        table: String,
        /// libpq connection string; the sink's `--postgres` when absent.
        conninfo: Option<String>,
    },
    /// Server-Sent Events at `/v1/subscriptions/<id>/events`.
    Sse,
    /// The masked, filtered stream in the Kafka topic `view.<id>`.
    KafkaView,
    /// Live interfaces (数据调用接口): the subscriber looks up or verifies
    /// single records against the current state (`govbus query`), instead of
    /// receiving the stream.
    Api {
        /// What the subscriber may call.
        operations: Vec<ApiOperation>,
        /// Requests per second (the burst is as large); above it: 429.
        rate: u32,
        /// Most keys or values in one batch lookup.
        batch_max: usize,
    },
    /// Rolling files in a directory.
    File {
        /// Where the files go (created if missing).
        dir: PathBuf,
        /// `jsonl` or `csv`.
        format: FileFormat,
        /// Records per file before it is closed.
        roll_records: usize,
        /// Longest a file stays open.
        #[serde(serialize_with = "humantime_serde_str::serialize")]
        roll_interval: Duration,
    },
}

impl SinkSpec {
    /// `webhook`, `postgres`, `sse`, `kafka_view` or `file`.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkSpec::Webhook { .. } => "webhook",
            SinkSpec::Postgres { .. } => "postgres",
            SinkSpec::Sse => "sse",
            SinkSpec::KafkaView => "kafka_view",
            SinkSpec::File { .. } => "file",
            SinkSpec::Api { .. } => "api",
        }
    }

    /// Whether it is served over HTTP to callers (a live stream or a live
    /// interface) rather than run as a delivery task.
    pub fn is_served(&self) -> bool {
        matches!(self, SinkSpec::Sse | SinkSpec::Api { .. })
    }
}

/// An operation a live-interface grant allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiOperation {
    /// Read records (by key, or by a declared lookup field), through the policy.
    Lookup,
    /// Compare values the caller holds with the stored ones: match or not,
    /// never a stored value.
    Verify,
}

impl ApiOperation {
    /// The name used in files, metrics and the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiOperation::Lookup => "lookup",
            ApiOperation::Verify => "verify",
        }
    }
}

mod humantime_serde_str {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// Where a webhook signing secret comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SecretSource {
    /// No secret configured: requests are not signed (refused at delivery).
    #[default]
    None,
    /// An environment variable of the sink process.
    Env(String),
    /// Written in the file (development only).
    Inline(String),
}

/// File sink formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    /// One JSON object per line.
    Jsonl,
    /// A header line and one row per record (personal data still masked).
    Csv,
}

/// Which fields a subscription receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Selection {
    /// Every field of the schema.
    All,
    /// Only these (key fields are always added).
    Include(Vec<String>),
    /// All but these (key fields may not be excluded).
    Exclude(Vec<String>),
}

/// A grant: subscriber department × dataset × sink × field policy × filter ×
/// purpose × validity window.
#[derive(Debug, Clone, Serialize)]
pub struct Subscription {
    /// `[a-z][a-z0-9_]*`, from the file name; names the consumer group,
    /// `view.<id>` and `dlq.sub.<id>`.
    pub id: String,
    /// The receiving department.
    pub subscriber: String,
    /// `<owner>.<name>`.
    pub dataset: String,
    /// Why the subscriber may have the data (recorded with every delivery).
    pub purpose: String,
    /// Start of validity, epoch milliseconds.
    pub valid_from: Option<i64>,
    /// End of validity (exclusive), epoch milliseconds.
    pub valid_until: Option<i64>,
    /// A revoked grant delivers nothing.
    pub revoked: bool,
    /// Fields delivered.
    pub selection: Selection,
    /// Treatment of each delivered personal-data field (default: mask).
    pub treatments: BTreeMap<String, Treatment>,
    /// Row filter; empty delivers every record.
    pub filter: Vec<Condition>,
    /// Delivery target.
    pub sink: SinkSpec,
    /// Short hash of dataset, selection, treatments and filter: recorded in
    /// the delivery ledger, so that every delivery names the policy it used.
    pub policy_version: String,
    /// The file it was loaded from.
    pub file: PathBuf,
}

impl Subscription {
    /// Whether the grant allows delivery at `now_millis`.
    pub fn is_active(&self, now_millis: i64) -> bool {
        !self.revoked
            && self.valid_from.is_none_or(|f| now_millis >= f)
            && self.valid_until.is_none_or(|u| now_millis < u)
    }

    /// Why the grant does not allow delivery at `now_millis`, if it does not.
    pub fn inactive_reason(&self, now_millis: i64) -> Option<&'static str> {
        if self.revoked {
            Some("revoked")
        } else if self.valid_from.is_some_and(|f| now_millis < f) {
            Some("not yet valid")
        } else if self.valid_until.is_some_and(|u| now_millis >= u) {
            Some("expired")
        } else {
            None
        }
    }

    /// Whether the grant names `field` in its `include` list.
    pub fn includes(&self, field: &str) -> bool {
        matches!(&self.selection, Selection::Include(f) if f.iter().any(|x| x == field))
    }

    /// Whether `field` is delivered. Key fields always are.
    pub fn delivers(&self, field: &str, key: &[String]) -> bool {
        if key.iter().any(|k| k == field) {
            return true;
        }
        match &self.selection {
            Selection::All => true,
            Selection::Include(f) => f.iter().any(|x| x == field),
            Selection::Exclude(f) => !f.iter().any(|x| x == field),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscriptionSpec {
    subscriber: String,
    dataset: String,
    purpose: String,
    valid_from: Option<String>,
    valid_until: Option<String>,
    #[serde(default)]
    revoked: bool,
    #[serde(default)]
    fields: FieldsSpec,
    #[serde(default)]
    filter: Vec<String>,
    sink: SinkSpecFile,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FieldsSpec {
    include: Option<Vec<String>>,
    exclude: Option<Vec<String>>,
    #[serde(default)]
    treatment: BTreeMap<String, Treatment>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SinkSpecFile {
    #[serde(rename = "type")]
    kind: String,
    url: Option<String>,
    secret: Option<String>,
    secret_env: Option<String>,
    #[serde(default)]
    allow_private: bool,
    timeout: Option<String>,
    max_attempts: Option<u32>,
    max_backoff: Option<String>,
    batch_max: Option<usize>,
    table: Option<String>,
    conninfo: Option<String>,
    dir: Option<PathBuf>,
    format: Option<FileFormat>,
    roll_records: Option<usize>,
    roll_interval: Option<String>,
    operations: Option<Vec<String>>,
    rate: Option<u32>,
}

/// Parses `YYYY-MM-DD` (midnight UTC) or RFC 3339 into epoch milliseconds.
fn parse_instant(text: &str) -> Option<i64> {
    if let Some(days) = time::parse_date(text) {
        return Some(days * time::MILLIS_PER_DAY);
    }
    time::parse_rfc3339_micros(text).map(|us| us.div_euclid(1000))
}

/// The operators, longest first so that `<=` is not read as `<`.
const OPS: [(&str, Op); 7] = [
    ("==", Op::Eq),
    ("!=", Op::Ne),
    ("<=", Op::Le),
    (">=", Op::Ge),
    ("<", Op::Lt),
    (">", Op::Gt),
    ("in ", Op::In),
];

/// Why a row-filter predicate does not parse; every variant names the
/// predicate (or the value) as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// No field name at the start.
    #[error("`{0}`: expected `field OP value` (OP: == != < <= > >= in)")]
    NoField(String),
    /// No operator after the field name.
    #[error("`{text}`: expected an operator after `{field}` (== != < <= > >= in)")]
    NoOperator { text: String, field: String },
    /// An operator followed by more operator characters (`===`, `<>`).
    #[error("`{text}`: `{written}` is not an operator (== != < <= > >= in)")]
    NotAnOperator { text: String, written: String },
    /// Nothing after the operator.
    #[error("`{text}`: missing the value after `{op}`")]
    NoValue { text: String, op: &'static str },
    /// The value is not a filter value.
    #[error("`{text}`: {why}")]
    BadValue { text: String, why: ValueError },
    /// `in` with a single value.
    #[error("`{0}`: `in` needs a list, like [\"a\", \"b\"]")]
    InNeedsList(String),
}

/// Why a filter's value is not one (within [`FilterError::BadValue`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// A quote left open or a quote inside a quoted word.
    #[error("`{0}`: unbalanced quotes")]
    UnbalancedQuotes(String),
    /// A JSON object.
    #[error("`{0}`: an object is not a filter value")]
    Object(String),
    /// A list holding a list or an object.
    #[error("`{0}`: a list holds plain values only")]
    Nested(String),
    /// `[` that does not start a JSON list.
    #[error("`{0}`: a list is written in JSON, like [\"a\", \"b\"] or [1, 2]")]
    BadList(String),
    /// A bare word with spaces or symbols.
    #[error("`{0}`: quote a value with spaces or symbols: \"...\"")]
    NeedsQuotes(String),
}

/// Parses one row-filter predicate: `field OP value`, OP one of
/// `== != < <= > >= in`. The value is a JSON literal (`1000`, `"text"`,
/// `true`, `null`, `["a", "b"]`), a `'quoted'` string, or a bare word of
/// letters, digits and `_ - . : +` (`ACTIVE`, `2024-01-05`). This checks
/// syntax only; `catalog check` checks the value against the field's type.
pub fn parse_predicate(text: &str) -> Result<Predicate, FilterError> {
    let text = text.trim();
    let field_end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    let field = &text[..field_end];
    if field.is_empty() {
        return Err(FilterError::NoField(text.to_owned()));
    }
    let rest = text[field_end..].trim_start();
    let Some((sym, op)) = OPS.iter().find(|(s, _)| rest.starts_with(s)) else {
        return Err(FilterError::NoOperator {
            text: text.to_owned(),
            field: field.to_owned(),
        });
    };
    let literal = rest[sym.len()..].trim();
    if let Some(c) = literal.chars().next().filter(|c| "=<>!".contains(*c)) {
        return Err(FilterError::NotAnOperator {
            text: text.to_owned(),
            written: format!("{}{c}", sym.trim()),
        });
    }
    if literal.is_empty() {
        return Err(FilterError::NoValue {
            text: text.to_owned(),
            op: op.as_str(),
        });
    }
    let value = parse_literal(literal).map_err(|why| FilterError::BadValue {
        text: text.to_owned(),
        why,
    })?;
    if *op == Op::In && !value.is_array() {
        return Err(FilterError::InNeedsList(text.to_owned()));
    }
    Ok(Predicate {
        field: field.to_owned(),
        op: *op,
        value,
    })
}

/// A filter value: JSON, `'quoted'`, or a bare word. Anything else — a quote
/// left open, an object, a word with spaces or symbols — is refused rather
/// than guessed at.
fn parse_literal(literal: &str) -> Result<Json, ValueError> {
    let owned = || literal.to_owned();
    if let Some(inner) = literal.strip_prefix('\'') {
        return match inner.strip_suffix('\'') {
            Some(word) if !word.contains('\'') => Ok(Json::String(word.to_owned())),
            _ => Err(ValueError::UnbalancedQuotes(owned())),
        };
    }
    match serde_json::from_str::<Json>(literal) {
        Ok(Json::Object(_)) => Err(ValueError::Object(owned())),
        Ok(Json::Array(items)) if items.iter().any(|i| i.is_array() || i.is_object()) => {
            Err(ValueError::Nested(owned()))
        }
        Ok(v) => Ok(v),
        Err(_) if literal.contains(['"', '\'']) => Err(ValueError::UnbalancedQuotes(owned())),
        Err(_) if literal.starts_with('[') => Err(ValueError::BadList(owned())),
        Err(_) => {
            let bare = literal
                .chars()
                .all(|c| c.is_alphanumeric() || "_-.:+,".contains(c));
            if bare {
                Ok(Json::String(owned()))
            } else {
                Err(ValueError::NeedsQuotes(owned()))
            }
        }
    }
}

fn duration(
    c: &mut Collector,
    file: &Path,
    path: &str,
    text: Option<&str>,
    default: Duration,
) -> Duration {
    match text {
        None => default,
        Some(t) => humantime::parse_duration(t).unwrap_or_else(|e| {
            c.push(
                file,
                path,
                format!("`{t}` is not a duration like `5s`: {e}"),
            );
            default
        }),
    }
}

fn sink_spec(c: &mut Collector, file: &Path, s: SinkSpecFile) -> Option<SinkSpec> {
    let mut unused = |name: &str, present: bool, kind: &str| {
        if present {
            c.push(
                file,
                format!("sink.{name}"),
                format!("`{name}` does not apply to a `{kind}` sink"),
            );
        }
    };
    let kind = s.kind.as_str();
    if kind != "api" {
        unused("operations", s.operations.is_some(), kind);
        unused("rate", s.rate.is_some(), kind);
    }
    if kind != "webhook" && kind != "api" {
        unused("batch_max", s.batch_max.is_some(), kind);
    }
    if kind != "webhook" {
        for (name, present) in [
            ("url", s.url.is_some()),
            ("secret", s.secret.is_some()),
            ("secret_env", s.secret_env.is_some()),
            ("allow_private", s.allow_private),
            ("timeout", s.timeout.is_some()),
            ("max_attempts", s.max_attempts.is_some()),
            ("max_backoff", s.max_backoff.is_some()),
        ] {
            unused(name, present, kind);
        }
    }
    if kind != "postgres" {
        unused("table", s.table.is_some(), kind);
        unused("conninfo", s.conninfo.is_some(), kind);
    }
    if kind != "file" {
        for (name, present) in [
            ("dir", s.dir.is_some()),
            ("format", s.format.is_some()),
            ("roll_records", s.roll_records.is_some()),
            ("roll_interval", s.roll_interval.is_some()),
        ] {
            unused(name, present, kind);
        }
    }
    match kind {
        "webhook" => {
            let url = s.url.unwrap_or_default();
            if let Err(why) = webhook_target(&url, s.allow_private) {
                c.push(file, "sink.url", format!("`{}`: {why}", url.escape_debug()));
            }
            let secret = match (s.secret, s.secret_env) {
                (Some(_), Some(_)) => {
                    c.push(
                        file,
                        "sink.secret",
                        "give `secret` or `secret_env`, not both",
                    );
                    SecretSource::None
                }
                (Some(v), None) => SecretSource::Inline(v),
                (None, Some(e)) => SecretSource::Env(e),
                (None, None) => {
                    c.push(
                        file,
                        "sink.secret_env",
                        "a webhook needs a signing secret: `secret_env = \"VAR\"` (or `secret = \"whsec_...\"` for development)",
                    );
                    SecretSource::None
                }
            };
            let max_attempts = s.max_attempts.unwrap_or(8);
            if max_attempts == 0 {
                c.push(file, "sink.max_attempts", "must be at least 1");
            }
            let batch_max = s.batch_max.unwrap_or(500);
            if batch_max == 0 || batch_max > 10_000 {
                c.push(file, "sink.batch_max", "must be 1..=10000");
            }
            Some(SinkSpec::Webhook {
                url,
                secret,
                allow_private: s.allow_private,
                timeout: duration(
                    c,
                    file,
                    "sink.timeout",
                    s.timeout.as_deref(),
                    Duration::from_secs(10),
                ),
                max_attempts,
                max_backoff: duration(
                    c,
                    file,
                    "sink.max_backoff",
                    s.max_backoff.as_deref(),
                    Duration::from_secs(60),
                ),
                batch_max,
            })
        }
        "postgres" => {
            let table = s.table.unwrap_or_default();
            let ok = !table.is_empty()
                && table.split('.').count() <= 2
                && table.split('.').all(is_ident);
            if !ok {
                c.push(
                    file,
                    "sink.table",
                    format!("`{table}`: a PostgreSQL sink needs `table = \"[schema.]name\"`, each part [a-z][a-z0-9_]*"),
                );
            }
            Some(SinkSpec::Postgres {
                table,
                conninfo: s.conninfo,
            })
        }
        "sse" => Some(SinkSpec::Sse),
        "kafka_view" => Some(SinkSpec::KafkaView),
        "api" => {
            let mut operations = Vec::new();
            for op in s.operations.unwrap_or_default() {
                match op.as_str() {
                    "lookup" => operations.push(ApiOperation::Lookup),
                    "verify" => operations.push(ApiOperation::Verify),
                    other => c.push(
                        file,
                        "sink.operations",
                        format!(
                            "unknown operation `{}`: use lookup, verify",
                            other.escape_debug()
                        ),
                    ),
                }
            }
            operations.sort();
            operations.dedup();
            if operations.is_empty() {
                c.push(
                    file,
                    "sink.operations",
                    "an api grant names what it allows: `operations = [\"lookup\", \"verify\"]` (or one of them)",
                );
            }
            let rate = s.rate.unwrap_or(20);
            if rate == 0 || rate > 100_000 {
                c.push(file, "sink.rate", "requests per second, 1..=100000");
            }
            let batch_max = s.batch_max.unwrap_or(100);
            if batch_max == 0 || batch_max > 1000 {
                c.push(file, "sink.batch_max", "keys per batch lookup, 1..=1000");
            }
            Some(SinkSpec::Api {
                operations,
                rate,
                batch_max,
            })
        }
        "file" => {
            let Some(dir) = s.dir else {
                c.push(file, "sink.dir", "a file sink needs `dir`");
                return None;
            };
            if let Err(why) = contained_dir(&dir) {
                c.push(
                    file,
                    "sink.dir",
                    format!("`{}`: {why}", dir.display().to_string().escape_debug()),
                );
            }
            let roll_records = s.roll_records.unwrap_or(10_000);
            if roll_records == 0 {
                c.push(file, "sink.roll_records", "must be at least 1");
            }
            Some(SinkSpec::File {
                dir,
                format: s.format.unwrap_or(FileFormat::Jsonl),
                roll_records,
                roll_interval: duration(
                    c,
                    file,
                    "sink.roll_interval",
                    s.roll_interval.as_deref(),
                    Duration::from_secs(60),
                ),
            })
        }
        other => {
            c.push(
                file,
                "sink.type",
                format!(
                    "unknown sink type `{other}`: use webhook, postgres, sse, kafka_view, file or api"
                ),
            );
            None
        }
    }
}

/// Why a file sink's `dir` is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DirError {
    #[error("a file sink's `dir` must be relative to the sink's working directory, not absolute; write e.g. `dir = \"var/deliveries/<subscription>\"` and start the sink where the files belong")]
    Absolute,
    #[error("a file sink's `dir` must stay inside the sink's working directory: `..` here leaves it; name a directory below it, e.g. `dir = \"var/deliveries/<subscription>\"`")]
    Leaves,
    #[error("a file sink's `dir` must not be empty; name a directory below the sink's working directory")]
    Empty,
}

/// Checks a file sink's `dir`: relative to the sink's working directory
/// (its base) and still inside it after `.` and `..` are resolved, so a
/// grant cannot make the sink write over files elsewhere on the host.
pub(crate) fn contained_dir(dir: &Path) -> Result<(), DirError> {
    use std::path::Component;
    let mut depth = 0usize;
    for part in dir.components() {
        match part {
            Component::Prefix(_) | Component::RootDir => return Err(DirError::Absolute),
            Component::CurDir => {}
            Component::ParentDir => depth = depth.checked_sub(1).ok_or(DirError::Leaves)?,
            Component::Normal(_) => depth += 1,
        }
    }
    if dir.as_os_str().is_empty() {
        return Err(DirError::Empty);
    }
    Ok(())
}

const NEED_URL: &str =
    "a webhook needs an http:// or https:// URL with a host, e.g. `https://receiver.example.gov.cn/govbus`";

/// Why a webhook `url` is refused by `catalog check`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TargetError {
    /// Not a URL the webhook client can parse (the parser's reason).
    #[error("not a URL the webhook client can parse ({0}); {NEED_URL}")]
    Unparsable(String),
    /// Not http(s), or no host.
    #[error("{NEED_URL}")]
    NotHttp,
    /// The host holds characters no DNS name or address has.
    #[error("the host `{0}` is neither a DNS name nor an IP address; {NEED_URL}")]
    NotAHost(String),
    /// Brackets around something that is not an IPv6 address.
    #[error("`[{0}]` is not an IPv6 address; {NEED_URL}")]
    BadIpv6(String),
    /// All parts numeric but out of range: resolvers and URL parsers
    /// disagree on it.
    #[error("`{0}` looks like an IPv4 address but is not a valid one; {NEED_URL}")]
    BadIpv4(String),
    /// A literal address the sink's SSRF guard refuses.
    #[error("{0} is a loopback, private, link-local, unique-local or otherwise non-public address, which the webhook sink's SSRF guard refuses at delivery time; point the webhook at the receiver's public address, or set `allow_private = true` in [sink] if this target is trusted (host names are checked only when the sink resolves them)")]
    NonPublic(std::net::IpAddr),
}

/// Checks a webhook `url` the way the sink will see it — parsed by the
/// same URL parser as the sink's HTTP client (`http::Uri`): `http://` or
/// `https://` with a host, and — unless `allow_private` — a host that is not
/// a literal loopback, private, link-local, unique-local or otherwise
/// non-public address in any spelling (`127.0.0.1`, `2130706433`,
/// `0x7f.1`, `0177.0.0.1`, `[::1]`, `[::ffff:10.0.0.1]`).
/// The sink's SSRF guard refuses those at delivery time; here they are
/// refused at `catalog check` instead. A host *name* (`localhost`
/// included) can only be checked when the sink resolves it, so names pass
/// here and are still refused at run time if they resolve to such an
/// address.
pub(crate) fn webhook_target(url: &str, allow_private: bool) -> Result<(), TargetError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| TargetError::Unparsable(e.to_string()))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(TargetError::NotHttp);
    }
    let host = uri.host().unwrap_or_default();
    if host.is_empty() {
        return Err(TargetError::NotHttp);
    }
    let ip = if let Some(v6) = host.strip_prefix('[') {
        let inner = v6.strip_suffix(']').unwrap_or(v6);
        let bare = inner.split('%').next().unwrap_or_default();
        match bare.parse::<std::net::Ipv6Addr>() {
            Ok(v6) => Some(std::net::IpAddr::V6(v6)),
            Err(_) => return Err(TargetError::BadIpv6(inner.escape_debug().to_string())),
        }
    } else {
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return Err(TargetError::NotAHost(host.escape_debug().to_string()));
        }
        let lower = host.to_ascii_lowercase();
        let name = lower.strip_suffix('.').unwrap_or(&lower);
        match ipv4_literal(name) {
            Ipv4Literal::Address(v4) => Some(std::net::IpAddr::V4(v4)),
            Ipv4Literal::Invalid => return Err(TargetError::BadIpv4(name.to_owned())),
            Ipv4Literal::Name => None,
        }
    };
    match ip {
        Some(ip) if !allow_private && !is_public_ip(ip) => Err(TargetError::NonPublic(ip)),
        _ => Ok(()),
    }
}

enum Ipv4Literal {
    Address(std::net::Ipv4Addr),
    /// All parts numeric, but out of range: resolvers and URL parsers
    /// disagree on it, so it is refused.
    Invalid,
    /// A host name.
    Name,
}

/// An IPv4 host in every spelling `inet_aton` and URL parsers accept: one to
/// four parts, each decimal, octal (leading `0`) or hex (`0x`), the last
/// filling the remaining bytes (`127.1`, `2130706433`, `0x7f.1`).
fn ipv4_literal(host: &str) -> Ipv4Literal {
    let parts: Vec<&str> = host.split('.').collect();
    let numbers: Vec<Option<u64>> = parts
        .iter()
        .map(|p| {
            let (digits, radix) = if let Some(h) = p.strip_prefix("0x") {
                (h, 16)
            } else if p.len() > 1 && p.starts_with('0') {
                (&p[1..], 8)
            } else {
                (*p, 10)
            };
            if radix == 16 && digits.is_empty() {
                return Some(0);
            }
            if digits.is_empty() || !digits.chars().all(|ch| ch.is_digit(radix)) {
                return None;
            }
            Some(u64::from_str_radix(digits, radix).unwrap_or(u64::MAX))
        })
        .collect();
    if numbers.last().is_none_or(Option::is_none) {
        // The last part decides: a name's last label is never all digits.
        return Ipv4Literal::Name;
    }
    if parts.len() > 4 || numbers.iter().any(Option::is_none) {
        return Ipv4Literal::Invalid;
    }
    let numbers: Vec<u64> = numbers.into_iter().flatten().collect();
    let (last, init) = numbers.split_last().unwrap_or((&0, &[]));
    if init.iter().any(|n| *n > 255) || *last >= 1u64 << (8 * (5 - numbers.len())) {
        return Ipv4Literal::Invalid;
    }
    let mut value = *last;
    for (i, n) in init.iter().enumerate() {
        value |= n << (8 * (3 - i));
    }
    Ipv4Literal::Address(std::net::Ipv4Addr::from(u32::try_from(value).unwrap_or(0)))
}

/// Whether `ip` is a public unicast address: the one classification, used
/// by `catalog check` and by the webhook sink's SSRF guard at delivery time.
pub fn is_public_ip(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 198 && (o[1] == 18 || o[1] == 19))
                || o[0] >= 240)
        }
        std::net::IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_ip(std::net::IpAddr::V4(v4));
            }
            let s = v6.segments();
            let o = v6.octets();
            let embedded = |a: usize| {
                std::net::IpAddr::V4(std::net::Ipv4Addr::new(o[a], o[a + 1], o[a + 2], o[a + 3]))
            };
            // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) reach the IPv4
            // address they embed: public only if that address is.
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_public_ip(embedded(12));
            }
            if s[0] == 0x2002 {
                return is_public_ip(embedded(2));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // IPv4-compatible (::a.b.c.d, deprecated): never a public target.
                || s[..6] == [0; 6]
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                // Site-local (fec0::/10, deprecated).
                || (s[0] & 0xffc0) == 0xfec0
                || (s[0] == 0x2001 && s[1] == 0x0db8))
        }
    }
}

/// Loads `subscriptions/<id>.toml`, cross-checked against the departments
/// and datasets.
pub(crate) fn load_subscription(
    root: &Path,
    id: &str,
    text: &str,
    departments: &BTreeMap<String, Department>,
    datasets: &BTreeMap<String, Dataset>,
    declared: &std::collections::BTreeSet<String>,
    c: &mut Collector,
) -> Option<Subscription> {
    let file = root.join("subscriptions").join(format!("{id}.toml"));
    let before = c.problems.len();
    if !is_ident(id) {
        c.push(
            &file,
            "-",
            "a subscription file is named <id>.toml, id [a-z][a-z0-9_]*",
        );
        return None;
    }
    let spec: SubscriptionSpec = match toml::from_str(text) {
        Ok(s) => s,
        Err(e) => {
            toml_problem(c, &file, &e);
            return None;
        }
    };
    if !departments.contains_key(&spec.subscriber) {
        c.push(
            &file,
            "subscriber",
            format!(
                "`{}` is not a department in departments.toml",
                spec.subscriber
            ),
        );
    }
    let Some(ds) = datasets.get(&spec.dataset) else {
        // A dataset that exists but did not load has its own problems reported.
        if !declared.contains(&spec.dataset) {
            c.push(
                &file,
                "dataset",
                format!("`{}` is not a dataset in the catalog", spec.dataset),
            );
        }
        return None;
    };
    if spec.purpose.trim().is_empty() {
        c.push(
            &file,
            "purpose",
            "every grant states its purpose (it is recorded with every delivery)",
        );
    }
    let mut instant = |name: &str, v: &Option<String>| {
        v.as_deref().and_then(|t| {
            let parsed = parse_instant(t);
            if parsed.is_none() {
                c.push(
                    &file,
                    name,
                    format!("`{t}`: expected YYYY-MM-DD or an RFC 3339 time"),
                );
            }
            parsed
        })
    };
    let valid_from = instant("valid_from", &spec.valid_from);
    let valid_until = instant("valid_until", &spec.valid_until);
    if let (Some(f), Some(u)) = (valid_from, valid_until) {
        if u <= f {
            c.push(&file, "valid_until", "must be after valid_from");
        }
    }

    // A field of any version: records written under an older version still
    // carry fields the latest one dropped, and a policy may name them.
    let mut schema_fields: Vec<String> = Vec::new();
    for v in &ds.versions {
        if let apache_avro::Schema::Record(r) = &v.schema {
            for f in &r.fields {
                if !schema_fields.contains(&f.name) {
                    schema_fields.push(f.name.clone());
                }
            }
        }
    }
    let known = |f: &str| schema_fields.iter().any(|x| x == f);
    let check_fields = |c: &mut Collector, path: &str, fields: &[String]| {
        for f in fields {
            if !known(f) {
                c.push(
                    &file,
                    path,
                    format!(
                        "`{f}` is not a field of {} (fields: {})",
                        ds.name,
                        schema_fields.join(", ")
                    ),
                );
            }
        }
    };
    let selection = match (spec.fields.include, spec.fields.exclude) {
        (Some(_), Some(_)) => {
            c.push(&file, "fields", "give `include` or `exclude`, not both");
            Selection::All
        }
        (Some(inc), None) => {
            check_fields(c, "fields.include", &inc);
            Selection::Include(inc)
        }
        (None, Some(exc)) => {
            check_fields(c, "fields.exclude", &exc);
            for k in &ds.key {
                if exc.contains(k) {
                    c.push(
                        &file,
                        "fields.exclude",
                        format!("`{k}` is a key field and is always delivered; give it `pseudonym` treatment instead"),
                    );
                }
            }
            Selection::Exclude(exc)
        }
        (None, None) => Selection::All,
    };
    let mut treatments = BTreeMap::new();
    for (field, t) in &spec.fields.treatment {
        if !known(field) {
            check_fields(c, "fields.treatment", std::slice::from_ref(field));
        } else if !ds.personal_data.contains_key(field) {
            c.push(
                &file,
                format!("fields.treatment.{field}"),
                format!("`{field}` is not tagged as personal data in {}; only tagged fields take a treatment", ds.name),
            );
        }
        treatments.insert(field.clone(), *t);
    }
    // A key identifies a record: masked, many people share one value (an ID
    // number's 6+4 characters), so a table or view keyed by it overwrites
    // one person's record with another's, and an event subscriber cannot
    // tell them apart. A personal key field is therefore pseudonymised
    // unless the grant says `clear`, and `mask` on it is refused. A live
    // interface keeps nothing keyed by it and may not pseudonymise what
    // callers look records up by (below): there the default stays `mask`.
    let live_interface = spec.sink.kind == "api";
    for field in &ds.key {
        if !ds.personal_data.contains_key(field) || live_interface {
            continue;
        }
        if treatments.get(field) == Some(&Treatment::Mask) {
            c.push(
                &file,
                format!("fields.treatment.{field}"),
                format!("`{field}` is the key of {}: masked, many records share one key value and overwrite each other in the subscriber's table; use `pseudonym` (the default for a key) or `clear`", ds.name),
            );
        }
        treatments
            .entry(field.clone())
            .or_insert(Treatment::Pseudonym);
    }
    for field in ds.personal_data.keys() {
        treatments.entry(field.clone()).or_insert(Treatment::Mask);
    }
    let mut filter = Vec::new();
    for (i, p) in spec.filter.iter().enumerate() {
        let path = format!("filter[{i}]");
        let pred = match parse_predicate(p) {
            Ok(pred) => pred,
            Err(e) => {
                c.push(&file, path, e.to_string());
                continue;
            }
        };
        // The field as the latest version that has it defines it.
        let schema = ds.versions.iter().rev().find_map(|v| match &v.schema {
            apache_avro::Schema::Record(r) => r
                .fields
                .iter()
                .find(|f| f.name == pred.field)
                .map(|f| &f.schema),
            _ => None,
        });
        let Some(schema) = schema else {
            check_fields(c, &path, std::slice::from_ref(&pred.field));
            continue;
        };
        if !crate::fields::filterable(schema) {
            c.push(
                &file,
                path,
                format!(
                    "`{}`: a row filter cannot compare a local or nanosecond timestamp (no time zone, or no comparable value); filter on another field",
                    pred.field
                ),
            );
            continue;
        }
        let info = crate::fields::describe(schema);
        match Condition::new(pred, &info) {
            Ok(cond) => filter.push(cond),
            Err(e) => c.push(&file, path, format!("`{}`: {e}", p.trim())),
        }
    }
    let sink = sink_spec(c, &file, spec.sink);
    if matches!(sink, Some(SinkSpec::Api { .. })) {
        // A caller asks by the clear key or lookup value it holds; answering
        // with its pseudonym would hand it the clear ↔ pseudonym table that
        // pseudonyms exist to withhold.
        let asked_by = ds.key.iter().chain(ds.lookup.iter().map(|l| &l.field));
        for field in asked_by {
            if treatments.get(field) == Some(&Treatment::Pseudonym) {
                c.push(
                    &file,
                    format!("fields.treatment.{field}"),
                    format!("`{field}` is what callers of a live interface look records up by: it cannot be pseudonymised (the answer would link clear values to pseudonyms); use mask or clear"),
                );
            }
        }
    }
    if c.problems.len() > before {
        return None;
    }
    let mut h = Sha256::new();
    let policy = serde_json::json!({
        "dataset": spec.dataset,
        "selection": selection,
        "treatments": treatments,
        "filter": filter,
    });
    h.update(policy.to_string().as_bytes());
    let mut policy_version = String::with_capacity(12);
    for b in &h.finalize()[..6] {
        let _ = write!(policy_version, "{b:02x}");
    }
    Some(Subscription {
        id: id.to_owned(),
        subscriber: spec.subscriber,
        dataset: spec.dataset,
        purpose: spec.purpose,
        valid_from,
        valid_until,
        revoked: spec.revoked,
        selection,
        treatments,
        filter,
        sink: sink?,
        policy_version,
        file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicates() {
        let p = parse_predicate("amount >= 1000").unwrap();
        assert_eq!((p.field.as_str(), p.op), ("amount", Op::Ge));
        assert_eq!(p.value, serde_json::json!(1000));
        let p = parse_predicate("gender == 'FEMALE'").unwrap();
        assert_eq!(p.value, serde_json::json!("FEMALE"));
        let p = parse_predicate("gender == FEMALE").unwrap();
        assert_eq!(p.value, serde_json::json!("FEMALE"));
        let p = parse_predicate(r#"category in ["a", "b"]"#).unwrap();
        assert_eq!(p.op, Op::In);
        let t = |s: &str| s.to_owned();
        assert_eq!(
            parse_predicate("== 1"),
            Err(FilterError::NoField(t("== 1")))
        );
        assert_eq!(
            parse_predicate("x ~ 1"),
            Err(FilterError::NoOperator {
                text: t("x ~ 1"),
                field: t("x")
            })
        );
        assert_eq!(
            parse_predicate("x in 1"),
            Err(FilterError::InNeedsList(t("x in 1")))
        );
        assert_eq!(
            parse_predicate("x =="),
            Err(FilterError::NoValue {
                text: t("x =="),
                op: "=="
            })
        );
        assert_eq!(
            parse_predicate("x === 1"),
            Err(FilterError::NotAnOperator {
                text: t("x === 1"),
                written: t("===")
            })
        );
        let bad = |text: &str, why| Err(FilterError::BadValue { text: t(text), why });
        for (text, why) in [
            ("x == 'a", ValueError::UnbalancedQuotes(t("'a"))),
            ("x == {}", ValueError::Object(t("{}"))),
            ("x in [[1]]", ValueError::Nested(t("[[1]]"))),
            ("x in [a]", ValueError::BadList(t("[a]"))),
            ("x == a b", ValueError::NeedsQuotes(t("a b"))),
        ] {
            assert_eq!(parse_predicate(text), bad(text, why), "{text}");
        }
        assert_eq!(
            parse_predicate("x == a b").unwrap_err().to_string(),
            "`x == a b`: `a b`: quote a value with spaces or symbols: \"...\""
        );
    }

    #[test]
    fn webhook_targets_are_parsed_as_the_sink_parses_them() {
        use TargetError as T;
        let private = |ip: &str| Err(T::NonPublic(ip.parse().unwrap()));
        // The parser's own words are not pinned, only that it refused.
        let unparsable = T::Unparsable(String::new());
        let checked = |url: &str| match webhook_target(url, false) {
            Err(T::Unparsable(_)) => Err(T::Unparsable(String::new())),
            other => other,
        };
        let cases: &[(&str, Result<(), TargetError>)] = &[
            ("https://receiver.example.gov.cn/govbus", Ok(())),
            ("HTTPS://Receiver.Example.gov.cn:8443/a?b#c", Ok(())),
            ("http://user:pw@receiver.example.gov.cn/", Ok(())),
            ("http://8.8.8.8/", Ok(())),
            ("http://[2606:4700::1111]:8080/", Ok(())),
            ("http://localhost/", Ok(())),
            ("http://127.0.0.1/", private("127.0.0.1")),
            ("http://127.1/", private("127.0.0.1")),
            ("http://2130706433/", private("127.0.0.1")),
            ("http://0x7f.1/", private("127.0.0.1")),
            ("http://0177.0.0.1/", private("127.0.0.1")),
            ("http://10.0.0.1.:80/", private("10.0.0.1")),
            ("http://public.example@10.0.0.1/", private("10.0.0.1")),
            ("http://[::1]/", private("::1")),
            ("http://[::ffff:10.0.0.1]/", private("::ffff:10.0.0.1")),
            ("http://[fe80::1%25eth0]/", private("fe80::1")),
            ("http://256.0.0.1/", Err(T::BadIpv4("256.0.0.1".into()))),
            ("http://0x100000000/", Err(T::BadIpv4("0x100000000".into()))),
            ("http://[not-v6]/", Err(T::BadIpv6("not-v6".into()))),
            ("http://ex_ample.org/", Ok(())),
            ("http://ex%41mple.org/", Err(unparsable.clone())),
            ("http://exa mple.org/", Err(unparsable.clone())),
            ("http://exa\\mple.org/", Err(unparsable.clone())),
            ("ftp://example.org/", Err(T::NotHttp)),
            ("http:///path", Err(unparsable.clone())),
            ("http://:80/path", Err(T::NotHttp)),
            ("example.org", Err(T::NotHttp)),
            ("", Err(unparsable.clone())),
        ];
        for (url, want) in cases {
            assert_eq!(&checked(url), want, "{url}");
        }
        assert_eq!(webhook_target("http://127.0.0.1:9/", true), Ok(()));
        assert_eq!(
            webhook_target("http://256.0.0.1/", true),
            Err(T::BadIpv4("256.0.0.1".into()))
        );
    }

    #[test]
    fn file_sink_dirs_stay_below_the_base() {
        assert_eq!(contained_dir(Path::new("var/deliveries/x")), Ok(()));
        assert_eq!(contained_dir(Path::new("a/../b")), Ok(()));
        assert_eq!(contained_dir(Path::new("/var/x")), Err(DirError::Absolute));
        assert_eq!(contained_dir(Path::new("a/../../b")), Err(DirError::Leaves));
        assert_eq!(contained_dir(Path::new("")), Err(DirError::Empty));
    }

    #[test]
    fn instants() {
        assert_eq!(parse_instant("1970-01-02"), Some(86_400_000));
        assert_eq!(parse_instant("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_instant("yesterday"), None);
    }
}
