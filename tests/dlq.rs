//! The dead-letter workflow an operator follows, with the real binary and broker:
//! a rule rejects records → `dlq list` shows them → `dlq show` masks personal
//! data → the rule is fixed → `dlq replay` sends them back and they route.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{govbus_bin, repo};
use govbus_kafka::headers as h;
use govbus_kafka::topics::Topics;
use govbus_testkit::{consumer_config, create_topic, producer_config, unique, Broker};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

fn router(topics: &Topics, group: &str, catalog: &Path) -> Child {
    let mut cmd = Command::new(govbus_bin());
    cmd.args([
        "router",
        "--bootstrap",
        &Broker::shared().bootstrap(),
        "--topic-prefix",
        topics.prefix(),
    ])
    .args([
        "--group",
        group,
        "--listen",
        "127.0.0.1:0",
        "--catalog",
        catalog.to_str().unwrap(),
    ])
    .args([
        "--kafka",
        "session.timeout.ms=6000",
        "--kafka",
        "heartbeat.interval.ms=500",
    ])
    .env("GOVBUS_LOG", "warn")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    govbus_testkit::spawn(cmd).unwrap()
}

fn dlq(topics: &Topics, args: &[&str]) -> Output {
    Command::new(govbus_bin())
        .args([
            "dlq",
            args[0],
            "--bootstrap",
            &Broker::shared().bootstrap(),
            "--department",
            "hrss",
            "--topic-prefix",
            topics.prefix(),
        ])
        .args(&args[1..])
        .env("GOVBUS_LOG", "info")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn rejected_records_are_listed_masked_and_replayed_after_the_fix() {
    let topics = Topics::new(format!("{}.", unique("dlq")));
    create_topic(&Broker::shared().bootstrap(), &topics.ingest("hrss"), 1)
        .await
        .unwrap();
    // A catalog whose pension rule is too strict: nothing above 1000 yuan.
    let strict = tempfile::tempdir().unwrap();
    govbus_testkit::copy_dir(&repo().join("schemas"), strict.path()).unwrap();
    let rules = strict
        .path()
        .join("datasets/hrss.pension_payment/dataset.toml");
    govbus_testkit::replace_in_file(&rules, "max = \"100000\"", "max = \"1000\"").unwrap();
    let group = unique("router");
    let mut r = router(&topics, &group, strict.path());

    let sample: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(repo().join("examples/records/hrss.pension_payment.json"))
            .unwrap(),
    )
    .unwrap();
    let good = sample[0].clone(); // 4352.60 yuan: rejected by the strict rule
    let mut bad_id = sample[1].clone();
    bad_id["recipient_id_number"] = serde_json::json!("510107197208150044");
    let producer: FutureProducer = producer_config(&Broker::shared().bootstrap())
        .create()
        .unwrap();
    for rec in [&good, &bad_id] {
        let body = rec.to_string();
        let key = rec["payment_id"].as_str().unwrap().to_owned();
        let hs = OwnedHeaders::new().insert(Header {
            key: h::CE_TYPE,
            value: Some("hrss.pension_payment"),
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

    // dlq list: both, with reasons.
    let started = Instant::now();
    let listed: serde_json::Value = loop {
        let out = dlq(&topics, &["list", "--format", "json"]);
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::json!([]));
        if v.as_array().is_some_and(|a| a.len() == 2) || started.elapsed() > Duration::from_secs(60)
        {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let entries = listed.as_array().unwrap();
    assert_eq!(entries.len(), 2, "{listed}");
    let range = entries
        .iter()
        .find(|e| e["reason"] == "range_out_of_bounds")
        .expect("range rejection");
    assert_eq!(range["field"], "amount");
    assert!(entries
        .iter()
        .any(|e| e["reason"] == "resident_id_checksum" && e["field"] == "recipient_id_number"));
    let table = text(&dlq(&topics, &["list", "--reason", "range_out_of_bounds"]).stdout);
    assert!(table.contains("1 of 2 dead letters"), "{table}");

    // dlq show: the record, with personal fields masked.
    let at = range["at"].as_str().unwrap();
    let shown = dlq(&topics, &["show", "--at", at]);
    let shown_text = text(&shown.stdout);
    assert!(
        shown.status.success(),
        "{shown_text}{}",
        text(&shown.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&shown_text).unwrap();
    assert_eq!(v["errors"]["govbus.error.reason"], "range_out_of_bounds");
    assert_eq!(v["record"]["recipient_id_number"], "110105********002X");
    assert_eq!(v["record"]["recipient_name"], "张*");
    assert_eq!(
        v["record"]["amount"], "4352.60",
        "non-personal fields are shown"
    );
    assert!(
        !shown_text.contains("11010519491231002X") && !shown_text.contains("张建国"),
        "{shown_text}"
    );

    // Dry run first: nothing is sent.
    let dry = text(&dlq(&topics, &["replay", "--reason", "range_out_of_bounds"]).stdout);
    assert!(
        dry.contains("would replay") && dry.contains("dry run: 1 dead letter(s) selected"),
        "{dry}"
    );

    // Fix the cause (the real catalog), restart the router, replay for real.
    r.kill().unwrap();
    r.wait().unwrap();
    let mut r = router(&topics, &group, &repo().join("schemas"));
    let replayed = dlq(
        &topics,
        &["replay", "--reason", "range_out_of_bounds", "--execute"],
    );
    assert!(
        text(&replayed.stdout).contains("replayed 1 dead letter(s)"),
        "{}",
        text(&replayed.stdout)
    );
    assert!(
        text(&replayed.stderr).contains("Dead letter sent."),
        "every replay is logged: {}",
        text(&replayed.stderr)
    );

    let consumer: StreamConsumer =
        consumer_config(&Broker::shared().bootstrap(), &unique("reader"))
            .create()
            .unwrap();
    consumer
        .subscribe(&[topics.data("hrss.pension_payment").as_str()])
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Ok(m) = consumer.recv().await {
                return m.detach();
            }
        }
    })
    .await
    .expect("the replayed record is routed");
    assert_eq!(m.key(), Some(b"PP202610000001".as_slice()));
    r.kill().unwrap();
    let _ = r.wait();
}
