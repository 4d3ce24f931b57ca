//! The gateway against the real broker, over real HTTP on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use govbus_catalog::Catalog;
use govbus_gateway::{Credentials, Gateway, GatewayConfig};
use govbus_kafka::headers as h;
use govbus_kafka::topics::Topics;
use govbus_testkit::{consumer_config, create_topic, unique, Broker};
use govbus_validate::Engine;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedHeaders};
use serde_json::{json, Value};

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

struct Running {
    port: u16,
    topics: Topics,
}

async fn start(config: impl FnOnce(&mut GatewayConfig)) -> Running {
    let topics = Topics::new(format!("{}.", unique("gw")));
    create_topic(&Broker::shared().bootstrap(), &topics.ingest("hrss"), 1)
        .await
        .unwrap();
    start_on(topics, config).await
}

/// Another gateway instance on the same topics (a restart, or a second instance).
async fn start_on(topics: Topics, config: impl FnOnce(&mut GatewayConfig)) -> Running {
    let catalog = Catalog::load(&repo().join("schemas")).unwrap();
    let engine = Arc::new(Engine::new(&catalog).unwrap());
    let mut cfg = GatewayConfig::new(Broker::shared().bootstrap());
    cfg.topics = topics.clone();
    config(&mut cfg);
    let creds = Credentials::default()
        .with_token("hrss", "hrss-secret")
        .with_token("civil_affairs", "ca-secret");
    let gateway = Arc::new(Gateway::new(engine, creds, cfg).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(govbus_gateway::serve(
        listener,
        gateway,
        std::future::pending(),
    ));
    Running { port, topics }
}

/// (status, headers, body) — a plain HTTP/1.1 client, so the test depends on nothing but std.
async fn request(
    port: u16,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    let path = path.to_owned();
    let token = token.map(str::to_owned);
    let content_type = content_type.to_owned();
    let extra: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let body = body.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
        if let Some(t) = token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).unwrap();
        let _ = s.write_all(&body);
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        let resp = String::from_utf8_lossy(&resp).into_owned();
        let status = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let (head, body) = resp.split_once("\r\n\r\n").map(|(a, b)| (a.to_owned(), b.to_owned())).unwrap_or_default();
        (status, head.to_ascii_lowercase(), body)
    })
    .await
    .unwrap()
}

fn pensions() -> Vec<Value> {
    serde_json::from_str(
        &std::fs::read_to_string(repo().join("examples/records/hrss.pension_payment.json"))
            .unwrap(),
    )
    .unwrap()
}

async fn ingested(topics: &Topics, n: usize, wait: Duration) -> Vec<(String, Vec<u8>, String)> {
    let consumer: StreamConsumer =
        consumer_config(&Broker::shared().bootstrap(), &unique("reader"))
            .create()
            .unwrap();
    consumer
        .subscribe(&[topics.ingest("hrss").as_str()])
        .unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while out.len() < n {
        let Ok(Ok(m)) = tokio::time::timeout_at(deadline, consumer.recv()).await else {
            break;
        };
        let ce_type = m
            .headers()
            .and_then(|hs| h::get_str(hs, h::CE_TYPE))
            .unwrap_or("")
            .to_owned();
        out.push((
            String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
            m.payload().unwrap_or_default().to_vec(),
            ce_type,
        ));
    }
    out
}

const PATH: &str = "/v1/datasets/hrss.pension_payment/records";

#[tokio::test]
async fn credentials_and_ownership_are_enforced() {
    let g = start(|_| {}).await;
    let body = json!(pensions()).to_string();
    let (s, head, _) = request(g.port, PATH, None, "application/json", &[], body.as_bytes()).await;
    assert_eq!(s, 401);
    assert!(head.contains("www-authenticate: bearer"));
    assert_eq!(
        request(
            g.port,
            PATH,
            Some("wrong"),
            "application/json",
            &[],
            body.as_bytes()
        )
        .await
        .0,
        401
    );
    let (s, _, b) = request(
        g.port,
        PATH,
        Some("ca-secret"),
        "application/json",
        &[],
        body.as_bytes(),
    )
    .await;
    assert_eq!(s, 403, "civil affairs cannot publish HRSS's dataset: {b}");
    assert!(b.contains("publisher_not_owner"));
    let (s, _, _) = request(
        g.port,
        "/v1/datasets/hrss.nope/records",
        Some("hrss-secret"),
        "application/json",
        &[],
        body.as_bytes(),
    )
    .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn a_mixed_batch_gets_per_record_answers_and_only_valid_records_reach_the_broker() {
    let g = start(|_| {}).await;
    let mut records = pensions();
    let mut bad = records[0].clone();
    bad["payment_id"] = json!("PP202610000099");
    bad["recipient_id_number"] = json!("11010519491231002Y");
    records.insert(1, bad);
    let (s, _, b) = request(
        g.port,
        PATH,
        Some("hrss-secret"),
        "application/json",
        &[],
        json!(records).to_string().as_bytes(),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(
        (v["accepted"].as_u64(), v["rejected"].as_u64()),
        (Some(2), Some(1)),
        "{b}"
    );
    assert_eq!(v["results"][1]["reason"], "resident_id_format");
    assert_eq!(v["results"][1]["field"], "recipient_id_number");
    assert!(
        !b.contains("11010519491231002Y"),
        "answers never echo values: {b}"
    );
    let got = ingested(&g.topics, 3, Duration::from_secs(10)).await;
    let keys: Vec<&str> = got.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["PP202610000001", "PP202610000002"],
        "only the valid records, acknowledged before the answer"
    );
    assert!(
        got.iter()
            .all(|(_, v, t)| v[0] == 0 && t == "hrss.pension_payment"),
        "canonical Avro with ce_type"
    );

    // A CloudEvents batch: the record is `data`; id, time and op travel as headers.
    let ce = json!([{"specversion": "1.0", "id": "evt-77", "source": "/hrss/pensions", "type": "hrss.pension_payment",
                      "time": "2026-10-15T02:00:00Z", "op": "update", "data": pensions()[0]}]).to_string();
    let (s, _, b) = request(
        g.port,
        PATH,
        Some("hrss-secret"),
        "application/cloudevents-batch+json",
        &[],
        ce.as_bytes(),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert!(b.contains("\"accepted\":1"), "{b}");

    // NDJSON: a malformed line rejects that record only.
    let nd = format!(
        "{}\n{{\"payment_id\": \n{}\n",
        json!(pensions()[0]),
        json!(pensions()[1])
    );
    let (s, _, b) = request(
        g.port,
        PATH,
        Some("hrss-secret"),
        "application/x-ndjson",
        &[],
        nd.as_bytes(),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["results"][1]["reason"], "json_invalid");
    assert_eq!(v["accepted"], 2);
}

#[tokio::test]
async fn malformed_and_oversized_requests_are_refused_clearly() {
    let g = start(|c| {
        c.max_body_bytes = 4096;
        c.max_records = 2;
    })
    .await;
    let (s, _, b) = request(
        g.port,
        PATH,
        Some("hrss-secret"),
        "application/json",
        &[],
        b"[{\"payment_id\": ",
    )
    .await;
    assert_eq!(s, 400);
    assert!(b.contains("malformed_json") && b.contains("line 1"), "{b}");
    let (s, _, b) = request(
        g.port,
        PATH,
        Some("hrss-secret"),
        "application/json",
        &[],
        b"[false]",
    )
    .await;
    assert_eq!(s, 400, "records are JSON objects: {b}");
    assert!(b.contains("record 0 is a boolean"), "{b}");
    let big = vec![b' '; 10_000];
    let (s, head, b) = request(
        g.port,
        PATH,
        Some("hrss-secret"),
        "application/json",
        &[],
        &big,
    )
    .await;
    assert_eq!(s, 413, "{b}");
    assert!(
        head.contains("content-type: application/json") && b.contains("body_too_large"),
        "the documented JSON problem, not axum's text: {head}{b}"
    );
    let three = json!([pensions()[0], pensions()[1], pensions()[0]]).to_string();
    let (s, _, b) = request(
        g.port,
        PATH,
        Some("hrss-secret"),
        "application/json",
        &[],
        three.as_bytes(),
    )
    .await;
    assert_eq!(s, 413);
    assert!(b.contains("too_many_records"), "{b}");
    // Every record rejected: answered per record.
    let (s, _, b) = request(
        g.port,
        PATH,
        Some("hrss-secret"),
        "application/json",
        &[],
        b"[{\"payment_id\": \"x\"}]",
    )
    .await;
    assert_eq!(
        s, 200,
        "every record rejected is still a processed batch: {b}"
    );
    assert!(
        b.contains("\"rejected\":1") && b.contains("json_missing_field"),
        "{b}"
    );
}

#[tokio::test]
async fn an_idempotency_key_makes_a_retry_safe() {
    let g = start(|_| {}).await;
    let body = json!(pensions()).to_string();
    let key = [("Idempotency-Key", "batch-2026-10-15-001")];
    let first = request(
        g.port,
        PATH,
        Some("hrss-secret"),
        "application/json",
        &key,
        body.as_bytes(),
    )
    .await;
    let second = request(
        g.port,
        PATH,
        Some("hrss-secret"),
        "application/json",
        &key,
        body.as_bytes(),
    )
    .await;
    assert_eq!((first.0, second.0), (200, 200));
    assert_eq!(first.2, second.2, "the same answer");
    assert!(second.1.contains("idempotent-replayed: true"));
    let got = ingested(&g.topics, 3, Duration::from_secs(8)).await;
    assert_eq!(
        got.len(),
        2,
        "published once: {:?}",
        got.iter().map(|g| &g.0).collect::<Vec<_>>()
    );
}

/// Every message on `ingest.hrss`, with its headers: until `n` arrived or `wait` passed.
async fn ingested_messages(
    topics: &Topics,
    n: usize,
    wait: Duration,
) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer: StreamConsumer =
        consumer_config(&Broker::shared().bootstrap(), &unique("reader"))
            .create()
            .unwrap();
    consumer
        .subscribe(&[topics.ingest("hrss").as_str()])
        .unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while out.len() < n {
        let Ok(Ok(m)) = tokio::time::timeout_at(deadline, consumer.recv()).await else {
            break;
        };
        out.push(m.detach());
    }
    out
}

fn ce_id(m: &rdkafka::message::OwnedMessage) -> String {
    m.headers()
        .and_then(|hs| h::get_str(hs, h::CE_ID))
        .unwrap_or("")
        .to_owned()
}

/// What the gateway accepts, the router routes: every record the gateway
/// wrote is put through the router's own decision, and none is dead-lettered.
fn assert_router_routes_all(topics: &Topics, got: &[rdkafka::message::OwnedMessage]) {
    let catalog = Catalog::load(&repo().join("schemas")).unwrap();
    let engine = Engine::new(&catalog).unwrap();
    let ctx = govbus_validate::Context::now();
    let ingest = topics.ingest("hrss");
    for m in got {
        let incoming = govbus_router::gate::Incoming {
            topic: &ingest,
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: None,
            key: m.key(),
            value: m.payload(),
            headers: m.headers().map(OwnedHeaders::as_borrowed),
        };
        match govbus_router::gate::decide(&engine, topics, &incoming, &ctx) {
            govbus_router::gate::Decision::Route(_) => {}
            govbus_router::gate::Decision::Reject(d) => {
                panic!("the gateway accepted what the router dead-letters: {d:?}")
            }
        }
    }
}

#[tokio::test]
async fn every_cloudevent_attribute_is_checked_at_the_gateway_as_the_router_does() {
    let g = start(|_| {}).await;
    let record = pensions()[0].clone();
    let mut other = pensions()[1].clone();
    let ev = |extra: Value, data: &Value| {
        let mut e = json!({"specversion": "1.0", "source": "/departments/hrss", "data": data});
        for (k, v) in extra.as_object().unwrap() {
            e[k] = v.clone();
        }
        e
    };
    // Index → the field the rejection must name; the rest are accepted.
    let cases: Vec<(Value, Option<&str>)> = vec![
        (json!({"id": "a b"}), Some("id")),
        (json!({"id": "x".repeat(300)}), Some("id")),
        (json!({"id": "身份证"}), Some("id")),
        (json!({"id": 42}), Some("id")),
        (json!({"time": "yesterday"}), Some("time")),
        (json!({"time": "2026-13-01T00:00:00Z"}), Some("time")),
        (json!({"op": "frobnicate"}), Some("op")),
        (json!({"sourceversion": -1}), Some("sourceversion")),
        (json!({"sourceversion": "v2"}), Some("sourceversion")),
        (json!({"specversion": "0.3"}), Some("specversion")),
        (
            json!({"type": "civil_affairs.death_registration"}),
            Some("type"),
        ),
        (
            json!({"id": "evt-1", "time": "2026-10-15T09:30:00+08:00", "op": "update", "sourceversion": 7}),
            None,
        ),
    ];
    let batch: Vec<Value> = cases
        .iter()
        .map(|(extra, bad)| {
            if bad.is_some() {
                ev(extra.clone(), &record)
            } else {
                other["payment_id"] = json!("PP202610000109");
                ev(extra.clone(), &other)
            }
        })
        .collect();
    let (s, _, b) = request(
        g.port,
        PATH,
        Some("hrss-secret"),
        "application/cloudevents-batch+json",
        &[],
        json!(batch).to_string().as_bytes(),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let answer: Value = serde_json::from_str(&b).unwrap();
    for (i, (_, bad)) in cases.iter().enumerate() {
        let r = &answer["results"][i];
        match bad {
            Some(field) => {
                assert_eq!(r["status"], "rejected", "case {i}: {r}");
                assert_eq!(r["reason"], "envelope_invalid", "case {i}: {r}");
                assert_eq!(r["field"], *field, "case {i}: {r}");
            }
            None => assert_eq!(r["status"], "accepted", "case {i}: {r}"),
        }
    }
    let got = ingested_messages(&g.topics, 2, Duration::from_secs(8)).await;
    assert_eq!(got.len(), 1, "only the valid event is published");
    assert_eq!(ce_id(&got[0]), "evt-1");
    assert_eq!(
        got[0]
            .headers()
            .and_then(|hs| h::get_str(hs, h::CE_SOURCEVERSION)),
        Some("7"),
        "the source version is carried, not dropped"
    );
    assert_router_routes_all(&g.topics, &got);
}

#[tokio::test]
async fn event_ids_are_unique_across_concurrent_requests_and_never_carry_caller_text() {
    let g = start(|_| {}).await;
    let port = g.port;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let mut r = pensions()[0].clone();
        r["payment_id"] = json!(format!("PP2026100002{i:02}"));
        // Half of them with an Idempotency-Key that is personal data.
        let key = format!("51010719720815{i:04}");
        tasks.push(tokio::spawn(async move {
            let extra: Vec<(&str, &str)> = if i % 2 == 0 {
                vec![("Idempotency-Key", key.as_str())]
            } else {
                vec![]
            };
            request(
                port,
                PATH,
                Some("hrss-secret"),
                "application/json",
                &extra,
                json!([r]).to_string().as_bytes(),
            )
            .await
        }));
    }
    for t in tasks {
        let (s, _, b) = t.await.unwrap();
        assert_eq!(s, 200, "{b}");
    }
    let got = ingested_messages(&g.topics, 40, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 40);
    let ids: std::collections::HashSet<String> = got.iter().map(ce_id).collect();
    assert_eq!(ids.len(), 40, "every record its own id: {ids:?}");
    for id in &ids {
        assert!(
            uuid::Uuid::parse_str(id).is_ok_and(|u| u.get_version_num() == 7),
            "a UUIDv7: {id}"
        );
        assert!(!id.contains("510107"), "no caller text in an id: {id}");
    }
    assert_router_routes_all(&g.topics, &got);
}

#[tokio::test]
async fn a_bad_idempotency_key_is_refused_never_ignored() {
    let g = start(|_| {}).await;
    let body = json!(pensions()).to_string();
    let long = "k".repeat(256);
    for key in ["a b", long.as_str(), "身份证号", "tab\tkey"] {
        let (s, _, b) = request(
            g.port,
            PATH,
            Some("hrss-secret"),
            "application/json",
            &[("Idempotency-Key", key)],
            body.as_bytes(),
        )
        .await;
        assert_eq!(s, 400, "{key:?}: {b}");
        assert!(b.contains("idempotency_key_invalid"), "{b}");
    }
    let (s, _, b) = request(
        g.port,
        PATH,
        Some("hrss-secret"),
        "application/json",
        &[("Idempotency-Key", "one"), ("Idempotency-Key", "two")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(s, 400, "two keys: {b}");
    let got = ingested_messages(&g.topics, 1, Duration::from_secs(5)).await;
    assert!(got.is_empty(), "nothing published");
}

#[tokio::test]
async fn concurrent_duplicates_with_one_key_publish_once_and_get_one_answer() {
    let g = start(|_| {}).await;
    let body = json!(pensions()).to_string();
    let port = g.port;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let body = body.clone();
            tokio::spawn(async move {
                request(
                    port,
                    PATH,
                    Some("hrss-secret"),
                    "application/json",
                    &[("Idempotency-Key", "race-2026-10-15")],
                    body.as_bytes(),
                )
                .await
            })
        })
        .collect();
    let mut bodies = std::collections::HashSet::new();
    for t in tasks {
        let (s, _, b) = t.await.unwrap();
        assert_eq!(s, 200, "{b}");
        bodies.insert(b);
    }
    assert_eq!(bodies.len(), 1, "one answer for all: {bodies:?}");
    let got = ingested_messages(&g.topics, 3, Duration::from_secs(8)).await;
    assert_eq!(got.len(), 2, "published once");
}

#[tokio::test]
async fn idempotency_keys_survive_a_restart_and_are_shared_by_instances() {
    let first = start(|_| {}).await;
    let body = json!(pensions()).to_string();
    let key = [("Idempotency-Key", "durable-2026-10-15-001")];
    let a = request(
        first.port,
        PATH,
        Some("hrss-secret"),
        "application/json",
        &key,
        body.as_bytes(),
    )
    .await;
    assert_eq!(a.0, 200, "{}", a.2);
    // A second instance (or the first one restarted) on the same topics.
    let second = start_on(first.topics.clone(), |_| {}).await;
    let b = request(
        second.port,
        PATH,
        Some("hrss-secret"),
        "application/json",
        &key,
        body.as_bytes(),
    )
    .await;
    assert_eq!(b.0, 200, "{}", b.2);
    assert!(b.1.contains("idempotent-replayed: true"), "{}", b.1);
    assert_eq!(a.2, b.2, "the first answer, with the same event ids");
    // The same key for another request is a conflict there too.
    let c = request(
        second.port,
        PATH,
        Some("hrss-secret"),
        "application/json",
        &key,
        json!([pensions()[0]]).to_string().as_bytes(),
    )
    .await;
    assert_eq!(c.0, 409, "{}", c.2);
    let got = ingested_messages(&first.topics, 3, Duration::from_secs(8)).await;
    assert_eq!(got.len(), 2, "published once across instances");
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let g = start(|_| {}).await;
    let body = json!(pensions()).to_string();
    let (s, _, b) = tokio::task::spawn_blocking({
        let port = g.port;
        move || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            let head = format!("POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nauthorization: bearer hrss-secret\r\n\r\n", body.len());
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(body.as_bytes()).unwrap();
            let mut resp = String::new();
            let _ = s.read_to_string(&mut resp);
            let status: u16 = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
            (status, (), resp)
        }
    })
    .await
    .unwrap();
    assert_eq!(s, 200, "{b}");
}

/// Writes `head` (no body) on a new connection and reads what comes back
/// within `wait`: the answer, or "" if the server closed without one, or
/// None if it neither answered nor closed.
fn raw(port: u16, head: &str, wait: Duration) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&out).into_owned()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(String::from_utf8_lossy(&out).into_owned())
            }
            Err(_) => return (!out.is_empty()).then(|| String::from_utf8_lossy(&out).into_owned()),
        }
    }
}

#[tokio::test]
async fn an_unauthenticated_body_is_never_read() {
    let g = start(|_| {}).await;
    let port = g.port;
    // A 15 MiB body announced, not one byte of it sent: the 401 comes at once.
    for token in ["", "Authorization: Bearer wrong\r\n"] {
        let head = format!(
            "POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{token}Content-Length: 15728640\r\n\r\n"
        );
        let answer = tokio::task::spawn_blocking(move || raw(port, &head, Duration::from_secs(5)))
            .await
            .unwrap();
        let answer = answer.expect("answered before the body was sent");
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    }
}

#[tokio::test]
async fn slow_headers_are_cut_off_and_connections_are_capped() {
    let g = start(|c| {
        c.header_timeout = Duration::from_secs(1);
        c.max_connections = 8;
    })
    .await;
    let port = g.port;
    tokio::task::spawn_blocking(move || {
        // 8 connections that never finish their headers (slowloris) ...
        let slow: Vec<std::net::TcpStream> = (0..8)
            .map(|_| {
                let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.write_all(b"POST /v1/datasets/x/records HTTP/1.1\r\nHost: x\r\n")
                    .unwrap();
                s
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        // ... fill the cap: a ninth is closed at once, unanswered.
        let ninth = raw(
            port,
            "GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
            Duration::from_secs(3),
        );
        assert_eq!(ninth.as_deref(), Some(""), "closed at accept: {ninth:?}");
        // The slow ones are closed by the header timeout.
        for mut s in slow {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 1024];
            let started = std::time::Instant::now();
            let n = s.read(&mut buf).unwrap_or(0);
            let text = String::from_utf8_lossy(&buf[..n]);
            assert!(
                n == 0 || text.starts_with("HTTP/1.1 408"),
                "closed, or 408: {text}"
            );
            assert!(started.elapsed() < Duration::from_secs(4));
        }
        // With them gone, a normal request is served again.
        let ok = raw(
            port,
            "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        );
        assert!(ok.unwrap_or_default().starts_with("HTTP/1.1 200"));
        let m = raw(
            port,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .unwrap_or_default();
        assert!(
            m.contains("govbus_gateway_connections_refused_total 1"),
            "{m}"
        );
    })
    .await
    .unwrap();
}

/// A client that sends a keyed request and hangs up before the answer, then
/// retries at once with the same key: the first request still finishes and
/// keeps its answer, so the retry is answered from it and nothing is
/// published twice.
#[tokio::test]
async fn a_retry_after_the_client_hung_up_publishes_nothing_twice() {
    let g = start(|_| {}).await;
    let body = json!(pensions()).to_string();
    let port = g.port;
    let b = body.clone();
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let head = format!("POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer hrss-secret\r\nIdempotency-Key: hangup-2026-10-15\r\nContent-Length: {}\r\n\r\n", b.len());
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(b.as_bytes()).unwrap();
        // Hang up without reading the answer.
    })
    .await
    .unwrap();
    let (s, head, b) = request(
        g.port,
        PATH,
        Some("hrss-secret"),
        "application/json",
        &[("Idempotency-Key", "hangup-2026-10-15")],
        body.as_bytes(),
    )
    .await;
    // Either request may be read first; whichever owns the key, the other
    // is answered from it.
    assert_eq!(s, 200, "{head}{b}");
    let got = ingested(&g.topics, 3, Duration::from_secs(8)).await;
    assert_eq!(got.len(), 2, "published once");
}

/// A timestamp with more fraction digits than its field's unit would be cut
/// without a word; it is refused like a decimal's extra digits, and one that
/// fits (trailing zeros included) is taken as sent.
#[tokio::test]
async fn a_timestamp_finer_than_its_field_is_refused_not_cut() {
    let g = start(|_| {}).await;
    let mut records = pensions();
    records.truncate(1);
    let mut fine = records[0].clone();
    fine["payment_id"] = json!("PP202610000077");
    fine["paid_at"] = json!("2026-10-15T10:00:00.123456+08:00");
    let mut exact = records[0].clone();
    exact["payment_id"] = json!("PP202610000078");
    exact["paid_at"] = json!("2026-10-15T10:00:00.120000+08:00");
    records.push(fine);
    records.push(exact);
    let (s, _, b) = request(
        g.port,
        PATH,
        Some("hrss-secret"),
        "application/json",
        &[],
        json!(records).to_string().as_bytes(),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["results"][1]["reason"], "temporal_precision", "{b}");
    assert_eq!(v["results"][1]["field"], "paid_at", "{b}");
    assert_eq!(v["results"][2]["status"], v["results"][0]["status"], "{b}");
    assert_eq!(
        (v["accepted"].as_u64(), v["rejected"].as_u64()),
        (Some(2), Some(1)),
        "{b}"
    );
}

/// A record too large for the bus to carry (key and canonical value above
/// `limits::MAX_PUBLISHED_BYTES`) is refused with a reason. Before, the
/// producer refused it locally and the caller got 503 "retry in 5 s" for
/// ever, for a record no retry could publish.
#[tokio::test]
async fn a_record_too_large_for_the_bus_is_rejected_with_a_reason_not_a_retry() {
    let g = start(|_| {}).await;
    let mut records = pensions();
    records.truncate(1);
    let mut big = records[0].clone();
    // Valid: the payment id has no length rule; 600,000 bytes, in the key
    // and in the value.
    big["payment_id"] = json!(format!("PP{}", "9".repeat(600_000)));
    records.push(big);
    let (s, head, b) = request(
        g.port,
        PATH,
        Some("hrss-secret"),
        "application/json",
        &[],
        json!(records).to_string().as_bytes(),
    )
    .await;
    assert_eq!(s, 200, "{head}");
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["results"][0]["status"], "accepted", "{b:.400}");
    assert_eq!(v["results"][1]["status"], "rejected", "{b:.400}");
    assert_eq!(v["results"][1]["reason"], "message_too_large", "{b:.400}");
    let detail = v["results"][1]["detail"].as_str().unwrap();
    assert!(
        detail.contains("at most") && !detail.contains("PP99"),
        "{detail}"
    );
    assert_eq!(
        (
            v["accepted"].as_u64(),
            v["rejected"].as_u64(),
            v["not_acknowledged"].as_u64()
        ),
        (Some(1), Some(1), Some(0)),
        "{b:.400}"
    );
}
