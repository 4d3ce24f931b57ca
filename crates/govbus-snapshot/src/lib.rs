//! The table-dump adapter: a department that hands over periodic dumps gets a
//! live change stream without changing its system.
//!
//! A run reads a dump ([`table`]), maps and normalises each row to the
//! dataset's fields ([`mapping`]), validates it exactly as the gateway does,
//! sorts the valid rows by key on disk ([`store`]), merge-joins them with the
//! state of the last published snapshot, and publishes only the differences
//! to `ingest.<owner>`: creates, updates (the full after-image) and deletes
//! for keys that disappeared. The new state replaces the old only after
//! every change is acknowledged.
//!
//! Idempotent re-runs: before publishing, a run writes `pending.json` (its
//! generation, source version and the dump's SHA-256). A run killed half way
//! and started again on the same dump finds it and publishes the same changes
//! with the same event ids (`snap-<dataset>-<version>-<dump hash>-<n>`,
//! unique across state directories) and the same source version, so whatever the first attempt delivered is a harmless
//! duplicate downstream. A different dump is refused until the state is
//! rebuilt from the canonical topic ([`rebuild`]).
//!
//! Careless input publishes nothing wrong: a dump whose header lacks the key
//! column or a mapped column is refused before any row is read; so is a file
//! without a readable header (see [`table`]). A dump that would delete more
//! than [`Options::max_delete_fraction`] of the previous generation's records
//! — a header-only or truncated file — has its deletes withheld, whatever the
//! absolute count. A dry run reads the state but creates and writes nothing
//! in the state directory.

pub mod store;
pub mod table;

// The adapters' shared toolkit, where it used to live.
pub use govbus_adapter::{mapping, normalize, publish, Change, PublishError, Publisher};

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use govbus_catalog::Catalog;
use govbus_validate::{Context, Engine};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::mapping::{Mapper, MappingFile};
use crate::store::{Entry, EntryReader, EntryWriter, Merge, Runs};
use crate::table::{Format, RowError, TableError};

/// A row that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invalid {
    /// Line in the dump.
    pub line: u64,
    /// Reason code (`govbus reasons`).
    pub reason: &'static str,
    /// Field concerned.
    pub field: Option<String>,
    /// What is wrong (never the value).
    pub detail: String,
}

/// What a run found and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Rows read.
    pub rows: u64,
    /// Rows that failed validation (their keys are kept, not deleted).
    pub invalid: Vec<Invalid>,
    /// Rows that could not be read at all (ragged, not an object).
    pub unreadable: Vec<(u64, String)>,
    /// Lines of rows whose key appeared again later (the last one wins).
    pub duplicate_lines: Vec<u64>,
    /// New keys.
    pub creates: u64,
    /// Changed records.
    pub updates: u64,
    /// Keys that disappeared.
    pub deletes: u64,
    /// Records as before.
    pub unchanged: u64,
    /// Deletes not published, and why.
    pub deletes_withheld: Option<String>,
    /// This run's generation.
    pub generation: u64,
    /// Whether changes were published (false for a dry run).
    pub published: bool,
}

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The dataset.
    pub dataset: String,
    /// The dump.
    pub file: PathBuf,
    /// Its format (by default from its extension).
    pub format: Option<Format>,
    /// Column mapping and encoding.
    pub mapping: MappingFile,
    /// Where the state lives (one directory per dataset).
    pub state_dir: PathBuf,
    /// Compute and report, publish nothing.
    pub dry_run: bool,
    /// Withhold deletes when they exceed this share of the previous state.
    pub max_delete_fraction: f64,
    /// Memory for sorting before spilling to disk.
    pub sort_memory: usize,
}

/// Why a run stopped without publishing.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The state directory holds another dataset's state.
    #[error("the state directory {dir} holds the state of {holds}, not {dataset}: give each dataset a state directory of its own")]
    OtherDataset {
        /// The state directory.
        dir: String,
        /// The dataset whose state it holds.
        holds: String,
        /// The dataset of this run.
        dataset: String,
    },
    /// The dataset is not in the catalog.
    #[error("unknown dataset `{0}`; see `govbus catalog list`")]
    UnknownDataset(String),
    /// The mapping does not fit the dataset.
    #[error("mapping: {}", .0.join("; "))]
    Mapping(Vec<String>),
    /// The dump cannot be read.
    #[error(transparent)]
    Table(#[from] TableError),
    /// The dump lacks a column it needs.
    #[error("{file}: {missing}")]
    Columns {
        /// The dump.
        file: String,
        /// What is missing (in the message, not a `source`: an error chain
        /// printed in full would say it twice).
        missing: govbus_adapter::mapping::ColumnsError,
    },
    /// Unknown file type.
    #[error("{0}: unknown dump format; use .csv, .json, .ndjson or .xlsx")]
    Format(String),
    /// An earlier run of another dump did not finish.
    #[error("an earlier run (generation {generation}) of another dump did not finish, and some of its changes may be published; run that dump again to finish it, or rebuild the state from the canonical topic with `govbus snapshot rebuild --dataset {dataset}`")]
    Pending {
        /// The unfinished generation.
        generation: u64,
        /// The dataset.
        dataset: String,
    },
    /// Publishing failed; the state was not replaced, a re-run repeats it.
    #[error("publishing failed (the state is unchanged; run again): {0}")]
    Publish(#[from] govbus_adapter::PublishError),
    /// State files.
    #[error("state in {dir}: {source}")]
    State {
        /// The state directory.
        dir: String,
        /// The cause.
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Pending {
    generation: u64,
    version: u64,
    input_sha256: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Committed {
    generation: u64,
    version: u64,
    /// The dataset the state is of (absent in states written before it was kept).
    #[serde(default)]
    dataset: Option<String>,
}

fn hash16(bytes: &[u8]) -> [u8; 16] {
    let d = Sha256::digest(bytes);
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The state directory's files.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// `dir` (created if missing).
    pub fn new(dir: &Path) -> StateDir {
        StateDir {
            dir: dir.to_path_buf(),
        }
    }
    fn state(&self) -> PathBuf {
        self.dir.join("state.bin")
    }
    fn next(&self) -> PathBuf {
        self.dir.join("state.next")
    }
    fn committed(&self) -> PathBuf {
        self.dir.join("committed.json")
    }
    fn pending(&self) -> PathBuf {
        self.dir.join("pending.json")
    }
    fn runs(&self) -> PathBuf {
        self.dir.join("sort")
    }
    fn err(&self) -> impl Fn(std::io::Error) -> SnapshotError + '_ {
        move |source| SnapshotError::State {
            dir: self.dir.display().to_string(),
            source,
        }
    }
    fn read_json<T: for<'de> Deserialize<'de>>(
        &self,
        path: &Path,
    ) -> Result<Option<T>, SnapshotError> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| self.err()(std::io::Error::other(format!("{}: {e}", path.display())))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err()(e)),
        }
    }
    fn write_json<T: Serialize>(&self, path: &Path, v: &T) -> Result<(), SnapshotError> {
        let tmp = path.with_extension("tmp");
        let body =
            serde_json::to_vec_pretty(v).map_err(|e| self.err()(std::io::Error::other(e)))?;
        std::fs::write(&tmp, body).map_err(self.err())?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(self.err())?;
        std::fs::rename(&tmp, path).map_err(self.err())?;
        self.sync()
    }
    fn sync(&self) -> Result<(), SnapshotError> {
        std::fs::File::open(&self.dir)
            .and_then(|f| f.sync_all())
            .map_err(self.err())
    }
}

/// Progress callbacks: rows read, then changes published.
pub trait Progress {
    /// `n` more rows read.
    fn rows(&self, n: u64);
    /// Publishing starts: `total` changes.
    fn publishing(&self, total: u64);
    /// `n` more changes published.
    fn published(&self, n: u64);
}

/// No progress output.
#[derive(Debug)]
pub struct Quiet;
impl Progress for Quiet {
    fn rows(&self, _: u64) {}
    fn publishing(&self, _: u64) {}
    fn published(&self, _: u64) {}
}

enum Step {
    Create(Entry),
    Update(Entry),
    Same(Entry),
    Delete(Entry),
    Keep(Entry),
}

/// Merge-joins the sorted new entries with the state, in key order.
fn join(
    runs: &[PathBuf],
    state: &Path,
    kept: &HashSet<String>,
    mut each: impl FnMut(Step) -> Result<(), SnapshotError>,
    dups: &mut Vec<u64>,
    err: &dyn Fn(std::io::Error) -> SnapshotError,
) -> Result<(), SnapshotError> {
    let mut new = Merge::open(runs).map_err(err)?;
    let mut old = EntryReader::open(state).map_err(err)?;
    let mut n = new.next_key().map_err(err)?;
    let mut o = old.next_entry().map_err(err)?;
    loop {
        match (n.take(), o.take()) {
            (None, None) => return Ok(()),
            (Some((e, d)), None) => {
                dups.extend(d);
                each(Step::Create(e))?;
                n = new.next_key().map_err(err)?;
            }
            (None, Some(s)) => {
                each(if kept.contains(&s.key) {
                    Step::Keep(s)
                } else {
                    Step::Delete(s)
                })?;
                o = old.next_entry().map_err(err)?;
            }
            (Some((e, d)), Some(s)) => match e.key.cmp(&s.key) {
                std::cmp::Ordering::Less => {
                    dups.extend(d);
                    each(Step::Create(e))?;
                    n = new.next_key().map_err(err)?;
                    o = Some(s);
                }
                std::cmp::Ordering::Greater => {
                    each(if kept.contains(&s.key) {
                        Step::Keep(s)
                    } else {
                        Step::Delete(s)
                    })?;
                    o = old.next_entry().map_err(err)?;
                    n = Some((e, d));
                }
                std::cmp::Ordering::Equal => {
                    dups.extend(d);
                    if e.hash == s.hash {
                        let mut same = e;
                        same.version = s.version;
                        each(Step::Same(same))?;
                    } else {
                        each(Step::Update(e))?;
                    }
                    n = new.next_key().map_err(err)?;
                    o = old.next_entry().map_err(err)?;
                }
            },
        }
    }
}

/// Diffs a dump against the last published state and publishes the changes.
pub fn run(
    catalog: &Catalog,
    engine: &Engine,
    opts: &Options,
    progress: &dyn Progress,
    publisher: &mut dyn Publisher,
) -> Result<Summary, SnapshotError> {
    let ds = engine
        .dataset(&opts.dataset)
        .ok_or_else(|| SnapshotError::UnknownDataset(opts.dataset.clone()))?;
    let catalog_ds = catalog
        .dataset(&opts.dataset)
        .ok_or_else(|| SnapshotError::UnknownDataset(opts.dataset.clone()))?;
    let st = StateDir::new(&opts.state_dir);
    if !opts.dry_run {
        std::fs::create_dir_all(&opts.state_dir).map_err(st.err())?;
    }

    let committed: Committed = st.read_json(&st.committed())?.unwrap_or_default();
    if let Some(other) = committed.dataset.as_ref().filter(|d| **d != opts.dataset) {
        return Err(SnapshotError::OtherDataset {
            dir: opts.state_dir.display().to_string(),
            holds: other.clone(),
            dataset: opts.dataset.clone(),
        });
    }
    let mapper = Mapper::new(&opts.mapping, catalog_ds).map_err(SnapshotError::Mapping)?;
    let shown = opts.file.display().to_string();
    let format = opts
        .format
        .or_else(|| Format::of(&opts.file))
        .ok_or_else(|| SnapshotError::Format(shown.clone()))?;
    let input_sha256 = file_sha256(&opts.file).map_err(|error| TableError::Io {
        path: shown.clone(),
        error,
    })?;
    let pending: Option<Pending> = st.read_json(&st.pending())?;
    let this = match pending {
        Some(p) if p.input_sha256 == input_sha256 => p,
        Some(p) if !opts.dry_run => {
            return Err(SnapshotError::Pending {
                generation: p.generation,
                dataset: opts.dataset.clone(),
            })
        }
        _ => Pending {
            generation: committed.generation + 1,
            version: now_ms().max(committed.version + 1),
            input_sha256,
        },
    };

    // 1. Read, map, validate, sort. A dry run sorts in a temporary directory
    // and leaves the state directory as it was (or absent).
    let scratch = if opts.dry_run {
        Some(
            tempfile::Builder::new()
                .prefix("govbus-snapshot-")
                .tempdir()
                .map_err(st.err())?,
        )
    } else {
        None
    };
    let sort_dir = match &scratch {
        Some(t) => t.path().join("sort"),
        None => st.runs(),
    };
    let _ = std::fs::remove_dir_all(&sort_dir);
    let mut runs = Runs::new(&sort_dir, opts.sort_memory).map_err(st.err())?;
    let mut summary = Summary {
        generation: this.generation,
        ..Summary::default()
    };
    let mut kept: HashSet<String> = HashSet::new();
    let ctx = Context::now();
    let dump = table::open(&opts.file, format, opts.mapping.encoding)?;
    // The header is checked before any row: a dump of another table, or one
    // without its key column, must not turn into deletes.
    let columns_error = |missing| SnapshotError::Columns {
        file: shown.clone(),
        missing,
    };
    if let Some(columns) = &dump.columns {
        mapper.check_header(columns).map_err(columns_error)?;
    }
    let mut first = dump.columns.is_none();
    for row in dump.rows {
        let row = match row? {
            Ok(r) => r,
            Err(RowError { line, message }) => {
                summary.rows += 1;
                summary.unreadable.push((line, message));
                continue;
            }
        };
        if first {
            mapper.check_columns(&row).map_err(columns_error)?;
            first = false;
        }
        summary.rows += 1;
        if summary.rows % 10_000 == 0 {
            progress.rows(10_000);
        }
        let record = match mapper.record(&row) {
            Ok(r) => r,
            Err(e) => {
                summary.unreadable.push((e.line, e.message));
                continue;
            }
        };
        let key = mapper.key_of(&record);
        match ds
            .validate_json_value(&serde_json::Value::Object(record), &ctx)
            .and_then(govbus_kafka::limits::publishable)
        {
            Ok(a) => runs
                .push(Entry {
                    key: a.key,
                    hash: hash16(&a.value),
                    seq: row.line,
                    version: 0,
                    value: a.value,
                })
                .map_err(st.err())?,
            Err(r) => {
                if let Some(k) = key {
                    // The engine writes a resident ID's check character `x`
                    // as `X` in the key it derives (the state holds that
                    // form): a rejected row protects both.
                    if k.contains('x') {
                        kept.insert(upper_check_characters(&k));
                    }
                    kept.insert(k);
                }
                summary.invalid.push(Invalid {
                    line: row.line,
                    reason: r.reason.code(),
                    field: r.field,
                    detail: r.detail.into_owned(),
                });
            }
        }
    }
    progress.rows(summary.rows % 10_000);
    let runs = runs.finish().map_err(st.err())?;

    // 2. Count the changes (no publishing yet).
    let mut dups = Vec::new();
    let mut kept_in_state = 0u64;
    let err = st.err();
    join(
        &runs,
        &st.state(),
        &kept,
        |step| {
            match step {
                Step::Create(_) => summary.creates += 1,
                Step::Update(_) => summary.updates += 1,
                Step::Same(_) => summary.unchanged += 1,
                Step::Delete(_) => summary.deletes += 1,
                Step::Keep(_) => kept_in_state += 1,
            }
            Ok(())
        },
        &mut dups,
        &err,
    )?;
    summary.duplicate_lines = dups;
    // Every entry of the previous state was one of these.
    let state_count = summary.updates + summary.unchanged + summary.deletes + kept_in_state;
    let allow_deletes = if !summary.unreadable.is_empty() {
        summary.deletes_withheld = Some(format!(
            "{} rows could not be read; a key among them would look deleted",
            summary.unreadable.len()
        ));
        false
    } else if summary.deletes > 0
        && summary.deletes as f64 > opts.max_delete_fraction * state_count as f64
    {
        // Proportional, with no absolute floor: a header-only or truncated
        // dump of a small dataset is as wrong as one of a large dataset.
        summary.deletes_withheld = Some(format!(
            "{} of {} records of the previous generation would be deleted, more than the limit of {:.0} % (--max-deletes); check the dump, or raise the limit",
            summary.deletes,
            state_count,
            opts.max_delete_fraction * 100.0
        ));
        false
    } else {
        true
    };
    if opts.dry_run {
        drop(scratch);
        return Ok(summary);
    }

    // 3. Publish in key order while writing the next state.
    st.write_json(&st.pending(), &this)?;
    let total = summary.creates + summary.updates + if allow_deletes { summary.deletes } else { 0 };
    progress.publishing(total);
    let mut next = EntryWriter::create(&st.next()).map_err(st.err())?;
    let mut n = 0u64;
    let mut dups = Vec::new();
    let dataset = &opts.dataset;
    join(
        &runs,
        &st.state(),
        &kept,
        |step| {
            let (op, mut entry, publish) = match step {
                Step::Create(e) => ("create", e, true),
                Step::Update(e) => ("update", e, true),
                Step::Delete(e) => ("delete", e, allow_deletes),
                Step::Same(e) | Step::Keep(e) => ("", e, false),
            };
            if publish {
                n += 1;
                let change = Change {
                    dataset: dataset.clone(),
                    op,
                    key: entry.key.clone(),
                    value: (op != "delete").then(|| std::mem::take(&mut entry.value)),
                    version: this.version,
                    // Deterministic for a re-run of this pending dump (its
                    // version and hash are kept in pending.json), and unique
                    // across state directories: a lost or rebuilt state
                    // starts its generations again, but never its versions.
                    id: format!(
                        "snap-{dataset}-{}-{}-{n}",
                        this.version,
                        &this.input_sha256[..this.input_sha256.len().min(12)]
                    ),
                };
                publisher.publish(&change).map_err(SnapshotError::Publish)?;
                if n % 1000 == 0 {
                    progress.published(1000);
                }
                entry.version = this.version;
            }
            // A published delete leaves the state; a withheld one stays.
            if !(op == "delete" && publish) {
                entry.value.clear();
                next.push(&entry).map_err(&err)?;
            }
            Ok(())
        },
        &mut dups,
        &err,
    )?;
    publisher.flush().map_err(SnapshotError::Publish)?;
    progress.published(n % 1000);

    // 4. Commit: the new state, then the generation, then forget the pending run.
    next.finish().map_err(st.err())?;
    std::fs::rename(st.next(), st.state()).map_err(st.err())?;
    st.sync()?;
    st.write_json(
        &st.committed(),
        &Committed {
            generation: this.generation,
            version: this.version,
            dataset: Some(opts.dataset.clone()),
        },
    )?;
    std::fs::remove_file(st.pending()).map_err(st.err())?;
    let _ = std::fs::remove_dir_all(st.runs());
    summary.published = true;
    Ok(summary)
}

/// What [`rebuild`] found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rebuilt {
    /// Records read from the canonical topic.
    pub records: u64,
    /// Keys present (not deleted) in the rebuilt state.
    pub keys: u64,
}

/// Rebuilds a dataset's state from its canonical topic: for every key, the
/// last record (a tombstone removes it), with its content hash and source
/// version. Clears an unfinished run.
pub fn rebuild(
    bootstrap: &str,
    data_topic: &str,
    state_dir: &Path,
    sort_memory: usize,
) -> Result<Rebuilt, SnapshotError> {
    use govbus_kafka::headers as h;
    let st = StateDir::new(state_dir);
    std::fs::create_dir_all(state_dir).map_err(st.err())?;
    let _ = std::fs::remove_dir_all(st.runs());
    let mut runs = Runs::new(&st.runs(), sort_memory).map_err(st.err())?;
    let mut out = Rebuilt::default();
    let mut failed: Option<std::io::Error> = None;
    let mut max_version = 0u64;
    govbus_kafka::read::each(
        bootstrap,
        data_topic,
        std::time::Duration::from_secs(2),
        std::time::Duration::from_secs(3600),
        |r| {
            out.records += 1;
            let key = match r.header(h::CE_SUBJECT) {
                "" => r
                    .key
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default()
                    .into_owned(),
                k => k.to_owned(),
            };
            let version: u64 = r.header(h::CE_SOURCEVERSION).parse().unwrap_or(0);
            max_version = max_version.max(version);
            // A tombstone is an entry with an empty value; it wins over earlier
            // records of its key and is dropped when the state is written.
            let value = r.value.unwrap_or_default();
            let e = Entry {
                key,
                hash: if value.is_empty() {
                    [0; 16]
                } else {
                    hash16(&value)
                },
                seq: u64::try_from(r.offset).unwrap_or(0),
                version,
                value: if value.is_empty() {
                    Vec::new()
                } else {
                    vec![1]
                },
            };
            if failed.is_none() {
                if let Err(e) = runs.push(e) {
                    failed = Some(e);
                }
            }
        },
    )
    .map_err(|e| st.err()(std::io::Error::other(format!("read {data_topic}: {e}"))))?;
    if let Some(e) = failed {
        return Err(st.err()(e));
    }
    let files = runs.finish().map_err(st.err())?;
    let mut merge = Merge::open(&files).map_err(st.err())?;
    let mut next = EntryWriter::create(&st.next()).map_err(st.err())?;
    while let Some((mut e, _)) = merge.next_key().map_err(st.err())? {
        if e.value.is_empty() {
            continue;
        }
        e.value.clear();
        next.push(&e).map_err(st.err())?;
        out.keys += 1;
    }
    next.finish().map_err(st.err())?;
    std::fs::rename(st.next(), st.state()).map_err(st.err())?;
    let committed: Committed = st.read_json(&st.committed())?.unwrap_or_default();
    let pending: Option<Pending> = st.read_json(&st.pending())?;
    st.write_json(
        &st.committed(),
        &Committed {
            generation: committed
                .generation
                .max(pending.as_ref().map_or(0, |p| p.generation)),
            version: committed.version.max(max_version),
            dataset: committed.dataset.clone(),
        },
    )?;
    let _ = std::fs::remove_file(st.pending());
    let _ = std::fs::remove_dir_all(st.runs());
    Ok(out)
}

/// `key` with each part's trailing `x` written `X`, as the engine writes a
/// resident ID's check character (parts are joined with `/`).
fn upper_check_characters(key: &str) -> String {
    key.split('/')
        .map(|part| match part.strip_suffix('x') {
            Some(rest) => format!("{rest}X"),
            None => part.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}
