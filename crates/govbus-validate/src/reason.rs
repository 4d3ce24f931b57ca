//! Why a record was rejected: a bounded list of stable codes.
//!
//! Codes appear in DLQ headers (`govbus.error.reason`), metric labels and API
//! responses, so they never change meaning and never carry a value from the
//! record. `Reason::ALL` is the documented list; adding a code is an API change.

use std::borrow::Cow;
use std::fmt;

macro_rules! reasons {
    ($($variant:ident => $code:literal, $doc:literal;)*) => {
        /// A rejection reason. See the crate docs for the list.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason {
            $(#[doc = $doc] $variant,)*
        }

        impl Reason {
            /// Every reason, in documentation order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The reasons decided at the gate (router, gateway) from the
            /// message's topic and headers, before the engine sees the value.
            pub const GATE: &'static [Reason] = &[
                Reason::DepartmentUnknown,
                Reason::DatasetMissing,
                Reason::PublisherNotOwner,
                Reason::EnvelopeInvalid,
                Reason::HeadersTooMany,
                Reason::KeyMismatch,
            ];

            /// The stable snake_case code.
            pub fn code(self) -> &'static str {
                match self { $(Reason::$variant => $code,)* }
            }

            /// One sentence on what it means.
            pub fn description(self) -> &'static str {
                match self { $(Reason::$variant => $doc,)* }
            }

            /// The reason with this code.
            pub fn from_code(code: &str) -> Option<Reason> {
                match code { $($code => Some(Reason::$variant),)* _ => None }
            }
        }
    };
}

reasons! {
    DepartmentUnknown => "department_unknown", "The ingest topic names a department that is not in the catalog.";
    DatasetMissing => "dataset_missing", "No ce_type header names the dataset, and the value is not Avro with a known schema id.";
    DatasetUnknown => "dataset_unknown", "The dataset is not in the catalog.";
    PublisherNotOwner => "publisher_not_owner", "The publishing department does not own the dataset (one authoritative source per dataset).";
    EnvelopeInvalid => "envelope_invalid", "A CloudEvents header or structured-mode envelope is malformed (op, id, time, source version).";
    HeadersTooMany => "headers_too_many", "The message has more headers than the limit; its headers are not copied to the DLQ.";
    KeyMismatch => "key_mismatch", "The message key differs from the key in the record (per-key order would break).";
    MessageTooLarge => "message_too_large", "The message is larger than the configured maximum.";
    FramingInvalid => "framing_invalid", "The value is not Confluent-framed: shorter than 5 bytes or the first byte is not 0x00.";
    SchemaUnknown => "schema_unknown", "The schema id is not registered in the catalog.";
    SchemaWrongDataset => "schema_wrong_dataset", "The schema id belongs to another dataset.";
    AvroTruncated => "avro_truncated", "The Avro datum ends before the schema says it should.";
    AvroTrailingBytes => "avro_trailing_bytes", "Bytes remain after the Avro datum was fully read.";
    AvroVarintOverlong => "avro_varint_overlong", "A variable-length integer is longer than 10 bytes or overflows its type.";
    AvroInvalidLength => "avro_invalid_length", "A string, bytes or block length is negative or larger than the message.";
    AvroInvalidUtf8 => "avro_invalid_utf8", "A string is not valid UTF-8.";
    AvroInvalidBoolean => "avro_invalid_boolean", "A boolean byte is neither 0 nor 1.";
    AvroUnionIndex => "avro_union_index", "A union branch index is out of range.";
    AvroEnumIndex => "avro_enum_index", "An enum symbol index is out of range.";
    AvroNestingTooDeep => "avro_nesting_too_deep", "The datum nests records, arrays or maps deeper than the limit.";
    AvroTooManyItems => "avro_too_many_items", "Arrays and maps hold more items in total than the limit.";
    NumberNotFinite => "number_not_finite", "A float or double is NaN or infinite.";
    JsonInvalid => "json_invalid", "The JSON text does not parse (syntax, encoding or nesting depth), or an object in it names a member twice.";
    JsonTypeMismatch => "json_type_mismatch", "A JSON value has the wrong type for its field.";
    JsonMissingField => "json_missing_field", "A field without a default is missing from the JSON object.";
    JsonUnknownField => "json_unknown_field", "The JSON object has a field the schema does not define.";
    JsonNumberOutOfRange => "json_number_out_of_range", "A JSON number does not fit its field's type.";
    JsonInvalidTemporal => "json_invalid_temporal", "A date or timestamp string is not YYYY-MM-DD or RFC 3339.";
    TemporalPrecision => "temporal_precision", "A timestamp has a finer fraction of a second than its field's unit (timestamp-millis keeps 3 digits, timestamp-micros 6): it would be cut.";
    KeyMissing => "key_missing", "A key field is empty.";
    RequiredMissing => "required_missing", "A required field is null, empty or blank.";
    LengthOutOfRange => "length_out_of_range", "A string is shorter or longer than its rule allows.";
    PatternMismatch => "pattern_mismatch", "A string does not match its rule's pattern.";
    ValueNotAllowed => "value_not_allowed", "A value is not one of the allowed values or enum symbols.";
    RangeOutOfBounds => "range_out_of_bounds", "A number is outside its rule's bounds.";
    DecimalScale => "decimal_scale", "A decimal has more digits after the point than allowed.";
    DecimalPrecision => "decimal_precision", "A decimal has more digits than its schema's precision.";
    DateInFuture => "date_in_future", "A date or timestamp is later than now.";
    DateOutOfRange => "date_out_of_range", "A date or timestamp is outside its rule's bounds or outside years 1-9999.";
    FieldOrder => "field_order", "A date is earlier than the field it must not precede (e.g. death before birth).";
    ResidentIdLength => "resident_id_length", "A resident ID number does not have 18 characters (15-digit legacy numbers included).";
    ResidentIdFormat => "resident_id_format", "A resident ID number has characters other than 17 ASCII digits and a digit or X.";
    ResidentIdRegion => "resident_id_region", "A resident ID number's region prefix is not a province-level code.";
    ResidentIdBirthDate => "resident_id_birth_date", "A resident ID number's birth date is not a real past date.";
    ResidentIdChecksum => "resident_id_checksum", "A resident ID number's check character is wrong (GB 11643).";
    CreditCodeFormat => "credit_code_format", "A unified social credit code is not 18 characters over the GB 32100 alphabet.";
    CreditCodeChecksum => "credit_code_checksum", "A unified social credit code's check character is wrong (GB 32100).";
    MobilePhoneInvalid => "mobile_phone_invalid", "A mobile phone number is not 11 digits starting with 13-19.";
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A rejected record: the reason, the field it concerns and a detail that
/// never quotes the record's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}{}: {detail}", field.as_ref().map(|f| format!(" at `{f}`")).unwrap_or_default())]
pub struct Rejection {
    /// Stable code.
    pub reason: Reason,
    /// Field path (`amount`, `items[3].name`), when the reason concerns one.
    pub field: Option<String>,
    /// Human-readable explanation (lengths, bounds, positions; no values).
    pub detail: Cow<'static, str>,
}

impl Rejection {
    pub(crate) fn new(reason: Reason, detail: impl Into<Cow<'static, str>>) -> Rejection {
        Rejection {
            reason,
            field: None,
            detail: detail.into(),
        }
    }

    pub(crate) fn at(
        reason: Reason,
        field: impl Into<String>,
        detail: impl Into<Cow<'static, str>>,
    ) -> Rejection {
        Rejection {
            reason,
            field: Some(field.into()),
            detail: detail.into(),
        }
    }
}
