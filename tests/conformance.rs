//! The sink conformance suite: one scenario, run against every sink kind
//! (one line each at the bottom). A new sink is one more line.
//!
//! The scenario, with a real router and `govbus sink` processes, a real
//! destination (a Standard Webhooks receiver, the machine's PostgreSQL, an
//! httpx-sse client that reconnects like EventSource, files, a Kafka view):
//!
//! 1. records are published while the sink is killed with SIGKILL and
//!    started again;
//! 2. the grant is revoked: 5 s later nothing more is delivered; it is
//!    granted again: what was published meanwhile arrives, nothing skipped;
//! 3. the destination fails for a while (the webhook endpoint answers 503,
//!    the table refuses writes and the sink's connection is cut, the stream's
//!    subscriber is away and comes back with `Last-Event-ID`, the directory
//!    is gone, the broker refuses the view's writes): nothing of what was
//!    published meanwhile is on the ledger as delivered while it fails, and
//!    all of it arrives once it recovers;
//! 4. then, for every sink: every change arrived (at least once), in order
//!    per key, under the grant's policy (excluded field absent, personal
//!    field masked, row filter applied: a change outside the filter reaches
//!    nobody, not even as a key), and every event the subscriber holds is in
//!    the audit ledger.
//!    The PostgreSQL sink keeps state, not events: its table must equal
//!    what the changes imply (a record that left the filter loses its row),
//!    and its delete markers name no key it never held.
//!
//! The broker is librdkafka's mock cluster in this process, not Tansu:
//! Tansu 0.6.0 skips the rest of a batch when a consumer resumes inside it
//! (ARCHITECTURE.md), which a kill makes likely and which is the broker's
//! fault, not the sink's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, govbus_bin, repo, wait_listening, Receiver};
use govbus_kafka::headers as h;
use govbus_kafka::topics::Topics;
use govbus_testkit::PgSchema;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use serde_json::{json, Value as Json};

const DEATHS: &str = "civil_affairs.death_registration";
const SUB: &str = "conf";
const NAME: &str = "欧阳娜娜";
const PHONE: &str = "13800138000";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Webhook,
    Postgres,
    LiveStream,
    File,
    FileCsv,
    KafkaView,
}

fn id_number(i: usize) -> String {
    govbus_testkit::ids::with_check(&format!("11010519491231{:03}", i % 1000))
}

/// One change: `version` decides the cause, and the grant's row filter
/// (`death_cause_category != accident`) excludes version 2.
#[derive(Clone, Copy)]
struct Change {
    i: usize,
    version: u64,
    op: &'static str,
}

impl Change {
    fn id(&self) -> String {
        format!("c-{}-{}", self.i, self.version)
    }
    fn key(&self) -> String {
        format!("DR-2026-{:08}", self.i)
    }
    fn cause(&self) -> &'static str {
        ["unknown", "disease", "accident", "other", "natural"][self.version as usize % 5]
    }
    fn in_scope(&self) -> bool {
        self.cause() != "accident"
    }
    /// The op the subscriber receives, if any: a change outside the
    /// filter reaches nobody (the PostgreSQL sink removes the row it held).
    fn expected_op(&self) -> Option<&'static str> {
        match (self.op, self.in_scope()) {
            ("delete", _) => Some("delete"),
            (op, true) => Some(op),
            (_, false) => None,
        }
    }
    fn body(&self) -> String {
        json!({
            "registration_no": self.key(),
            "deceased_id_number": id_number(self.i),
            "deceased_name": NAME,
            "gender": "FEMALE",
            "birth_date": "1949-12-31",
            "death_date": "2026-01-02",
            "death_place": "北京市朝阳区",
            "death_cause_category": self.cause(),
            "registering_office": "朝阳区民政局",
            "registered_at": "2026-01-03T08:00:00.000Z",
            "informant_phone": PHONE,
        })
        .to_string()
    }
}

/// Creates of `keys` (version 1, in scope), five creates outside the
/// filter, updates that leave it (version 2, every 4th key), updates that
/// come back (version 3, every 8th), deletes (version 4, every 10th).
fn changes(keys: std::ops::Range<usize>) -> Vec<Change> {
    let c = |i, version, op| Change { i, version, op };
    let mut out: Vec<Change> = keys.clone().map(|i| c(i, 1, "create")).collect();
    out.extend((keys.end..keys.end + 5).map(|i| c(i, 2, "create")));
    out.extend(
        keys.clone()
            .filter(|i| i % 4 == 0)
            .map(|i| c(i, 2, "update")),
    );
    out.extend(
        keys.clone()
            .filter(|i| i % 8 == 0)
            .map(|i| c(i, 3, "update")),
    );
    out.extend(keys.filter(|i| i % 10 == 0).map(|i| c(i, 4, "delete")));
    out
}

/// What a subscriber received: one event.
#[derive(Debug, Clone)]
struct Seen {
    id: String,
    subject: String,
    op: String,
    version: u64,
    data: Option<Json>,
}

impl Seen {
    fn from_cloudevent(e: &Json) -> Seen {
        Seen {
            id: e["id"].as_str().unwrap_or_default().to_owned(),
            subject: e["subject"].as_str().unwrap_or_default().to_owned(),
            op: e["op"].as_str().unwrap_or_default().to_owned(),
            version: e["sourceversion"]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            data: e.get("data").cloned(),
        }
    }
}

fn grant(kind: Kind, receiver: Option<&str>, pg_table: Option<&str>, revoked: bool) -> String {
    let sink = match kind {
        Kind::Webhook => format!(
            "type = \"webhook\"\nurl = \"{}\"\nsecret_env = \"GOVBUS_TEST_WEBHOOK_SECRET\"\nallow_private = true\ntimeout = \"2s\"\nmax_backoff = \"300ms\"\nmax_attempts = 1000\n",
            receiver.unwrap()
        ),
        Kind::Postgres => format!("type = \"postgres\"\ntable = \"{}\"\n", pg_table.unwrap()),
        Kind::LiveStream => "type = \"sse\"\n".to_owned(),
        Kind::File => {
            "type = \"file\"\ndir = \"out\"\nroll_records = 25\nroll_interval = \"1s\"\n".to_owned()
        }
        Kind::FileCsv => {
            "type = \"file\"\ndir = \"out\"\nformat = \"csv\"\nroll_records = 25\nroll_interval = \"1s\"\n".to_owned()
        }
        Kind::KafkaView => "type = \"kafka_view\"\n".to_owned(),
    };
    format!(
        r#"subscriber = "public_security"
dataset = "{DEATHS}"
purpose = "test"
filter = ["death_cause_category != accident"]
{}
[fields]
exclude = ["informant_phone"]

[fields.treatment]
deceased_id_number = "clear"

[sink]
{sink}"#,
        if revoked { "revoked = true" } else { "" }
    )
}

/// A mock cluster, a catalog holding the one grant, a router, and the
/// sink's destination.
struct Bench {
    kind: Kind,
    cluster: MockCluster<'static, DefaultProducerContext>,
    topics: Topics,
    catalog: tempfile::TempDir,
    work: tempfile::TempDir,
    receiver: Option<Receiver>,
    pg: Option<PgSchema>,
    token: String,
    creds: PathBuf,
    port: u16,
    started: usize,
    /// More arguments for `govbus sink`.
    extra: Vec<String>,
    follower: Option<Child>,
    _router: Child,
}

impl Bench {
    async fn start(kind: Kind) -> Bench {
        let cluster = MockCluster::new(1).unwrap();
        let topics = Topics::new(format!("{}.", govbus_testkit::unique("cf")));
        for (t, p) in [
            (topics.ingest("civil_affairs"), 2),
            (topics.data(DEATHS), 2),
            (topics.dlq("civil_affairs"), 1),
            (topics.subscription_dlq(SUB), 1),
            (topics.view(SUB), 1),
            (topics.audit(), 1),
        ] {
            cluster.create_topic(&t, p, 1).unwrap();
        }
        let work = tempfile::tempdir().unwrap();
        let receiver = (kind == Kind::Webhook).then(|| Receiver::start(work.path(), "rx", ""));
        let pg = match kind {
            Kind::Postgres => Some(PgSchema::create().await.unwrap()),
            _ => None,
        };
        let catalog = tempfile::tempdir().unwrap();
        govbus_testkit::copy_dir(&repo().join("schemas"), catalog.path()).unwrap();
        std::fs::remove_dir_all(catalog.path().join("subscriptions")).unwrap();
        std::fs::create_dir(catalog.path().join("subscriptions")).unwrap();
        let (token, creds) = common::new_credential("public_security", work.path());
        let bootstrap = cluster.bootstrap_servers();
        let router = common::spawn_router(
            &bootstrap,
            &topics,
            &[
                "--catalog",
                catalog.path().to_str().unwrap(),
                "--no-create-topics",
            ],
        );
        let bench = Bench {
            kind,
            cluster,
            topics,
            catalog,
            work,
            receiver,
            pg,
            token,
            creds,
            port: free_port(),
            started: 0,
            extra: Vec::new(),
            follower: None,
            _router: router,
        };
        bench.write_grant(false);
        bench
    }

    fn pg_table(&self) -> Option<String> {
        self.pg.as_ref().map(|p| format!("{}.deaths", p.name()))
    }

    fn write_grant(&self, revoked: bool) {
        let text = grant(
            self.kind,
            self.receiver.as_ref().map(Receiver::url).as_deref(),
            self.pg_table().as_deref(),
            revoked,
        );
        let path = self
            .catalog
            .path()
            .join(format!("subscriptions/{SUB}.toml"));
        std::fs::write(path, text).unwrap();
    }

    /// `govbus sink` for the one subscription, always on the same port (a
    /// live-stream client reconnects to it).
    fn sink(&mut self) -> Child {
        self.started += 1;
        let log = self.work.path().join(format!("sink-{}.log", self.started));
        let mut cmd = Command::new(govbus_bin());
        cmd.args(["sink", "--bootstrap", &self.cluster.bootstrap_servers()])
            .args(["--topic-prefix", self.topics.prefix()])
            .args(["--catalog", self.catalog.path().to_str().unwrap()])
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--subscription", SUB, "--no-create-topics"])
            .args(["--credentials", self.creds.to_str().unwrap()])
            .args(["--file-root", self.work.path().to_str().unwrap()])
            .args(["--heartbeat", "1s"])
            // Larger than any fetch here: a batch never ends inside one.
            .args(["--max-batch", "5000"])
            .args(&self.extra)
            .args(["--kafka", "session.timeout.ms=6000"])
            .args(["--kafka", "heartbeat.interval.ms=500"])
            .env("GOVBUS_LOG", "info")
            .env("GOVBUS_TEST_WEBHOOK_SECRET", common::WEBHOOK_SECRET)
            .env(
                "GOVBUS_PSEUDONYM_SECRET",
                "test-pseudonym-secret-0123456789",
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
        if self.kind == Kind::Postgres {
            cmd.args(["--postgres", &PgSchema::conninfo_default()]);
        }
        if self.kind == Kind::KafkaView {
            // A refused write surfaces to the sink after 2 s instead of
            // being retried inside the client for ever.
            cmd.args(["--kafka", "message.timeout.ms=2000"]);
        }
        let child = govbus_testkit::spawn(cmd).unwrap();
        wait_listening(self.port);
        child
    }

    /// A live-stream client from the beginning, or after `last_id`,
    /// reconnecting with `Last-Event-ID` like EventSource, for 150 s. What
    /// it receives is appended to `sse.jsonl`.
    fn follow(&mut self, last_id: Option<&str>) {
        let url = format!(
            "http://127.0.0.1:{}/v1/subscriptions/{SUB}/events?from=beginning",
            self.port
        );
        let append = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.work.path().join(name))
                .unwrap()
        };
        let mut cmd = Command::new("python3");
        cmd.arg(repo().join("tests/python/sse_client.py"))
            .args([url.as_str(), &self.token, "resume", "150"])
            .args(last_id)
            .stdout(append("sse.jsonl"))
            .stderr(append("sse.err"));
        self.follower = Some(govbus_testkit::spawn(cmd).unwrap());
    }

    /// Waits until the router has written every change in `changes` to the
    /// canonical topic (the sink is not running: they wait there).
    async fn wait_routed(&self, changes: &[Change]) {
        let data = self.topics.data(DEATHS);
        let start = Instant::now();
        loop {
            let routed: BTreeSet<String> = govbus_kafka::read::read_all(
                &self.cluster.bootstrap_servers(),
                &data,
                Duration::from_millis(300),
                Duration::from_secs(10),
            )
            .unwrap_or_default()
            .iter()
            .map(|r| r.header(h::CE_ID).to_owned())
            .collect();
            if changes.iter().all(|c| routed.contains(&c.id())) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{:?}: not routed within 60 s",
                self.kind
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The destination fails until `repair` (step 3 of the scenario).
    async fn break_destination(&mut self) {
        let out = self.work.path().join("out");
        match self.kind {
            // The endpoint answers 503 to everything.
            Kind::Webhook => std::fs::write(self.work.path().join("rx.jsonl.fail"), "503").unwrap(),
            // The table refuses every write — checked at COMMIT (a deferred
            // constraint trigger) — and the sink's connection is cut.
            Kind::Postgres => {
                let pg = self.pg.as_ref().unwrap();
                let s = pg.name();
                pg.client()
                    .await
                    .unwrap()
                    .batch_execute(&format!(
                        r#"CREATE FUNCTION "{s}".refuse() RETURNS trigger LANGUAGE plpgsql
                             AS $$ BEGIN RAISE EXCEPTION 'this table refuses writes (a test)'; END $$;
                           CREATE CONSTRAINT TRIGGER refuse AFTER INSERT OR UPDATE OR DELETE ON "{s}".deaths
                             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION "{s}".refuse();
                           CREATE CONSTRAINT TRIGGER refuse AFTER INSERT OR UPDATE OR DELETE ON "{s}".govbus_offsets
                             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION "{s}".refuse();
                           SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                             WHERE pid <> pg_backend_pid() AND query LIKE '%{s}%';"#
                    ))
                    .await
                    .unwrap();
            }
            // The subscriber goes away.
            Kind::LiveStream => {
                if let Some(mut f) = self.follower.take() {
                    kill9(&mut f);
                }
            }
            // The directory is gone and a file stands in its place.
            Kind::File | Kind::FileCsv => {
                std::fs::rename(&out, out.with_extension("away")).unwrap();
                std::fs::write(&out, "not a directory").unwrap();
            }
            // The broker refuses every write (the view's, and the ledger's).
            Kind::KafkaView => self.cluster.request_errors(
                rdkafka::types::RDKafkaApiKey::Produce,
                &[rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 100_000],
            ),
        }
    }

    /// What the sink logs when it meets the failure `break_destination`
    /// made: the step checks the failure was met, not only survived.
    fn failure_logged(&self) -> bool {
        let pattern = match self.kind {
            Kind::Webhook => "Webhook delivery failed; will retry.",
            Kind::Postgres => "P0001: raised by a trigger",
            Kind::LiveStream => return true,
            Kind::File | Kind::FileCsv => "Sink failed",
            Kind::KafkaView => "Kafka view write failed",
        };
        let log = self.work.path().join(format!("sink-{}.log", self.started));
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains(pattern)
    }

    async fn repair(&mut self) {
        let out = self.work.path().join("out");
        match self.kind {
            Kind::Webhook => std::fs::remove_file(self.work.path().join("rx.jsonl.fail")).unwrap(),
            Kind::Postgres => {
                let pg = self.pg.as_ref().unwrap();
                let s = pg.name();
                pg.client()
                    .await
                    .unwrap()
                    .batch_execute(&format!(
                        r#"DROP TRIGGER refuse ON "{s}".deaths; DROP TRIGGER refuse ON "{s}".govbus_offsets;"#
                    ))
                    .await
                    .unwrap();
            }
            // It comes back and resumes after the last event it received.
            Kind::LiveStream => {
                let last = lines(&self.work.path().join("sse.jsonl"))
                    .iter()
                    .rev()
                    .find_map(|l| l["id"].as_str().map(str::to_owned));
                self.follow(last.as_deref());
            }
            Kind::File | Kind::FileCsv => {
                std::fs::remove_file(&out).unwrap();
                std::fs::rename(out.with_extension("away"), &out).unwrap();
            }
            Kind::KafkaView => self
                .cluster
                .clear_request_errors(rdkafka::types::RDKafkaApiKey::Produce),
        }
    }

    async fn publish(&self, changes: &[Change]) {
        let producer: FutureProducer =
            govbus_testkit::producer_config(&self.cluster.bootstrap_servers())
                .create()
                .unwrap();
        let topic = self.topics.ingest("civil_affairs");
        for c in changes {
            let (id, key, version) = (c.id(), c.key(), c.version.to_string());
            let headers = h::owned([
                (h::CE_TYPE, DEATHS.as_bytes()),
                (h::CE_ID, id.as_bytes()),
                (h::CE_OP, c.op.as_bytes()),
                (h::CE_SOURCEVERSION, version.as_bytes()),
            ]);
            let body = (c.op != "delete").then(|| c.body());
            let mut r = FutureRecord::to(&topic)
                .key(key.as_bytes())
                .headers(headers);
            if let Some(b) = &body {
                r = r.payload(b.as_bytes());
            }
            producer
                .send(r, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    }

    /// Writes a create of `key` straight to the canonical topic, with the
    /// headers the router writes and `value` as it is: where it landed.
    async fn put_on_data(&self, key: &str, id: &str, version: u64, value: &[u8]) -> (i32, i64) {
        self.put_on_data_as(key, id, version, value, "create").await
    }

    /// [`Bench::put_on_data`] with `op` as its `ce_op`.
    async fn put_on_data_as(
        &self,
        key: &str,
        id: &str,
        version: u64,
        value: &[u8],
        op: &str,
    ) -> (i32, i64) {
        let producer: FutureProducer =
            govbus_testkit::producer_config(&self.cluster.bootstrap_servers())
                .create()
                .unwrap();
        let version = version.to_string();
        let headers = h::owned([
            (h::CE_SPECVERSION, b"1.0".as_slice()),
            (h::CE_TYPE, DEATHS.as_bytes()),
            (h::CE_ID, id.as_bytes()),
            (h::CE_SUBJECT, key.as_bytes()),
            (h::CE_OP, op.as_bytes()),
            (h::CE_SOURCEVERSION, version.as_bytes()),
            (h::CE_SOURCE, b"/departments/civil_affairs".as_slice()),
            (h::CE_TIME, b"2026-01-03T08:00:00.000Z".as_slice()),
        ]);
        let d = producer
            .send(
                FutureRecord::to(&self.topics.data(DEATHS))
                    .key(key)
                    .payload(value)
                    .headers(headers),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        (d.partition, d.offset)
    }

    /// Writes a record no sink can decode (Confluent framing with a schema
    /// id the catalog lacks) straight to the canonical topic: where it landed.
    async fn put_undecodable(&self) -> (i32, i64) {
        let mut value = vec![0u8, 0x7f, 0xff, 0xff, 0xff];
        value.extend_from_slice(b"not an Avro datum of any schema here");
        self.put_on_data("DR-2026-99999998", "c-undecodable", 1, &value)
            .await
    }

    /// Every event the subscriber holds, in the order it received them.
    fn seen(&self) -> Vec<Seen> {
        match self.kind {
            Kind::Webhook => self
                .receiver
                .as_ref()
                .unwrap()
                .requests()
                .iter()
                .filter(|r| r["verified"] == json!(true) && r["answer"] == json!("200"))
                .flat_map(|r| r["events"].as_array().cloned().unwrap_or_default())
                .map(|e| Seen::from_cloudevent(&e))
                .collect(),
            Kind::File | Kind::FileCsv => {
                let ext = if self.kind == Kind::File {
                    "jsonl"
                } else {
                    "csv"
                };
                let mut files: Vec<PathBuf> = std::fs::read_dir(self.work.path().join("out"))
                    .map(|d| d.flatten().map(|e| e.path()).collect())
                    .unwrap_or_default();
                // Closed files and the open one (`.jsonl.part`): names sort
                // in delivery order (time, then a counter).
                files.retain(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n.ends_with(&format!(".{ext}")) || n.ends_with(&format!(".{ext}.part"))
                    })
                });
                files.sort();
                files
                    .iter()
                    .flat_map(|p| match self.kind {
                        Kind::File => lines(p).iter().map(Seen::from_cloudevent).collect(),
                        _ => csv_rows(p),
                    })
                    .collect()
            }
            Kind::LiveStream => lines(&self.work.path().join("sse.jsonl"))
                .iter()
                // `skipped` names a record it could not decode, not an event.
                .filter(|l| l["event"] != json!("skipped"))
                .filter_map(|l| l["data"].as_str())
                .map(|d| Seen::from_cloudevent(&serde_json::from_str(d).unwrap()))
                .collect(),
            Kind::KafkaView => govbus_kafka::read::read_all(
                &self.cluster.bootstrap_servers(),
                &self.topics.view(SUB),
                Duration::from_millis(500),
                Duration::from_secs(10),
            )
            .unwrap_or_default()
            .iter()
            .map(|r| Seen {
                id: r.header(h::CE_ID).to_owned(),
                subject: r.header(h::CE_SUBJECT).to_owned(),
                op: r.header(h::CE_OP).to_owned(),
                version: r.header(h::CE_SOURCEVERSION).parse().unwrap_or(0),
                data: r
                    .value
                    .as_deref()
                    .map(|v| serde_json::from_slice(v).unwrap()),
            })
            .collect(),
            Kind::Postgres => unreachable!("the PostgreSQL sink keeps state: see `table`"),
        }
    }

    /// The PostgreSQL sink's table: key → (version, row as JSON).
    async fn table(&self) -> BTreeMap<String, (u64, Json)> {
        let pg = self.pg.as_ref().unwrap();
        let Ok(client) = pg.client().await else {
            return BTreeMap::new();
        };
        let sql = format!(
            "SELECT _govbus_subject, _govbus_source_version, to_jsonb(t)::text FROM \"{}\".deaths t",
            pg.name()
        );
        client
            .query(&sql, &[])
            .await
            .map(|rows| {
                rows.iter()
                    .map(|r| {
                        let row: String = r.get(2);
                        (
                            r.get::<_, String>(0),
                            (
                                r.get::<_, i64>(1) as u64,
                                serde_json::from_str(&row).unwrap(),
                            ),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether the subscriber holds every expected change (events), or the
    /// state they imply (PostgreSQL).
    async fn holds(&self, all: &[Change]) -> bool {
        if self.kind == Kind::Postgres {
            let want = final_state(all);
            let got: BTreeMap<String, u64> = self
                .table()
                .await
                .into_iter()
                .map(|(k, (v, _))| (k, v))
                .collect();
            return got == want;
        }
        let seen: BTreeSet<String> = self.seen().into_iter().map(|s| s.id).collect();
        all.iter()
            .filter(|c| c.expected_op().is_some())
            .all(|c| seen.contains(&c.id()))
    }

    async fn wait_holds(&self, what: &str, all: &[Change], limit: Duration) {
        let start = Instant::now();
        while !self.holds(all).await {
            if start.elapsed() > limit {
                self.dump();
                panic!(
                    "{:?}: timed out after {limit:?} waiting for {what}",
                    self.kind
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Event ids the ledger lists as delivered or streamed to the subscription.
    fn ledgered(&self) -> BTreeSet<String> {
        let out = Command::new(govbus_bin())
            .args(["audit", "query", "--subscription", SUB, "--format", "json"])
            .args(["--bootstrap", &self.cluster.bootstrap_servers()])
            .args(["--topic-prefix", self.topics.prefix()])
            .env("GOVBUS_LOG", "warn")
            .output()
            .unwrap();
        let rows: Json = serde_json::from_slice(&out.stdout).unwrap_or(json!([]));
        rows.as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|r| r["outcome"] == json!("delivered") || r["outcome"] == json!("streamed"))
            .flat_map(|r| r["events"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e.as_str().map(str::to_owned))
            .collect()
    }

    /// Every event id in `held` is on the ledger (its appends are
    /// acknowledged before offsets move; reading it back takes a moment).
    async fn assert_on_ledger(&self, held: &BTreeSet<String>) {
        let start = Instant::now();
        loop {
            let ledger = self.ledgered();
            let missing: Vec<&String> = held.iter().filter(|id| !ledger.contains(*id)).collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{:?}: held by the subscriber, not on the ledger: {missing:?}",
                self.kind
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn dump(&self) {
        for entry in std::fs::read_dir(self.work.path()).unwrap().flatten() {
            let p = entry.path();
            if p.extension().is_some_and(|x| x == "log" || x == "err") {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                eprintln!("--- {} (last lines, newest first)", p.display());
                for l in tail {
                    eprintln!("{l}");
                }
            }
        }
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Some(f) = &mut self.follower {
            let _ = f.kill();
            let _ = f.wait();
        }
    }
}

/// The events of a CSV file: a header, then one row per event (envelope
/// columns, then the delivered fields; a delete's fields are empty).
/// `c`'s value as the router would write it under the catalog in `dir`.
fn canonical(dir: &Path, c: &Change) -> Vec<u8> {
    let catalog = govbus_catalog::Catalog::load(dir).unwrap();
    govbus_validate::Engine::new(&catalog)
        .unwrap()
        .dataset(DEATHS)
        .unwrap()
        .validate_json(c.body().as_bytes(), &govbus_validate::Context::now())
        .unwrap()
        .value
}

fn csv_rows(path: &Path) -> Vec<Seen> {
    let Ok(mut reader) = csv::Reader::from_path(path) else {
        return Vec::new();
    };
    let header: Vec<String> = match reader.headers() {
        Ok(h) => h.iter().map(str::to_owned).collect(),
        Err(_) => return Vec::new(),
    };
    assert_eq!(
        header[..5],
        ["id", "op", "time", "sourceversion", "subject"],
        "{}",
        path.display()
    );
    reader
        .records()
        .map(|r| {
            let r = r.unwrap_or_else(|e| panic!("{}: a damaged CSV row: {e}", path.display()));
            let data: serde_json::Map<String, Json> = header[5..]
                .iter()
                .zip(r.iter().skip(5))
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            Seen {
                id: r[0].to_owned(),
                op: r[1].to_owned(),
                version: r[3].parse().unwrap_or(0),
                subject: r[4].to_owned(),
                data: (r.get(1) != Some("delete")).then_some(Json::Object(data)),
            }
        })
        .collect()
}

fn lines(path: &Path) -> Vec<Json> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Key → version of the records a state sink must hold after `all`.
fn final_state(all: &[Change]) -> BTreeMap<String, u64> {
    let mut state = BTreeMap::new();
    for c in all {
        if c.op == "delete" || !c.in_scope() {
            state.remove(&c.key());
        } else {
            state.insert(c.key(), c.version);
        }
    }
    state
}

fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The grant's policy on one delivered record.
fn check_policy(kind: Kind, key: &str, data: &Json) {
    let d = data
        .as_object()
        .unwrap_or_else(|| panic!("{kind:?}: {data}"));
    assert!(
        !d.contains_key("informant_phone") && !data.to_string().contains(PHONE),
        "{kind:?}: an excluded field left: {data}"
    );
    let name = d["deceased_name"].as_str().unwrap_or_default();
    assert!(
        !name.contains("阳娜"),
        "{kind:?}: a masked field left in clear: {data}"
    );
    assert_ne!(
        d["death_cause_category"],
        json!("accident"),
        "{kind:?}: a record outside the row filter left: {data}"
    );
    assert_eq!(d["registration_no"], json!(key), "{kind:?}");
}

async fn conformance(kind: Kind) {
    let mut b = Bench::start(kind).await;
    let first = changes(0..80);
    let later = changes(200..240);

    // 1. Kill -9 while records are being published and delivered.
    let mut sink = b.sink();
    if kind == Kind::LiveStream {
        b.follow(None);
    }
    let (head, tail) = first.split_at(first.len() / 3);
    b.publish(head).await;
    let start = Instant::now();
    loop {
        let n = match kind {
            Kind::Postgres => b.table().await.len(),
            _ => b.seen().len(),
        };
        if n > 0 || start.elapsed() > Duration::from_secs(60) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let publishing = b.publish(tail);
    let killing = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        kill9(&mut sink);
    };
    tokio::join!(publishing, killing);
    let mut sink = b.sink();
    b.wait_holds(
        "every change after the kill",
        &first,
        Duration::from_secs(90),
    )
    .await;

    // 2. Revoked: nothing more after 5 s. Granted again: nothing skipped.
    b.write_grant(true);
    tokio::time::sleep(Duration::from_secs(5)).await;
    b.publish(&later).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leaked: Vec<String> = match kind {
        Kind::Postgres => b
            .table()
            .await
            .into_keys()
            .filter(|k| later.iter().any(|c| &c.key() == k))
            .collect(),
        _ => b
            .seen()
            .into_iter()
            .filter(|s| later.iter().any(|c| c.id() == s.id))
            .map(|s| s.id)
            .collect(),
    };
    assert!(
        leaked.is_empty(),
        "{kind:?}: delivered 5 s after the revocation: {leaked:?}"
    );
    b.write_grant(false);
    let all: Vec<Change> = first.iter().chain(&later).copied().collect();
    b.wait_holds(
        "the changes made while revoked",
        &all,
        Duration::from_secs(90),
    )
    .await;

    // 3. The destination fails for a while: nothing published meanwhile
    // is recorded as delivered while it fails, and all of it arrives after.
    kill9(&mut sink);
    let more = changes(300..340);
    b.publish(&more).await;
    b.wait_routed(&more).await;
    b.break_destination().await;
    let mut sink = b.sink();
    let start = Instant::now();
    while !b.failure_logged() {
        if start.elapsed() > Duration::from_secs(60) {
            b.dump();
            panic!("{kind:?}: the sink never met the failure");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Long enough for a retry or two.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ledger = b.ledgered();
    let claimed: Vec<String> = more
        .iter()
        .map(Change::id)
        .filter(|id| ledger.contains(id))
        .collect();
    assert!(
        claimed.is_empty(),
        "{kind:?}: on the ledger as delivered while the destination failed: {claimed:?}"
    );
    b.repair().await;
    let all: Vec<Change> = all.iter().chain(&more).copied().collect();
    b.wait_holds(
        "the changes made while the destination failed",
        &all,
        Duration::from_secs(90),
    )
    .await;

    // 4. A record no sink can decode (a schema id the catalog lacks) on the
    // canonical topic, then more: delivery goes on past it, and it is never
    // dropped silently — a delivery sink dead-letters it to
    // `dlq.sub.<id>`, a live stream tells its client where and why.
    let (partition, offset) = b.put_undecodable().await;
    let after = changes(400..420);
    b.publish(&after).await;
    // Another under the same unknown id: waited for once, not per record.
    b.put_undecodable().await;
    // A valid value under an op the router never writes, with a line break
    // that would end a live-stream event's type field: refused the same way
    // (it was delivered as it was, and the live stream's response panicked).
    let odd = Change {
        i: 431,
        version: 1,
        op: "create",
    };
    let value = canonical(b.catalog.path(), &odd);
    let odd_at = b
        .put_on_data_as(
            &odd.key(),
            &odd.id(),
            1,
            &value,
            "create\r\nevent: injected",
        )
        .await;
    let past = changes(420..430);
    b.publish(&past).await;
    let all: Vec<Change> = all.iter().chain(&after).chain(&past).copied().collect();
    b.wait_holds(
        "the changes after an undecodable record",
        &all,
        Duration::from_secs(90),
    )
    .await;
    for (partition, offset) in [(partition, offset), odd_at] {
        let start = Instant::now();
        loop {
            let told = match kind {
                Kind::LiveStream => lines(&b.work.path().join("sse.jsonl")).iter().any(|l| {
                    l["event"] == json!("skipped")
                        && serde_json::from_str::<Json>(l["data"].as_str().unwrap_or("{}"))
                            .is_ok_and(|d| {
                                d["partition"] == json!(partition) && d["offset"] == json!(offset)
                            })
                }),
                _ => govbus_kafka::read::read_all(
                    &b.cluster.bootstrap_servers(),
                    &b.topics.subscription_dlq(SUB),
                    Duration::from_millis(500),
                    Duration::from_secs(10),
                )
                .unwrap_or_default()
                .iter()
                .any(|r| {
                    r.header(h::ERROR_PARTITION) == partition.to_string()
                        && r.header(h::ERROR_OFFSET) == offset.to_string()
                }),
            };
            if told {
                break;
            }
            if start.elapsed() > Duration::from_secs(60) {
                b.dump();
                panic!(
                    "{kind:?}: the undecodable record at {partition}/{offset} was passed over silently"
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    if kind != Kind::LiveStream {
        let waits: usize = (1..=b.started)
            .map(|n| {
                std::fs::read_to_string(b.work.path().join(format!("sink-{n}.log")))
                    .unwrap_or_default()
                    .matches("waits for the catalog")
                    .count()
            })
            .sum();
        assert_eq!(
            waits, 1,
            "{kind:?}: the unknown schema id was waited for {waits} times"
        );
    }

    // 5. What the subscriber holds.
    if kind == Kind::Postgres {
        for (key, (_, row)) in b.table().await {
            check_policy(kind, &key, &row);
        }
        // Delete markers: only keys deleted at the source, never one that
        // was outside the filter all along.
        let pg = b.pg.as_ref().unwrap();
        let marked: BTreeSet<String> = pg
            .client()
            .await
            .unwrap()
            .query(
                &format!(
                    "SELECT subject FROM \"{}\".deaths__govbus_deleted",
                    pg.name()
                ),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let deleted: BTreeSet<String> = all
            .iter()
            .filter(|c| c.op == "delete")
            .map(Change::key)
            .collect();
        assert_eq!(marked, deleted, "{kind:?}: delete markers");
    } else {
        let expected: HashMap<String, Change> = all.iter().map(|c| (c.id(), *c)).collect();
        let seen = b.seen();
        let mut newest: HashMap<String, u64> = HashMap::new();
        let mut first_time = BTreeSet::new();
        for s in &seen {
            let c = expected
                .get(&s.id)
                .unwrap_or_else(|| panic!("{kind:?}: an event nobody published: {s:?}"));
            let op = c.expected_op().unwrap_or_else(|| {
                panic!("{kind:?}: a change outside the row filter reached the subscriber: {s:?}")
            });
            assert_eq!(s.op, op, "{kind:?}: {s:?}");
            assert_eq!(
                (s.subject.as_str(), s.version),
                (c.key().as_str(), c.version)
            );
            match op {
                "create" | "update" => check_policy(kind, &c.key(), s.data.as_ref().unwrap()),
                _ => assert!(
                    s.data.as_ref().is_none_or(Json::is_null),
                    "{kind:?}: a {op} carries no data: {s:?}"
                ),
            }
            // Order per key: a first receipt never comes after a newer
            // version of its key (a repeat is a duplicate, not disorder).
            if first_time.insert(s.id.clone()) {
                let newest = newest.entry(s.subject.clone()).or_default();
                assert!(
                    s.version > *newest,
                    "{kind:?}: {} v{} arrived after v{newest}",
                    s.subject,
                    s.version
                );
                *newest = s.version;
            }
        }
        println!(
            "{kind:?}: {} events received, {} distinct, {} expected",
            seen.len(),
            first_time.len(),
            all.iter().filter(|c| c.expected_op().is_some()).count()
        );
    }
    // Every event the subscriber holds is on the ledger.
    let held: BTreeSet<String> = match kind {
        Kind::Postgres => {
            let pg = b.pg.as_ref().unwrap();
            let client = pg.client().await.unwrap();
            client
                .query(
                    &format!("SELECT _govbus_event_id FROM \"{}\".deaths", pg.name()),
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect()
        }
        _ => b.seen().into_iter().map(|s| s.id).collect(),
    };
    b.assert_on_ledger(&held).await;
    kill9(&mut sink);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_webhook_sink_conforms() {
    conformance(Kind::Webhook).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_postgres_sink_conforms() {
    conformance(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_live_stream_conforms() {
    conformance(Kind::LiveStream).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_file_sink_conforms() {
    conformance(Kind::File).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_csv_file_sink_conforms() {
    conformance(Kind::FileCsv).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_kafka_view_sink_conforms() {
    conformance(Kind::KafkaView).await;
}

/// A live stream hands a client only events the ledger already holds: while
/// the broker refuses the ledger's writes, the client receives nothing;
/// once they go through, it receives everything, and all of it is on the
/// ledger. (The kill in the suite above leaves a window of microseconds
/// between hand-over and ledger; this makes the window seconds long.)
#[tokio::test(flavor = "multi_thread")]
async fn a_live_stream_hands_over_nothing_the_ledger_has_not_recorded() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mut b = Bench::start(Kind::LiveStream).await;
    let mut sink = b.sink();
    // More events than one chunk of 128: the chunk boundary is crossed.
    let all = changes(0..100);
    b.publish(&all).await;
    let data = b.topics.data(DEATHS);
    let start = Instant::now();
    while govbus_kafka::read::read_all(
        &b.cluster.bootstrap_servers(),
        &data,
        Duration::from_millis(300),
        Duration::from_secs(10),
    )
    .unwrap_or_default()
    .len()
        < all.len()
    {
        assert!(start.elapsed() < Duration::from_secs(60), "not routed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every write fails with a retriable error (the router has nothing left
    // to write; the ledger's producer retries).
    b.cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 100_000],
    );
    b.follow(None);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let early = b.seen().len();
    let connected = lines(&b.work.path().join("sse.jsonl"))
        .iter()
        .any(|l| l["connected"] == json!(200));
    b.cluster.clear_request_errors(RDKafkaApiKey::Produce);
    assert!(connected, "the client never connected");
    assert_eq!(
        early, 0,
        "events reached the client while the ledger could not record them"
    );
    b.wait_holds(
        "every event once the ledger writes",
        &all,
        Duration::from_secs(90),
    )
    .await;
    let held: BTreeSet<String> = b.seen().into_iter().map(|s| s.id).collect();
    b.assert_on_ledger(&held).await;
    kill9(&mut sink);
}

/// The PostgreSQL sink commits its offsets with its rows, past every record
/// of the batch: a record it cannot deliver must be in `dlq.sub.<id>` before
/// that commit, or a crash in between loses it without a trace. Here the
/// dead-letter write cannot succeed (the record is larger than the sink's
/// producer takes): the table's position must stay before the record.
#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_table_never_moves_past_a_record_it_has_not_dead_lettered() {
    let mut b = Bench::start(Kind::Postgres).await;
    let first = changes(0..5);
    b.publish(&first).await;
    b.wait_routed(&first).await;
    // An undecodable record of 5,000 bytes on the canonical topic, then more.
    let mut value = vec![0u8, 0, 0, 0, 1];
    value.extend(std::iter::repeat_n(0xffu8, 5_000));
    let (partition, offset) = b
        .put_on_data("DR-2026-99999999", "c-broken", 1, &value)
        .await;
    let later = changes(100..105);
    b.publish(&later).await;
    b.wait_routed(&later).await;

    b.extra = vec!["--kafka".into(), "message.max.bytes=2000".into()];
    let mut sink = b.sink();
    let log = b.work.path().join("sink-1.log");
    let start = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("Subscriber DLQ write failed")
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the dead-letter write never failed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pg = b.pg.as_ref().unwrap();
    let position: Option<i64> = pg
        .client()
        .await
        .unwrap()
        .query_opt(
            &format!(
                "SELECT next_offset FROM \"{}\".govbus_offsets WHERE partition = $1",
                pg.name()
            ),
            &[&partition],
        )
        .await
        .unwrap()
        .map(|r| r.get(0));
    kill9(&mut sink);
    assert!(
        position.is_none_or(|p| p <= offset),
        "the table moved to {position:?}, past the record at {partition}/{offset}, which is in no dead-letter topic"
    );
}

/// Every process that keeps a ledger chain starts, and answers `/health`
/// and `/metrics`, while the broker refuses every write: the operator can
/// see what is wrong. (Before 2026-12-03 both waited for the chain's `open`
/// entry before listening, for as long as the broker refused it.)
#[tokio::test(flavor = "multi_thread")]
async fn a_ledger_keeping_process_listens_while_the_broker_refuses_writes() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mut b = Bench::start(Kind::Webhook).await;
    b.cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 100_000],
    );
    // `sink()` waits (up to its limit) until the port listens.
    let mut sink = b.sink();
    assert!(common::http_get(b.port, "/health").contains("200 OK"));
    assert!(common::http_get(b.port, "/metrics").contains("200 OK"));
    kill9(&mut sink);

    let port = free_port();
    let state = b.work.path().join("query-state");
    let mut cmd = Command::new(govbus_bin());
    cmd.args(["query", "--bootstrap", &b.cluster.bootstrap_servers()])
        .args(["--topic-prefix", b.topics.prefix()])
        .args(["--catalog", b.catalog.path().to_str().unwrap()])
        .args(["--state-dir", state.to_str().unwrap()])
        .args(["--credentials", b.creds.to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("GOVBUS_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(b.work.path().join("query.log")).unwrap());
    let mut query = govbus_testkit::spawn(cmd).unwrap();
    wait_listening(port);
    assert!(common::http_get(port, "/health").contains("200 OK"));
    assert!(common::http_get(port, "/metrics").contains("200 OK"));
    kill9(&mut query);
    b.cluster.clear_request_errors(RDKafkaApiKey::Produce);
}

/// A stop does not wait for ever on a broker that refuses writes: a sink
/// holding a delivered batch whose ledger entry cannot be written stops
/// within its grace (15 s) on SIGTERM, its offsets unmoved; started again
/// once the broker writes, it delivers the batch again and records it.
#[tokio::test(flavor = "multi_thread")]
async fn a_sink_stuck_behind_a_refusing_broker_stops_on_sigterm_and_loses_nothing() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mut b = Bench::start(Kind::Webhook).await;
    let all = changes(0..10);
    b.publish(&all).await;
    b.wait_routed(&all).await;
    b.cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 100_000],
    );
    let mut sink = b.sink();
    let start = Instant::now();
    while b.seen().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "nothing delivered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Command::new("kill")
        .args(["-TERM", &sink.id().to_string()])
        .status()
        .unwrap();
    let asked = Instant::now();
    let exited = loop {
        if let Some(status) = sink.try_wait().unwrap() {
            break status;
        }
        if asked.elapsed() > Duration::from_secs(40) {
            kill9(&mut sink);
            b.dump();
            panic!("the sink did not stop within 40 s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("stopped {:?} after SIGTERM: {exited:?}", asked.elapsed());
    b.cluster.clear_request_errors(RDKafkaApiKey::Produce);
    let mut sink = b.sink();
    let start = Instant::now();
    loop {
        let held: BTreeSet<String> = b.seen().into_iter().map(|s| s.id).collect();
        let ledger = b.ledgered();
        if held.iter().all(|id| ledger.contains(id)) && b.holds(&all).await {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "held events never all reached the ledger"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    kill9(&mut sink);
}

/// The router writes only under schema ids its catalog has; a sink's
/// catalog may learn a new schema version a moment later (it reloads every
/// second; the registry's schema log takes a moment too). A record under
/// an id the sink does not know *yet* waits for it — delivered, not
/// dead-lettered as undecodable — on the delivery engine and on a live
/// stream alike.
async fn a_schema_learned_late(kind: Kind) {
    let mut b = Bench::start(kind).await;
    let mut sink = b.sink();
    if kind == Kind::LiveStream {
        b.follow(None);
    }
    let first = changes(0..5);
    b.publish(&first).await;
    b.wait_holds("the first changes", &first, Duration::from_secs(90))
        .await;

    // Version 3 of the dataset's schema: version 2 and an optional field.
    let dir = b.catalog.path().join("datasets").join(DEATHS);
    let mut v3: Json =
        serde_json::from_str(&std::fs::read_to_string(dir.join("v2.avsc")).unwrap()).unwrap();
    v3["fields"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "remark", "type": ["null", "string"], "default": null}));
    let v3 = serde_json::to_string_pretty(&v3).unwrap();
    // The record as a router that already has version 3 writes it.
    let ahead = tempfile::tempdir().unwrap();
    govbus_testkit::copy_dir(b.catalog.path(), ahead.path()).unwrap();
    std::fs::write(
        ahead.path().join("datasets").join(DEATHS).join("v3.avsc"),
        &v3,
    )
    .unwrap();
    let c = Change {
        i: 500,
        version: 1,
        op: "create",
    };
    b.put_on_data(&c.key(), &c.id(), c.version, &canonical(ahead.path(), &c))
        .await;
    // The sink's catalog learns version 3 three seconds later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    std::fs::write(dir.join("v3.avsc"), &v3).unwrap();
    let all: Vec<Change> = first.iter().copied().chain([c]).collect();
    b.wait_holds(
        "the record under the schema learned late",
        &all,
        Duration::from_secs(30),
    )
    .await;
    let dead = govbus_kafka::read::read_all(
        &b.cluster.bootstrap_servers(),
        &b.topics.subscription_dlq(SUB),
        Duration::from_millis(500),
        Duration::from_secs(10),
    )
    .unwrap_or_default();
    kill9(&mut sink);
    assert!(
        dead.is_empty(),
        "{kind:?}: dead-lettered: {:?}",
        dead.iter()
            .map(|r| r.header(h::ERROR_DETAIL).to_owned())
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_sink_waits_for_a_schema_its_catalog_learns_late() {
    a_schema_learned_late(Kind::Webhook).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_stream_waits_for_a_schema_its_catalog_learns_late() {
    a_schema_learned_late(Kind::LiveStream).await;
}
