//! MySQL / MariaDB change capture end to end: a real MariaDB table with the
//! row-based binlog, `govbus capture mysql`, the router, the canonical topic.
//! Each test has its own database and its own MariaDB user (so that killing
//! its connections touches nothing else).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command};
use std::time::Duration;

use common::{govbus_bin, spawn_router};
use govbus_kafka::headers as h;
use govbus_kafka::topics::Topics;
use govbus_testkit::{create_topic, unique, Broker};

const DS: &str = "hrss.pension_payment";

/// One test at a time: the first restarts the server under the others.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether the server answers.
fn up() -> bool {
    Command::new("mariadb")
        .args(["-uroot", "-h127.0.0.1", "-P3306", "-e", "SELECT 1"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Stops and starts the machine's MariaDB (as its service commands do).
fn restart_server() {
    let _ = Command::new("mariadb-admin")
        .args(["-uroot", "shutdown"])
        .output();
    for _ in 0..150 {
        if !up() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = Command::new("start-stop-daemon")
        .args([
            "--start",
            "--oknodo",
            "--background",
            "--exec",
            "/usr/sbin/mariadbd",
        ])
        .status()
        .unwrap();
    assert!(started.success());
    for _ in 0..300 {
        if up() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("MariaDB did not come back");
}

/// Runs SQL as root through the `mariadb` client; panics with its message.
fn sql(db: &str, text: &str) -> String {
    let out = Command::new("mariadb")
        .args([
            "-uroot",
            "-h127.0.0.1",
            "-P3306",
            "--default-character-set=utf8mb4",
            "-N",
            "-B",
            db,
            "-e",
            text,
        ])
        .output()
        .expect("the mariadb client");
    assert!(
        out.status.success(),
        "{text}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Setup {
    topics: Topics,
    db: String,
    user: String,
    dir: tempfile::TempDir,
    _router: Child,
}

impl Setup {
    async fn new() -> Setup {
        let bootstrap = Broker::shared().bootstrap();
        let topics = Topics::new(format!("{}.", unique("mycdc")));
        create_topic(&bootstrap, &topics.ingest("hrss"), 2)
            .await
            .unwrap();
        create_topic(&bootstrap, &topics.data(DS), 2).await.unwrap();
        let db = format!("t_{}", unique("").replace('-', "_")).to_lowercase();
        let user = format!("u{}", &db[2..])
            .chars()
            .take(60)
            .collect::<String>();
        sql(
            "test",
            &format!(
                "CREATE DATABASE {db};
                 CREATE TABLE {db}.payments (
                   id varchar(40) PRIMARY KEY, id_no varchar(18) NOT NULL,
                   name varchar(200) CHARACTER SET gbk NULL,
                   kind ENUM('ENTERPRISE_EMPLOYEE','CIVIL_SERVANT','URBAN_RURAL_RESIDENT') NOT NULL,
                   month char(7) NOT NULL, amount decimal(20,6) NOT NULL,
                   paid_at datetime(6) NOT NULL) DEFAULT CHARSET utf8mb4;
                 CREATE TABLE {db}.unrelated (filler text);
                 CREATE USER '{user}'@'%' IDENTIFIED BY 'pw';
                 GRANT SELECT ON {db}.* TO '{user}'@'%';
                 GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO '{user}'@'%';"
            ),
        );
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            r#"conninfo = "mysql://{user}:pw@127.0.0.1:3306/{db}"
name = "{db}"
state_dir = "{}"
timezone = "+08:00"

[[table]]
table = "{db}.payments"
dataset = "{DS}"
[table.columns]
payment_id = "id"
recipient_id_number = "id_no"
recipient_name = "name"
pension_type = "kind"
pay_month = "month"
amount = "amount"
paid_at = "paid_at"
"#,
            dir.path().join("state").display(),
        );
        std::fs::write(dir.path().join("capture.toml"), config).unwrap();
        let router = spawn_router(&bootstrap, &topics, &[]);
        Setup {
            topics,
            db,
            user,
            dir,
            _router: router,
        }
    }

    fn capture_on(&self, port: u16) -> Child {
        common::spawn_capture("mysql", self.dir.path(), &self.topics, port)
    }

    fn capture(&self) -> Child {
        self.capture_on(common::free_port())
    }

    /// (key, op, version, id) of the canonical records, once `n` distinct ids are there.
    fn data(&self, n: usize) -> Vec<(String, String, u64, String)> {
        common::changes(&self.topics.data(DS), n)
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            common::print_logs(self.dir.path());
        }
        let _ = Command::new("mariadb")
            .args(["-uroot", "-h127.0.0.1", "-P3306", "-e"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {}; DROP USER IF EXISTS '{}'@'%';",
                self.db, self.user
            ))
            .output();
    }
}

fn insert(db: &str, i: usize) -> String {
    format!(
        "INSERT INTO {db}.payments VALUES ('PP{i:06}', '11010519491231002X', '张建国', 'ENTERPRISE_EMPLOYEE', '2026-10', {}.50, '2026-10-15 10:00:00')",
        100 + i
    )
}

fn ops(data: &[(String, String, u64, String)], key: &str) -> Vec<String> {
    data.iter()
        .filter(|d| d.0 == key)
        .map(|d| d.1.clone())
        .collect()
}

/// Snapshot, then inserts, updates, deletes and a key change in order with
/// growing versions; kill -9 twice during 10,000 changes, the server
/// dropping the capture's connection once and the server restarting once:
/// nothing lost, every repeat identical.
#[tokio::test(flavor = "multi_thread")]
async fn mysql_capture_streams_changes_and_resumes_after_kill() {
    let _serial = SERIAL.lock().await;
    let _machine = common::mariadb_exclusive();
    let s = Setup::new().await;
    let db = s.db.clone();
    for i in 0..3 {
        sql(&db, &insert(&db, i));
    }
    let port = common::free_port();
    let mut cap = s.capture_on(port);
    let data = s.data(3);
    assert_eq!(
        data.iter().filter(|d| d.1 == "snapshot").count(),
        3,
        "{data:?}"
    );
    sql(&db, &insert(&db, 3));
    sql(
        &db,
        &format!("UPDATE {db}.payments SET amount = 999.00 WHERE id = 'PP000001'"),
    );
    sql(
        &db,
        &format!("DELETE FROM {db}.payments WHERE id = 'PP000002'"),
    );
    sql(
        &db,
        &format!("UPDATE {db}.payments SET id = 'PP000099' WHERE id = 'PP000000'"),
    );
    let data = s.data(3 + 1 + 1 + 1 + 2);
    assert_eq!(ops(&data, "PP000001"), ["snapshot", "update"]);
    assert_eq!(ops(&data, "PP000002"), ["snapshot", "delete"]);
    assert_eq!(ops(&data, "PP000003"), ["create"]);
    assert_eq!(
        ops(&data, "PP000000"),
        ["snapshot", "delete"],
        "a changed key deletes the old key"
    );
    assert_eq!(ops(&data, "PP000099"), ["update"]);
    let v: Vec<u64> = data
        .iter()
        .filter(|d| d.0 == "PP000001")
        .map(|d| d.2)
        .collect();
    assert!(
        v[0] < v[1],
        "binlog versions grow past the snapshot's: {v:?}"
    );
    common::wait_listening(port);
    let metrics = common::http_get(port, "/metrics");
    assert!(
        metrics.contains(&format!(
            "govbus_capture_changes_total{{op=\"snapshot\",table=\"{db}.payments\"}} 3"
        )),
        "{metrics}"
    );

    // 10,000 changes in 20 bursts of 500 one-row transactions.
    const N: usize = 10_000;
    let writer = {
        let db = db.clone();
        std::thread::spawn(move || {
            for chunk in 0..20 {
                let script: String = (0..500)
                    .map(|j| format!("{};", insert(&db, 100 + chunk * 500 + j)))
                    .collect();
                // A burst the restarting server refused is sent again
                // (INSERT IGNORE: rows it took before are not doubled).
                let script = script.replace("INSERT INTO", "INSERT IGNORE INTO");
                for attempt in 0.. {
                    let ok = Command::new("mariadb")
                        .args([
                            "-uroot",
                            "-h127.0.0.1",
                            "-P3306",
                            "--default-character-set=utf8mb4",
                            &db,
                            "-e",
                            &script,
                        ])
                        .output()
                        .is_ok_and(|o| o.status.success());
                    if ok {
                        break;
                    }
                    assert!(attempt < 300, "the server did not take burst {chunk}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                std::thread::sleep(Duration::from_millis(150));
            }
        })
    };
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        cap.kill().unwrap();
        let _ = cap.wait();
        cap = s.capture();
    }
    tokio::time::sleep(Duration::from_millis(2000)).await;
    // The server drops the capture's binlog connection (what a restart does to it).
    let killed = sql(
        "test",
        &format!(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = '{}'",
            s.user
        ),
    );
    for id in killed.split_whitespace() {
        let _ = Command::new("mariadb")
            .args(["-uroot", "-h127.0.0.1", "-e", &format!("KILL {id}")])
            .output();
    }
    assert!(
        !killed.trim().is_empty(),
        "the capture's connection was found"
    );
    // The server restarts under the capture (and under the writer).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    restart_server();
    writer.join().unwrap();
    let data = s.data(8 + N);
    let keys: BTreeSet<&str> = data
        .iter()
        .filter(|d| d.1 == "create")
        .map(|d| d.0.as_str())
        .collect();
    let ids: BTreeSet<&str> = data.iter().map(|d| d.3.as_str()).collect();
    let lost: Vec<String> = (100..100 + N)
        .map(|i| format!("PP{i:06}"))
        .filter(|k| !keys.contains(k.as_str()))
        .collect();
    let mut seen: BTreeMap<(&str, &str), BTreeSet<&str>> = BTreeMap::new();
    for d in &data {
        seen.entry((&d.0, &d.1)).or_default().insert(&d.3);
    }
    let reissued: Vec<_> = seen.iter().filter(|(_, v)| v.len() > 1).take(5).collect();
    assert!(
        lost.is_empty(),
        "lost {lost:?}; {} records, {} distinct ids; changes published under more than one id: {reissued:?}",
        data.len(),
        ids.len()
    );
    let mut by_id: BTreeMap<&str, BTreeSet<(&str, u64)>> = BTreeMap::new();
    for d in &data {
        by_id.entry(&d.3).or_default().insert((&d.0, d.2));
    }
    assert!(
        by_id.values().all(|v| v.len() == 1),
        "a repeated change is identical (same key, same version)"
    );
    cap.kill().unwrap();
    let _ = cap.wait();
}

/// Every column value arrives exactly or the row is refused with a reason:
/// a DECIMAL with digits the field cannot hold, DATETIME with microseconds
/// (the field is timestamp-millis), a zero date, GBK and utf8mb4 text,
/// NULL in a required column, very long text.
#[tokio::test(flavor = "multi_thread")]
async fn mysql_values_arrive_exactly_or_are_refused_with_a_reason() {
    let _serial = SERIAL.lock().await;
    let _machine = common::mariadb_exclusive();
    let s = Setup::new().await;
    let db = s.db.clone();
    sql(&db, &insert(&db, 0));
    let port = common::free_port();
    let mut cap = s.capture_on(port);
    let _ = s.data(1);
    let row = |id: &str, name: &str, amount: &str, paid: &str| {
        format!(
            "INSERT INTO {db}.payments VALUES ('{id}', '11010519491231002X', {name}, 'CIVIL_SERVANT', '2026-10', {amount}, '{paid}');"
        )
    };
    let long = format!("'{}'", "张".repeat(100));
    let script = [
        row("GBK", "'张建国'", "99999.99", "2026-10-15 10:00:00.123"),
        row("MICROS", "'张建国'", "100.5", "2026-10-15 10:00:00.123456"),
        row("NULLNAME", "NULL", "100.5", "2026-10-15 10:00:00"),
        row("LONGNAME", &long, "100.5", "2026-10-15 10:00:00"),
        row("SCALE", "'张建国'", "100.123456", "2026-10-15 10:00:00"),
        format!("SET SESSION sql_mode = ''; INSERT INTO {db}.payments VALUES ('ZERODATE', '11010519491231002X', '张建国', 'CIVIL_SERVANT', '2026-10', 1, '0000-00-00 00:00:00');"),
    ]
    .concat();
    sql(&db, &script);
    // A column changes its character set under the capture: the rows after
    // it are read in the new one.
    sql(
        &db,
        &format!(
            "ALTER TABLE {db}.payments MODIFY name varchar(200) CHARACTER SET utf8mb4 NULL; {}",
            row("EMOJI", "'😀张'", "0.01", "2026-10-15 10:00:00")
        ),
    );
    let records = common::records_with_ids(&s.topics.data(DS), 3);
    let catalog = std::sync::Arc::new(
        govbus_catalog::Catalog::load(&common::repo().join("schemas")).unwrap(),
    );
    let mut got = BTreeMap::new();
    for r in &records {
        let json = govbus_sink::decode::to_json(&catalog, r.value.as_deref().unwrap()).unwrap();
        got.insert(r.header(h::CE_SUBJECT).to_owned(), json);
    }
    assert_eq!(
        got.keys().map(String::as_str).collect::<Vec<_>>(),
        ["EMOJI", "GBK", "PP000000"],
        "only the rows that fit arrive: {got:?}"
    );
    assert_eq!(
        got["GBK"]["recipient_name"], "张建国",
        "GBK text read as GBK"
    );
    assert_eq!(
        got["GBK"]["amount"].to_string().trim_matches('"'),
        "99999.9900"
    );
    assert_eq!(
        got["GBK"]["paid_at"], "2026-10-15T02:00:00.123Z",
        "local time at +08:00"
    );
    assert_eq!(got["EMOJI"]["recipient_name"], "😀张");
    common::wait_listening(port);
    let metrics = common::http_get(port, "/metrics");
    for reason in [
        "temporal_precision",
        "required_missing",
        "length_out_of_range",
        "decimal_scale",
        "json_invalid_temporal",
    ] {
        assert!(
            metrics.contains(&format!(
                "govbus_capture_rejected_total{{dataset=\"hrss.pension_payment\",department=\"hrss\",reason=\"{reason}\",table=\"{db}.payments\"}} 1"
            )),
            "{reason}: {metrics}"
        );
    }
    // The department's scorecard counts what its database capture refused.
    let out = Command::new(govbus_bin())
        .args(["report", "--bootstrap", &Broker::shared().bootstrap()])
        .args(["--topic-prefix", s.topics.prefix()])
        .args(["--metrics", &format!("http://127.0.0.1:{port}/metrics")])
        .arg("--out")
        .arg(s.dir.path().join("report"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.dir.path().join("report/report.json")).unwrap())
            .unwrap();
    let hrss = report["departments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == "hrss")
        .unwrap();
    assert_eq!(hrss["rejections"]["temporal_precision"], 1, "{hrss}");
    cap.kill().unwrap();
    let _ = cap.wait();
}

/// A user without REPLICATION SLAVE is refused with the GRANT that fixes
/// it, and the capture stops instead of retrying.
#[tokio::test(flavor = "multi_thread")]
async fn a_mysql_user_without_replication_is_refused_with_the_grant() {
    let _serial = SERIAL.lock().await;
    let _machine = common::mariadb_exclusive();
    let s = Setup::new().await;
    sql(
        "test",
        &format!("REVOKE REPLICATION SLAVE ON *.* FROM '{}'@'%'", s.user),
    );
    let (status, text) = common::capture_refusal("mysql", s.dir.path(), &s.topics);
    assert!(!status.success(), "{text}");
    assert!(text.contains("REPLICATION SLAVE"), "{text}");
}
