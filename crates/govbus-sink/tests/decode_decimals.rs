//! The sink prints a decimal with exactly the digits it holds, in the form
//! the gateway accepts back (`"1234567890123456.78"`): never through f64.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use apache_avro::types::Value;
use govbus_catalog::{Catalog, Decimal};
use serde_json::json;

const ENTERPRISES: &str = "market_regulation.enterprise_registration";

fn framed(catalog: &Catalog, capital_unscaled: i128) -> Vec<u8> {
    let ds = catalog.dataset(ENTERPRISES).unwrap();
    let sv = ds.versions.last().unwrap();
    let capital = Decimal {
        unscaled: capital_unscaled,
        scale: 2,
    };
    let s = |v: &str| Value::String(v.to_owned());
    let record = Value::Record(vec![
        ("credit_code".into(), s("91330100716105852F")),
        ("enterprise_name".into(), s("杭州某某网络有限公司")),
        ("legal_representative".into(), s("陈思远")),
        ("enterprise_type".into(), s("limited_liability")),
        (
            "registered_capital".into(),
            Value::Decimal(apache_avro::Decimal::from(capital.to_be_bytes())),
        ),
        ("status".into(), Value::Enum(0, "ACTIVE".into())),
        ("established_date".into(), Value::Date(10_843)),
        ("address".into(), s("杭州市余杭区文一西路969号")),
        ("business_scope".into(), s("软件开发")),
        (
            "contact_phone".into(),
            Value::Union(0, Box::new(Value::Null)),
        ),
    ]);
    let mut out = vec![0];
    out.extend_from_slice(&sv.id.0.to_be_bytes());
    let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&sv.schema)
        .build()
        .unwrap();
    out.extend(writer.write_value_to_vec(record).unwrap());
    out
}

#[test]
fn decimals_decode_with_exactly_their_digits() {
    let catalog = Catalog::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas"))
        .unwrap_or_else(|p| panic!("{p}"));
    for (unscaled, shown) in [
        (123_456_789_012_345_678_i128, "1234567890123456.78"),
        (-123_456_789_012_345_678, "-1234567890123456.78"),
        (999_999_999_999_999_999, "9999999999999999.99"),
        (9_007_199_254_740_993, "90071992547409.93"),
        (10, "0.10"),
        (-1, "-0.01"),
        (0, "0.00"),
    ] {
        let record = govbus_sink::decode::to_json(
            &std::sync::Arc::new(catalog.clone()),
            &framed(&catalog, unscaled),
        )
        .unwrap();
        assert_eq!(record["registered_capital"], json!(shown), "{unscaled}");
    }
}
