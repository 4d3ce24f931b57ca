//! Throwaway PostgreSQL schemas in the machine's server.

use anyhow::Context as _;
use tokio_postgres::{Client, NoTls};

use crate::unique;

/// A schema of its own in the test database, dropped (with everything in it)
/// when this value is dropped. Connects to `$GOVBUS_TEST_PG` or
/// `host=127.0.0.1 port=5432 user=postgres dbname=test`.
#[derive(Debug)]
pub struct PgSchema {
    conninfo: String,
    name: String,
}

impl PgSchema {
    /// The connection string tests use.
    pub fn conninfo_default() -> String {
        std::env::var("GOVBUS_TEST_PG")
            .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".to_owned())
    }

    /// Creates a fresh schema.
    pub async fn create() -> anyhow::Result<PgSchema> {
        let conninfo = PgSchema::conninfo_default();
        let name = unique("t").replace('-', "_");
        let client = connect(&conninfo).await?;
        client
            .batch_execute(&format!("CREATE SCHEMA \"{name}\""))
            .await?;
        Ok(PgSchema { conninfo, name })
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The connection string plus `options=-csearch_path=<schema>`.
    pub fn conninfo(&self) -> String {
        format!("{} options=-csearch_path={}", self.conninfo, self.name)
    }

    /// A client whose search path is this schema.
    pub async fn client(&self) -> anyhow::Result<Client> {
        connect(&self.conninfo()).await
    }
}

async fn connect(conninfo: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(conninfo, NoTls)
        .await
        .with_context(|| format!("connect to PostgreSQL ({conninfo})"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let (conninfo, name) = (self.conninfo.clone(), self.name.clone());
        // Drop may run inside a runtime; do the async cleanup on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let client = connect(&conninfo).await?;
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                    .await?;
                anyhow::Ok(())
            })
        })
        .join();
    }
}
