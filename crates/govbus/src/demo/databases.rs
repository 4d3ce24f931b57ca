//! The departments whose systems keep their records in their own database:
//! with `--postgres`, HRSS's social insurance contributions are written to a
//! table there and captured from the WAL (`govbus capture postgres`); with
//! `--mysql`, market regulation's enterprise registrations are written to a
//! MariaDB/MySQL table and captured from the binlog (`govbus capture mysql`).
//!
//! The demo owns what it creates: the schema `govbus_demo` (PostgreSQL), the
//! table `govbus_demo_enterprise_registration` (MySQL) and the replication
//! slot and publication `govbus_demo`. It recreates them at the start (one
//! demo per database at a time) and drops the slot and publication at the
//! end, so that no slot is left holding WAL; the tables stay to be looked at.

use std::path::Path as FsPath;
use std::time::Duration;

use anyhow::Context as _;
use govbus_capture::{Config, Mode, TableSpec};
use mysql_async::prelude::Queryable as _;
use serde_json::Value as Json;

use super::generate::ENTERPRISES;

/// The capture's name: its slot, publication and event ids.
const NAME: &str = "govbus_demo";
const PG_TABLE: &str = "govbus_demo.social_insurance_contribution";
const PG_COLUMNS: [(&str, &str); 11] = [
    ("contribution_id", "text PRIMARY KEY"),
    ("insured_id_number", "text NOT NULL"),
    ("insured_name", "text NOT NULL"),
    ("employer_credit_code", "text NOT NULL"),
    ("employer_name", "text NOT NULL"),
    ("insurance_type", "text NOT NULL"),
    ("contribution_month", "text NOT NULL"),
    ("base_amount", "numeric(12,2) NOT NULL"),
    ("employer_amount", "numeric(12,2) NOT NULL"),
    ("employee_amount", "numeric(12,2) NOT NULL"),
    ("paid_at", "timestamptz NOT NULL"),
];
const MY_TABLE: &str = "govbus_demo_enterprise_registration";
const MY_COLUMNS: [(&str, &str); 10] = [
    ("credit_code", "varchar(18) PRIMARY KEY"),
    ("enterprise_name", "varchar(200) NOT NULL"),
    ("legal_representative", "varchar(50) NOT NULL"),
    ("enterprise_type", "varchar(40) NOT NULL"),
    ("registered_capital", "decimal(18,2) NOT NULL"),
    ("status", "varchar(20) NOT NULL"),
    ("established_date", "date NOT NULL"),
    ("address", "varchar(200) NOT NULL"),
    ("business_scope", "varchar(500) NOT NULL"),
    ("contact_phone", "varchar(20) NULL"),
];

/// Which database a captured dataset lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Postgres,
    Mysql,
}

impl Kind {
    /// The dataset the demo captures from this kind of database.
    pub fn dataset(self) -> &'static str {
        match self {
            Kind::Postgres => govbus_fraud::CONTRIBUTIONS,
            Kind::Mysql => ENTERPRISES,
        }
    }

    fn columns(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Kind::Postgres => &PG_COLUMNS,
            Kind::Mysql => &MY_COLUMNS,
        }
    }
}

/// A department's table and the capture reading it.
pub struct Source {
    pub kind: Kind,
    /// The capture's configuration.
    pub config: Config,
    /// Where the table is, as shown to the user.
    pub table: String,
    conn: Conn,
}

enum Conn {
    Pg(tokio_postgres::Client),
    My(mysql_async::Conn),
}

fn capture_config(conninfo: &str, table: String, dataset: &str, state: &FsPath) -> Config {
    Config {
        conninfo: conninfo.to_owned(),
        mode: Mode::Logical,
        name: NAME.to_owned(),
        state_dir: Some(state.to_path_buf()),
        heartbeat: Duration::from_secs(10),
        poll_interval: Duration::from_millis(200),
        delete_check: Duration::from_secs(30),
        timezone: None,
        server_id: None,
        tables: vec![TableSpec {
            table,
            dataset: dataset.to_owned(),
            columns: Default::default(),
            version_column: None,
        }],
    }
}

/// The demo's PostgreSQL capture configuration (also what `release` drops).
pub fn postgres_config(conninfo: &str, state: &FsPath) -> Config {
    capture_config(conninfo, PG_TABLE.into(), Kind::Postgres.dataset(), state)
}

impl Source {
    /// Recreates the HRSS table in PostgreSQL, dropping an earlier demo's
    /// slot and publication.
    pub async fn postgres(conninfo: &str, state: &FsPath) -> anyhow::Result<Source> {
        let config = postgres_config(conninfo, state);
        govbus_capture::drop_replication(&config)
            .await
            .context("--postgres: drop an earlier demo's replication slot `govbus_demo` (is another demo capturing from this database?)")?;
        let (client, connection) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
            .await
            .context("--postgres: connect")?;
        tokio::spawn(connection);
        let columns: Vec<String> = PG_COLUMNS.iter().map(|(c, t)| format!("{c} {t}")).collect();
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS govbus_demo CASCADE; CREATE SCHEMA govbus_demo; CREATE TABLE {PG_TABLE} ({})",
                columns.join(", ")
            ))
            .await
            .context("--postgres: create the demo's table govbus_demo.social_insurance_contribution")?;
        Ok(Source {
            kind: Kind::Postgres,
            config,
            table: format!("PostgreSQL {PG_TABLE}"),
            conn: Conn::Pg(client),
        })
    }

    /// Recreates the market regulation table in the URL's MySQL database.
    pub async fn mysql(url: &str, state: &FsPath) -> anyhow::Result<Source> {
        let opts = mysql_async::Opts::from_url(url).map_err(|e| {
            anyhow::anyhow!(
                "--mysql: not a MySQL URL: {e} (mysql://user:password@host:3306/database)"
            )
        })?;
        let db = opts
            .db_name()
            .context(
                "--mysql: name the database in the URL, e.g. mysql://root@127.0.0.1:3306/test",
            )?
            .to_owned();
        let mut conn = mysql_async::Conn::new(opts)
            .await
            .context("--mysql: connect")?;
        let columns: Vec<String> = MY_COLUMNS.iter().map(|(c, t)| format!("{c} {t}")).collect();
        conn.query_drop(format!(
            "DROP TABLE IF EXISTS {MY_TABLE}; CREATE TABLE {MY_TABLE} ({}) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
            columns.join(", ")
        ))
        .await
        .context("--mysql: create the demo's table govbus_demo_enterprise_registration")?;
        let mut config = capture_config(
            url,
            format!("{db}.{MY_TABLE}"),
            Kind::Mysql.dataset(),
            state,
        );
        // Its own name: its own metrics, event ids and replica server_id.
        config.name = format!("{NAME}_mysql");
        Ok(Source {
            kind: Kind::Mysql,
            config,
            table: format!("MySQL {db}.{MY_TABLE}"),
            conn: Conn::My(conn),
        })
    }

    /// The department's system at work: one transaction inserting `records`.
    pub async fn insert(&mut self, records: &[&Json]) -> anyhow::Result<()> {
        let columns = self.kind.columns();
        let names: Vec<&str> = columns.iter().map(|(c, _)| *c).collect();
        let rows: Vec<Vec<Option<String>>> = records
            .iter()
            .map(|r| {
                names
                    .iter()
                    .map(|c| match &r[*c] {
                        Json::Null => None,
                        Json::String(s) => Some(s.clone()),
                        other => Some(other.to_string()),
                    })
                    .collect()
            })
            .collect();
        match &mut self.conn {
            Conn::Pg(client) => {
                let types: Vec<&str> = columns
                    .iter()
                    .map(|(_, t)| t.split(' ').next().unwrap_or("text"))
                    .collect();
                let values: Vec<String> = types
                    .iter()
                    .enumerate()
                    .map(|(i, t)| format!("${}::text::{t}", i + 1))
                    .collect();
                let sql = format!(
                    "INSERT INTO {PG_TABLE} ({}) VALUES ({})",
                    names.join(", "),
                    values.join(", ")
                );
                let tx = client.transaction().await?;
                let statement = tx.prepare(&sql).await?;
                for row in &rows {
                    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = row
                        .iter()
                        .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
                        .collect();
                    tx.execute(&statement, &params).await?;
                }
                tx.commit().await?;
            }
            Conn::My(conn) => {
                let marks = vec!["?"; names.len()].join(", ");
                let sql = format!(
                    "INSERT INTO {MY_TABLE} ({}) VALUES ({marks})",
                    names.join(", ")
                );
                let mut tx = conn
                    .start_transaction(mysql_async::TxOpts::default())
                    .await?;
                tx.exec_batch(sql, rows).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }
}

/// Drops the demo's replication slot and publication (a slot left behind
/// holds WAL on the database forever).
/// The capture's walsender can outlive its stop by a moment (the slot is
/// still active), so a failed drop is retried for 15 s.
pub async fn release(config: &Config) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match govbus_capture::drop_replication(config).await {
            Ok(_) => return,
            Err(e) if std::time::Instant::now() >= deadline => {
                eprintln!(
                    "could not drop the demo's replication slot `{NAME}`: {e}; drop it in the database with SELECT pg_drop_replication_slot('{NAME}'); DROP PUBLICATION {NAME};"
                );
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}
