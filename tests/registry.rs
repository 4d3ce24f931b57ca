//! The schema registry with stock clients: Python confluent-kafka's
//! SchemaRegistryClient and AvroSerializer publish to an ingest topic, the
//! router accepts the record. And the API's error codes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, repo, spawn, wait_listening};
use govbus_kafka::headers as h;
use govbus_kafka::topics::Topics;
use govbus_testkit::{consumer_config, create_topic, unique, Broker};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;

/// (status, body) of an HTTP request to the registry.
fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn api_answers_with_confluent_shapes_and_error_codes() {
    let port = free_port();
    let mut registry = spawn(&["registry", "--listen", &format!("127.0.0.1:{port}")]);
    wait_listening(port);
    assert_eq!(http(port, "GET", "/mode", "").1, "{\"mode\":\"READONLY\"}");
    let (status, subjects) = http(port, "GET", "/subjects", "");
    assert_eq!(status, 200);
    let subjects: Vec<String> = serde_json::from_str(&subjects).unwrap();
    for s in [
        "data.hrss.pension_payment-value",
        "gov.city.hrss.PensionPayment",
        "ingest.hrss-gov.city.hrss.PensionPayment",
        "ingest.hrss-value",
    ] {
        assert!(
            subjects.iter().any(|x| x == s),
            "{s} missing from {subjects:?}"
        );
    }
    let (status, versions) = http(
        port,
        "GET",
        "/subjects/data.civil_affairs.death_registration-value/versions",
        "",
    );
    assert_eq!((status, versions.as_str()), (200, "[1,2]"));
    let (_, latest) = http(
        port,
        "GET",
        "/subjects/data.civil_affairs.death_registration-value/versions/latest",
        "",
    );
    let latest: serde_json::Value = serde_json::from_str(&latest).unwrap();
    assert_eq!(latest["version"], 2);
    let id = latest["id"].as_u64().unwrap();
    let (status, by_id) = http(port, "GET", &format!("/schemas/ids/{id}"), "");
    assert_eq!(status, 200);
    assert!(by_id.contains("informant_phone"));

    let v1 = std::fs::read_to_string(
        repo().join("schemas/datasets/civil_affairs.death_registration/v1.avsc"),
    )
    .unwrap();
    let body = serde_json::json!({"schema": v1}).to_string();
    let (status, found) = http(
        port,
        "POST",
        "/subjects/data.civil_affairs.death_registration-value",
        &body,
    );
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&found).unwrap()["version"],
        1
    );
    let (status, compat) = http(
        port,
        "POST",
        "/compatibility/subjects/data.civil_affairs.death_registration-value/versions/latest",
        &body,
    );
    assert_eq!((status, compat.as_str()), (200, "{\"is_compatible\":true}"));

    for (method, path, body, status, code) in [
        (
            "GET",
            "/subjects/nope-value/versions",
            String::new(),
            404,
            40401,
        ),
        (
            "GET",
            "/subjects/data.hrss.pension_payment-value/versions/9",
            String::new(),
            404,
            40402,
        ),
        ("GET", "/schemas/ids/7", String::new(), 404, 40403),
        (
            "POST",
            "/subjects/data.hrss.pension_payment-value",
            body.clone(),
            404,
            40403,
        ),
        (
            "POST",
            "/subjects/data.hrss.pension_payment-value/versions",
            "{\"schema\": \"{not avro\"}".to_owned(),
            422,
            42201,
        ),
        (
            "POST",
            "/subjects/data.hrss.pension_payment-value/versions",
            serde_json::json!({"schema": "{\"type\":\"record\",\"name\":\"X\",\"fields\":[]}"})
                .to_string(),
            422,
            42205,
        ),
    ] {
        let (got, text) = http(port, method, path, &body);
        assert_eq!(got, status, "{method} {path}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error_code"], code, "{method} {path}: {text}");
    }
    registry.kill().unwrap();
    let _ = registry.wait();
}

#[tokio::test]
async fn python_confluent_client_publishes_and_the_router_accepts() {
    let topics = Topics::new(format!("{}.", unique("sr")));
    let bootstrap = Broker::shared().bootstrap();
    create_topic(&bootstrap, &topics.ingest("hrss"), 1)
        .await
        .unwrap();
    let port = free_port();
    let mut registry = spawn(&[
        "registry",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--topic-prefix",
        topics.prefix(),
    ]);
    let mut router = common::spawn_router(&bootstrap, &topics, &[]);
    wait_listening(port);
    let out =
        Command::new(std::env::var("GOVBUS_TEST_PYTHON").unwrap_or_else(|_| "python3".into()))
            .arg(repo().join("tests/python/publish_with_registry.py"))
            .args([
                "--registry",
                &format!("http://127.0.0.1:{port}"),
                "--bootstrap",
                &bootstrap,
            ])
            .args([
                "--topic",
                &topics.ingest("hrss"),
                "--data-subject",
                &format!("{}-value", topics.data("hrss.pension_payment")),
            ])
            .output()
            .unwrap();
    assert!(
        out.status.success(),
        "python publisher failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["latest_id"], report["framed_id"],
        "the serializer framed the value with the registry's id"
    );

    let consumer: StreamConsumer = consumer_config(&bootstrap, &unique("reader"))
        .create()
        .unwrap();
    consumer
        .subscribe(&[topics.data("hrss.pension_payment").as_str()])
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
        .await
        .expect("routed")
        .unwrap();
    assert_eq!(m.key(), Some(b"PP202699000001".as_slice()));
    let schema_id = m
        .headers()
        .and_then(|hs| h::get_str(hs, h::CE_SCHEMAID).map(str::to_owned));
    assert_eq!(
        schema_id.as_deref(),
        report["framed_id"]
            .as_u64()
            .map(|i| i.to_string())
            .as_deref()
    );
    assert_eq!(
        m.payload()
            .map(|p| u32::from_be_bytes([p[1], p[2], p[3], p[4]]) as u64),
        report["framed_id"].as_u64()
    );
    for c in [&mut registry, &mut router] {
        c.kill().unwrap();
        let _ = c.wait();
    }
}

#[tokio::test]
async fn a_compatible_version_registered_at_run_time_persists_and_routes() {
    let topics = Topics::new(format!("{}.", unique("rw")));
    let bootstrap = Broker::shared().bootstrap();
    create_topic(&bootstrap, &topics.ingest("hrss"), 1)
        .await
        .unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let registry_args = [
        "registry",
        "--listen",
        listen.as_str(),
        "--topic-prefix",
        topics.prefix(),
        "--read-write",
        bootstrap.as_str(),
    ];
    let mut registry = spawn(&registry_args);
    let mut router = common::spawn_router(&bootstrap, &topics, &["--follow-schema-log"]);
    wait_listening(port);
    let data_subject = format!("{}-value", topics.data("hrss.pension_payment"));
    let out =
        Command::new(std::env::var("GOVBUS_TEST_PYTHON").unwrap_or_else(|_| "python3".into()))
            .arg(repo().join("tests/python/register_and_publish.py"))
            .args([
                "--registry",
                &format!("http://127.0.0.1:{port}"),
                "--bootstrap",
                &bootstrap,
            ])
            .args([
                "--topic",
                &topics.ingest("hrss"),
                "--data-subject",
                &data_subject,
            ])
            .output()
            .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["incompatible_status"], 409, "{report}");
    assert_eq!(report["v2_id"], report["framed_id"]);

    // The router followed the schema log and accepts the new version.
    let consumer: StreamConsumer = consumer_config(&bootstrap, &unique("reader"))
        .create()
        .unwrap();
    consumer
        .subscribe(&[topics.data("hrss.pension_payment").as_str()])
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
        .await
        .expect("routed")
        .unwrap();
    assert_eq!(m.key(), Some(b"PP202699000002".as_slice()));
    let framed = m
        .payload()
        .map(|p| u64::from(u32::from_be_bytes([p[1], p[2], p[3], p[4]])));
    assert_eq!(framed, report["v2_id"].as_u64());

    // A sink following the log decodes it too, and delivers it (here to a
    // Kafka view); without the log it could only dead-letter it, and a live
    // stream skipped it.
    let sink_port = free_port();
    let mut sink = spawn(&[
        "sink",
        "--bootstrap",
        &bootstrap,
        "--topic-prefix",
        topics.prefix(),
        "--subscription",
        "hrss_fraud_pensions",
        "--listen",
        &format!("127.0.0.1:{sink_port}"),
        "--follow-schema-log",
    ]);
    wait_listening(sink_port);
    let started = Instant::now();
    let in_view =
        |r: &govbus_kafka::read::Record| r.key.as_deref() == Some(b"PP202699000002".as_slice());
    let view = loop {
        let view = govbus_kafka::read::read_all(
            &bootstrap,
            &topics.view("hrss_fraud_pensions"),
            Duration::from_secs(1),
            Duration::from_secs(10),
        )
        .unwrap_or_default();
        if view.iter().any(in_view) || started.elapsed() > Duration::from_secs(60) {
            break view;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let dead = govbus_kafka::read::read_all(
        &bootstrap,
        &topics.subscription_dlq("hrss_fraud_pensions"),
        Duration::from_secs(1),
        Duration::from_secs(5),
    )
    .unwrap_or_default();
    sink.kill().unwrap();
    let _ = sink.wait();
    assert!(
        view.iter().any(in_view),
        "the v2 record in the view ({} records; {} dead letters)",
        view.len(),
        dead.len()
    );

    assert_eq!(http(port, "GET", "/mode", "").1, "{\"mode\":\"READWRITE\"}");
    // A gateway following the log encodes JSON under the new version: a record
    // with v2's new field is accepted (under v1 it would be json_unknown_field).
    let dir = tempfile::tempdir().unwrap();
    let (token, creds) = common::new_credential("hrss", dir.path());
    let gw_port = free_port();
    let mut gateway = common::spawn_gateway(
        &bootstrap,
        &topics,
        &creds,
        gw_port,
        &["--follow-schema-log"],
    );
    wait_listening(gw_port);
    let mut record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("examples/records/hrss.pension_payment.json"))
            .unwrap(),
    )
    .unwrap();
    let mut record = record[0].take();
    record["payment_id"] = serde_json::json!("PP202699000003");
    record["remark"] = serde_json::json!("补发");
    let body = serde_json::json!([record]).to_string();
    let started = Instant::now();
    let answer = loop {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", gw_port)).unwrap();
        write!(s, "POST /v1/datasets/hrss.pension_payment/records HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        if resp.contains("\"accepted\":1") || started.elapsed() > Duration::from_secs(20) {
            break resp;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(answer.contains("\"accepted\":1"), "{answer}");
    gateway.kill().unwrap();
    let _ = gateway.wait();

    // A compatibility level set through the API is checked, logged and served.
    let config_path = format!("/config/{data_subject}");
    let (status, body) = http(port, "PUT", &config_path, "{\"compatibility\": \"FULL\"}");
    assert_eq!(
        (status, body.as_str()),
        (200, "{\"compatibility\":\"FULL\"}")
    );
    let (status, body) = http(
        port,
        "PUT",
        &config_path,
        "{\"compatibility\": \"SIDEWAYS\"}",
    );
    assert_eq!(status, 422, "{body}");
    // A restarted registry replays the log: the version is still there, same id.
    registry.kill().unwrap();
    let _ = registry.wait();
    let mut registry = spawn(&registry_args);
    wait_listening(port);
    let (status, latest) = http(
        port,
        "GET",
        &format!("/subjects/{data_subject}/versions/latest"),
        "",
    );
    assert_eq!(status, 200, "{latest}");
    let latest: serde_json::Value = serde_json::from_str(&latest).unwrap();
    assert_eq!(latest["version"], 2);
    assert_eq!(latest["id"], report["v2_id"]);
    let (_, level) = http(port, "GET", &format!("/config/{data_subject}"), "");
    assert_eq!(
        level, "{\"compatibilityLevel\":\"FULL\"}",
        "the level survived the restart"
    );
    for c in [&mut registry, &mut router] {
        c.kill().unwrap();
        let _ = c.wait();
    }
}
