//! Drives the real `govbus` binary the way an operator or a department
//! developer would, and asserts on what they would see.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

mod common;

use common::{govbus_bin, repo};

fn govbus(args: &[&str]) -> Output {
    Command::new(govbus_bin())
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run govbus")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn catalog_check_passes_on_the_sample_catalog() {
    for args in [&["catalog", "check", "schemas"][..], &["catalog", "check"]] {
        let out = govbus(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert!(
            text(&out.stdout)
                .starts_with("catalog OK: 8 departments, 9 datasets, 11 schema versions"),
            "{}",
            text(&out.stdout)
        );
    }
}

fn edit(path: &Path, from: &str, to: &str) {
    govbus_testkit::replace_in_file(path, from, to).unwrap();
}

#[test]
fn catalog_check_names_all_four_problems_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    govbus_testkit::copy_dir(&repo().join("schemas"), dir.path()).unwrap();
    let ds = dir.path().join("datasets");
    edit(
        &ds.join("hrss.pension_payment/v1.avsc"),
        "\"type\": \"record\"",
        "\"type\": \"recrod\"",
    );
    edit(
        &ds.join("housing_fund.account/dataset.toml"),
        "owner = \"housing_fund\"\n",
        "",
    );
    edit(
        &ds.join("education.enrollment_application/dataset.toml"),
        "field = \"school_code\"",
        "field = \"school_kode\"",
    );
    // v2 adds a field without a default: new readers cannot read v1 data.
    edit(
        &ds.join("civil_affairs.death_registration/v2.avsc"),
        "\"default\": null,",
        "",
    );
    let out = govbus(&["catalog", "check", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    for expected in [
        "hrss.pension_payment/v1.avsc: -: invalid Avro schema",
        "housing_fund.account/dataset.toml: owner: missing owner",
        "education.enrollment_application/dataset.toml: rule[6].field: rule `pattern` names field `school_kode`",
        "civil_affairs.death_registration/v2.avsc: compatibility: v2 is not BACKWARD compatible with v1",
        "catalog check failed: 4 problem(s)",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn catalog_list_json_has_every_dataset_with_its_schema_ids() {
    let out = govbus(&["catalog", "list", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let datasets = v["datasets"].as_array().unwrap();
    assert_eq!(datasets.len(), 9);
    let deaths = datasets
        .iter()
        .find(|d| d["name"] == "civil_affairs.death_registration")
        .unwrap();
    assert_eq!(deaths["owner"], "civil_affairs");
    assert_eq!(deaths["topic"], "data.civil_affairs.death_registration");
    let versions = deaths["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert!(versions
        .iter()
        .all(|v| v["schema_id"].as_u64().unwrap() > 0));
    // The table names the same datasets.
    let table = text(&govbus(&["catalog", "list"]).stdout);
    assert!(table.lines().next().unwrap().starts_with("DATASET"));
    assert!(table.contains("死亡登记"));
}

#[test]
fn validate_reports_each_bad_record_with_its_line_and_reason() {
    for entry in std::fs::read_dir(repo().join("examples/records")).unwrap() {
        let path = entry.unwrap().path();
        let Some(dataset) = path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .strip_suffix(".json")
        else {
            continue;
        };
        let out = govbus(&["validate", "--dataset", dataset, path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{dataset}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    let out = govbus(&[
        "validate",
        "--dataset",
        "civil_affairs.death_registration",
        "examples/records/bad-deaths.ndjson",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    for expected in [
        "bad-deaths.ndjson:2: rejected: resident_id_checksum at `deceased_id_number`",
        "bad-deaths.ndjson:3: rejected: field_order at `death_date`",
        "bad-deaths.ndjson:4: rejected: json_invalid_temporal at `birth_date`",
        "bad-deaths.ndjson:5: rejected: json_invalid",
        "1 accepted, 4 rejected",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    // No personal data in the report.
    assert!(
        !stdout.contains("110105194912310021") && !stdout.contains("李四"),
        "{stdout}"
    );
}

#[test]
fn unknown_dataset_is_a_clear_error() {
    let out = govbus(&[
        "validate",
        "--dataset",
        "civil_affairs.nope",
        "examples/records/bad-deaths.ndjson",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an error exits 1, not 2 (published with rejections)"
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("unknown dataset `civil_affairs.nope`")
            && err.contains("civil_affairs.death_registration"),
        "{err}"
    );
}

#[test]
fn reasons_lists_the_bounded_code_list() {
    let out = govbus(&["reasons", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let codes: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert!(codes.contains(&"resident_id_checksum") && codes.contains(&"avro_trailing_bytes"));
    assert!(codes.len() >= 40);
}

/// `govbus validate` reads a CSV file as `govbus publish` sends it: the same
/// typed cells, the same line numbers, the same rejection — and a column
/// that is not a field is refused before any row is checked.
#[test]
fn validate_reads_csv_as_publish_sends_it() {
    let out = govbus(&[
        "validate",
        "--dataset",
        "hrss.pension_payment",
        "examples/records/hrss.pension_payment.csv",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "examples/records/hrss.pension_payment.csv:4: rejected: resident_id_checksum at `recipient_id_number`: A resident ID number's check character is wrong (GB 11643).\n\
         examples/records/hrss.pension_payment.csv: 2 accepted, 1 rejected (hrss.pension_payment)\n"
    );

    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.csv");
    let csv =
        std::fs::read_to_string(repo().join("examples/records/hrss.pension_payment.csv")).unwrap();
    let header_and_first_two: String = csv.lines().take(3).map(|l| format!("{l}\n")).collect();
    std::fs::write(&good, header_and_first_two).unwrap();
    let out = govbus(&[
        "validate",
        "--dataset",
        "hrss.pension_payment",
        good.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).ends_with(": 2 accepted, 0 rejected (hrss.pension_payment)\n"),
        "{}",
        text(&out.stdout)
    );

    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "payment_id,colour\nPP1,red\n").unwrap();
    let out = govbus(&[
        "validate",
        "--dataset",
        "hrss.pension_payment",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("CSV column `colour` is not a field of hrss.pension_payment"),
        "{}",
        text(&out.stderr)
    );
}
