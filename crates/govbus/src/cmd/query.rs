//! `govbus query`: the live interfaces (数据调用接口) — lookups and
//! verifications against the current state of each dataset that has a
//! live-interface (`type = "api"`) grant.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use govbus_gateway::Credentials;
use govbus_kafka::topics::Topics;
use govbus_query::{Metrics, Query, QueryConfig};

use crate::catalog_source;
use crate::cmd::sink::{catalog_feed, humantime_duration, ledger_key, pseudonym_secret};

#[derive(Args)]
pub struct QueryArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "GOVBUS_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Catalog directory, re-read every second: a revoked or expired grant
    /// stops answering within seconds. Default: the embedded sample.
    #[arg(long, env = "GOVBUS_CATALOG")]
    catalog: Option<PathBuf>,
    /// Also decode records under schema versions registered at run time
    /// (follow the schema log, as the router's `--follow-schema-log`).
    #[arg(long)]
    follow_schema_log: bool,
    /// Topic namespace prefix (e.g. `staging.`).
    #[arg(long, default_value = "")]
    topic_prefix: String,
    /// Where the state store lives (`query-state.redb`): one per instance.
    /// A missing or damaged store is rebuilt from the topics.
    #[arg(long, default_value = "var/query")]
    state_dir: PathBuf,
    /// The state store's page cache, MiB (memory does not grow with the state).
    #[arg(long, default_value_t = 64)]
    cache_mib: usize,
    /// Where to serve the API, /metrics, /health and /ready.
    #[arg(long, default_value = "127.0.0.1:9468")]
    listen: SocketAddr,
    #[command(flatten)]
    tls: super::gateway::TlsArgs,
    /// Subscriber tokens (`govbus credential new` format).
    #[arg(long, env = "GOVBUS_CREDENTIALS")]
    credentials: Option<PathBuf>,
    /// Environment variable holding the secret pseudonyms are keyed with
    /// (the sinks' secret: one subscriber sees one pseudonym everywhere).
    #[arg(long, default_value = "GOVBUS_PSEUDONYM_SECRET")]
    pseudonym_secret_env: String,
    /// Longest wait-for-version a caller may ask for.
    #[arg(long, default_value = "10s", value_parser = humantime_duration)]
    max_wait: Duration,
    /// Do not create a missing `_govbus.audit` (it is provisioned, or the
    /// broker has no CreateTopics).
    #[arg(long)]
    no_create_topics: bool,
    /// Extra librdkafka setting, `key=value` (repeatable).
    #[arg(long = "kafka", value_name = "KEY=VALUE")]
    kafka: Vec<String>,
}

pub fn run(args: QueryArgs) -> anyhow::Result<ExitCode> {
    let catalog = catalog_source::load_checked(args.catalog.as_deref())?;
    let credentials = match &args.credentials {
        Some(path) => Credentials::load_and_watch(
            path,
            crate::up::department_check(&catalog),
            std::time::Duration::from_secs(1),
        )?,
        None => Credentials::default(),
    };
    let tls = args.tls.load()?;
    let mut config = QueryConfig::new(args.bootstrap, &args.state_dir);
    config.topics = Topics::new(args.topic_prefix);
    config.pseudonym_secret = pseudonym_secret(&args.pseudonym_secret_env)?;
    config.ledger_key = ledger_key()?;
    config.cache_bytes = args.cache_mib.max(1) << 20;
    config.max_wait = args.max_wait;
    config.client_overrides = super::kafka_overrides(&args.kafka)?;
    config.create_topics = !args.no_create_topics;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let follow = (
            config.bootstrap.as_str(),
            &config.topics,
            args.follow_schema_log,
        );
        let (cat_rx, _schema_log) = catalog_feed(args.catalog, catalog, follow);
        let query = Query::start(config, cat_rx, credentials, Metrics::new())
            .await
            .context("start the live interfaces")?;
        serve(query, args.listen, tls).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Serves `query` on `listen` until SIGTERM/SIGINT.
pub(crate) async fn serve(
    query: Query,
    listen: SocketAddr,
    tls: Option<govbus_http::Tls>,
) -> anyhow::Result<()> {
    let app = govbus_query::api::router(&query);
    let options = govbus_http::Options {
        tls,
        ..govbus_http::Options::default()
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listen on {listen}"))?;
    tracing::info!(message = "Serving live interfaces, /metrics, /health, /ready.", addr = %listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut http_stop = stop_rx.clone();
    let server = tokio::spawn(async move {
        let stopped = async move {
            let _ = http_stop.wait_for(|s| *s).await;
        };
        govbus_http::serve(listener, app, options, stopped).await
    });
    tokio::spawn(async move {
        crate::signals::terminated().await;
        tracing::info!(message = "Stopping: finishing the state transactions in hand.");
        let _ = stop_tx.send(true);
    });
    query.supervise(stop_rx).await;
    // The ledger chain is closed; let the builders finish their transaction in hand.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.abort();
    Ok(())
}
