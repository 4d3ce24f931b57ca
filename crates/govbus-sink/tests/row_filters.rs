//! Row filters compare values as their field's type: decimals exactly and
//! numerically, dates as dates, timestamps as instants, enums as symbols.
//! Each case is one grant with one filter, and one record as the sink sees
//! it (decoded to the gateway's JSON conventions).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use govbus_catalog::Catalog;
use govbus_sink::policy::Policy;
use serde_json::{json, Map, Value as Json};

const ENTERPRISES: &str = "market_regulation.enterprise_registration";
const DEATHS: &str = "civil_affairs.death_registration";

fn sample_files() -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_path_buf();
                out.insert(rel, std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
    let mut out = BTreeMap::new();
    walk(&root, &root, &mut out);
    out
}

/// The sample catalog with one more grant, `t`, on `dataset` with `filter`.
fn policy(dataset: &str, filter: &str) -> Policy {
    let mut files = sample_files();
    files.insert(
        PathBuf::from("subscriptions/t.toml"),
        format!(
            "subscriber = \"data_bureau\"\ndataset = \"{dataset}\"\npurpose = \"test\"\nfilter = [{}]\n\n[sink]\ntype = \"kafka_view\"\n",
            // A JSON string is a TOML basic string for this ASCII text.
            serde_json::to_string(filter).unwrap()
        ),
    );
    let catalog = Catalog::from_files(Path::new("schemas"), &files)
        .unwrap_or_else(|p| panic!("`{filter}`: {p}"));
    let sub = catalog.subscription("t").unwrap();
    Policy::new(sub, catalog.dataset(dataset).unwrap(), b"0123456789abcdef")
}

fn check(dataset: &str, filter: &str, field: &str, cases: &[(Json, bool)]) {
    let p = policy(dataset, filter);
    for (value, admitted) in cases {
        let mut record = Map::new();
        record.insert(field.to_owned(), value.clone());
        assert_eq!(
            p.admits(&record),
            *admitted,
            "`{filter}` with {field} = {value}"
        );
    }
}

#[test]
fn decimals_compare_exactly_and_numerically() {
    let c = |v: &str, ok| (json!(v), ok);
    check(
        ENTERPRISES,
        "registered_capital > 1000",
        "registered_capital",
        &[
            c("500.00", false),
            c("999.99", false),
            c("1000.00", false),
            c("1000.01", true),
            c("10000000.00", true),
            c("1234567890123456.78", true),
            c("-5000.00", false),
            (Json::Null, false),
        ],
    );
    check(
        ENTERPRISES,
        "registered_capital >= 1234567890123456.78",
        "registered_capital",
        &[
            // 17 and 18 significant digits: f64 cannot tell these apart.
            c("1234567890123456.77", false),
            c("1234567890123456.78", true),
            c("1234567890123456.79", true),
        ],
    );
    check(
        ENTERPRISES,
        "registered_capital == 1000.5",
        "registered_capital",
        &[c("1000.50", true), c("1000.51", false), c("100.05", false)],
    );
    check(
        ENTERPRISES,
        "registered_capital in [\"0.10\", 2]",
        "registered_capital",
        &[
            c("0.10", true),
            c("2.00", true),
            c("0.01", false),
            c("20.00", false),
        ],
    );
    check(
        ENTERPRISES,
        "registered_capital != 0",
        "registered_capital",
        &[c("0.00", false), c("0.01", true), c("-0.01", true)],
    );
}

#[test]
fn dates_compare_as_dates() {
    let c = |v: &str, ok| (json!(v), ok);
    check(
        ENTERPRISES,
        "established_date >= 2024-01-05",
        "established_date",
        &[
            c("2024-01-04", false),
            c("2024-01-05", true),
            c("2024-01-06", true),
            c("2024-10-01", true),
            c("2024-12-31", true),
            c("2025-01-01", true),
            c("2023-12-31", false),
            c("1999-09-09", false),
        ],
    );
    check(
        ENTERPRISES,
        "established_date < '2024-01-05'",
        "established_date",
        &[
            c("2024-01-04", true),
            c("2024-01-05", false),
            c("0999-01-01", true),
        ],
    );
}

#[test]
fn timestamps_compare_as_instants() {
    let c = |v: &str, ok| (json!(v), ok);
    check(
        DEATHS,
        "registered_at >= 2026-01-03T16:00:00+08:00",
        "registered_at",
        &[
            c("2026-01-03T08:00:00.000Z", true),
            c("2026-01-03T07:59:59.999Z", false),
            c("2026-01-03T10:00:00.000Z", true),
        ],
    );
}

#[test]
fn enums_strings_and_nulls_compare_as_symbols_and_text() {
    let c = |v: Json, ok| (v, ok);
    check(
        ENTERPRISES,
        "status != CANCELLED",
        "status",
        &[c(json!("CANCELLED"), false), c(json!("ACTIVE"), true)],
    );
    check(
        ENTERPRISES,
        "status in [\"ACTIVE\", \"SUSPENDED\"]",
        "status",
        &[
            c(json!("ACTIVE"), true),
            c(json!("SUSPENDED"), true),
            c(json!("REVOKED"), false),
        ],
    );
    check(
        ENTERPRISES,
        "contact_phone == null",
        "contact_phone",
        &[c(Json::Null, true), c(json!("13800138000"), false)],
    );
    check(
        ENTERPRISES,
        "contact_phone != null",
        "contact_phone",
        &[c(Json::Null, false), c(json!("13800138000"), true)],
    );
    check(
        ENTERPRISES,
        "enterprise_type == \"limited_liability\"",
        "enterprise_type",
        &[
            c(json!("limited_liability"), true),
            c(json!("partnership"), false),
            // A value not of the field's type cannot come from a valid record: not delivered.
            c(json!(7), false),
        ],
    );
}
