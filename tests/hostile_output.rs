//! Issue #14: text that came from a department — a field name, a dataset
//! name, a header, a file name, a rejection detail — is escaped wherever the
//! operator's commands print it, so it cannot forge output lines, clear the
//! screen or reorder text (bidi controls). Each test feeds such text through
//! the real path (the router into `dlq.<dept>`, a file into `validate`, a
//! ledger export into `audit`) and reads the real commands' output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{govbus_bin, repo, spawn_router};
use govbus_kafka::headers as h;
use govbus_kafka::topics::Topics;
use govbus_testkit::{create_topic, producer_config, unique, Broker};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// A newline, a screen clear, a cursor home, a carriage return and a bidi
/// override: every way a line of input could rewrite what the operator sees.
const HOSTILE: &str = "a\n\u{1b}[2J\u{1b}[Hforged line\r\u{202e}gnp.exe";

/// The command's stdout and stderr, checked for raw control text; returns
/// stdout's lines.
fn safe_lines(what: &str, out: &Output) -> Vec<String> {
    for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        let text = String::from_utf8_lossy(bytes);
        assert!(
            !bytes.contains(&0x1b),
            "{what} {stream}: raw ESC in {text:?}"
        );
        assert!(
            !bytes.contains(&b'\r'),
            "{what} {stream}: raw CR in {text:?}"
        );
        assert!(
            !text.contains('\u{202e}'),
            "{what} {stream}: raw bidi override in {text:?}"
        );
        for line in text.lines() {
            assert!(
                !line.trim_start().starts_with("forged") && !line.starts_with("[2J"),
                "{what} {stream}: a line forged by input: {line:?} in {text:?}"
            );
        }
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn govbus(args: &[&str]) -> Output {
    Command::new(govbus_bin())
        .args(args)
        .env("GOVBUS_LOG", "warn")
        .output()
        .unwrap()
}

#[tokio::test]
async fn hostile_text_in_dead_letters_is_escaped_by_dlq_list_show_and_replay() {
    let bootstrap = Broker::shared().bootstrap();
    let topics = Topics::new(format!("{}.", unique("hostile")));
    create_topic(&bootstrap, &topics.ingest("hrss"), 1)
        .await
        .unwrap();
    let catalog = repo().join("schemas");
    let mut router = spawn_router(
        &bootstrap,
        &topics,
        &["--catalog", catalog.to_str().unwrap()],
    );

    let sample: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(repo().join("examples/records/hrss.pension_payment.json"))
            .unwrap(),
    )
    .unwrap();
    // A field the schema does not have, named with the hostile text: the
    // router dead-letters it without repeating the name (not a field name,
    // so it may be data).
    let mut hostile_field = sample[0].clone();
    hostile_field[HOSTILE] = serde_json::json!(1);
    // A dataset name (ce_type) that is the hostile text.
    let hostile_type = sample[1].clone();
    let producer: FutureProducer = producer_config(&bootstrap).create().unwrap();
    for (rec, ce_type) in [
        (&hostile_field, "hrss.pension_payment".to_owned()),
        (&hostile_type, format!("hrss.{HOSTILE}")),
    ] {
        let body = rec.to_string();
        let key = rec["payment_id"].as_str().unwrap().to_owned();
        let hostile_key = format!("x-{HOSTILE}");
        let hs = OwnedHeaders::new()
            .insert(Header {
                key: h::CE_TYPE,
                value: Some(ce_type.as_str()),
            })
            .insert(Header {
                key: &hostile_key,
                value: Some("1"),
            });
        producer
            .send(
                FutureRecord::to(&topics.ingest("hrss"))
                    .key(&key)
                    .payload(&body)
                    .headers(hs),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let dlq = |args: &[&str]| {
        let mut all = vec![
            "dlq",
            args[0],
            "--bootstrap",
            &bootstrap,
            "--department",
            "hrss",
            "--topic-prefix",
            topics.prefix(),
        ];
        all.extend(&args[1..]);
        govbus(&all)
    };
    let started = Instant::now();
    let listed: serde_json::Value = loop {
        let out = dlq(&["list", "--format", "json"]);
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::json!([]));
        if v.as_array().is_some_and(|a| a.len() == 2) || started.elapsed() > Duration::from_secs(60)
        {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    router.kill().unwrap();
    let _ = router.wait();
    let entries = listed.as_array().unwrap();
    assert_eq!(entries.len(), 2, "{listed}");
    // A member name that cannot be a field's name may be data: the router
    // does not record it (the field path stops at the record).
    let unknown = entries
        .iter()
        .find(|e| e["reason"] == "json_unknown_field")
        .expect("the record with the hostile member is dead-lettered");
    assert!(
        !unknown["field"]
            .as_str()
            .is_some_and(|f| f.contains("forged")),
        "the hostile member name is not recorded as the field: {listed}"
    );
    safe_lines(
        "dlq list --format json",
        &dlq(&["list", "--format", "json"]),
    );

    // The table: a header, one line per dead letter, the count.
    let table = safe_lines("dlq list", &dlq(&["list"]));
    assert_eq!(table.len(), 4, "{table:#?}");
    assert!(table[3].contains("2 of 2 dead letters"), "{table:#?}");
    // The table's columns hold nothing a department wrote: neither the
    // unknown dataset nor the member name that is not a field name.
    assert!(
        !table.iter().any(|l| l.contains("forged")),
        "no department text in the table: {table:#?}"
    );

    // Each dead letter carries the hostile text in an error header (the
    // field) or in a department-provided header's name.
    for e in entries {
        let at = e["at"].as_str().unwrap();
        let shown = dlq(&["show", "--at", at]);
        assert!(shown.status.success(), "{shown:?}");
        let lines = safe_lines("dlq show", &shown);
        let v: serde_json::Value = serde_json::from_str(&lines.join("\n")).unwrap();
        let in_errors = v["errors"]
            .as_object()
            .unwrap()
            .values()
            .any(|t| t.as_str().is_some_and(|t| t.contains(HOSTILE)));
        let in_headers = v["other_headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t.as_str().is_some_and(|t| t.contains(HOSTILE)));
        assert!(
            in_headers && !(in_errors && e["reason"] == "json_unknown_field"),
            "show keeps the exact text, JSON-escaped, and the router records no hostile member name: {v}"
        );
    }

    // The dry run: one line per dead letter, then the summary.
    let dry = safe_lines("dlq replay", &dlq(&["replay"]));
    assert_eq!(dry.len(), 3, "{dry:#?}");
    assert!(
        dry[2].contains("dry run: 2 dead letter(s) selected"),
        "{dry:#?}"
    );
}

#[test]
fn hostile_text_in_a_file_is_escaped_by_validate() {
    let dir = tempfile::tempdir().unwrap();
    let sample: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(repo().join("examples/records/hrss.pension_payment.json"))
            .unwrap(),
    )
    .unwrap();
    let mut rec = sample[0].clone();
    rec[HOSTILE] = serde_json::json!(HOSTILE);
    let mut bad_value = sample[1].clone();
    bad_value["recipient_id_number"] = serde_json::json!(HOSTILE);
    // The file's name is hostile too (a department sent it).
    let file = dir.path().join(format!("records-{HOSTILE}.ndjson"));
    std::fs::write(&file, format!("{rec}\n{bad_value}\n")).unwrap();
    let out = govbus(&[
        "validate",
        "--dataset",
        "hrss.pension_payment",
        file.to_str().unwrap(),
    ]);
    let lines = safe_lines("validate", &out);
    // One line per rejected record, then the summary.
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(lines[2].contains("0 accepted, 2 rejected"), "{lines:#?}");
    assert_eq!(out.status.code(), Some(1));

    // A CSV file: a hostile column name is refused, and the refusal quotes
    // it escaped; a hostile cell is rejected, and the rejection quotes it
    // escaped.
    let csv = dir.path().join(format!("rows-{HOSTILE}.csv"));
    let quoted = format!("\"{}\"", HOSTILE.replace('"', "\"\""));
    std::fs::write(&csv, format!("payment_id,{quoted}\nP1,1\n")).unwrap();
    let out = govbus(&[
        "validate",
        "--dataset",
        "hrss.pension_payment",
        csv.to_str().unwrap(),
    ]);
    safe_lines("validate (CSV header)", &out);
    assert!(!out.status.success());
    std::fs::write(
        &csv,
        format!("payment_id,recipient_id_number\nP1,{quoted}\n"),
    )
    .unwrap();
    let out = govbus(&[
        "validate",
        "--dataset",
        "hrss.pension_payment",
        csv.to_str().unwrap(),
    ]);
    let lines = safe_lines("validate (CSV cell)", &out);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines[1].contains("0 accepted, 1 rejected"), "{lines:#?}");

    // A hostile dataset name on the command line (pasted from a message).
    let out = govbus(&["validate", "--dataset", HOSTILE, file.to_str().unwrap()]);
    safe_lines("validate --dataset", &out);
    assert!(!out.status.success());

    // A missing hostile file: the error names it, escaped.
    let missing = dir.path().join(format!("missing-{HOSTILE}"));
    let out = govbus(&[
        "validate",
        "--dataset",
        "hrss.pension_payment",
        missing.to_str().unwrap(),
    ]);
    safe_lines("validate (missing file)", &out);
    assert!(!out.status.success());
}

/// An exported ledger whose text fields are hostile (a sink writer id and
/// subscriber come from configuration and the catalog; an export file can
/// be edited by anyone who holds it).
fn hostile_ledger(dir: &Path) -> std::path::PathBuf {
    let entry = serde_json::json!({
        "writer": HOSTILE, "seq": 0, "prev": HOSTILE, "time": "2026-01-01T00:00:00.000Z",
        "kind": "delivery", "subscription": "s", "subscriber": HOSTILE,
        "dataset": HOSTILE, "sink": HOSTILE, "policy": HOSTILE, "outcome": HOSTILE,
        "events": [HOSTILE], "hash": HOSTILE,
    });
    let path = dir.join("ledger.jsonl");
    std::fs::write(&path, format!("{entry}\n")).unwrap();
    path
}

#[test]
fn hostile_text_in_a_ledger_is_escaped_by_audit_verify_query_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = hostile_ledger(dir.path());
    let ledger = ledger.to_str().unwrap();

    let out = govbus(&["audit", "verify", "--file", ledger]);
    let lines = safe_lines("audit verify", &out);
    assert!(!out.status.success(), "the chain is broken: {lines:#?}");
    assert!(
        lines.last().is_some_and(|l| l.starts_with("ledger FAILED")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().all(|l| l.starts_with("TAMPERED")
            || l.starts_with("note:")
            || l.starts_with("ledger FAILED")),
        "every line is one the command wrote: {lines:#?}"
    );
    safe_lines(
        "audit verify --format json",
        &govbus(&["audit", "verify", "--file", ledger, "--format", "json"]),
    );

    let out = govbus(&["audit", "query", "--file", ledger, "--subscription", "s"]);
    let lines = safe_lines("audit query", &out);
    // The header, the delivery, the count.
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert_eq!(lines[2], "1 deliveries");
    for args in [
        &[
            "audit",
            "query",
            "--file",
            ledger,
            "--subscription",
            "s",
            "--event",
            HOSTILE,
        ][..],
        &[
            "audit",
            "query",
            "--file",
            ledger,
            "--subscription",
            "s",
            "--format",
            "json",
        ],
        &["audit", "export", "--file", ledger],
    ] {
        safe_lines(&args[..2].join(" "), &govbus(args));
    }
}
