//! `govbus capture postgres|mysql --config FILE`: stream a department database's
//! changes (logical decoding with pgoutput over the streaming replication
//! protocol or the SQL interface, or polling) to its ingest topic.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use govbus_adapter::publish::KafkaPublisher;
use govbus_adapter::Publisher;
use govbus_capture::{Capture, Config};
use govbus_kafka::topics::Topics;

use crate::catalog_source;

#[derive(Subcommand)]
pub enum CaptureCommand {
    /// Capture changes from PostgreSQL tables.
    Postgres(PostgresArgs),
    /// Capture changes from MySQL or MariaDB tables (the row-based binlog).
    Mysql(PostgresArgs),
}

#[derive(Args)]
pub struct PostgresArgs {
    /// The capture configuration (TOML: conninfo, mode, name, tables).
    #[arg(long)]
    config: PathBuf,
    /// Kafka bootstrap servers.
    #[arg(long, env = "GOVBUS_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Topic namespace prefix.
    #[arg(long, default_value = "")]
    topic_prefix: String,
    /// Catalog directory. Default: the embedded sample catalog.
    #[arg(long, env = "GOVBUS_CATALOG")]
    catalog: Option<PathBuf>,
    /// Where to serve /metrics and /health.
    #[arg(long, default_value = "127.0.0.1:9467")]
    listen: std::net::SocketAddr,
    /// Extra librdkafka setting, `key=value` (repeatable).
    #[arg(long = "kafka", value_name = "KEY=VALUE")]
    kafka: Vec<String>,
    /// Drop the replication slot and the publication named by the config's
    /// `name`, then exit (decommissioning: a slot left behind holds WAL on
    /// the database forever). Stop the capture first.
    #[arg(long)]
    drop: bool,
}

pub fn run(cmd: CaptureCommand) -> anyhow::Result<ExitCode> {
    let (a, mysql) = match cmd {
        CaptureCommand::Postgres(a) => (a, false),
        CaptureCommand::Mysql(a) => (a, true),
    };
    let config = Config::load(&a.config)?;
    if a.drop {
        if mysql {
            anyhow::bail!(
                "--drop: a MySQL capture leaves nothing on the server; its position is in its state directory"
            );
        }
        return drop_replication(&config);
    }
    let catalog = catalog_source::load_checked(a.catalog.as_deref())?;
    let mut overrides: Vec<(String, String)> = govbus_capture::PRODUCER_DEFAULTS
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    overrides.extend(super::kafka_overrides(&a.kafka)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let topics = Topics::new(a.topic_prefix.clone());
        let metrics = govbus_capture::Metrics::new();
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("listen on {}", a.listen))?;
        tracing::info!(message = "Serving /metrics, /health.", addr = %listener.local_addr()?);
        let m = metrics.clone();
        let app = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let m = m.clone();
                    async move { ([("content-type", "text/plain; version=0.0.4")], m.render()) }
                }),
            )
            .route("/health", axum::routing::get(|| async { "ok\n" }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            crate::signals::terminated().await;
            tracing::info!(message = "Stopping after the changes in hand.");
            let _ = stop_tx.send(true);
        });
        supervise(
            config,
            mysql,
            &catalog,
            Target {
                bootstrap: &a.bootstrap,
                topics: &topics,
                overrides: &overrides,
            },
            metrics,
            stop_rx,
        )
        .await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Where a capture publishes: the broker, the topic namespace and the
/// producer settings.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub bootstrap: &'a str,
    pub topics: &'a Topics,
    pub overrides: &'a [(String, String)],
}

/// Runs a capture until `stop`: transient failures (database restarted,
/// broker unreachable) reconnect after 5 s and resume from the persisted
/// position; configuration problems stop it with their error.
pub async fn supervise(
    config: Config,
    mysql: bool,
    catalog: &govbus_catalog::Catalog,
    kafka: Target<'_>,
    metrics: govbus_capture::Metrics,
    stop_rx: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    loop {
        let result = async {
            let mut capture = if mysql {
                Capture::connect_mysql(config.clone(), catalog, metrics.clone())?
            } else {
                Capture::connect(config.clone(), catalog, metrics.clone()).await?
            };
            let mut publishers: HashMap<String, Box<dyn Publisher + Send>> = HashMap::new();
            for owner in capture.owners() {
                let topic = kafka.topics.ingest(&owner);
                govbus_kafka::admin::ensure_topics(kafka.bootstrap, &[(topic.clone(), 4)]).await;
                let p = KafkaPublisher::new(kafka.bootstrap, &topic, "", kafka.overrides)
                    .map_err(|e| govbus_capture::CaptureError::Publish(e.into()))?;
                publishers.insert(owner, Box::new(p));
            }
            let r = capture.run(&mut publishers, stop_rx.clone()).await;
            tracing::info!(
                message = "Capture stopped.",
                name = %config.name,
                published = capture.counts.published,
                rejected = capture.counts.rejected,
                heartbeats = capture.counts.heartbeats
            );
            r
        }
        .await;
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() && !*stop_rx.borrow() => {
                tracing::error!(message = "Capture failed; reconnecting in 5 s.", name = %config.name, error = %e);
                let mut stop = stop_rx.clone();
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                    _ = stop.wait_for(|s| *s) => return Ok(()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn drop_replication(config: &Config) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let dropped = runtime
        .block_on(govbus_capture::drop_replication(config))
        .with_context(|| {
            format!(
                "drop replication slot and publication `{}` (is the capture still running?)",
                config.name
            )
        })?;
    let said = |done: bool| if done { "dropped" } else { "not found" };
    println!(
        "replication slot {}: {}\npublication {}: {}",
        config.name,
        said(dropped.slot),
        config.name,
        said(dropped.publication)
    );
    Ok(ExitCode::SUCCESS)
}
