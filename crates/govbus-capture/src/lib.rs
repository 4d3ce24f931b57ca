//! Database change capture: a department that has nothing but a PostgreSQL
//! database gets a live change stream.
//!
//! **Logical mode** reads the database's own change log through a logical
//! replication slot with the built-in `pgoutput` plugin
//! (`pg_logical_slot_peek_binary_changes`, decoded by [`pgoutput`]): first an
//! initial snapshot of every table (versioned at the slot's consistent
//! point), then every committed insert, update and delete, in commit order.
//! The position lives in the slot: it is advanced only after the changes
//! before it are acknowledged by Kafka, so a restart resumes without loss
//! (and repeats at most the unacknowledged tail, with the same event ids).
//! An idle source gets a heartbeat (a non-transactional logical message) so
//! that the slot advances and PostgreSQL can recycle WAL.
//!
//! **Poll mode** is the fallback where logical replication is not allowed: a
//! monotonic version column per table, read in order, plus a periodic scan
//! of the keys to detect deletes. Same output.
//!
//! Both map columns to the dataset (the snapshot adapter's [`Mapper`]),
//! validate every record as the gateway does, and publish what the gateway
//! publishes to `ingest.<owner>`, with the LSN (or the version column) as
//! the per-key source version.

pub mod metrics;
pub mod mysql;
pub mod pgoutput;
pub mod replication;

pub use metrics::Metrics;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use govbus_adapter::mapping::{Mapper, MappingFile};
use govbus_adapter::row::{Cell, Row};
use govbus_adapter::{Change, Publisher};
use govbus_catalog::Catalog;
use govbus_validate::{Context, Engine};
use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, NoTls};

use crate::pgoutput::{Message, Relations, Value};

/// How changes are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Logical decoding (`wal_level = logical`) over the streaming
    /// replication protocol: changes arrive as they commit.
    #[default]
    Logical,
    /// Logical decoding read through the SQL interface
    /// (`pg_logical_slot_peek_binary_changes`), polled: for a database
    /// reached only through a connection pooler (PgBouncer and the like do
    /// not pass replication connections through). About 0.2 s slower.
    #[serde(rename = "logical-sql")]
    LogicalSql,
    /// A monotonic version column and periodic delete detection.
    Poll,
}

/// One captured table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// `schema.table` (or `table` in `public`).
    pub table: String,
    /// The dataset its rows are.
    pub dataset: String,
    /// `field = "column"`; fields without an entry come from the column of the same name.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// Poll mode: a column that grows with every insert and update.
    pub version_column: Option<String>,
}

/// A capture configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// libpq connection string of the department's database.
    pub conninfo: String,
    /// Logical or poll.
    #[serde(default)]
    pub mode: Mode,
    /// Names the slot and publication (`[a-z0-9_]`) and the event ids.
    pub name: String,
    /// Where the capture keeps its own state.
    pub state_dir: Option<PathBuf>,
    /// Idle time after which a heartbeat moves the slot on.
    #[serde(default = "default_heartbeat", with = "duration")]
    pub heartbeat: Duration,
    /// How often to look for changes when there were none.
    #[serde(default = "default_poll", with = "duration")]
    pub poll_interval: Duration,
    /// Poll mode: how often to scan keys for deletes.
    #[serde(default = "default_delete_check", with = "duration")]
    pub delete_check: Duration,
    /// Offset for timestamps without one.
    pub timezone: Option<String>,
    /// MySQL: the replica id the capture registers with (unique among the
    /// server's replicas). Default: derived from `name`.
    pub server_id: Option<u32>,
    /// The tables.
    #[serde(rename = "table")]
    pub tables: Vec<TableSpec>,
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(10)
}
fn default_poll() -> Duration {
    Duration::from_millis(200)
}
fn default_delete_check() -> Duration {
    Duration::from_secs(30)
}

mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

impl From<tokio_postgres::Error> for CaptureError {
    fn from(e: tokio_postgres::Error) -> CaptureError {
        CaptureError::Postgres(e)
    }
}

/// Why capture cannot run.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The configuration does not fit the catalog or itself.
    #[error("capture config: {0}")]
    Config(String),
    /// PostgreSQL refused or failed.
    /// (Not a `source`: the server's error chain prints DETAIL, which
    /// quotes key values; `describe` is all that is shown.)
    #[error("PostgreSQL: {}", govbus_pg::describe(.0))]
    Postgres(tokio_postgres::Error),
    /// Publishing failed; the position did not move.
    #[error("publishing failed (the position did not move; restart to resume): {0}")]
    Publish(#[from] govbus_adapter::PublishError),
    /// A table's owner has no publisher (a bug in the capture's setup).
    #[error("no publisher for {0}")]
    NoPublisher(String),
    /// Local state.
    #[error("state: {0}")]
    State(#[from] std::io::Error),
    /// The replication connection failed.
    #[error(transparent)]
    Replication(#[from] replication::ReplicationError),
    /// The change stream holds a message govbus cannot decode; the position
    /// stays before it.
    #[error("undecodable change at LSN {lsn} (the position stays before it): {detail}")]
    Undecodable {
        /// Where.
        lsn: String,
        /// What.
        detail: String,
    },
    /// The MySQL connection failed (a restart reconnects).
    #[error("{0}")]
    MysqlConnection(String),
    /// A binlog position too far on for a source version (below 2^63).
    #[error("{0}; the capture stops rather than publish versions that go backwards")]
    VersionOverflow(String),
    /// `wal_level` is not `logical`.
    #[error("logical replication is not enabled on this database (wal_level = {0}); set wal_level = logical and restart PostgreSQL, or use mode = \"poll\" with a version_column per table")]
    NotLogical(String),
}

impl CaptureError {
    /// Whether restarting (reconnecting) can help. A table without a
    /// publisher is a setup bug: restarting cannot help, so the capture stops.
    pub fn is_transient(&self) -> bool {
        match self {
            CaptureError::Postgres(_)
            | CaptureError::Publish(_)
            | CaptureError::MysqlConnection(_) => true,
            CaptureError::Replication(e) => e.is_transient(),
            _ => false,
        }
    }
}

impl Config {
    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<Config, CaptureError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CaptureError::Config(format!("{}: {e}", path.display())))?;
        toml::from_str(&text)
            .map_err(|e| CaptureError::Config(format!("{}: {}", path.display(), e.message())))
    }
}

struct Table {
    spec: TableSpec,
    schema: String,
    name: String,
    mapper: Mapper,
    owner: String,
}

fn split_table(t: &str) -> (String, String) {
    match t.split_once('.') {
        Some((s, n)) => (s.to_owned(), n.to_owned()),
        None => ("public".to_owned(), t.to_owned()),
    }
}

fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// What a capture run did (for logs and tests).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Changes published.
    pub published: u64,
    /// Rows rejected by validation (reason codes logged with their LSN).
    pub rejected: u64,
    /// Heartbeats emitted.
    pub heartbeats: u64,
}

/// A running capture.
pub struct Capture {
    config: Config,
    tables: Vec<Table>,
    engine: Engine,
    /// The PostgreSQL connection (a MySQL capture has none).
    client: Option<Client>,
    /// A MySQL capture's server.
    mysql: Option<mysql_async::Opts>,
    state_dir: PathBuf,
    metrics: Metrics,
    /// What happened so far.
    pub counts: Counts,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct State {
    /// Logical: the initial snapshot was published at this version.
    snapshot_done: Option<u64>,
    /// Poll: highest version published, per table.
    #[serde(default)]
    positions: BTreeMap<String, i64>,
    /// Poll: keys published and not deleted, per table.
    #[serde(default)]
    keys: BTreeMap<String, Vec<String>>,
    /// MySQL: the binlog position after the last published transaction.
    #[serde(default)]
    binlog: Option<mysql::Position>,
}

impl Capture {
    /// Checks the configuration against the catalog and connects.
    pub async fn connect(
        config: Config,
        catalog: &Catalog,
        metrics: Metrics,
    ) -> Result<Capture, CaptureError> {
        let mut capture = Capture::prepare(config, catalog, metrics)?;
        let (client, connection) = tokio_postgres::connect(&capture.config.conninfo, NoTls).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::error!(message = "PostgreSQL connection ended.", error = %govbus_pg::describe(&error));
            }
        });
        capture.client = Some(client);
        Ok(capture)
    }

    /// Checks a MySQL/MariaDB capture's configuration against the catalog;
    /// `conninfo` is a `mysql://user:password@host:port/database` URL.
    pub fn connect_mysql(
        config: Config,
        catalog: &Catalog,
        metrics: Metrics,
    ) -> Result<Capture, CaptureError> {
        if config.mode != Mode::Logical {
            return Err(CaptureError::Config(
                "`mode` does not apply to a MySQL capture (it reads the binlog); remove it".into(),
            ));
        }
        let opts = mysql_async::Opts::from_url(&config.conninfo).map_err(|e| {
            CaptureError::Config(format!(
                "conninfo: {e} (a MySQL capture takes mysql://user:password@host:3306/database)"
            ))
        })?;
        let mut capture = Capture::prepare(config, catalog, metrics)?;
        capture.mysql = Some(opts);
        Ok(capture)
    }

    /// The tables checked against the catalog, and the state directory.
    fn prepare(
        config: Config,
        catalog: &Catalog,
        metrics: Metrics,
    ) -> Result<Capture, CaptureError> {
        check_name(&config.name)?;
        let engine = Engine::new(catalog).map_err(|e| CaptureError::Config(e.to_string()))?;
        let mut tables = Vec::new();
        for t in &config.tables {
            let ds = catalog.dataset(&t.dataset).ok_or_else(|| {
                CaptureError::Config(format!(
                    "table {}: unknown dataset `{}`",
                    t.table, t.dataset
                ))
            })?;
            let mapping = MappingFile {
                dataset: Some(t.dataset.clone()),
                timezone: config.timezone.clone(),
                columns: if t.columns.is_empty() {
                    BTreeMap::new()
                } else {
                    // Unnamed fields come from the column of the same name.
                    let mut all: BTreeMap<String, String> =
                        govbus_catalog::fields::top_level(&ds.latest().schema)
                            .into_iter()
                            .map(|(f, _)| (f.to_owned(), f.to_owned()))
                            .collect();
                    all.extend(t.columns.clone());
                    all
                },
                ..MappingFile::default()
            };
            let mapper = Mapper::new(&mapping, ds).map_err(|p| {
                CaptureError::Config(format!("table {}: {}", t.table, p.join("; ")))
            })?;
            if config.mode == Mode::Poll && t.version_column.is_none() {
                return Err(CaptureError::Config(format!(
                    "table {}: poll mode needs `version_column`",
                    t.table
                )));
            }
            let (schema, name) = split_table(&t.table);
            tables.push(Table {
                spec: t.clone(),
                schema,
                name,
                mapper,
                owner: ds.owner.clone(),
            });
        }
        let state_dir = config
            .state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("var/capture").join(&config.name));
        std::fs::create_dir_all(&state_dir)?;
        metrics.start(&config.name);
        Ok(Capture {
            config,
            tables,
            engine,
            client: None,
            mysql: None,
            state_dir,
            metrics,
            counts: Counts::default(),
        })
    }

    fn pg(&self) -> Result<&Client, CaptureError> {
        self.client
            .as_ref()
            .ok_or_else(|| CaptureError::Config("this capture has no PostgreSQL connection".into()))
    }

    /// The ingest topic each table publishes to is its dataset owner's.
    pub fn owners(&self) -> Vec<String> {
        let mut o: Vec<String> = self.tables.iter().map(|t| t.owner.clone()).collect();
        o.sort();
        o.dedup();
        o
    }

    fn load_state(&self) -> Result<State, CaptureError> {
        match std::fs::read(self.state_dir.join("state.json")) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| CaptureError::Config(format!("state.json: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes the position durably (fsync, then rename), off the async
    /// worker.
    fn save_state(&self, s: &State) -> Result<(), CaptureError> {
        let tmp = self.state_dir.join("state.tmp");
        let bytes = serde_json::to_vec(s).map_err(std::io::Error::other)?;
        govbus_kafka::stage::blocking(|| {
            std::fs::write(&tmp, bytes)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, self.state_dir.join("state.json"))
        })?;
        Ok(())
    }

    /// Builds the change for a row of `table` (columns by name, text values).
    fn change(
        &mut self,
        t: usize,
        cells: Vec<(String, Cell)>,
        op: &'static str,
        version: u64,
        id: String,
    ) -> Option<Change> {
        let table = &self.tables[t];
        let row = Row {
            line: version,
            cells,
        };
        let record = match table.mapper.record(&row) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(message = "Row skipped.", table = %table.spec.table, version, problem = %e.message);
                self.metrics.rejected(
                    &table.owner,
                    &table.spec.dataset,
                    &table.spec.table,
                    "unreadable",
                );
                self.counts.rejected += 1;
                return None;
            }
        };
        if op == "delete" {
            let key = table.mapper.key_of(&record)?;
            return Some(Change {
                dataset: table.spec.dataset.clone(),
                op,
                key,
                value: None,
                version,
                id,
            });
        }
        let ds = self.engine.dataset(&table.spec.dataset)?;
        match ds
            .validate_json_value(&serde_json::Value::Object(record), &Context::now())
            .and_then(govbus_kafka::limits::publishable)
        {
            Ok(a) => Some(Change {
                dataset: table.spec.dataset.clone(),
                op,
                key: a.key,
                value: Some(a.value),
                version,
                id,
            }),
            Err(r) => {
                tracing::warn!(message = "Row rejected at the edge.", table = %table.spec.table, version, reason = r.reason.code(), field = r.field.as_deref().unwrap_or("-"), detail = %r.detail);
                self.metrics.rejected(
                    &table.owner,
                    &table.spec.dataset,
                    &table.spec.table,
                    r.reason.code(),
                );
                self.counts.rejected += 1;
                None
            }
        }
    }

    async fn select_all(
        &self,
        t: usize,
        filter: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Vec<(String, Cell)>>, CaptureError> {
        let table = &self.tables[t];
        let rows = self
            .pg()?
            .query(
                &format!(
                    "SELECT to_jsonb(x)::text FROM (SELECT * FROM {}.{} {filter}) x",
                    ident(&table.schema),
                    ident(&table.name)
                ),
                params,
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let text: String = r.get(0);
                let obj: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(&text).unwrap_or_default();
                obj.into_iter()
                    .map(|(k, v)| {
                        let cell = match v {
                            serde_json::Value::String(s) => Cell::Text(s),
                            serde_json::Value::Null => Cell::Text(String::new()),
                            other => Cell::Text(other.to_string()),
                        };
                        (k, cell)
                    })
                    .collect()
            })
            .collect())
    }

    /// Runs until `stop` turns true.
    pub async fn run(
        &mut self,
        publishers: &mut HashMap<String, Box<dyn Publisher + Send>>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), CaptureError> {
        if self.mysql.is_some() {
            return self.run_mysql(publishers, stop).await;
        }
        match self.config.mode {
            Mode::Logical => self.run_streaming(publishers, stop).await,
            Mode::LogicalSql => self.run_logical(publishers, stop).await,
            Mode::Poll => self.run_poll(publishers, stop).await,
        }
    }

    fn publish_all(
        &mut self,
        publishers: &mut HashMap<String, Box<dyn Publisher + Send>>,
        changes: &[(usize, Change)],
    ) -> Result<(), CaptureError> {
        let mut refused = vec![false; changes.len()];
        for (i, (t, c)) in changes.iter().enumerate() {
            let table = &self.tables[*t];
            let p = publishers
                .get_mut(&table.owner)
                .ok_or_else(|| CaptureError::NoPublisher(table.owner.clone()))?;
            match p.publish(c) {
                Ok(()) => {}
                // A record larger than the producer may send would be
                // refused on every retry and hold the position forever:
                // it is refused like any row that cannot be published.
                // (Validation refuses a value that large first,
                // `limits::publishable`; a delete is not validated, and one
                // with a key too large for the producer lands here.)
                Err(e) if e.is_too_large() => {
                    let reason = govbus_validate::Reason::MessageTooLarge.code();
                    tracing::warn!(message = "Row rejected at the edge.", table = %table.spec.table, version = c.version, reason, detail = %e);
                    self.metrics.rejected(
                        &table.owner,
                        &table.spec.dataset,
                        &table.spec.table,
                        reason,
                    );
                    self.counts.rejected += 1;
                    refused[i] = true;
                }
                Err(e) => return Err(CaptureError::Publish(e)),
            }
        }
        govbus_kafka::stage::blocking(|| {
            for p in publishers.values_mut() {
                p.flush().map_err(CaptureError::Publish)?;
            }
            Ok::<_, CaptureError>(())
        })?;
        for ((t, c), refused) in changes.iter().zip(refused) {
            if !refused {
                self.counts.published += 1;
                self.metrics
                    .published(&self.config.name, &self.tables[*t].spec.table, c.op);
            }
        }
        Ok(())
    }

    /// Checks `wal_level` and creates the publication if it is missing.
    async fn ensure_publication(&self) -> Result<(), CaptureError> {
        let level: String = self.pg()?.query_one("SHOW wal_level", &[]).await?.get(0);
        if level != "logical" {
            return Err(CaptureError::NotLogical(level));
        }
        self.ensure_full_identity().await?;
        let name = &self.config.name;
        let list: Vec<String> = self
            .tables
            .iter()
            .map(|t| format!("{}.{}", ident(&t.schema), ident(&t.name)))
            .collect();
        let exists = !self
            .pg()?
            .query(
                "SELECT 1 FROM pg_publication WHERE pubname = $1::text::name",
                &[name],
            )
            .await?
            .is_empty();
        if !exists {
            self.pg()?
                .batch_execute(&format!(
                    "CREATE PUBLICATION {} FOR TABLE {}",
                    ident(name),
                    list.join(", ")
                ))
                .await?;
        }
        Ok(())
    }

    /// Makes every captured table `REPLICA IDENTITY FULL`, or refuses to
    /// start. Under any other identity an UPDATE leaves out a large value
    /// it did not change (TOASTed: sent as "unchanged", with no old row to
    /// take it from) and a DELETE carries only the identity's columns: the
    /// capture would publish a record without the value, and could not name
    /// the record a delete is of when the dataset's key is not the primary
    /// key. (MySQL's equivalent is `binlog_row_image = FULL`, also required.)
    async fn ensure_full_identity(&self) -> Result<(), CaptureError> {
        for t in &self.tables {
            let row = self
                .pg()?
                .query_opt(
                    "SELECT c.relreplident::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1::text::name AND c.relname = $2::text::name",
                    &[&t.schema, &t.name],
                )
                .await?;
            let Some(row) = row else {
                continue; // a missing table is reported where it is read
            };
            let identity: String = row.get(0);
            if identity == "f" {
                continue;
            }
            let table = format!("{}.{}", ident(&t.schema), ident(&t.name));
            let kind = match identity.as_str() {
                "d" => "DEFAULT (the primary key)",
                "n" => "NOTHING",
                "i" => "USING INDEX",
                _ => "not FULL",
            };
            // The ALTER takes the table's strongest lock: it waits at most
            // 5 s behind a long transaction (the department's writes queue
            // behind a waiting ALTER), and a timeout is transient (the
            // capture reconnects and tries again), unlike a refusal.
            let altered = self
                .pg()?
                .batch_execute(&format!(
                    "SET lock_timeout = '5s'; ALTER TABLE {table} REPLICA IDENTITY FULL; RESET lock_timeout"
                ))
                .await;
            match altered {
                Ok(()) => tracing::info!(message = "Table set to REPLICA IDENTITY FULL, so that updates carry every value and deletes the whole old row.", table = %t.spec.table, was = kind),
                Err(e) if e.code() != Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
                    let _ = self.pg()?.batch_execute("RESET lock_timeout").await;
                    return Err(CaptureError::Postgres(e));
                }
                Err(e) => {
                    return Err(CaptureError::Config(format!(
                        "table {}: REPLICA IDENTITY is {kind}, and setting it to FULL failed ({}); run `ALTER TABLE {table} REPLICA IDENTITY FULL;` as the table's owner. Without it an UPDATE leaves out large values it did not change and a DELETE carries only the identity's columns, so changes would be published without values or not at all",
                        t.spec.table,
                        govbus_pg::describe(&e)
                    )))
                }
            }
        }
        Ok(())
    }

    /// The slot's restart point: the oldest WAL a resumed decoding reads,
    /// at or below every change it can still send.
    async fn restart_lsn(&self) -> Result<u64, CaptureError> {
        let row = self
            .pg()?
            .query_one("SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = $1::text::name", &[&self.config.name])
            .await?;
        Ok(parse_lsn(
            &row.get::<_, Option<String>>(0).unwrap_or_default(),
        ))
    }

    /// The slot's confirmed position, if the slot exists.
    async fn slot_position(&self) -> Result<Option<u64>, CaptureError> {
        let slot = self
            .pg()?
            .query("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1::text::name", &[&self.config.name])
            .await?;
        Ok(slot
            .first()
            .map(|row| parse_lsn(&row.get::<_, Option<String>>(0).unwrap_or_default())))
    }

    /// Publishes every table's rows, versioned at the slot's position
    /// `start`, unless that was done already. With `snapshot`, the rows are
    /// read in the snapshot the slot was created with, so they are exactly
    /// the state at `start`; without (a slot created earlier, the snapshot
    /// not finished), they are read now, which later changes (all versioned
    /// after `start`) bring to the same end state.
    async fn initial_snapshot(
        &mut self,
        publishers: &mut HashMap<String, Box<dyn Publisher + Send>>,
        state: &mut State,
        start: u64,
        snapshot: Option<&str>,
    ) -> Result<(), CaptureError> {
        if state.snapshot_done.is_some() {
            return Ok(());
        }
        let name = self.config.name.clone();
        // The rows' version is just below the slot's restart point, not its
        // consistent point: a transaction that was running when the slot was
        // created is not in the snapshot, commits later and is streamed with
        // its changes' own LSNs — which can be below the consistent point
        // but never below the restart point. Versioned at the consistent
        // point, the snapshot's older value would win over those changes.
        let version = self.restart_lsn().await?.saturating_sub(1);
        if let Some(id) = snapshot {
            // Snapshot names are `[0-9A-F-]`; anything else is refused by the server.
            self.pg()?
                .batch_execute(&format!(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
                    id.replace('\'', "")
                ))
                .await?;
        }
        let mut changes = Vec::new();
        for t in 0..self.tables.len() {
            let rows = self.select_all(t, "", &[]).await?;
            for (n, cells) in rows.into_iter().enumerate() {
                let id = format!("cdc-{name}-snap-{start}-{t}-{n}");
                if let Some(c) = self.change(t, cells, "snapshot", version, id) {
                    changes.push((t, c));
                }
            }
        }
        if snapshot.is_some() {
            self.pg()?.batch_execute("COMMIT").await?;
        }
        tracing::info!(
            message = "Initial snapshot.",
            rows = changes.len(),
            version,
            exact = snapshot.is_some()
        );
        self.publish_all(publishers, &changes)?;
        state.snapshot_done = Some(start);
        self.save_state(state)
    }

    /// Applies one decoded message: row changes go to `out`.
    fn apply(
        &mut self,
        relations: &mut Relations,
        msg: Message,
        lsn: u64,
        out: &mut Vec<(usize, Change)>,
    ) -> Boundary {
        let name = self.config.name.clone();
        match msg {
            Message::Relation(id, rel) => {
                relations.insert(id, rel);
            }
            Message::Begin { .. } => return Boundary::Begin,
            Message::Commit { end_lsn } => return Boundary::Commit(end_lsn),
            Message::Message { .. } => return Boundary::Message(lsn),
            Message::Insert { rel, new } => {
                self.row_change(relations, rel, "create", None, Some(new), lsn, &name, out)
            }
            Message::Update { rel, old, new } => {
                self.row_change(relations, rel, "update", old, Some(new), lsn, &name, out)
            }
            Message::Delete { rel, old } => {
                self.row_change(relations, rel, "delete", Some(old), None, lsn, &name, out)
            }
            Message::Truncate(rels) => {
                for r in rels {
                    let t = relations
                        .get(&r)
                        .map(|x| format!("{}.{}", x.namespace, x.name))
                        .unwrap_or_default();
                    tracing::error!(message = "TRUNCATE is not captured as deletes; publish a snapshot of the table to reconcile.", table = %t);
                }
            }
            Message::Other(_) => {}
        }
        Boundary::None
    }

    /// Writes a heartbeat into the WAL (so that an idle slot advances) and
    /// reads how much WAL the slot holds back.
    async fn heartbeat(&mut self) -> Result<(), CaptureError> {
        self.pg()?
            .query(
                "SELECT pg_logical_emit_message(false, 'govbus.heartbeat', '')",
                &[],
            )
            .await?;
        self.counts.heartbeats += 1;
        self.metrics.heartbeat(&self.config.name);
        let retained = self
            .pg()?
            .query_one("SELECT COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint FROM pg_replication_slots WHERE slot_name = $1::text::name", &[&self.config.name])
            .await?;
        self.metrics.retained(&self.config.name, retained.get(0));
        Ok(())
    }

    /// Logical decoding over the streaming replication protocol.
    async fn run_streaming(
        &mut self,
        publishers: &mut HashMap<String, Box<dyn Publisher + Send>>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), CaptureError> {
        self.ensure_publication().await?;
        let name = self.config.name.clone();
        let mut repl = replication::Replication::connect(&self.config.conninfo).await?;
        let mut state = self.load_state()?;
        let start = match self.slot_position().await? {
            Some(lsn) => {
                self.metrics.position(&self.config.name, lsn);
                self.initial_snapshot(publishers, &mut state, lsn, None)
                    .await?;
                lsn
            }
            None => {
                // The slot exports the snapshot of its consistent point; it
                // stays usable while this connection runs nothing else.
                let rows = repl
                    .command(&format!(
                        "CREATE_REPLICATION_SLOT \"{name}\" LOGICAL pgoutput EXPORT_SNAPSHOT"
                    ))
                    .await?;
                let row = rows.first().ok_or_else(|| {
                    replication::ReplicationError::Protocol(
                        "CREATE_REPLICATION_SLOT returned no row".into(),
                    )
                })?;
                let lsn = parse_lsn(row.get(1).and_then(Option::as_deref).unwrap_or(""));
                let snapshot = row.get(2).cloned().flatten();
                self.metrics.position(&self.config.name, lsn);
                state.snapshot_done = None;
                self.initial_snapshot(publishers, &mut state, lsn, snapshot.as_deref())
                    .await?;
                lsn
            }
        };
        repl.start(&name, start, &name).await?;
        tracing::info!(message = "Streaming changes.", slot = %name, from = %format_lsn(start));
        let mut relations = Relations::new();
        let mut changes: Vec<(usize, Change)> = Vec::new();
        // Inside a transaction's messages (between Begin and Commit).
        let mut in_txn = false;
        // The newest transaction end whose changes are all in `changes` or published.
        let mut safe: Option<u64> = None;
        let mut confirmed = start;
        let mut last_status = Instant::now();
        let mut idle_since = Instant::now();
        loop {
            // Publish at a transaction end when nothing more is already in
            // hand (low latency), or when the batch is large (bounded memory,
            // also inside one large transaction); confirm only whole
            // transactions whose changes Kafka acknowledged.
            let at_rest = !repl.has_buffered();
            if !changes.is_empty() && (changes.len() >= STREAM_BATCH || (at_rest && safe.is_some()))
            {
                self.publish_all(publishers, &changes)?;
                changes.clear();
            }
            if changes.is_empty() && at_rest {
                if let Some(lsn) = safe.take() {
                    confirmed = confirmed.max(lsn);
                    repl.status(confirmed).await?;
                    self.metrics.position(&self.config.name, confirmed);
                    last_status = Instant::now();
                }
            }
            let status_due = last_status + STATUS_EVERY;
            let heartbeat_due = idle_since + self.config.heartbeat;
            let event = tokio::select! {
                e = repl.recv() => Some(e?),
                _ = stop.changed() => return Ok(()),
                _ = tokio::time::sleep_until(status_due.min(heartbeat_due).into()) => None,
            };
            if *stop.borrow() {
                return Ok(());
            }
            match event {
                Some(replication::Event::XLogData { start: lsn, data }) => {
                    idle_since = Instant::now();
                    let msg = pgoutput::decode(&data).map_err(|e| CaptureError::Undecodable {
                        lsn: format_lsn(lsn),
                        detail: e.to_string(),
                    })?;
                    match self.apply(&mut relations, msg, lsn, &mut changes) {
                        Boundary::Begin => in_txn = true,
                        Boundary::Commit(end) => {
                            in_txn = false;
                            safe = Some(end);
                        }
                        Boundary::Message(at) if !in_txn => safe = Some(at),
                        Boundary::Message(_) | Boundary::None => {}
                    }
                }
                Some(replication::Event::Keepalive { end, reply }) => {
                    // Nothing in hand: everything the server sent before `end`
                    // is settled, so the slot may move there (as PostgreSQL's
                    // own subscriber does); WAL of other tables is released.
                    if !in_txn && changes.is_empty() && safe.is_none() && end > confirmed {
                        confirmed = end;
                        self.metrics.position(&self.config.name, confirmed);
                    }
                    if reply {
                        repl.status(confirmed).await?;
                        last_status = Instant::now();
                    }
                }
                None => {
                    if Instant::now() >= status_due {
                        repl.status(confirmed).await?;
                        last_status = Instant::now();
                    }
                    if Instant::now() >= heartbeat_due {
                        self.heartbeat().await?;
                        idle_since = Instant::now();
                    }
                }
            }
        }
    }

    /// Logical decoding read through the SQL interface, polled.
    async fn run_logical(
        &mut self,
        publishers: &mut HashMap<String, Box<dyn Publisher + Send>>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), CaptureError> {
        self.ensure_publication().await?;
        let name = self.config.name.clone();
        let mut state = self.load_state()?;
        let start: u64 = if let Some(lsn) = self.slot_position().await? {
            lsn
        } else {
            let row = self
                .pg()?
                .query_one("SELECT lsn::text FROM pg_create_logical_replication_slot($1::text::name, 'pgoutput')", &[&name])
                .await?;
            state.snapshot_done = None;
            parse_lsn(&row.get::<_, String>(0))
        };
        // The slot's confirmed position is the resume point: report it before
        // anything moves it, so a restarted capture is never shown at 0.
        self.metrics.position(&self.config.name, start);
        self.initial_snapshot(publishers, &mut state, start, None)
            .await?;
        tracing::info!(message = "Streaming changes.", slot = %name);
        let mut idle_since = Instant::now();
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let rows = self
                .pg()?
                .query(
                    "SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes($1::text::name, NULL, 10000, 'proto_version', '1', 'publication_names', $2::text, 'messages', 'true')",
                    &[&name, &name],
                )
                .await?;
            let mut relations = Relations::new();
            let mut changes: Vec<(usize, Change)> = Vec::new();
            let mut safe: Option<u64> = None;
            for r in &rows {
                let lsn = parse_lsn(&r.get::<_, String>(0));
                let data: Vec<u8> = r.get(1);
                let msg = match pgoutput::decode(&data) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::error!(message = "Undecodable change; stopping before it.", lsn, error = %e);
                        break;
                    }
                };
                match self.apply(&mut relations, msg, lsn, &mut changes) {
                    Boundary::Commit(end) => safe = Some(end),
                    Boundary::Message(at) => safe = Some(at),
                    Boundary::Begin | Boundary::None => {}
                }
            }
            // Changes of unfinished transactions are not returned by the peek; everything up
            // to the last commit (or heartbeat) is complete.
            if !changes.is_empty() {
                self.publish_all(publishers, &changes)?;
            }
            if let Some(lsn) = safe {
                // `end_lsn` is where the slot now is (it never moves back), which
                // is what the gauge promises: the confirmed position.
                let row = self
                    .pg()?
                    .query_one(
                        "SELECT end_lsn::text FROM pg_replication_slot_advance($1::text::name, $2::text::pg_lsn)",
                        &[&name, &format_lsn(lsn)],
                    )
                    .await?;
                let confirmed = row
                    .get::<_, Option<String>>(0)
                    .map_or(lsn, |t| parse_lsn(&t));
                self.metrics.position(&self.config.name, confirmed);
            }
            if rows.is_empty() {
                if idle_since.elapsed() >= self.config.heartbeat {
                    self.heartbeat().await?;
                    idle_since = Instant::now();
                }
                tokio::time::sleep(self.config.poll_interval).await;
            } else {
                idle_since = Instant::now();
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn row_change(
        &mut self,
        relations: &Relations,
        rel: u32,
        op: &'static str,
        old: Option<Vec<Value>>,
        new: Option<Vec<Value>>,
        lsn: u64,
        name: &str,
        out: &mut Vec<(usize, Change)>,
    ) {
        let Some(r) = relations.get(&rel) else {
            tracing::error!(
                message = "Change for a relation never described; skipped.",
                rel,
                lsn
            );
            return;
        };
        let Some(t) = self
            .tables
            .iter()
            .position(|t| t.schema == r.namespace && t.name == r.name)
        else {
            return;
        };
        let cells = |vals: &[Value], fill: Option<&[Value]>| -> Vec<(String, Cell)> {
            r.columns
                .iter()
                .zip(vals)
                .enumerate()
                .filter_map(|(i, ((col, _), v))| {
                    let v = match (v, fill.and_then(|f| f.get(i))) {
                        (Value::Unchanged, Some(old)) => old,
                        (v, _) => v,
                    };
                    match v {
                        Value::Text(s) => Some((col.clone(), Cell::Text(s.clone()))),
                        Value::Null => Some((col.clone(), Cell::Text(String::new()))),
                        // Not under REPLICA IDENTITY FULL (ensured at start):
                        // the old row then carries every value.
                        Value::Unchanged => {
                            tracing::error!(message = "An update left a value out (unchanged, and no old row to take it from): is the table's REPLICA IDENTITY still FULL?", table = %self.tables[t].spec.table, column = %col);
                            None
                        }
                    }
                })
                .collect()
        };
        match (old, new) {
            (Some(old), None) => {
                if let Some(c) = self.change(
                    t,
                    cells(&old, None),
                    "delete",
                    lsn,
                    format!("cdc-{name}-{lsn}"),
                ) {
                    out.push((t, c));
                }
            }
            (old, Some(new)) => {
                let fill = old.as_deref();
                let after = cells(&new, fill);
                // A changed key: the old key is deleted, the new one created.
                if let Some(o) = &old {
                    let before = cells(o, None);
                    let table = &self.tables[t];
                    let rec = |c: Vec<(String, Cell)>| {
                        table
                            .mapper
                            .record(&Row {
                                line: lsn,
                                cells: c,
                            })
                            .ok()
                            .and_then(|r| table.mapper.key_of(&r))
                    };
                    let (k_old, k_new) = (rec(before.clone()), rec(after.clone()));
                    if k_old.is_some() && k_old != k_new {
                        if let Some(c) =
                            self.change(t, before, "delete", lsn, format!("cdc-{name}-{lsn}-d"))
                        {
                            out.push((t, c));
                        }
                    }
                }
                if let Some(c) = self.change(t, after, op, lsn, format!("cdc-{name}-{lsn}")) {
                    out.push((t, c));
                }
            }
            (None, None) => {}
        }
    }

    async fn run_poll(
        &mut self,
        publishers: &mut HashMap<String, Box<dyn Publisher + Send>>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), CaptureError> {
        let mut state = self.load_state()?;
        let name = self.config.name.clone();
        let mut last_delete_check = Instant::now() - self.config.delete_check;
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let mut any = false;
            for t in 0..self.tables.len() {
                let spec = self.tables[t].spec.clone();
                let vcol = spec.version_column.clone().unwrap_or_default();
                let from = state
                    .positions
                    .get(&spec.table)
                    .copied()
                    .unwrap_or(i64::MIN);
                let mut rows = self
                    .select_all(
                        t,
                        &format!(
                            "WHERE {} > $1 ORDER BY {} LIMIT {POLL_LIMIT}",
                            ident(&vcol),
                            ident(&vcol)
                        ),
                        &[&from],
                    )
                    .await?;
                // A full page may have cut the last version's rows in two:
                // the position moves past that version, so read all of them
                // now, or the rest would never be seen.
                if rows.len() == POLL_LIMIT {
                    let last = rows.last().map_or(from, |r| row_version(r, &vcol, from));
                    rows.retain(|r| row_version(r, &vcol, from) != last);
                    let rest = self
                        .select_all(t, &format!("WHERE {} = $1", ident(&vcol)), &[&last])
                        .await?;
                    rows.extend(rest);
                }
                if rows.is_empty() {
                    continue;
                }
                any = true;
                let mut changes = Vec::new();
                let mut top = from;
                let known: HashSet<String> = state
                    .keys
                    .get(&spec.table)
                    .map(|k| k.iter().cloned().collect())
                    .unwrap_or_default();
                let mut new_keys = Vec::new();
                for cells in rows {
                    let v = row_version(&cells, &vcol, from);
                    top = top.max(v);
                    let version = u64::try_from(v).unwrap_or(0);
                    if let Some(c) = self.change(t, cells, "update", version, String::new()) {
                        let op = if known.contains(&c.key) {
                            "update"
                        } else {
                            "create"
                        };
                        new_keys.push(c.key.clone());
                        changes.push((t, Change { op, ..c }));
                    }
                }
                // Rows sharing a version (an `updated_at` of the same
                // millisecond) get distinct ids: their rank by key within
                // the version — the same on a re-read.
                changes.sort_by(|(_, a), (_, b)| (a.version, &a.key).cmp(&(b.version, &b.key)));
                let mut rank = 0;
                for i in 0..changes.len() {
                    let same = i > 0 && changes[i - 1].1.version == changes[i].1.version;
                    rank = if same { rank + 1 } else { 0 };
                    let v = changes[i].1.version;
                    changes[i].1.id = format!("cdc-{name}-{t}-{v}-{rank}");
                }
                self.publish_all(publishers, &changes)?;
                state.positions.insert(spec.table.clone(), top);
                self.metrics
                    .position(&self.config.name, u64::try_from(top).unwrap_or(0));
                let keys = state.keys.entry(spec.table.clone()).or_default();
                let mut set: HashSet<String> = keys.drain(..).collect();
                set.extend(new_keys);
                keys.extend(set);
                self.save_state(&state)?;
            }
            if last_delete_check.elapsed() >= self.config.delete_check {
                last_delete_check = Instant::now();
                for t in 0..self.tables.len() {
                    let spec = self.tables[t].spec.clone();
                    let vcol = spec.version_column.clone().unwrap_or_default();
                    let rows = self.select_all(t, "", &[]).await?;
                    let mut present = HashSet::new();
                    let mut top = 0i64;
                    for cells in rows {
                        if let Some(Cell::Text(v)) =
                            cells.iter().find(|(c, _)| *c == vcol).map(|(_, c)| c)
                        {
                            top = top.max(v.parse().unwrap_or(0));
                        }
                        let table = &self.tables[t];
                        if let Some(k) = table
                            .mapper
                            .record(&Row { line: 0, cells })
                            .ok()
                            .and_then(|r| table.mapper.key_of(&r))
                        {
                            present.insert(k);
                        }
                    }
                    let known = state.keys.get(&spec.table).cloned().unwrap_or_default();
                    let mut gone: Vec<String> = known
                        .iter()
                        .filter(|k| !present.contains(*k))
                        .cloned()
                        .collect();
                    gone.sort();
                    if gone.is_empty() {
                        continue;
                    }
                    // Newer than any version the table has handed out so far.
                    let version = u64::try_from(
                        top.max(state.positions.get(&spec.table).copied().unwrap_or(0)) + 1,
                    )
                    .unwrap_or(0);
                    let changes: Vec<(usize, Change)> = gone
                        .iter()
                        .enumerate()
                        .map(|(n, k)| {
                            (
                                t,
                                Change {
                                    dataset: spec.dataset.clone(),
                                    op: "delete",
                                    key: k.clone(),
                                    value: None,
                                    version,
                                    id: format!("cdc-{name}-{t}-del-{version}-{n}"),
                                },
                            )
                        })
                        .collect();
                    self.publish_all(publishers, &changes)?;
                    state.keys.insert(
                        spec.table.clone(),
                        known.into_iter().filter(|k| present.contains(k)).collect(),
                    );
                    self.save_state(&state)?;
                    any = true;
                }
            }
            if !any {
                tokio::time::sleep(self.config.poll_interval).await;
            }
        }
    }
}

/// What [`drop_replication`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// The replication slot existed and was dropped.
    pub slot: bool,
    /// The publication existed and was dropped.
    pub publication: bool,
}

/// Drops the replication slot and the publication a logical capture named
/// `config.name` created (both are kept when it stops, so that a restart
/// resumes where it was). Idempotent: what does not exist is left alone. The
/// capture must be stopped; a slot in use is an error. The local state is
/// kept: without a slot, the next start creates one and publishes a new
/// initial snapshot.
pub async fn drop_replication(config: &Config) -> Result<Dropped, CaptureError> {
    check_name(&config.name)?;
    let (client, connection) = tokio_postgres::connect(&config.conninfo, NoTls).await?;
    let connection = tokio::spawn(connection);
    let slot = client
        .query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1::text::name",
            &[&config.name],
        )
        .await?
        .len()
        == 1;
    let publication = !client
        .query(
            "SELECT 1 FROM pg_publication WHERE pubname = $1::text::name",
            &[&config.name],
        )
        .await?
        .is_empty();
    if publication {
        client
            .batch_execute(&format!(
                "DROP PUBLICATION IF EXISTS {}",
                ident(&config.name)
            ))
            .await?;
    }
    drop(client);
    let _ = connection.await;
    Ok(Dropped { slot, publication })
}

fn check_name(name: &str) -> Result<(), CaptureError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(CaptureError::Config(format!(
            "name `{name}`: use [a-z0-9_]"
        )));
    }
    Ok(())
}

/// Parses `16/B374D848` into a number.
pub fn parse_lsn(s: &str) -> u64 {
    match s.split_once('/') {
        Some((hi, lo)) => {
            (u64::from_str_radix(hi, 16).unwrap_or(0) << 32)
                | u64::from_str_radix(lo, 16).unwrap_or(0)
        }
        None => 0,
    }
}

/// Formats an LSN as PostgreSQL writes it.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Producer settings a capture's publishers start from (`--kafka` settings
/// come after and win): a capture flushes at every transaction end, so
/// lingering for a fuller batch would only delay each commit.
pub const PRODUCER_DEFAULTS: &[(&str, &str)] = &[("linger.ms", "1")];

/// Changes the streaming reader holds before publishing them (also inside
/// one large transaction; the position moves only at transaction ends).
const STREAM_BATCH: usize = 10_000;

/// How often the streaming reader reports its position when nothing else
/// makes it (well inside the server's `wal_sender_timeout`, 60 s by default).
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// What a decoded message means for the position.
enum Boundary {
    None,
    Begin,
    /// A transaction ended; resume after this.
    Commit(u64),
    /// A non-transactional logical message (the heartbeat) at this position.
    Message(u64),
}

/// Rows a poll reads at most at once (more sharing the last version are read too).
const POLL_LIMIT: usize = 5000;

/// A polled row's version column, or `default`.
fn row_version(cells: &[(String, Cell)], vcol: &str, default: i64) -> i64 {
    cells
        .iter()
        .find(|(c, _)| c == vcol)
        .and_then(|(_, cell)| match cell {
            Cell::Text(s) => s.parse().ok(),
            _ => None,
        })
        .unwrap_or(default)
}
