//! Conservation under fire: every event published at 5,000 records/s is
//! delivered to the subscriber (lost = 0), whatever is killed or rebalanced
//! meanwhile; duplicates are counted, per-key order is checked
//! (`govbus_testkit::conservation`). Each scenario is bounded in time and
//! prints one `RELIABILITY` line with its figures (RELIABILITY.md).
//!
//! The broker is librdkafka's mock cluster in this process, not Tansu:
//! Tansu 0.6.0 hands a restarted member a stale assignment and skips the
//! rest of a batch when a consumer resumes inside it (ARCHITECTURE.md), so a
//! kill there loses records by the broker's fault, which is not what these
//! scenarios measure. The exception is the broker restart, which needs a
//! broker that keeps its data: Tansu on its libSQL engine, at 1,000/s.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use govbus_kafka::headers as h;
use govbus_kafka::topics::Topics;
use govbus_testkit::conservation::{self, Received};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

const SUBSCRIPTION: &str = "health_deaths_statistics";
const DATASET: &str = "civil_affairs.death_registration";
const RATE: usize = 5_000;
/// The broker-restart scenario's rate: Tansu's libSQL engine reads a
/// partition's whole backlog on every fetch, and stalls at 5,000/s here.
const RESTART_RATE: usize = 1_000;

/// `GOVBUS_SOAK_SECONDS`, for a long run of a scenario, or `default`.
fn soak_seconds(default: usize) -> usize {
    std::env::var("GOVBUS_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Scenarios run one at a time: each measures recovery on a 2-core machine,
/// and timing-driven steps (members joining a group within seconds) do not
/// hold when five load generators share the cores.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Bus {
    bootstrap: String,
    /// The mock cluster, when the scenario runs on one (kept alive here).
    mock: Option<rdkafka::mocking::MockCluster<'static, DefaultProducerContext>>,
    topics: Topics,
    dir: tempfile::TempDir,
}

impl Bus {
    fn new() -> Bus {
        let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
        let topics = Topics::new(format!("{}.", govbus_testkit::unique("rel")));
        // Enough partitions that none nears the mock's 5 MiB retention.
        for (t, p) in [
            (topics.ingest("civil_affairs"), 16),
            (topics.data(DATASET), 16),
            (topics.dlq("civil_affairs"), 1),
            (topics.subscription_dlq(SUBSCRIPTION), 1),
            (topics.view(SUBSCRIPTION), 1),
            (topics.audit(), 1),
        ] {
            cluster.create_topic(&t, p, 1).unwrap();
        }
        Bus {
            bootstrap: cluster.bootstrap_servers(),
            mock: Some(cluster),
            topics,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// On `broker` (Tansu): the components create the topics they write
    /// to, the test creates the ingest topic.
    fn on(broker: &govbus_testkit::Broker) -> Bus {
        let bus = Bus {
            bootstrap: broker.bootstrap(),
            mock: None,
            topics: Topics::new(format!("{}.", govbus_testkit::unique("reld"))),
            dir: tempfile::tempdir().unwrap(),
        };
        bus.create_topic(&bus.topics.ingest("civil_affairs"));
        bus
    }

    fn bootstrap(&self) -> String {
        self.bootstrap.clone()
    }

    fn create_topic(&self, topic: &str) {
        match &self.mock {
            Some(c) => c.create_topic(topic, 1, 1).unwrap(),
            None => tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(govbus_testkit::create_topic(&self.bootstrap, topic, 4))
                .unwrap(),
        }
    }

    fn base_args(&self, command: &str) -> Vec<String> {
        let mut args: Vec<String> = [
            command,
            "--bootstrap",
            &self.bootstrap(),
            "--topic-prefix",
            self.topics.prefix(),
            "--listen",
            "127.0.0.1:0",
            "--kafka",
            "session.timeout.ms=6000",
            "--kafka",
            "heartbeat.interval.ms=500",
        ]
        .map(String::from)
        .to_vec();
        if self.mock.is_some() {
            args.push("--no-create-topics".into()); // the mock has no CreateTopics
        }
        args
    }

    fn router(&self) -> Child {
        let mut args = self.base_args("router");
        args.extend(["--group".into(), format!("{}router", self.topics.prefix())]);
        if self.mock.is_none() {
            // Only the scenario's own topics, not every topic the catalog
            // implies: with the catalog's seven ingest topics the router's
            // group has 21 more partitions to rejoin after a broker restart
            // on Tansu's libSQL engine, and one full-suite run saw it make
            // no progress for 30 s (RELIABILITY.md, "Not covered yet").
            self.create_topic(&self.topics.data(DATASET));
            self.create_topic(&self.topics.dlq("civil_affairs"));
            args.push("--no-create-topics".into());
        }
        start(&args, self.dir.path())
    }

    /// A sink instance delivering into `<dir>/<name>/var/deliveries/...`.
    fn sink(&self, name: &str) -> Child {
        let cwd = self.dir.path().join(name);
        std::fs::create_dir_all(&cwd).unwrap();
        let mut args = self.base_args("sink");
        args.extend(["--subscription".into(), SUBSCRIPTION.into()]);
        start(&args, &cwd)
    }

    /// What each sink instance delivered, in its files' order.
    fn delivered(&self) -> Vec<Vec<Received>> {
        let mut all = Vec::new();
        for instance in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            let mut out = Vec::new();
            let dir = instance.path().join("var/deliveries").join(SUBSCRIPTION);
            let Ok(files) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut files: Vec<PathBuf> = files.flatten().map(|e| e.path()).collect();
            files.sort();
            for f in files {
                // A `.part` file may be renamed between listing and reading;
                // the next look finds it under its final name.
                let Ok(text) = std::fs::read_to_string(&f) else {
                    continue;
                };
                for line in text.lines() {
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                        continue; // a line cut by kill -9 is written again after the restart
                    };
                    out.push(received(&v));
                }
            }
            all.push(out);
        }
        all
    }

    /// Loss and duplicates over every instance; order within each instance
    /// (files of different instances interleave in time, not in file order).
    fn verdict(&self, published: &[String]) -> conservation::Verdict {
        let per = self.delivered();
        let mut v = conservation::check(published, &per.concat());
        v.out_of_order = per
            .iter()
            .flat_map(|stream| conservation::check(published, stream).out_of_order)
            .collect();
        v
    }
}

/// What the subscriber got, from one delivered CloudEvent (JSON).
fn received(event: &serde_json::Value) -> Received {
    Received {
        id: event["id"].as_str().unwrap_or("").to_owned(),
        key: event["subject"].as_str().unwrap_or("").to_owned(),
        version: event["sourceversion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(-1),
    }
}

/// Starts a component in `cwd`. With `GOVBUS_TEST_LOG_DIR` set, its log
/// (level info) goes to `<dir>/<component>-<n>.log` there, for a failure to
/// be read afterwards.
fn start(args: &[String], cwd: &Path) -> Child {
    static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let mut cmd = Command::new(common::govbus_bin());
    cmd.args(args)
        .current_dir(cwd)
        .env("GOVBUS_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(dir) = std::env::var_os("GOVBUS_TEST_LOG_DIR") {
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = Path::new(&dir).join(format!("{}-{n}.log", args[0]));
        cmd.env("GOVBUS_LOG", "info")
            .stderr(std::fs::File::create(&path).unwrap());
    }
    govbus_testkit::spawn(cmd).unwrap()
}

fn kill9(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

fn terminate(mut child: Child) {
    // SIGTERM: the component finishes its batch and stops.
    sigterm(child.id());
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            kill9(&mut child);
            panic!("no clean stop within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sigterm(pid: u32) {
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
}

/// A valid death registration: `key` names the registration, `version` the
/// update of it.
fn record(key: usize, version: usize) -> String {
    let id = govbus_testkit::ids::with_check(&format!("44030319400101{:03}", key % 1000));
    format!(
        r#"{{"registration_no":"DR-2026-{key:08}","deceased_id_number":"{id}","deceased_name":"王芳","gender":"FEMALE","birth_date":"1940-01-01","death_date":"2026-03-{:02}","death_place":"深圳市人民医院","death_cause_category":"natural","registering_office":"福田区民政局","registered_at":"2026-03-20T08:00:00Z","informant_phone":"13912345678"}}"#,
        1 + version % 28
    )
}

/// Delivery reports of the test's producer: the numbers of the records the
/// broker refused for good (the producer is idempotent and never times out,
/// but a broker that lost its producer state fails the in-flight records).
#[derive(Default)]
struct Refused(std::sync::Mutex<Vec<usize>>);

struct Reports(std::sync::Arc<Refused>);
impl rdkafka::ClientContext for Reports {}
impl rdkafka::producer::ProducerContext for Reports {
    type DeliveryOpaque = Box<usize>;
    fn delivery(&self, result: &rdkafka::producer::DeliveryResult<'_>, n: Box<usize>) {
        if result.is_err() {
            self.0 .0.lock().unwrap().push(*n);
        }
    }
}

/// What the test's department published.
struct Published {
    /// Event ids, all acknowledged by the broker in the end.
    ids: Vec<String>,
    /// Records the broker refused and the publisher sent again.
    resent: usize,
}

fn send(producer: &ThreadedProducer<Reports>, topic: &str, n: usize, keys: usize) {
    let (key, version) = (n % keys, n / keys + 1);
    let id = format!("rel-{n}");
    let value = record(key, version);
    let subject = format!("DR-2026-{key:08}");
    let v = version.to_string();
    let headers = h::owned([
        (h::CE_SPECVERSION, b"1.0".as_slice()),
        (h::CE_ID, id.as_bytes()),
        (h::CE_SOURCE, b"/departments/civil_affairs".as_slice()),
        (h::CE_TYPE, DATASET.as_bytes()),
        (h::CE_SOURCEVERSION, v.as_bytes()),
        (h::CE_OP, b"update".as_slice()),
        (h::CONTENT_TYPE, b"application/json".as_slice()),
    ]);
    let mut rec = BaseRecord::with_opaque_to(topic, Box::new(n))
        .key(subject.as_bytes())
        .payload(value.as_bytes())
        .headers(headers);
    loop {
        match producer.send(rec) {
            Ok(()) => break,
            Err((_, back)) => {
                rec = back;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// Publishes `seconds` × RATE records over `keys` keys (each key updated in
/// turn, source versions increasing), calling `at(second)` once a second;
/// records the broker refused are sent again, as a department's system
/// would, until every one is acknowledged.
fn publish(bus: &Bus, seconds: usize, keys: usize, mut at: impl FnMut(usize)) -> Published {
    publish_at(bus, RATE, seconds, keys, |second| {
        at(second);
        ControlFlow::Continue(())
    })
}

/// [`publish`] at `rate` records a second, for at most `seconds`: publishing
/// stops at the first second for which `at` breaks.
fn publish_at(
    bus: &Bus,
    rate: usize,
    seconds: usize,
    keys: usize,
    mut at: impl FnMut(usize) -> ControlFlow<()>,
) -> Published {
    let refused = std::sync::Arc::new(Refused::default());
    let producer: ThreadedProducer<Reports> = govbus_kafka::config::producer(&bus.bootstrap())
        .create_with_context(Reports(refused.clone()))
        .unwrap();
    let topic = bus.topics.ingest("civil_affairs");
    let started = Instant::now();
    // (A rate under 100 a second, or not a multiple of 100, from
    // GOVBUS_RESTART_RATE, still paces and still calls `at` every second.)
    let per_tick = (rate / 100).max(1);
    let mut sent = 0;
    while sent < seconds * rate {
        let n = sent;
        if n % per_tick == 0 {
            let due = Duration::from_secs_f64(n as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        if n % rate == 0 && at(n / rate).is_break() {
            break;
        }
        send(&producer, &topic, n, keys);
        sent += 1;
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    let mut resent = 0;
    for _ in 0..10 {
        let again: Vec<usize> = std::mem::take(&mut *refused.0.lock().unwrap());
        if again.is_empty() {
            break;
        }
        resent += again.len();
        for n in again {
            send(&producer, &topic, n, keys);
        }
        producer.flush(Duration::from_secs(60)).unwrap();
    }
    assert!(
        refused.0.lock().unwrap().is_empty(),
        "the broker kept refusing records"
    );
    Published {
        ids: (0..sent).map(|n| format!("rel-{n}")).collect(),
        resent,
    }
}

/// Waits until every published id was delivered, or nothing new arrived
/// for 30 s, or `limit`; returns the verdict and how long it took.
fn settle(bus: &Bus, published: &[String], limit: Duration) -> (conservation::Verdict, Duration) {
    let started = Instant::now();
    let (mut last_received, mut last_change) = (0, Instant::now());
    loop {
        let v = bus.verdict(published);
        if v.received != last_received {
            (last_received, last_change) = (v.received, Instant::now());
        }
        if v.lost_count == 0
            || started.elapsed() > limit
            || last_change.elapsed() > Duration::from_secs(30)
        {
            return (v, started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// For a failure message: how many of the lost events each topic holds.
fn where_lost(bus: &Bus, v: &conservation::Verdict, published: &[String]) -> String {
    let delivered: std::collections::HashSet<String> =
        bus.delivered().concat().into_iter().map(|r| r.id).collect();
    let lost: std::collections::HashSet<&String> = published
        .iter()
        .filter(|id| !delivered.contains(*id))
        .collect();
    let count = |topic: &str| {
        govbus_kafka::read::read_all(
            &bus.bootstrap(),
            topic,
            Duration::from_secs(3),
            Duration::from_secs(120),
        )
        .map(|recs| {
            recs.iter()
                .filter(|r| lost.contains(&r.header(h::CE_ID).to_owned()))
                .count()
        })
        .unwrap_or(0)
    };
    format!(
        "{v}\nof the {} lost: {} in {}, {} in {}",
        lost.len(),
        count(&bus.topics.ingest("civil_affairs")),
        bus.topics.ingest("civil_affairs"),
        count(&bus.topics.data(DATASET)),
        bus.topics.data(DATASET)
    )
}

#[test]
fn kill_9_of_the_router_and_the_sink_under_5000_per_second_loses_nothing() {
    let _alone = one_at_a_time();
    let bus = Bus::new();
    let mut router = bus.router();
    let mut sink = bus.sink("a");
    let mut faults = 0;
    let mut last_fault = Instant::now();
    // 15 s at 5,000/s (GOVBUS_SOAK_SECONDS for a longer run); every 4 s the
    // router is killed (at 3, 7, 11 s, ...) and two seconds later the sink
    // (5, 9, 13 s, ...), the last at least two seconds before the end.
    let seconds = soak_seconds(15);
    let run = publish(&bus, seconds, 2_000, |second| {
        if second + 2 > seconds {
            return;
        }
        if second % 4 == 3 {
            kill9(&mut router);
            router = bus.router();
            faults += 1;
            last_fault = Instant::now();
        }
        if second % 4 == 1 && second > 1 {
            kill9(&mut sink);
            sink = bus.sink("a");
            faults += 1;
            last_fault = Instant::now();
        }
    });
    let published = run.ids;
    let (v, _) = settle(&bus, &published, Duration::from_secs(180));
    let recovered = last_fault.elapsed();
    terminate(sink);
    terminate(router);
    println!(
        "RELIABILITY kill9: events {}, resent by the publisher {}, faults {faults}, lost {}, duplicates {}, keys out of order {}, all delivered {:.1} s after the last fault",
        v.published, run.resent, v.lost_count, v.duplicates, v.out_of_order.len(), recovered.as_secs_f64()
    );
    assert!(faults >= 6, "{faults} faults");
    assert!(v.holds(), "{v}");
}

#[test]
fn a_rebalance_storm_of_sink_instances_1_3_1_loses_nothing() {
    let _alone = one_at_a_time();
    let bus = Bus::new();
    let router = bus.router();
    let a = bus.sink("a");
    let mut extra: Vec<Child> = Vec::new();
    let mut last_change = Instant::now();
    let delivered_by = |instance: &str| {
        std::fs::read_dir(
            bus.dir
                .path()
                .join(instance)
                .join("var/deliveries")
                .join(SUBSCRIPTION),
        )
        .map(|d| d.count() > 0)
        .unwrap_or(false)
    };
    // Instances b and c join at 4 s and leave (SIGTERM) from 10 s, once one
    // of them has delivered, at 40 s at most; publishing goes on for 8 s
    // after they left. How long joining takes depends on the machine: the
    // mock holds a group in JOINING for 5 s after a member joins, and on a
    // loaded 2-core machine the joiners had once not delivered by 13 s and
    // once (a CI run) not by 18 s.
    let (mut joined_at, mut left_at) = (None, None);
    let run = publish_at(&bus, RATE, 60, 2_000, |second| {
        if second == 4 {
            extra.push(bus.sink("b"));
            extra.push(bus.sink("c"));
            last_change = Instant::now();
        }
        if joined_at.is_none() && (delivered_by("b") || delivered_by("c")) {
            joined_at = Some(second);
        }
        if second >= 10 && !extra.is_empty() && (joined_at.is_some() || second == 40) {
            for c in extra.drain(..) {
                terminate(c);
            }
            last_change = Instant::now();
            left_at = Some(second);
        }
        match left_at {
            Some(left) if second >= left + 8 => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        }
    });
    let published = run.ids;
    let (v, _) = settle(&bus, &published, Duration::from_secs(180));
    let recovered = last_change.elapsed();
    let instances_with_deliveries = ["a", "b", "c"].iter().filter(|i| delivered_by(i)).count();
    terminate(a);
    terminate(router);
    println!(
        "RELIABILITY storm: events {}, resent by the publisher {}, membership changes 4 (1→3→1; a joiner's first delivery seen at {} s, left at {} s), instances that delivered {instances_with_deliveries}, lost {}, duplicates {}, keys out of order {}, all delivered {:.1} s after the last change",
        v.published, run.resent, joined_at.map_or("-".into(), |s: usize| s.to_string()), left_at.map_or("-".into(), |s: usize| s.to_string()), v.lost_count, v.duplicates, v.out_of_order.len(), recovered.as_secs_f64()
    );
    assert!(v.holds(), "{v}");
    assert!(
        instances_with_deliveries >= 2,
        "the joining instances took partitions"
    );
}

/// The subscriber's webhook endpoint, which the test turns bad and good.
mod endpoint {
    use std::sync::atomic::{AtomicU8, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use govbus_testkit::conservation::Received;

    pub const OK: u8 = 0;
    pub const FAIL: u8 = 1;
    pub const HANG: u8 = 2;

    #[derive(Clone, Default)]
    pub struct Endpoint {
        pub mode: Arc<AtomicU8>,
        pub received: Arc<Mutex<Vec<Received>>>,
        pub refused: Arc<Mutex<u64>>,
    }

    impl Endpoint {
        /// Serves on a free port on its own thread; returns the port.
        pub fn start(&self) -> u16 {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let port = listener.local_addr().unwrap().port();
            let me = self.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    let app = axum::Router::new().route(
                        "/hook",
                        axum::routing::post(move |body: axum::body::Bytes| {
                            let me = me.clone();
                            async move {
                                match me.mode.load(Ordering::Relaxed) {
                                    FAIL => {
                                        *me.refused.lock().unwrap() += 1;
                                        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                                    }
                                    HANG => {
                                        *me.refused.lock().unwrap() += 1;
                                        tokio::time::sleep(Duration::from_secs(5)).await;
                                        return axum::http::StatusCode::GATEWAY_TIMEOUT;
                                    }
                                    _ => {}
                                }
                                let events: Vec<serde_json::Value> =
                                    serde_json::from_slice(&body).unwrap_or_default();
                                let mut got = me.received.lock().unwrap();
                                got.extend(events.iter().map(super::received));
                                axum::http::StatusCode::NO_CONTENT
                            }
                        }),
                    );
                    axum::serve(listener, app).await.unwrap();
                });
            });
            port
        }
    }
}

#[test]
fn a_webhook_that_fails_times_out_and_recovers_loses_nothing() {
    let _alone = one_at_a_time();
    let bus = Bus::new();
    // The sample catalog plus a webhook grant to the test's endpoint.
    let catalog = bus.dir.path().join("catalog");
    govbus_testkit::copy_dir(&common::repo().join("schemas"), &catalog).unwrap();
    let ep = endpoint::Endpoint::default();
    let port = ep.start();
    std::fs::write(
        catalog.join("subscriptions/reliability_webhook.toml"),
        format!(
            "subscriber = \"housing_fund\"\ndataset = \"{DATASET}\"\npurpose = \"reliability test\"\n\n[fields]\ninclude = [\"death_date\"]\n\n[sink]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{port}/hook\"\nsecret = \"whsec_cmVsaWFiaWxpdHktdGVzdC1zZWNyZXQ=\"\nallow_private = true\ntimeout = \"1s\"\nmax_attempts = 10000\nmax_backoff = \"1s\"\n"
        ),
    )
    .unwrap();
    bus.create_topic(&bus.topics.subscription_dlq("reliability_webhook"));
    let router = bus.router();
    let mut args = bus.base_args("sink");
    args.extend([
        "--subscription".into(),
        "reliability_webhook".into(),
        "--catalog".into(),
        catalog.display().to_string(),
    ]);
    let sink = start(&args, bus.dir.path());
    let mut last_change = Instant::now();
    // Healthy, then 503s from 3 s, hanging past the timeout from 6 s, healthy again at 9 s.
    let run = publish(&bus, 12, 2_000, |second| {
        let mode = match second {
            3 => endpoint::FAIL,
            6 => endpoint::HANG,
            9 => endpoint::OK,
            _ => return,
        };
        ep.mode.store(mode, std::sync::atomic::Ordering::Relaxed);
        last_change = Instant::now();
    });
    let published = run.ids;
    let started = Instant::now();
    let v = loop {
        let v = conservation::check(&published, &ep.received.lock().unwrap());
        if v.lost_count == 0 || started.elapsed() > Duration::from_secs(180) {
            break v;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let recovered = last_change.elapsed();
    terminate(sink);
    terminate(router);
    let refused = *ep.refused.lock().unwrap();
    println!(
        "RELIABILITY webhook: events {}, resent by the publisher {}, failed or timed-out requests {refused}, lost {}, duplicates {}, keys out of order {}, all delivered {:.1} s after the endpoint recovered",
        v.published, run.resent, v.lost_count, v.duplicates, v.out_of_order.len(), recovered.as_secs_f64()
    );
    assert!(refused > 0, "the endpoint did fail");
    assert!(v.holds(), "{v}");
}

/// The broker is killed (SIGKILL) and restarted on the same storage while
/// the department publishes and the router and the sink run. On Tansu's
/// libSQL engine (with the index the testkit adds; RELIABILITY.md) at
/// RESTART_RATE. `GOVBUS_TEST_DURABLE=s3` runs it on Tansu's S3 engine
/// instead, which loses records across a restart (RELIABILITY.md);
/// `GOVBUS_RESTART_RATE` sets the rate.
#[test]
fn a_broker_restart_on_durable_storage_loses_nothing() {
    let _alone = one_at_a_time();
    let storage = match std::env::var("GOVBUS_TEST_DURABLE").as_deref() {
        Ok("s3") => govbus_testkit::Storage::Durable,
        _ => govbus_testkit::Storage::Sqlite,
    };
    let mut broker = govbus_testkit::Broker::start(storage).unwrap();
    let bus = Bus::on(&broker);
    let router = bus.router();
    let sink = bus.sink("a");
    let mut restarted_at = None;
    let (mut restarts, mut downtime) = (0, Duration::ZERO);
    let rate: usize = std::env::var("GOVBUS_RESTART_RATE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(RESTART_RATE);
    // 10 s (GOVBUS_SOAK_SECONDS for longer); the broker is killed and
    // restarted every 5 s, the last at least two seconds before the end.
    let seconds = soak_seconds(10);
    let run = publish_at(&bus, rate, seconds, 2_000, |second| {
        if second > 0 && second % 5 == 0 && second + 2 <= seconds {
            let t = Instant::now();
            broker.restart().unwrap();
            downtime = downtime.max(t.elapsed());
            restarts += 1;
            restarted_at = Some(Instant::now());
        }
        ControlFlow::Continue(())
    });
    let published = run.ids;
    let (v, _) = settle(&bus, &published, Duration::from_secs(240));
    let recovered = restarted_at.map(|t| t.elapsed()).unwrap_or_default();
    terminate(sink);
    terminate(router);
    let diagnosis = if v.holds() {
        String::new()
    } else {
        where_lost(&bus, &v, &published)
    };
    println!(
        "RELIABILITY broker-restart: {rate}/s, events {}, resent by the publisher {}, restarts {restarts} (down {:.1} s at most), lost {}, duplicates {}, keys out of order {}, all delivered {:.1} s after the last restart",
        v.published, run.resent, downtime.as_secs_f64(), v.lost_count, v.duplicates, v.out_of_order.len(), recovered.as_secs_f64()
    );
    assert!(restarts >= 1, "{restarts} restarts");
    assert!(v.holds(), "{diagnosis}");
}

#[test]
fn a_postgresql_restart_under_the_postgres_sink_loses_nothing() {
    let _alone = one_at_a_time();
    const GRANT: &str = "hrss_deaths_pension_stop";
    let bus = Bus::new();
    bus.create_topic(&bus.topics.subscription_dlq(GRANT));
    let pg = common::own_postgres::OwnPostgres::start(bus.dir.path(), &[]);
    let router = bus.router();
    let mut args = bus.base_args("sink");
    args.extend([
        "--subscription".into(),
        GRANT.into(),
        "--postgres".into(),
        pg.conninfo(),
    ]);
    let sink = start(&args, bus.dir.path());
    let keys = 2_000;
    let mut restarted_at = None;
    // 10 s at 5,000/s; PostgreSQL crashes (immediate shutdown) and restarts at 5 s.
    let run = publish(&bus, 10, keys, |second| {
        if second == 5 {
            pg.pg_ctl("restart", "immediate");
            restarted_at = Some(Instant::now());
        }
    });
    // The table's effect: every key at its last version, from its last event.
    let last: std::collections::HashMap<String, (i64, String)> = (0..run.ids.len())
        .map(|n| {
            (
                format!("DR-2026-{:08}", n % keys),
                ((n / keys + 1) as i64, format!("rel-{n}")),
            )
        })
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let started = Instant::now();
    let wrong = loop {
        let rows = rt.block_on(async {
            let Ok((client, conn)) = tokio_postgres::connect(&pg.conninfo(), tokio_postgres::NoTls).await else {
                return Vec::new();
            };
            tokio::spawn(conn);
            client
                .query("SELECT _govbus_subject, _govbus_source_version, _govbus_event_id FROM govbus_feed.civil_affairs_deaths", &[])
                .await
                .map(|rows| rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1), r.get::<_, String>(2))).collect())
                .unwrap_or_default()
        });
        let right = rows
            .iter()
            .filter(|(k, v, id)| last.get(k) == Some(&(*v, id.clone())))
            .count();
        let wrong = last.len() - right;
        if wrong == 0 || started.elapsed() > Duration::from_secs(120) {
            break wrong;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let recovered = restarted_at.map(|t| t.elapsed()).unwrap_or_default();
    terminate(sink);
    terminate(router);
    println!(
        "RELIABILITY postgres-restart: events {}, resent by the publisher {}, PostgreSQL crashes 1, keys {}, keys not at their last version {wrong}, table complete {:.1} s after the restart",
        run.ids.len(), run.resent, last.len(), recovered.as_secs_f64()
    );
    assert_eq!(
        wrong, 0,
        "keys whose row is missing or not at the last published version"
    );
}
