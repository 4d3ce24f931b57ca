//! `govbus bench query`: the live interfaces on a large state, against the
//! department's fallback — a PostgreSQL copy of the dataset with a SELECT
//! behind an HTTP handler — in the same run.
//!
//! Phases, each timed to its last answered (or committed) result:
//! 1. publish N canonical death registrations to a fresh `data.*` topic;
//! 2. catch-up: `govbus query`'s state builder reads them into its store;
//! 3. single-key lookups, closed loop (C keep-alive connections), govbus
//!    then PostgreSQL;
//! 4. single-key lookups at a fixed rate (open loop), latency percentiles;
//! 5. batch lookups (100 keys a request).
//!
//! The load generator runs in this process too (on loopback): its CPU is
//! shared with the server, on both sides of each ratio alike.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use govbus_catalog::Catalog;
use govbus_gateway::Credentials;
use govbus_kafka::headers as h;
use govbus_kafka::topics::Topics;
use govbus_validate::{Context, Engine};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::bench::{cpu_seconds, create, fill_with, rss_mib, Payload, Rec};
use crate::catalog_source;

const DATASET: &str = "civil_affairs.death_registration";
const TOKEN: &str = "bench-query-token-0123456789";

#[derive(Args)]
pub struct QueryBench {
    /// Broker to measure against.
    #[arg(long, env = "GOVBUS_BOOTSTRAP")]
    bootstrap: String,
    /// Keys in the state.
    #[arg(long, default_value_t = 1_000_000)]
    keys: usize,
    /// Seconds per lookup phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent connections in the closed-loop phases.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Concurrent connections in the batch phase (default: `--connections`).
    #[arg(long)]
    batch_connections: Option<usize>,
    /// Requests per second of the open-loop latency phase.
    #[arg(long, default_value_t = 5000)]
    rate: u32,
    /// PostgreSQL for the baseline (a table of the same records, keyed).
    /// Absent: no baseline.
    #[arg(long, env = "GOVBUS_POSTGRES")]
    postgres: Option<String>,
    /// Where the state store goes (a fresh directory is made inside).
    #[arg(long, default_value = "target/bench-query")]
    dir: PathBuf,
    /// The state store's page cache, MiB (`govbus query --cache-mib`).
    #[arg(long, default_value_t = 64)]
    cache_mib: usize,
}

fn key(i: usize) -> String {
    format!("DR-2026-{i:08}")
}

/// A resident ID number with a valid check digit (GB 11643).
fn id_number(i: usize) -> String {
    let first17 = format!("{:06}19500101{:03}", 110_105 + (i / 1000) % 800, i % 1000);
    const W: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = first17
        .bytes()
        .zip(W)
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    let check = b"10X98765432"[(sum % 11) as usize] as char;
    format!("{first17}{check}")
}

/// The CPU model, from /proc/cpuinfo.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn record(i: usize) -> serde_json::Value {
    let id = id_number(i);
    serde_json::json!({
        "registration_no": key(i),
        "deceased_id_number": id,
        "deceased_name": "欧阳娜娜",
        "gender": "FEMALE",
        "birth_date": "1950-01-01",
        "death_date": "2026-01-02",
        "death_place": "北京市朝阳区",
        "death_cause_category": "natural",
        "registering_office": "朝阳区民政局",
        "registered_at": "2026-01-03T08:00:00.000Z",
        "informant_phone": "13800138000",
    })
}

fn catalog() -> anyhow::Result<Catalog> {
    let mut files = catalog_source::embedded_files();
    files.retain(|p, _| !p.starts_with("subscriptions"));
    files.insert(
        PathBuf::from("subscriptions/bench_api.toml"),
        format!(
            "subscriber = \"hrss\"\ndataset = \"{DATASET}\"\npurpose = \"benchmark\"\n\n[fields]\ninclude = [\"deceased_id_number\", \"deceased_name\", \"death_date\"]\n\n[sink]\ntype = \"api\"\noperations = [\"lookup\", \"verify\"]\nrate = 100000\nbatch_max = 1000\n"
        ),
    );
    Catalog::from_files(Path::new("<bench>"), &files).map_err(|p| anyhow::anyhow!("{p}"))
}

pub async fn run(b: QueryBench) -> anyhow::Result<()> {
    let catalog = catalog()?;
    let engine = Engine::new(&catalog)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let topics = Topics::new(format!("benchq{stamp}."));
    create(&b.bootstrap, &[topics.data(DATASET)], 3).await?;
    create(&b.bootstrap, &[topics.audit()], 1).await?;
    println!(
        "govbus bench query: {} keys, CPU {}, {} cores, state cache {} MiB",
        b.keys,
        cpu_model(),
        std::thread::available_parallelism().map_or(0, usize::from),
        b.cache_mib
    );

    // 1. Publish.
    let t0 = Instant::now();
    let now = govbus_catalog::time::format_rfc3339_millis(Context::now().now_millis);
    let ctx = Context::now();
    for start in (0..b.keys).step_by(50_000) {
        let recs: Vec<Rec> = (start..(start + 50_000).min(b.keys))
            .map(|i| {
                let json = record(i).to_string();
                let a = engine
                    .validate_json(DATASET, json.as_bytes(), &ctx)
                    .map_err(|r| anyhow::anyhow!("record {i}: {}", r.detail))?;
                Ok((a.key, a.value, String::new()))
            })
            .collect::<anyhow::Result<_>>()?;
        fill_with(
            &b.bootstrap,
            &topics.data(DATASET),
            &recs,
            Payload::Avro,
            |i, r| {
                let id = format!("bq-{start}-{i}");
                h::owned([
                    (h::CE_ID, id.as_bytes()),
                    (h::CE_SUBJECT, r.0.as_bytes()),
                    (h::CE_TIME, now.as_bytes()),
                    (h::CE_OP, b"create".as_slice()),
                    (h::CE_SOURCEVERSION, b"1".as_slice()),
                ])
            },
        )
        .await?;
    }
    println!(
        "publish         {:>9} records in {:>6.1} s",
        b.keys,
        t0.elapsed().as_secs_f64()
    );

    // 2. Catch-up.
    let dir = b.dir.join(format!("run-{stamp}"));
    let mut qc = govbus_query::QueryConfig::new(b.bootstrap.clone(), &dir);
    qc.cache_bytes = b.cache_mib.max(1) << 20;
    qc.topics = topics.clone();
    qc.pseudonym_secret = b"bench-pseudonym-secret-0123456789".to_vec();
    let (_cat_tx, cat_rx) = tokio::sync::watch::channel(Arc::new(catalog.clone()));
    let credentials = Credentials::default().with_token("hrss", TOKEN);
    let (c0, t1) = (cpu_seconds(), Instant::now());
    let query =
        govbus_query::Query::start(qc, cat_rx, credentials, govbus_query::Metrics::new()).await?;
    let state = loop {
        if let Some(s) = query.dataset(DATASET) {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    while !state.freshness().caught_up || (state.freshness().keys as usize) < b.keys {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = t1.elapsed().as_secs_f64();
    let (rss, _) = rss_mib();
    let disk = std::fs::metadata(dir.join("query-state.redb")).map_or(0, |m| m.len());
    println!(
        "catch-up        {:>9} records in {:>6.1} s = {:>9.0} rec/s, {:.1} µs CPU/record; RSS {:.0} MiB, store {} MiB",
        b.keys,
        secs,
        b.keys as f64 / secs,
        (cpu_seconds() - c0) / b.keys as f64 * 1e6,
        rss,
        disk >> 20
    );

    // 3–5. Lookups.
    let app = govbus_query::api::router(&query);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut srx = stop_rx.clone();
    tokio::spawn(govbus_http::serve(
        listener,
        app,
        govbus_http::Options::default(),
        async move {
            let _ = srx.wait_for(|s| *s).await;
        },
    ));
    let path = |i: usize| format!("/v1/query/bench_api/records/{}", key(i));
    let gb = closed_loop(addr, &b, &path, None).await?;
    report("lookup govbus", &gb);
    let pg = match &b.postgres {
        Some(conninfo) => {
            let pg_addr = postgres_baseline(conninfo, b.keys, stamp).await?;
            let r = closed_loop(pg_addr, &b, &|i| format!("/records/{}", key(i)), None).await?;
            report("lookup postgres", &r);
            println!(
                "                govbus / postgres = {:.2}",
                gb.rate() / r.rate().max(1e-9)
            );
            Some(r)
        }
        None => None,
    };
    let open = open_loop(addr, &b, &path).await?;
    println!(
        "at {:>5} req/s  {} answered, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        b.rate,
        open.len(),
        pct(&open, 0.50),
        pct(&open, 0.99),
        pct(&open, 1.0)
    );
    let batch = closed_loop(addr, &b, &|_| String::new(), Some(100)).await?;
    println!(
        "batch lookups   {:>9.0} keys/s ({} requests of 100 keys, {} connections), {:.1} µs CPU/key",
        batch.rate() * 100.0,
        batch.ok,
        b.batch_connections.unwrap_or(b.connections),
        batch.cpu_us() / 100.0
    );
    let (rss, peak) = rss_mib();
    println!(
        "RSS now {rss:.0} MiB, peak {peak:.0} MiB (state on disk: {} MiB)",
        disk >> 20
    );
    if let (Some(conninfo), Some(_)) = (&b.postgres, pg) {
        let (c, conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        c.batch_execute(&format!("DROP TABLE IF EXISTS benchq_{stamp}"))
            .await?;
    }
    let _ = stop_tx.send(true);
    query.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

struct Load {
    ok: u64,
    errors: u64,
    seconds: f64,
    /// CPU of the whole process (servers and load generator) in the phase.
    cpu_seconds: f64,
    latencies_ms: Vec<f64>,
}

impl Load {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.seconds.max(1e-9)
    }

    /// Process CPU per answered request, µs.
    fn cpu_us(&self) -> f64 {
        self.cpu_seconds / (self.ok.max(1) as f64) * 1e6
    }
}

fn report(name: &str, l: &Load) {
    let mut lat = l.latencies_ms.clone();
    lat.sort_by(f64::total_cmp);
    println!(
        "{name:<15} {:>9.0} req/s ({} ok, {} errors), p50 {:.2} ms, p99 {:.2} ms, {:.1} µs CPU/request",
        l.rate(),
        l.ok,
        l.errors,
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        l.cpu_us()
    );
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    s: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> anyhow::Result<Conn> {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Conn {
            s,
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    /// Sends one request and reads the whole answer; its status.
    async fn call(&mut self, method: &str, path: &str, body: &[u8]) -> anyhow::Result<u16> {
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\n");
        if !body.is_empty() {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        self.s.write_all(req.as_bytes()).await?;
        if !body.is_empty() {
            self.s.write_all(body).await?;
        }
        self.buf.clear();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end]).unwrap_or("");
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                while self.buf.len() < end + 4 + len {
                    let n = self.s.read(&mut chunk).await?;
                    anyhow::ensure!(n > 0, "connection closed mid-answer");
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                return Ok(status);
            }
            let n = self.s.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn rng(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// `connections` clients, each sending its next request when the last is
/// answered, for `seconds`: random keys (or batches of `batch` keys).
async fn closed_loop(
    addr: SocketAddr,
    b: &QueryBench,
    path: &(dyn Fn(usize) -> String + Sync),
    batch: Option<usize>,
) -> anyhow::Result<Load> {
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let conns = if batch.is_some() {
        b.batch_connections.unwrap_or(b.connections)
    } else {
        b.connections
    };
    // Every connection's requests are made before the clock starts (the
    // closure is not 'static); a batch plan is shorter, so 64 connections'
    // plans stay a few MiB.
    let plan_len = if batch.is_some() { 256 } else { 4096 };
    let mut plans = Vec::with_capacity(conns);
    for c in 0..conns {
        let keys = b.keys;
        let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (c as u64 + 1);
        let plan: Vec<(String, Vec<u8>)> = (0..plan_len)
            .map(|_| match batch {
                None => (path(rng(&mut seed) as usize % keys), Vec::new()),
                Some(n) => {
                    let ks: Vec<String> = (0..n)
                        .map(|_| key(rng(&mut seed) as usize % keys))
                        .collect();
                    (
                        "/v1/query/bench_api/batch".to_owned(),
                        serde_json::json!({ "keys": ks }).to_string().into_bytes(),
                    )
                }
            })
            .collect();
        plans.push(plan);
    }
    let (started, cpu) = (Instant::now(), cpu_seconds());
    let deadline = started + Duration::from_secs(b.seconds);
    let mut tasks = Vec::new();
    for plan in plans {
        let (ok, errors) = (ok.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await?;
            let mut lat = Vec::new();
            let mut i = 0usize;
            while Instant::now() < deadline {
                let (p, body) = &plan[i % plan.len()];
                i += 1;
                let t = Instant::now();
                let method = if body.is_empty() { "GET" } else { "POST" };
                match conn.call(method, p, body).await {
                    Ok(200) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        lat.push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                    Ok(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        conn = Conn::open(addr).await?;
                    }
                }
            }
            anyhow::Ok(lat)
        }));
    }
    let mut latencies_ms = Vec::new();
    for t in tasks {
        latencies_ms.extend(t.await??);
    }
    Ok(Load {
        ok: ok.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
        cpu_seconds: cpu_seconds() - cpu,
        latencies_ms,
    })
}

/// Requests at `rate` a second for `seconds`, each on the next free of 64
/// connections, timed from when it was due (so a stall counts): sorted
/// latencies in ms.
async fn open_loop(
    addr: SocketAddr,
    b: &QueryBench,
    path: &(dyn Fn(usize) -> String + Sync),
) -> anyhow::Result<Vec<f64>> {
    let (tx, rx) = async_channel_pair();
    let total = u64::from(b.rate) * b.seconds;
    let mut workers = Vec::new();
    for _ in 0..64 {
        let rx = rx.clone();
        workers.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await?;
            let mut lat = Vec::new();
            loop {
                let next = rx.lock().await.recv().await;
                let Some((due, p)) = next else { break };
                let due: Instant = due;
                if let Ok(200) = conn.call("GET", &p, b"").await {
                    lat.push(due.elapsed().as_secs_f64() * 1000.0);
                }
            }
            anyhow::Ok(lat)
        }));
    }
    // The pacer is a thread of its own: tokio's timers tick in whole
    // milliseconds, so a paced task would send five requests at once up to
    // a millisecond late, and that lateness would be counted as the
    // server's latency.
    let mut seed = 0xDEAD_BEEF_u64;
    let paths: Vec<String> = (0..total.min(1 << 16))
        .map(|_| path(rng(&mut seed) as usize % b.keys))
        .collect();
    let rate = f64::from(b.rate);
    let pacer = std::thread::spawn(move || {
        let start = Instant::now();
        for n in 0..total {
            let due = start + Duration::from_secs_f64(n as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let p = paths[n as usize % paths.len()].clone();
            if tx.blocking_send((due, p)).is_err() {
                break;
            }
        }
    });
    tokio::task::spawn_blocking(move || pacer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the request pacer failed"))?;
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await??);
    }
    all.sort_by(f64::total_cmp);
    Ok(all)
}

type Job = (Instant, String);

fn async_channel_pair() -> (
    tokio::sync::mpsc::Sender<Job>,
    Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Job>>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(100_000);
    (tx, Arc::new(tokio::sync::Mutex::new(rx)))
}

/// The department's fallback: the same records in a PostgreSQL table
/// (`key` primary key, the record as JSONB), and an HTTP handler that checks
/// the token and answers `SELECT record FROM … WHERE key = $1` — a pool of 8
/// connections. Returns where it listens.
async fn postgres_baseline(conninfo: &str, keys: usize, stamp: u64) -> anyhow::Result<SocketAddr> {
    use futures_util::SinkExt as _;
    let table = format!("benchq_{stamp}");
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (c, conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        clients.push(c);
    }
    let c = &clients[0];
    c.batch_execute(&format!(
        "DROP TABLE IF EXISTS {table}; CREATE UNLOGGED TABLE {table} (key text PRIMARY KEY, version bigint NOT NULL, record jsonb NOT NULL)"
    ))
    .await?;
    let t = Instant::now();
    let sink = c
        .copy_in(&format!("COPY {table} (key, version, record) FROM STDIN"))
        .await?;
    let mut sink = std::pin::pin!(sink);
    let mut buf = String::new();
    for i in 0..keys {
        buf.push_str(&key(i));
        buf.push_str("\t1\t");
        buf.push_str(&record(i).to_string().replace('\\', "\\\\"));
        buf.push('\n');
        if buf.len() > 1 << 20 {
            sink.send(bytes_of(std::mem::take(&mut buf))).await?;
        }
    }
    sink.send(bytes_of(buf)).await?;
    sink.as_mut().finish().await?;
    println!(
        "postgres load   {keys:>9} records in {:>6.1} s (COPY into {table})",
        t.elapsed().as_secs_f64()
    );
    let clients = Arc::new(clients);
    let next = Arc::new(AtomicU64::new(0));
    let select = format!("SELECT version, record::text FROM {table} WHERE key = $1");
    let app = axum::Router::new().route(
        "/records/{key}",
        axum::routing::get(
            move |axum::extract::Path(k): axum::extract::Path<String>,
                  headers: axum::http::HeaderMap| {
                let clients = clients.clone();
                let next = next.clone();
                let select = select.clone();
                async move {
                    use axum::response::IntoResponse;
                    let authorized = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v == format!("Bearer {TOKEN}"));
                    if !authorized {
                        return axum::http::StatusCode::UNAUTHORIZED.into_response();
                    }
                    let c = &clients[next.fetch_add(1, Ordering::Relaxed) as usize % clients.len()];
                    match c.query_opt(&select, &[&k]).await {
                        Ok(Some(row)) => {
                            let v: i64 = row.get(0);
                            let rec: String = row.get(1);
                            (
                                [("content-type", "application/json")],
                                format!(
                                    "{{\"key\":\"{k}\",\"sourceversion\":\"{v}\",\"data\":{rec}}}"
                                ),
                            )
                                .into_response()
                        }
                        Ok(None) => axum::http::StatusCode::NOT_FOUND.into_response(),
                        Err(_) => axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response(),
                    }
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

fn bytes_of(s: String) -> std::io::Cursor<Vec<u8>> {
    std::io::Cursor::new(s.into_bytes())
}
