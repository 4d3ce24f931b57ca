//! The PostgreSQL sink: a live table in the subscriber's database instead of
//! a monthly dump.
//!
//! - The table is created from the dataset's latest Avro schema (delivered
//!   fields only; masked and pseudonymised fields typed `text`) and migrated
//!   with `ADD COLUMN IF NOT EXISTS` when the schema or the policy grows.
//! - `_govbus_subject` (the treated record key) is the primary key; every
//!   row carries `_govbus_source_version`, `_govbus_event_id`, `_govbus_op`
//!   and `_govbus_time`.
//! - **The table follows the grant.** Every row carries the policy version
//!   it was written under (`_govbus_policy`), and so does the stored
//!   position. When the sink opens under another policy version (fields
//!   removed, a treatment or the row filter changed), one transaction drops
//!   every column the grant no longer delivers as it is (absent, or now of
//!   another type), forgets the delete markers and the position; the topic
//!   (compacted: every key's current value) is then delivered again from
//!   the beginning under the new grant, overwriting rows in place; once the
//!   sink has caught up, rows nothing re-delivered (a key now outside the
//!   filter was already deleted as `out_of_scope`; a key whose treatment
//!   changed has a new subject) are deleted. A narrowed grant therefore
//!   takes its removed fields out of the table at once, and the rest within
//!   one pass over the topic.
//! - A batch is one transaction: upserts that win only with a newer source
//!   version (or over a row written under another grant: the re-read
//!   rewrites every row it finds, whatever its version), deletes (remembered in `<table>__govbus_deleted`, so that an
//!   older replayed version cannot bring a row back), and the consumed
//!   offsets in `govbus_offsets`. The sink starts from those offsets, so its
//!   effect is exactly-once whatever is killed when.
//! - **New keys are copied in.** A batch's keys are looked up (the table's
//!   primary key and the delete markers, one `= ANY` probe); a key with no
//!   row and no marker at its version or above is written with `COPY`
//!   (what the upsert would insert, as the same text), the rest with the
//!   upsert. This relies on the sink being the table's one writer: two
//!   advisory locks, on the configured name and on the table's oid, keep
//!   out every other govbus sink. A copy the table refuses (a row written
//!   by anyone else meanwhile, a unique index, constraint or trigger of the
//!   subscriber's that sees the new rows before the batch's upserts) is
//!   rolled back to a savepoint and the batch upserted whole instead. No
//!   `COPY` on a table with row-level security, an INSERT or UPDATE rule,
//!   or a column of another type than the upsert writes, nor when that
//!   check itself fails ([`PgSink::copy_fits`]).

use std::collections::HashMap;
use std::io::Write as _;

use apache_avro::Schema;
use govbus_catalog::{Dataset, Subscription, Treatment};
use serde_json::Value as Json;
use tokio_postgres::{Client, NoTls};

use super::{Batch, DestinationError, Progress, Sink};
use crate::event::{Delivery, OUT_OF_SCOPE};
use crate::ledger;

/// An open PostgreSQL sink.
#[derive(Debug)]
pub struct PgSink {
    client: Client,
    table: String,
    tombstones: String,
    offsets: String,
    columns: Vec<(String, String)>,
    subscription: String,
    topic: String,
    policy: String,
    /// Set when the table was brought in line with a new grant and rows
    /// written under an earlier one may remain: swept once caught up.
    sweep: bool,
    /// The batch statements, prepared on the first batch (their text
    /// depends only on the table and its columns, fixed while open).
    statements: Option<Statements>,
    /// Whether new keys may be copied in (`COPY`) instead of upserted:
    /// only when COPY writes exactly what the upsert would (see
    /// [`PgSink::copy_fits`]).
    copy: bool,
    /// Batches still to be upserted whole, without looking their keys up:
    /// set when a lookup found fewer than half the keys new (an updating
    /// stream, where the lookup costs more than copying saves), so such
    /// a stream pays for a lookup once in [`LOOKUP_EVERY`] batches.
    skip_lookups: u32,
}

/// While a table's keys are mostly held, one batch in this many is looked
/// up (to notice when new keys come again).
const LOOKUP_EVERY: u32 = 8;

/// The statements every batch runs, parsed and planned once per open
/// instead of once per batch.
#[derive(Debug, Clone)]
struct Statements {
    /// Which of a batch's keys the table holds (or has a delete marker for
    /// at the same or a higher version): those take the upsert; the rest
    /// are new rows and are copied in.
    existing: tokio_postgres::Statement,
    /// `COPY … FROM STDIN` of the new rows, every column in
    /// [`PgSink::copy_row`]'s order.
    copy: tokio_postgres::Statement,
    upsert: tokio_postgres::Statement,
    delete: tokio_postgres::Statement,
    tombstone: tokio_postgres::Statement,
    offsets: tokio_postgres::Statement,
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn qualified(name: &str) -> String {
    name.split('.').map(quote).collect::<Vec<_>>().join(".")
}

/// The SQL type of an Avro field schema.
pub fn sql_type(schema: &Schema) -> String {
    match schema {
        Schema::Union(u) => {
            let non_null: Vec<&Schema> = u
                .variants()
                .iter()
                .filter(|s| !matches!(s, Schema::Null))
                .collect();
            match non_null.as_slice() {
                [one] => sql_type(one),
                _ => "jsonb".into(),
            }
        }
        Schema::String | Schema::Enum(_) | Schema::Uuid(_) | Schema::Bytes | Schema::Fixed(_) => {
            "text".into()
        }
        Schema::Int => "integer".into(),
        Schema::Long => "bigint".into(),
        Schema::Boolean => "boolean".into(),
        Schema::Float | Schema::Double => "double precision".into(),
        Schema::Date => "date".into(),
        Schema::TimestampMillis | Schema::TimestampMicros | Schema::TimestampNanos => {
            "timestamptz".into()
        }
        Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => "timestamp".into(),
        Schema::Decimal(d) => format!("numeric({},{})", d.precision, d.scale),
        _ => "jsonb".into(),
    }
}

/// The delivered columns and their SQL types, in schema order.
pub fn columns(sub: &Subscription, ds: &Dataset) -> Vec<(String, String)> {
    let Schema::Record(r) = &ds.latest().schema else {
        return Vec::new();
    };
    r.fields
        .iter()
        .filter(|f| sub.delivers(&f.name, &ds.key))
        .map(|f| {
            let treated = ds.personal_data.contains_key(&f.name)
                && sub.treatments.get(&f.name) != Some(&Treatment::Clear);
            let ty = if treated {
                "text".to_owned()
            } else {
                sql_type(&f.schema)
            };
            (f.name.clone(), ty)
        })
        .collect()
}

fn text(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::Null => None,
        Json::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// A value for a `jsonb` column: its JSON text, a string quoted (`ACTIVE`
/// is not JSON; `"ACTIVE"` is).
fn json_text(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::Null => None,
        other => Some(other.to_string()),
    }
}

/// Whether `v` holds a string with a NUL character, which PostgreSQL stores
/// in neither `text` nor `jsonb`.
fn has_nul(v: &Json) -> bool {
    match v {
        Json::String(s) => s.contains('\0'),
        Json::Array(a) => a.iter().any(has_nul),
        Json::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

pub use govbus_pg::describe;

/// Why a PostgreSQL sink did not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The database refused or failed. Not a `source`: the driver's own
    /// text can hold row values (a constraint's DETAIL).
    #[error("{}", describe(.0))]
    Postgres(tokio_postgres::Error),
    /// Another sink instance holds the table (one instance per table; this
    /// one takes over when that one's session ends).
    #[error("table {0} is held by another govbus sink (one instance per table; this one waits and takes over when that one stops)")]
    Busy(String),
    /// Another govbus sink writes the same table under another name
    /// (`t` and `public.t`, say): two grants configured onto one table.
    #[error("table {0} is written by another govbus sink that names it differently (one sink per table: give each grant its own table); retrying")]
    SameTable(String),
}

impl PgSink {
    /// Connects, takes the table's lock (a session advisory lock, released
    /// when the connection ends), creates or migrates the table, and
    /// returns the sink.
    pub async fn open(
        conninfo: &str,
        table: &str,
        sub: &Subscription,
        ds: &Dataset,
        topic: &str,
    ) -> Result<PgSink, OpenError> {
        let (client, connection) = tokio_postgres::connect(conninfo, NoTls).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(message = "PostgreSQL connection ended.", error = %describe(&error));
            }
        });
        // One instance per table: the table follows its grant, and two
        // instances under different policy versions would rewrite it in turn.
        let held: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock(hashtext('govbus.sink.table'), hashtext($1))",
                &[&table],
            )
            .await?
            .get(0);
        if !held {
            return Err(OpenError::Busy(table.to_owned()));
        }
        let schema = table.split_once('.').map(|(s, _)| s);
        let offsets = match schema {
            Some(s) => format!("{}.govbus_offsets", quote(s)),
            None => "govbus_offsets".to_owned(),
        };
        let sink = PgSink {
            client,
            table: qualified(table),
            tombstones: qualified(&format!("{table}__govbus_deleted")),
            offsets,
            columns: columns(sub, ds),
            subscription: sub.id.clone(),
            topic: topic.to_owned(),
            policy: sub.policy_version.clone(),
            sweep: false,
            statements: None,
            copy: false,
            skip_lookups: 0,
        };
        let mut sink = sink;
        sink.migrate(schema).await?;
        // A database that refuses what the check needs (a temporary table,
        // say) only costs the speed of COPY.
        sink.copy = match sink.copy_fits().await {
            Ok(fits) => fits,
            Err(e) => {
                tracing::warn!(message = "Could not check whether new keys can be copied in; every row is upserted.", subscription = %sink.subscription, error = %describe(&e));
                false
            }
        };
        Ok(sink)
    }

    async fn migrate(&mut self, schema: Option<&str>) -> Result<(), OpenError> {
        let mut ddl = String::new();
        if let Some(s) = schema {
            ddl.push_str(&format!("CREATE SCHEMA IF NOT EXISTS {};\n", quote(s)));
        }
        ddl.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS {t} (\n  _govbus_subject text PRIMARY KEY,\n  _govbus_source_version bigint NOT NULL,\n  _govbus_event_id text NOT NULL,\n  _govbus_op text NOT NULL,\n  _govbus_time timestamptz\n);\n\
             ALTER TABLE {t} ADD COLUMN IF NOT EXISTS _govbus_policy text;\n\
             CREATE TABLE IF NOT EXISTS {} (subject text PRIMARY KEY, source_version bigint NOT NULL);\n\
             CREATE TABLE IF NOT EXISTS {o} (subscription text, topic text, partition integer, next_offset bigint NOT NULL, PRIMARY KEY (subscription, topic, partition));\n\
             ALTER TABLE {o} ADD COLUMN IF NOT EXISTS policy_version text;\n",
            self.tombstones,
            t = self.table,
            o = self.offsets,
        ));
        // Two sinks creating the same table at once race in the catalog; retry once.
        if let Err(e) = self.client.batch_execute(&ddl).await {
            tracing::debug!(message = "Table setup raced; retrying.", error = %e);
            self.client.batch_execute(&ddl).await?;
        }
        // The lock taken at open is on the table's name as configured; this
        // one is on the table itself, so `t` and `public.t` are one table —
        // taken before the table follows a grant (the statements before it
        // only create what is missing), and relied on by the split between
        // new and held keys (one writer).
        let held: bool = self
            .client
            .query_one(
                "SELECT pg_try_advisory_lock(hashtext('govbus.sink.relation'), \
                 ($1::text::regclass::oid::bigint - 2147483648)::integer)",
                &[&self.table],
            )
            .await?
            .get(0);
        if !held {
            return Err(OpenError::SameTable(self.table.clone()));
        }
        self.follow_grant().await?;
        let mut ddl = String::new();
        for (name, ty) in &self.columns {
            ddl.push_str(&format!(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {ty};\n",
                self.table,
                quote(name)
            ));
        }
        self.client.batch_execute(&ddl).await?;
        Ok(())
    }

    /// Whether new keys are copied in (see [`PgSink::copy_fits`]); for
    /// tests, which would pass through the upsert alone.
    #[doc(hidden)]
    pub fn copies(&self) -> bool {
        self.copy
    }

    /// Whether COPY writes exactly what the upsert would: no row-level
    /// security on the table (COPY refuses it), no INSERT or UPDATE rule
    /// (COPY does not apply rules), and every delivered column and
    /// govbus's own of the type the upsert writes (the upsert casts to the declared type and then to the
    /// column's, COPY parses straight into the column's: the two differ
    /// for a column left at another type — a `timestamp` where the schema
    /// now says `timestamptz`, under a session time zone other than UTC).
    /// Otherwise every row is upserted, as before COPY was used.
    async fn copy_fits(&mut self) -> Result<bool, tokio_postgres::Error> {
        let tx = self.client.transaction().await?;
        // The delivered columns and govbus's own, as the upsert types them.
        create_shape(&tx, &self.columns, true).await?;
        // Rules on INSERT ('3') or UPDATE ('2'): PostgreSQL refuses the
        // upsert on such a table, and COPY would slip new rows past them.
        let fits: bool = tx
            .query_one(
                "SELECT NOT c.relrowsecurity AND NOT c.relforcerowsecurity \
                 AND NOT EXISTS (SELECT 1 FROM pg_rewrite r WHERE r.ev_class = c.oid AND r.ev_type IN ('2', '3')) \
                 AND NOT EXISTS (SELECT 1 FROM pg_attribute b \
                   JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = b.attname AND NOT a.attisdropped \
                   WHERE b.attrelid = 'pg_temp._govbus_shape'::regclass AND b.attnum > 0 AND NOT b.attisdropped \
                   AND (a.atttypid <> b.atttypid OR a.atttypmod <> b.atttypmod)) \
                 FROM pg_class c WHERE c.oid = $1::text::regclass",
                &[&self.table],
            )
            .await?
            .get(0);
        tx.commit().await?;
        if !fits {
            tracing::info!(message = "The table has row-level security, an INSERT or UPDATE rule, or a column of another type than the sink writes; every row is upserted (no COPY).", subscription = %self.subscription);
        }
        Ok(fits)
    }

    /// When the stored position was written under another policy version
    /// (or before versions were stored), brings the table in line with the
    /// grant as it is now: see the module documentation.
    async fn follow_grant(&mut self) -> Result<(), tokio_postgres::Error> {
        let stored: Vec<Option<String>> = self
            .client
            .query(
                &format!(
                    "SELECT DISTINCT policy_version FROM {} WHERE subscription = $1 AND topic = $2",
                    self.offsets
                ),
                &[&self.subscription, &self.topic],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if stored
            .iter()
            .all(|v| v.as_deref() == Some(self.policy.as_str()))
        {
            // A sink stopped after following a new grant but before its
            // sweep left rows of the old one: sweep once caught up.
            self.sweep = self
                .client
                .query_one(
                    &format!(
                        "SELECT EXISTS (SELECT 1 FROM {} WHERE _govbus_policy IS DISTINCT FROM $1)",
                        self.table
                    ),
                    &[&self.policy],
                )
                .await?
                .get(0);
            return Ok(());
        }
        let tx = self.client.transaction().await?;
        // The delivered columns as PostgreSQL types them, to compare with
        // the table's (a masked date is text, a decimal keeps its typmod).
        create_shape(&tx, &self.columns, false).await?;
        let stale: Vec<String> = tx
            .query(
                "SELECT a.attname::text FROM pg_attribute a \
                 WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
                 AND left(a.attname, 8) <> '_govbus_' AND NOT EXISTS ( \
                   SELECT 1 FROM pg_attribute b WHERE b.attrelid = 'pg_temp._govbus_shape'::regclass \
                   AND b.attname = a.attname AND b.atttypid = a.atttypid \
                   AND b.atttypmod = a.atttypmod AND NOT b.attisdropped)",
                &[&self.table],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for column in &stale {
            tx.batch_execute(&format!(
                "ALTER TABLE {} DROP COLUMN {}",
                self.table,
                quote(column)
            ))
            .await?;
        }
        tx.batch_execute(&format!("TRUNCATE {}", self.tombstones))
            .await?;
        tx.execute(
            &format!(
                "DELETE FROM {} WHERE subscription = $1 AND topic = $2",
                self.offsets
            ),
            &[&self.subscription, &self.topic],
        )
        .await?;
        tx.commit().await?;
        self.sweep = true;
        tracing::info!(
            message = "The grant changed: columns it no longer delivers as they were are dropped, and the topic is delivered again from the beginning under the new grant.",
            subscription = %self.subscription,
            policy = %self.policy,
            dropped_columns = %stale.join(","),
        );
        Ok(())
    }

    /// Whether rows written under an earlier grant may remain (see
    /// [`PgSink::sweep`]).
    pub fn needs_sweep(&self) -> bool {
        self.sweep
    }

    /// Once the sink has caught up after following a new grant: deletes
    /// the rows nothing re-delivered under it. Returns how many.
    pub async fn sweep(&mut self) -> Result<u64, tokio_postgres::Error> {
        let n = self
            .client
            .execute(
                &format!(
                    "DELETE FROM {} WHERE _govbus_policy IS DISTINCT FROM $1",
                    self.table
                ),
                &[&self.policy],
            )
            .await?;
        self.sweep = false;
        tracing::info!(message = "Rows no longer delivered under the grant deleted.", subscription = %self.subscription, rows = n);
        Ok(n)
    }

    /// Why the table cannot store `event`, if it cannot: a NUL character
    /// in its key or in a delivered value (PostgreSQL refuses it in `text`
    /// and `jsonb`). The validator accepts such text, and a batch holding
    /// it would fail on every attempt, stopping the subscription for good:
    /// the caller dead-letters it before the batch is applied.
    pub fn unstorable(&self, event: &Delivery) -> Option<String> {
        if event.subject.contains('\0') {
            return Some(
                "the record key holds a NUL character, which PostgreSQL cannot store".into(),
            );
        }
        let data = event.data.as_ref()?;
        self.columns
            .iter()
            .find(|(name, _)| data.get(name).is_some_and(has_nul))
            .map(|(name, _)| {
                format!("field {name} holds a NUL character, which PostgreSQL cannot store")
            })
    }

    /// Where to resume: the next offset of each partition, from the table's
    /// own transaction history.
    pub async fn offsets(&self) -> Result<HashMap<i32, i64>, tokio_postgres::Error> {
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT partition, next_offset FROM {} WHERE subscription = $1 AND topic = $2",
                    self.offsets
                ),
                &[&self.subscription, &self.topic],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, i32>(0), r.get::<_, i64>(1)))
            .collect())
    }

    /// The batch statements, prepared on first use (outside any
    /// transaction: a prepared statement outlives the transaction it was
    /// made in only if that one commits).
    async fn statements(&mut self) -> Result<Statements, tokio_postgres::Error> {
        if let Some(st) = &self.statements {
            return Ok(st.clone());
        }
        let n = self.columns.len();
        let names: Vec<String> = self.columns.iter().map(|(c, _)| quote(c)).collect();
        // $1..$n the delivered fields, then subject, event id, op and time
        // (all text[]), the source versions (bigint[]) and the policy
        // version (one text for the whole batch).
        let aliases: Vec<String> = (0..n + 5).map(|i| format!("c{i}")).collect();
        let mut params: Vec<String> = (1..=n + 4).map(|i| format!("${i}::text[]")).collect();
        params.push(format!("${}::bigint[]", n + 5));
        let mut select: Vec<String> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, (_, ty))| format!("u.c{i}::{ty}"))
            .collect();
        select.push(format!("u.c{n}"));
        select.push(format!("u.c{}", n + 4));
        select.push(format!("u.c{}", n + 1));
        select.push(format!("u.c{}", n + 2));
        select.push(format!("u.c{}::timestamptz", n + 3));
        select.push(format!("${}::text", n + 6));
        let mut all_cols = names;
        all_cols.extend(
            [
                "_govbus_subject",
                "_govbus_source_version",
                "_govbus_event_id",
                "_govbus_op",
                "_govbus_time",
                "_govbus_policy",
            ]
            .map(String::from),
        );
        let updates: Vec<String> = all_cols
            .iter()
            .filter(|c| c.as_str() != "_govbus_subject")
            .map(|c| format!("{c} = EXCLUDED.{c}"))
            .collect();
        let upsert = format!(
            "INSERT INTO {t} ({cols}) SELECT {select} FROM unnest({params}) AS u({aliases}) \
             WHERE NOT EXISTS (SELECT 1 FROM {tomb} d WHERE d.subject = u.c{n} AND d.source_version >= u.c{v}) \
             ON CONFLICT (_govbus_subject) DO UPDATE SET {updates} \
             WHERE {t}._govbus_source_version < EXCLUDED._govbus_source_version \
             OR {t}._govbus_policy IS DISTINCT FROM EXCLUDED._govbus_policy",
            t = self.table,
            cols = all_cols.join(", "),
            select = select.join(", "),
            params = params.join(", "),
            aliases = aliases.join(", "),
            tomb = self.tombstones,
            v = n + 4,
            updates = updates.join(", "),
        );
        let delete = format!(
            "DELETE FROM {} t USING unnest($1::text[], $2::bigint[]) AS d(subject, v) \
             WHERE t._govbus_subject = d.subject AND (t._govbus_source_version < d.v \
             OR t._govbus_policy IS DISTINCT FROM $3)",
            self.table
        );
        let tombstone = format!(
            "INSERT INTO {t} (subject, source_version) SELECT d.s, d.v FROM unnest($1::text[], $2::bigint[], $3::bool[]) AS d(s, v, deleted) WHERE d.deleted \
             ON CONFLICT (subject) DO UPDATE SET source_version = GREATEST({t}.source_version, EXCLUDED.source_version)",
            t = self.tombstones
        );
        let offsets = format!(
            "INSERT INTO {} (subscription, topic, partition, next_offset, policy_version) \
             SELECT $1, $2, u.p, u.o, $5 FROM unnest($3::integer[], $4::bigint[]) AS u(p, o) \
             ON CONFLICT (subscription, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, policy_version = EXCLUDED.policy_version",
            self.offsets
        );
        // Probes each key in the two primary keys (`= ANY`: an index
        // scan whatever the table's size, never a scan of the table).
        let existing = format!(
            "SELECT _govbus_subject, NULL::bigint FROM {t} WHERE _govbus_subject = ANY($1::text[]) \
             UNION ALL SELECT subject, source_version FROM {tomb} WHERE subject = ANY($1::text[])",
            t = self.table,
            tomb = self.tombstones,
        );
        let copy = format!("COPY {} ({}) FROM STDIN", self.table, all_cols.join(", "));
        let st = Statements {
            existing: self.client.prepare(&existing).await?,
            copy: self.client.prepare(&copy).await?,
            upsert: self.client.prepare(&upsert).await?,
            delete: self.client.prepare(&delete).await?,
            tombstone: self.client.prepare(&tombstone).await?,
            offsets: self.client.prepare(&offsets).await?,
        };
        self.statements = Some(st.clone());
        Ok(st)
    }

    /// Applies `events` and records `next_offsets` in one transaction;
    /// `before_commit` runs once the table has taken every statement (the
    /// ledger append), and the transaction commits only if it succeeds.
    pub async fn apply<F, Fut>(
        &mut self,
        events: &[Delivery],
        next_offsets: &[(i32, i64)],
        before_commit: F,
    ) -> Result<(), ApplyError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(), ApplyError>>,
    {
        // Per key, only the last change of the batch matters (per-key order is
        // the batch order), and ON CONFLICT may touch a row only once.
        let mut last: HashMap<&str, usize> = HashMap::new();
        for (i, e) in events.iter().enumerate() {
            last.insert(e.subject.as_str(), i);
        }
        let mut idx: Vec<usize> = last.into_values().collect();
        idx.sort_unstable();
        let (upserts, deletes): (Vec<usize>, Vec<usize>) =
            idx.into_iter().partition(|&i| events[i].data.is_some());

        let n = self.columns.len();
        let st = self.statements().await?;
        let tx = self.client.transaction().await?;
        // Deferred constraints (and constraint triggers) are checked by each
        // statement, not at COMMIT: a table that refuses the batch does so
        // before the ledger records it.
        //
        // Keys the table does not hold (and has no delete marker for at the
        // same or a higher version) are new rows: copied in, which the
        // server writes in bulk with no conflict check per row; the rest
        // take the guarded upsert. A copy the table refuses — a row another
        // writer slipped in (the advisory locks keep out only other govbus
        // sinks), a unique index or trigger of the subscriber's that sees
        // new rows before the upserts that come earlier in the batch — is
        // rolled back to the savepoint before it and the whole batch
        // upserted in batch order, as when COPY is off. SET CONSTRAINTS
        // comes before the savepoint, so the rollback keeps it.
        let split = self.copy && !upserts.is_empty() && self.skip_lookups == 0;
        self.skip_lookups = self.skip_lookups.saturating_sub(1);
        tx.batch_execute(if split {
            "SET CONSTRAINTS ALL IMMEDIATE; SAVEPOINT govbus_copy"
        } else {
            "SET CONSTRAINTS ALL IMMEDIATE"
        })
        .await?;
        let held = if split {
            let (fresh, held) = Self::split_new(&tx, &st, events, upserts.clone()).await?;
            if fresh.len() * 2 < upserts.len() {
                self.skip_lookups = LOOKUP_EVERY - 1;
            }
            match Self::copy_new(&tx, &st, &self.columns, &self.policy, events, &fresh).await {
                Ok(()) => held,
                // COPY did not start (a lock or statement timeout, a
                // read-only server, a revoked privilege): the batch fails
                // as it is.
                Err(CopyError::Start(e)) => return Err(e.into()),
                // Refused by the table (a duplicate, an exclusion
                // constraint or a trigger that the order of the writes
                // decides): the batch as the upsert alone writes it; a
                // fault of the rows themselves, it reports again.
                Err(CopyError::Refused(e))
                    if e.as_db_error().is_some_and(|db| db.severity() == "ERROR") =>
                {
                    tracing::info!(message = "The table refused the copied rows; the batch is upserted instead.", subscription = %self.subscription, error = %describe(&e));
                    tx.batch_execute("ROLLBACK TO SAVEPOINT govbus_copy")
                        .await?;
                    self.skip_lookups = LOOKUP_EVERY - 1;
                    upserts
                }
                Err(CopyError::Refused(e)) => return Err(e.into()),
            }
        } else {
            upserts
        };
        // In slices sent one after another without waiting: the server
        // writes one slice while the next is encoded (one transaction, in
        // order; each key is in one slice only).
        let columns = &self.columns;
        let policy = &self.policy;
        let upsert = &st.upsert;
        let tx_ref = &tx;
        let slices = held.chunks(UPSERT_SLICE).map(|slice| async move {
            let mut texts: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(slice.len()); n + 4];
            let mut versions: Vec<i64> = Vec::with_capacity(slice.len());
            for &i in slice {
                let e = &events[i];
                let data = e.data.as_ref();
                for (c, (name, ty)) in columns.iter().enumerate() {
                    let v = data.and_then(|d| d.get(name));
                    texts[c].push(if ty == "jsonb" { json_text(v) } else { text(v) });
                }
                texts[n].push(Some(e.subject.clone()));
                texts[n + 1].push(Some(e.id.clone()));
                texts[n + 2].push(Some(e.op.clone()));
                texts[n + 3].push((!e.time.is_empty()).then(|| e.time.clone()));
                versions.push(version(e));
            }
            let mut refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = texts
                .iter()
                .map(|a| a as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            refs.push(&versions);
            refs.push(policy);
            tx_ref.execute(upsert, &refs).await
        });
        futures_util::future::try_join_all(slices).await?;
        if !deletes.is_empty() {
            let subjects: Vec<String> =
                deletes.iter().map(|&i| events[i].subject.clone()).collect();
            let versions: Vec<i64> = deletes.iter().map(|&i| version(&events[i])).collect();
            // A record outside the filter removes its row if there is one,
            // and leaves no marker: the table never names a key it did not
            // hold. A deletion at the source leaves one.
            let deleted: Vec<bool> = deletes
                .iter()
                .map(|&i| events[i].op != crate::event::OUT_OF_SCOPE)
                .collect();
            tx.execute(&st.delete, &[&subjects, &versions, &self.policy])
                .await?;
            tx.execute(&st.tombstone, &[&subjects, &versions, &deleted])
                .await?;
        }
        if !next_offsets.is_empty() {
            let (partitions, next): (Vec<i32>, Vec<i64>) = next_offsets.iter().copied().unzip();
            tx.execute(
                &st.offsets,
                &[
                    &self.subscription,
                    &self.topic,
                    &partitions,
                    &next,
                    &self.policy,
                ],
            )
            .await?;
        }
        before_commit().await?;
        tx.commit().await?;
        Ok(())
    }

    /// Splits a batch's upserts (indexes into `events`) into the keys
    /// new to the table and the keys it holds or has a delete marker for
    /// at the same or a higher version, each in batch order.
    async fn split_new(
        tx: &tokio_postgres::Transaction<'_>,
        st: &Statements,
        events: &[Delivery],
        upserts: Vec<usize>,
    ) -> Result<(Vec<usize>, Vec<usize>), tokio_postgres::Error> {
        if upserts.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let subjects: Vec<&str> = upserts
            .iter()
            .map(|&i| events[i].subject.as_str())
            .collect();
        let rows = tx.query(&st.existing, &[&subjects]).await?;
        // Each key is once in the batch's upserts (its last change).
        let at: HashMap<&str, usize> = subjects.iter().enumerate().map(|(n, s)| (*s, n)).collect();
        let mut held = vec![false; upserts.len()];
        for row in &rows {
            let Some(&n) = at.get(row.get::<_, &str>(0)) else {
                continue;
            };
            // A row, or a delete marker at the same or a higher version
            // (which the upsert leaves the key deleted under).
            let marker: Option<i64> = row.get(1);
            if marker.is_none_or(|v| v >= version(&events[upserts[n]])) {
                held[n] = true;
            }
        }
        let mut fresh = Vec::with_capacity(upserts.len());
        let mut kept = Vec::new();
        for (i, h) in upserts.into_iter().zip(held) {
            if h {
                kept.push(i)
            } else {
                fresh.push(i)
            }
        }
        Ok((fresh, kept))
    }

    /// Copies the rows of `fresh` (indexes into `events`) into the table,
    /// in COPY's text format: the same text the upsert casts, parsed by
    /// the same input functions. Sent in pieces while the rest is encoded.
    async fn copy_new(
        tx: &tokio_postgres::Transaction<'_>,
        st: &Statements,
        columns: &[(String, String)],
        policy: &str,
        events: &[Delivery],
        fresh: &[usize],
    ) -> Result<(), CopyError> {
        use futures_util::SinkExt as _;
        if fresh.is_empty() {
            return Ok(());
        }
        let jsonb: Vec<bool> = columns.iter().map(|(_, ty)| ty == "jsonb").collect();
        let sink = tx
            .copy_in::<_, bytes::Bytes>(&st.copy)
            .await
            .map_err(CopyError::Start)?;
        let mut sink = std::pin::pin!(sink);
        let mut buf = Vec::with_capacity(COPY_PIECE + 4096);
        for &i in fresh {
            copy_row(&mut buf, columns, &jsonb, &events[i], policy);
            if buf.len() >= COPY_PIECE {
                let piece = std::mem::replace(&mut buf, Vec::with_capacity(COPY_PIECE + 4096));
                sink.send(bytes::Bytes::from(piece))
                    .await
                    .map_err(CopyError::Refused)?;
            }
        }
        if !buf.is_empty() {
            sink.send(bytes::Bytes::from(buf))
                .await
                .map_err(CopyError::Refused)?;
        }
        sink.as_mut().finish().await.map_err(CopyError::Refused)?;
        Ok(())
    }
}

/// How a COPY of new keys failed.
enum CopyError {
    /// Before the server took any row (the statement was refused).
    Start(tokio_postgres::Error),
    /// While the rows were sent or at their end: the table refused them.
    Refused(tokio_postgres::Error),
}

/// Creates `pg_temp._govbus_shape`, dropped at the transaction's end: a
/// table with `columns` (and, with `own`, govbus's own columns) as
/// PostgreSQL types them, to compare with the sink's table.
async fn create_shape(
    tx: &tokio_postgres::Transaction<'_>,
    columns: &[(String, String)],
    own: bool,
) -> Result<(), tokio_postgres::Error> {
    const OWN: [&str; 6] = [
        "_govbus_subject text",
        "_govbus_source_version bigint",
        "_govbus_event_id text",
        "_govbus_op text",
        "_govbus_time timestamptz",
        "_govbus_policy text",
    ];
    let shape: Vec<String> = columns
        .iter()
        .map(|(name, ty)| format!("{} {ty}", quote(name)))
        .chain(OWN.iter().filter(|_| own).map(|c| (*c).to_owned()))
        .collect();
    tx.batch_execute(&format!(
        "CREATE TEMP TABLE _govbus_shape ({}) ON COMMIT DROP",
        shape.join(", ")
    ))
    .await
}

/// A record's source version as the table stores it (`bigint`).
fn version(e: &Delivery) -> i64 {
    i64::try_from(e.source_version).unwrap_or(i64::MAX)
}

/// Bytes of COPY data sent at a time.
const COPY_PIECE: usize = 64 * 1024;

/// One row of COPY text: the delivered columns, then subject, source
/// version, event id, op, time and policy version — the upsert's values,
/// as the same text.
fn copy_row(
    buf: &mut Vec<u8>,
    columns: &[(String, String)],
    jsonb: &[bool],
    e: &Delivery,
    policy: &str,
) {
    let data = e.data.as_ref();
    for ((name, _), &json) in columns.iter().zip(jsonb) {
        match data.and_then(|d| d.get(name)) {
            None | Some(Json::Null) => buf.extend_from_slice(b"\\N"),
            Some(Json::String(s)) if !json => copy_text(buf, s),
            Some(other) => copy_text(buf, &other.to_string()),
        }
        buf.push(b'\t');
    }
    copy_text(buf, &e.subject);
    buf.push(b'\t');
    // Writing to a Vec cannot fail.
    let _ = write!(buf, "{}", version(e));
    buf.push(b'\t');
    copy_text(buf, &e.id);
    buf.push(b'\t');
    copy_text(buf, &e.op);
    buf.push(b'\t');
    if e.time.is_empty() {
        buf.extend_from_slice(b"\\N");
    } else {
        copy_text(buf, &e.time);
    }
    buf.push(b'\t');
    copy_text(buf, policy);
    buf.push(b'\n');
}

/// `s` as one COPY text field: backslash, tab, newline and carriage
/// return escaped (so no field can end a row or the data, and `\N` in the
/// data stays text).
fn copy_text(buf: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut from = 0;
    for (at, &b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => continue,
        };
        buf.extend_from_slice(&bytes[from..at]);
        buf.extend_from_slice(escaped);
        from = at + 1;
    }
    buf.extend_from_slice(&bytes[from..]);
}

/// Rows per upsert statement: a batch's slices are sent back to back, so
/// the server writes one while the next is encoded.
const UPSERT_SLICE: usize = 500;

impl From<tokio_postgres::Error> for OpenError {
    fn from(e: tokio_postgres::Error) -> Self {
        OpenError::Postgres(e)
    }
}

impl From<tokio_postgres::Error> for ApplyError {
    fn from(e: tokio_postgres::Error) -> Self {
        ApplyError::Postgres(e)
    }
}

/// Why a batch did not reach the table.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The database refused a statement or the commit. Not a `source`:
    /// the driver's own text can hold row values (a duplicate key's
    /// DETAIL names the key).
    #[error("PostgreSQL: {}", describe(.0))]
    Postgres(tokio_postgres::Error),
    /// The ledger could not record the batch; nothing was committed.
    #[error("{0}")]
    Ledger(#[from] crate::ledger::LedgerError),
    /// The ledger did not acknowledge the batch's entry in time; the
    /// transaction (and its row locks) was not held open any longer and
    /// nothing was committed. The entry may still land: an over-record of
    /// a batch that is delivered and recorded again.
    #[error("the delivery ledger did not acknowledge the batch within {0:?}; rolled back")]
    LedgerTimeout(std::time::Duration),
}

impl Sink for PgSink {
    /// Offsets are committed with the rows, in one transaction.
    fn keeps_offsets(&self) -> bool {
        true
    }

    async fn offsets(&self) -> Result<HashMap<i32, i64>, DestinationError> {
        PgSink::offsets(self)
            .await
            .map_err(DestinationError::Postgres)
    }

    /// A key that left the row filter loses its row.
    fn keeps_state(&self) -> bool {
        true
    }

    fn unstorable(&self, event: &Delivery) -> Option<String> {
        PgSink::unstorable(self, event)
    }

    /// The table's columns are the grant's fields.
    fn reopens_for(&self, _next: &Subscription) -> bool {
        true
    }

    async fn deliver(&mut self, batch: Batch<'_>) -> Progress {
        let sub = batch.policy.subscription();
        let mut next: HashMap<i32, i64> = HashMap::new();
        for c in batch.records {
            next.insert(c.partition, c.offset + 1);
        }
        let next: Vec<(i32, i64)> = next.into_iter().collect();
        // The ledger entry is appended once the table has taken every
        // statement and before the commit that moves the offsets with the
        // rows: a table refusing the batch leaves no entry, and a crash (or
        // a failed commit) after the entry leaves one whose delivery is
        // repeated and recorded again — never a row without its entry. Rows
        // removed because their record left the filter are not deliveries:
        // nothing of them reached the subscriber.
        let delivered: Vec<String> = batch
            .events
            .iter()
            .filter(|e| e.op != OUT_OF_SCOPE)
            .map(|e| e.id.clone())
            .collect();
        let shared = batch.shared;
        let record = || async {
            if delivered.is_empty() {
                return Ok(());
            }
            let entry = ledger::Record::events(sub, "delivered", delivered.clone());
            // The table's transaction and its row locks wait for this.
            let limit = std::time::Duration::from_secs(30);
            tokio::time::timeout(limit, shared.ledger.append(&entry))
                .await
                .map_err(|_| ApplyError::LedgerTimeout(limit))??;
            shared.metrics.ledger_entry("delivered");
            Ok(())
        };
        match self.apply(batch.events, &next, record).await {
            Ok(()) => Progress::all(batch.events.len()),
            Err(e) => Progress::failed(e.to_string()),
        }
    }

    /// Once caught up under a new grant, rows nothing re-delivered go.
    async fn idle(
        &mut self,
        caught_up: &(dyn Fn() -> bool + Sync),
    ) -> Result<(), DestinationError> {
        if self.needs_sweep() && caught_up() {
            self.sweep().await.map_err(DestinationError::Postgres)?;
        }
        Ok(())
    }
}
