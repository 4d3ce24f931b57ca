//! `govbus router`: run the schema-validating router against a broker.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use govbus_router::{http, Metrics, Mode, Router, RouterConfig};
use govbus_validate::Engine;

use crate::catalog_source;

#[derive(Args)]
pub struct RouterArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "GOVBUS_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Catalog directory. Default: the embedded sample catalog.
    #[arg(long, env = "GOVBUS_CATALOG")]
    catalog: Option<PathBuf>,
    /// Topic namespace prefix (e.g. `staging.`): routes `<prefix>ingest.*`.
    #[arg(long, default_value = "")]
    topic_prefix: String,
    /// Consumer group shared by all router instances.
    #[arg(long, default_value = "govbus-router")]
    group: String,
    /// Delivery guarantee.
    #[arg(long, value_enum, default_value_t = ModeArg::AtLeastOnce)]
    mode: ModeArg,
    /// Where to serve /metrics, /health and /ready.
    #[arg(long, default_value = "127.0.0.1:9464")]
    listen: SocketAddr,
    /// This instance's name (transactional id, logs). Default: host-pid.
    #[arg(long)]
    instance: Option<String>,
    /// Do not create the catalog's missing topics at start (`govbus topics ensure` lists them).
    #[arg(long)]
    no_create_topics: bool,
    /// Also accept schema versions registered at run time (follow the schema log).
    #[arg(long)]
    follow_schema_log: bool,
    /// Most records per batch.
    #[arg(long, default_value_t = 2000)]
    max_batch: usize,
    /// Extra librdkafka setting, `key=value` (repeatable).
    #[arg(long = "kafka", value_name = "KEY=VALUE")]
    kafka: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    /// Store offsets after every record is acknowledged; duplicates on crash, never loss.
    AtLeastOnce,
    /// Kafka transactions (needs a broker with EndTxn, e.g. Apache Kafka).
    Transactional,
}

pub fn run(args: RouterArgs) -> anyhow::Result<ExitCode> {
    let catalog = catalog_source::load_checked(args.catalog.as_deref())?;
    let engine = Arc::new(Engine::new(&catalog)?);
    let follow = args.follow_schema_log;
    let mut config = RouterConfig::new(args.bootstrap);
    config.group = args.group;
    config.topics = govbus_router::Topics::new(args.topic_prefix);
    config.mode = match args.mode {
        ModeArg::AtLeastOnce => Mode::AtLeastOnce,
        ModeArg::Transactional => Mode::Transactional,
    };
    config.max_batch = args.max_batch.max(1);
    config.create_topics = !args.no_create_topics;
    if let Some(i) = args.instance {
        config.instance = i;
    }
    config.client_overrides = super::kafka_overrides(&args.kafka)?;
    let create = config.create_topics.then(|| {
        (
            config.bootstrap.clone(),
            govbus_kafka::provision::plan(&catalog, &config.topics),
        )
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        if let Some((bootstrap, plan)) = create {
            super::topics::ensure_logged(&bootstrap, &plan).await;
        }
        let metrics = Metrics::new();
        metrics.set_freshness(&catalog);
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listen on {}", args.listen))?;
        tracing::info!(message = "Serving /metrics, /health, /ready.", addr = %listener.local_addr()?);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut http_stop = stop_rx.clone();
        let server = tokio::spawn(http::serve(listener, metrics.clone(), async move {
            let _ = http_stop.wait_for(|s| *s).await;
        }));
        let mut router = Router::new(engine, config, metrics);
        if follow {
            router = router.follow_schema_log(catalog);
        }
        let mut router_stop = stop_rx;
        let routing = router.run(async move {
            let _ = router_stop.wait_for(|s| *s).await;
        });
        tokio::spawn(async move {
            crate::signals::terminated().await;
            tracing::info!(message = "Stopping: finishing the batch in flight.");
            let _ = stop_tx.send(true);
        });
        routing.await?;
        let _ = server.await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
