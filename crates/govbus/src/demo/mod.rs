//! `govbus demo`: the whole bus on one machine with nothing installed.
//!
//! Starts every component on the embedded broker (or a given one), plays
//! five departments' systems publishing through the gateway, Kafka and
//! table dumps (with some invalid records from each), runs subscribers on
//! every kind of sink and the anti-fraud app, shows it all live, and at the
//! end checks the alerts against the planted cases and writes the
//! department scorecards.

mod counter;
mod databases;
mod generate;
mod sources;
mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use govbus_fraud::Rule;
use serde::Serialize;
use serde_json::Value as Json;

use crate::up::{Extras, FraudSection, QuerySection, System, UpConfig};
pub use generate::Planted;

#[derive(Args)]
pub struct DemoArgs {
    /// How long to publish; then the demo drains, checks and reports. Ctrl-C stops earlier.
    #[arg(long, default_value = "2m", value_parser = crate::cmd::sink::humantime_duration)]
    duration: Duration,
    /// Records per second of the busiest stream (pension payments).
    #[arg(long, default_value_t = 20)]
    rate: usize,
    /// Fraud cases planted per rule.
    #[arg(long, default_value_t = 3)]
    fraud_cases: usize,
    /// Seed of the synthetic city (same seed, same records).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Working directory: table dumps, adapter state, delivered files, the report.
    #[arg(long, default_value = "govbus-demo")]
    dir: PathBuf,
    /// First of five ports: gateway, registry, metrics, live streams, live interfaces. 0: any free ports.
    #[arg(long, default_value_t = 8080)]
    port_base: u16,
    /// Use this broker instead of the embedded one.
    #[arg(long)]
    bootstrap: Option<String>,
    /// Topic namespace prefix (with --bootstrap, to keep runs apart).
    #[arg(long, default_value = "")]
    topic_prefix: String,
    /// A PostgreSQL database (libpq connection string, a role with
    /// REPLICATION, `wal_level = logical`): HRSS's contributions are written
    /// to a table there and captured from the WAL, and the PostgreSQL
    /// subscription delivers into it.
    #[arg(long, env = "GOVBUS_POSTGRES")]
    postgres: Option<String>,
    /// A MySQL or MariaDB database (mysql://user@host:3306/database, row-based
    /// binlog): market regulation's enterprise registrations are written to a
    /// table there and captured from the binlog.
    #[arg(long, env = "GOVBUS_MYSQL")]
    mysql: Option<String>,
    /// Do not run the anti-fraud app in this process (run `govbus fraud` yourself).
    #[arg(long)]
    external_fraud_app: bool,
    /// Print a status line every few seconds instead of the live screen.
    #[arg(long)]
    plain: bool,
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    govbus_sink::run::now_ms()
}

/// The alerts seen in `data.hrss.fraud_alert`.
#[derive(Debug, Default)]
pub struct Seen {
    /// alert id → (rule, benefit dataset, benefit record), for every alert
    /// ever published (one raised by mistake and withdrawn later was still
    /// seen by investigators).
    pub alerts: BTreeMap<String, (String, String, String)>,
    /// alert id → its last publication, without `detected_at`.
    pub last: BTreeMap<String, Json>,
    /// Publications equal to the one before them (status and content): duplicates.
    pub repeats: u64,
    /// Publications that changed a published alert (evidence, status).
    pub updates: u64,
    /// Benefit record → when its first alert arrived.
    pub arrived: BTreeMap<String, Instant>,
}

impl Seen {
    /// Takes one publication of an alert: a repeat of the last one, an
    /// update of it, or a new alert.
    pub fn take(&mut self, mut body: Json) {
        let text = |v: &Json, k: &str| v.get(k).and_then(Json::as_str).unwrap_or("").to_owned();
        if let Some(o) = body.as_object_mut() {
            o.remove("detected_at");
        }
        let id = text(&body, "alert_id");
        match self.last.get(&id) {
            Some(prev) if *prev == body => self.repeats += 1,
            Some(_) => self.updates += 1,
            None => {}
        }
        if text(&body, "status") != "withdrawn" {
            self.arrived
                .entry(text(&body, "benefit_record"))
                .or_insert_with(Instant::now);
        }
        self.alerts.insert(
            id.clone(),
            (
                text(&body, "rule"),
                text(&body, "benefit_dataset"),
                text(&body, "benefit_record"),
            ),
        );
        self.last.insert(id, body);
    }
}

/// Outcome of the check at the end.
#[derive(Debug, Serialize)]
struct Verdict {
    planted: BTreeMap<&'static str, usize>,
    found: BTreeMap<&'static str, usize>,
    missing: Vec<Planted>,
    unexpected: usize,
    /// Publications equal to the alert's previous one.
    duplicates: u64,
    /// Publications that changed an alert already published (evidence or status).
    updates: u64,
    /// From the start of the second in which a case's last record was
    /// published to its alert on `data.hrss.fraud_alert`, milliseconds.
    detection_ms: Latency,
    sent: BTreeMap<&'static str, SentCount>,
    report: PathBuf,
    /// The pension counter's live verification, when it ran.
    counter: Option<counter::CounterCheck>,
}

#[derive(Debug, Default, Serialize)]
struct Latency {
    p50: u64,
    max: u64,
    cases: usize,
}

fn detection(seen: &Seen, completes: &BTreeMap<String, usize>, rounds: &[Instant]) -> Latency {
    let mut ms: Vec<u64> = completes
        .iter()
        .filter_map(|(record, round)| {
            let arrived = seen.arrived.get(record)?;
            let sent = rounds.get(*round)?;
            Some(arrived.saturating_duration_since(*sent).as_millis() as u64)
        })
        .collect();
    ms.sort_unstable();
    Latency {
        p50: ms.get(ms.len() / 2).copied().unwrap_or(0),
        max: ms.last().copied().unwrap_or(0),
        cases: ms.len(),
    }
}

#[derive(Debug, Serialize)]
struct SentCount {
    path: generate::Path,
    valid: u64,
    invalid: u64,
}

fn verdict(
    planted: &[Planted],
    seen: &Seen,
) -> (BTreeMap<&'static str, usize>, Vec<Planted>, usize) {
    // Found: planted and standing at the end. Unexpected: every other
    // alert ever published, standing or withdrawn.
    let standing = |id: &String| {
        seen.last
            .get(id)
            .is_some_and(|b| b.get("status").and_then(Json::as_str) != Some("withdrawn"))
    };
    let found_keys: BTreeSet<(String, String, String)> = seen
        .alerts
        .iter()
        .filter(|(id, _)| standing(id))
        .map(|(_, k)| k.clone())
        .collect();
    let published: BTreeSet<(String, String, String)> = seen.alerts.values().cloned().collect();
    let mut found: BTreeMap<&'static str, usize> =
        Rule::ALL.iter().map(|r| (r.code(), 0)).collect();
    let mut missing = Vec::new();
    for p in planted {
        let key = (
            p.rule.code().to_owned(),
            p.benefit_dataset.to_owned(),
            p.benefit_record.clone(),
        );
        if found_keys.contains(&key) {
            *found.entry(p.rule.code()).or_default() += 1;
        } else {
            missing.push(p.clone());
        }
    }
    let expected: BTreeSet<(String, String, String)> = planted
        .iter()
        .map(|p| {
            (
                p.rule.code().to_owned(),
                p.benefit_dataset.to_owned(),
                p.benefit_record.clone(),
            )
        })
        .collect();
    let unexpected = published.difference(&expected).count();
    (found, missing, unexpected)
}

fn port(base: u16, offset: u16) -> SocketAddr {
    let p = if base == 0 { 0 } else { base + offset };
    SocketAddr::from(([127, 0, 0, 1], p))
}

fn token(department: &str, seed: u64) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(format!("{department}/{seed}/{}", now_ms()).as_bytes());
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let catalog = crate::catalog_source::load_checked(None)?;
    // A fresh city each run: the adapters' state belongs to the broker's data.
    for sub in ["state", "dumps", "var", "report"] {
        let p = args.dir.join(sub);
        if p.exists() {
            std::fs::remove_dir_all(&p).with_context(|| format!("clear {}", p.display()))?;
        }
    }
    std::fs::create_dir_all(&args.dir).with_context(|| format!("create {}", args.dir.display()))?;
    let dir = args.dir.canonicalize()?;
    // The file sink writes below the working directory (the catalog's relative path).
    std::env::set_current_dir(&dir)?;

    let gateway_tokens = vec![
        (
            "civil_affairs".to_owned(),
            token("civil_affairs", args.seed),
        ),
        ("hrss".to_owned(), token("hrss", args.seed)),
    ];
    let sse_token = token("public_security", args.seed);
    let counter_token = token("hrss-counter", args.seed);
    let mut config = UpConfig::everything();
    config.topic_prefix = args.topic_prefix.clone();
    if args.postgres.is_some() && config.topic_prefix.is_empty() {
        // The PostgreSQL sink keeps its offsets in the database, per topic:
        // a fresh prefix per run keeps a new broker from meeting old offsets.
        config.topic_prefix = format!("demo{}.", now_ms() / 1000);
    }
    config.broker.bootstrap = args.bootstrap.clone();
    if args.bootstrap.is_some() {
        config
            .broker
            .kafka
            .insert("session.timeout.ms".into(), "6000".into());
    }
    if let Some(g) = config.gateway.as_mut() {
        g.listen = port(args.port_base, 0);
    }
    if let Some(r) = config.registry.as_mut() {
        r.listen = port(args.port_base, 1);
    }
    config.metrics.listen = port(args.port_base, 2);
    if let Some(s) = config.sink.as_mut() {
        s.listen = port(args.port_base, 3);
        s.postgres = args.postgres.clone();
        s.heartbeat = Duration::from_secs(5);
    }
    config.query = Some(QuerySection {
        listen: port(args.port_base, 4),
        credentials: None,
        state_dir: dir.join("state/query"),
        tls_cert: None,
        tls_key: None,
        client_ca: None,
    });
    if !args.external_fraud_app {
        config.fraud = Some(FraudSection {
            state_dir: dir.join("state/fraud"),
        });
    }
    let mut extras = Extras {
        gateway_tokens: gateway_tokens.clone(),
        sink_tokens: vec![
            ("public_security".to_owned(), sse_token.clone()),
            ("hrss".to_owned(), counter_token.clone()),
        ],
        ..Extras::default()
    };
    if args.postgres.is_none() {
        extras
            .skip_subscriptions
            .push("hrss_deaths_pension_stop".into());
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // Every exit, an error's too, stops the captures and drops the demo's
    // replication slot (below): a slot left behind holds WAL forever.
    let (capture_stop, capture_stop_rx) = tokio::sync::watch::channel(false);
    let capture_stop = Arc::new(capture_stop);
    let release = args
        .postgres
        .as_deref()
        .map(|pg| databases::postgres_config(pg, &dir.join("state/capture-postgres")));
    let stop_captures = capture_stop.clone();
    let captures_started = Arc::new(AtomicBool::new(false));
    let started_flag = captures_started.clone();
    let outcome = runtime.block_on(async move {
        let capture_stop = stop_captures;
        let webhook = sources::WebhookReceiver::start().await;
        match &webhook {
            Some(_) => {}
            None => extras
                .skip_subscriptions
                .push("housing_fund_deaths_webhook".into()),
        }
        let system = System::start(&config, catalog.clone(), extras).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let tail = sources::tail_alerts(
            system.bootstrap.clone(),
            system.topics.data(govbus_fraud::ALERTS),
            catalog.clone(),
            seen.clone(),
            stop.clone(),
        );
        let seconds = args.duration.as_secs().max(4) as usize;
        let script = generate::script(args.seed, seconds, args.rate, args.fraud_cases, now_ms());
        let planted = script.planted.clone();
        let completes = script.completes.clone();
        let round_starts = Arc::new(Mutex::new(Vec::new()));
        let starts = round_starts.clone();
        let paths = generate::paths(args.postgres.is_some(), args.mysql.is_some());
        let mut databases = Vec::new();
        if let Some(pg) = &args.postgres {
            databases
                .push(databases::Source::postgres(pg, &dir.join("state/capture-postgres")).await?);
        }
        if let Some(my) = &args.mysql {
            databases.push(databases::Source::mysql(my, &dir.join("state/capture-mysql")).await?);
        }
        let capture_metrics = govbus_capture::Metrics::new();
        started_flag.store(!databases.is_empty(), Ordering::Relaxed);
        let mut captures: Vec<(
            databases::Kind,
            govbus_capture::Config,
            tokio::task::JoinHandle<anyhow::Result<()>>,
        )> = databases
            .iter()
            .map(|d| {
                let (config, kind) = (d.config.clone(), d.kind);
                let (catalog, bootstrap, topics, metrics, stop) = (
                    catalog.clone(),
                    system.bootstrap.clone(),
                    system.topics.clone(),
                    capture_metrics.clone(),
                    capture_stop_rx.clone(),
                );
                let overrides: Vec<(String, String)> = govbus_capture::PRODUCER_DEFAULTS
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect();
                let task = tokio::spawn(async move {
                    crate::cmd::capture::supervise(
                        config,
                        kind == databases::Kind::Mysql,
                        &catalog,
                        crate::cmd::capture::Target {
                            bootstrap: &bootstrap,
                            topics: &topics,
                            overrides: &overrides,
                        },
                        metrics,
                        stop,
                    )
                    .await
                });
                (kind, d.config.clone(), task)
            })
            .collect();
        let tables: Vec<String> = databases
            .iter()
            .map(|d| format!("tables     {} (captured)", d.table))
            .collect();
        let publisher = sources::Publisher::new(
            &system,
            &catalog,
            &gateway_tokens,
            dir.join("dumps"),
            dir.join("state/snapshot"),
            paths.clone(),
            databases,
        )?;
        let mut telemetry = system.telemetry.clone();
        let m = capture_metrics.clone();
        telemetry.add(Arc::new(move || m.render()));
        telemetry.add(publisher.metrics_source());
        if let Some(w) = &webhook {
            telemetry.add(w.metrics_source());
        }
        let mut where_to_look = view::where_to_look(
            &system,
            &sse_token,
            &counter_token,
            &dir,
            webhook.is_some(),
            args.postgres.is_some(),
        );
        where_to_look.extend(tables);
        let gen_stop = stop.clone();
        let generator =
            tokio::task::spawn_blocking(move || publisher.play(script, &gen_stop, &starts));

        let live = !args.plain && std::io::IsTerminal::is_terminal(&std::io::stdout());
        let mut screen = view::Screen::new(
            live,
            system.bootstrap.clone(),
            system.embedded(),
            where_to_look,
            paths.clone(),
        );
        if !live {
            println!("bootstrap={}", system.bootstrap);
            screen.print_where();
        }
        let started = Instant::now();
        let terminated = crate::signals::terminated();
        tokio::pin!(terminated);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut interrupted = false;
        let mut drain_started: Option<Instant> = None;
        let mut all_found_at: Option<Instant> = None;
        loop {
            tokio::select! {
                () = &mut terminated => { interrupted = true; break; }
                _ = tick.tick() => {}
            }
            if let Some(name) = system.failed() {
                anyhow::bail!("the {name} component stopped unexpectedly; see the log");
            }
            if let Some(i) = captures.iter().position(|(_, _, t)| t.is_finished()) {
                let (kind, _, task) = captures.swap_remove(i);
                let why = match task.await {
                    Ok(Ok(())) => "it ended".to_owned(),
                    Ok(Err(e)) => format!("{e:#}"),
                    Err(e) => e.to_string(),
                };
                anyhow::bail!("the {kind:?} capture stopped: {why}");
            }
            let (found, _, _) = {
                let s = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                verdict(&planted, &s)
            };
            let found_n: usize = found.values().sum();
            let text = telemetry.render();
            screen.draw(
                &text,
                started.elapsed(),
                args.duration,
                found_n,
                planted.len(),
                &found,
                args.fraud_cases,
            );
            if generator.is_finished() && drain_started.is_none() {
                drain_started = Some(Instant::now());
            }
            if let Some(d) = drain_started {
                if found_n == planted.len() {
                    // Wait a little longer: duplicates or extras would show now.
                    let at = *all_found_at.get_or_insert_with(Instant::now);
                    if at.elapsed() >= Duration::from_secs(5) {
                        break;
                    }
                }
                if d.elapsed() >= Duration::from_secs(90) {
                    break;
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        let sent = generator
            .await
            .map_err(|e| anyhow::anyhow!("generator: {e}"))??;
        let _ = tail.join();
        // A capture stopped with changes in hand does not publish them:
        // wait (30 s at most) until each has published or rejected every row
        // written, then stop them. The slot is dropped after `block_on`.
        for (kind, config, _) in &captures {
            let (valid, invalid) = sent.get(kind.dataset()).copied().unwrap_or_default();
            let table = config.tables.first().map(|t| t.table.clone()).unwrap_or_default();
            let deadline = Instant::now() + Duration::from_secs(30);
            let done = loop {
                let samples = crate::promtext::parse(&capture_metrics.render());
                let done = crate::promtext::sum(&samples, "govbus_capture_changes_total", &[("table", &table)])
                    + crate::promtext::sum(&samples, "govbus_capture_rejected_total", &[("dataset", kind.dataset())]);
                if done as u64 >= valid + invalid || Instant::now() >= deadline {
                    break done as u64;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            if done < valid + invalid {
                eprintln!(
                    "the {kind:?} capture published or rejected {done} of the {} rows written within 30 s",
                    valid + invalid
                );
            }
        }
        let _ = capture_stop.send(true);
        for (kind, _, mut task) in captures {
            match tokio::time::timeout(Duration::from_secs(30), &mut task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => eprintln!("the {kind:?} capture failed: {e:#}"),
                Ok(Err(e)) => eprintln!("the {kind:?} capture: {e}"),
                Err(_) => {
                    eprintln!("the {kind:?} capture did not stop within 30 s");
                    task.abort();
                }
            }
        }
        screen.finish();
        let counter = match system.addrs.query {
            Some(addr) if !interrupted => {
                let (bootstrap, topics, catalog, token) = (
                    system.bootstrap.clone(),
                    system.topics.clone(),
                    catalog.clone(),
                    counter_token.clone(),
                );
                let checked = tokio::task::spawn_blocking(move || {
                    counter::check(addr, &token, &bootstrap, &topics, &catalog)
                })
                .await
                .map_err(|e| anyhow::anyhow!("counter check: {e}"))?;
                match checked {
                    Ok(c) => Some(c),
                    Err(e) => {
                        eprintln!("counter check failed: {e:#}");
                        None
                    }
                }
            }
            _ => None,
        };

        let metrics_text = telemetry.render();
        let report_dir = dir.join("report");
        let catalog_for_report = catalog.clone();
        let bootstrap = system.bootstrap.clone();
        let topics = system.topics.clone();
        let report = tokio::task::spawn_blocking(move || {
            crate::report::gather(
                &catalog_for_report,
                &bootstrap,
                &topics,
                &metrics_text,
                now_ms(),
            )
        })
        .await
        .map_err(|e| anyhow::anyhow!("report: {e}"))??;
        let files = report.write(&report_dir)?;
        // After Ctrl-C, only the cases whose records were all published count.
        let published_rounds = round_starts.lock().map_or(0, |r| r.len());
        let planted: Vec<Planted> = planted
            .into_iter()
            .filter(|p| {
                completes
                    .get(&p.benefit_record)
                    .is_some_and(|r| *r < published_rounds)
            })
            .collect();
        let rounds = round_starts
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .clone();
        let ((found, missing, unexpected), duplicates, updates, detection_ms) = {
            let s = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            (
                verdict(&planted, &s),
                s.repeats,
                s.updates,
                detection(&s, &completes, &rounds),
            )
        };
        let mut planted_by: BTreeMap<&'static str, usize> =
            Rule::ALL.iter().map(|r| (r.code(), 0)).collect();
        for p in &planted {
            *planted_by.entry(p.rule.code()).or_default() += 1;
        }
        let v = Verdict {
            planted: planted_by,
            found,
            missing,
            unexpected,
            duplicates,
            updates,
            detection_ms,
            sent: paths
                .iter()
                .map(|(ds, path)| {
                    let (valid, invalid) = sent.get(ds).copied().unwrap_or_default();
                    (
                        *ds,
                        SentCount {
                            path: *path,
                            valid,
                            invalid,
                        },
                    )
                })
                .collect(),
            report: report_dir.clone(),
            counter,
        };
        std::fs::write(dir.join("summary.json"), serde_json::to_string_pretty(&v)?)?;
        view::print_summary(&v, &files, interrupted);
        drop(telemetry);
        system.stop().await?;
        anyhow::Ok((v, interrupted))
    });
    let _ = capture_stop.send(true);
    if let Some(config) = release
        .as_ref()
        .filter(|_| captures_started.load(Ordering::Relaxed))
    {
        runtime.block_on(databases::release(config));
    }
    let (v, interrupted) = outcome?;
    let exact = v.missing.is_empty() && v.unexpected == 0 && v.duplicates == 0;
    if exact || interrupted {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "error: the alerts do not match the planted cases ({} missing, {} unexpected, {} duplicates)",
            v.missing.len(),
            v.unexpected,
            v.duplicates
        );
        Ok(ExitCode::from(1))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn alert(id: &str, record: &str, status: &str, evidence: &str) -> Json {
        serde_json::json!({
            "alert_id": id, "rule": "paid_after_death",
            "benefit_dataset": "hrss.pension_payment", "benefit_record": record,
            "evidence_record": evidence, "status": status,
            "detected_at": format!("2026-12-02T00:00:0{}.000Z", evidence.len() % 10),
        })
    }

    /// A planted alert standing counts as found; a wrong one counts as
    /// unexpected even after it was withdrawn; a planted one withdrawn at the
    /// end is missing; an equal republication is a duplicate, a changed one
    /// an update.
    #[test]
    fn the_verdict_counts_what_investigators_saw() {
        let planted = vec![
            Planted {
                rule: Rule::PaidAfterDeath,
                benefit_dataset: "hrss.pension_payment",
                benefit_record: "P-1".into(),
            },
            Planted {
                rule: Rule::PaidAfterDeath,
                benefit_dataset: "hrss.pension_payment",
                benefit_record: "P-2".into(),
            },
        ];
        let mut seen = Seen::default();
        seen.take(alert("a1", "P-1", "standing", "D-1"));
        seen.take(alert("a1", "P-1", "standing", "D-1"));
        seen.take(alert("a2", "P-2", "standing", "D-2"));
        seen.take(alert("a2", "P-2", "withdrawn", "D-2"));
        seen.take(alert("a3", "P-9", "standing", "D-9"));
        seen.take(alert("a3", "P-9", "withdrawn", "D-9"));
        let (found, missing, unexpected) = verdict(&planted, &seen);
        assert_eq!(found["paid_after_death"], 1);
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].benefit_record, "P-2");
        assert_eq!(unexpected, 1);
        assert_eq!((seen.repeats, seen.updates), (1, 2));
    }
}
