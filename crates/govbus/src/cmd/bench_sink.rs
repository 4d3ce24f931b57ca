//! `govbus bench sink`: delivery throughput of the webhook, PostgreSQL and
//! live-stream sinks against consuming the same canonical records with no
//! work (the baseline, same broker, same run); and, with `--latency RATE`,
//! canonical topic → subscriber latency at a fixed rate on librdkafka's mock
//! cluster (DESIGN.md §7: Tansu holds fetches for seconds).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use clap::Args;
use govbus_catalog::Catalog;
use govbus_gateway::Credentials;
use govbus_kafka::headers as h;
use govbus_kafka::topics::Topics;
use govbus_sink::{Metrics, SinkConfig, Sinks};
use govbus_validate::{Context, Engine};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::bench::{cpu_seconds, create, fill_with, records, rss_mib, Payload, Phase, Rec};
use crate::catalog_source;

const SECRET: &str = "whsec_YmVuY2gtc2VjcmV0LWJlbmNoLXNlY3JldC0wMTIz";
const DATASET: &str = "hrss.pension_payment";

#[derive(Args)]
pub struct SinkBench {
    /// Broker to measure against (e.g. a Tansu started by scripts/bench-sink).
    #[arg(long, env = "GOVBUS_BOOTSTRAP")]
    bootstrap: String,
    /// Canonical records per throughput phase.
    #[arg(long, default_value_t = 100_000)]
    records: usize,
    /// Partitions of the canonical topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// PostgreSQL for the PostgreSQL-sink phase (skipped without it).
    #[arg(long, env = "GOVBUS_POSTGRES")]
    postgres: Option<String>,
    /// Live-stream clients in the fan-out phase (0 skips it).
    #[arg(long, default_value_t = 100)]
    sse_clients: usize,
    /// Records each live-stream client reads.
    #[arg(long, default_value_t = 10_000)]
    sse_records: usize,
    /// Live-stream clients at the head of the topic (connected from the end,
    /// then records are published) in the live-tail phase (0 skips it).
    #[arg(long, default_value_t = 0)]
    sse_head_clients: usize,
    /// Records published to the live-tail phase's clients.
    #[arg(long, default_value_t = 1_000)]
    sse_head_records: usize,
    /// Also measure latency at this many events/s for 10 s on the mock cluster.
    #[arg(long)]
    latency: Option<u32>,
}

fn catalog_with(subscriptions: &[(&str, String)]) -> anyhow::Result<Catalog> {
    let mut files = catalog_source::embedded_files();
    files.retain(|p, _| !p.starts_with("subscriptions"));
    for (id, text) in subscriptions {
        files.insert(
            PathBuf::from(format!("subscriptions/{id}.toml")),
            text.clone(),
        );
    }
    Catalog::from_files(Path::new("<bench>"), &files).map_err(|p| anyhow::anyhow!("{p}"))
}

fn sub(id_sink: &str) -> String {
    format!("subscriber = \"education\"\ndataset = \"{DATASET}\"\npurpose = \"benchmark\"\n\n{id_sink}\n")
}

/// Canonical records as the router writes them (Avro value, CloudEvents headers).
async fn fill_canonical(bootstrap: &str, topic: &str, recs: &[Rec]) -> anyhow::Result<()> {
    fill_canonical_at(bootstrap, topic, recs, 1).await
}

/// [`fill_canonical`] with every record at source version `version` (and
/// ids of their own): the same keys again are updates.
async fn fill_canonical_at(
    bootstrap: &str,
    topic: &str,
    recs: &[Rec],
    version: u64,
) -> anyhow::Result<()> {
    let version = version.to_string();
    let now = govbus_catalog::time::format_rfc3339_millis(Context::now().now_millis);
    fill_with(bootstrap, topic, recs, Payload::Avro, |i, (key, _, _)| {
        let id = format!("bench-{i}-v{version}");
        h::owned([
            (h::CE_SPECVERSION, b"1.0".as_slice()),
            (h::CE_ID, id.as_bytes()),
            (h::CE_SOURCE, b"/departments/hrss".as_slice()),
            (h::CE_TYPE, DATASET.as_bytes()),
            (h::CE_SUBJECT, key.as_bytes()),
            (h::CE_TIME, now.as_bytes()),
            (h::CE_OP, b"create".as_slice()),
            (h::CE_SOURCEVERSION, version.as_bytes()),
        ])
    })
    .await
}

async fn consume_only(bootstrap: &str, topic: &str, n: usize) -> anyhow::Result<Phase> {
    let consumer: StreamConsumer =
        govbus_kafka::config::consumer(bootstrap, &format!("bench-consume-{}", std::process::id()))
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .create()?;
    consumer.subscribe(&[topic])?;
    let (mut started, mut cpu0) = (None, 0.0);
    for _ in 0..n {
        let m = consumer.recv().await?;
        if started.is_none() {
            started = Some(Instant::now());
            cpu0 = cpu_seconds();
        }
        let _ = consumer.store_offset_from_message(&m);
    }
    Ok(Phase {
        name: "consume only (baseline)".into(),
        seconds: started.map_or(0.0, |s| s.elapsed().as_secs_f64()),
        cpu: cpu_seconds() - cpu0,
        records: n,
    })
}

#[derive(Default)]
struct Receiver {
    events: AtomicU64,
    latencies: Mutex<Vec<i64>>,
    measure_latency: bool,
}

async fn hook(State(rx): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    let key = govbus_sink::sinks::webhook::decode_secret(SECRET).unwrap_or_default();
    let ts: u64 = get("webhook-timestamp").parse().unwrap_or(0);
    let expected = govbus_sink::sinks::webhook::sign(&key, get("webhook-id"), ts, &body);
    if get("webhook-signature") != expected {
        return StatusCode::UNAUTHORIZED;
    }
    // Counting is checking the whole body and building nothing (a tree of
    // every event would cost this process — the sink's — as much as the
    // sink's own serializing); the latency phase reads each event's time.
    if !rx.measure_latency {
        let Ok(events) = serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(&body) else {
            return StatusCode::BAD_REQUEST;
        };
        rx.events.fetch_add(events.len() as u64, Ordering::Relaxed);
        return StatusCode::NO_CONTENT;
    }
    let Ok(serde_json::Value::Array(events)) = serde_json::from_slice(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    {
        let now = Context::now().now_millis;
        let mut l = rx
            .latencies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for e in &events {
            if let Some(t) = e["time"]
                .as_str()
                .and_then(govbus_catalog::time::parse_rfc3339_micros)
            {
                l.push(now - t / 1000);
            }
        }
    }
    rx.events.fetch_add(events.len() as u64, Ordering::Relaxed);
    StatusCode::NO_CONTENT
}

async fn start_receiver(measure_latency: bool) -> anyhow::Result<(Arc<Receiver>, u16)> {
    let rx = Arc::new(Receiver {
        measure_latency,
        ..Receiver::default()
    });
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(rx.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((rx, port))
}

fn webhook_sub(port: u16) -> String {
    sub(&format!(
        "[sink]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{port}/hook\"\nsecret = \"{SECRET}\"\nallow_private = true\nbatch_max = 500\n"
    ))
}

struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    metrics: Metrics,
    _catalog: tokio::sync::watch::Sender<Arc<Catalog>>,
}

/// Starts the sinks of `config` over `catalog`; `serve` gets the HTTP
/// surface (live streams) before they run.
async fn run_sinks(
    config: SinkConfig,
    catalog: Catalog,
    serve: impl FnOnce(&Sinks),
) -> anyhow::Result<Running> {
    let (catalog_tx, catalog_rx) = tokio::sync::watch::channel(Arc::new(catalog));
    let metrics = Metrics::new();
    let sinks = Sinks::start(config, catalog_rx, metrics.clone()).await?;
    serve(&sinks);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(sinks.run(stop_rx));
    Ok(Running {
        stop,
        task,
        metrics,
        _catalog: catalog_tx,
    })
}

async fn delivery_phase(
    name: &str,
    config: SinkConfig,
    catalog: Catalog,
    n: usize,
    done: impl Fn(&Metrics) -> u64,
) -> anyhow::Result<Phase> {
    let running = run_sinks(config, catalog, |_| {}).await?;
    let (t0, cpu0) = (Instant::now(), cpu_seconds());
    let mut first: Option<(Instant, f64)> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let got = done(&running.metrics);
        if got > 0 && first.is_none() {
            first = Some((Instant::now(), cpu_seconds()));
        }
        if got >= n as u64 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (start, c0) = first.unwrap_or((t0, cpu0));
    let phase = Phase {
        name: name.into(),
        seconds: start.elapsed().as_secs_f64(),
        cpu: cpu_seconds() - c0,
        records: usize::try_from(done(&running.metrics)).unwrap_or(0),
    };
    let _ = running.stop.send(true);
    let _ = running.task.await;
    Ok(phase)
}

/// Prints the first phase named `phase…` against the first named `limit…`
/// (their rows per second), when the run had both.
fn against(phases: &[Phase], phase: &str, limit: &str, what: &str) {
    let first = |prefix: &str| phases.iter().find(|p| p.name.starts_with(prefix));
    if let (Some(p), Some(l)) = (first(phase), first(limit)) {
        println!(
            "{what}: {:.0} % ({:.0} of {:.0} rows/s).",
            p.rate() / l.rate() * 100.0,
            p.rate(),
            l.rate()
        );
    }
}

/// The limit of the PostgreSQL phase: the rows the sink wrote, copied out
/// and written again with one plain binary `COPY` into an empty table of
/// the same shape (its primary key and indexes included), from the first
/// byte sent to the server's acknowledgement of the COPY.
async fn copy_limit(client: &tokio_postgres::Client, schema: &str) -> anyhow::Result<Phase> {
    use futures_util::{SinkExt as _, TryStreamExt as _};
    let from = format!("\"{schema}\".pensions");
    let to = format!("\"{schema}\".pensions_copy");
    client
        .batch_execute(&format!("CREATE TABLE {to} (LIKE {from} INCLUDING ALL)"))
        .await?;
    let out = client
        .copy_out(&format!("COPY {from} TO STDOUT (FORMAT binary)"))
        .await?;
    let chunks: Vec<Bytes> = out.try_collect().await?;
    let (t0, cpu0) = (Instant::now(), cpu_seconds());
    let sink = client
        .copy_in(&format!("COPY {to} FROM STDIN (FORMAT binary)"))
        .await?;
    let mut sink = std::pin::pin!(sink);
    for c in chunks {
        sink.feed(c).await?;
    }
    let rows = sink.as_mut().finish().await?;
    Ok(Phase {
        name: "plain COPY of the same rows into an empty table (the PostgreSQL sink's limit)"
            .into(),
        seconds: t0.elapsed().as_secs_f64(),
        cpu: cpu_seconds() - cpu0,
        records: usize::try_from(rows).unwrap_or(0),
    })
}

/// The limit of the PostgreSQL update phase: the copy made by
/// [`copy_limit`] (every key at version 1, the same shape and indexes)
/// updated to the sink's version-2 rows with one plain `UPDATE … FROM`, a
/// statement with no parameters, casts, version guard or delete-marker
/// check — the server's own cost of rewriting every held row, from the
/// statement sent to its answer.
async fn update_limit(client: &tokio_postgres::Client, schema: &str) -> anyhow::Result<Phase> {
    let set: Option<String> = client
        .query_one(
            "SELECT string_agg(format('%I = p.%I', column_name, column_name), ', ') \
             FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = 'pensions' AND column_name <> '_govbus_subject'",
            &[&schema],
        )
        .await?
        .get(0);
    let set = set.context("the sink's table has no columns besides its key")?;
    let (t0, cpu0) = (Instant::now(), cpu_seconds());
    let rows = client
        .execute(
            &format!(
                "UPDATE \"{schema}\".pensions_copy c SET {set} FROM \"{schema}\".pensions p \
                 WHERE c._govbus_subject = p._govbus_subject"
            ),
            &[],
        )
        .await?;
    Ok(Phase {
        name: "plain UPDATE of the same rows from the sink's table (the limit for updates)".into(),
        seconds: t0.elapsed().as_secs_f64(),
        cpu: cpu_seconds() - cpu0,
        records: usize::try_from(rows).unwrap_or(0),
    })
}

async fn sse_client(port: u16, want: usize) -> anyhow::Result<usize> {
    sse_client_from(port, "?from=beginning", want).await
}

async fn sse_client_from(port: u16, query: &str, want: usize) -> anyhow::Result<usize> {
    sse_client_counted(port, query, want, Arc::default()).await
}

/// [`sse_client_from`], adding each event to `seen` as it arrives.
async fn sse_client_counted(
    port: u16,
    query: &str,
    want: usize,
    seen: Arc<AtomicU64>,
) -> anyhow::Result<usize> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    // HTTP/1.0: the body is not chunked, so event boundaries are plain text.
    s.write_all(format!("GET /v1/subscriptions/bench_sse/events{query} HTTP/1.0\r\nHost: bench\r\nAuthorization: Bearer bench-token-0123456789\r\n\r\n").as_bytes()).await?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut carry: Vec<u8> = Vec::new();
    let mut events = 0usize;
    while events < want {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        carry.extend_from_slice(&buf[..n]);
        let mut last = 0;
        for w in 0..carry.len().saturating_sub(6) {
            if &carry[w..w + 7] == b"\ndata: " {
                events += 1;
                seen.fetch_add(1, Ordering::Relaxed);
                last = w + 7;
            }
        }
        let keep = carry.len().saturating_sub(7).max(last);
        carry.drain(..keep);
    }
    Ok(events)
}

async fn latency(engine: &Engine, rate: u32) -> anyhow::Result<()> {
    let cluster = rdkafka::mocking::MockCluster::new(1)?;
    let bootstrap = cluster.bootstrap_servers();
    let topics = Topics::new("lat.");
    cluster.create_topic(&topics.data(DATASET), 4, 1)?;
    cluster.create_topic("lat._govbus.audit", 1, 1)?;
    cluster.create_topic("lat.dlq.sub.bench_webhook", 1, 1)?;
    let (rx, port) = start_receiver(true).await?;
    let catalog = catalog_with(&[("bench_webhook", webhook_sub(port))])?;
    let mut config = SinkConfig::new(bootstrap.clone());
    config.topics = topics.clone();
    config.only = vec!["bench_webhook".into()];
    config.linger = Duration::from_millis(1);
    config.create_topics = false;
    config.client_overrides = vec![
        ("fetch.wait.max.ms".into(), "1".into()),
        ("linger.ms".into(), "1".into()),
        ("session.timeout.ms".into(), "6000".into()),
    ];
    let running = run_sinks(config, catalog, |_| {}).await?;
    tokio::time::sleep(Duration::from_secs(8)).await; // the group joined
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "1")
        .create()?;
    let n = (rate * 10) as usize;
    let recs = records(engine, n)?;
    let topic = topics.data(DATASET);
    let start = Instant::now();
    for (i, (key, value, _)) in recs.iter().enumerate() {
        let due = Duration::from_secs_f64(i as f64 / f64::from(rate));
        if let Some(w) = due.checked_sub(start.elapsed()) {
            tokio::time::sleep(w).await;
        }
        let now = govbus_catalog::time::format_rfc3339_millis(Context::now().now_millis);
        let id = format!("lat-{i}");
        let hs = h::owned([
            (h::CE_ID, id.as_bytes()),
            (h::CE_SUBJECT, key.as_bytes()),
            (h::CE_TIME, now.as_bytes()),
            (h::CE_OP, b"create".as_slice()),
            (h::CE_SOURCEVERSION, b"1".as_slice()),
        ]);
        let _ = producer.send_result(
            FutureRecord::to(&topic)
                .key(key.as_bytes())
                .payload(value.as_slice())
                .headers(hs),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while rx.events.load(Ordering::Relaxed) < n as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = running.stop.send(true);
    let _ = running.task.await;
    let mut lat = rx
        .latencies
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    lat.sort_unstable();
    let pct = |p: f64| super::bench::quantile(&lat, p, -1);
    println!(
        "\nWebhook delivery latency on the mock cluster at {rate} events/s for 10 s ({} of {n} measured): p50 {} ms, p99 {} ms, max {} ms (canonical record written → event received by the subscriber's endpoint, ms precision; includes the ledger append).",
        lat.len(),
        pct(0.5),
        pct(0.99),
        lat.last().copied().unwrap_or(-1)
    );
    Ok(())
}

pub async fn run(b: SinkBench) -> anyhow::Result<()> {
    let catalog = catalog_source::load(None).map_err(|p| anyhow::anyhow!("{p}"))?;
    let engine = Engine::new(&catalog)?;
    if b.records > 0 {
        throughput(&b, &engine).await?;
    }
    if let Some(rate) = b.latency {
        latency(&engine, rate).await?;
    }
    Ok(())
}

async fn throughput(b: &SinkBench, engine: &Engine) -> anyhow::Result<()> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let topics = Topics::new(format!("benchsink{stamp}."));
    let data = topics.data(DATASET);
    create(&b.bootstrap, std::slice::from_ref(&data), b.partitions).await?;
    create(
        &b.bootstrap,
        &[
            format!("{}_govbus.audit", topics.prefix()),
            format!("{}dlq.sub.bench_webhook", topics.prefix()),
            format!("{}dlq.sub.bench_pg", topics.prefix()),
        ],
        1,
    )
    .await?;
    eprintln!(
        "generating and publishing {} canonical records...",
        b.records
    );
    let recs = records(engine, b.records.max(b.sse_records))?;
    let avg = recs.iter().map(|r| r.1.len()).sum::<usize>() / recs.len().max(1);
    fill_canonical(&b.bootstrap, &data, &recs).await?;
    drop(recs);
    let mut config = SinkConfig::new(b.bootstrap.clone());
    config.topics = topics.clone();
    config.pseudonym_secret = b"bench-pseudonym-secret-0123456789".to_vec();
    config.client_overrides = vec![
        ("session.timeout.ms".into(), "6000".into()),
        ("heartbeat.interval.ms".into(), "500".into()),
    ];
    config.max_batch = 2000;
    let n = b.records;

    eprintln!("phase 1: consume only");
    let base = consume_only(&b.bootstrap, &data, n).await?;
    let mut phases = vec![base];

    eprintln!("phase 2: webhook sink");
    let (rx, port) = start_receiver(false).await?;
    let mut c = config.clone();
    c.only = vec!["bench_webhook".into()];
    let cat = catalog_with(&[("bench_webhook", webhook_sub(port))])?;
    let r = rx.clone();
    phases.push(
        delivery_phase(
            "webhook sink (signed batches of 500, local receiver)",
            c,
            cat,
            n,
            move |_| r.events.load(Ordering::Relaxed),
        )
        .await?,
    );
    let (rss, hwm) = rss_mib();

    eprintln!("phase 3: Kafka view sink");
    let mut c = config.clone();
    c.only = vec!["bench_view".into()];
    let cat = catalog_with(&[("bench_view", sub("[sink]\ntype = \"kafka_view\"\n"))])?;
    phases.push(
        delivery_phase(
            "Kafka view sink (JSON records to view.<id>, acknowledged)",
            c,
            cat,
            n,
            |m| m.delivered_total("bench_view", "kafka_view"),
        )
        .await?,
    );

    eprintln!("phase 4: file sink");
    let files = std::env::temp_dir().join(format!("govbus-bench-files-{stamp}"));
    let mut c = config.clone();
    c.only = vec!["bench_file".into()];
    c.file_root = files.clone();
    let cat = catalog_with(&[(
        "bench_file",
        sub("[sink]\ntype = \"file\"\ndir = \"out\"\nroll_records = 100000\n"),
    )])?;
    phases.push(
        delivery_phase("file sink (JSONL, fsync per batch)", c, cat, n, |m| {
            m.delivered_total("bench_file", "file")
        })
        .await?,
    );
    let _ = std::fs::remove_dir_all(&files);

    if let Some(conninfo) = &b.postgres {
        eprintln!("phase 5: PostgreSQL sink");
        let schema = format!("bench_sink_{stamp}");
        let (client, conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
            .await
            .context("connect to PostgreSQL")?;
        tokio::spawn(conn);
        let mut c = config.clone();
        c.only = vec!["bench_pg".into()];
        c.postgres = Some(conninfo.clone());
        let cat = catalog_with(&[(
            "bench_pg",
            sub(&format!(
                "[sink]\ntype = \"postgres\"\ntable = \"{schema}.pensions\"\n"
            )),
        )])?;
        let (c_pg, cat_pg) = (c.clone(), cat.clone());
        phases.push(
            delivery_phase(
                "PostgreSQL sink, new keys (rows + offsets, one transaction per batch)",
                c,
                cat,
                n,
                |m| m.delivered_total("bench_pg", "postgres"),
            )
            .await?,
        );
        let rows: i64 = client
            .query_one(&format!("SELECT count(*) FROM \"{schema}\".pensions"), &[])
            .await?
            .get(0);
        eprintln!("PostgreSQL table holds {rows} rows");
        eprintln!("phase 5b: plain COPY of the same rows (the PostgreSQL sink's limit)");
        phases.push(copy_limit(&client, &schema).await?);
        // The same keys again at source version 2: every row held, every
        // one an update. The sink starts from the offsets in its table.
        eprintln!("phase 5c: PostgreSQL sink, every key again (updates)");
        let recs = records(engine, n)?;
        fill_canonical_at(&b.bootstrap, &data, &recs, 2).await?;
        drop(recs);
        phases.push(
            delivery_phase(
                "PostgreSQL sink, every key again (updates of held rows)",
                c_pg,
                cat_pg,
                n,
                |m| m.delivered_total("bench_pg", "postgres"),
            )
            .await?,
        );
        let updated: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM \"{schema}\".pensions WHERE _govbus_source_version = 2"
                ),
                &[],
            )
            .await?
            .get(0);
        eprintln!("PostgreSQL table holds {updated} rows at version 2");
        eprintln!("phase 5d: plain UPDATE of the same rows (the limit for updates)");
        phases.push(update_limit(&client, &schema).await?);
        client
            .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .await?;
    }

    println!("Sink throughput, {n} canonical records of {avg} B ({DATASET}), {} partitions, broker {}:\n", b.partitions, b.bootstrap);
    println!("| phase | records/s | CPU µs/record (whole process) | vs consume only |");
    println!("|---|---:|---:|---:|");
    for p in &phases {
        println!(
            "| {} | {:.0} | {:.2} | {:.0} % |",
            p.name,
            p.rate(),
            p.cpu / p.records.max(1) as f64 * 1e6,
            p.rate() / phases[0].rate() * 100.0
        );
    }
    println!();
    against(
        &phases,
        "PostgreSQL sink",
        "plain COPY",
        "PostgreSQL sink against a plain COPY of the same rows",
    );
    against(
        &phases,
        "PostgreSQL sink, every key again",
        "plain UPDATE",
        "PostgreSQL sink's updates against a plain UPDATE of the same rows",
    );
    println!("\nRSS after the webhook phase: {rss:.0} MiB (peak {hwm:.0} MiB, includes the record generator and the receiver).");

    if b.sse_clients > 0 {
        eprintln!("phase 6: live-stream fan-out to {} clients", b.sse_clients);
        let (running, port, server) = serve_live_streams(&config).await?;
        let (t0, cpu0) = (Instant::now(), cpu_seconds());
        let clients: Vec<_> = (0..b.sse_clients)
            .map(|_| tokio::spawn(sse_client(port, b.sse_records)))
            .collect();
        let mut total = 0usize;
        let mut complete = 0usize;
        for c in clients {
            let got = c.await.map_err(|e| anyhow::anyhow!("{e}"))??;
            total += got;
            complete += usize::from(got >= b.sse_records);
        }
        let secs = t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu0;
        server.abort();
        let _ = running.stop.send(true);
        let (_, hwm) = rss_mib();
        println!(
            "\nLive-stream fan-out: {} clients each read {} events from the beginning ({complete} complete): {total} events in {secs:.1} s = {:.0} events/s in all, {:.0} per client; CPU {:.2} µs/event; peak RSS {hwm:.0} MiB.",
            b.sse_clients,
            b.sse_records,
            total as f64 / secs,
            total as f64 / secs / b.sse_clients as f64,
            cpu / total.max(1) as f64 * 1e6
        );
    }

    if b.sse_head_clients > 0 {
        live_tail(b, engine, &config, &data).await?;
    }

    Ok(())
}

/// A sink process serving the `bench_sse` live stream on a free loopback
/// port: its running sinks, the port, the server task.
async fn serve_live_streams(
    config: &SinkConfig,
) -> anyhow::Result<(Running, u16, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let mut c = config.clone();
    c.only = vec!["bench_sse".into()];
    let cat = catalog_with(&[("bench_sse", sub("[sink]\ntype = \"sse\"\n"))])?;
    let creds = Credentials::default().with_token("education", "bench-token-0123456789");
    let mut app = None;
    let running = run_sinks(c, cat, |sinks| {
        app = Some(govbus_sink::sse::router(
            sinks,
            creds,
            Duration::from_secs(15),
        ));
    })
    .await?;
    let app = app.context("live-stream router")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((running, port, server))
}

#[derive(Args)]
pub struct SseClients {
    /// The sink's live-stream port on 127.0.0.1.
    #[arg(long)]
    port: u16,
    /// Clients to connect, from the end of the topic.
    #[arg(long)]
    clients: usize,
    /// Events each client reads before it stops.
    #[arg(long)]
    records: usize,
    /// Seconds after which every client stops, whatever it has read.
    #[arg(long, default_value_t = 180)]
    deadline: u64,
}

/// The client process; killed if the benchmark gives up on it.
struct Fleet(std::process::Child);

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the client process prints on its one line of output.
#[derive(serde::Serialize, serde::Deserialize)]
struct SseClientsDone {
    events: usize,
    complete: usize,
    peak_rss_mib: f64,
    cpu_seconds: f64,
}

/// `bench sse-clients`: `clients` live-stream clients in this process, each
/// reading `records` events; prints [`SseClientsDone`] as JSON.
pub(super) async fn sse_clients(c: SseClients) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(c.deadline);
    // Every client's events, counted as they arrive (a client stopped at the
    // deadline keeps what it read).
    let seen = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..c.clients)
        .map(|_| {
            tokio::spawn(tokio::time::timeout_at(
                deadline,
                sse_client_counted(c.port, "", c.records, seen.clone()),
            ))
        })
        .collect();
    let mut complete = 0;
    for client in clients {
        // A client past the deadline is incomplete.
        if let Ok(got) = client.await.map_err(|e| anyhow::anyhow!("{e}"))? {
            complete += usize::from(got? >= c.records);
        }
    }
    let done = SseClientsDone {
        events: seen.load(Ordering::Relaxed) as usize,
        complete,
        peak_rss_mib: rss_mib().1,
        cpu_seconds: cpu_seconds(),
    };
    println!("{}", serde_json::to_string(&done)?);
    Ok(())
}

/// The live tail: `sse_head_clients` clients connect from the end of the
/// topic (they share one reader), then `sse_head_records` records are
/// published; each client reads them all. The clients run in a process of
/// their own (`bench sse-clients`), so the RSS reported is the sink's (with
/// the benchmark's record generator) and the clients' is reported apart.
async fn live_tail(
    b: &SinkBench,
    engine: &Engine,
    config: &SinkConfig,
    data: &str,
) -> anyhow::Result<()> {
    let n = b.sse_head_clients;
    eprintln!("phase 7: live tail to {n} clients at the head");
    let (running, port, server) = serve_live_streams(config).await?;
    let recs = records(engine, b.sse_head_records)?;
    let (before, _) = rss_mib();
    let exe = std::env::current_exe().context("the benchmark's own executable")?;
    let mut fleet = Fleet(
        std::process::Command::new(exe)
            .args(["bench", "sse-clients", "--port", &port.to_string()])
            .args(["--clients", &n.to_string()])
            .args(["--records", &b.sse_head_records.to_string()])
            .args(["--deadline", "180"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("start the client process")?,
    );
    let mut report = fleet
        .0
        .stdout
        .take()
        .context("the client process's output")?;
    let connected = format!("govbus_sink_sse_clients{{subscription=\"bench_sse\"}} {n}\n");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !running.metrics.render().contains(&connected) {
        if let Some(status) = fleet.0.try_wait()? {
            anyhow::bail!("the client process ended before its clients connected: {status}");
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{n} clients did not connect within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (with_clients, _) = rss_mib();
    let metrics = running.metrics.render();
    let readers = metrics
        .lines()
        .find_map(|l| l.strip_prefix("govbus_sink_sse_readers "))
        .unwrap_or("?")
        .to_owned();
    let (t0, cpu0) = (Instant::now(), cpu_seconds());
    fill_canonical(&b.bootstrap, data, &recs).await?;
    // The clients stop by themselves (all events read, or their deadline).
    let out = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut report, &mut out).map(|_| out)
    })
    .await??;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let status = tokio::task::spawn_blocking(move || fleet.0.wait()).await??;
    anyhow::ensure!(status.success(), "the client process failed: {status}");
    let done: SseClientsDone =
        serde_json::from_slice(&out).context("the client process's report")?;
    let (after, hwm) = rss_mib();
    server.abort();
    let _ = running.stop.send(true);
    let total = done.events;
    anyhow::ensure!(
        done.complete == n,
        "only {} of {n} clients read every event before their deadline ({total} events in all): no figures",
        done.complete
    );
    println!(
        "\nLive tail: {n} clients at the head ({readers} shared reader(s)) each read {} events ({} complete): {total} events in {secs:.1} s = {:.0} events/s in all; sink CPU {:.2} µs/event (the clients' process, connecting included, {:.2} µs/event). Sink process RSS (with the record generator; the clients run in a process of their own): {before:.0} MiB before the clients, {with_clients:.0} MiB with them connected (+{:.0} MiB, {:.1} KiB a client), {after:.0} MiB after the events, peak {hwm:.0} MiB; the clients' process peaked at {:.0} MiB.",
        b.sse_head_records,
        done.complete,
        total as f64 / secs,
        cpu / total.max(1) as f64 * 1e6,
        done.cpu_seconds / total.max(1) as f64 * 1e6,
        with_clients - before,
        (with_clients - before) * 1024.0 / n as f64,
        done.peak_rss_mib,
    );
    Ok(())
}
