//! The PostgreSQL sink: a live table in the subscriber's database instead of
//! a monthly dump.
//!
//! - The table is created from the dataset's latest Avro schema (delivered
//!   fields only; masked and pseudonymised fields typed `text`) and migrated
//!   with `ADD COLUMN IF NOT EXISTS` when the schema or the policy grows.
//! - `_govbus_subject` (the treated record key) is the primary key; every
//!   row carries `_govbus_source_version`, `_govbus_event_id`, `_govbus_op`
//!   and `_govbus_time`.
//! - A batch is one transaction: upserts that win only with a newer source
//!   version, deletes (remembered in `<table>__govbus_deleted`, so that an
//!   older replayed version cannot bring a row back), and the consumed
//!   offsets in `govbus_offsets`. The sink starts from those offsets, so its
//!   effect is exactly-once whatever is killed when.

use std::collections::HashMap;

use apache_avro::Schema;
use govbus_catalog::{Dataset, Subscription, Treatment};
use serde_json::Value as Json;
use tokio_postgres::{Client, NoTls};

use crate::event::Delivery;

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

impl PgSink {
    /// Connects, creates or migrates the table, and returns the sink.
    pub async fn open(
        conninfo: &str,
        table: &str,
        sub: &Subscription,
        ds: &Dataset,
        topic: &str,
    ) -> Result<PgSink, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(conninfo, NoTls).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(message = "PostgreSQL connection ended.", %error);
            }
        });
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
        };
        sink.migrate(schema).await?;
        Ok(sink)
    }

    async fn migrate(&self, schema: Option<&str>) -> Result<(), tokio_postgres::Error> {
        let mut ddl = String::new();
        if let Some(s) = schema {
            ddl.push_str(&format!("CREATE SCHEMA IF NOT EXISTS {};\n", quote(s)));
        }
        ddl.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS {} (\n  _govbus_subject text PRIMARY KEY,\n  _govbus_source_version bigint NOT NULL,\n  _govbus_event_id text NOT NULL,\n  _govbus_op text NOT NULL,\n  _govbus_time timestamptz\n);\n",
            self.table
        ));
        for (name, ty) in &self.columns {
            ddl.push_str(&format!(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {ty};\n",
                self.table,
                quote(name)
            ));
        }
        ddl.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS {} (subject text PRIMARY KEY, source_version bigint NOT NULL);\n\
             CREATE TABLE IF NOT EXISTS {} (subscription text, topic text, partition integer, next_offset bigint NOT NULL, PRIMARY KEY (subscription, topic, partition));\n",
            self.tombstones, self.offsets
        ));
        // Two sinks creating the same table at once race in the catalog; retry once.
        if let Err(e) = self.client.batch_execute(&ddl).await {
            tracing::debug!(message = "Table setup raced; retrying.", error = %e);
            self.client.batch_execute(&ddl).await?;
        }
        Ok(())
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

    /// Applies `events` and records `next_offsets` in one transaction.
    pub async fn apply(
        &mut self,
        events: &[Delivery],
        next_offsets: &[(i32, i64)],
    ) -> Result<(), tokio_postgres::Error> {
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

        let tx = self.client.transaction().await?;
        if !upserts.is_empty() {
            let n = self.columns.len();
            let mut arrays: Vec<Vec<Option<String>>> =
                vec![Vec::with_capacity(upserts.len()); n + 5];
            for &i in &upserts {
                let e = &events[i];
                let data = e.data.as_ref();
                for (c, (name, _)) in self.columns.iter().enumerate() {
                    arrays[c].push(text(data.and_then(|d| d.get(name))));
                }
                arrays[n].push(Some(e.subject.clone()));
                arrays[n + 1].push(Some(e.source_version.to_string()));
                arrays[n + 2].push(Some(e.id.clone()));
                arrays[n + 3].push(Some(e.op.clone()));
                arrays[n + 4].push((!e.time.is_empty()).then(|| e.time.clone()));
            }
            let names: Vec<String> = self.columns.iter().map(|(c, _)| quote(c)).collect();
            let aliases: Vec<String> = (0..n + 5).map(|i| format!("c{i}")).collect();
            let params: Vec<String> = (1..=n + 5).map(|i| format!("${i}::text[]")).collect();
            let mut select: Vec<String> = self
                .columns
                .iter()
                .enumerate()
                .map(|(i, (_, ty))| format!("u.c{i}::{ty}"))
                .collect();
            select.push(format!("u.c{n}"));
            select.push(format!("u.c{}::bigint", n + 1));
            select.push(format!("u.c{}", n + 2));
            select.push(format!("u.c{}", n + 3));
            select.push(format!("u.c{}::timestamptz", n + 4));
            let mut all_cols = names.clone();
            all_cols.extend(
                [
                    "_govbus_subject",
                    "_govbus_source_version",
                    "_govbus_event_id",
                    "_govbus_op",
                    "_govbus_time",
                ]
                .map(String::from),
            );
            let updates: Vec<String> = all_cols
                .iter()
                .filter(|c| c.as_str() != "_govbus_subject")
                .map(|c| format!("{c} = EXCLUDED.{c}"))
                .collect();
            let sql = format!(
                "INSERT INTO {t} ({cols}) SELECT {select} FROM unnest({params}) AS u({aliases}) \
                 WHERE NOT EXISTS (SELECT 1 FROM {tomb} d WHERE d.subject = u.c{n} AND d.source_version >= u.c{v}::bigint) \
                 ON CONFLICT (_govbus_subject) DO UPDATE SET {updates} \
                 WHERE {t}._govbus_source_version < EXCLUDED._govbus_source_version",
                t = self.table,
                cols = all_cols.join(", "),
                select = select.join(", "),
                params = params.join(", "),
                aliases = aliases.join(", "),
                tomb = self.tombstones,
                v = n + 1,
                updates = updates.join(", "),
            );
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = arrays
                .iter()
                .map(|a| a as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            tx.execute(&sql, &refs).await?;
        }
        if !deletes.is_empty() {
            let subjects: Vec<String> =
                deletes.iter().map(|&i| events[i].subject.clone()).collect();
            let versions: Vec<i64> = deletes
                .iter()
                .map(|&i| i64::try_from(events[i].source_version).unwrap_or(i64::MAX))
                .collect();
            tx.execute(
                &format!(
                    "DELETE FROM {} t USING unnest($1::text[], $2::bigint[]) AS d(subject, v) \
                     WHERE t._govbus_subject = d.subject AND t._govbus_source_version < d.v",
                    self.table
                ),
                &[&subjects, &versions],
            )
            .await?;
            tx.execute(
                &format!(
                    "INSERT INTO {} (subject, source_version) SELECT * FROM unnest($1::text[], $2::bigint[]) \
                     ON CONFLICT (subject) DO UPDATE SET source_version = GREATEST({}.source_version, EXCLUDED.source_version)",
                    self.tombstones, self.tombstones
                ),
                &[&subjects, &versions],
            )
            .await?;
        }
        for (partition, next) in next_offsets {
            tx.execute(
                &format!(
                    "INSERT INTO {} (subscription, topic, partition, next_offset) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (subscription, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset",
                    self.offsets
                ),
                &[&self.subscription, &self.topic, partition, next],
            )
            .await?;
        }
        tx.commit().await
    }
}
