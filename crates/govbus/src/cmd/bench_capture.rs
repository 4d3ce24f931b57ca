//! `govbus bench capture`: PostgreSQL change-capture throughput (a bulk
//! transaction of N rows, commit → every change acknowledged by Kafka) and
//! lag at a steady write rate (each row's commit → its change acknowledged),
//! with logical decoding, for the streaming reader and the SQL-interface
//! reader in the same run; Kafka is librdkafka's mock cluster so that the
//! broker does not dominate (DESIGN.md §7).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use govbus_adapter::publish::KafkaPublisher;
use govbus_adapter::{Change, PublishError, Publisher};
use govbus_capture::{Capture, Config, Mode, TableSpec};

use crate::catalog_source;

#[derive(Args)]
pub struct CaptureBench {
    /// The PostgreSQL to measure (wal_level = logical).
    #[arg(
        long,
        env = "GOVBUS_POSTGRES",
        default_value = "host=127.0.0.1 port=5432 user=postgres dbname=test"
    )]
    postgres: String,
    /// A MySQL/MariaDB server to measure too (row binlog on); `none` to skip.
    #[arg(
        long,
        env = "GOVBUS_MYSQL",
        default_value = "mysql://root@127.0.0.1:3306/test"
    )]
    mysql: String,
    /// Rows in the bulk transaction.
    #[arg(long, default_value_t = 100_000)]
    rows: usize,
    /// Steady write rate for the lag measurement (rows/s, one transaction each, 10 s).
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// How often the capture looks for changes when idle.
    #[arg(long, default_value = "20ms", value_parser = |s: &str| humantime::parse_duration(s).map_err(|e| e.to_string()))]
    poll_interval: Duration,
}

type Acks = Arc<Mutex<Vec<(String, Instant)>>>;

struct Timed {
    inner: KafkaPublisher,
    pending: Vec<String>,
    acked: Acks,
}

impl Publisher for Timed {
    fn publish(&mut self, c: &Change) -> Result<(), PublishError> {
        self.pending.push(c.key.clone());
        self.inner.publish(c)
    }
    fn flush(&mut self) -> Result<(), PublishError> {
        self.inner.flush()?;
        let now = Instant::now();
        let mut a = self
            .acked
            .lock()
            .map_err(|_| PublishError::Other("poisoned".to_owned()))?;
        a.extend(self.pending.drain(..).map(|k| (k, now)));
        Ok(())
    }
}

const INSERT: &str = "INSERT INTO payments (id, id_no, name, kind, month, amount, paid_at) VALUES ($1, '11010519491231002X', '张建国', 'ENTERPRISE_EMPLOYEE', '2026-10', 100.50, '2026-10-15 10:00:00+08')";

/// One reader's figures.
struct Figures {
    bulk_n: usize,
    bulk_secs: f64,
    /// This process's CPU time (user + system, every thread: the capture,
    /// librdkafka and its mock broker) from the commit to the last
    /// acknowledgement; less sensitive than the wall time to what else the
    /// machine runs.
    bulk_cpu: f64,
    lag: Vec<f64>,
    /// The five slowest steady rows: (lag ms, row number).
    slowest: Vec<(f64, usize)>,
    total: usize,
    counts: govbus_capture::Counts,
}

pub async fn run(b: CaptureBench) -> anyhow::Result<()> {
    println!("Change capture → Kafka (mock cluster); every reader in one run:\n");
    let mut rates = Vec::new();
    let mut readers = vec![
        (
            Some(Mode::Logical),
            "PostgreSQL, streaming replication protocol".to_owned(),
        ),
        (
            Some(Mode::LogicalSql),
            format!(
                "PostgreSQL, SQL interface, poll interval {:?}",
                b.poll_interval
            ),
        ),
    ];
    if b.mysql != "none" {
        readers.push((None, "MySQL/MariaDB, row-based binlog".to_owned()));
    }
    for (mode, label) in readers {
        let f = measure(&b, mode).await?;
        let pct = |p: f64| super::bench::quantile(&f.lag, p, -1.0);
        let rate = f.bulk_n as f64 / f.bulk_secs;
        rates.push((label.clone(), rate, pct(0.99)));
        println!("{label}:");
        println!(
            "- bulk: one transaction of {} rows → {} changes acknowledged in {:.2} s after the commit = {rate:.0} changes/s; CPU {:.2} s = {:.1} µs per change (this process, all threads)",
            b.rows,
            f.bulk_n,
            f.bulk_secs,
            f.bulk_cpu,
            f.bulk_cpu * 1e6 / f.bulk_n.max(1) as f64
        );
        println!(
            "- steady {} rows/s for 10 s (one transaction per row; {} of {} measured): commit → acknowledged p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            b.rate,
            f.lag.len(),
            f.total,
            pct(0.5),
            pct(0.99),
            f.lag.last().copied().unwrap_or(-1.0)
        );
        println!(
            "- slowest steady rows (row of {}: ms): {}",
            f.total,
            f.slowest
                .iter()
                .map(|(ms, row)| format!("{row}: {ms:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "- rejected: {}, heartbeats: {}\n",
            f.counts.rejected, f.counts.heartbeats
        );
    }
    if let [(_, s_rate, s_p99), (_, q_rate, q_p99), ..] = rates.as_slice() {
        println!(
            "streaming / SQL interface: bulk {:.2}×, steady p99 {:.2}× (lower is better)",
            s_rate / q_rate,
            s_p99 / q_p99
        );
    }
    Ok(())
}

/// The database under measurement.
enum Db {
    Pg(tokio_postgres::Client, String),
    My(mysql_async::Conn, String),
}

impl Db {
    async fn create(b: &CaptureBench, mysql: bool, schema: &str) -> anyhow::Result<Db> {
        if mysql {
            let mut c = mysql_async::Conn::from_url(&b.mysql)
                .await
                .context("connect to MySQL")?;
            use mysql_async::prelude::Queryable as _;
            c.query_drop(format!(
                "CREATE DATABASE {schema}; CREATE TABLE {schema}.payments (id varchar(40) PRIMARY KEY, id_no varchar(18), name varchar(50), kind varchar(30), month char(7), amount decimal(14,2), paid_at datetime)"
            ))
            .await?;
            Ok(Db::My(c, schema.to_owned()))
        } else {
            let (db, conn) = tokio_postgres::connect(&b.postgres, tokio_postgres::NoTls)
                .await
                .context("connect to PostgreSQL")?;
            tokio::spawn(conn);
            db.batch_execute(&format!(
                "CREATE SCHEMA {schema}; CREATE TABLE {schema}.payments (id text PRIMARY KEY, id_no text, name text, kind text, month text, amount numeric(14,2), paid_at timestamptz)"
            ))
            .await?;
            Ok(Db::Pg(db, schema.to_owned()))
        }
    }

    /// One transaction inserting `rows` rows; returns when it committed.
    async fn bulk(&mut self, rows: usize) -> anyhow::Result<()> {
        match self {
            Db::Pg(db, schema) => db.batch_execute(&format!(
                "INSERT INTO {schema}.payments (id, id_no, name, kind, month, amount, paid_at) SELECT 'B' || g, '11010519491231002X', '张建国', 'ENTERPRISE_EMPLOYEE', '2026-10', 100.50, '2026-10-15 10:00:00+08' FROM generate_series(1, {rows}) g"
            ))
            .await?,
            Db::My(c, schema) => {
                use mysql_async::prelude::Queryable as _;
                c.query_drop(format!(
                    "INSERT INTO {schema}.payments (id, id_no, name, kind, month, amount, paid_at) SELECT concat('B', seq), '11010519491231002X', '张建国', 'ENTERPRISE_EMPLOYEE', '2026-10', 100.50, '2026-10-15 10:00:00' FROM seq_1_to_{rows}"
                ))
                .await?
            }
        }
        Ok(())
    }

    /// One row in its own transaction; returns when it committed.
    async fn insert(&mut self, key: &str) -> anyhow::Result<()> {
        match self {
            Db::Pg(db, schema) => {
                db.execute(
                    &INSERT.replace("payments", &format!("{schema}.payments")),
                    &[&key],
                )
                .await?;
            }
            Db::My(c, schema) => {
                use mysql_async::prelude::Queryable as _;
                c.exec_drop(
                    INSERT
                        .replace("payments", &format!("{schema}.payments"))
                        .replace("$1", "?")
                        .replace("+08'", "'"),
                    (key,),
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn drop(self, slot: &str) -> anyhow::Result<()> {
        match self {
            Db::Pg(db, schema) => {
                db.execute("SELECT pg_drop_replication_slot($1::text::name)", &[&slot])
                    .await?;
                db.batch_execute(&format!(
                    "DROP PUBLICATION IF EXISTS {slot}; DROP SCHEMA {schema} CASCADE"
                ))
                .await?;
            }
            Db::My(mut c, schema) => {
                use mysql_async::prelude::Queryable as _;
                c.query_drop(format!("DROP DATABASE {schema}")).await?;
            }
        }
        Ok(())
    }
}

/// `mode` None: the MySQL capture.
async fn measure(b: &CaptureBench, mode: Option<Mode>) -> anyhow::Result<Figures> {
    let catalog = catalog_source::load(None).map_err(|p| anyhow::anyhow!("{p}"))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let schema = format!("bench_cdc_{stamp}");
    let mut db = Db::create(b, mode.is_none(), &schema).await?;
    let cluster = rdkafka::mocking::MockCluster::new(1)?;
    cluster.create_topic("bench.ingest.hrss", 4, 1)?;
    let columns = [
        ("payment_id", "id"),
        ("recipient_id_number", "id_no"),
        ("recipient_name", "name"),
        ("pension_type", "kind"),
        ("pay_month", "month"),
        ("amount", "amount"),
        ("paid_at", "paid_at"),
    ]
    .into_iter()
    .map(|(f, c)| (f.to_owned(), c.to_owned()))
    .collect();
    let state = std::env::temp_dir().join(format!("govbus-bench-capture-{stamp}"));
    let config = Config {
        conninfo: if mode.is_none() {
            b.mysql.clone()
        } else {
            b.postgres.clone()
        },
        mode: mode.unwrap_or_default(),
        name: format!("bench_cdc_{stamp}"),
        state_dir: Some(state.clone()),
        heartbeat: Duration::from_secs(10),
        poll_interval: b.poll_interval,
        delete_check: Duration::from_secs(30),
        timezone: None,
        server_id: None,
        tables: vec![TableSpec {
            table: format!("{schema}.payments"),
            dataset: "hrss.pension_payment".into(),
            columns,
            version_column: None,
        }],
    };
    let acked: Acks = Arc::default();
    let mut capture = if mode.is_none() {
        Capture::connect_mysql(config, &catalog, govbus_capture::Metrics::new())?
    } else {
        Capture::connect(config, &catalog, govbus_capture::Metrics::new()).await?
    };
    let mut publishers: HashMap<String, Box<dyn Publisher + Send>> = HashMap::new();
    publishers.insert(
        "hrss".into(),
        Box::new(Timed {
            inner: KafkaPublisher::new(
                &cluster.bootstrap_servers(),
                "bench.ingest.hrss",
                "",
                &govbus_capture::PRODUCER_DEFAULTS
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<Vec<_>>(),
            )?,
            pending: Vec::new(),
            acked: acked.clone(),
        }),
    );
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let r = capture.run(&mut publishers, stop_rx).await;
        (r, capture.counts.clone())
    });
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Throughput: one transaction of N rows.
    eprintln!("bulk: one transaction of {} rows", b.rows);
    db.bulk(b.rows).await?;
    let committed = Instant::now();
    let cpu_at_commit = super::bench::cpu_seconds();
    let deadline = committed + Duration::from_secs(600);
    while acked.lock().map(|a| a.len()).unwrap_or(0) < b.rows && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let bulk_secs = committed.elapsed().as_secs_f64();
    let bulk_cpu = super::bench::cpu_seconds() - cpu_at_commit;
    let bulk_n = acked.lock().map(|a| a.len()).unwrap_or(0);
    if let Ok(mut a) = acked.lock() {
        a.clear();
    }

    // Lag at a steady rate.
    eprintln!("steady: {} rows/s for 10 s", b.rate);
    let mut commits: HashMap<String, Instant> = HashMap::new();
    let start = Instant::now();
    let total = b.rate as usize * 10;
    for i in 0..total {
        let due = Duration::from_secs_f64(i as f64 / f64::from(b.rate));
        if let Some(w) = due.checked_sub(start.elapsed()) {
            tokio::time::sleep(w).await;
        }
        let key = format!("S{i:07}");
        db.insert(&key).await?;
        commits.insert(key, Instant::now());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().map(|a| a.len()).unwrap_or(0) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(true);
    let (result, counts) = task.await?;
    result?;
    let by_row: Vec<(f64, usize)> = acked
        .lock()
        .map(|a| {
            a.iter()
                .filter_map(|(k, t)| {
                    let row = k.strip_prefix('S')?.parse().ok()?;
                    commits
                        .get(k)
                        .map(|c| (t.saturating_duration_since(*c).as_secs_f64() * 1000.0, row))
                })
                .collect()
        })
        .unwrap_or_default();
    // Which rows were slowest: an outlier at the start of the steady phase
    // is the bulk's tail, one spread through it is the capture's.
    let mut slowest = by_row.clone();
    slowest.sort_by(|a, b| b.0.total_cmp(&a.0));
    slowest.truncate(5);
    let mut lag: Vec<f64> = by_row.iter().map(|(l, _)| *l).collect();
    lag.sort_by(f64::total_cmp);
    db.drop(&format!("bench_cdc_{stamp}")).await?;
    let _ = std::fs::remove_dir_all(PathBuf::from(&state));
    Ok(Figures {
        bulk_n,
        bulk_secs,
        bulk_cpu,
        lag,
        slowest,
        total,
        counts,
    })
}
