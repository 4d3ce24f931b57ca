//! Row filters are typed at load: every literal is a value of its field's
//! type and every operator applies to it, or `catalog check` names the file,
//! the filter and what to write instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::{Catalog, Problem};

/// A dataset with a field of every kind a filter can name.
const SCHEMA: &str = r#"{"type": "record", "name": "Filters", "namespace": "lab", "fields": [
    {"name": "id", "type": "string"},
    {"name": "capital", "type": {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 2}},
    {"name": "since", "type": {"type": "int", "logicalType": "date"}},
    {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "n", "type": "int"},
    {"name": "big", "type": "long"},
    {"name": "ratio", "type": "double"},
    {"name": "flag", "type": "boolean"},
    {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["ACTIVE", "CANCELLED"]}},
    {"name": "note", "type": ["null", "string"], "default": null},
    {"name": "tags", "type": {"type": "array", "items": "string"}}
]}"#;

fn load(filters: &[&str]) -> Result<Catalog, Vec<Problem>> {
    let mut files = BTreeMap::new();
    files.insert(
        PathBuf::from("departments.toml"),
        "[[department]]\nid = \"lab\"\nname_zh = \"实验室\"\nname_en = \"Lab\"\n".to_owned(),
    );
    files.insert(
        PathBuf::from("datasets/lab.filters/dataset.toml"),
        "owner = \"lab\"\ntitle_zh = \"过滤\"\ntitle_en = \"Filters\"\nclassification = \"internal\"\nkey = [\"id\"]\nfreshness = \"1h\"\n".to_owned(),
    );
    files.insert(
        PathBuf::from("datasets/lab.filters/v1.avsc"),
        SCHEMA.to_owned(),
    );
    let list: Vec<String> = filters
        .iter()
        .map(|f| toml::Value::String((*f).to_owned()).to_string())
        .collect();
    files.insert(
        PathBuf::from("subscriptions/t.toml"),
        format!(
            "subscriber = \"lab\"\ndataset = \"lab.filters\"\npurpose = \"test\"\nfilter = [{}]\n\n[sink]\ntype = \"kafka_view\"\n",
            list.join(", ")
        ),
    );
    Catalog::from_files(Path::new("lab"), &files).map_err(|p| p.0)
}

/// `filter` loads, or fails with exactly one problem, at `filter[0]` of the
/// subscription's file, whose message is `message`.
fn check(filter: &str, message: Option<&str>) {
    match (load(&[filter]), message) {
        (Ok(_), None) => {}
        (Ok(_), Some(m)) => panic!("`{filter}` loaded; want: {m}"),
        (Err(p), None) => panic!("`{filter}`: {p:?}"),
        (Err(p), Some(m)) => {
            assert_eq!(p.len(), 1, "`{filter}`: {p:?}");
            assert!(
                p[0].file.ends_with("subscriptions/t.toml"),
                "{}",
                p[0].file.display()
            );
            assert_eq!(p[0].path, "filter[0]", "`{filter}`");
            assert_eq!(p[0].message, m, "`{filter}`");
        }
    }
}

#[test]
fn good_filters_load() {
    for filter in [
        "capital > 1000",
        "capital > 1000.5",
        "capital >= \"1000.50\"",
        "capital <= 9999999999999999.99",
        "capital == -0.01",
        "capital in [1000, 2000.25]",
        "since >= 2024-01-05",
        "since < '2024-02-29'",
        "since in [\"2024-01-05\", \"2024-01-06\"]",
        "at >= 2024-01-05T08:00:00+08:00",
        "at < \"2024-01-05T00:00:00.123Z\"",
        "n > -5",
        "n <= 2147483647",
        "big > 9223372036854775807",
        "ratio < 0.5",
        "ratio >= 1e-3",
        "flag == true",
        "flag != false",
        "status == ACTIVE",
        "status != 'CANCELLED'",
        "status in [\"ACTIVE\", \"CANCELLED\"]",
        "id == \"a b\"",
        "id in [\"x\", \"y\"]",
        "id != 91330100716105852F",
        "note == null",
        "note != null",
        "note in [null, \"x\"]",
    ] {
        check(filter, None);
    }
}

#[test]
fn bad_filters_are_catalog_problems() {
    for (filter, message) in [
        // Grouping commas: refused, never read as 1 or as text.
        (
            "capital > 1,000",
            "`capital > 1,000`: `1,000`: write 1000 (no digit grouping: a comma in a number is ambiguous) (`capital` is a decimal(18,2))",
        ),
        (
            "n > 1,000",
            "`n > 1,000`: `1,000`: write 1000 (no digit grouping: a comma in a number is ambiguous) (`n` is an int)",
        ),
        (
            "capital > 1000.005",
            "`capital > 1000.005`: `1000.005` has more than 2 digits after the point; the field is decimal(18,2) (`capital` is a decimal(18,2))",
        ),
        (
            "capital > 10000000000000000",
            "`capital > 10000000000000000`: `10000000000000000` has more than 18 digits; the field is decimal(18,2) (`capital` is a decimal(18,2))",
        ),
        (
            "capital > 1e3",
            "`capital > 1e3`: `1e+3`: expected a decimal like 1000 or 1234.50 (no exponent) (`capital` is a decimal(18,2))",
        ),
        (
            "capital > lots",
            "`capital > lots`: `lots`: expected a decimal like 1000 or 1234.50 (no exponent) (`capital` is a decimal(18,2))",
        ),
        // Dates are dates: not text, not day counts.
        (
            "since >= 2024-1-5",
            "`since >= 2024-1-5`: `2024-1-5`: expected a date as YYYY-MM-DD, like 2024-01-05 (`since` is a date)",
        ),
        (
            "since >= 2024-02-30",
            "`since >= 2024-02-30`: `2024-02-30`: expected a date as YYYY-MM-DD, like 2024-01-05 (`since` is a date)",
        ),
        (
            "since >= 19727",
            "`since >= 19727`: `19727`: write the date as YYYY-MM-DD, like 2024-01-05 (`since` is a date)",
        ),
        (
            "at >= 2024-01-05",
            "`at >= 2024-01-05`: `2024-01-05`: expected an RFC 3339 time with its offset, like 2024-01-05T08:00:00+08:00 (`at` is a timestamp)",
        ),
        (
            "at >= \"2024-01-05T00:00:00.0001Z\"",
            "`at >= \"2024-01-05T00:00:00.0001Z\"`: `2024-01-05T00:00:00.0001Z`: at most millisecond precision (deliveries carry milliseconds) (`at` is a timestamp)",
        ),
        (
            "n > 2.5",
            "`n > 2.5`: `2.5`: expected an integer that fits in int (`n` is an int)",
        ),
        (
            "n > 2147483648",
            "`n > 2147483648`: `2147483648`: expected an integer that fits in int (`n` is an int)",
        ),
        (
            "n > \"5\"",
            "`n > \"5\"`: `5`: expected an integer (int) (`n` is an int)",
        ),
        (
            "big > 9223372036854775808",
            "`big > 9223372036854775808`: `9223372036854775808`: expected an integer that fits in long (`big` is a long)",
        ),
        (
            "ratio < 1e400",
            "`ratio < 1e400`: `1e+400`: out of range (`ratio` is a double)",
        ),
        (
            "flag == yes",
            "`flag == yes`: `yes`: expected true or false (`flag` is a boolean)",
        ),
        (
            "status == DISSOLVED",
            "`status == DISSOLVED`: `DISSOLVED` is not a symbol of the field (symbols: ACTIVE, CANCELLED) (`status` is an enum)",
        ),
        (
            "status in [\"ACTIVE\", \"active\"]",
            "`status in [\"ACTIVE\", \"active\"]`: `active` is not a symbol of the field (symbols: ACTIVE, CANCELLED) (`status` is an enum)",
        ),
        (
            "id == 12",
            "`id == 12`: `12`: the field is a string; quote the value: \"12\" (`id` is a string)",
        ),
        // Operators that do not apply to the type.
        (
            "status > ACTIVE",
            "`status > ACTIVE`: `>` does not apply to `status` (an enum): use ==, != or in",
        ),
        (
            "id >= m",
            "`id >= m`: `>=` does not apply to `id` (a string): use ==, != or in",
        ),
        (
            "flag < true",
            "`flag < true`: `<` does not apply to `flag` (a boolean): use ==, != or in",
        ),
        (
            "tags == x",
            "`tags == x`: `tags` is a record, array, map or union; filters compare scalar fields only",
        ),
        ("id == [\"a\"]", "`id == [\"a\"]`: a list applies to `in` only, not `==`"),
        ("id in []", "`id in []`: `in` needs at least one value"),
        ("n == null", "`n == null`: `n` is never null"),
        ("n > null", "`n > null`: `n` is never null"),
        ("note > null", "`note > null`: `>` does not apply to `note` (a string): use ==, != or in"),
        // Syntax.
        (
            "capital === 1000",
            "`capital === 1000`: `===` is not an operator (== != < <= > >= in)",
        ),
        (
            "capital => 1000",
            "`capital => 1000`: expected an operator after `capital` (== != < <= > >= in)",
        ),
        (
            "capital = 1000",
            "`capital = 1000`: expected an operator after `capital` (== != < <= > >= in)",
        ),
        (
            "status == 'ACTIVE",
            "`status == 'ACTIVE`: `'ACTIVE`: unbalanced quotes",
        ),
        (
            "status == \"ACTIVE",
            "`status == \"ACTIVE`: `\"ACTIVE`: unbalanced quotes",
        ),
        (
            "status == ACTIVE'",
            "`status == ACTIVE'`: `ACTIVE'`: unbalanced quotes",
        ),
        (
            "id == a b",
            "`id == a b`: `a b`: quote a value with spaces or symbols: \"...\"",
        ),
        (
            "id in [a, b]",
            "`id in [a, b]`: `[a, b]`: a list is written in JSON, like [\"a\", \"b\"] or [1, 2]",
        ),
        ("id == {}", "`id == {}`: `{}`: an object is not a filter value"),
        (
            "nonexistent == 1",
            "`nonexistent` is not a field of lab.filters (fields: id, capital, since, at, n, big, ratio, flag, status, note, tags)",
        ),
    ] {
        check(filter, Some(message));
    }
}

#[test]
fn every_bad_filter_is_reported_not_just_the_first() {
    let problems = load(&["capital > 1,000", "status == ACTIVE", "since >= 2024-1-5"])
        .err()
        .unwrap_or_default();
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, ["filter[0]", "filter[2]"]);
}

#[test]
fn the_sample_grants_still_load_with_typed_filters() {
    let catalog = Catalog::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas"))
        .unwrap_or_else(|p| panic!("{p}"));
    let sub = catalog
        .subscription("data_bureau_enterprises_open")
        .unwrap_or_else(|| panic!("missing"));
    assert_eq!(
        sub.filter[0].operands,
        [crate::Scalar::Text("CANCELLED".into())]
    );
}
