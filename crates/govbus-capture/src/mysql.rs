//! MySQL / MariaDB change capture from the row-based binary log.
//!
//! First a consistent initial snapshot: `START TRANSACTION WITH CONSISTENT
//! SNAPSHOT` and, in the same transaction, the binlog position it
//! corresponds to (MariaDB's `binlog_snapshot_file`/`_position`; on MySQL
//! a brief `FLUSH TABLES WITH READ LOCK` around it). Then the binlog from
//! that position (`COM_BINLOG_DUMP` as a replica with its own `server_id`),
//! row events decoded with the column names the server writes into each
//! table map (`binlog_row_metadata = FULL`, so a table's layout is never
//! guessed, also across `ALTER TABLE`). The position (file and offset after
//! the last whole transaction) is saved only after Kafka acknowledged every
//! change before it: a restart repeats at most the unacknowledged tail, with
//! the same event ids and versions.
//!
//! A change's source version is its place in the binlog: the file's
//! sequence number, the rows event's end offset and the row's index in the
//! event (`seq << 48 | offset << 16 | row`), growing in commit order.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use futures_util::{FutureExt, StreamExt};
use govbus_adapter::row::Cell;
use govbus_adapter::{Change, Publisher};
use mysql_async::binlog::events::{EventData, OptionalMetadataField, RowsEventData, TableMapEvent};
use mysql_async::binlog::row::BinlogRow;
use mysql_async::binlog::value::BinlogValue;
use mysql_async::consts::ColumnType;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStreamRequest, Conn, Value};
use serde::{Deserialize, Serialize};

use crate::{Capture, CaptureError};

/// A binlog position: the file and the offset of the next event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// `mysql-bin.000042`.
    pub file: String,
    /// Offset in it.
    pub pos: u64,
}

impl Position {
    /// The file's sequence number (`mysql-bin.000042` → 42).
    fn seq(&self) -> u64 {
        file_seq(&self.file)
    }
}

fn file_seq(file: &str) -> u64 {
    file.rsplit('.')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A rotate event's file name, without the 4-byte checksum that the
/// artificial first rotate event still carries (`checksum`).
fn binlog_name(raw: &[u8], checksum: bool) -> String {
    let raw = if checksum {
        &raw[..raw.len().saturating_sub(4)]
    } else {
        raw
    };
    String::from_utf8_lossy(raw).into_owned()
}

/// The source version of row `row` of the rows event ending at `pos` in
/// `file`: file number, offset and row in 15, 32 and 16 bits, so versions
/// grow with the binlog and stay below 2^63 (a source version is a
/// PostgreSQL `bigint` at the sinks). A position beyond that is refused,
/// never wrapped: a wrapped version would make every later change look
/// older than the ones before it, and be dropped as stale downstream.
fn version(file: &str, pos: u64, row: usize) -> Result<u64, CaptureError> {
    let seq = file_seq(file);
    if seq >= 1 << 15 || pos > u64::from(u32::MAX) || row > 0xFFFF {
        return Err(CaptureError::VersionOverflow(format!(
            "binlog position {file}:{pos} row {row} does not fit a source version (binlog file number below 32768, offset below 4 GiB, rows per event below 65536)"
        )));
    }
    Ok((seq << 48) | (pos << 16) | row as u64)
}

/// How long the stream may stay silent (heartbeats come every second).
const SILENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// How often a capture that is catching up settles anyway.
const SETTLE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Event types that carry rows but that `mysql_common` does not decode:
/// MariaDB's compressed query and row events (165–171) and its encryption
/// start (164). Skipping one would lose its rows.
fn refused_event(raw: u8) -> bool {
    (164..=171).contains(&raw)
}

fn mysql_error(e: mysql_async::Error) -> CaptureError {
    let transient = matches!(e, mysql_async::Error::Io(_) | mysql_async::Error::Driver(_));
    let hint = match &e {
        mysql_async::Error::Server(s) => match s.code {
            1227 | 1044 | 1142 => " — the capture's user needs: GRANT SELECT, RELOAD, REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO <user> (MariaDB 10.5+: REPLICATION SLAVE, BINLOG MONITOR instead of REPLICATION CLIENT)",
            1045 => " — wrong user or password in conninfo",
            1236 => " — the binlog the capture stopped at is gone from the server (purged by expire_logs_days / binlog_expire_logs_seconds): delete the capture's state directory to start again with a new snapshot",
            _ => "",
        },
        _ => "",
    };
    let text = format!("MySQL: {e}{hint}");
    if transient {
        CaptureError::MysqlConnection(text)
    } else {
        CaptureError::Config(text)
    }
}

/// One captured table's column layout, from its table map.
#[derive(Debug, Clone)]
struct Layout {
    /// Index into the capture's tables.
    table: usize,
    names: Vec<String>,
    enums: Vec<Option<Vec<String>>>,
    /// Each column's type and character set, looked up once per table map
    /// rather than once per row.
    types: Vec<Option<ColumnType>>,
    charsets: Vec<Option<String>>,
}

impl Capture {
    /// Checks the server, takes the initial snapshot if it is not done, then
    /// follows the binlog until `stop`.
    pub(crate) async fn run_mysql(
        &mut self,
        publishers: &mut HashMap<String, Box<dyn Publisher + Send>>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), CaptureError> {
        let opts = self
            .mysql
            .clone()
            .ok_or_else(|| CaptureError::Config("not a MySQL capture".into()))?;
        let mut conn = Conn::new(opts.clone()).await.map_err(mysql_error)?;
        check_server(&mut conn).await?;
        let checksum: Option<String> = conn
            .query_first("SELECT @@global.binlog_checksum")
            .await
            .map_err(mysql_error)?;
        let checksums = checksum.is_some_and(|c| !c.eq_ignore_ascii_case("NONE"));
        let mut charsets = self.charsets(&mut conn).await?;
        let mut state = self.load_state()?;
        let start = match state.binlog.clone() {
            Some(p) => p,
            None => {
                let p = self.mysql_snapshot(&mut conn, publishers).await?;
                state.binlog = Some(p.clone());
                state.snapshot_done = Some(version(&p.file, p.pos, 0)?);
                self.save_state(&state)?;
                p
            }
        };
        self.metrics
            .position(&self.config.name, version(&start.file, start.pos, 0)?);
        let server_id = self
            .config
            .server_id
            .unwrap_or_else(|| default_server_id(&self.config.name));
        // Heartbeats from the server every second keep an idle stream alive
        // and tell a dead connection from a quiet one.
        conn.query_drop("SET @master_heartbeat_period = 1000000000")
            .await
            .map_err(mysql_error)?;
        let mut stream = conn
            .get_binlog_stream(
                BinlogStreamRequest::new(server_id)
                    .with_filename(start.file.as_bytes())
                    .with_pos(start.pos),
            )
            .await
            .map_err(|e| match &e {
                // MariaDB answers a replica registration without the
                // privilege with a plain "access denied".
                mysql_async::Error::Server(se) if matches!(se.code, 1045 | 1227 | 1044) => {
                    CaptureError::Config(format!(
                        "MySQL: {e} — reading the binlog needs REPLICATION SLAVE: GRANT REPLICATION SLAVE ON *.* TO <user>"
                    ))
                }
                _ => mysql_error(e),
            })?;
        tracing::info!(message = "Following the binlog.", file = %start.file, pos = start.pos, server_id);
        let name = self.config.name.clone();
        let mut file = start.file.clone();
        // The artificial rotate event that opens the stream comes before the
        // format description, so its name still carries the checksum.
        let mut seen_format = false;
        let mut layouts: HashMap<u64, Option<Layout>> = HashMap::new();
        let mut changes: Vec<(usize, Change)> = Vec::new();
        let mut safe: Option<Position> = None;
        let mut last_settle = Instant::now();
        loop {
            // Take what the stream already holds without waiting; when it
            // holds nothing more, settle: publish what is in hand and save the
            // position of the last whole transaction. Under load, many
            // transactions share one flush (one Kafka round trip each would
            // cap the capture at the broker's latency).
            // While catching up, the stream always holds more: settle at
            // least every second so the position keeps moving.
            if last_settle.elapsed() >= SETTLE_EVERY && (safe.is_some() || !changes.is_empty()) {
                self.settle_binlog(publishers, &mut changes, &mut safe, &mut state)?;
                last_settle = Instant::now();
            }
            let next = match stream.next().now_or_never() {
                Some(e) => e,
                None => {
                    self.settle_binlog(publishers, &mut changes, &mut safe, &mut state)?;
                    last_settle = Instant::now();
                    // The server sends a heartbeat every second when idle:
                    // silence means a dead connection, not a quiet server.
                    tokio::select! {
                        e = tokio::time::timeout(SILENCE, stream.next()) => e.map_err(|_| {
                            CaptureError::MysqlConnection(format!(
                                "MySQL: nothing from the server for {}s (not even a heartbeat); reconnecting",
                                SILENCE.as_secs()
                            ))
                        })?,
                        _ = stop.changed() => return Ok(()),
                    }
                }
            };
            if *stop.borrow() {
                return Ok(());
            }
            let Some(event) = next else {
                return Err(CaptureError::MysqlConnection(
                    "MySQL: the server ended the binlog stream".into(),
                ));
            };
            let event = event.map_err(mysql_error)?;
            let end = u64::from(event.header().log_pos());
            let data = event.read_data().map_err(|e| CaptureError::Undecodable {
                lsn: format!("{file}:{end}"),
                detail: e.to_string(),
            })?;
            let raw_type = event.header().event_type_raw();
            if data.is_none() && refused_event(raw_type) {
                return Err(CaptureError::Config(format!(
                    "binlog event type {raw_type} at {file}:{end} carries rows govbus cannot read (compressed or encrypted binlog): set log_bin_compress = OFF (MariaDB) / binlog_transaction_compression = OFF (MySQL)"
                )));
            }
            match data {
                Some(EventData::TransactionPayloadEvent(_)) => {
                    return Err(CaptureError::Config(format!(
                        "a compressed transaction at {file}:{end}: set binlog_transaction_compression = OFF"
                    )));
                }
                Some(EventData::RotateEvent(r)) => {
                    file = binlog_name(r.name_raw(), !seen_format && checksums);
                    layouts.clear();
                }
                Some(EventData::FormatDescriptionEvent(_)) => seen_format = true,
                Some(EventData::TableMapEvent(tme)) => {
                    let layout = self.layout(&tme, &charsets, &file, end)?;
                    layouts.insert(tme.table_id(), layout);
                }
                Some(EventData::RowsEvent(rows)) => {
                    let Some(Some(layout)) = layouts.get(&rows.table_id()) else {
                        continue;
                    };
                    let tme = stream.get_tme(rows.table_id()).ok_or_else(|| {
                        CaptureError::Undecodable {
                            lsn: format!("{file}:{end}"),
                            detail: "a rows event without its table map".into(),
                        }
                    })?;
                    self.rows(&rows, tme, layout, &file, end, &name, &mut changes)?;
                }
                Some(EventData::XidEvent(_)) => {
                    safe = Some(Position {
                        file: file.clone(),
                        pos: end,
                    })
                }
                Some(EventData::QueryEvent(q)) => {
                    let sql = q.query();
                    let head = sql.trim_start().to_ascii_uppercase();
                    if head.starts_with("COMMIT") {
                        safe = Some(Position {
                            file: file.clone(),
                            pos: end,
                        });
                    } else if ["INSERT", "UPDATE", "DELETE", "REPLACE"]
                        .iter()
                        .any(|k| head.starts_with(k))
                        && self.names_captured(&q.schema(), &sql)
                    {
                        return Err(CaptureError::Config(format!(
                            "a change to a captured table was logged as a statement at {file}:{end} (a session with binlog_format other than ROW): its rows cannot be captured; set binlog_format = ROW for every session (SET GLOBAL, and in my.cnf)"
                        )));
                    } else if !head.starts_with("BEGIN") && self.ddl(&q.schema(), &sql, &file, end)
                    {
                        // A column's character set may have changed: read
                        // them again (the names come with every row event).
                        let mut c = Conn::new(opts.clone()).await.map_err(mysql_error)?;
                        charsets = self.charsets(&mut c).await?;
                        let _ = c.disconnect().await;
                    }
                }
                _ => {}
            }
            if changes.len() >= crate::STREAM_BATCH {
                self.settle_binlog(publishers, &mut changes, &mut safe, &mut state)?;
            }
        }
    }

    /// Publishes the changes in hand (waiting for Kafka's acknowledgement),
    /// then saves `safe` — the end of the last whole transaction read — as
    /// the position. Changes of a transaction not yet finished may be
    /// published too; the saved position stays before them, so a restart
    /// repeats them with the same ids.
    fn settle_binlog(
        &mut self,
        publishers: &mut HashMap<String, Box<dyn Publisher + Send>>,
        changes: &mut Vec<(usize, Change)>,
        safe: &mut Option<Position>,
        state: &mut crate::State,
    ) -> Result<(), CaptureError> {
        if !changes.is_empty() {
            self.publish_all(publishers, changes)?;
            changes.clear();
        }
        if let Some(p) = safe.take() {
            self.metrics
                .position(&self.config.name, version(&p.file, p.pos, 0)?);
            state.binlog = Some(p);
            self.save_state(state)?;
        }
        Ok(())
    }

    /// Reports a statement that changes a captured table's structure or
    /// contents outside row events; true if it names a captured table.
    fn names_captured(&self, schema: &str, sql: &str) -> bool {
        let lower = sql.to_ascii_lowercase();
        self.tables.iter().any(|t| {
            lower.contains(&t.name.to_ascii_lowercase())
                && (schema.eq_ignore_ascii_case(&t.schema)
                    || lower.contains(&t.schema.to_ascii_lowercase()))
        })
    }

    fn ddl(&self, schema: &str, sql: &str, file: &str, end: u64) -> bool {
        let lower = sql.to_ascii_lowercase();
        let mut touched = false;
        for t in &self.tables {
            if lower.contains(&t.name.to_ascii_lowercase())
                && (schema.eq_ignore_ascii_case(&t.schema)
                    || lower.contains(&t.schema.to_ascii_lowercase()))
            {
                let kind = lower.split_whitespace().next().unwrap_or("").to_owned();
                if kind == "truncate" {
                    tracing::error!(message = "TRUNCATE is not captured as deletes; publish a snapshot of the table to reconcile.", table = %t.spec.table, at = %format!("{file}:{end}"));
                } else {
                    // Row events carry their own column names
                    // (binlog_row_metadata = FULL), so the rows after this
                    // statement are read with the new layout; a column the
                    // mapping needs and the table lost rejects its rows with
                    // a reason.
                    tracing::warn!(message = "Statement on a captured table; following its new layout.", table = %t.spec.table, statement = %kind, at = %format!("{file}:{end}"));
                }
                self.metrics.ddl(&t.spec.table);
                touched = true;
            }
        }
        touched
    }

    /// The layout of a table map, if the table is captured.
    fn layout(
        &self,
        tme: &TableMapEvent<'_>,
        charsets: &Charsets,
        file: &str,
        end: u64,
    ) -> Result<Option<Layout>, CaptureError> {
        let (db, table) = (tme.database_name(), tme.table_name());
        let Some(t) = self.tables.iter().position(|t| {
            t.schema.eq_ignore_ascii_case(&db) && t.name.eq_ignore_ascii_case(&table)
        }) else {
            return Ok(None);
        };
        let mut names = Vec::new();
        let mut enums: Vec<Vec<String>> = Vec::new();
        for field in tme.iter_optional_meta() {
            let field = field.map_err(|e| CaptureError::Undecodable {
                lsn: format!("{file}:{end}"),
                detail: format!("table map metadata: {e}"),
            })?;
            match field {
                OptionalMetadataField::ColumnName(n) => {
                    for name in n.iter_names() {
                        let name = name.map_err(|e| CaptureError::Undecodable {
                            lsn: format!("{file}:{end}"),
                            detail: format!("column names: {e}"),
                        })?;
                        names.push(name.name().into_owned());
                    }
                }
                OptionalMetadataField::EnumStrValue(v) => {
                    for values in v.iter_values() {
                        let values = values.map_err(|e| CaptureError::Undecodable {
                            lsn: format!("{file}:{end}"),
                            detail: format!("enum values: {e}"),
                        })?;
                        enums.push(
                            values
                                .values()
                                .iter()
                                .map(|s| s.value().into_owned())
                                .collect(),
                        );
                    }
                }
                _ => {}
            }
        }
        let n = usize::try_from(tme.columns_count()).unwrap_or(0);
        if names.len() != n {
            return Err(CaptureError::Config(format!(
                "table {}: the binlog carries no column names (binlog_row_metadata is not FULL); set binlog_row_metadata = FULL (SET GLOBAL binlog_row_metadata = FULL, and in my.cnf)",
                self.tables[t].spec.table
            )));
        }
        // Enum values come in column order for the ENUM columns only.
        let mut it = enums.into_iter();
        let enums = (0..n)
            .map(|i| match tme.get_column_type(i) {
                Ok(Some(ColumnType::MYSQL_TYPE_ENUM)) => it.next(),
                _ => None,
            })
            .collect();
        let types = (0..n)
            .map(|i| tme.get_column_type(i).ok().flatten())
            .collect();
        let charsets = names
            .iter()
            .map(|c| charsets.get(&(t, c.clone())).cloned())
            .collect();
        Ok(Some(Layout {
            table: t,
            names,
            enums,
            types,
            charsets,
        }))
    }

    #[allow(clippy::too_many_arguments)]
    fn rows(
        &mut self,
        rows: &RowsEventData<'_>,
        tme: &TableMapEvent<'_>,
        layout: &Layout,
        file: &str,
        end: u64,
        name: &str,
        out: &mut Vec<(usize, Change)>,
    ) -> Result<(), CaptureError> {
        let t = layout.table;
        let op = match rows {
            RowsEventData::WriteRowsEvent(_) | RowsEventData::WriteRowsEventV1(_) => "create",
            RowsEventData::UpdateRowsEvent(_) | RowsEventData::UpdateRowsEventV1(_) => "update",
            RowsEventData::DeleteRowsEvent(_) | RowsEventData::DeleteRowsEventV1(_) => "delete",
            RowsEventData::PartialUpdateRowsEvent(_) => {
                return Err(CaptureError::Config(format!(
                    "table {}: partial JSON updates in the binlog cannot be captured; set binlog_row_value_options = '' (full row images)",
                    self.tables[t].spec.table
                )))
            }
        };
        for (i, row) in rows.rows(tme).enumerate() {
            let (before, after) = row.map_err(|e| CaptureError::Undecodable {
                lsn: format!("{file}:{end}"),
                detail: format!("row {i}: {e}"),
            })?;
            let v = version(file, end, i)?;
            let id = format!("cdc-{name}-{}-{end}-{i}", file_seq(file));
            for image in [&before, &after].into_iter().flatten() {
                if image.len() != layout.names.len() {
                    return Err(CaptureError::Config(format!(
                        "table {}: a row image at {file}:{end} holds {} of {} columns (binlog_row_image is not FULL for the session that wrote it); set binlog_row_image = FULL globally and in my.cnf",
                        self.tables[t].spec.table,
                        image.len(),
                        layout.names.len()
                    )));
                }
            }
            let cells = |r: &BinlogRow| -> Result<Vec<(String, Cell)>, String> {
                let mut out = Vec::with_capacity(layout.names.len());
                for (c, col) in layout.names.iter().enumerate() {
                    let text = match r.as_ref(c) {
                        None => continue,
                        Some(v) => binlog_text(
                            v,
                            layout.types.get(c).copied().flatten(),
                            layout.charsets.get(c).and_then(Option::as_deref),
                            layout.enums.get(c).and_then(Option::as_ref),
                        )
                        .map_err(|e| format!("column {col}: {e}"))?,
                    };
                    out.push((col.clone(), Cell::Text(text)));
                }
                Ok(out)
            };
            let read = |r: Option<&BinlogRow>| r.map(cells).transpose();
            let (before, after) = match (read(before.as_ref()), read(after.as_ref())) {
                (Ok(b), Ok(a)) => (b, a),
                (Err(e), _) | (_, Err(e)) => {
                    let table = &self.tables[t];
                    tracing::warn!(message = "Row skipped.", table = %table.spec.table, version = v, problem = %e);
                    self.metrics.rejected(
                        &table.owner,
                        &table.spec.dataset,
                        &table.spec.table,
                        "unreadable",
                    );
                    self.counts.rejected += 1;
                    continue;
                }
            };
            match (before, after) {
                (Some(old), None) => {
                    if let Some(c) = self.change(t, old, "delete", v, id) {
                        out.push((t, c));
                    }
                }
                (before, Some(new)) => {
                    // A changed key: the old key is deleted, the new one created.
                    if let Some(old) = before {
                        let table = &self.tables[t];
                        let key = |cells: &[(String, Cell)]| {
                            table
                                .mapper
                                .record(&govbus_adapter::row::Row {
                                    line: v,
                                    cells: cells.to_vec(),
                                })
                                .ok()
                                .and_then(|r| table.mapper.key_of(&r))
                        };
                        let (k_old, k_new) = (key(&old), key(&new));
                        if k_old.is_some() && k_old != k_new {
                            if let Some(c) = self.change(t, old, "delete", v, format!("{id}-d")) {
                                out.push((t, c));
                            }
                        }
                    }
                    if let Some(c) = self.change(t, new, op, v, id) {
                        out.push((t, c));
                    }
                }
                (None, None) => {}
            }
        }
        Ok(())
    }

    /// Character sets of the captured tables' text columns, by (table, column).
    async fn charsets(&self, conn: &mut Conn) -> Result<Charsets, CaptureError> {
        let mut out = Charsets::new();
        for (t, table) in self.tables.iter().enumerate() {
            let rows: Vec<(String, Option<String>)> = conn
                .exec(
                    "SELECT COLUMN_NAME, CHARACTER_SET_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                    (table.schema.as_str(), table.name.as_str()),
                )
                .await
                .map_err(mysql_error)?;
            if rows.is_empty() {
                return Err(CaptureError::Config(format!(
                    "table {}: not found (or the capture's user cannot see it)",
                    table.spec.table
                )));
            }
            for (col, cs) in rows {
                if let Some(cs) = cs {
                    out.insert((t, col), cs);
                }
            }
        }
        Ok(out)
    }

    /// Publishes every captured table's rows as of one binlog position and
    /// returns that position.
    async fn mysql_snapshot(
        &mut self,
        conn: &mut Conn,
        publishers: &mut HashMap<String, Box<dyn Publisher + Send>>,
    ) -> Result<Position, CaptureError> {
        let mariadb: String = conn
            .query_first("SELECT VERSION()")
            .await
            .map_err(mysql_error)?
            .unwrap_or_default();
        let mariadb = mariadb.to_ascii_lowercase().contains("mariadb");
        conn.query_drop("SET SESSION time_zone = '+00:00'")
            .await
            .map_err(mysql_error)?;
        conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .await
            .map_err(mysql_error)?;
        let position = if mariadb {
            // MariaDB reports the binlog position of the snapshot itself.
            conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                .await
                .map_err(mysql_error)?;
            let status: Vec<(String, String)> = conn
                .query("SHOW STATUS LIKE 'binlog_snapshot_%'")
                .await
                .map_err(mysql_error)?;
            let get = |k: &str| {
                status
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(k))
                    .map(|(_, v)| v.clone())
            };
            Position {
                file: get("binlog_snapshot_file").unwrap_or_default(),
                pos: get("binlog_snapshot_position")
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| {
                        CaptureError::Config(
                            "the server reports no binlog_snapshot_position for the snapshot"
                                .into(),
                        )
                    })?,
            }
        } else {
            // MySQL: hold writes for the moment it takes to start the
            // snapshot and read the position.
            conn.query_drop("FLUSH TABLES WITH READ LOCK")
                .await
                .map_err(mysql_error)?;
            conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                .await
                .map_err(mysql_error)?;
            let row: Option<mysql_async::Row> = conn
                .query_first("SHOW MASTER STATUS")
                .await
                .map_err(mysql_error)?;
            conn.query_drop("UNLOCK TABLES")
                .await
                .map_err(mysql_error)?;
            let row = row.ok_or_else(|| {
                CaptureError::Config("SHOW MASTER STATUS is empty: binary logging is off".into())
            })?;
            Position {
                file: row.get::<String, _>(0).unwrap_or_default(),
                pos: row.get::<u64, _>(1).unwrap_or(4),
            }
        };
        if position.file.is_empty() {
            return Err(CaptureError::Config(
                "the server reports no binlog position: binary logging is off (set log_bin in my.cnf and restart)".into(),
            ));
        }
        let name = self.config.name.clone();
        let v = version(&position.file, position.pos, 0)?;
        let mut changes = Vec::new();
        for t in 0..self.tables.len() {
            let (schema, table) = (self.tables[t].schema.clone(), self.tables[t].name.clone());
            let rows: Vec<mysql_async::Row> = conn
                .query(format!(
                    "SELECT * FROM `{}`.`{}`",
                    schema.replace('`', "``"),
                    table.replace('`', "``")
                ))
                .await
                .map_err(mysql_error)?;
            for (n, row) in rows.into_iter().enumerate() {
                let columns = row.columns();
                let mut cells = Vec::with_capacity(columns.len());
                let mut unreadable = None;
                for (i, col) in columns.iter().enumerate() {
                    use ColumnType::*;
                    let text = match row.as_ref(i) {
                        Some(Value::NULL) | None => String::new(),
                        Some(Value::Bytes(b)) => {
                            // The text protocol sends numbers and dates with
                            // the binary character set too; only string
                            // types with it are bytes rather than text.
                            let bytes_column = col.character_set() == 63
                                && matches!(
                                    col.column_type(),
                                    MYSQL_TYPE_STRING
                                        | MYSQL_TYPE_VAR_STRING
                                        | MYSQL_TYPE_VARCHAR
                                        | MYSQL_TYPE_TINY_BLOB
                                        | MYSQL_TYPE_MEDIUM_BLOB
                                        | MYSQL_TYPE_LONG_BLOB
                                        | MYSQL_TYPE_BLOB
                                        | MYSQL_TYPE_BIT
                                        | MYSQL_TYPE_GEOMETRY
                                );
                            match std::str::from_utf8(b) {
                                Ok(s) if !bytes_column => {
                                    if matches!(
                                        col.column_type(),
                                        MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2
                                    ) {
                                        format!("{s}+00:00")
                                    } else {
                                        s.to_owned()
                                    }
                                }
                                _ => {
                                    unreadable = Some(col.name_str().into_owned());
                                    String::new()
                                }
                            }
                        }
                        Some(other) => other.as_sql(true).trim_matches('\'').to_owned(),
                    };
                    cells.push((col.name_str().into_owned(), Cell::Text(text)));
                }
                if let Some(col) = unreadable {
                    let table = &self.tables[t];
                    tracing::warn!(message = "Row skipped.", table = %table.spec.table, version = v, problem = %format!("column {col}: bytes, not text"));
                    self.metrics.rejected(
                        &table.owner,
                        &table.spec.dataset,
                        &table.spec.table,
                        "unreadable",
                    );
                    self.counts.rejected += 1;
                    continue;
                }
                let id = format!(
                    "cdc-{name}-snap-{}-{}-{t}-{n}",
                    position.seq(),
                    position.pos
                );
                if let Some(c) = self.change(t, cells, "snapshot", v, id) {
                    changes.push((t, c));
                }
            }
        }
        conn.query_drop("COMMIT").await.map_err(mysql_error)?;
        tracing::info!(message = "Initial snapshot.", rows = changes.len(), file = %position.file, pos = position.pos);
        self.publish_all(publishers, &changes)?;
        Ok(position)
    }
}

type Charsets = BTreeMap<(usize, String), String>;

/// Refuses a server whose binlog cannot be captured, naming the setting.
async fn check_server(conn: &mut Conn) -> Result<(), CaptureError> {
    let vars: Vec<(String, String)> = conn
        .query("SHOW GLOBAL VARIABLES WHERE Variable_name IN ('log_bin', 'binlog_format', 'binlog_row_image', 'binlog_row_metadata', 'log_bin_compress', 'binlog_transaction_compression')")
        .await
        .map_err(mysql_error)?;
    let var = |n: &str| {
        vars.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.to_ascii_uppercase())
    };
    let mut wrong = Vec::new();
    if var("log_bin").as_deref() != Some("ON") {
        wrong.push("log_bin is off: add `log-bin = mysql-bin` and `server-id = 1` under [mysqld] in my.cnf and restart the server");
    }
    if var("binlog_format").as_deref() != Some("ROW") {
        wrong.push("binlog_format is not ROW: SET GLOBAL binlog_format = 'ROW' (and `binlog-format = ROW` in my.cnf)");
    }
    if var("binlog_row_image").as_deref() != Some("FULL") {
        wrong.push(
            "binlog_row_image is not FULL: SET GLOBAL binlog_row_image = 'FULL' (and in my.cnf)",
        );
    }
    if var("binlog_row_metadata").as_deref() != Some("FULL") {
        wrong.push("binlog_row_metadata is not FULL (MySQL 8.0.1+ / MariaDB 10.5+ needed): SET GLOBAL binlog_row_metadata = 'FULL' (and in my.cnf)");
    }
    if var("log_bin_compress").as_deref() == Some("ON") {
        wrong.push("log_bin_compress is ON: SET GLOBAL log_bin_compress = OFF (compressed row events cannot be read)");
    }
    if var("binlog_transaction_compression").as_deref() == Some("ON") {
        wrong.push(
            "binlog_transaction_compression is ON: SET GLOBAL binlog_transaction_compression = OFF",
        );
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(CaptureError::Config(format!(
            "this server's binlog cannot be captured: {}",
            wrong.join("; ")
        )))
    }
}

/// A replica id for the capture from its name: stable across restarts, and
/// unlikely to meet a real replica's (which are usually small numbers).
fn default_server_id(name: &str) -> u32 {
    let mut h: u32 = 2_166_136_261;
    for b in name.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(16_777_619);
    }
    0x4000_0000 | (h & 0x3FFF_FFFF)
}

/// A binlog value as the text a snapshot row holds for it.
fn binlog_text(
    v: &BinlogValue<'_>,
    ty: Option<ColumnType>,
    charset: Option<&str>,
    enum_values: Option<&Vec<String>>,
) -> Result<String, String> {
    use ColumnType::*;
    let value = match v {
        BinlogValue::Value(v) => v,
        BinlogValue::Jsonb(j) => {
            let json: serde_json::Value = j
                .clone()
                .parse()
                .map(serde_json::Value::from)
                .map_err(|e| format!("JSON: {e}"))?;
            return Ok(json.to_string());
        }
        BinlogValue::JsonDiff(_) => return Err("a partial JSON update".into()),
    };
    Ok(match (value, ty) {
        (Value::NULL, _) => String::new(),
        (Value::Int(i), Some(MYSQL_TYPE_ENUM)) => {
            let values = enum_values.ok_or("an ENUM without its values in the binlog")?;
            match usize::try_from(*i).ok().and_then(|i| i.checked_sub(1)) {
                None => String::new(),
                Some(i) => values.get(i).cloned().ok_or("an ENUM index out of range")?,
            }
        }
        (Value::Int(_), Some(MYSQL_TYPE_TIMESTAMP)) => {
            return Err(
                "an old-format TIMESTAMP column (convert the table: ALTER TABLE … FORCE)".into(),
            )
        }
        (Value::Int(i), _) => i.to_string(),
        (Value::UInt(u), _) => u.to_string(),
        (Value::Float(f), _) => f.to_string(),
        (Value::Double(d), _) => d.to_string(),
        (Value::Bytes(b), Some(MYSQL_TYPE_TIMESTAMP2 | MYSQL_TYPE_TIMESTAMP)) => {
            // Seconds since the epoch in UTC, with the fraction if any.
            let s = std::str::from_utf8(b).map_err(|_| "a TIMESTAMP that is not text")?;
            let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
            let secs: i64 = secs
                .parse()
                .map_err(|_| "a TIMESTAMP that is not a number")?;
            if secs == 0 && frac.is_empty() {
                // MySQL's zero timestamp: no instant.
                "0000-00-00 00:00:00".to_owned()
            } else {
                let days = secs.div_euclid(86_400);
                let rem = secs.rem_euclid(86_400);
                let (y, m, d) = govbus_catalog::time::civil_from_days(days);
                let frac = if frac.is_empty() {
                    String::new()
                } else {
                    format!(".{frac}")
                };
                format!(
                    "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}{frac}+00:00",
                    rem / 3600,
                    rem / 60 % 60,
                    rem % 60
                )
            }
        }
        (Value::Bytes(b), Some(MYSQL_TYPE_YEAR)) if b.as_slice() == b"1900" => {
            return Err("YEAR 0000 (the binlog cannot tell it from 1900)".into())
        }
        (Value::Bytes(_), Some(MYSQL_TYPE_BIT | MYSQL_TYPE_SET)) => {
            return Err(format!(
                "a {} column cannot be mapped to text",
                if matches!(ty, Some(MYSQL_TYPE_BIT)) {
                    "BIT"
                } else {
                    "SET"
                }
            ));
        }
        (Value::Bytes(b), _) => decode_text(b, charset)?,
        (Value::Date(y, mo, d, h, mi, s, us), Some(MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE)) => {
            let _ = (h, mi, s, us);
            format!("{y:04}-{mo:02}-{d:02}")
        }
        (Value::Date(y, mo, d, h, mi, s, us), _) => {
            if *us == 0 {
                format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
            } else {
                format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}")
            }
        }
        (Value::Time(neg, days, h, mi, s, us), _) => {
            let hours = u32::from(*h) + days * 24;
            let sign = if *neg { "-" } else { "" };
            if *us == 0 {
                format!("{sign}{hours:02}:{mi:02}:{s:02}")
            } else {
                format!("{sign}{hours:02}:{mi:02}:{s:02}.{us:06}")
            }
        }
    })
}

/// Text column bytes in the column's character set, as UTF-8. A character
/// set govbus cannot read, or bytes that are not valid in it, refuse the
/// row rather than guess.
fn decode_text(b: &[u8], charset: Option<&str>) -> Result<String, String> {
    let enc = match charset.map(str::to_ascii_lowercase).as_deref() {
        Some("binary") => return Err("a binary column (bytes, not text)".into()),
        None | Some("utf8mb4" | "utf8mb3" | "utf8" | "ascii") => {
            return String::from_utf8(b.to_vec()).map_err(|_| "bytes that are not UTF-8".into())
        }
        Some("gbk" | "gb2312") => encoding_rs::GBK,
        Some("gb18030") => encoding_rs::GB18030,
        Some("latin1") => encoding_rs::WINDOWS_1252,
        Some("big5") => encoding_rs::BIG5,
        Some(other) => return Err(format!("character set {other} is not supported")),
    };
    let (text, _, bad) = enc.decode(b);
    if bad {
        return Err(format!("bytes that are not valid {}", enc.name()));
    }
    Ok(text.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_grow_with_the_file_the_offset_and_the_row() {
        let v = |f: &str, pos: u64, row: usize| version(f, pos, row).unwrap();
        assert!(v("mysql-bin.000001", 900, 0) < v("mysql-bin.000001", 900, 1));
        assert!(v("mysql-bin.000001", 900, 7) < v("mysql-bin.000001", 1200, 0));
        assert!(v("mysql-bin.000001", u64::from(u32::MAX), 9) < v("mysql-bin.000002", 4, 0));
        // The last position that fits is below 2^63 (a PostgreSQL bigint).
        let last = v("mysql-bin.032767", u64::from(u32::MAX), 0xFFFF);
        assert!(last <= i64::MAX as u64);
        // Beyond it: refused, never wrapped round to a smaller version.
        for (f, pos, row) in [
            ("mysql-bin.032768", 4, 0),
            ("mysql-bin.065537", 4, 0),
            ("mysql-bin.000001", u64::from(u32::MAX) + 1, 0),
            ("mysql-bin.000001", 4, 0x1_0000),
        ] {
            let e = version(f, pos, row).unwrap_err().to_string();
            assert!(e.contains("does not fit a source version"), "{e}");
        }
    }

    #[test]
    fn rotate_names_lose_a_trailing_checksum() {
        assert_eq!(
            binlog_name(b"mysql-bin.000001L\x14\x02\xff", true),
            "mysql-bin.000001"
        );
        assert_eq!(binlog_name(b"mysql-bin.000002", false), "mysql-bin.000002");
    }

    #[test]
    fn text_columns_are_read_in_their_character_set_or_refused() {
        let (gbk, _, _) = encoding_rs::GBK.encode("张建国");
        assert_eq!(decode_text(&gbk, Some("gbk")).as_deref(), Ok("张建国"));
        assert!(
            decode_text(&gbk, Some("utf8mb4")).is_err(),
            "GBK bytes are not UTF-8"
        );
        assert!(decode_text(b"x", Some("koi8r")).is_err());
    }

    #[test]
    fn binlog_timestamps_become_utc_text_and_datetimes_keep_their_fraction() {
        let ts = BinlogValue::Value(Value::Bytes(b"1760493600.123456".to_vec()));
        assert_eq!(
            binlog_text(&ts, Some(ColumnType::MYSQL_TYPE_TIMESTAMP2), None, None).as_deref(),
            Ok("2025-10-15 02:00:00.123456+00:00")
        );
        let dt = BinlogValue::Value(Value::Date(2026, 10, 15, 10, 0, 0, 120_000));
        assert_eq!(
            binlog_text(&dt, Some(ColumnType::MYSQL_TYPE_DATETIME2), None, None).as_deref(),
            Ok("2026-10-15 10:00:00.120000")
        );
    }
}
