//! What kind of value a top-level field holds, seen through nullable unions
//! and logical types. Rules and keys are checked against it.

use apache_avro::schema::Schema;

/// The kind of a top-level field's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldKind {
    /// `null` only.
    Null,
    /// `boolean`.
    Boolean,
    /// `int` without a logical type.
    Int,
    /// `long` without a logical type.
    Long,
    /// `float`.
    Float,
    /// `double`.
    Double,
    /// `string` (also `uuid` on a string).
    String,
    /// `bytes` or `fixed` without a logical type.
    Bytes,
    /// `enum` with its symbols.
    Enum(Vec<String>),
    /// `int` / `date`: days since the epoch.
    Date,
    /// `long` / `timestamp-millis` (or local-timestamp-millis).
    TimestampMillis,
    /// `long` / `timestamp-micros` (or local-timestamp-micros).
    TimestampMicros,
    /// `decimal` on bytes or fixed.
    Decimal {
        /// Total digits.
        precision: u32,
        /// Digits after the point.
        scale: u32,
    },
    /// A record, array, map, multi-branch union or other type rules cannot address.
    Complex,
}

impl FieldKind {
    /// Whether a range rule applies.
    pub fn is_numeric(&self) -> bool {
        matches!(
            self,
            FieldKind::Int
                | FieldKind::Long
                | FieldKind::Float
                | FieldKind::Double
                | FieldKind::Decimal { .. }
        )
    }

    /// Whether date and time rules apply.
    pub fn is_temporal(&self) -> bool {
        matches!(
            self,
            FieldKind::Date | FieldKind::TimestampMillis | FieldKind::TimestampMicros
        )
    }

    /// Whether the field can be (part of) a record key.
    pub fn is_key_kind(&self) -> bool {
        matches!(
            self,
            FieldKind::String | FieldKind::Int | FieldKind::Long | FieldKind::Enum(_)
        )
    }

    /// The kind of a non-union schema.
    pub fn of(schema: &Schema) -> FieldKind {
        match schema {
            Schema::Null => FieldKind::Null,
            Schema::Boolean => FieldKind::Boolean,
            Schema::Int | Schema::TimeMillis => FieldKind::Int,
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampNanos => FieldKind::Long,
            Schema::Float => FieldKind::Float,
            Schema::Double => FieldKind::Double,
            Schema::String | Schema::Uuid(_) => FieldKind::String,
            Schema::Bytes | Schema::Fixed(_) | Schema::BigDecimal | Schema::Duration(_) => {
                FieldKind::Bytes
            }
            Schema::Enum(e) => FieldKind::Enum(e.symbols.clone()),
            Schema::Date => FieldKind::Date,
            Schema::TimestampMillis | Schema::LocalTimestampMillis => FieldKind::TimestampMillis,
            Schema::TimestampMicros | Schema::LocalTimestampMicros => FieldKind::TimestampMicros,
            Schema::Decimal(d) => FieldKind::Decimal {
                precision: u32::try_from(d.precision).unwrap_or(u32::MAX),
                scale: u32::try_from(d.scale).unwrap_or(u32::MAX),
            },
            Schema::Record(_)
            | Schema::Array(_)
            | Schema::Map(_)
            | Schema::Union(_)
            | Schema::Ref { .. } => FieldKind::Complex,
        }
    }
}

/// A top-level field as rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldInfo {
    /// Its value kind (the non-null branch of a `["null", T]` union).
    pub kind: FieldKind,
    /// Whether null is allowed.
    pub nullable: bool,
}

/// Describes a field's schema; `["null", T]` and `[T, "null"]` are nullable `T`.
pub fn describe(schema: &Schema) -> FieldInfo {
    if let Schema::Union(u) = schema {
        let variants = u.variants();
        let non_null: Vec<&Schema> = variants.iter().filter(|s| **s != Schema::Null).collect();
        let nullable = non_null.len() < variants.len();
        return match non_null.as_slice() {
            [one] => FieldInfo {
                kind: FieldKind::of(one),
                nullable,
            },
            [] => FieldInfo {
                kind: FieldKind::Null,
                nullable: true,
            },
            _ => FieldInfo {
                kind: FieldKind::Complex,
                nullable,
            },
        };
    }
    FieldInfo {
        kind: FieldKind::of(schema),
        nullable: false,
    }
}

/// The top-level fields of a record schema, in order, with their descriptions.
pub fn top_level(schema: &Schema) -> Vec<(&str, FieldInfo)> {
    match schema {
        Schema::Record(r) => r
            .fields
            .iter()
            .map(|f| (f.name.as_str(), describe(&f.schema)))
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether a row filter can compare values of a field with this schema.
/// Not a local timestamp (its values carry no time zone, the literal one)
/// nor a nanosecond one (decoded as text): a filter on either held for no
/// record at all, so a grant filtered on one delivered nothing, silently.
pub fn filterable(schema: &Schema) -> bool {
    let unfilterable = |s: &Schema| {
        matches!(
            s,
            Schema::LocalTimestampMillis
                | Schema::LocalTimestampMicros
                | Schema::LocalTimestampNanos
                | Schema::TimestampNanos
        )
    };
    match schema {
        Schema::Union(u) => !u.variants().iter().any(unfilterable),
        s => !unfilterable(s),
    }
}
