//! `govbus bench router`: router throughput against a raw consume→produce
//! pass-through of the same records on the same broker, in one run; and,
//! with `--latency`, routing latency at a fixed rate on librdkafka's mock
//! cluster (Tansu's fetch path holds fetches for seconds; DESIGN.md §7).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use govbus_kafka::headers as h;
use govbus_router::{Metrics, Router, RouterConfig, Topics};
use govbus_validate::{Context, Engine};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::catalog_source;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Router vs raw pass-through throughput (and optional latency on the mock cluster).
    Router(RouterBench),
    /// Gateway (HTTP, validation, acknowledged writes) vs producing the same records directly.
    Gateway(GatewayBench),
    /// Sinks (webhook, PostgreSQL, SSE fan-out) vs consuming the same records, and
    /// delivery latency on the mock cluster.
    Sink(super::bench_sink::SinkBench),
    /// PostgreSQL change capture: bulk throughput and commit → acknowledged lag.
    Capture(super::bench_capture::CaptureBench),
    /// Live interfaces: catch-up, lookups and batch lookups on a large state,
    /// against a PostgreSQL table behind an equivalent HTTP handler.
    Query(super::bench_query::QueryBench),
    /// The live-tail phase's clients, run by `bench sink` as a process of
    /// their own so that the sink's memory is measured without theirs.
    #[command(hide = true)]
    SseClients(super::bench_sink::SseClients),
}

#[derive(Args)]
pub struct GatewayBench {
    /// Broker to measure against.
    #[arg(long, env = "GOVBUS_BOOTSTRAP")]
    bootstrap: String,
    /// Records to publish.
    #[arg(long, default_value_t = 100_000)]
    records: usize,
    /// Records per request.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
}

#[derive(Args)]
pub struct RouterBench {
    /// Broker to measure against (e.g. a Tansu started by scripts/bench-router).
    #[arg(long, env = "GOVBUS_BOOTSTRAP")]
    bootstrap: String,
    /// Records per phase.
    #[arg(long, default_value_t = 200_000)]
    records: usize,
    /// Partitions of every topic.
    #[arg(long, default_value_t = 8)]
    partitions: i32,
    /// Also measure routing latency at this rate (records/s) for 10 s, on
    /// librdkafka's mock cluster and then on the broker under test.
    #[arg(long)]
    latency: Option<u32>,
    /// Also run this command as a peer router over the same Avro input, in
    /// the same run (e.g. `python3 scripts/peer_router.py`); it gets
    /// BOOTSTRAP INPUT DATA DLQ RECORDS GROUP SCHEMA_ID AVSC appended and
    /// prints `{"seconds", "cpu_seconds", "records"}` when it has settled
    /// every record.
    #[arg(long)]
    peer: Option<String>,
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cmd {
        BenchCommand::Router(b) => rt.block_on(router_bench(b))?,
        BenchCommand::Gateway(b) => rt.block_on(gateway_bench(b))?,
        BenchCommand::Sink(b) => rt.block_on(super::bench_sink::run(b))?,
        BenchCommand::Capture(b) => rt.block_on(super::bench_capture::run(b))?,
        BenchCommand::Query(b) => rt.block_on(super::bench_query::run(b))?,
        BenchCommand::SseClients(c) => rt.block_on(super::bench_sink::sse_clients(c))?,
    }
    Ok(ExitCode::SUCCESS)
}

/// CPU seconds (user + system) used by this process so far.
pub(crate) fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15 (1-based).
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Resident set size now and at its peak, in MiB.
pub(crate) fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
}

pub(crate) struct Phase {
    pub(crate) name: String,
    pub(crate) seconds: f64,
    pub(crate) cpu: f64,
    pub(crate) records: usize,
}

impl Phase {
    pub(crate) fn rate(&self) -> f64 {
        self.records as f64 / self.seconds.max(1e-9)
    }
}

pub(crate) async fn create(
    bootstrap: &str,
    names: &[String],
    partitions: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1)))
        .collect();
    admin
        .create_topics(
            &topics,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?;
    Ok(())
}

/// `n` pension payments as (key, Avro value, JSON value).
pub(crate) fn records(engine: &Engine, n: usize) -> anyhow::Result<Vec<Rec>> {
    let ctx = Context::now();
    let ds = engine
        .dataset("hrss.pension_payment")
        .context("the catalog has no hrss.pension_payment")?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let json = format!(
            r#"{{"payment_id":"PP{i:012}","recipient_id_number":"11010519491231002X","recipient_name":"张建国","pension_type":"ENTERPRISE_EMPLOYEE","pay_month":"2026-10","amount":"{}.{:02}","paid_at":"2026-10-15T10:00:00+08:00"}}"#,
            1000 + i % 5000,
            i % 100
        );
        let a = ds
            .validate_json(json.as_bytes(), &ctx)
            .map_err(|r| anyhow::anyhow!("{r}"))?;
        out.push((a.key, a.value, json));
    }
    Ok(out)
}

/// A generated record: key, canonical Avro value, the same record as JSON.
pub(crate) type Rec = (String, Vec<u8>, String);

/// Which form of a generated record goes on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Payload {
    /// The Confluent-framed Avro value.
    Avro,
    /// The JSON text.
    Json,
}

/// Produces `records` to `topic` (batches form with `linger.ms` 20), with
/// the headers `headers(i, record)` gives, and waits for every acknowledgement.
pub(crate) async fn fill_with(
    bootstrap: &str,
    topic: &str,
    records: &[Rec],
    payload: Payload,
    headers: impl Fn(usize, &Rec) -> OwnedHeaders,
) -> anyhow::Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .create()?;
    for (c, chunk) in records.chunks(20_000).enumerate() {
        let mut pending = Vec::with_capacity(chunk.len());
        for (i, r) in chunk.iter().enumerate() {
            let value = match payload {
                Payload::Avro => r.1.as_slice(),
                Payload::Json => r.2.as_bytes(),
            };
            let rec = FutureRecord::to(topic)
                .key(r.0.as_bytes())
                .payload(value)
                .headers(headers(c * 20_000 + i, r));
            pending.push(producer.send_result(rec).map_err(|(e, _)| e)?);
        }
        for p in pending {
            p.await
                .map_err(|_| anyhow::anyhow!("canceled"))?
                .map_err(|(e, _)| e)?;
        }
    }
    Ok(())
}

async fn fill(bootstrap: &str, topic: &str, records: &[Rec], json: bool) -> anyhow::Result<()> {
    if json {
        fill_with(bootstrap, topic, records, Payload::Json, |_, _| {
            OwnedHeaders::new().insert(Header {
                key: h::CE_TYPE,
                value: Some("hrss.pension_payment"),
            })
        })
        .await
    } else {
        fill_with(bootstrap, topic, records, Payload::Avro, |_, _| {
            OwnedHeaders::new()
        })
        .await
    }
}

/// The value at quantile `q` of `sorted` (`missing` when it is empty).
pub(crate) fn quantile<T: Copy>(sorted: &[T], q: f64, missing: T) -> T {
    sorted
        .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(missing)
}

/// Raw consume → produce of the same records with no work in between: every
/// record is handed to the producer as soon as it is consumed, acknowledgements
/// are awaited only when librdkafka's queue is full and at the end. The
/// physical limit of a consume → produce pipeline on this broker and machine.
async fn passthrough(
    bootstrap: &str,
    input: &str,
    output: &str,
    n: usize,
) -> anyhow::Result<Phase> {
    let consumer: StreamConsumer =
        govbus_kafka::config::consumer(bootstrap, &format!("bench-pass-{}", std::process::id()))
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .create()?;
    consumer.subscribe(&[input])?;
    let producer: FutureProducer = govbus_kafka::config::producer(bootstrap).create()?;
    let mut pending = std::collections::VecDeque::new();
    let (mut started, mut cpu0) = (None, 0.0);
    for _ in 0..n {
        let m = consumer.recv().await?;
        if started.is_none() {
            started = Some(Instant::now());
            cpu0 = cpu_seconds();
        }
        let mut rec = FutureRecord::to(output).payload(m.payload().unwrap_or_default());
        if let Some(k) = m.key() {
            rec = rec.key(k);
        }
        if let Some(hs) = m.headers() {
            rec = rec.headers(hs.detach());
        }
        loop {
            match producer.send_result(rec) {
                Ok(f) => {
                    pending.push_back(f);
                    break;
                }
                Err((_, r)) => {
                    rec = r;
                    match pending.pop_front() {
                        Some(f) => {
                            f.await
                                .map_err(|_| anyhow::anyhow!("canceled"))?
                                .map_err(|(e, _)| e)?;
                        }
                        None => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
            }
        }
        let _ = consumer.store_offset_from_message(&m);
    }
    for f in pending {
        f.await
            .map_err(|_| anyhow::anyhow!("canceled"))?
            .map_err(|(e, _)| e)?;
    }
    let started = started.unwrap_or_else(Instant::now);
    Ok(Phase {
        name: "raw pass-through (Avro)".into(),
        seconds: started.elapsed().as_secs_f64(),
        cpu: cpu_seconds() - cpu0,
        records: n,
    })
}

/// Runs the peer router `cmd` (split on spaces) with `args` appended and
/// reads the figures it prints; its CPU is its own (every thread), as the
/// router's phase counts its whole process.
async fn peer_phase(cmd: &str, args: &[String]) -> anyhow::Result<Phase> {
    let mut words: Vec<String> = cmd.split_whitespace().map(str::to_owned).collect();
    anyhow::ensure!(!words.is_empty(), "--peer is empty");
    let program = words.remove(0);
    words.extend(args.iter().cloned());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(program)
            .args(words)
            .stderr(std::process::Stdio::inherit())
            .output()
    })
    .await?
    .with_context(|| format!("could not run the peer `{cmd}`"))?;
    anyhow::ensure!(
        out.status.success(),
        "the peer `{cmd}` failed: {}",
        out.status
    );
    let line = String::from_utf8_lossy(&out.stdout);
    let figures: serde_json::Value = serde_json::from_str(line.trim().lines().last().unwrap_or(""))
        .with_context(|| format!("the peer printed no figures: {line}"))?;
    let number = |k: &str| {
        figures[k]
            .as_f64()
            .with_context(|| format!("the peer printed no `{k}`"))
    };
    // Every generated record is valid: a peer that rejects any is not doing the router's job.
    anyhow::ensure!(
        figures["rejected"]
            .as_object()
            .is_some_and(|r| r.is_empty()),
        "the peer rejected records the router accepts: {}",
        figures["rejected"]
    );
    Ok(Phase {
        name: format!("peer: {cmd}"),
        seconds: number("seconds")?,
        cpu: number("cpu_seconds")?,
        records: number("records")? as usize,
    })
}

/// Records decided (routed or rejected) and records settled (written,
/// acknowledged, offset stored).
fn handled(metrics: &Metrics) -> (usize, usize) {
    let text = metrics.render();
    let sum = |prefixes: &[&str]| {
        text.lines()
            .filter(|l| prefixes.iter().any(|p| l.starts_with(p)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
            .sum()
    };
    (
        sum(&[
            "govbus_router_records_routed_total{",
            "govbus_router_records_rejected_total{",
        ]),
        sum(&["govbus_router_records_settled_total"]),
    )
}

/// The router over `topics`, timed from its first decided record to its
/// last acknowledged one (its write acknowledged, its offset stored), as
/// the pass-through is timed to its last acknowledgement.
async fn router_phase(
    engine: Arc<Engine>,
    bootstrap: &str,
    topics: Topics,
    n: usize,
    name: &str,
) -> anyhow::Result<Phase> {
    let mut config = RouterConfig::new(bootstrap);
    config.topics = topics;
    config.group = format!("bench-router-{}-{name}", std::process::id());
    config.client_overrides = vec![
        ("session.timeout.ms".into(), "6000".into()),
        ("heartbeat.interval.ms".into(), "500".into()),
    ];
    let metrics = Metrics::new();
    let router = Router::new(engine, config, metrics.clone());
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(router.run(async move {
        let _ = rx.wait_for(|s| *s).await;
    }));
    let (mut started, mut cpu0) = (None, 0.0);
    let limit = Instant::now() + Duration::from_secs(600);
    // The longest time without a settled record once the phase started,
    // and when it began: a stall shows here, not hidden in the rate.
    let (mut last, mut progress_at) = (0, Instant::now());
    let mut stall = (Duration::ZERO, Duration::ZERO, 0);
    // When the first records were settled, and how many.
    let mut first_settled: Option<(Instant, usize)> = None;
    loop {
        let (decided, settled) = handled(&metrics);
        let now = Instant::now();
        if decided > 0 && started.is_none() {
            started = Some(now);
            cpu0 = cpu_seconds();
            progress_at = now;
        }
        if let Some(t0) = started {
            if settled > 0 && first_settled.is_none() {
                first_settled = Some((now, settled));
            }
            if settled != last || settled >= n {
                if now - progress_at > stall.0 {
                    stall = (now - progress_at, progress_at - t0, last);
                }
                (last, progress_at) = (settled, now);
            }
        }
        if settled >= n || now > limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let started = started.unwrap_or_else(Instant::now);
    let end = Instant::now();
    let first = first_settled.map_or(0, |(t, _)| (t - started).as_millis());
    let steady = first_settled.map_or(0.0, |(t, k)| {
        n.saturating_sub(k) as f64 / (end - t).as_secs_f64().max(1e-9)
    });
    println!(
        "{name}: first settled record {first} ms after the first decided one (start-up); from then on {steady:.0} records/s; longest wait for a settled record {} ms, from {} ms ({} records settled by then)",
        stall.0.as_millis(),
        stall.1.as_millis(),
        stall.2
    );
    let phase = Phase {
        name: name.to_owned(),
        seconds: started.elapsed().as_secs_f64(),
        cpu: cpu_seconds() - cpu0,
        records: handled(&metrics).1,
    };
    let _ = stop.send(true);
    task.await??;
    Ok(phase)
}

async fn router_bench(b: RouterBench) -> anyhow::Result<()> {
    let catalog = catalog_source::load(None).map_err(|p| anyhow::anyhow!("{p}"))?;
    let engine = Arc::new(Engine::new(&catalog)?);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let avro = Topics::new(format!("bench{stamp}a."));
    let json = Topics::new(format!("bench{stamp}j."));
    let pass_out = format!("bench{stamp}.passthrough");
    let peer_data = format!("bench{stamp}p.data");
    let peer_dlq = format!("bench{stamp}p.dlq");
    let names = vec![
        avro.ingest("hrss"),
        json.ingest("hrss"),
        pass_out.clone(),
        peer_data.clone(),
        peer_dlq.clone(),
        avro.data("hrss.pension_payment"),
        json.data("hrss.pension_payment"),
        avro.dlq("hrss"),
        json.dlq("hrss"),
    ];
    create(&b.bootstrap, &names, b.partitions).await?;
    eprintln!(
        "generating and publishing {} records twice (Avro, JSON)...",
        b.records
    );
    let recs = records(&engine, b.records)?;
    let avg = recs.iter().map(|r| r.1.len()).sum::<usize>() / recs.len().max(1);
    fill(&b.bootstrap, &avro.ingest("hrss"), &recs, false).await?;
    fill(&b.bootstrap, &json.ingest("hrss"), &recs, true).await?;
    drop(recs);
    eprintln!("phase 1: raw pass-through");
    let pass = passthrough(&b.bootstrap, &avro.ingest("hrss"), &pass_out, b.records).await?;
    eprintln!("phase 2: router, Avro input");
    let avro_input = avro.ingest("hrss");
    let r_avro = router_phase(
        engine.clone(),
        &b.bootstrap,
        avro,
        b.records,
        "router (Avro input)",
    )
    .await?;
    let (rss, hwm) = rss_mib();
    // The peer reads the Avro router's input, in a group of its own.
    let peer = match &b.peer {
        Some(cmd) => {
            eprintln!("phase 2b: peer router `{cmd}`, Avro input");
            let ds = catalog
                .dataset("hrss.pension_payment")
                .context("the catalog has no hrss.pension_payment")?;
            let latest = ds.latest();
            let avsc = std::env::temp_dir().join(format!("bench{stamp}-pension.avsc"));
            std::fs::write(&avsc, &latest.source)?;
            let p = peer_phase(
                cmd,
                &[
                    b.bootstrap.clone(),
                    avro_input.clone(),
                    peer_data,
                    peer_dlq,
                    b.records.to_string(),
                    format!("bench-peer-{stamp}"),
                    latest.id.0.to_string(),
                    avsc.display().to_string(),
                ],
            )
            .await?;
            let _ = std::fs::remove_file(&avsc);
            Some(p)
        }
        None => None,
    };
    eprintln!("phase 3: router, JSON input");
    let r_json = router_phase(
        engine.clone(),
        &b.bootstrap,
        json,
        b.records,
        "router (JSON input)",
    )
    .await?;

    println!("Router throughput, {} records of {avg} B (hrss.pension_payment), {} partitions, broker {}:\n", b.records, b.partitions, b.bootstrap);
    println!("| phase | records/s | CPU µs/record (whole process) | vs pass-through |");
    println!("|---|---:|---:|---:|");
    for p in [Some(&pass), Some(&r_avro), peer.as_ref(), Some(&r_json)]
        .into_iter()
        .flatten()
    {
        println!(
            "| {} | {:.0} | {:.2} | {:.0} % |",
            p.name,
            p.rate(),
            p.cpu / p.records as f64 * 1e6,
            p.rate() / pass.rate() * 100.0
        );
    }
    println!("\nRSS after the Avro router phase: {rss:.0} MiB (peak {hwm:.0} MiB, includes the record generator).");
    if let Some(p) = &peer {
        let per = |x: &Phase| x.cpu / x.records as f64;
        println!(
            "\ngovbus router (Avro) against the peer: {:.2}× the throughput, {:.2}× less CPU per record.",
            r_avro.rate() / p.rate(),
            per(p) / per(&r_avro)
        );
    }
    if let Some(rate) = b.latency {
        latency(engine.clone(), rate, None).await?;
        latency(engine, rate, Some(&b.bootstrap)).await?;
    }
    Ok(())
}

/// Routes `rate` records/s for 10 s on the mock cluster (or on the broker
/// at `real`) and reports publish → routed-and-consumed latency from
/// `ce_time` (ms precision).
async fn latency(engine: Arc<Engine>, rate: u32, real: Option<&str>) -> anyhow::Result<()> {
    // The mock lives as long as the phase.
    let mut mock = None;
    let (bootstrap, topics, broker) = match real {
        None => {
            let cluster = rdkafka::mocking::MockCluster::new(1)?;
            let bootstrap = cluster.bootstrap_servers();
            let topics = Topics::new("lat.");
            cluster.create_topic(&topics.ingest("hrss"), 4, 1)?;
            cluster.create_topic(&topics.data("hrss.pension_payment"), 4, 1)?;
            cluster.create_topic(&topics.dlq("hrss"), 1, 1)?;
            mock = Some(cluster);
            (bootstrap, topics, "the mock cluster")
        }
        Some(bootstrap) => {
            let topics = Topics::new(format!("lat{}.", std::process::id()));
            govbus_kafka::admin::ensure_topics(
                bootstrap,
                &[
                    (topics.ingest("hrss"), 4),
                    (topics.data("hrss.pension_payment"), 4),
                    (topics.dlq("hrss"), 1),
                ],
            )
            .await;
            (bootstrap.to_owned(), topics, "the broker under test")
        }
    };
    let mut config = RouterConfig::new(bootstrap.clone());
    config.topics = topics.clone();
    config.group = format!("{}router", topics.prefix());
    config.create_topics = false;
    config.linger = Duration::from_millis(1);
    config.client_overrides = vec![
        ("fetch.wait.max.ms".into(), "1".into()),
        ("linger.ms".into(), "1".into()),
        ("session.timeout.ms".into(), "6000".into()),
    ];
    let metrics = Metrics::new();
    let router = Router::new(engine.clone(), config, metrics.clone());
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    let joining = Instant::now();
    let task = tokio::spawn(router.run(async move {
        let _ = rx.wait_for(|s| *s).await;
    }));
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", format!("{}reader", topics.prefix()))
        .set("fetch.wait.max.ms", "1")
        .set("auto.offset.reset", "latest")
        .set("session.timeout.ms", "6000")
        .create()?;
    consumer.subscribe(&[topics.data("hrss.pension_payment").as_str()])?;
    // Start-up is reported apart from steady state: records are sent only
    // once the router owns every ingest partition and the reader every data
    // partition (a fixed sleep before used to let records wait for a join).
    let join_limit = Instant::now() + Duration::from_secs(60);
    loop {
        // The reader's group join happens inside its poll.
        let _ = tokio::time::timeout(Duration::from_millis(50), consumer.recv()).await;
        let reader = consumer.assignment().map_or(0, |a| a.count());
        if metrics.assigned_partitions() >= 4 && reader >= 4 {
            break;
        }
        if Instant::now() > join_limit {
            anyhow::bail!(
                "groups not joined within 60 s (router {} of 4 partitions, reader {reader} of 4)",
                metrics.assigned_partitions()
            );
        }
    }
    eprintln!(
        "start-up: router and reader own their partitions after {:.1} s",
        joining.elapsed().as_secs_f64()
    );
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "1")
        .create()?;
    let recs = records(&engine, (rate * 10) as usize)?;
    let ingest = topics.ingest("hrss");
    let sender = tokio::spawn(async move {
        let start = Instant::now();
        for (i, (key, value, _)) in recs.iter().enumerate() {
            let due = Duration::from_secs_f64(i as f64 / f64::from(rate));
            if let Some(w) = due.checked_sub(start.elapsed()) {
                tokio::time::sleep(w).await;
            }
            let now = govbus_catalog::time::format_rfc3339_millis(Context::now().now_millis);
            let hs = OwnedHeaders::new().insert(Header {
                key: h::CE_TIME,
                value: Some(now.as_str()),
            });
            let _ = producer.send_result(
                FutureRecord::to(&ingest)
                    .key(key.as_bytes())
                    .payload(value.as_slice())
                    .headers(hs),
            );
        }
        producer
    });
    let mut lat = Vec::new();
    // (sent at ms, latency ms, partition) of every record.
    let mut sent_at: Vec<(i64, i64, i32)> = Vec::new();
    // (send → router's hand-over, hand-over → read) of every record, ms.
    let mut split: Vec<(i64, i64)> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while lat.len() < (rate * 10) as usize {
        let Ok(Ok(m)) = tokio::time::timeout_at(deadline, consumer.recv()).await else {
            break;
        };
        let t = m
            .headers()
            .and_then(|hs| h::get_str(hs, h::CE_TIME))
            .and_then(govbus_catalog::time::parse_rfc3339_micros);
        if let Some(t) = t {
            let took = Context::now().now_millis - t / 1000;
            lat.push(took);
            sent_at.push((t / 1000, took, m.partition()));
            // The routed record's own timestamp is when the router handed
            // it to its producer: before it, the ingest side and the router;
            // after it, the router's write and the reader's fetch.
            if let Some(routed) = m.timestamp().to_millis() {
                split.push((routed - t / 1000, took - (routed - t / 1000)));
            }
        }
    }
    let _ = sender.await;
    let _ = stop.send(true);
    let _ = task.await;
    // Where the tail is: the records over 50 ms, by when they were sent
    // (a stall shows as one window, a slow partition as one partition).
    let first = sent_at.iter().map(|(t, _, _)| *t).min().unwrap_or(0);
    let mut slow: Vec<&(i64, i64, i32)> = sent_at.iter().filter(|(_, l, _)| *l > 50).collect();
    slow.sort_unstable();
    if let (Some(a), Some(b)) = (slow.first(), slow.last()) {
        let mut parts: Vec<i32> = slow.iter().map(|(_, _, p)| *p).collect();
        parts.sort_unstable();
        parts.dedup();
        let mut before: Vec<i64> = split
            .iter()
            .filter(|(x, y)| x + y > 50)
            .map(|s| s.0)
            .collect();
        let mut after: Vec<i64> = split
            .iter()
            .filter(|(x, y)| x + y > 50)
            .map(|s| s.1)
            .collect();
        before.sort_unstable();
        after.sort_unstable();
        eprintln!(
            "tail: {} records over 50 ms, sent from {} ms to {} ms into the phase, partitions {parts:?}; of their latency, send → router's hand-over p50 {} ms, hand-over → read p50 {} ms",
            slow.len(),
            a.0 - first,
            b.0 - first,
            quantile(&before, 0.5, -1),
            quantile(&after, 0.5, -1)
        );
    }
    // The first and the second half of the phase apart: the mock broker
    // finds a fetch's offset by walking the partition's message sets
    // (librdkafka's rd_kafka_mock_msgset_find), so its fetches slow down as
    // the phase fills the log.
    let half = first + 5_000;
    for (name, early) in [("first", true), ("second", false)] {
        let mut part: Vec<i64> = sent_at
            .iter()
            .filter(|(t, _, _)| (*t < half) == early)
            .map(|(_, l, _)| *l)
            .collect();
        part.sort_unstable();
        eprintln!(
            "{name} 5 s: {} records, p50 {} ms, p99 {} ms, max {} ms",
            part.len(),
            quantile(&part, 0.5, -1),
            quantile(&part, 0.99, -1),
            part.last().copied().unwrap_or(-1)
        );
    }
    lat.sort_unstable();
    let pct = |p: f64| quantile(&lat, p, -1);
    drop(mock);
    println!(
        "\nLatency on {broker} at {rate} records/s for 10 s ({} measured): p50 {} ms, p99 {} ms, max {} ms (ms precision, includes the fetch wait).",
        lat.len(),
        pct(0.5),
        pct(0.99),
        lat.last().copied().unwrap_or(-1)
    );
    Ok(())
}

/// Publishes the same records twice: (a) straight to the broker with an
/// acknowledged producer, in batches of `batch`; (b) through the gateway over
/// HTTP on loopback, `clients` concurrent requests of `batch` records each,
/// every response after the broker's acknowledgement.
async fn gateway_bench(b: GatewayBench) -> anyhow::Result<()> {
    use govbus_gateway::{Credentials, Gateway, GatewayConfig};
    let catalog = catalog_source::load(None).map_err(|p| anyhow::anyhow!("{p}"))?;
    let engine = Arc::new(Engine::new(&catalog)?);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let direct = Topics::new(format!("gwbench{stamp}d."));
    let via = Topics::new(format!("gwbench{stamp}g."));
    create(
        &b.bootstrap,
        &[direct.ingest("hrss"), via.ingest("hrss")],
        8,
    )
    .await?;
    let recs = records(&engine, b.records)?;
    let batch = b.batch.max(1);

    // (a) direct, acknowledged per batch like the gateway's responses.
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let producer: FutureProducer = govbus_kafka::config::producer(&b.bootstrap)
        .set("message.timeout.ms", "30000")
        .create()?;
    let topic = direct.ingest("hrss");
    let mut in_flight = std::collections::VecDeque::new();
    for chunk in recs.chunks(batch) {
        let mut acks = Vec::with_capacity(chunk.len());
        for (key, value, _) in chunk {
            acks.push(
                producer
                    .send_result(
                        FutureRecord::to(&topic)
                            .key(key.as_bytes())
                            .payload(value.as_slice()),
                    )
                    .map_err(|(e, _)| e)?,
            );
        }
        in_flight.push_back(acks);
        // As many batches in flight as the gateway has clients.
        while in_flight.len() >= b.clients {
            for a in in_flight.pop_front().unwrap_or_default() {
                a.await
                    .map_err(|_| anyhow::anyhow!("canceled"))?
                    .map_err(|(e, _)| e)?;
            }
        }
    }
    for acks in in_flight {
        for a in acks {
            a.await
                .map_err(|_| anyhow::anyhow!("canceled"))?
                .map_err(|(e, _)| e)?;
        }
    }
    let direct_phase = Phase {
        name: "direct produce (Avro, acks)".into(),
        seconds: t0.elapsed().as_secs_f64(),
        cpu: cpu_seconds() - cpu0,
        records: recs.len(),
    };

    // (b) through the gateway.
    let mut config = GatewayConfig::new(b.bootstrap.clone());
    config.topics = via.clone();
    let gateway = Arc::new(Gateway::new(
        engine.clone(),
        Credentials::default().with_token("hrss", "bench-token"),
        config,
    )?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!(
        "http://{}/v1/datasets/hrss.pension_payment/records",
        listener.local_addr()?
    );
    tokio::spawn(govbus_gateway::serve(
        listener,
        gateway,
        std::future::pending(),
    ));
    let bodies: Vec<Vec<u8>> = recs
        .chunks(batch)
        .map(|c| {
            format!(
                "[{}]",
                c.iter().map(|r| r.2.as_str()).collect::<Vec<_>>().join(",")
            )
            .into_bytes()
        })
        .collect();
    drop(recs);
    let queue = Arc::new(std::sync::Mutex::new(
        bodies
            .into_iter()
            .collect::<std::collections::VecDeque<_>>(),
    ));
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..b.clients {
        let (queue, url) = (queue.clone(), url.clone());
        clients.push(tokio::task::spawn_blocking(
            move || -> anyhow::Result<usize> {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                let mut accepted = 0;
                loop {
                    let Some(body) = queue.lock().ok().and_then(|mut q| q.pop_front()) else {
                        return Ok(accepted);
                    };
                    let mut resp = agent
                        .post(&url)
                        .header("authorization", "Bearer bench-token")
                        .header("content-type", "application/json")
                        .send(&body[..])?;
                    let v: serde_json::Value =
                        serde_json::from_str(&resp.body_mut().read_to_string()?)?;
                    accepted += v["accepted"].as_u64().unwrap_or(0) as usize;
                }
            },
        ));
    }
    let mut accepted = 0;
    for c in clients {
        accepted += c.await??;
    }
    let via_phase = Phase {
        name: format!(
            "gateway (JSON over HTTP, {batch}/request, {} clients)",
            b.clients
        ),
        seconds: t0.elapsed().as_secs_f64(),
        cpu: cpu_seconds() - cpu0,
        records: accepted,
    };
    println!(
        "Gateway throughput, {} pension payments, broker {}:\n",
        b.records, b.bootstrap
    );
    println!("| phase | records/s | CPU µs/record (whole process) | vs direct |");
    println!("|---|---:|---:|---:|");
    for p in [&direct_phase, &via_phase] {
        println!(
            "| {} | {:.0} | {:.2} | {:.0} % |",
            p.name,
            p.rate(),
            p.cpu / p.records.max(1) as f64 * 1e6,
            p.rate() / direct_phase.rate() * 100.0
        );
    }
    Ok(())
}
