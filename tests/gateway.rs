//! A department developer's day one, with the real binaries: get a token,
//! `govbus publish` a CSV through the gateway, see the bad row by line number,
//! and find the good rows routed to the canonical topic. Publishing the same
//! file again publishes nothing twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{govbus_bin, repo};
use govbus_kafka::topics::Topics;
use govbus_testkit::{consumer_config, create_topic, unique, Broker};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;

/// Keys read from `topic`: until `enough` arrived or `wait` passed.
async fn count(topic: &str, enough: usize, wait: Duration) -> Vec<String> {
    let consumer: StreamConsumer =
        consumer_config(&Broker::shared().bootstrap(), &unique("reader"))
            .create()
            .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut keys = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while keys.len() < enough {
        let Ok(Ok(m)) = tokio::time::timeout_at(deadline, consumer.recv()).await else {
            break;
        };
        keys.push(String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned());
    }
    keys
}

#[tokio::test]
async fn publish_a_csv_through_the_gateway_and_the_router() {
    let bootstrap = Broker::shared().bootstrap();
    let topics = Topics::new(format!("{}.", unique("pub")));
    create_topic(&bootstrap, &topics.ingest("hrss"), 1)
        .await
        .unwrap();
    // 1. A token for HRSS; the credentials file keeps only its hash.
    let dir = tempfile::tempdir().unwrap();
    let (token, creds) = common::new_credential("hrss", dir.path());
    // 2. Gateway and router.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gateway_url = format!("http://127.0.0.1:{port}");
    let mut gateway = common::spawn_gateway(&bootstrap, &topics, &creds, port, &[]);
    let mut router = common::spawn_router(&bootstrap, &topics, &[]);
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "gateway did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // 3. Publish the CSV: two good rows, one bad.
    let csv = repo().join("examples/records/hrss.pension_payment.csv");
    let publish = || {
        Command::new(govbus_bin())
            .args([
                "publish",
                "--dataset",
                "hrss.pension_payment",
                csv.to_str().unwrap(),
                "--gateway",
                &gateway_url,
            ])
            .env("GOVBUS_TOKEN", &token)
            .output()
            .unwrap()
    };
    let out = publish();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(2),
        "published with a rejected row: exit code 2: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(
            "hrss.pension_payment.csv:4: rejected resident_id_checksum at `recipient_id_number`"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("2 accepted, 1 rejected"), "{stdout}");
    assert!(
        !stdout.contains("510107197208150044") && !stdout.contains("王五"),
        "no values echoed: {stdout}"
    );
    // 4. The good rows are routed to the canonical topic.
    let routed = count(
        &topics.data("hrss.pension_payment"),
        2,
        Duration::from_secs(30),
    )
    .await;
    let mut sorted = routed.clone();
    sorted.sort();
    assert_eq!(sorted, ["PP202610000101", "PP202610000102"]);
    // 5. The same file again: the gateway remembers each batch's key.
    let again = publish();
    assert!(String::from_utf8_lossy(&again.stdout).contains("2 accepted, 1 rejected"));
    let ingested = count(&topics.ingest("hrss"), 3, Duration::from_secs(6)).await;
    assert_eq!(ingested.len(), 2, "nothing published twice: {ingested:?}");
    // 6. schemathesis against the gateway's own OpenAPI document: no 5xx,
    // no response that contradicts the document.
    let st = Command::new(std::env::var("GOVBUS_TEST_PYTHON").unwrap_or_else(|_| "python3".into()))
        .args([
            "-m",
            "schemathesis.cli",
            "run",
            &format!("{gateway_url}/openapi.json"),
            "--checks",
            "all",
            "--max-examples",
            "25",
        ])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&st.stdout);
    assert!(
        st.status.success(),
        "schemathesis found problems:\n{report}{}",
        String::from_utf8_lossy(&st.stderr)
    );
    for c in [&mut gateway, &mut router] {
        c.kill().unwrap();
        let _ = c.wait();
    }
}

/// The gateway's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// 60 unauthenticated clients each sending a 15 MiB body at once (the
/// outside check raised RSS from 52 to 1,120 MiB): the gateway answers 401
/// from the headers and buffers none of it. RSS growth is printed and bounded.
#[test]
fn unauthenticated_floods_do_not_grow_the_gateway() {
    use std::io::{Read, Write};
    let bootstrap = Broker::shared().bootstrap();
    let topics = Topics::new(format!("{}.", unique("flood")));
    let dir = tempfile::tempdir().unwrap();
    let (_token, creds) = common::new_credential("hrss", dir.path());
    let port = common::free_port();
    let mut gateway = common::spawn_gateway(&bootstrap, &topics, &creds, port, &[]);
    common::wait_listening(port);
    std::thread::sleep(Duration::from_secs(1));
    let before = rss_kib(gateway.id());
    let body = vec![b'['; 15 << 20];
    let clients: Vec<_> = (0..60)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let head = format!("POST /v1/datasets/hrss.pension_payment/records HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
                let _ = s.write_all(head.as_bytes());
                // The server may close before all of it is sent: that is the point.
                let _ = s.write_all(&body);
                let mut answer = String::new();
                let _ = s.read_to_string(&mut answer);
                answer
            })
        })
        .collect();
    let mut peak = before;
    let mut answers = Vec::new();
    for c in clients {
        peak = peak.max(rss_kib(gateway.id()));
        answers.push(c.join().unwrap());
    }
    peak = peak.max(rss_kib(gateway.id()));
    let _ = gateway.kill();
    let _ = gateway.wait();
    let answered = answers
        .iter()
        .filter(|a| a.starts_with("HTTP/1.1 401"))
        .count();
    eprintln!(
        "60 × 15 MiB unauthenticated: RSS {} → peak {} MiB; {answered} answered 401",
        before / 1024,
        peak / 1024
    );
    assert!(answered >= 50, "answered 401: {answered} of 60");
    assert!(
        peak < before + 64 * 1024,
        "RSS grew from {} to {} MiB",
        before / 1024,
        peak / 1024
    );
}
