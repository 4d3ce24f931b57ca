//! The table-dump adapter end to end: `govbus snapshot publish|watch|rebuild`
//! against the real broker and router.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{govbus_bin, spawn_router};
use govbus_kafka::headers as h;
use govbus_kafka::topics::Topics;
use govbus_testkit::{create_topic, unique, Broker};

const DS: &str = "hrss.pension_payment";
const HEADER: &str = "发放流水号,身份证号码,姓名,养老保险类型,发放月份,金额,发放时间";
const MAPPING: &str = r#"dataset = "hrss.pension_payment"
[columns]
payment_id = "发放流水号"
recipient_id_number = "身份证号码"
recipient_name = "姓名"
pension_type = "养老保险类型"
pay_month = "发放月份"
amount = "金额"
paid_at = "发放时间"
"#;

fn row(n: usize, amount: &str) -> String {
    format!(
        "PP{n:06},11010519491231002X,张建国,ENTERPRISE_EMPLOYEE,2026-10,{amount},2026/10/15 10:00"
    )
}

struct Setup {
    topics: Topics,
    dir: tempfile::TempDir,
    _router: std::process::Child,
}

impl Setup {
    async fn new() -> Setup {
        let bootstrap = Broker::shared().bootstrap();
        let topics = Topics::new(format!("{}.", unique("snap")));
        create_topic(&bootstrap, &topics.ingest("hrss"), 2)
            .await
            .unwrap();
        create_topic(&bootstrap, &topics.data(DS), 2).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mapping.toml"), MAPPING).unwrap();
        let router = spawn_router(&bootstrap, &topics, &[]);
        Setup {
            topics,
            dir,
            _router: router,
        }
    }

    fn dump(&self, name: &str, rows: &[String]) -> std::path::PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, format!("{HEADER}\n{}\n", rows.join("\n"))).unwrap();
        p
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(govbus_bin());
        c.arg("snapshot")
            .args(args)
            .args([
                "--bootstrap",
                &Broker::shared().bootstrap(),
                "--topic-prefix",
                self.topics.prefix(),
            ])
            .args([
                "--mapping",
                self.dir.path().join("mapping.toml").to_str().unwrap(),
            ])
            .args([
                "--state-dir",
                self.dir.path().join("state").to_str().unwrap(),
            ])
            .env("GOVBUS_LOG", "warn");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Canonical records: (ce_id, key, op, version), in per-partition order.
    fn data(&self, at_least: usize) -> Vec<(String, String, String, u64)> {
        common::records_with_ids(&self.topics.data(DS), at_least)
            .iter()
            .map(|r| {
                (
                    r.header(h::CE_ID).to_owned(),
                    r.header(h::CE_SUBJECT).to_owned(),
                    r.header(h::CE_OP).to_owned(),
                    r.header(h::CE_SOURCEVERSION).parse().unwrap(),
                )
            })
            .collect()
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn nightly_dumps_become_a_change_stream() {
    let s = Setup::new().await;
    let v1 = s.dump(
        "v1.csv",
        &(1..=5).map(|n| row(n, "100.00")).collect::<Vec<_>>(),
    );
    let dry = s.run(&["publish", "--dry-run", v1.to_str().unwrap()]);
    assert!(
        text(&dry).contains("5 creates") && text(&dry).contains("dry run"),
        "{}",
        text(&dry)
    );
    let out = s.run(&["publish", v1.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let mut rows: Vec<String> = (1..=6)
        .filter(|n| *n != 3)
        .map(|n| row(n, "100.00"))
        .collect();
    rows[1] = row(2, "120.50");
    let v2 = s.dump("v2.csv", &rows);
    let out = s.run(&["publish", v2.to_str().unwrap()]);
    assert!(
        text(&out).contains("1 creates, 1 updates, 1 deletes, 3 unchanged"),
        "{}",
        text(&out)
    );
    // v3: a row fails validation; it is reported with its line, the run goes on.
    let mut rows3 = rows.clone();
    rows3[0] = row(1, "101.00");
    rows3[3] = rows3[3].replace("2026-10,", "2026-13,");
    rows3.remove(4); // PP000006 disappears
    let v3 = s.dump("v3.csv", &rows3);
    let out = s.run(&["publish", v3.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "completed with rejected rows: {}",
        text(&out)
    );
    assert!(
        text(&out).contains("v3.csv:5: rejected pattern_mismatch at `pay_month`"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out)
            .contains("0 creates, 1 updates, 1 deletes, 2 unchanged, 1 rejected, 0 unreadable"),
        "{}",
        text(&out)
    );

    let data = s.data(5 + 3 + 2);
    let by_key = |k: &str| -> Vec<(String, u64)> {
        data.iter()
            .filter(|d| d.1 == k)
            .map(|d| (d.2.clone(), d.3))
            .collect()
    };
    let ops = |k: &str| by_key(k).into_iter().map(|(o, _)| o).collect::<Vec<_>>();
    assert_eq!(ops("PP000001"), ["create", "update"]);
    assert_eq!(ops("PP000002"), ["create", "update"]);
    assert_eq!(ops("PP000003"), ["create", "delete"]);
    assert_eq!(ops("PP000004"), ["create"]);
    assert_eq!(
        ops("PP000005"),
        ["create"],
        "a rejected row (v3 line 5) is neither updated nor deleted"
    );
    assert_eq!(ops("PP000006"), ["create", "delete"]);
    for k in ["PP000001", "PP000002", "PP000003"] {
        let v: Vec<u64> = by_key(k).into_iter().map(|(_, v)| v).collect();
        assert!(
            v.windows(2).all(|w| w[0] < w[1]),
            "{k}: versions grow: {v:?}"
        );
    }
    assert_eq!(data.len(), 10);

    // Lose the state: rebuild it from the canonical topic; the next dump diffs the same.
    std::fs::remove_dir_all(s.dir.path().join("state")).unwrap();
    let out = s.run(&["rebuild"]);
    assert!(text(&out).contains("4 keys in the state"), "{}", text(&out));
    let out = s.run(&["publish", "--dry-run", v3.to_str().unwrap()]);
    assert!(
        text(&out).contains("0 creates, 0 updates, 0 deletes, 3 unchanged"),
        "{}",
        text(&out)
    );

    // Watch mode: a dump dropped in the directory is published and moved to done/.
    let inbox = s.dir.path().join("inbox");
    std::fs::create_dir(&inbox).unwrap();
    std::fs::copy(&v1, inbox.join("nightly.csv")).unwrap();
    std::fs::write(inbox.join("broken.csv"), "姓名\n张三\n").unwrap();
    let out = s.run(&["watch", "--once", inbox.to_str().unwrap()]);
    assert!(inbox.join("done/nightly.csv").exists(), "{}", text(&out));
    assert!(inbox.join("failed/broken.csv").exists());
    let why = std::fs::read_to_string(inbox.join("failed/broken.error.txt")).unwrap();
    assert!(
        why.contains("no column `发放流水号` for key field `payment_id`"),
        "{why}"
    );
}

/// A row too large for the bus to carry is rejected with its line, and the
/// rest of the dump is published. Before, the producer refused it locally
/// and the run failed there, for a row no rerun could publish.
#[tokio::test(flavor = "multi_thread")]
async fn a_row_too_large_for_the_bus_is_rejected_and_the_rest_published() {
    let s = Setup::new().await;
    let mut rows: Vec<String> = (1..=3).map(|n| row(n, "100.00")).collect();
    // Valid (the payment id has no length rule), 600,000 bytes in the key
    // and again in the value.
    rows.push(row(4, "100.00").replacen("PP000004", &format!("PP{}", "4".repeat(600_000)), 1));
    let dump = s.dump("big.csv", &rows);
    let out = s.run(&["publish", dump.to_str().unwrap()]);
    let said = text(&out);
    let said = &said[..said.len().min(4_000)];
    assert_eq!(
        out.status.code(),
        Some(2),
        "completed with rejected rows: {said}"
    );
    assert!(
        said.contains("big.csv:5: rejected message_too_large"),
        "{said}"
    );
    assert!(said.contains("3 creates"), "{said}");
    assert!(!said.contains("PP4444"), "no value in the report: {said}");
    assert_eq!(s.data(3).len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dump_killed_half_way_loses_nothing_and_repeats_identically() {
    let s = Setup::new().await;
    let n = 150_000;
    let big = s.dump(
        "big.csv",
        &(0..n).map(|i| row(i, "100.00")).collect::<Vec<_>>(),
    );
    let mut child = s
        .cmd(&["publish", big.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once changes are on their way.
    let start = Instant::now();
    loop {
        let pending = s.dir.path().join("state/pending.json").exists();
        if pending || start.elapsed() > Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(200));
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    let _ = child.wait();
    assert!(
        s.dir.path().join("state/pending.json").exists(),
        "killed mid-publish"
    );
    let out = s.run(&["publish", big.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{n} creates")),
        "{}",
        text(&out)
    );
    let data = s.data(n);
    let mut by_id: BTreeMap<&str, BTreeSet<(&str, &str, u64)>> = BTreeMap::new();
    for (id, key, op, v) in &data {
        by_id.entry(id).or_default().insert((key, op, *v));
    }
    assert_eq!(by_id.len(), n, "every change arrived, once per event id");
    assert!(
        by_id.values().all(|v| v.len() == 1),
        "a repeated event is identical: same key, op and version"
    );
    let keys: BTreeSet<&str> = data.iter().map(|d| d.1.as_str()).collect();
    assert_eq!(keys.len(), n);
    println!(
        "{} canonical records for {n} changes ({} repeated after the kill)",
        data.len(),
        data.len() - n
    );
}

// ------------------------------------------- messy and careless publishers

/// `govbus snapshot <args>` against a port where no broker listens.
fn offline(dir: &std::path::Path, args: &[&str]) -> Command {
    let mut c = Command::new(govbus_bin());
    c.arg("snapshot")
        .args(args)
        .args(["--bootstrap", "127.0.0.1:1"])
        .args(["--mapping", dir.join("mapping.toml").to_str().unwrap()])
        .args(["--state-dir", dir.join("state").to_str().unwrap()])
        .env("GOVBUS_LOG", "debug");
    c
}

/// Runs `c`, killing it after `limit`: (output, elapsed, whether it ended by
/// itself). Output goes to files, not pipes: a child blocked on a full pipe
/// would look hung.
fn run_bounded(mut c: Command, limit: Duration) -> (Output, Duration, bool) {
    let out_dir = tempfile::tempdir().unwrap();
    let (o, e) = (out_dir.path().join("out"), out_dir.path().join("err"));
    let started = Instant::now();
    let mut child = c
        .stdout(std::fs::File::create(&o).unwrap())
        .stderr(std::fs::File::create(&e).unwrap())
        .spawn()
        .unwrap();
    let mut ended = true;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            child.kill().unwrap();
            ended = false;
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = started.elapsed();
    let out = Output {
        status,
        stdout: std::fs::read(&o).unwrap(),
        stderr: std::fs::read(&e).unwrap(),
    };
    (out, took, ended)
}

#[test]
fn a_dry_run_connects_to_nothing_and_creates_no_state() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mapping.toml"), MAPPING).unwrap();
    let dump = dir.path().join("v1.csv");
    std::fs::write(
        &dump,
        format!(
            "{HEADER}\n{}\n",
            (1..=5)
                .map(|n| row(n, "100.00"))
                .collect::<Vec<_>>()
                .join("\n")
        ),
    )
    .unwrap();
    let (out, took, ended) = run_bounded(
        offline(
            dir.path(),
            &["publish", "--dry-run", dump.to_str().unwrap()],
        ),
        Duration::from_secs(60),
    );
    assert!(ended && out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("5 creates"), "{}", text(&out));
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(
        !dir.path().join("state").exists(),
        "a dry run created the state directory"
    );
    // librdkafka says when it tries to connect; a dry run never does.
    assert!(
        !text(&out).contains("127.0.0.1:1"),
        "a dry run tried to reach the broker: {}",
        text(&out)
    );
}

#[test]
fn publishing_to_an_unreachable_broker_fails_within_the_stated_bound() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mapping.toml"), MAPPING).unwrap();
    let dump = dir.path().join("v1.csv");
    std::fs::write(&dump, format!("{HEADER}\n{}\n", row(1, "100.00"))).unwrap();
    let mut c = offline(dir.path(), &["publish", dump.to_str().unwrap()]);
    c.env("GOVBUS_LOG", "warn");
    // The documented default bound is 30 s; allow for start-up.
    let (out, took, ended) = run_bounded(c, Duration::from_secs(60));
    assert!(ended, "still running after {took:?}: {}", text(&out));
    assert!(took < Duration::from_secs(45), "took {took:?}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "nothing published: {}",
        text(&out)
    );
    assert!(
        text(&out).contains("127.0.0.1:1") && text(&out).contains("30s"),
        "{}",
        text(&out)
    );
    assert!(!dir.path().join("state/pending.json").exists());
}

#[test]
fn a_utf8_dump_declared_gbk_is_refused_not_garbled() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mapping.toml"),
        MAPPING.replace("[columns]", "encoding = \"gbk\"\n[columns]"),
    )
    .unwrap();
    let dump = dir.path().join("utf8.csv");
    std::fs::write(&dump, format!("{HEADER}\n{}\n", row(1, "100.00"))).unwrap();
    let (out, _, ended) = run_bounded(
        offline(
            dir.path(),
            &["publish", "--dry-run", dump.to_str().unwrap()],
        ),
        Duration::from_secs(60),
    );
    assert!(ended, "{}", text(&out));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("encoding = \"utf-8\""),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("creates"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn header_only_and_mismatched_dumps_delete_nothing() {
    let s = Setup::new().await;
    let v1 = s.dump(
        "v1.csv",
        &(1..=5).map(|n| row(n, "100.00")).collect::<Vec<_>>(),
    );
    let out = s.run(&["publish", v1.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    // The right header and no rows: deletes withheld, exit 2.
    let empty = s.dir.path().join("empty.csv");
    std::fs::write(&empty, format!("{HEADER}\n")).unwrap();
    let out = s.run(&["publish", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("deletes withheld: 5 of 5"),
        "{}",
        text(&out)
    );
    // Another table's header: refused before any row, naming the columns.
    let other = s.dir.path().join("other.csv");
    std::fs::write(&other, "统一社会信用代码,企业名称\n").unwrap();
    let out = s.run(&["publish", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no column `发放流水号` for key field `payment_id`")
            && text(&out).contains("`金额`"),
        "{}",
        text(&out)
    );
    // The state is intact: v1 again changes nothing; no delete ever reached the topic.
    let out = s.run(&["publish", v1.to_str().unwrap()]);
    assert!(text(&out).contains("5 unchanged"), "{}", text(&out));
    let data = s.data(5);
    assert_eq!(data.len(), 5);
    assert!(data.iter().all(|d| d.2 == "create"), "{data:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_takes_a_dump_only_once_it_is_complete() {
    let s = Setup::new().await;
    let v1 = s.dump(
        "v1.csv",
        &(1..=100).map(|n| row(n, "100.00")).collect::<Vec<_>>(),
    );
    let out = s.run(&["publish", v1.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));

    let inbox = s.dir.path().join("inbox");
    std::fs::create_dir(&inbox).unwrap();
    let log = std::fs::File::create(s.dir.path().join("watch.out")).unwrap();
    let mut watch = s
        .cmd(&[
            "watch",
            "--interval",
            "100ms",
            "--settle",
            "3s",
            inbox.to_str().unwrap(),
        ])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    // Tonight every amount changes: 60 rows written, then a pause shorter
    // than the settle period, then the other 40.
    let rows: Vec<String> = (1..=100).map(|n| row(n, "120.00")).collect();
    let nightly = inbox.join("nightly.csv");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&nightly).unwrap();
        writeln!(f, "{HEADER}\n{}", rows[..60].join("\n")).unwrap();
        f.sync_all().unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            nightly.exists() && !inbox.join("done/nightly.csv").exists(),
            "taken before it settled"
        );
        writeln!(f, "{}", rows[60..].join("\n")).unwrap();
    }
    // A file being written under a temporary name is never taken.
    let part = inbox.join("second.csv.part");
    std::fs::write(&part, format!("{HEADER}\n{}\n", rows[..10].join("\n"))).unwrap();
    let started = Instant::now();
    while !inbox.join("done/nightly.csv").exists() {
        assert!(started.elapsed() < Duration::from_secs(90), "never taken");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(4));
    assert!(part.exists(), "a .part file was taken");
    watch.kill().unwrap();
    let _ = watch.wait();
    let said = std::fs::read_to_string(s.dir.path().join("watch.out")).unwrap();
    assert!(
        said.contains("100 rows: 0 creates, 100 updates, 0 deletes"),
        "{said}"
    );
    let data = s.data(200);
    let ops = |op: &str| data.iter().filter(|d| d.2 == op).count();
    assert_eq!((ops("create"), ops("update"), ops("delete")), (100, 100, 0));
}

/// Issue 16, traces: a table-dump run makes a span per published batch and
/// every record it publishes carries it, through the router, to the
/// canonical topic; the span holds no row value.
#[tokio::test(flavor = "multi_thread")]
async fn a_published_dump_is_traced_to_the_canonical_records() {
    let s = Setup::new().await;
    let otlp = common::Otlp::start(s.dir.path());
    let v1 = s.dump(
        "v1.csv",
        &(1..=3).map(|n| row(n, "100.00")).collect::<Vec<_>>(),
    );
    let mut cmd = s.cmd(&["publish", v1.to_str().unwrap()]);
    otlp.export_to(&mut cmd);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // The run exports what is queued before it exits.
    let spans: Vec<serde_json::Value> = otlp
        .spans()
        .into_iter()
        .filter(|s| s["name"] == "govbus.adapter publish")
        .collect();
    assert!(!spans.is_empty(), "the adapter's spans: {:?}", otlp.spans());
    let traces: std::collections::BTreeSet<String> = spans
        .iter()
        .map(|s| s["trace_id"].as_str().unwrap().to_owned())
        .collect();
    let records = common::records_with_ids(&s.topics.data(DS), 3);
    for r in &records {
        let tp = r.header(h::TRACEPARENT);
        assert!(
            tp.len() == 55 && traces.contains(&tp[3..35]),
            "a canonical record carries the adapter's trace: {tp:?}"
        );
    }
    let all = serde_json::to_string(&otlp.spans()).unwrap();
    assert!(
        !all.contains("11010519491231002X") && !all.contains("张建国") && !all.contains("PP000001"),
        "a row value in a span: {all}"
    );
}
