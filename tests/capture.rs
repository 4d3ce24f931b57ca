//! Database change capture end to end: a real PostgreSQL table, logical
//! decoding (pgoutput) or polling, `govbus capture postgres`, the router,
//! the canonical topic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{govbus_bin, spawn_router};
use govbus_kafka::headers as h;
use govbus_kafka::topics::Topics;
use govbus_testkit::{create_topic, unique, Broker, PgSchema};

const DS: &str = "hrss.pension_payment";

struct Setup {
    topics: Topics,
    pg: PgSchema,
    name: String,
    dir: tempfile::TempDir,
    _router: Child,
}

impl Setup {
    async fn new(mode: &str) -> Setup {
        let bootstrap = Broker::shared().bootstrap();
        let topics = Topics::new(format!("{}.", unique("cdc")));
        create_topic(&bootstrap, &topics.ingest("hrss"), 2)
            .await
            .unwrap();
        create_topic(&bootstrap, &topics.data(DS), 2).await.unwrap();
        let pg = PgSchema::create().await.unwrap();
        let c = pg.client().await.unwrap();
        c.batch_execute(
            "CREATE SEQUENCE row_version_seq;
             CREATE TABLE payments (
               id text PRIMARY KEY, id_no text NOT NULL, name text NOT NULL,
               kind text NOT NULL, month text NOT NULL, amount numeric(14,2) NOT NULL,
               paid_at timestamptz NOT NULL, row_version bigint NOT NULL DEFAULT nextval('row_version_seq'));
             CREATE FUNCTION bump() RETURNS trigger AS $$ BEGIN NEW.row_version := nextval('row_version_seq'); RETURN NEW; END $$ LANGUAGE plpgsql;
             CREATE TRIGGER bump BEFORE UPDATE ON payments FOR EACH ROW EXECUTE FUNCTION bump();
             CREATE TABLE unrelated (filler text);",
        )
        .await
        .unwrap();
        let name = format!("t_{}", unique("").replace('-', "_")).to_lowercase();
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            r#"conninfo = "{} application_name={name}"
mode = "{mode}"
name = "{name}"
state_dir = "{}"
heartbeat = "1s"
poll_interval = "100ms"
delete_check = "1s"

[[table]]
table = "{}.payments"
dataset = "{DS}"
version_column = "row_version"
[table.columns]
payment_id = "id"
recipient_id_number = "id_no"
recipient_name = "name"
pension_type = "kind"
pay_month = "month"
amount = "amount"
paid_at = "paid_at"
"#,
            PgSchema::conninfo_default(),
            dir.path().join("state").display(),
            pg.name()
        );
        std::fs::write(dir.path().join("capture.toml"), config).unwrap();
        let router = spawn_router(&bootstrap, &topics, &[]);
        Setup {
            topics,
            pg,
            name,
            dir,
            _router: router,
        }
    }

    fn capture(&self) -> Child {
        self.capture_on(common::free_port())
    }

    fn capture_on(&self, port: u16) -> Child {
        common::spawn_capture("postgres", self.dir.path(), &self.topics, port)
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
        // A forgotten slot would hold WAL forever.
        let name = self.name.clone();
        let conninfo = PgSchema::conninfo_default();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let (c, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await.unwrap();
                tokio::spawn(conn);
                for _ in 0..50 {
                    if c.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", &[&name]).await.is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let _ = c.batch_execute(&format!("DROP PUBLICATION IF EXISTS \"{name}\"")).await;
            });
        })
        .join();
    }
}

fn insert(i: usize) -> String {
    format!(
        "INSERT INTO payments (id, id_no, name, kind, month, amount, paid_at) VALUES ('PP{i:06}', '11010519491231002X', '张建国', 'ENTERPRISE_EMPLOYEE', '2026-10', {}.50, '2026-10-15 10:00:00+08')",
        100 + i
    )
}

/// `16/B374D848` as a number (PostgreSQL's text form of an LSN).
fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

fn ops(data: &[(String, String, u64, String)], key: &str) -> Vec<String> {
    data.iter()
        .filter(|d| d.0 == key)
        .map(|d| d.1.clone())
        .collect()
}

/// The streaming replication reader (the default).
#[tokio::test(flavor = "multi_thread")]
async fn streaming_capture_streams_changes_resumes_after_kill_and_bounds_wal() {
    capture_streams_changes_resumes_after_kill_and_bounds_wal("logical").await;
}

/// The SQL-interface reader (for databases behind a connection pooler).
#[tokio::test(flavor = "multi_thread")]
async fn sql_interface_capture_streams_changes_resumes_after_kill_and_bounds_wal() {
    capture_streams_changes_resumes_after_kill_and_bounds_wal("logical-sql").await;
}

async fn capture_streams_changes_resumes_after_kill_and_bounds_wal(mode: &str) {
    let s = Setup::new(mode).await;
    let db = s.pg.client().await.unwrap();
    for i in 0..3 {
        db.batch_execute(&insert(i)).await.unwrap();
    }
    let port = common::free_port();
    let mut cap = s.capture_on(port);
    // Snapshot of the 3 rows, then live changes.
    let data = s.data(3);
    assert_eq!(
        data.iter().filter(|d| d.1 == "snapshot").count(),
        3,
        "{data:?}"
    );
    db.batch_execute(&insert(3)).await.unwrap();
    db.batch_execute("UPDATE payments SET amount = 999.00 WHERE id = 'PP000001'")
        .await
        .unwrap();
    db.batch_execute("DELETE FROM payments WHERE id = 'PP000002'")
        .await
        .unwrap();
    db.batch_execute("UPDATE payments SET id = 'PP000099' WHERE id = 'PP000000'")
        .await
        .unwrap();
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
    assert!(v[0] < v[1], "LSN versions grow: {v:?}");
    // The operator sees it in /metrics.
    common::wait_listening(port);
    let metrics = common::http_get(port, "/metrics");
    let snap = format!(
        "govbus_capture_changes_total{{op=\"snapshot\",table=\"{}.payments\"}} 3",
        s.pg.name()
    );
    assert!(metrics.contains(&snap), "{metrics}");
    assert!(metrics.contains("govbus_capture_position_lsn"), "{metrics}");

    // Kill -9 twice while 10,000 rows keep coming, and the database drops
    // the capture's connections once (what a PostgreSQL restart does to it;
    // the shared server is not restarted here — a real restart is
    // `a_postgresql_restart_under_the_capture_loses_nothing`): nothing lost.
    const N: usize = 10_000;
    let writer = {
        let c = s.pg.client().await.unwrap();
        tokio::spawn(async move {
            for i in 100..100 + N {
                c.batch_execute(&insert(i)).await.unwrap();
                if i % 500 == 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        })
    };
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        cap.kill().unwrap();
        let _ = cap.wait();
        cap = s.capture();
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let dropped = db
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND (pid IN (SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1) OR application_name = $1)",
            &[&s.name],
        )
        .await
        .unwrap();
    assert!(!dropped.is_empty(), "the capture's connections were found");
    writer.await.unwrap();
    let data = s.data(8 + N);
    let keys: BTreeSet<&str> = data
        .iter()
        .filter(|d| d.1 == "create")
        .map(|d| d.0.as_str())
        .collect();
    for i in 100..100 + N {
        assert!(keys.contains(format!("PP{i:06}").as_str()), "PP{i:06} lost");
    }
    let mut by_id: BTreeMap<&str, BTreeSet<(&str, u64)>> = BTreeMap::new();
    for d in &data {
        by_id.entry(&d.3).or_default().insert((&d.0, d.2));
    }
    assert!(
        by_id.values().all(|v| v.len() == 1),
        "a repeated change is identical (same key, same version)"
    );

    // An idle captured table while the database writes elsewhere: the heartbeat
    // moves the slot, so retained WAL stays small.
    db.batch_execute(
        "INSERT INTO unrelated SELECT repeat('x', 1000) FROM generate_series(1, 20000)",
    )
    .await
    .unwrap();
    let retained = || async {
        let row = db
            .query_one("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1", &[&s.name])
            .await
            .unwrap();
        row.get::<_, i64>(0)
    };
    let before = retained().await;
    assert!(
        before > 10_000_000,
        "the unrelated writes produced WAL: {before}"
    );
    let start = Instant::now();
    let mut after = before;
    while start.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        after = retained().await;
        if after < 1_000_000 {
            break;
        }
    }
    println!("WAL retained by the slot: {before} bytes before the heartbeat, {after} after");
    assert!(after < 1_000_000, "retained {after} bytes");
    cap.kill().unwrap();
    let _ = cap.wait();
}

/// `govbus_capture_position_lsn` in logical mode is the slot's confirmed
/// position: set at start and moved with every advance (issue #19: it stayed 0).
#[tokio::test(flavor = "multi_thread")]
async fn logical_capture_reports_the_slot_position_in_metrics() {
    let s = Setup::new("logical").await;
    let db = s.pg.client().await.unwrap();
    db.batch_execute(&insert(0)).await.unwrap();
    let port = common::free_port();
    let mut cap = s.capture_on(port);
    let _ = s.data(1);
    db.batch_execute(&insert(1)).await.unwrap();
    let data = s.data(2);
    let created = data.iter().find(|d| d.1 == "create").unwrap().2;
    common::wait_listening(port);
    let position = |port: u16| {
        let text = common::http_get(port, "/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix("govbus_capture_position_lsn{"))
            .filter(|rest| rest.contains(&format!("capture=\"{}\"", s.name)))
            .and_then(|rest| rest.rsplit_once(' '))
            .and_then(|(_, v)| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no govbus_capture_position_lsn in {text}")) as u64
    };
    let confirmed = || async {
        let row = db
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&s.name],
            )
            .await
            .unwrap();
        lsn(&row.get::<_, String>(0))
    };
    // The slot moves past the change once it is acknowledged; the gauge
    // follows (a heartbeat may move both again, so compare until they agree).
    let start = Instant::now();
    let (mut seen, mut slot) = (0, 0);
    while start.elapsed() < Duration::from_secs(15) {
        slot = confirmed().await;
        seen = position(port);
        if seen == slot && seen > created {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen > 0, "govbus_capture_position_lsn stayed 0");
    assert!(
        seen > created,
        "position {seen} is past the published change at {created}"
    );
    assert_eq!(seen, slot, "the gauge is the slot's confirmed position");
    cap.kill().unwrap();
    let _ = cap.wait();
    // A restart reports the slot's position at once, before any change.
    let port = common::free_port();
    let mut cap = s.capture_on(port);
    common::wait_listening(port);
    let start = Instant::now();
    while position(port) == 0 && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        position(port) >= slot,
        "restart reports the confirmed position"
    );
    cap.kill().unwrap();
    let _ = cap.wait();
}

/// The slot and the publication outlive the capture (a restart resumes);
/// `--drop` removes both, and again finds nothing to remove.
#[tokio::test(flavor = "multi_thread")]
async fn drop_removes_the_slot_and_the_publication_a_stopped_capture_keeps() {
    let s = Setup::new("logical").await;
    let db = s.pg.client().await.unwrap();
    db.batch_execute(&insert(0)).await.unwrap();
    let mut cap = s.capture();
    let _ = s.data(1);
    cap.kill().unwrap();
    let _ = cap.wait();
    let count = |sql: &'static str| {
        let db = &db;
        let name = s.name.clone();
        async move { db.query_one(sql, &[&name]).await.unwrap().get::<_, i64>(0) }
    };
    let slots = "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1";
    let publications = "SELECT count(*) FROM pg_publication WHERE pubname = $1";
    assert_eq!(
        count(slots).await,
        1,
        "the slot stays after the capture stops"
    );
    assert_eq!(count(publications).await, 1, "so does the publication");
    let drop = || {
        Command::new(govbus_bin())
            .args(["capture", "postgres", "--drop", "--config"])
            .arg(s.dir.path().join("capture.toml"))
            .env("GOVBUS_LOG", "warn")
            .output()
            .unwrap()
    };
    let out = drop();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("replication slot {}: dropped", s.name)),
        "{text}"
    );
    assert!(
        text.contains(&format!("publication {}: dropped", s.name)),
        "{text}"
    );
    assert_eq!(count(slots).await, 0);
    assert_eq!(count(publications).await, 0);
    let out = drop();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("not found"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_polling_fallback_gives_the_same_events() {
    let s = Setup::new("poll").await;
    let db = s.pg.client().await.unwrap();
    for i in 0..3 {
        db.batch_execute(&insert(i)).await.unwrap();
    }
    let mut cap = s.capture();
    let _ = s.data(3);
    db.batch_execute("UPDATE payments SET amount = 999.00 WHERE id = 'PP000001'")
        .await
        .unwrap();
    db.batch_execute("DELETE FROM payments WHERE id = 'PP000002'")
        .await
        .unwrap();
    db.batch_execute(&insert(3)).await.unwrap();
    let data = s.data(3 + 3);
    assert_eq!(ops(&data, "PP000001"), ["create", "update"]);
    assert_eq!(ops(&data, "PP000002"), ["create", "delete"]);
    assert_eq!(ops(&data, "PP000003"), ["create"]);
    let v: Vec<u64> = data
        .iter()
        .filter(|d| d.0 == "PP000002")
        .map(|d| d.2)
        .collect();
    assert!(v[0] < v[1], "{v:?}");
    // Restart: resumes from its position, republishes nothing.
    cap.kill().unwrap();
    let _ = cap.wait();
    let mut cap = s.capture();
    db.batch_execute(&insert(4)).await.unwrap();
    let data = s.data(7);
    assert_eq!(data.len(), 7, "{data:?}");
    cap.kill().unwrap();
    let _ = cap.wait();
}

/// Rows that share a version (an `updated_at` of the same instant, a bulk
/// UPDATE stamping one value) are distinct changes with distinct event ids:
/// a subscriber that drops repeated ids loses none of them.
#[tokio::test(flavor = "multi_thread")]
async fn polled_rows_sharing_a_version_get_distinct_ids() {
    let s = Setup::new("poll").await;
    let db = s.pg.client().await.unwrap();
    db.batch_execute("ALTER TABLE payments DISABLE TRIGGER bump")
        .await
        .unwrap();
    for i in 0..4 {
        db.batch_execute(
            &insert(i)
                .replace("paid_at) VALUES (", "paid_at, row_version) VALUES (")
                .replace("+08')", "+08', 42)"),
        )
        .await
        .unwrap();
    }
    let mut cap = s.capture();
    let data = s.data(4);
    let ids: std::collections::HashSet<&str> = data.iter().map(|d| d.3.as_str()).collect();
    let keys: std::collections::HashSet<&str> = data.iter().map(|d| d.0.as_str()).collect();
    assert_eq!(keys.len(), 4, "{data:?}");
    assert_eq!(ids.len(), 4, "one id per change: {data:?}");
    cap.kill().unwrap();
    let _ = cap.wait();
}

/// A role without the REPLICATION attribute is refused at once, with the
/// statement that fixes it, and the capture stops instead of retrying.
#[tokio::test(flavor = "multi_thread")]
async fn a_role_without_replication_is_refused_with_the_fix() {
    let s = Setup::new("logical").await;
    let db = s.pg.client().await.unwrap();
    let role = format!("{}_r", s.name);
    db.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN; GRANT USAGE ON SCHEMA {0} TO {role}; GRANT SELECT ON {0}.payments TO {role}; GRANT CREATE ON DATABASE test TO {role}; CREATE PUBLICATION {1} FOR TABLE {0}.payments",
        s.pg.name(),
        s.name
    ))
    .await
    .unwrap();
    let path = s.dir.path().join("capture.toml");
    let config = std::fs::read_to_string(&path)
        .unwrap()
        .replace("user=postgres", &format!("user={role}"));
    std::fs::write(&path, config).unwrap();
    // Not the table's owner, so it cannot make the table REPLICA IDENTITY
    // FULL itself: refused, with the statement to run.
    let (status, text) = common::capture_refusal("postgres", s.dir.path(), &s.topics);
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("REPLICA IDENTITY FULL;") && text.contains("owner"),
        "{text}"
    );
    db.batch_execute(&format!(
        "ALTER TABLE {}.payments REPLICA IDENTITY FULL",
        s.pg.name()
    ))
    .await
    .unwrap();
    let (status, text) = common::capture_refusal("postgres", s.dir.path(), &s.topics);
    let _ = db
        .batch_execute(&format!(
            "DROP PUBLICATION IF EXISTS {}; REVOKE ALL ON DATABASE test FROM {role}; REVOKE ALL ON SCHEMA {1} FROM {role}; REVOKE ALL ON {1}.payments FROM {role}; DROP ROLE {role}",
            s.name,
            s.pg.name()
        ))
        .await;
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("42501") && text.contains("ALTER ROLE <role> REPLICATION"),
        "{text}"
    );
}

/// Every column value reaches the canonical topic exactly or the row is
/// refused with a reason: a decimal at the schema's full precision, a
/// timestamp with milliseconds (kept) and one with microseconds (the field
/// is timestamp-millis: refused with `temporal_precision`, not cut), NULL in
/// a required column (refused), a very long name (refused by its rule).
#[tokio::test(flavor = "multi_thread")]
async fn captured_values_arrive_exactly_or_are_refused_with_a_reason() {
    let s = Setup::new("logical").await;
    let db = s.pg.client().await.unwrap();
    db.batch_execute(
        "ALTER TABLE payments DROP CONSTRAINT payments_pkey, ALTER COLUMN amount TYPE numeric, ALTER COLUMN name DROP NOT NULL",
    )
    .await
    .unwrap();
    let row = |id: &str, name: &str, amount: &str, paid: &str| {
        format!(
            "INSERT INTO payments (id, id_no, name, kind, month, amount, paid_at) VALUES ('{id}', '11010519491231002X', {name}, 'ENTERPRISE_EMPLOYEE', '2026-10', {amount}, '{paid}')"
        )
    };
    // One row in the initial snapshot, the rest streamed.
    db.batch_execute(&row(
        "SNAP",
        "'张建国'",
        "100.5",
        "2026-10-15 10:00:00.5+08",
    ))
    .await
    .unwrap();
    let port = common::free_port();
    let mut cap = s.capture_on(port);
    let _ = common::records_with_ids(&s.topics.data(DS), 1);
    let long = format!("'{}'", "张".repeat(20_000));
    for sql in [
        row(
            "EXACT1",
            "'张建国'",
            "99999.99",
            "2026-10-15 10:00:00.123+08",
        ),
        row(
            "MICROS",
            "'张建国'",
            "100.5",
            "2026-10-15 10:00:00.123456+08",
        ),
        row("NULLNAME", "NULL", "100.5", "2026-10-15 10:00:00+08"),
        row("LONGNAME", &long, "100.5", "2026-10-15 10:00:00+08"),
        row("SCALE5", "'张建国'", "100.12345", "2026-10-15 10:00:00+08"),
        // Larger than a record may be: refused by validation.
        row(
            &"Y".repeat(1_100_000),
            "'张建国'",
            "100.5",
            "2026-10-15 10:00:00+08",
        ),
        // Within validation's 1 MiB but over what the bus carries
        // (`limits::MAX_PUBLISHED_BYTES`, below the producer's 1,000,000):
        // refused with a reason instead of holding the slot forever.
        row(
            &"Z".repeat(1_020_000),
            "'张建国'",
            "100.5",
            "2026-10-15 10:00:00+08",
        ),
        row("EXACT2", "'张建国'", "0.01", "2026-10-15 10:00:00.1+08"),
    ] {
        db.batch_execute(&sql).await.unwrap();
    }
    let records = common::records_with_ids(&s.topics.data(DS), 3);
    let keys: BTreeSet<String> = records
        .iter()
        .map(|r| r.header(h::CE_SUBJECT).to_owned())
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["EXACT1".to_owned(), "EXACT2".to_owned(), "SNAP".to_owned()]),
        "only the rows that fit arrive"
    );
    // The values, decoded: every digit kept.
    let catalog = govbus_catalog::Catalog::load(&common::repo().join("schemas")).unwrap();
    let catalog = std::sync::Arc::new(catalog);
    for r in &records {
        let json = govbus_sink::decode::to_json(&catalog, r.value.as_deref().unwrap()).unwrap();
        let (amount, paid) = match r.header(h::CE_SUBJECT) {
            "EXACT1" => ("99999.9900", "2026-10-15T02:00:00.123Z"),
            "EXACT2" => ("0.0100", "2026-10-15T02:00:00.100Z"),
            _ => ("100.5000", "2026-10-15T02:00:00.500Z"),
        };
        assert_eq!(
            json["amount"].to_string().trim_matches('"'),
            amount,
            "{json:?}"
        );
        assert_eq!(json["paid_at"].as_str().unwrap(), paid, "{json:?}");
    }
    common::wait_listening(port);
    let metrics = common::http_get(port, "/metrics");
    let table = format!("{}.payments", s.pg.name());
    for (reason, n) in [
        ("temporal_precision", 1),
        ("required_missing", 1),
        ("length_out_of_range", 1),
        ("decimal_scale", 1),
        ("message_too_large", 2),
    ] {
        assert!(
            metrics.contains(&format!(
                "govbus_capture_rejected_total{{dataset=\"hrss.pension_payment\",department=\"hrss\",reason=\"{reason}\",table=\"{table}\"}} {n}"
            )),
            "{reason}: {metrics}"
        );
    }
    cap.kill().unwrap();
    let _ = cap.wait();
}

/// The database server itself restarts (fast shutdown, as an operator's
/// restart does) while a department writes: the capture reconnects and
/// resumes from its slot, nothing committed is lost, and a change sent
/// twice is the same event both times.
#[tokio::test(flavor = "multi_thread")]
async fn a_postgresql_restart_under_the_capture_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster =
        common::own_postgres::OwnPostgres::start(dir.path(), &["wal_level=logical", "fsync=off"]);
    let bootstrap = Broker::shared().bootstrap();
    let topics = Topics::new(format!("{}.", unique("cdcrs")));
    create_topic(&bootstrap, &topics.ingest("hrss"), 2)
        .await
        .unwrap();
    create_topic(&bootstrap, &topics.data(DS), 2).await.unwrap();
    let connect = || async {
        let (c, conn) = tokio_postgres::connect(&cluster.conninfo(), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok::<_, tokio_postgres::Error>(c)
    };
    connect()
        .await
        .unwrap()
        .batch_execute(
            "CREATE TABLE payments (
               id text PRIMARY KEY, id_no text NOT NULL, name text NOT NULL,
               kind text NOT NULL, month text NOT NULL, amount numeric(14,2) NOT NULL,
               paid_at timestamptz NOT NULL)",
        )
        .await
        .unwrap();
    let config = format!(
        r#"conninfo = "{}"
name = "restart"
state_dir = "{}"
heartbeat = "1s"

[[table]]
table = "payments"
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
        cluster.conninfo(),
        dir.path().join("state").display(),
    );
    std::fs::write(dir.path().join("capture.toml"), config).unwrap();
    let mut router = spawn_router(&bootstrap, &topics, &[]);
    let mut capture = common::spawn_capture("postgres", dir.path(), &topics, common::free_port());

    // The capture streams before the server restarts under it.
    let logs = || -> String {
        std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !logs().contains("Streaming changes.") {
        assert!(
            Instant::now() < deadline,
            "the capture never streamed: {}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 30 transactions of 10 rows; the server restarts after the tenth. A
    // transaction the restart broke is sent again (a duplicate key means
    // its commit had gone through).
    let mut client = connect().await.unwrap();
    for batch in 0..30 {
        if batch == 10 {
            drop(client);
            cluster.pg_ctl("restart", "fast");
            client = loop {
                if let Ok(c) = connect().await {
                    break c;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
        }
        let sql: Vec<String> = (0..10).map(|i| insert(batch * 10 + i)).collect();
        let sql = format!("BEGIN; {}; COMMIT", sql.join("; "));
        loop {
            match client.batch_execute(&sql).await {
                Ok(()) => break,
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                    break
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if let Ok(c) = connect().await {
                        client = c;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let data = common::changes(&topics.data(DS), 300);
    let keys: BTreeSet<&str> = data.iter().map(|d| d.0.as_str()).collect();
    assert_eq!(
        keys.len(),
        300,
        "every committed row arrived; logs:\n{}",
        logs()
    );
    let mut by_id: BTreeMap<&str, (&str, u64)> = BTreeMap::new();
    for (key, op, version, id) in &data {
        // Rows committed before the capture made its slot come in its snapshot.
        assert!(op == "create" || op == "snapshot", "{key}: {op}");
        let first = by_id.entry(id).or_insert((key, *version));
        assert_eq!(
            *first,
            (key.as_str(), *version),
            "a repeat is the same event"
        );
    }
    assert_eq!(by_id.len(), 300, "one event per row");
    for child in [&mut capture, &mut router] {
        let _ = child.kill();
        let _ = child.wait();
    }
    // The restart happened under the capture: it lost its stream and came back.
    let logs = logs();
    assert!(
        logs.find("reconnecting in 5 s") < logs.rfind("Streaming changes.")
            && logs.contains("reconnecting in 5 s"),
        "{logs}"
    );
    let c = connect().await.unwrap();
    let _ = c
        .execute("SELECT pg_drop_replication_slot('restart')", &[])
        .await;
}

/// An UPDATE that leaves a large (TOASTed) value unchanged sends it as
/// "unchanged" — under the default REPLICA IDENTITY with no old row to take
/// it from: the capture published the record without it (here a required
/// name, so the update was rejected and lost; a nullable one would have
/// arrived as null). The capture makes the table REPLICA IDENTITY FULL at
/// start (or refuses to start, saying how), so the old row carries every
/// value and the update arrives whole.
#[tokio::test(flavor = "multi_thread")]
async fn an_update_that_leaves_a_large_value_unchanged_arrives_whole() {
    let s = Setup::new("logical").await;
    let db = s.pg.client().await.unwrap();
    let port = common::free_port();
    let mut cap = s.capture_on(port);
    common::wait_listening(port);
    // The name (50 characters, 150 bytes) stored out of line: a row over
    // the 2 kB toast threshold (a long key), a low toast target and no
    // compression make PostgreSQL TOAST it.
    let name: String = (0..50u32)
        .map(|i| char::from_u32(0x5F20 + i * 37).unwrap())
        .collect();
    let key = format!("TOASTED-{}", "K".repeat(2_500));
    db.batch_execute(&format!(
        "ALTER TABLE payments SET (toast_tuple_target = 128);
         ALTER TABLE payments ALTER COLUMN id SET STORAGE EXTERNAL;
         ALTER TABLE payments ALTER COLUMN name SET STORAGE EXTERNAL;
         INSERT INTO payments (id, id_no, name, kind, month, amount, paid_at)
         VALUES ('{key}', '11010519491231002X', '{name}', 'ENTERPRISE_EMPLOYEE', '2026-10', 100.5, '2026-10-15 10:00:00+08');"
    ))
    .await
    .unwrap();
    let _ = common::records_with_ids(&s.topics.data(DS), 1);
    let identity: String = db
        .query_one(
            "SELECT relreplident::text FROM pg_class WHERE oid = 'payments'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(identity, "f", "the capture set REPLICA IDENTITY FULL");
    db.batch_execute("UPDATE payments SET amount = 200 WHERE id LIKE 'TOASTED-%'")
        .await
        .unwrap();
    let records = common::records_with_ids(&s.topics.data(DS), 2);
    let catalog = govbus_catalog::Catalog::load(&common::repo().join("schemas")).unwrap();
    let catalog = std::sync::Arc::new(catalog);
    let got: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            let json = govbus_sink::decode::to_json(&catalog, r.value.as_deref().unwrap()).unwrap();
            (
                json["amount"].to_string().trim_matches('"').to_owned(),
                json["recipient_name"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("100.5000".to_owned(), name.clone()),
            ("200.0000".to_owned(), name)
        ],
        "the create, then the update with the value it left unchanged"
    );
    cap.kill().unwrap();
    let _ = cap.wait();
}
