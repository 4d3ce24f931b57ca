//! The router process under faults, against the real broker: kill -9 while
//! records flow, a second instance taking over, SIGTERM. Bounded in time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};

use std::time::{Duration, Instant};

use common::govbus_bin;
use govbus_kafka::headers as h;
use govbus_kafka::topics::Topics;
use govbus_testkit::{consumer_config, producer_config, unique};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// The broker the fault tests run on.
///
/// librdkafka's mock cluster, not Tansu: Tansu 0.6.0's group coordinator
/// answers SyncGroup after a member's session expires with the *previous*
/// generation's assignment, so the partitions of a killed router are never
/// consumed again (ARCHITECTURE.md, "Tansu 0.6.0 consumer groups"). The mock
/// implements the group protocol (joins, session expiry, SyncGroup) correctly.
struct Bus {
    cluster: rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
}

impl Bus {
    fn new() -> Bus {
        Bus {
            cluster: rdkafka::mocking::MockCluster::new(1).unwrap(),
        }
    }

    fn bootstrap(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Creates the ingest, data and DLQ topics with enough partitions that no
    /// partition nears the mock's 5 MiB retention.
    fn topics(&self, topics: &Topics, ingest_partitions: i32) {
        self.cluster
            .create_topic(&topics.ingest("hrss"), ingest_partitions, 1)
            .unwrap();
        self.cluster
            .create_topic(&topics.data("hrss.pension_payment"), 16, 1)
            .unwrap();
        self.cluster
            .create_topic(&topics.dlq("hrss"), 4, 1)
            .unwrap();
    }
}

/// A router process and the port of its metrics endpoint.
struct Proc {
    child: Child,
    port: u16,
}

fn spawn_router(bus: &Bus, topics: &Topics, group: &str, instance: &str) -> Proc {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(govbus_bin());
    cmd.args([
        "router",
        "--bootstrap",
        &bus.bootstrap(),
        "--topic-prefix",
        topics.prefix(),
    ])
    .args([
        "--group",
        group,
        "--instance",
        instance,
        "--listen",
        &listen,
        "--no-create-topics",
    ])
    .args([
        "--kafka",
        "session.timeout.ms=6000",
        "--kafka",
        "heartbeat.interval.ms=500",
    ])
    .env(
        "GOVBUS_LOG",
        std::env::var("GOVBUS_TEST_LOG_LEVEL").unwrap_or_else(|_| "warn".into()),
    )
    .stdout(Stdio::null());
    if let Ok(debug) = std::env::var("GOVBUS_TEST_KAFKA_DEBUG") {
        cmd.args(["--kafka", &format!("debug={debug}")]);
    }
    // GOVBUS_TEST_LOGS=DIR keeps each router's log for a post-mortem.
    match std::env::var_os("GOVBUS_TEST_LOGS") {
        Some(dir) => {
            let path = std::path::Path::new(&dir).join(format!(
                "{}-{instance}-{}.log",
                topics.prefix(),
                unique("run")
            ));
            cmd.stderr(std::fs::File::create(path).unwrap());
        }
        None => {
            cmd.stderr(Stdio::null());
        }
    }
    Proc {
        child: govbus_testkit::spawn(cmd).unwrap(),
        port,
    }
}

/// Records this process has routed or dead-lettered, from its `/metrics`.
fn handled(port: u16) -> u64 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .filter(|l| {
            l.starts_with("govbus_router_records_routed_total{")
                || l.starts_with("govbus_router_records_rejected_total{")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Waits until the process has handled at least `n` records (20 s at most),
/// so that a kill lands mid-stream rather than during start-up.
async fn wait_handled(p: &Proc, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while handled(p.port) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn kill9(p: &mut Proc) {
    p.child.kill().unwrap();
    p.child.wait().unwrap();
}

/// `keys × versions` pension payments; every 100th is invalid (wrong ID check digit).
fn records(keys: usize, versions: usize) -> Vec<(String, u64, String)> {
    let mut out = Vec::with_capacity(keys * versions);
    for v in 1..=versions as u64 {
        for k in 0..keys {
            let id = if (k + v as usize) % 100 == 0 {
                "110105194912310021"
            } else {
                "11010519491231002X"
            };
            let key = format!("PP{k:012}");
            let value = format!(
                r#"{{"payment_id":"{key}","recipient_id_number":"{id}","recipient_name":"张建国","pension_type":"ENTERPRISE_EMPLOYEE","pay_month":"2026-10","amount":"{}.00","paid_at":"2026-10-15T10:00:00+08:00"}}"#,
                1000 + v
            );
            out.push((key, v, value));
        }
    }
    out
}

/// Publishes at about `rate` records/s.
async fn publish_all(
    bootstrap: String,
    topic: String,
    records: Vec<(String, u64, String)>,
    rate: usize,
) {
    let topic = topic.as_str();
    let producer: FutureProducer = producer_config(&bootstrap).create().unwrap();
    let started = Instant::now();
    for (i, chunk) in records.chunks(1000).enumerate() {
        let mut pending = Vec::with_capacity(chunk.len());
        for (key, version, value) in chunk {
            let v = version.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: h::CE_TYPE,
                    value: Some("hrss.pension_payment"),
                })
                .insert(Header {
                    key: h::CE_SOURCEVERSION,
                    value: Some(v.as_str()),
                });
            let rec = FutureRecord::to(topic)
                .key(key.as_str())
                .payload(value.as_str())
                .headers(headers);
            pending.push(producer.send_result(rec).map_err(|(e, _)| e).unwrap());
        }
        for p in pending {
            p.await.unwrap().map_err(|(e, _)| e).unwrap();
        }
        let due = Duration::from_secs_f64(((i + 1) * 1000) as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
}

struct Seen {
    /// (key, version) → times seen on data or DLQ.
    counts: HashMap<(String, u64), usize>,
    /// Per key, versions in the order they were first seen on the data topic.
    first_order: HashMap<String, Vec<u64>>,
    dlq: usize,
}

/// Reads data and DLQ until every expected (key, version) was seen or `timeout`.
async fn collect(
    bus: &Bus,
    topics: &Topics,
    expected: &HashSet<(String, u64)>,
    timeout: Duration,
) -> Seen {
    let consumer: StreamConsumer = consumer_config(&bus.bootstrap(), &unique("check"))
        .create()
        .unwrap();
    let data = topics.data("hrss.pension_payment");
    let dlq = topics.dlq("hrss");
    consumer.subscribe(&[data.as_str(), dlq.as_str()]).unwrap();
    let mut seen = Seen {
        counts: HashMap::new(),
        first_order: HashMap::new(),
        dlq: 0,
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut missing = expected.len();
    while missing > 0 {
        let Ok(m) = tokio::time::timeout_at(deadline, consumer.recv()).await else {
            break;
        };
        let Ok(m) = m else { continue };
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        let version: u64 = m
            .headers()
            .and_then(|hs| h::get_str(hs, h::CE_SOURCEVERSION))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let n = seen.counts.entry((key.clone(), version)).or_default();
        *n += 1;
        if *n == 1 {
            if expected.contains(&(key.clone(), version)) {
                missing -= 1;
            }
            if m.topic() == data {
                seen.first_order.entry(key).or_default().push(version);
            } else {
                seen.dlq += 1;
            }
        }
    }
    seen
}

fn check(seen: &Seen, expected: &HashSet<(String, u64)>, what: &str) {
    let lost: Vec<_> = expected
        .iter()
        .filter(|k| !seen.counts.contains_key(*k))
        .take(5)
        .collect();
    let duplicates: usize = seen.counts.values().map(|n| n - 1).sum();
    let lost_count = expected
        .iter()
        .filter(|k| !seen.counts.contains_key(*k))
        .count();
    eprintln!(
        "{what}: {} records, lost {lost_count}, duplicated {duplicates}, dead-lettered {}",
        expected.len(),
        seen.dlq
    );
    assert_eq!(lost_count, 0, "{what}: lost records, e.g. {lost:?}");
    for (key, versions) in &seen.first_order {
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "{what}: key {key} out of order: {versions:?}"
        );
    }
}

#[tokio::test]
async fn at_least_once_loses_nothing_when_the_router_is_killed_5_times() {
    let bus = Bus::new();
    let topics = Topics::new(format!("{}.", unique("kill")));
    bus.topics(&topics, 4);
    let group = unique("router");
    let input = records(2_000, 25);
    let expected: HashSet<(String, u64)> = input.iter().map(|(k, v, _)| (k.clone(), *v)).collect();
    let mut router = spawn_router(&bus, &topics, &group, "a");
    let producing = tokio::spawn(publish_all(
        bus.bootstrap(),
        topics.ingest("hrss"),
        input,
        5_000,
    ));
    for i in 0..5 {
        // Kill while it routes: after it handled some records, at a varying point.
        wait_handled(&router, 500 + 700 * i).await;
        eprintln!(
            "kill -9 after {} records handled by this process",
            handled(router.port)
        );
        kill9(&mut router);
        router = spawn_router(&bus, &topics, &group, "a");
    }
    producing.await.unwrap();
    let seen = collect(&bus, &topics, &expected, Duration::from_secs(180)).await;
    check(&seen, &expected, "5 × kill -9, at-least-once");
    assert_eq!(
        seen.dlq, 500,
        "every invalid record is dead-lettered once at least"
    );

    // SIGTERM: the last router finishes its batch, commits and exits cleanly.
    let started = Instant::now();
    let pid = router.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = loop {
        if let Some(s) = router.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "router ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn a_second_instance_takes_over_when_one_is_killed() {
    let bus = Bus::new();
    let topics = Topics::new(format!("{}.", unique("pair")));
    bus.topics(&topics, 4);
    let group = unique("router");
    let input = records(1_000, 20);
    let expected: HashSet<(String, u64)> = input.iter().map(|(k, v, _)| (k.clone(), *v)).collect();
    let mut a = spawn_router(&bus, &topics, &group, "a");
    let mut b = spawn_router(&bus, &topics, &group, "b");
    let producing = tokio::spawn(publish_all(
        bus.bootstrap(),
        topics.ingest("hrss"),
        input,
        4_000,
    ));
    wait_handled(&a, 1_000).await;
    kill9(&mut a);
    producing.await.unwrap();
    let seen = collect(&bus, &topics, &expected, Duration::from_secs(120)).await;
    check(&seen, &expected, "two instances, one killed");
    kill9(&mut b);
}
