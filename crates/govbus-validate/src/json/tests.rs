#![allow(clippy::unwrap_used, clippy::expect_used)]

//! Numbers from JSON text to Avro: exact, or rejected with a reason — never
//! rounded. Every case is written as the raw JSON text a publisher sends, so
//! that the number's literal digits reach the encoder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use govbus_catalog::{Catalog, Decimal};
use serde_json::json;

use crate::{Accepted, Context, Engine, Reason, Rejection};

/// A dataset with one field of each numeric type.
fn numbers() -> &'static (Catalog, Engine) {
    static E: OnceLock<(Catalog, Engine)> = OnceLock::new();
    E.get_or_init(|| {
        let mut files = BTreeMap::new();
        files.insert(
            PathBuf::from("departments.toml"),
            "[[department]]\nid = \"lab\"\nname_zh = \"实验室\"\nname_en = \"Lab\"\n".to_owned(),
        );
        files.insert(
            PathBuf::from("datasets/lab.numbers/dataset.toml"),
            "owner = \"lab\"\ntitle_zh = \"数\"\ntitle_en = \"Numbers\"\nclassification = \"internal\"\nkey = [\"id\"]\nfreshness = \"1h\"\n".to_owned(),
        );
        let dec = |p: u32, s: u32| json!({"type": "bytes", "logicalType": "decimal", "precision": p, "scale": s});
        files.insert(
            PathBuf::from("datasets/lab.numbers/v1.avsc"),
            json!({
                "type": "record", "name": "Numbers", "namespace": "lab",
                "fields": [
                    {"name": "id", "type": "string"},
                    {"name": "capital", "type": dec(18, 2)},
                    {"name": "rate", "type": ["null", dec(10, 4)], "default": null},
                    {"name": "whole", "type": ["null", dec(38, 0)], "default": null},
                    {"name": "count", "type": ["null", "int"], "default": null},
                    {"name": "total", "type": ["null", "long"], "default": null},
                    {"name": "ratio", "type": ["null", "double"], "default": null},
                    {"name": "share", "type": ["null", "float"], "default": null}
                ]
            })
            .to_string(),
        );
        let catalog =
            Catalog::from_files(Path::new("lab"), &files).unwrap_or_else(|p| panic!("{p}"));
        let engine = Engine::new(&catalog).unwrap_or_else(|e| panic!("{e}"));
        (catalog, engine)
    })
}

/// Validates `{"id": "k", "capital": 1, <field>: <raw>}` written as text.
fn encode(field: &str, raw: &str) -> Result<Accepted, Rejection> {
    let text = if field == "capital" {
        format!(r#"{{"id": "k", "capital": {raw}}}"#)
    } else {
        format!(r#"{{"id": "k", "capital": 1, "{field}": {raw}}}"#)
    };
    numbers()
        .1
        .validate_json("lab.numbers", text.as_bytes(), &Context::at(0))
}

/// The value of `field` in the accepted record, as apache-avro reads it back.
fn read_back(accepted: &Accepted, field: &str) -> String {
    let (_, sv) = numbers().0.schema(accepted.schema_id).unwrap();
    let reader = GenericDatumReader::builder(&sv.schema).build().unwrap();
    let Value::Record(fields) = reader.read_value(&mut &accepted.value[5..]).unwrap() else {
        panic!("not a record");
    };
    let (_, v) = fields.into_iter().find(|(n, _)| n == field).unwrap();
    let v = match v {
        Value::Union(_, inner) => *inner,
        v => v,
    };
    let scale = match field {
        "capital" => 2,
        "rate" => 4,
        _ => 0,
    };
    match v {
        Value::Decimal(d) => {
            let bytes: Vec<u8> = Vec::try_from(&d).unwrap();
            Decimal::from_be_bytes(&bytes, scale).unwrap().to_string()
        }
        Value::Int(i) => i.to_string(),
        Value::Long(i) => i.to_string(),
        // Debug prints the shortest text that reads back to the same bits.
        Value::Double(f) => format!("{f:?}"),
        Value::Float(f) => format!("{f:?}"),
        other => format!("{other:?}"),
    }
}

/// Accepted with exactly `want`, or rejected for `want_reason` with a detail
/// containing `want_detail`.
enum Want {
    Exact(&'static str),
    Rejected(Reason, &'static str),
}
use Want::{Exact, Rejected};

fn check(field: &str, raw: &str, want: Want) {
    let got = encode(field, raw);
    match (want, got) {
        (Exact(v), Ok(a)) => assert_eq!(read_back(&a, field), v, "{field} = {raw}"),
        (Rejected(reason, detail), Err(r)) => {
            assert_eq!(r.reason, reason, "{field} = {raw}: {r}");
            assert_eq!(r.field.as_deref(), Some(field), "{field} = {raw}: {r}");
            assert!(
                r.detail.contains(detail),
                "{field} = {raw}: `{}` lacks `{detail}`",
                r.detail
            );
            assert!(!r.detail.contains(raw), "the detail quotes the value: {r}");
        }
        (Exact(v), Err(r)) => panic!("{field} = {raw}: want {v}, rejected: {r}"),
        (Rejected(reason, _), Ok(a)) => panic!(
            "{field} = {raw}: want {reason:?}, accepted as {}",
            read_back(&a, field)
        ),
    }
}

const SCALE_2: &str = "cannot be represented exactly at scale 2 / precision 18";

#[test]
fn decimals_are_exact_or_rejected() {
    use Reason::{DecimalPrecision, DecimalScale, JsonTypeMismatch};
    for (raw, want) in [
        // Beyond f64's 15-17 significant digits: the digits as written.
        ("1234567890123456.78", Exact("1234567890123456.78")),
        (r#""1234567890123456.78""#, Exact("1234567890123456.78")),
        ("-1234567890123456.78", Exact("-1234567890123456.78")),
        ("9999999999999999.99", Exact("9999999999999999.99")),
        ("9007199254740993", Exact("9007199254740993.00")),
        ("0.1", Exact("0.10")),
        ("0.29", Exact("0.29")),
        ("-0", Exact("0.00")),
        ("-0.0", Exact("0.00")),
        ("1E2", Exact("100.00")),
        ("1e+2", Exact("100.00")),
        ("1.5e1", Exact("15.00")),
        ("12345e-2", Exact("123.45")),
        ("1234567890123456780e-3", Exact("1234567890123456.78")),
        ("0e400", Exact("0.00")),
        (
            "1.50000000000000000000000000000000000000000000000",
            Exact("1.50"),
        ),
        ("1234567890123456.789", Rejected(DecimalScale, SCALE_2)),
        ("0.001", Rejected(DecimalScale, SCALE_2)),
        ("1e-400", Rejected(DecimalScale, SCALE_2)),
        ("10000000000000000", Rejected(DecimalPrecision, SCALE_2)),
        ("1e400", Rejected(DecimalPrecision, SCALE_2)),
        (
            "123456789012345678901234567890123456789012345678901",
            Rejected(DecimalPrecision, SCALE_2),
        ),
        (r#""1e2""#, Rejected(JsonTypeMismatch, "decimal")),
        (r#""1,000""#, Rejected(JsonTypeMismatch, "decimal")),
    ] {
        check("capital", raw, want);
    }
    for (raw, want) in [
        ("0.0001", Exact("0.0001")),
        ("123456.7891", Exact("123456.7891")),
        (
            "1234567.5",
            Rejected(DecimalPrecision, "scale 4 / precision 10"),
        ),
        ("0.00001", Rejected(DecimalScale, "scale 4 / precision 10")),
    ] {
        check("rate", raw, want);
    }
    for (raw, want) in [
        (
            "12345678901234567890123456789012345678",
            Exact("12345678901234567890123456789012345678"),
        ),
        (
            "-99999999999999999999999999999999999999",
            Exact("-99999999999999999999999999999999999999"),
        ),
        (
            "123456789012345678901234567890123456789",
            Rejected(DecimalPrecision, "scale 0 / precision 38"),
        ),
        ("1e38", Rejected(DecimalPrecision, "scale 0 / precision 38")),
        ("0.5", Rejected(DecimalScale, "scale 0 / precision 38")),
    ] {
        check("whole", raw, want);
    }
}

#[test]
fn integers_and_floats_are_exact_or_rejected() {
    use Reason::{JsonNumberOutOfRange, JsonTypeMismatch};
    for (field, raw, want) in [
        ("count", "2147483647", Exact("2147483647")),
        ("count", "-0", Exact("0")),
        ("count", "2147483648", Rejected(JsonNumberOutOfRange, "int")),
        ("count", "1E2", Rejected(JsonTypeMismatch, "integer")),
        ("count", "5.0", Rejected(JsonTypeMismatch, "integer")),
        ("total", "9223372036854775807", Exact("9223372036854775807")),
        (
            "total",
            "-9223372036854775808",
            Exact("-9223372036854775808"),
        ),
        (
            "total",
            "9223372036854775808",
            Rejected(JsonNumberOutOfRange, "long"),
        ),
        (
            "total",
            "-9223372036854775809",
            Rejected(JsonNumberOutOfRange, "long"),
        ),
        (
            "total",
            "123456789012345678901234567890",
            Rejected(JsonNumberOutOfRange, "long"),
        ),
        ("ratio", "0.1", Exact("0.1")),
        ("ratio", "-0", Exact("-0.0")),
        ("ratio", "1E2", Exact("100.0")),
        (
            "ratio",
            "1.7976931348623157e308",
            Exact("1.7976931348623157e308"),
        ),
        ("ratio", "1e400", Rejected(JsonNumberOutOfRange, "double")),
        ("ratio", "-1e400", Rejected(JsonNumberOutOfRange, "double")),
        ("ratio", "1e-400", Rejected(JsonNumberOutOfRange, "double")),
        ("share", "0.5", Exact("0.5")),
        ("share", "1e39", Rejected(JsonNumberOutOfRange, "float")),
        ("share", "1e-50", Rejected(JsonNumberOutOfRange, "float")),
    ] {
        check(field, raw, want);
    }
}
