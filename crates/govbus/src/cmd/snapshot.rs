//! `govbus snapshot`: a department's periodic table dump becomes a live
//! change stream. `publish` diffs one dump against the last published state
//! and publishes only the changes; `watch` does that for every dump dropped
//! into a directory; `rebuild` recovers the state from the canonical topic.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use govbus_adapter::mapping::MappingFile;
use govbus_adapter::publish::{KafkaPublisher, Unreachable};
use govbus_catalog::Catalog;
use govbus_kafka::topics::Topics;
use govbus_snapshot::{Options, Progress, Summary};
use govbus_validate::Engine;

use crate::catalog_source;

#[derive(Subcommand)]
pub enum SnapshotCommand {
    /// Diff one dump (CSV, JSON, NDJSON, XLSX) against the last published
    /// state and publish the creates, updates and deletes.
    Publish(PublishArgs),
    /// Process every dump that appears in a directory (moved to done/ or failed/).
    Watch(WatchArgs),
    /// Rebuild the state from the dataset's canonical topic.
    Rebuild(RebuildArgs),
}

#[derive(Args, Clone)]
pub struct Common {
    /// Kafka bootstrap servers.
    #[arg(long, env = "GOVBUS_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Topic namespace prefix.
    #[arg(long, default_value = "")]
    topic_prefix: String,
    /// Catalog directory. Default: the embedded sample catalog.
    #[arg(long, env = "GOVBUS_CATALOG")]
    catalog: Option<PathBuf>,
    /// The dataset (or `dataset` in the mapping file).
    #[arg(long)]
    dataset: Option<String>,
    /// Column mapping, encoding and time zone of the dump (TOML).
    #[arg(long)]
    mapping: Option<PathBuf>,
    /// Where the last published state is kept. Default: var/snapshot/<dataset>.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Withhold deletes when more than this percentage of the records would go.
    #[arg(long, default_value_t = 50.0)]
    max_deletes: f64,
    /// Memory for sorting before spilling runs to disk, in MiB.
    #[arg(long, default_value_t = 64)]
    sort_memory_mib: usize,
    /// Partitions of the owner's ingest topic, when it has to be created.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// How long to wait for the broker to answer before giving up (nothing
    /// is read or published until it has).
    #[arg(long, default_value = "30s", value_parser = duration)]
    connect_timeout: Duration,
    /// Extra librdkafka setting, `key=value` (repeatable).
    #[arg(long = "kafka", value_name = "KEY=VALUE")]
    kafka: Vec<String>,
}

#[derive(Args)]
pub struct PublishArgs {
    #[command(flatten)]
    common: Common,
    /// Compute and print the diff; publish nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// The dump.
    file: PathBuf,
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// A dump is taken once it is complete: either its writer says so — it
/// writes `<name>.part` / `<name>.tmp` (or a name starting with `.`) and
/// renames it when done, or drops an empty `<name>.done` marker next to it —
/// or its size and modification time have not changed for `--settle`.
#[derive(Args)]
pub struct WatchArgs {
    #[command(flatten)]
    common: Common,
    /// How often to look for new dumps.
    #[arg(long, default_value = "2s", value_parser = duration)]
    interval: Duration,
    /// How long a dump's size and modification time must hold still before
    /// it is taken (a dump with a `<name>.done` marker is taken at once).
    #[arg(long, default_value = "2s", value_parser = duration)]
    settle: Duration,
    /// Process the dumps already there (each once it has settled), then exit.
    #[arg(long)]
    once: bool,
    /// The directory departments drop dumps into.
    dir: PathBuf,
}

#[derive(Args)]
pub struct RebuildArgs {
    #[command(flatten)]
    common: Common,
}

struct Setup {
    catalog: Catalog,
    engine: Engine,
    dataset: String,
    mapping: MappingFile,
    state_dir: PathBuf,
    overrides: Vec<(String, String)>,
}

fn setup(c: &Common) -> anyhow::Result<Setup> {
    let catalog = catalog_source::load_checked(c.catalog.as_deref())?;
    let engine = Engine::new(&catalog)?;
    let mapping = match &c.mapping {
        Some(p) => MappingFile::load(p)?,
        None => MappingFile::default(),
    };
    let dataset = c
        .dataset
        .clone()
        .or_else(|| mapping.dataset.clone())
        .context("which dataset? pass --dataset, or set `dataset` in the mapping file")?;
    if let (Some(a), Some(b)) = (&c.dataset, &mapping.dataset) {
        anyhow::ensure!(a == b, "--dataset {a} but the mapping file is for {b}");
    }
    anyhow::ensure!(
        catalog.dataset(&dataset).is_some(),
        "unknown dataset `{dataset}`; see `govbus catalog list`"
    );
    let state_dir = c
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("var/snapshot").join(&dataset));
    let overrides = super::kafka_overrides(&c.kafka)?;
    Ok(Setup {
        catalog,
        engine,
        dataset,
        mapping,
        state_dir,
        overrides,
    })
}

struct Bar(indicatif::ProgressBar);

impl Progress for Bar {
    fn rows(&self, n: u64) {
        self.0.inc(n);
    }
    fn publishing(&self, total: u64) {
        self.0.finish_and_clear();
        self.0.reset();
        self.0.set_length(total);
        self.0.set_style(
            indicatif::ProgressStyle::with_template(
                "publishing {bar:40} {pos}/{len} changes {per_sec}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
    }
    fn published(&self, n: u64) {
        self.0.inc(n);
    }
}

fn bar() -> Bar {
    let b = indicatif::ProgressBar::new_spinner();
    b.set_style(
        indicatif::ProgressStyle::with_template("reading {spinner} {pos} rows {per_sec}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    b.enable_steady_tick(Duration::from_millis(200));
    Bar(b)
}

/// Stands in for Kafka in a dry run: nothing connects, nothing is sent.
struct NoPublisher;

impl govbus_adapter::Publisher for NoPublisher {
    fn publish(&mut self, _: &govbus_adapter::Change) -> Result<(), govbus_adapter::PublishError> {
        Err(govbus_adapter::PublishError::Other(
            "a dry run publishes nothing".into(),
        ))
    }
    fn flush(&mut self) -> Result<(), govbus_adapter::PublishError> {
        Ok(())
    }
}

fn publish_one(s: &Setup, c: &Common, file: &Path, dry_run: bool) -> anyhow::Result<Summary> {
    let owner = s
        .catalog
        .dataset(&s.dataset)
        .map(|d| d.owner.clone())
        .unwrap_or_default();
    let topic = Topics::new(c.topic_prefix.clone()).ingest(&owner);
    let opts = Options {
        dataset: s.dataset.clone(),
        file: file.to_path_buf(),
        format: None,
        mapping: s.mapping.clone(),
        state_dir: s.state_dir.clone(),
        dry_run,
        max_delete_fraction: c.max_deletes / 100.0,
        sort_memory: c.sort_memory_mib << 20,
    };
    let mut publisher: Box<dyn govbus_adapter::Publisher> = if dry_run {
        // No producer, no connection, no state directory.
        Box::new(NoPublisher)
    } else {
        let publisher = KafkaPublisher::new(&c.bootstrap, &topic, &s.dataset, &s.overrides)?;
        publisher.check_reachable(c.connect_timeout)?;
        // The owner's ingest topic must exist before an idempotent producer
        // writes to it; the router picks a new one up by its pattern.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(govbus_kafka::admin::ensure_topics(
                &c.bootstrap,
                &[(topic.clone(), c.partitions)],
            ));
        Box::new(publisher)
    };
    let progress = bar();
    let result = govbus_snapshot::run(&s.catalog, &s.engine, &opts, &progress, publisher.as_mut());
    progress.0.finish_and_clear();
    Ok(result?)
}

fn report(file: &Path, s: &Summary, dry_run: bool) {
    let shown = file.display();
    for i in s.invalid.iter().take(20) {
        println!(
            "{shown}:{}: rejected {}{}: {}",
            i.line,
            i.reason,
            i.field
                .as_deref()
                .map(|f| format!(" at `{f}`"))
                .unwrap_or_default(),
            i.detail
        );
    }
    if s.invalid.len() > 20 {
        println!(
            "{shown}: ... and {} more rejected rows",
            s.invalid.len() - 20
        );
    }
    for (line, msg) in s.unreadable.iter().take(20) {
        println!("{shown}:{line}: unreadable: {msg}");
    }
    if s.unreadable.len() > 20 {
        println!(
            "{shown}: ... and {} more unreadable rows",
            s.unreadable.len() - 20
        );
    }
    if !s.duplicate_lines.is_empty() {
        println!(
            "{shown}: {} rows repeat a key that appears again later (the last one counts), first at line {}",
            s.duplicate_lines.len(),
            s.duplicate_lines[0]
        );
    }
    if let Some(why) = &s.deletes_withheld {
        println!("{shown}: deletes withheld: {why}");
    }
    println!(
        "{shown}: {} rows: {} creates, {} updates, {} deletes, {} unchanged, {} rejected, {} unreadable{}",
        s.rows,
        s.creates,
        s.updates,
        s.deletes,
        s.unchanged,
        s.invalid.len(),
        s.unreadable.len(),
        if dry_run {
            " (dry run: nothing published)".to_owned()
        } else {
            format!(" (generation {} published)", s.generation)
        }
    );
}

fn code(s: &Summary) -> ExitCode {
    if s.invalid.is_empty() && s.unreadable.is_empty() && s.deletes_withheld.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

pub fn run(cmd: SnapshotCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SnapshotCommand::Publish(a) => {
            let s = setup(&a.common)?;
            let summary = publish_one(&s, &a.common, &a.file, a.dry_run)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                report(&a.file, &summary, a.dry_run);
            }
            Ok(code(&summary))
        }
        SnapshotCommand::Rebuild(a) => {
            let s = setup(&a.common)?;
            let topic = Topics::new(a.common.topic_prefix.clone()).data(&s.dataset);
            let r = govbus_snapshot::rebuild(
                &a.common.bootstrap,
                &topic,
                &s.state_dir,
                a.common.sort_memory_mib << 20,
            )?;
            println!(
                "rebuilt {} from {topic}: {} records read, {} keys in the state",
                s.state_dir.display(),
                r.records,
                r.keys
            );
            Ok(ExitCode::SUCCESS)
        }
        SnapshotCommand::Watch(a) => watch(a),
    }
}

fn watch(a: WatchArgs) -> anyhow::Result<ExitCode> {
    let s = setup(&a.common)?;
    let done = a.dir.join("done");
    let failed = a.dir.join("failed");
    std::fs::create_dir_all(&done)?;
    std::fs::create_dir_all(&failed)?;
    tracing::info!(message = "Watching for dumps.", dir = %a.dir.display(), dataset = %s.dataset);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(crate::signals::terminated());
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }
    // A file is taken once it is complete (see `WatchArgs`).
    let mut seen: std::collections::HashMap<PathBuf, Seen> = std::collections::HashMap::new();
    let mut worst = ExitCode::SUCCESS;
    loop {
        let now = std::time::Instant::now();
        let mut ready = Vec::new();
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&a.dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_dump(p))
            .collect();
        entries.sort();
        seen.retain(|p, _| entries.contains(p));
        for p in entries {
            let meta = std::fs::metadata(&p)?;
            let sig = (meta.len(), meta.modified()?);
            let marker = done_marker(&p);
            let entry = seen.entry(p.clone()).or_insert(Seen { sig, since: now });
            if entry.sig != sig {
                *entry = Seen { sig, since: now };
            }
            if marker.exists() || now.duration_since(entry.since) >= a.settle {
                ready.push(p);
            }
        }
        let unsettled = seen.len() - ready.len();
        for file in ready {
            seen.remove(&file);
            let name = file.file_name().map(PathBuf::from).unwrap_or_default();
            match publish_one(&s, &a.common, &file, false) {
                Ok(summary) => {
                    report(&file, &summary, false);
                    if code(&summary) != ExitCode::SUCCESS {
                        worst = ExitCode::from(2);
                    }
                    std::fs::rename(&file, done.join(&name))?;
                    let _ = std::fs::remove_file(done_marker(&file));
                }
                // The broker did not answer: nothing was read or published;
                // the dump stays where it is and is tried again.
                Err(e) if e.is::<Unreachable>() => {
                    tracing::error!(message = "Broker unreachable; the dump stays and is tried again.", file = %file.display(), error = %e);
                    worst = ExitCode::from(1);
                    if a.once {
                        return Err(e);
                    }
                }
                Err(e) => {
                    tracing::error!(message = "Dump not published; moved to failed/.", file = %file.display(), error = %e);
                    std::fs::write(
                        failed.join(name.with_extension("error.txt")),
                        format!("{e:#}\n"),
                    )?;
                    std::fs::rename(&file, failed.join(&name))?;
                    let _ = std::fs::remove_file(done_marker(&file));
                    worst = ExitCode::from(1);
                }
            }
        }
        if (a.once && unsettled == 0) || stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(worst);
        }
        std::thread::sleep(if a.once {
            a.interval.min(Duration::from_millis(200))
        } else {
            a.interval
        });
    }
}

/// When a file's signature (size, modification time) was first seen as it is.
struct Seen {
    sig: (u64, std::time::SystemTime),
    since: std::time::Instant,
}

/// A dump format, and not a file being written: names ending `.part` or
/// `.tmp`, and names starting with `.` (or `~$`, an office lock file), are
/// left alone until renamed.
fn is_dump(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or(".");
    !name.starts_with('.')
        && !name.starts_with("~$")
        && govbus_snapshot::table::Format::of(p).is_some()
}

/// `<dump>.done`: the writer's word that the dump is complete.
fn done_marker(p: &Path) -> PathBuf {
    let mut m = p.as_os_str().to_owned();
    m.push(".done");
    PathBuf::from(m)
}
