#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use super::*;

mod filters;
mod sinks;

fn sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

#[test]
fn sample_catalog_loads() {
    let catalog = Catalog::load(&sample_dir()).unwrap_or_else(|p| panic!("{p}"));
    let names: Vec<&str> = catalog.datasets().map(|d| d.name.as_str()).collect();
    for expected in [
        "civil_affairs.death_registration",
        "hrss.unemployment_benefit_payment",
        "hrss.pension_payment",
        "hrss.social_insurance_contribution",
        "public_security.household_registration",
        "market_regulation.enterprise_registration",
        "education.enrollment_application",
        "housing_fund.account",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    let deaths = catalog
        .dataset("civil_affairs.death_registration")
        .expect("deaths");
    assert_eq!(deaths.versions.len(), 2);
    for v in &deaths.versions {
        let (ds, sv) = catalog.schema(v.id).expect("id indexed");
        assert_eq!(
            (ds.name.as_str(), sv.version),
            (deaths.name.as_str(), v.version)
        );
    }
    assert_eq!(deaths.owner, "civil_affairs");
    assert_eq!(
        deaths.personal_data.get("deceased_id_number"),
        Some(&PiiTag::IdNumber)
    );
}

#[test]
fn schema_ids_are_stable_across_loads() {
    let a = Catalog::load(&sample_dir()).unwrap_or_else(|p| panic!("{p}"));
    let b = Catalog::load(&sample_dir()).unwrap_or_else(|p| panic!("{p}"));
    for ds in a.datasets() {
        let other = b.dataset(&ds.name).expect("same datasets");
        let ids: Vec<_> = ds.versions.iter().map(|v| v.id).collect();
        let other_ids: Vec<_> = other.versions.iter().map(|v| v.id).collect();
        assert_eq!(ids, other_ids);
    }
}

/// A copy of the sample catalog in a temp dir, to break on purpose.
fn broken_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    govbus_testkit::copy_dir(&sample_dir(), dir.path()).expect("copy");
    dir
}

fn edit(path: &Path, from: &str, to: &str) {
    govbus_testkit::replace_in_file(path, from, to).expect("edit");
}

fn problems(dir: &Path) -> Vec<Problem> {
    match Catalog::load(dir) {
        Ok(_) => Vec::new(),
        Err(p) => p.0,
    }
}

fn has(problems: &[Problem], file_ends: &str, path: &str, msg: &str) -> bool {
    problems
        .iter()
        .any(|p| p.file.ends_with(file_ends) && p.path == path && p.message.contains(msg))
}

#[test]
fn reports_every_problem_with_file_and_path() {
    let dir = broken_copy();
    let ds = dir.path().join("datasets");
    // 1. a broken schema
    edit(
        &ds.join("hrss.pension_payment/v1.avsc"),
        "\"type\": \"record\"",
        "\"type\": \"recrod\"",
    );
    // 2. a missing owner
    edit(
        &ds.join("housing_fund.account/dataset.toml"),
        "owner = \"housing_fund\"\n",
        "",
    );
    // 3. a rule on an unknown field
    edit(
        &ds.join("education.enrollment_application/dataset.toml"),
        "field = \"school_code\"",
        "field = \"school_kode\"",
    );
    // 4. an incompatible new version: a field without a default
    edit(
        &ds.join("civil_affairs.death_registration/v2.avsc"),
        "\"default\": null,",
        "",
    );
    edit(
        &ds.join("civil_affairs.death_registration/v2.avsc"),
        "[\n        \"null\",\n        \"string\"\n      ]",
        "\"string\"",
    );
    let found = problems(dir.path());
    let shown: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert!(
        has(
            &found,
            "hrss.pension_payment/v1.avsc",
            "-",
            "invalid Avro schema"
        ),
        "{shown:#?}"
    );
    assert!(
        has(
            &found,
            "housing_fund.account/dataset.toml",
            "owner",
            "missing owner"
        ),
        "{shown:#?}"
    );
    assert!(
        has(
            &found,
            "education.enrollment_application/dataset.toml",
            "rule[6].field",
            "`school_kode`"
        ),
        "{shown:#?}"
    );
    assert!(
        has(
            &found,
            "civil_affairs.death_registration/v2.avsc",
            "compatibility",
            "not BACKWARD compatible with v1"
        ),
        "{shown:#?}"
    );
    assert_eq!(found.len(), 4, "{shown:#?}");
}

#[test]
fn rejects_bad_rule_parameters_and_owner_mismatch() {
    let dir = broken_copy();
    let ds = dir.path().join("datasets");
    let toml = ds.join("hrss.pension_payment/dataset.toml");
    edit(
        &toml,
        "regex = '^[0-9]{4}-(0[1-9]|1[0-2])$'",
        "regex = '^[0-9{4}$'",
    );
    edit(&toml, "min = \"0.01\"", "min = \"a lot\"");
    edit(&toml, "max_scale = 2", "max_scale = 4");
    edit(
        &toml,
        "check = \"resident_id\"\nfield = \"recipient_id_number\"",
        "check = \"resident_id\"\nfield = \"amount\"",
    );
    edit(
        &ds.join("housing_fund.account/dataset.toml"),
        "owner = \"housing_fund\"",
        "owner = \"tax\"",
    );
    edit(
        &ds.join("hrss.unemployment_benefit_payment/dataset.toml"),
        "check = \"pattern\"\nfield = \"benefit_month\"",
        "check = \"patern\"\nfield = \"benefit_month\"",
    );
    let found = problems(dir.path());
    let shown: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert!(
        has(
            &found,
            "hrss.pension_payment/dataset.toml",
            "rule[4].regex",
            "invalid regular expression"
        ),
        "{shown:#?}"
    );
    assert!(
        has(
            &found,
            "hrss.pension_payment/dataset.toml",
            "rule[5].min",
            "not a decimal"
        ),
        "{shown:#?}"
    );
    assert!(
        has(
            &found,
            "hrss.pension_payment/dataset.toml",
            "rule[6].max_scale",
            "no effect"
        ),
        "{shown:#?}"
    );
    assert!(
        has(
            &found,
            "hrss.pension_payment/dataset.toml",
            "rule[1].field",
            "needs a string field"
        ),
        "{shown:#?}"
    );
    assert!(
        has(
            &found,
            "housing_fund.account/dataset.toml",
            "owner",
            "`tax` is not a department"
        ),
        "{shown:#?}"
    );
    assert!(
        has(
            &found,
            "hrss.unemployment_benefit_payment/dataset.toml",
            "rule[3]",
            "unknown variant `patern`"
        ),
        "{shown:#?}"
    );
    assert_eq!(found.len(), 6, "{shown:#?}");
}

#[test]
fn transitive_and_forward_modes_check_the_right_pairs() {
    let dir = broken_copy();
    let ds = dir.path().join("datasets/civil_affairs.death_registration");
    // v2 adds a field with a default: BACKWARD and FORWARD both hold.
    edit(
        &ds.join("dataset.toml"),
        "compatibility = \"BACKWARD\"",
        "compatibility = \"FULL_TRANSITIVE\"",
    );
    assert!(problems(dir.path()).is_empty());
    // v3 drops a field that has no default: the old schema cannot read new data.
    let v3 = std::fs::read_to_string(ds.join("v2.avsc"))
        .expect("v2")
        .replace("{\"name\": \"death_place\", \"type\": \"string\", \"doc\": \"死亡地点 / Place of death\"},", "");
    assert!(!v3.contains("death_place") || v3.contains("\"death_place\""));
    let v3 = remove_field(&v3, "death_place");
    std::fs::write(ds.join("v3.avsc"), v3).expect("write v3");
    let found = problems(dir.path());
    let shown: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert!(
        has(
            &found,
            "v3.avsc",
            "compatibility",
            "not FULL_TRANSITIVE compatible with v1 (the old schema cannot read new data)"
        ),
        "{shown:#?}"
    );
    assert!(
        has(
            &found,
            "v3.avsc",
            "compatibility",
            "not FULL_TRANSITIVE compatible with v2 (the old schema cannot read new data)"
        ),
        "{shown:#?}"
    );
    edit(
        &ds.join("dataset.toml"),
        "compatibility = \"FULL_TRANSITIVE\"",
        "compatibility = \"BACKWARD\"",
    );
    assert!(
        problems(dir.path()).is_empty(),
        "dropping a field is BACKWARD compatible"
    );
}

fn remove_field(schema: &str, name: &str) -> String {
    let mut value: serde_json::Value = serde_json::from_str(schema).expect("json");
    if let Some(fields) = value.get_mut("fields").and_then(|f| f.as_array_mut()) {
        fields.retain(|f| f.get("name").and_then(|n| n.as_str()) != Some(name));
    }
    value.to_string()
}

#[test]
fn version_gaps_and_stray_files_are_reported() {
    let dir = broken_copy();
    let ds = dir.path().join("datasets/hrss.pension_payment");
    std::fs::copy(ds.join("v1.avsc"), ds.join("v3.avsc")).expect("copy");
    std::fs::write(ds.join("notes.txt"), "x").expect("write");
    let found = problems(dir.path());
    let shown: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert!(has(&found, "v3.avsc", "-", "without gaps"), "{shown:#?}");
    assert!(
        has(&found, "notes.txt", "-", "unexpected file"),
        "{shown:#?}"
    );
}

#[test]
fn a_registered_version_gets_the_same_checks_as_a_file() {
    let catalog = Catalog::load(&sample_dir()).unwrap_or_else(|p| panic!("{p}"));
    let v1 = catalog
        .dataset("hrss.pension_payment")
        .expect("pensions")
        .latest()
        .source
        .clone();
    // Compatible: a new optional field.
    let mut v2: serde_json::Value = serde_json::from_str(&v1).expect("json");
    v2["fields"]
        .as_array_mut()
        .expect("fields")
        .push(serde_json::json!({"name": "remark", "type": ["null", "string"], "default": null}));
    let extended = catalog
        .with_version("hrss.pension_payment", &v2.to_string())
        .unwrap_or_else(|p| panic!("{p}"));
    let ds = extended.dataset("hrss.pension_payment").expect("pensions");
    assert_eq!(ds.versions.len(), 2);
    assert!(extended.schema(ds.latest().id).is_some());
    // The same schema again changes nothing.
    let again = extended
        .with_version("hrss.pension_payment", &v2.to_string())
        .unwrap_or_else(|p| panic!("{p}"));
    assert_eq!(
        again
            .dataset("hrss.pension_payment")
            .expect("pensions")
            .versions
            .len(),
        2
    );
    // Incompatible: a new field without a default.
    let mut bad: serde_json::Value = serde_json::from_str(&v1).expect("json");
    bad["fields"]
        .as_array_mut()
        .expect("fields")
        .push(serde_json::json!({"name": "remark", "type": "string"}));
    let Err(problems) = extended.with_version("hrss.pension_payment", &bad.to_string()) else {
        panic!("incompatible v3 accepted")
    };
    assert!(
        problems.to_string().contains("not BACKWARD compatible"),
        "{problems}"
    );
    // Dropping a rule's field is refused too.
    let mut dropped: serde_json::Value = serde_json::from_str(&v1).expect("json");
    dropped["fields"]
        .as_array_mut()
        .expect("fields")
        .retain(|f| f["name"] != "pay_month");
    let Err(problems) = catalog.with_version("hrss.pension_payment", &dropped.to_string()) else {
        panic!("dropped rule field accepted")
    };
    assert!(
        problems
            .to_string()
            .contains("`pay_month`, which does not exist in v2"),
        "{problems}"
    );
}

#[test]
fn a_compatibility_change_is_checked_against_the_existing_versions() {
    let catalog = Catalog::load(&sample_dir()).unwrap_or_else(|p| panic!("{p}"));
    let full = catalog
        .apply_change("config:civil_affairs.death_registration", "FULL_TRANSITIVE")
        .unwrap_or_else(|p| panic!("{p}"));
    assert_eq!(
        full.dataset("civil_affairs.death_registration")
            .expect("deaths")
            .compatibility,
        Compatibility::FullTransitive
    );
    // v2 drops nothing and adds a defaulted field, so FULL holds; a v3 that
    // drops a field without a default then breaks FORWARD and is refused.
    let v2: serde_json::Value = serde_json::from_str(
        &full
            .dataset("civil_affairs.death_registration")
            .expect("deaths")
            .latest()
            .source,
    )
    .expect("json");
    let v3 = remove_field(&v2.to_string(), "death_place");
    assert!(full
        .apply_change("civil_affairs.death_registration", &v3)
        .is_err());
    assert!(catalog
        .apply_change("config:civil_affairs.death_registration", "SIDEWAYS")
        .is_err());
}

#[test]
fn a_bad_subscription_is_reported_with_each_problem() {
    let dir = broken_copy();
    let subs = dir.path().join("subscriptions");
    std::fs::write(
        subs.join("bad.toml"),
        r#"subscriber = "tax_bureau"
dataset = "civil_affairs.death_registration"
purpose = " "
valid_from = "2027-01-01"
valid_until = "2026-01-01"
filter = ["death_cause_category ~ natural", "nonexistent == 1"]

[fields]
exclude = ["registration_no", "no_such_field"]

[fields.treatment]
gender = "mask"

[sink]
type = "webhook"
url = "ftp://example.org"
table = "t"
"#,
    )
    .expect("write");
    std::fs::write(
        subs.join("unknown_sink.toml"),
        "subscriber = \"hrss\"\ndataset = \"hrss.no_such\"\npurpose = \"x\"\n[sink]\ntype = \"fax\"\n",
    )
    .expect("write");
    let found = problems(dir.path());
    let shown: Vec<String> = found.iter().map(ToString::to_string).collect();
    for (file, path, msg) in [
        ("bad.toml", "subscriber", "`tax_bureau` is not a department"),
        ("bad.toml", "purpose", "every grant states its purpose"),
        ("bad.toml", "valid_until", "must be after valid_from"),
        ("bad.toml", "filter[0]", "expected an operator"),
        ("bad.toml", "filter[1]", "`nonexistent` is not a field"),
        (
            "bad.toml",
            "fields.exclude",
            "`no_such_field` is not a field",
        ),
        (
            "bad.toml",
            "fields.exclude",
            "`registration_no` is a key field",
        ),
        (
            "bad.toml",
            "fields.treatment.gender",
            "not tagged as personal data",
        ),
        ("bad.toml", "sink.url", "http:// or https://"),
        ("bad.toml", "sink.secret_env", "needs a signing secret"),
        (
            "bad.toml",
            "sink.table",
            "does not apply to a `webhook` sink",
        ),
        (
            "unknown_sink.toml",
            "dataset",
            "`hrss.no_such` is not a dataset",
        ),
    ] {
        assert!(
            has(&found, file, path, msg),
            "{file} {path} {msg}:\n{shown:#?}"
        );
    }
    // The sample subscriptions themselves load.
    std::fs::remove_file(subs.join("bad.toml")).expect("rm");
    std::fs::remove_file(subs.join("unknown_sink.toml")).expect("rm");
    let catalog = Catalog::load(dir.path()).expect("sample catalog");
    assert_eq!(catalog.subscriptions().count(), 10);
    let s = catalog
        .subscription("hrss_deaths_pension_stop")
        .expect("sub");
    assert!(s.is_active(crate::time::days_from_civil(2026, 6, 1) * crate::time::MILLIS_PER_DAY));
    assert_eq!(
        s.inactive_reason(crate::time::days_from_civil(2028, 1, 1) * crate::time::MILLIS_PER_DAY),
        Some("expired")
    );
}

#[test]
fn live_interface_grants_and_lookup_fields_are_checked() {
    let dir = broken_copy();
    let subs = dir.path().join("subscriptions");
    let api = |ops: &str, extra: &str| {
        format!(
            "subscriber = \"hrss\"\ndataset = \"civil_affairs.death_registration\"\npurpose = \"x\"\n[sink]\ntype = \"api\"\noperations = {ops}\n{extra}"
        )
    };
    for (name, text) in [
        ("api_no_ops.toml", api("[]", "")),
        ("api_bad_op.toml", api("[\"lookup\", \"delete\"]", "")),
        ("api_rate.toml", api("[\"lookup\"]", "rate = 0\nbatch_max = 5000\n")),
        ("api_url.toml", api("[\"verify\"]", "url = \"https://example.org\"\n")),
        (
            "api_pseudonym.toml",
            api("[\"lookup\"]", "").replace(
                "[sink]",
                "[fields.treatment]\ndeceased_id_number = \"pseudonym\"\n\n[sink]",
            ),
        ),
        (
            "webhook_ops.toml",
            "subscriber = \"hrss\"\ndataset = \"civil_affairs.death_registration\"\npurpose = \"x\"\n[sink]\ntype = \"webhook\"\nurl = \"https://example.org/h\"\nsecret_env = \"X\"\noperations = [\"lookup\"]\nrate = 3\n".to_owned(),
        ),
    ] {
        std::fs::write(subs.join(name), text).expect("write");
    }
    let found = problems(dir.path());
    let shown: Vec<String> = found.iter().map(ToString::to_string).collect();
    for (file, path, msg) in [
        ("api_no_ops.toml", "sink.operations", "names what it allows"),
        (
            "api_bad_op.toml",
            "sink.operations",
            "unknown operation `delete`",
        ),
        ("api_rate.toml", "sink.rate", "1..=100000"),
        ("api_rate.toml", "sink.batch_max", "1..=1000"),
        ("api_url.toml", "sink.url", "does not apply to a `api` sink"),
        (
            "api_pseudonym.toml",
            "fields.treatment.deceased_id_number",
            "cannot be pseudonymised",
        ),
        (
            "webhook_ops.toml",
            "sink.operations",
            "does not apply to a `webhook` sink",
        ),
        (
            "webhook_ops.toml",
            "sink.rate",
            "does not apply to a `webhook` sink",
        ),
    ] {
        assert!(
            has(&found, file, path, msg),
            "{file} {path} {msg}:\n{shown:#?}"
        );
    }
    let ds = dir
        .path()
        .join("datasets/civil_affairs.death_registration/dataset.toml");
    let mut text = std::fs::read_to_string(&ds).expect("read");
    text.push_str(
        "\n[[lookup]]\nfield = \"no_such\"\n\n[[lookup]]\nfield = \"registration_no\"\n\n[[lookup]]\nfield = \"deceased_id_number\"\n\n[[lookup]]\nfield = \"death_place\"\nunique = false\n",
    );
    std::fs::write(&ds, text).expect("write");
    let found = problems(dir.path());
    let shown: Vec<String> = found.iter().map(ToString::to_string).collect();
    for (file, path, msg) in [
        ("dataset.toml", "lookup[1].field", "does not exist"),
        ("dataset.toml", "lookup[2].field", "is the key"),
        ("dataset.toml", "lookup[3].field", "declared twice"),
    ] {
        assert!(
            has(&found, file, path, msg),
            "{file} {path} {msg}:\n{shown:#?}"
        );
    }
    assert!(
        !shown.iter().any(|s| s.contains("lookup[4]")),
        "a plain string field may be a lookup field:\n{shown:#?}"
    );
    let mut text = std::fs::read_to_string(&ds).expect("read");
    text.push_str("\n[[lookup]]\nfield = \"death_date\"\nextra = 1\n");
    std::fs::write(&ds, text).expect("write");
    let shown: Vec<String> = problems(dir.path())
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        shown.iter().any(|s| s.contains("unknown field `extra`")),
        "an unknown lookup key is refused:\n{shown:#?}"
    );
}

/// A personal key field is pseudonymised by default, and masking it is
/// refused: masked, many people share one key value (an ID number's 6+4
/// characters) and overwrite each other in a table keyed by it.
#[test]
fn a_personal_key_is_pseudonymised_and_never_masked() {
    let grant = |treatment: &str| {
        format!(
            "subscriber = \"education\"\ndataset = \"public_security.household_registration\"\npurpose = \"enrolment residency checks\"\n\n[fields.treatment]\n{treatment}\n\n[sink]\ntype = \"kafka_view\"\n"
        )
    };
    let dir = broken_copy();
    let path = dir.path().join("subscriptions/residency.toml");
    std::fs::write(&path, grant("")).expect("write");
    let catalog = Catalog::load(dir.path()).expect("loads");
    let sub = catalog.subscription("residency").expect("grant");
    assert_eq!(sub.treatments["id_number"], Treatment::Pseudonym);
    assert_eq!(sub.treatments["name"], Treatment::Mask);

    std::fs::write(&path, grant("id_number = \"mask\"")).expect("write");
    let p = problems(dir.path());
    assert!(
        has(
            &p,
            "residency.toml",
            "fields.treatment.id_number",
            "overwrite each other"
        ),
        "{p:?}"
    );
    std::fs::write(&path, grant("id_number = \"clear\"")).expect("write");
    assert!(problems(dir.path()).is_empty());
    // A live interface is asked by the clear key: it keeps the masked default.
    std::fs::write(
        &path,
        grant("").replace(
            "type = \"kafka_view\"",
            "type = \"api\"\noperations = [\"verify\"]",
        ),
    )
    .expect("write");
    let catalog = Catalog::load(dir.path()).unwrap_or_else(|p| panic!("{:?}", p.0));
    assert_eq!(
        catalog.subscription("residency").expect("grant").treatments["id_number"],
        Treatment::Mask
    );
}

/// A row filter on a local or nanosecond timestamp held for no record (the
/// decoded value has no zone, or is text): a grant filtered on one silently
/// delivered nothing. The catalog refuses such a filter.
#[test]
fn a_row_filter_on_a_timestamp_it_cannot_compare_is_refused() {
    let parse = |t: &str| apache_avro::Schema::parse_str(t).expect("schema");
    for (schema, ok) in [
        (
            r#"{"type": "long", "logicalType": "timestamp-millis"}"#,
            true,
        ),
        (
            r#"["null", {"type": "long", "logicalType": "timestamp-micros"}]"#,
            true,
        ),
        (r#"{"type": "int", "logicalType": "date"}"#, true),
        (
            r#"{"type": "long", "logicalType": "local-timestamp-millis"}"#,
            false,
        ),
        (
            r#"["null", {"type": "long", "logicalType": "local-timestamp-micros"}]"#,
            false,
        ),
        (
            r#"{"type": "long", "logicalType": "timestamp-nanos"}"#,
            false,
        ),
    ] {
        assert_eq!(crate::fields::filterable(&parse(schema)), ok, "{schema}");
    }
}
