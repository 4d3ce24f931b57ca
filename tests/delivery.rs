//! Delivery end to end, with the real binaries, the real broker, the
//! machine's PostgreSQL, and subscriber endpoints written with other people's
//! libraries (Standard Webhooks, CloudEvents SDK, httpx-sse): records
//! published to `ingest.civil_affairs` → router → `data.*` → `govbus sink` →
//! the subscriber, masked per grant, recorded in the ledger.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, govbus_bin, repo, spawn_router, wait_listening, Receiver};
use govbus_kafka::headers as h;
use govbus_kafka::topics::Topics;
use govbus_testkit::{create_topic, producer_config, unique, Broker, PgSchema};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value as Json};

const DEATHS: &str = "civil_affairs.death_registration";
const SECRET: &str = common::WEBHOOK_SECRET;

fn id_number(i: usize) -> String {
    govbus_testkit::ids::with_check(&format!(
        "{:06}19491231{:03}",
        110_105 + (i / 1000) % 500,
        i % 1000
    ))
}

/// Death registration `i`, version `v` (the cause changes with the version).
fn death(i: usize, v: u64) -> Json {
    let causes = ["natural", "disease", "accident", "other", "unknown"];
    json!({
        "registration_no": format!("DR-2026-{i:08}"),
        "deceased_id_number": id_number(i),
        "deceased_name": "欧阳娜娜",
        "gender": "FEMALE",
        "birth_date": "1949-12-31",
        "death_date": "2026-01-02",
        "death_place": "北京市朝阳区",
        "death_cause_category": causes[(v as usize) % causes.len()],
        "registering_office": "朝阳区民政局",
        "registered_at": "2026-01-03T08:00:00.000Z",
        "informant_phone": "13800138000",
    })
}

/// One change to publish: create/update with a record, or delete.
struct Change {
    i: usize,
    version: u64,
    op: &'static str,
}

impl Change {
    fn id(&self) -> String {
        format!("evt-{}-{}", self.i, self.version)
    }
    fn key(&self) -> String {
        format!("DR-2026-{:08}", self.i)
    }
}

struct Deployment {
    topics: Topics,
    catalog: tempfile::TempDir,
    logs: tempfile::TempDir,
    _router: Child,
}

fn write_subscription(catalog: &Path, id: &str, text: &str) {
    let path = catalog.join("subscriptions").join(format!("{id}.toml"));
    std::fs::write(&path, text).unwrap();
}

/// Topics of their own (`ingest.civil_affairs` and the deaths' data topic,
/// `partitions` each) and a catalog holding exactly `subscriptions`.
async fn namespace(
    name: &str,
    partitions: i32,
    subscriptions: &[(&str, String)],
) -> (Topics, tempfile::TempDir) {
    let bootstrap = Broker::shared().bootstrap();
    let topics = Topics::new(format!("{}.", unique(name)));
    create_topic(&bootstrap, &topics.ingest("civil_affairs"), partitions)
        .await
        .unwrap();
    create_topic(&bootstrap, &topics.data(DEATHS), partitions)
        .await
        .unwrap();
    let catalog = tempfile::tempdir().unwrap();
    govbus_testkit::copy_dir(&repo().join("schemas"), catalog.path()).unwrap();
    std::fs::remove_dir_all(catalog.path().join("subscriptions")).unwrap();
    std::fs::create_dir(catalog.path().join("subscriptions")).unwrap();
    for (id, text) in subscriptions {
        write_subscription(catalog.path(), id, text);
    }
    (topics, catalog)
}

impl Deployment {
    /// A namespace of its own, a catalog holding exactly `subscriptions`,
    /// and a router.
    async fn start(subscriptions: &[(&str, String)]) -> Deployment {
        let bootstrap = Broker::shared().bootstrap();
        let (topics, catalog) = namespace("dl", 2, subscriptions).await;
        let dir = catalog.path().to_str().unwrap().to_owned();
        let router = spawn_router(&bootstrap, &topics, &["--catalog", &dir]);
        Deployment {
            topics,
            catalog,
            logs: tempfile::tempdir().unwrap(),
            _router: router,
        }
    }

    fn catalog_dir(&self) -> &Path {
        self.catalog.path()
    }

    /// `govbus sink` for this deployment; its log goes to `<logs>/<name>.log`.
    fn sink(&self, name: &str, extra: &[&str]) -> (Child, u16) {
        let port = free_port();
        let log = std::fs::File::create(self.logs.path().join(format!("{name}.log"))).unwrap();
        let mut cmd = Command::new(govbus_bin());
        cmd.args(["sink", "--bootstrap", &Broker::shared().bootstrap()])
            .args(["--topic-prefix", self.topics.prefix()])
            .args(["--catalog", self.catalog_dir().to_str().unwrap()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--kafka",
                "session.timeout.ms=6000",
                "--kafka",
                "heartbeat.interval.ms=500",
            ])
            .args(extra)
            .env("GOVBUS_LOG", "info")
            .env("GOVBUS_TEST_WEBHOOK_SECRET", SECRET)
            .env(
                "GOVBUS_PSEUDONYM_SECRET",
                "test-pseudonym-secret-0123456789",
            )
            .stdout(Stdio::null())
            .stderr(log);
        let child = govbus_testkit::spawn(cmd).unwrap();
        wait_listening(port);
        (child, port)
    }

    /// Writes subscription `id` and waits until the sink `sink` has
    /// reloaded the catalog with it.
    fn regrant(&self, sink: &str, id: &str, text: &str) {
        let before = self.log(sink).matches("Catalog reloaded.").count();
        write_subscription(self.catalog_dir(), id, text);
        wait_until(
            "the sink reloads the catalog",
            Duration::from_secs(10),
            || self.log(sink).matches("Catalog reloaded.").count() > before,
        );
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    async fn publish(&self, changes: &[Change]) {
        let producer: FutureProducer = producer_config(&Broker::shared().bootstrap())
            .create()
            .unwrap();
        let topic = self.topics.ingest("civil_affairs");
        let sends: Vec<_> = changes
            .iter()
            .map(|c| {
                let (id, key, version) = (c.id(), c.key(), c.version.to_string());
                let headers = h::owned([
                    (h::CE_TYPE, DEATHS.as_bytes()),
                    (h::CE_ID, id.as_bytes()),
                    (h::CE_OP, c.op.as_bytes()),
                    (h::CE_SOURCEVERSION, version.as_bytes()),
                ]);
                let body = (c.op != "delete").then(|| death(c.i, c.version).to_string());
                let producer = producer.clone();
                let topic = topic.clone();
                async move {
                    let mut r = FutureRecord::to(&topic)
                        .key(key.as_bytes())
                        .headers(headers);
                    if let Some(b) = &body {
                        r = r.payload(b.as_bytes());
                    }
                    producer
                        .send(r, Duration::from_secs(30))
                        .await
                        .map(|_| ())
                        .map_err(|(e, _)| e)
                }
            })
            .collect();
        // One at a time: each record is acknowledged before the next is sent.
        for send in sends {
            send.await.unwrap();
        }
    }

    fn govbus(&self, args: &[&str]) -> Output {
        Command::new(govbus_bin())
            .args(args)
            .args([
                "--bootstrap",
                &Broker::shared().bootstrap(),
                "--topic-prefix",
                self.topics.prefix(),
            ])
            .env("GOVBUS_LOG", "warn")
            .output()
            .unwrap()
    }
}

fn creates(range: std::ops::Range<usize>) -> Vec<Change> {
    range
        .map(|i| Change {
            i,
            version: 1,
            op: "create",
        })
        .collect()
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn webhook_sub(subscriber: &str, url: &str, extra: &str) -> String {
    format!(
        r#"subscriber = "{subscriber}"
dataset = "{DEATHS}"
purpose = "test"

[fields]
include = ["deceased_id_number", "deceased_name", "death_date"]

[fields.treatment]
deceased_id_number = "clear"

[sink]
type = "webhook"
url = "{url}"
secret_env = "GOVBUS_TEST_WEBHOOK_SECRET"
allow_private = true
timeout = "1s"
max_backoff = "300ms"
{extra}
"#
    )
}

/// A subscription's text with the grant revoked.
fn revoked(text: &str) -> String {
    text.replace("purpose = \"test\"", "purpose = \"test\"\nrevoked = true")
}

fn metric(port: u16, name: &str, subscription: &str) -> f64 {
    let text = common::http_get(port, "/metrics");
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(&format!("subscription=\"{subscription}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_are_signed_masked_retried_and_recorded_in_the_ledger() {
    let tmp = tempfile::tempdir().unwrap();
    // 500, then 429 with Retry-After: 1, then a reply slower than the 1 s timeout, then 200s.
    let rx = Receiver::start(tmp.path(), "flaky", "500,429:1,sleep:3");
    let d = Deployment::start(&[("housing", webhook_sub("housing_fund", &rx.url(), ""))]).await;
    let (_sink, port) = d.sink("sink", &[]);
    let changes = creates(0..20);
    d.publish(&changes).await;
    wait_until("all 20 events accepted", Duration::from_secs(90), || {
        rx.accepted().iter().collect::<BTreeSet<_>>().len() == 20
    });
    let reqs = rx.requests();
    assert!(
        reqs.iter().all(|r| r["verified"] == json!(true)),
        "every signature verifies with standardwebhooks"
    );
    assert!(reqs
        .iter()
        .all(|r| r["content_type"] == json!("application/cloudevents-batch+json")));
    // The first batch was tried four times (500, 429, timeout, 200) under one webhook-id.
    let first = reqs[0]["webhook_id"].as_str().unwrap();
    assert_eq!(
        reqs.iter()
            .take(4)
            .filter(|r| r["webhook_id"] == json!(first))
            .count(),
        4,
        "{reqs:#?}"
    );
    let gap = reqs[2]["at"].as_f64().unwrap() - reqs[1]["at"].as_f64().unwrap();
    assert!(
        gap >= 0.3,
        "the 429's Retry-After (1 s, capped by max_backoff 300 ms) was honoured: {gap}"
    );
    // The grant: ID number in clear, name masked, nothing else but the key.
    let event = &reqs.last().unwrap()["events"][0];
    assert_eq!(event["type"], json!(DEATHS));
    assert_eq!(event["source"], json!("/departments/civil_affairs"));
    assert_eq!(event["op"], json!("create"));
    let data = event["data"].as_object().unwrap();
    assert_eq!(data["deceased_name"], json!("欧*"));
    let i: usize = data["registration_no"].as_str().unwrap()[8..]
        .parse()
        .unwrap();
    assert_eq!(data["deceased_id_number"], json!(id_number(i)));
    assert_eq!(data.len(), 4, "{data:?}");
    assert!(metric(port, "govbus_sink_retried_total", "housing") >= 3.0);
    // Counted once the ledger holds the delivery, which is after the receiver answered 200.
    wait_until("20 deliveries counted", Duration::from_secs(30), || {
        metric(port, "govbus_sink_delivered_total", "housing") == 20.0
    });
    assert_eq!(metric(port, "govbus_sink_delivered_total", "housing"), 20.0);

    // The ledger: every delivery recorded, chains intact, and a record's delivery can be looked up.
    wait_until(
        "ledger query finds event 7",
        Duration::from_secs(30),
        || {
            let out = d.govbus(&[
                "audit",
                "query",
                "--subscription",
                "housing",
                "--event",
                "evt-7-1",
            ]);
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("delivered")
        },
    );
    let out = d.govbus(&[
        "audit",
        "query",
        "--subscription",
        "housing",
        "--key",
        "DR-2026-00000011",
        "--catalog",
        d.catalog_dir().to_str().unwrap(),
        "--format",
        "json",
    ]);
    let rows: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["events"], json!(["evt-11-1"]), "{rows}");
    assert_eq!(rows[0]["subscriber"], json!("housing_fund"));
    let out = d.govbus(&["audit", "verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("ledger OK"), "{text}");
    // No personal data in the sink's log.
    let log = d.log("sink");
    assert!(
        !log.contains(&id_number(7)) && !log.contains("欧阳"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_redirected_gone_and_exhausted_webhooks() {
    let tmp = tempfile::tempdir().unwrap();
    let redirect = Receiver::start(tmp.path(), "redirect", &"redirect,".repeat(50));
    let gone = Receiver::start(tmp.path(), "gone", "410");
    let failing = Receiver::start(tmp.path(), "failing", &"500,".repeat(50));
    let rejecting = Receiver::start(tmp.path(), "rejecting", &"400,".repeat(50));
    let private = Receiver::start(tmp.path(), "private", "");
    let d = Deployment::start(&[
        (
            "redirected",
            webhook_sub("housing_fund", &redirect.url(), ""),
        ),
        ("gone", webhook_sub("housing_fund", &gone.url(), "")),
        (
            "exhausted",
            webhook_sub("housing_fund", &failing.url(), "max_attempts = 3"),
        ),
        (
            "rejected",
            webhook_sub("housing_fund", &rejecting.url(), ""),
        ),
        (
            "private",
            // A host name, so the catalog admits it and the runtime guard
            // (which resolves it to 127.0.0.1) is what refuses it.
            webhook_sub(
                "housing_fund",
                &private.url().replace("127.0.0.1", "localhost"),
                "",
            )
            .replace("allow_private = true", "allow_private = false"),
        ),
    ])
    .await;
    let (_sink, port) = d.sink("sink", &[]);
    d.publish(&creates(0..5)).await;
    let dlq_reasons = |sub: &str| -> Vec<String> {
        let topic = format!("{}dlq.sub.{sub}", d.topics.prefix());
        govbus_kafka::read::read_all(
            &Broker::shared().bootstrap(),
            &topic,
            Duration::from_millis(500),
            Duration::from_secs(10),
        )
        .unwrap_or_default()
        .iter()
        .map(|r| r.header(h::ERROR_REASON).to_owned())
        .collect()
    };
    for (sub, reason) in [
        ("redirected", "redirect_refused"),
        ("exhausted", "retries_exhausted"),
        ("rejected", "delivery_rejected"),
        ("private", "target_refused"),
    ] {
        wait_until(
            &format!("5 events of {sub} dead-lettered"),
            Duration::from_secs(60),
            || dlq_reasons(sub).len() == 5,
        );
        assert!(
            dlq_reasons(sub).iter().all(|r| r == reason),
            "{sub}: {:?}",
            dlq_reasons(sub)
        );
    }
    // The 5 events may arrive in one batch or several; each batch is tried
    // exactly max_attempts times (3), a redirect exactly once.
    let attempts = |rx: &Receiver| -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for r in rx.requests() {
            *m.entry(r["webhook_id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        m
    };
    assert!(
        attempts(&failing).values().all(|n| *n == 3),
        "the retry budget is 3 attempts: {:?}",
        attempts(&failing)
    );
    assert!(
        private.requests().is_empty(),
        "a refused private target is never contacted"
    );
    assert!(
        attempts(&redirect).values().all(|n| *n == 1),
        "a redirect is refused, not retried or followed"
    );
    assert_eq!(
        metric(port, "govbus_sink_dead_lettered_total", "exhausted"),
        5.0
    );
    // 410: one request, the subscription disabled, nothing dead-lettered, offsets kept.
    wait_until(
        "the 410 subscription disabled",
        Duration::from_secs(30),
        || metric(port, "govbus_sink_active", "gone") == 0.0 && !gone.requests().is_empty(),
    );
    d.publish(&creates(5..8)).await;
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        gone.requests().len(),
        1,
        "a disabled endpoint gets nothing more"
    );
    assert!(dlq_reasons("gone").is_empty());
    assert!(d.log("sink").contains("410 Gone"));
    // The dead letters are in the ledger as such.
    let out = d.govbus(&[
        "audit",
        "query",
        "--subscription",
        "rejected",
        "--format",
        "json",
    ]);
    let rows: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .all(|r| r["outcome"] == json!("dead_lettered")),
        "{rows}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_grant_stops_delivery_within_5_seconds() {
    let tmp = tempfile::tempdir().unwrap();
    let rx = Receiver::start(tmp.path(), "rx", "");
    let d = Deployment::start(&[("grant", webhook_sub("housing_fund", &rx.url(), ""))]).await;
    let (_sink, port) = d.sink("sink", &[]);
    d.publish(&creates(0..5)).await;
    wait_until("first deliveries", Duration::from_secs(60), || {
        rx.accepted().len() >= 5
    });
    // Keep publishing while the grant is revoked.
    let path = d.catalog_dir().join("subscriptions/grant.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let publisher = async {
        for round in 0..40usize {
            d.publish(&creates(100 + round * 5..105 + round * 5)).await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let revoke = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        std::fs::write(&path, revoked(&text)).unwrap();
        let at = std::time::SystemTime::now();
        let t = Instant::now();
        while metric(port, "govbus_sink_active", "grant") != 0.0
            && t.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "the sink stopped delivering {:.2} s after the revocation",
            t.elapsed().as_secs_f64()
        );
        assert!(t.elapsed() < Duration::from_secs(5));
        at
    };
    let ((), revoked_at) = tokio::join!(publisher, revoke);
    std::thread::sleep(Duration::from_secs(2));
    let revoked_at = revoked_at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let last = rx
        .requests()
        .iter()
        .filter(|r| r["answer"] == json!("200"))
        .map(|r| r["at"].as_f64().unwrap())
        .fold(0.0, f64::max);
    let after = last - revoked_at;
    println!("last delivery {after:.2} s after the revocation");
    assert!(after < 5.0, "delivered {after:.2} s after the revocation");
    assert_eq!(metric(port, "govbus_sink_active", "grant"), 0.0);
    // Undelivered events were not skipped: re-granting delivers them.
    let delivered_before = rx.accepted().len();
    std::fs::write(&path, &text).unwrap();
    wait_until(
        "re-granted deliveries resume",
        Duration::from_secs(60),
        || rx.accepted().len() >= 5 + 200,
    );
    assert!(rx.accepted().len() > delivered_before);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_postgres_sink_ends_with_exactly_the_table_the_stream_implies_despite_kill_9() {
    let pg = PgSchema::create().await.unwrap();
    let sub = format!(
        r#"subscriber = "hrss"
dataset = "{DEATHS}"
purpose = "test"

[fields]
exclude = ["informant_phone"]

[fields.treatment]
deceased_id_number = "clear"

[sink]
type = "postgres"
table = "{}.deaths"
"#,
        pg.name()
    );
    let d = Deployment::start(&[("pgsink", sub)]).await;
    let conninfo = govbus_testkit::PgSchema::conninfo_default();
    // v1 creates for 0..600, v2 updates for the even ones, deletes (v3) for every fifth.
    let mut changes = creates(0..600);
    changes.extend((0..600).step_by(2).map(|i| Change {
        i,
        version: 2,
        op: "update",
    }));
    changes.extend((0..600).step_by(5).map(|i| Change {
        i,
        version: 3,
        op: "delete",
    }));
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for c in &changes {
        if c.op == "delete" {
            expected.remove(&c.key());
        } else {
            expected.insert(c.key(), c.version);
        }
    }
    // Batches larger than anything fetched at once: the stored offsets fall on
    // broker batch boundaries, which Tansu 0.6.0 needs to resume correctly
    // (it skips the rest of a batch when fetching from inside it; pinned in
    // govbus-testkit). On Kafka any offset resumes correctly.
    let (mut sink, _) = d.sink("sink-0", &["--postgres", &conninfo, "--max-batch", "5000"]);
    let chunks: Vec<&[Change]> = changes.chunks(150).collect();
    for (n, chunk) in chunks.iter().enumerate() {
        d.publish(chunk).await;
        std::thread::sleep(Duration::from_millis(700));
        // kill -9 mid-stream, three times.
        if n < 3 {
            sink.kill().unwrap();
            let _ = sink.wait();
            sink = d
                .sink(
                    &format!("sink-{}", n + 1),
                    &["--postgres", &conninfo, "--max-batch", "5000"],
                )
                .0;
        }
    }
    let client = pg.client().await.unwrap();
    let table = format!("\"{}\".deaths", pg.name());
    let mut got = BTreeMap::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(90) {
        got = client
            .query(
                &format!("SELECT registration_no, _govbus_source_version FROM {table}"),
                &[],
            )
            .await
            .map(|rows| {
                rows.iter()
                    .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
                    .collect()
            })
            .unwrap_or_default();
        if got == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(got.len(), expected.len());
    assert_eq!(
        got, expected,
        "the table is exactly what the stream implies"
    );
    // Typed columns from the Avro schema; masked name as text; excluded field absent.
    let cols: BTreeMap<String, String> = client
        .query("SELECT column_name::text, data_type::text FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'deaths'", &[&pg.name()])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(cols["death_date"], "date");
    assert_eq!(cols["registered_at"], "timestamp with time zone");
    assert_eq!(cols["deceased_name"], "text");
    assert!(!cols.contains_key("informant_phone"));
    let row = client
        .query_one(&format!("SELECT deceased_name, deceased_id_number, death_cause_category FROM {table} WHERE registration_no = 'DR-2026-00000002'"), &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "欧*");
    assert_eq!(row.get::<_, String>(1), id_number(2));
    assert_eq!(row.get::<_, String>(2), "accident", "version 2's value");
    sink.kill().unwrap();
}

/// The PostgreSQL sink's table follows its grant: narrowed (a field
/// removed, a clear field masked, a row filter added), the removed column
/// leaves the table, every row is rewritten under the new treatment, and
/// rows outside the new filter go; nothing of the old grant stays behind.
#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_table_follows_its_grant_when_the_grant_is_narrowed() {
    let pg = PgSchema::create().await.unwrap();
    let grant = |narrowed: bool| {
        format!(
            r#"subscriber = "hrss"
dataset = "{DEATHS}"
purpose = "test"
{}
[fields]
include = [{}"deceased_name", "death_date", "death_cause_category"]

[fields.treatment]
{}

[sink]
type = "postgres"
table = "{}.deaths"
"#,
            if narrowed {
                "filter = [\"death_cause_category != accident\"]"
            } else {
                ""
            },
            if narrowed {
                ""
            } else {
                "\"deceased_id_number\", "
            },
            if narrowed {
                ""
            } else {
                "deceased_id_number = \"clear\"\ndeceased_name = \"clear\""
            },
            pg.name()
        )
    };
    let d = Deployment::start(&[("pgfollow", grant(false))]).await;
    let conninfo = govbus_testkit::PgSchema::conninfo_default();
    let (mut sink, _) = d.sink("sink", &["--postgres", &conninfo, "--max-batch", "5000"]);
    // v1 ("disease") for 0..40, v2 ("accident") for the even ones.
    let mut changes = creates(0..40);
    changes.extend((0..40).step_by(2).map(|i| Change {
        i,
        version: 2,
        op: "update",
    }));
    d.publish(&changes).await;
    let client = pg.client().await.unwrap();
    let table = format!("\"{}\".deaths", pg.name());
    let rows = |sql: String| {
        let client = &client;
        async move {
            client
                .query(&sql, &[])
                .await
                .map(|rows| {
                    rows.iter()
                        .map(|r| serde_json::from_str::<Json>(&r.get::<_, String>(0)).unwrap())
                        .collect::<Vec<Json>>()
                })
                .unwrap_or_default()
        }
    };
    let all = format!("SELECT to_jsonb(t)::text FROM {table} t ORDER BY _govbus_subject");
    let start = Instant::now();
    while rows(all.clone()).await.len() < 40 {
        assert!(start.elapsed() < Duration::from_secs(60), "first load");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let before = rows(all.clone()).await;
    assert_eq!(before[0]["deceased_id_number"], json!(id_number(0)));
    // A second instance on the same table waits instead of rewriting it.
    let (mut second, _) = d.sink("second", &["--postgres", &conninfo, "--max-batch", "5000"]);
    wait_until("the second instance waits", Duration::from_secs(30), || {
        d.log("second").contains("is held by another govbus sink")
    });
    let _ = second.kill();
    let _ = second.wait();
    assert_eq!(before[0]["deceased_name"], json!("欧阳娜娜"));

    write_subscription(d.catalog_dir(), "pgfollow", &grant(true));
    d.publish(&creates(100..105)).await;
    // Odd keys (v1, "disease") and the five new ones stay; even keys are
    // "accident" now, outside the filter.
    let want: BTreeSet<String> = (1..40)
        .step_by(2)
        .chain(100..105)
        .map(|i| format!("DR-2026-{i:08}"))
        .collect();
    let start = Instant::now();
    let mut after = Vec::new();
    let settled = |rows: &[Json]| {
        rows.iter()
            .map(|r| r["_govbus_subject"].as_str().unwrap().to_owned())
            .collect::<BTreeSet<String>>()
            == want
            && rows.iter().all(|r| {
                r.get("deceased_id_number").is_none() && r["deceased_name"] == json!("欧*")
            })
    };
    while start.elapsed() < Duration::from_secs(60) {
        after = rows(all.clone()).await;
        if settled(&after) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        settled(&after),
        "the table still holds what the old grant allowed: {} rows, first {:?}",
        after.len(),
        after.first()
    );
    let cols: BTreeSet<String> = client
        .query("SELECT column_name::text FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'deaths'", &[&pg.name()])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!cols.contains("deceased_id_number"), "{cols:?}");
    assert!(!cols.contains("informant_phone"), "{cols:?}");
    let log = d.log("sink");
    assert!(log.contains("The grant changed"), "{log}");
    wait_until("the sweep once caught up", Duration::from_secs(30), || {
        d.log("sink")
            .contains("Rows no longer delivered under the grant deleted.")
    });
    let _ = sink.kill();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_stream_client_that_disconnects_and_resumes_loses_nothing() {
    let sub = format!(
        "subscriber = \"public_security\"\ndataset = \"{DEATHS}\"\npurpose = \"test\"\n\n[sink]\ntype = \"sse\"\n"
    );
    let d = Deployment::start(&[("live", sub)]).await;
    let (token, creds) = common::new_credential("public_security", d.logs.path());
    let (other_token, other_creds) = common::new_credential("hrss", &d.logs.path().join(".."));
    let merged = d.logs.path().join("all.toml");
    std::fs::write(
        &merged,
        std::fs::read_to_string(&creds).unwrap()
            + "\n"
            + &std::fs::read_to_string(&other_creds).unwrap(),
    )
    .unwrap();
    let (_sink, port) = d.sink(
        "sink",
        &[
            "--credentials",
            merged.to_str().unwrap(),
            "--heartbeat",
            "1s",
        ],
    );
    d.publish(&creates(0..60)).await;
    let url = format!("http://127.0.0.1:{port}/v1/subscriptions/live/events?from=beginning");
    let run = |args: &[&str]| -> Output {
        Command::new("python3")
            .arg(repo().join("tests/python/sse_client.py"))
            .args(args)
            .output()
            .unwrap()
    };
    // Wrong department, no token, unknown subscription.
    let out = run(&[&url, &other_token, "status"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "403");
    let out = run(&[&url, "nonsense", "status"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "401");
    let out = run(&[&url.replace("/live/", "/nope/"), &token, "status"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "404");
    // Read what is there, disconnect; 20 more are published meanwhile; resume
    // from the last id. (The disconnect is at the end of what was written: on
    // Tansu 0.6.0 a resume from inside a broker batch skips the rest of the
    // batch — a broker bug pinned in govbus-testkit; on Kafka any cursor works.)
    let out = run(&[&url, &token, "read", "60"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first: Json = serde_json::from_slice(&out.stdout).unwrap();
    let last_id = first["last_id"].as_str().unwrap().to_owned();
    d.publish(&creates(60..80)).await;
    let out = run(&[&url, &token, "read", "20", &last_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let second: Json = serde_json::from_slice(&out.stdout).unwrap();
    let mut ids: Vec<String> = first["ids"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["ids"].as_array().unwrap())
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(n, ids.len(), "no duplicates across the resume");
    let want: BTreeSet<String> = (0..80).map(|i| format!("evt-{i}-1")).collect();
    assert_eq!(
        ids.into_iter().collect::<BTreeSet<_>>(),
        want,
        "nothing lost across the resume"
    );
    // An idle stream gets heartbeats (every second here) instead of silence.
    let out = run(&[&url.replace("?from=beginning", ""), &token, "idle", "3"]);
    let beats: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(beats >= 2, "{beats} heartbeats in 3 s");
    // Masked by default for this grant.
    assert_eq!(first["sample"]["data"]["deceased_name"], json!("欧*"));
    assert!(first["sample"]["data"]["deceased_id_number"]
        .as_str()
        .unwrap()
        .contains("********"));
}

/// Clients at the head of a live stream share one Kafka reader (issue 16):
/// a dozen clients from the end and one that starts at the beginning (its
/// own consumer until it catches up, then the shared reader) each get every
/// event meant for them, once and in order, while one reader serves them.
#[tokio::test(flavor = "multi_thread")]
async fn live_stream_clients_at_the_head_share_one_reader_and_miss_nothing() {
    const CLIENTS: usize = 12;
    let sub = format!(
        "subscriber = \"public_security\"\ndataset = \"{DEATHS}\"\npurpose = \"test\"\n\n[sink]\ntype = \"sse\"\n"
    );
    let d = Deployment::start(&[("live", sub)]).await;
    let (token, creds) = common::new_credential("public_security", d.logs.path());
    let (_sink, port) = d.sink("sink", &["--credentials", creds.to_str().unwrap()]);
    d.publish(&creates(0..30)).await;
    let url = format!("http://127.0.0.1:{port}/v1/subscriptions/live/events");
    let client_after = |url: String, n: usize, last_id: &str| {
        Command::new("python3")
            .arg(repo().join("tests/python/sse_client.py"))
            .args([url.as_str(), token.as_str(), "read", &n.to_string()])
            .args((!last_id.is_empty()).then_some(last_id))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let client = |url: String, n: usize| client_after(url, n, "");
    let at_head: Vec<Child> = (0..CLIENTS).map(|_| client(url.clone(), 40)).collect();
    let from_start = client(format!("{url}?from=beginning"), 70);
    // A stale id from before a topic was recreated (or a forged one): past
    // every partition's end. It reads from the beginning rather than wait,
    // silent, for offsets the topic will not reach for a long time.
    let stale = client_after(
        url.clone(),
        70,
        "0:1000000,1:1000000,2:1000000,3:1000000,4:1000000,5:1000000,6:1000000,7:1000000",
    );
    wait_until("every client connected", Duration::from_secs(60), || {
        common::http_get(port, "/metrics").contains(&format!(
            "govbus_sink_sse_clients{{subscription=\"live\"}} {}",
            CLIENTS + 2
        ))
    });
    let metrics = common::http_get(port, "/metrics");
    assert!(
        metrics.contains("govbus_sink_sse_readers 1\n"),
        "one shared reader for the topic: {metrics}"
    );
    d.publish(&creates(30..70)).await;
    let ids = |child: Child| -> Vec<String> {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let read: Json = serde_json::from_slice(&out.stdout).unwrap();
        read["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    let later: BTreeSet<String> = (30..70).map(|i| format!("evt-{i}-1")).collect();
    for c in at_head {
        let got = ids(c);
        assert_eq!(got.len(), 40, "each once: {got:?}");
        assert_eq!(
            got.iter().cloned().collect::<BTreeSet<_>>(),
            later,
            "{got:?}"
        );
    }
    for c in [from_start, stale] {
        let got = ids(c);
        assert_eq!(got.len(), 70, "each once across the hand-over: {got:?}");
        assert_eq!(
            got.into_iter().collect::<BTreeSet<_>>(),
            (0..70)
                .map(|i| format!("evt-{i}-1"))
                .collect::<BTreeSet<_>>()
        );
    }
}

/// The subscription's line in `govbus report`'s report.json.
fn reported_subscription(report: &Json, id: &str) -> Json {
    report["departments"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|d| d["subscriptions"].as_array().unwrap().clone())
        .find(|s| s["id"] == json!(id))
        .unwrap_or_else(|| panic!("no subscription {id} in {report}"))
}

/// Issue #19: a live-stream grant is active while its grant is valid and the
/// sink serves its endpoint — with a client connected, on the scorecard too,
/// and still between clients; a revoked grant is inactive.
#[tokio::test(flavor = "multi_thread")]
async fn a_live_stream_grant_is_reported_active_while_it_streams() {
    let sub = format!(
        "subscriber = \"public_security\"\ndataset = \"{DEATHS}\"\npurpose = \"test\"\n\n[sink]\ntype = \"sse\"\n"
    );
    let d = Deployment::start(&[("live", sub.clone())]).await;
    let (token, creds) = common::new_credential("public_security", d.logs.path());
    let (_sink, port) = d.sink(
        "sink",
        &[
            "--credentials",
            creds.to_str().unwrap(),
            "--heartbeat",
            "1s",
        ],
    );
    let url = format!("http://127.0.0.1:{port}/v1/subscriptions/live/events");
    let mut client = Command::new("python3")
        .arg(repo().join("tests/python/sse_client.py"))
        .args([&url, &token, "idle", "30"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("one live-stream client", Duration::from_secs(20), || {
        metric(port, "govbus_sink_sse_clients", "live") == 1.0
    });
    wait_until(
        "the live stream reported active",
        Duration::from_secs(5),
        || metric(port, "govbus_sink_active", "live") == 1.0,
    );
    // What the operator reads: the scorecard.
    let out_dir = d.logs.path().join("report");
    let out = d.govbus(&[
        "report",
        "--catalog",
        d.catalog_dir().to_str().unwrap(),
        "--metrics",
        &format!("http://127.0.0.1:{port}/metrics"),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Json =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("report.json")).unwrap())
            .unwrap();
    let line = reported_subscription(&report, "live");
    assert_eq!(line["sink"], json!("sse"), "{line}");
    assert_eq!(line["active"], json!(true), "{line}");
    // Between clients the grant is still active: the endpoint serves it.
    let _ = client.kill();
    let _ = client.wait();
    wait_until("the client gone", Duration::from_secs(20), || {
        metric(port, "govbus_sink_sse_clients", "live") == 0.0
    });
    assert_eq!(metric(port, "govbus_sink_active", "live"), 1.0);
    // Revoked: inactive.
    write_subscription(d.catalog_dir(), "live", &revoked(&sub));
    wait_until(
        "the revoked stream reported inactive",
        Duration::from_secs(5),
        || metric(port, "govbus_sink_active", "live") == 0.0,
    );
}

/// A live-stream client that stops reading is not waited for forever once
/// its grant is revoked: with its channel full, the stream looks at the
/// grant again every few seconds and ends — letting its reader go — even
/// though the client never reads again (before, it waited for room in the
/// channel until the client read or hung up).
///
/// Run by hand (`cargo test -p govbus-e2e --test delivery stopped_reading
/// -- --ignored`): filling the loopback sockets' buffers takes ~6,000
/// events (12,000 are published, ~2.5 min in a debug build), and in a run
/// of the whole file that load on the shared broker once made
/// `live_stream_clients_at_the_head_share_one_reader_and_miss_nothing`
/// see no shared reader.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "heavy: ~2.5 min and 12,000 events on the shared broker; run by hand"]
async fn a_revoked_grant_ends_the_stream_of_a_client_that_stopped_reading() {
    use std::io::{Read, Write};
    let sub = format!(
        "subscriber = \"public_security\"\ndataset = \"{DEATHS}\"\npurpose = \"test\"\n\n[sink]\ntype = \"sse\"\n"
    );
    let d = Deployment::start(&[("live", sub.clone())]).await;
    let (token, creds) = common::new_credential("public_security", d.logs.path());
    let (_sink, port) = d.sink("sink", &["--credentials", creds.to_str().unwrap()]);
    // Reads the response's head, then nothing.
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        client,
        "GET /v1/subscriptions/live/events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    client.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200", "{}", String::from_utf8_lossy(&head));
    wait_until("one live-stream client", Duration::from_secs(20), || {
        metric(port, "govbus_sink_sse_clients", "live") == 1.0
    });
    // More events than the sockets' buffers and the channel hold.
    let n = 12_000;
    d.publish(&creates(0..n)).await;
    let streamed = || metric(port, "govbus_sink_delivered_total", "live");
    let (mut last, mut since) = (streamed(), Instant::now());
    while since.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(200));
        let now = streamed();
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    println!("the stalled client was handed {last} of {n} events");
    assert!(
        last > 0.0 && last < n as f64,
        "the stalled client was handed {last} of {n} events: it must have taken some and not all"
    );
    write_subscription(d.catalog_dir(), "live", &revoked(&sub));
    wait_until(
        "the stalled client's stream ended",
        Duration::from_secs(20),
        || metric(port, "govbus_sink_sse_clients", "live") == 0.0,
    );
    assert!(
        d.log("sink").contains("which has stopped reading"),
        "the sink says why the stream ended"
    );
    drop(client);
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_view_and_file_sinks_hold_the_masked_filtered_stream() {
    let files = tempfile::tempdir().unwrap();
    let view = format!(
        "subscriber = \"data_bureau\"\ndataset = \"{DEATHS}\"\npurpose = \"test\"\nfilter = [\"death_cause_category != disease\"]\n\n[fields.treatment]\ndeceased_id_number = \"pseudonym\"\n\n[sink]\ntype = \"kafka_view\"\n"
    );
    let file = format!(
        "subscriber = \"health\"\ndataset = \"{DEATHS}\"\npurpose = \"test\"\n\n[fields]\ninclude = [\"death_date\", \"deceased_id_number\"]\n\n[fields.treatment]\ndeceased_id_number = \"pseudonym\"\n\n[sink]\ntype = \"file\"\ndir = \"out\"\nroll_records = 10\nroll_interval = \"2s\"\n"
    );
    let d = Deployment::start(&[("view", view), ("files", file)]).await;
    let (_sink, _) = d.sink("sink", &["--file-root", files.path().to_str().unwrap()]);
    // v1 causes are "disease" (filtered from the view); v2 updates are "accident".
    let mut changes = creates(0..30);
    changes.extend((0..10).map(|i| Change {
        i,
        version: 2,
        op: "update",
    }));
    changes.push(Change {
        i: 29,
        version: 3,
        op: "delete",
    });
    d.publish(&changes).await;
    let view_topic = format!("{}view.view", d.topics.prefix());
    let mut records = Vec::new();
    wait_until(
        "the view has the 10 updates and the delete",
        Duration::from_secs(60),
        || {
            records = govbus_kafka::read::read_all(
                &Broker::shared().bootstrap(),
                &view_topic,
                Duration::from_millis(500),
                Duration::from_secs(10),
            )
            .unwrap_or_default();
            records.len() >= 11
        },
    );
    assert_eq!(
        records.len(),
        11,
        "creates with the filtered cause are not in the view, not even as keys"
    );
    let updates: Vec<Json> = records
        .iter()
        .filter_map(|r| r.value.as_deref())
        .map(|v| serde_json::from_slice(v).unwrap())
        .collect();
    assert_eq!(updates.len(), 10);
    for u in &updates {
        assert_eq!(u["death_cause_category"], json!("accident"));
        assert!(u["deceased_id_number"].as_str().unwrap().starts_with("ps_"));
    }
    let delete = records
        .iter()
        .find(|r| r.header(h::CE_OP) == "delete")
        .unwrap();
    assert_eq!(delete.header(h::CE_OP), "delete");
    assert_eq!(delete.header(h::CE_ID), "evt-29-3");
    // Files: closed files only (no .part after the roll interval), 41 lines in all.
    let mut events: Vec<Json> = Vec::new();
    wait_until("41 lines in closed files", Duration::from_secs(60), || {
        events = common::jsonl_events(&files.path().join("out"));
        events.len() >= 41
    });
    assert_eq!(events.len(), 41);
    // Files are listed in no particular order, so the delete (no data) may
    // come first: check every line, not the first one listed.
    for e in &events {
        assert_eq!(e["specversion"], json!("1.0"));
        if e["op"] == json!("delete") {
            assert!(e.get("data").is_none(), "a delete carries no data: {e}");
        } else {
            let data = e["data"].as_object().unwrap();
            assert_eq!(
                data.len(),
                3,
                "death_date, the pseudonymised ID number, and the key: {data:?}"
            );
        }
    }
    assert_eq!(
        events.iter().filter(|e| e["op"] == json!("delete")).count(),
        1
    );
    // The same person gets the same pseudonym in both sinks only if the subscriber is the same:
    // data_bureau and health differ.
    let view_ps = updates
        .iter()
        .find(|u| u["registration_no"] == json!("DR-2026-00000000"))
        .unwrap()["deceased_id_number"]
        .clone();
    let file_ps = events
        .iter()
        .find(|e| e["data"]["registration_no"] == json!("DR-2026-00000000"))
        .unwrap()["data"]["deceased_id_number"]
        .clone();
    assert_ne!(view_ps, file_ps, "two departments cannot link their copies");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_verifier_catches_each_tamper_case_on_a_real_ledger() {
    let tmp = tempfile::tempdir().unwrap();
    let rx = Receiver::start(tmp.path(), "rx", "");
    let d = Deployment::start(&[(
        "audited",
        webhook_sub("housing_fund", &rx.url(), "batch_max = 5"),
    )])
    .await;
    let (mut sink, _) = d.sink("sink", &["--max-batch", "5"]);
    for k in 0..6 {
        d.publish(&creates(k * 5..k * 5 + 5)).await;
        wait_until("batch delivered", Duration::from_secs(60), || {
            rx.accepted().len() >= k * 5 + 5
        });
    }
    // A clean stop writes the chain's close entry.
    sigterm(&sink);
    let _ = sink.wait();
    let out = d.govbus(&["audit", "export"]);
    let export = String::from_utf8(out.stdout).unwrap();
    let entries: Vec<&str> = export.lines().collect();
    assert!(
        entries.len() >= 8,
        "open + >=6 deliveries + close: {export}"
    );
    let verify = |lines: &[String]| -> (bool, String) {
        let path = tmp.path().join(unique("ledger"));
        std::fs::write(&path, lines.join("\n")).unwrap();
        let out = Command::new(govbus_bin())
            .args(["audit", "verify", "--file", path.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let intact: Vec<String> = entries.iter().map(|s| (*s).to_owned()).collect();
    let (ok, text) = verify(&intact);
    assert!(
        ok && text.contains("ledger OK") && !text.contains("no close entry"),
        "{text}"
    );
    // Modified: another event id in entry 3.
    let mut modified = intact.clone();
    modified[3] = modified[3].replacen("evt-", "evt-9", 1);
    let (ok, text) = verify(&modified);
    assert!(!ok && text.contains("modified"), "{text}");
    // Deleted.
    let mut deleted = intact.clone();
    deleted.remove(3);
    let (ok, text) = verify(&deleted);
    assert!(!ok && text.contains("deleted"), "{text}");
    // Inserted: a copy of an entry.
    let mut inserted = intact.clone();
    inserted.insert(4, intact[2].clone());
    let (ok, text) = verify(&inserted);
    assert!(!ok, "{text}");
    // Reordered.
    let mut reordered = intact.clone();
    reordered.swap(3, 4);
    let (ok, text) = verify(&reordered);
    assert!(!ok && text.contains("reordered"), "{text}");
    // The same check on a ledger rewritten in Kafka (an operator with broker access).
    let forged_topic = format!("{}forged.audit", d.topics.prefix());
    create_topic(&Broker::shared().bootstrap(), &forged_topic, 1)
        .await
        .unwrap();
    let producer: FutureProducer = producer_config(&Broker::shared().bootstrap())
        .create()
        .unwrap();
    for line in &modified {
        producer
            .send(
                FutureRecord::<(), _>::to(&forged_topic)
                    .payload(line.as_bytes())
                    .headers(OwnedHeaders::new()),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let out = d.govbus(&["audit", "verify", "--topic", &forged_topic]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The attacks a hash chain alone cannot see (issue #14), against the
    // ledger key and a checkpoint the auditor kept outside the bus.
    use govbus_sink::ledger::{Entry, DEV_LEDGER_KEY};
    let file = |lines: &[String]| {
        let path = tmp.path().join(unique("ledger"));
        std::fs::write(&path, lines.join("\n")).unwrap();
        path
    };
    let out = Command::new(govbus_bin())
        .args(["audit", "checkpoint", "--file"])
        .arg(file(&intact))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kept = tmp.path().join("checkpoint.json");
    std::fs::write(&kept, &out.stdout).unwrap();
    let verify_kept = |lines: &[String]| -> (bool, String) {
        let out = Command::new(govbus_bin())
            .args(["audit", "verify", "--file"])
            .arg(file(lines))
            .arg("--checkpoint")
            .arg(&kept)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert!(verify_kept(&intact).0, "{}", verify_kept(&intact).1);
    // 1. The tail cut off (the close entry and the last delivery): the chain
    //    just looks open — only the checkpoint tells.
    let cut = intact[..intact.len() - 2].to_vec();
    let (ok, text) = verify(&cut);
    assert!(ok && text.contains("no close entry"), "{text}");
    let (ok, text) = verify_kept(&cut);
    assert!(!ok && text.contains("tail removed"), "{text}");
    // 2. An entry rewritten and the rest of the chain recomputed.
    let rechain = |lines: &[String], key: &[u8]| -> Vec<String> {
        let mut entries: Vec<Entry> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        entries[3].events = vec!["evt-someone-else".into()];
        let mut prev = entries[3].prev.clone();
        for e in entries.iter_mut().skip(3) {
            e.prev = prev.clone();
            e.hash = e.compute_hash();
            e.mac = e.compute_mac(key);
            prev = e.hash.clone();
        }
        entries
            .iter()
            .map(|e| serde_json::to_string(e).unwrap())
            .collect()
    };
    let (ok, text) = verify(&rechain(&intact, b"not the ledger key at all"));
    assert!(
        !ok && text.contains("not authenticated"),
        "without the key: {text}"
    );
    let insider = rechain(&intact, DEV_LEDGER_KEY);
    assert!(verify(&insider).0, "with the key, the chain alone verifies");
    let (ok, text) = verify_kept(&insider);
    assert!(
        !ok && text.contains("rewritten"),
        "the checkpoint catches it: {text}"
    );
    // 3. A forged chain appended under another writer id, well formed
    //    (links and hashes recomputed) but without the key.
    let mut forged = intact.clone();
    let mut prev = govbus_sink::ledger::GENESIS.to_owned();
    for l in &intact {
        let mut e: Entry = serde_json::from_str(l).unwrap();
        e.writer = "feedfacefeedface".into();
        e.prev = prev.clone();
        e.hash = e.compute_hash();
        e.mac = e.compute_mac(b"not the ledger key at all");
        prev = e.hash.clone();
        forged.push(serde_json::to_string(&e).unwrap());
    }
    assert!(!verify(&forged).0, "the key alone finds it");
    let (ok, text) = verify_kept(&forged);
    assert!(!ok && text.contains("not authenticated"), "{text}");
}

/// SIGTERM through the `kill` command (no `unsafe` libc call).
fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

const ENTERPRISES: &str = "market_regulation.enterprise_registration";

/// `POST path` with a bearer token and a JSON body over HTTP/1.1 on loopback:
/// the whole response.
fn post_json(port: u16, path: &str, token: &str, body: &str) -> String {
    post_json_with(port, path, token, "", body)
}

/// [`post_json`] with `extra` header lines (each ending in `\r\n`).
fn post_json_with(port: u16, path: &str, token: &str, extra: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Issue #13: a decimal(18,2) sent as the JSON number 1234567890123456.78
/// reaches the subscriber as exactly those digits (not ...456.80), and the
/// row filters `registered_capital > 1000` and `established_date >= 2024-01-05`
/// compare as a decimal and as a date — through the real gateway, router and sink.
#[tokio::test(flavor = "multi_thread")]
async fn exact_decimals_and_typed_row_filters_from_the_gateway_to_the_subscriber() {
    let bootstrap = Broker::shared().bootstrap();
    let topics = Topics::new(format!("{}.", unique("ex")));
    create_topic(&bootstrap, &topics.ingest("market_regulation"), 1)
        .await
        .unwrap();
    create_topic(&bootstrap, &topics.data(ENTERPRISES), 1)
        .await
        .unwrap();
    let catalog = tempfile::tempdir().unwrap();
    govbus_testkit::copy_dir(&repo().join("schemas"), catalog.path()).unwrap();
    std::fs::remove_dir_all(catalog.path().join("subscriptions")).unwrap();
    std::fs::create_dir(catalog.path().join("subscriptions")).unwrap();
    let grant = |filter: &str| {
        format!(
            "subscriber = \"data_bureau\"\ndataset = \"{ENTERPRISES}\"\npurpose = \"test\"\nfilter = [{filter}]\n\n[sink]\ntype = \"kafka_view\"\n"
        )
    };
    write_subscription(catalog.path(), "all", &grant(""));
    write_subscription(
        catalog.path(),
        "cap",
        &grant("\"registered_capital > 1000\""),
    );
    write_subscription(
        catalog.path(),
        "since",
        &grant("\"established_date >= 2024-01-05\""),
    );
    let dir = catalog.path().to_str().unwrap().to_owned();
    let router = spawn_router(&bootstrap, &topics, &["--catalog", &dir]);
    let d = Deployment {
        topics,
        catalog,
        logs: tempfile::tempdir().unwrap(),
        _router: router,
    };
    let creds_dir = tempfile::tempdir().unwrap();
    let (token, creds) = common::new_credential("market_regulation", creds_dir.path());
    let port = free_port();
    let mut gateway =
        common::spawn_gateway(&bootstrap, &d.topics, &creds, port, &["--catalog", &dir]);
    wait_listening(port);
    let (_sink, _) = d.sink("sink", &[]);

    // (credit code, registered_capital as JSON text, established_date,
    //  delivered exactly as, admitted by `cap`, admitted by `since`)
    let rows = [
        (
            "91330100MA2X00000K",
            "1234567890123456.78",
            "2024-01-05",
            "1234567890123456.78",
            true,
            true,
        ),
        (
            "91330100MA2X00001N",
            "500.00",
            "2024-01-04",
            "500.00",
            false,
            false,
        ),
        (
            "91330100MA2X00002R",
            "999.99",
            "2024-10-01",
            "999.99",
            false,
            true,
        ),
        (
            "91330100MA2X00003W",
            "1000.00",
            "2023-12-31",
            "1000.00",
            false,
            false,
        ),
        (
            "91330100MA2X000040",
            "1000.01",
            "2025-01-01",
            "1000.01",
            true,
            true,
        ),
        (
            "91330100MA2X000053",
            "\"9999999999999999.99\"",
            "1999-09-09",
            "9999999999999999.99",
            true,
            false,
        ),
        (
            "91330100MA2X000066",
            "0.1",
            "2024-12-31",
            "0.10",
            false,
            true,
        ),
        (
            "91330100MA2X000079",
            "1E3",
            "2024-01-06",
            "1000.00",
            false,
            true,
        ),
    ];
    let record = |code: &str, capital: &str, date: &str| {
        format!(
            r#"{{"credit_code": "{code}", "enterprise_name": "杭州某某网络有限公司", "legal_representative": "陈思远", "enterprise_type": "limited_liability", "registered_capital": {capital}, "status": "ACTIVE", "established_date": "{date}", "address": "杭州市余杭区文一西路969号", "business_scope": "软件开发", "contact_phone": null}}"#
        )
    };
    // Written as text: the numbers' digits are exactly what a publisher sends.
    let mut body: Vec<String> = rows.iter().map(|r| record(r.0, r.1, r.2)).collect();
    body.push(record(
        "91330100716105852F",
        "1234567890123456.789",
        "2024-01-05",
    ));
    let answer = post_json(
        port,
        &format!("/v1/datasets/{ENTERPRISES}/records"),
        &token,
        &format!("[{}]", body.join(",")),
    );
    assert!(
        answer.contains("decimal_scale")
            && answer.contains("cannot be represented exactly at scale 2 / precision 18")
            && answer.contains("registered_capital"),
        "a third digit after the point is refused, not rounded: {answer}"
    );
    assert!(!answer.contains("456.789"), "no value echoed: {answer}");

    let view = |id: &str| {
        let topic = format!("{}view.{id}", d.topics.prefix());
        govbus_kafka::read::read_all(
            &Broker::shared().bootstrap(),
            &topic,
            Duration::from_millis(500),
            Duration::from_secs(10),
        )
        .unwrap_or_default()
        .iter()
        .filter_map(|r| r.value.as_deref())
        .map(|v| serde_json::from_slice::<Json>(v).unwrap())
        .map(|v| {
            (
                v["credit_code"].as_str().unwrap().to_owned(),
                v["registered_capital"].clone(),
            )
        })
        .collect::<BTreeMap<String, Json>>()
    };
    let mut all = BTreeMap::new();
    wait_until(
        "the 8 accepted records in view.all",
        Duration::from_secs(60),
        || {
            all = view("all");
            all.len() >= rows.len()
        },
    );
    let want: BTreeMap<String, Json> = rows.iter().map(|r| (r.0.to_owned(), json!(r.3))).collect();
    assert_eq!(all, want, "every decimal arrives with exactly its digits");
    // `all` is complete, so the filtered views (same sink, same batches) are too.
    let keys = |pick: fn(&Row) -> bool| {
        rows.iter()
            .filter(|r| pick(r))
            .map(|r| r.0.to_owned())
            .collect::<BTreeSet<String>>()
    };
    let mut cap = BTreeSet::new();
    let mut since = BTreeSet::new();
    wait_until("the filtered views", Duration::from_secs(30), || {
        cap = view("cap").into_keys().collect();
        since = view("since").into_keys().collect();
        cap.len() >= keys(|r| r.4).len() && since.len() >= keys(|r| r.5).len()
    });
    assert_eq!(
        cap,
        keys(|r| r.4),
        "`registered_capital > 1000` delivers neither 500.00 nor 999.99 nor 1000.00"
    );
    assert_eq!(
        since,
        keys(|r| r.5),
        "`established_date >= 2024-01-05` compares dates"
    );
    let _ = gateway.kill();
    let _ = gateway.wait();
}

/// A test record of the exact-decimals test: key, name, capital text,
/// capital as delivered, inside `cap`, inside `since`.
type Row<'a> = (&'a str, &'a str, &'a str, &'a str, bool, bool);

/// What a `sse_client.py follow` client has printed so far: one JSON value a line.
fn followed(path: &Path) -> Vec<Json> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The delivered events' data (the CloudEvents), in order.
fn delivered(lines: &[Json]) -> Vec<Json> {
    lines
        .iter()
        .filter(|l| l["event"] != json!("revoked") && l.get("data").is_some())
        .map(|l| serde_json::from_str(l["data"].as_str().unwrap()).unwrap())
        .collect()
}

/// A grant changed under an open delivery is what the next event obeys, on
/// every sink that stays open across the change (the live stream, the file;
/// webhooks share the file's loop, PostgreSQL restarts on a policy change):
/// a field the dataset newly tags as personal is masked at once, though no
/// grant's policy version changed; a narrowed field list drops the field at
/// once; a live-stream grant handed
/// to another department, or its client's token withdrawn, ends the open
/// stream with `event: revoked` — it does not go on streaming to whoever
/// had it open.
#[tokio::test(flavor = "multi_thread")]
async fn a_grant_or_credential_changed_under_an_open_delivery_applies_to_the_next_event() {
    let files = tempfile::tempdir().unwrap();
    let live = format!(
        "subscriber = \"public_security\"\ndataset = \"{DEATHS}\"\npurpose = \"test\"\n\n[sink]\ntype = \"sse\"\n"
    );
    let file = format!(
        "subscriber = \"health\"\ndataset = \"{DEATHS}\"\npurpose = \"test\"\n\n[sink]\ntype = \"file\"\ndir = \"out\"\nroll_records = 1\n"
    );
    let narrowed =
        |text: &str| text.replace("[sink]", "[fields]\ninclude = [\"death_date\"]\n\n[sink]");
    let d = Deployment::start(&[("live", live.clone()), ("files", file.clone())]).await;
    let (token, creds) = common::new_credential("public_security", d.logs.path());
    let (_sink, port) = d.sink(
        "sink",
        &[
            "--credentials",
            creds.to_str().unwrap(),
            "--heartbeat",
            "1s",
            "--file-root",
            files.path().to_str().unwrap(),
        ],
    );
    let url = format!("http://127.0.0.1:{port}/v1/subscriptions/live/events?from=beginning");
    let follow = |name: &str, token: &str| -> (Child, std::path::PathBuf) {
        let out = d.logs.path().join(format!("{name}.jsonl"));
        let child = Command::new("python3")
            .arg(repo().join("tests/python/sse_client.py"))
            .args([url.as_str(), token, "follow", "90"])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(d.logs.path().join(format!("{name}.err"))).unwrap())
            .spawn()
            .unwrap();
        (child, out)
    };
    let file_events = || -> Vec<Json> {
        let mut events = common::jsonl_events(&files.path().join("out"));
        // By record number (`evt-<i>-<version>`), not as text.
        events.sort_by_key(|e| {
            e["id"]
                .as_str()
                .and_then(|id| id.split('-').nth(1))
                .and_then(|i| i.parse::<u64>().ok())
        });
        events
    };
    // Makes a catalog change and waits until the sink has it in force.
    let reloads = || d.log("sink").matches("Catalog reloaded.").count();
    let change = |write: &dyn Fn()| {
        let before = reloads();
        write();
        wait_until(
            "the sink reloads the catalog",
            Duration::from_secs(10),
            || reloads() > before,
        );
    };
    // Whether a followed stream ended with `revoked` for this reason.
    let ended = |out: &Path, why: &str| {
        let lines = followed(out);
        lines.iter().any(|l| {
            l["event"] == json!("revoked") && l["data"].as_str().is_some_and(|d| d.contains(why))
        }) && lines.iter().any(|l| l["end"] == json!("closed"))
    };

    // Before: the default policy hands over the (masked) name.
    let (mut first, out) = follow("first", &token);
    d.publish(&creates(0..3)).await;
    wait_until("3 events on the stream", Duration::from_secs(30), || {
        delivered(&followed(&out)).len() >= 3
    });
    wait_until("3 events in files", Duration::from_secs(30), || {
        file_events().len() >= 3
    });
    for e in delivered(&followed(&out)).iter().chain(&file_events()) {
        assert_eq!(e["data"]["deceased_name"], json!("欧*"), "{e}");
        assert_eq!(e["data"]["death_place"], json!("北京市朝阳区"), "{e}");
    }

    // The dataset now tags the place of death as personal (the grants'
    // policy versions do not change): the next event masks it.
    let dataset = d
        .catalog_dir()
        .join("datasets")
        .join(DEATHS)
        .join("dataset.toml");
    let text = std::fs::read_to_string(&dataset).unwrap();
    change(&|| {
        std::fs::write(
            &dataset,
            text.replace(
                "informant_phone = \"phone\"",
                "informant_phone = \"phone\"\ndeath_place = \"address\"",
            ),
        )
        .unwrap()
    });
    d.publish(&creates(3..4)).await;
    wait_until("4 events on the stream", Duration::from_secs(30), || {
        delivered(&followed(&out)).len() >= 4
    });
    wait_until("4 events in files", Duration::from_secs(30), || {
        file_events().len() >= 4
    });
    for e in [&delivered(&followed(&out))[3], &file_events()[3]] {
        let place = e["data"]["death_place"].as_str().unwrap();
        assert!(
            place != "北京市朝阳区" && place.contains('*'),
            "the newly tagged field is masked: {e}"
        );
    }

    // Narrowed: the next events carry death_date (and the key) only.
    change(&|| write_subscription(d.catalog_dir(), "live", &narrowed(&live)));
    change(&|| write_subscription(d.catalog_dir(), "files", &narrowed(&file)));
    d.publish(&creates(4..7)).await;
    wait_until("7 events on the stream", Duration::from_secs(30), || {
        delivered(&followed(&out)).len() >= 7
    });
    wait_until("7 events in files", Duration::from_secs(30), || {
        file_events().len() >= 7
    });
    let streamed = delivered(&followed(&out));
    let filed = file_events();
    for (what, events) in [("stream", &streamed), ("file", &filed)] {
        for e in &events[4..] {
            let fields: BTreeSet<&str> = e["data"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(
                fields,
                BTreeSet::from(["death_date", "registration_no"]),
                "{what}: an event after the narrowing: {e}"
            );
        }
    }

    // Handed to another department: the open stream ends.
    write_subscription(
        d.catalog_dir(),
        "live",
        &narrowed(&live).replace("\"public_security\"", "\"hrss\""),
    );
    wait_until(
        "the stream ends with revoked",
        Duration::from_secs(15),
        || ended(&out, "another department"),
    );
    let _ = first.wait();
    d.publish(&creates(7..8)).await;

    // Back to the department; then the client's token is withdrawn (the
    // file now lists another token of the same department).
    change(&|| write_subscription(d.catalog_dir(), "live", &narrowed(&live)));
    let (mut second, out) = follow("second", &token);
    wait_until(
        "8 events on the new stream",
        Duration::from_secs(30),
        || delivered(&followed(&out)).len() >= 8,
    );
    let other_dir = d.logs.path().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let (other_token, other) = common::new_credential("public_security", &other_dir);
    std::fs::rename(&other, &creds).unwrap();
    wait_until(
        "the stream of the withdrawn token ends with revoked",
        Duration::from_secs(15),
        || ended(&out, "credential was withdrawn"),
    );
    let _ = second.wait();

    // The grant now names another dataset: the stream of the old one ends.
    let (mut third, out) = follow("third", &other_token);
    wait_until(
        "8 events on the third stream",
        Duration::from_secs(30),
        || delivered(&followed(&out)).len() >= 8,
    );
    write_subscription(
        d.catalog_dir(),
        "live",
        &live.replace(DEATHS, "hrss.pension_payment"),
    );
    wait_until(
        "the stream of the old dataset ends with revoked",
        Duration::from_secs(15),
        || ended(&out, "another dataset"),
    );
    let _ = third.wait();
}

/// A webhook batch is built once and retried while the endpoint is down.
/// If the grant is narrowed meanwhile (here: the name no longer granted),
/// the body built under the old grant must not go out when the endpoint
/// comes back: the batch is prepared again under the grant in force.
#[tokio::test(flavor = "multi_thread")]
async fn a_retried_webhook_batch_goes_out_only_under_the_grant_in_force() {
    let tmp = tempfile::tempdir().unwrap();
    let rx = Receiver::start(tmp.path(), "down", "");
    let fail = tmp.path().join("down.jsonl.fail");
    std::fs::write(&fail, "503").unwrap();
    let granted = webhook_sub("housing_fund", &rx.url(), "max_attempts = 1000");
    let d = Deployment::start(&[("hook", granted.clone())]).await;
    let (_sink, _port) = d.sink("sink", &[]);
    d.publish(&creates(0..1)).await;
    wait_until(
        "the endpoint refused the batch twice",
        Duration::from_secs(30),
        || rx.requests().len() >= 2,
    );
    let first = &rx.requests()[0];
    assert!(
        first["events"][0]["data"].get("deceased_name").is_some(),
        "granted at first: {first}"
    );
    d.regrant("sink", "hook", &granted.replace("\"deceased_name\", ", ""));
    std::fs::remove_file(&fail).unwrap();
    wait_until(
        "the endpoint accepted the event",
        Duration::from_secs(30),
        || !rx.accepted().is_empty(),
    );
    for r in rx.requests().iter().filter(|r| r["answer"] == json!("200")) {
        for e in r["events"].as_array().unwrap() {
            assert!(
                e["data"].get("deceased_name").is_none(),
                "a field no longer granted went out: {e}"
            );
        }
    }
}

/// A CSV file's header is the grant's fields. When the grant is widened,
/// the next files carry the new field (before, the columns were fixed when
/// the sink opened, and the field never reached the files until a restart).
#[tokio::test(flavor = "multi_thread")]
async fn a_widened_grant_reaches_a_csv_file_without_a_restart() {
    let files = tempfile::tempdir().unwrap();
    let csv = |include: &str| {
        format!(
            "subscriber = \"health\"\ndataset = \"{DEATHS}\"\npurpose = \"test\"\n\n[fields]\ninclude = [{include}]\n\n[sink]\ntype = \"file\"\ndir = \"out\"\nformat = \"csv\"\nroll_records = 1\n"
        )
    };
    let d = Deployment::start(&[("csv", csv("\"death_date\""))]).await;
    let (_sink, _port) = d.sink("sink", &["--file-root", files.path().to_str().unwrap()]);
    let out = files.path().join("out");
    let done = || -> Vec<String> {
        let mut names: Vec<std::path::PathBuf> = std::fs::read_dir(&out)
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        names.retain(|p| p.extension().is_some_and(|x| x == "csv"));
        names.sort();
        names
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    };
    d.publish(&creates(0..1)).await;
    wait_until("the first file", Duration::from_secs(30), || {
        !done().is_empty()
    });
    assert!(!done()[0].contains("death_place"), "{}", done()[0]);
    d.regrant("sink", "csv", &csv("\"death_date\", \"death_place\""));
    d.publish(&creates(1..2)).await;
    wait_until("a file with the new field", Duration::from_secs(30), || {
        done().iter().any(|f| f.contains("北京市朝阳区"))
    });
    let last = done()
        .into_iter()
        .find(|f| f.contains("北京市朝阳区"))
        .unwrap();
    assert!(
        last.lines().next().unwrap().contains("death_place"),
        "{last}"
    );
}

/// Issue 16, traces: one trace runs from a department's gateway request
/// through the router to the webhook delivery — spans exported over OTLP by
/// three separate processes to a receiver that decodes them with the
/// OpenTelemetry project's own protobuf classes, each span the child of the
/// one before, continuing the caller's `traceparent`; the subscriber gets
/// the sink's span as each event's `traceparent`. No span attribute holds
/// a record's key or values.
#[tokio::test(flavor = "multi_thread")]
async fn one_trace_runs_from_the_gateway_request_to_the_webhook_delivery() {
    let bootstrap = Broker::shared().bootstrap();
    let logs = tempfile::tempdir().unwrap();
    let otlp = common::Otlp::start(logs.path());
    let hook = Receiver::start(logs.path(), "hook", "");

    let (topics, catalog) =
        namespace("tr", 1, &[("traced", webhook_sub("hrss", &hook.url(), ""))]).await;
    let dir = catalog.path().to_str().unwrap().to_owned();
    let traced = |name: &str, args: &[&str]| {
        let mut cmd = Command::new(govbus_bin());
        cmd.args(args)
            .args(["--bootstrap", &bootstrap, "--topic-prefix", topics.prefix()])
            .args(["--catalog", &dir])
            .env("GOVBUS_LOG", "info")
            .env("GOVBUS_TEST_WEBHOOK_SECRET", SECRET)
            .env(
                "GOVBUS_PSEUDONYM_SECRET",
                "test-pseudonym-secret-0123456789",
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(logs.path().join(format!("{name}.log"))).unwrap());
        otlp.export_to(&mut cmd);
        govbus_testkit::spawn(cmd).unwrap()
    };
    let group = unique("router");
    let mut children = Vec::new();
    children.push(traced(
        "router",
        &[
            "router",
            "--group",
            &group,
            "--listen",
            "127.0.0.1:0",
            "--kafka",
            "session.timeout.ms=6000",
        ],
    ));
    let creds_dir = tempfile::tempdir().unwrap();
    let (token, creds) = common::new_credential("civil_affairs", creds_dir.path());
    let gateway_port = free_port();
    let gateway_listen = format!("127.0.0.1:{gateway_port}");
    children.push(traced(
        "gateway",
        &[
            "gateway",
            "--credentials",
            creds.to_str().unwrap(),
            "--listen",
            &gateway_listen,
        ],
    ));
    let sink_port = free_port();
    let sink_listen = format!("127.0.0.1:{sink_port}");
    children.push(traced(
        "sink",
        &[
            "sink",
            "--listen",
            &sink_listen,
            "--kafka",
            "session.timeout.ms=6000",
            "--kafka",
            "heartbeat.interval.ms=500",
        ],
    ));
    wait_listening(gateway_port);
    wait_listening(sink_port);

    // The caller's own trace: a fresh trace id, its span as the parent.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let trace_id = format!("{:032x}", nanos ^ (u128::from(std::process::id()) << 96));
    let caller_span = "00f067aa0ba902b7";
    let records: Vec<Json> = (0..3).map(|i| death(900 + i, 1)).collect();
    let body = Json::Array(records.clone()).to_string();
    let answer = post_json_with(
        gateway_port,
        &format!("/v1/datasets/{DEATHS}/records"),
        &token,
        &format!("traceparent: 00-{trace_id}-{caller_span}-01\r\n"),
        &body,
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let mut events: Vec<Json> = Vec::new();
    wait_until(
        "the 3 events at the webhook",
        Duration::from_secs(60),
        || {
            events = hook
                .requests()
                .iter()
                .filter(|r| r["answer"] == json!("200"))
                .flat_map(|r| r["events"].as_array().unwrap().clone())
                .collect();
            events.len() >= 3
        },
    );
    let named = |all: &[Json], name: &str| -> Vec<Json> {
        all.iter()
            .filter(|s| s["trace_id"] == json!(trace_id) && s["name"] == json!(name))
            .cloned()
            .collect()
    };
    let mut all = Vec::new();
    wait_until(
        "the gateway's, router's and sink's spans",
        Duration::from_secs(30),
        || {
            all = otlp.spans();
            // Every delivered event's sink span has been exported.
            let sink_ids: BTreeSet<String> = named(&all, "govbus.sink deliver")
                .iter()
                .map(|s| s["span_id"].as_str().unwrap().to_owned())
                .collect();
            !named(&all, "govbus.gateway publish").is_empty()
                && events.iter().all(|e| {
                    e["traceparent"]
                        .as_str()
                        .is_some_and(|tp| sink_ids.contains(&tp[36..52]))
                })
        },
    );
    let gateway = named(&all, "govbus.gateway publish");
    assert_eq!(gateway.len(), 1, "one span for the request: {gateway:?}");
    let gateway = &gateway[0];
    assert_eq!(gateway["service"], json!("govbus-gateway"));
    assert_eq!(
        gateway["parent_span_id"],
        json!(caller_span),
        "continues the caller's context"
    );
    assert_eq!(
        gateway["attributes"]["govbus.department"],
        json!("civil_affairs")
    );
    let router = named(&all, "govbus.router route");
    assert!(
        !router.is_empty(),
        "the router's span is in the trace: {all:?}"
    );
    for r in &router {
        assert_eq!(r["service"], json!("govbus-router"));
        assert_eq!(
            r["parent_span_id"], gateway["span_id"],
            "the router continues the request: {r}"
        );
    }
    let router_ids: Vec<&Json> = router.iter().map(|r| &r["span_id"]).collect();
    let sink = named(&all, "govbus.sink deliver");
    for s in &sink {
        assert_eq!(s["service"], json!("govbus-sink"));
        assert!(
            router_ids.contains(&&s["parent_span_id"]),
            "the sink continues the router: {s}"
        );
        assert_eq!(s["attributes"]["govbus.subscription"], json!("traced"));
    }
    for e in &events {
        let tp = e["traceparent"].as_str().unwrap();
        assert_eq!(&tp[3..35], trace_id, "the subscriber gets the same trace");
    }
    for r in hook.requests() {
        let tp = r["traceparent"]
            .as_str()
            .expect("the webhook request carries a traceparent");
        assert_eq!(&tp[3..35], trace_id);
    }

    // The leak scan, over every exported span of every process.
    let mut personal: Vec<String> = Vec::new();
    for r in &records {
        for (field, v) in r.as_object().unwrap() {
            if [
                "gender",
                "death_date",
                "birth_date",
                "registered_at",
                "death_cause_category",
            ]
            .contains(&field.as_str())
            {
                continue;
            }
            personal.push(v.as_str().unwrap().to_owned());
        }
    }
    for span in &all {
        let text = span["attributes"].to_string();
        for p in &personal {
            assert!(
                !text.contains(p.as_str()),
                "a span attribute holds a record value: {span}"
            );
        }
    }
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}
