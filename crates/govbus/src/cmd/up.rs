//! `govbus up`, `govbus check` and `govbus fraud`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Args;
use govbus_kafka::topics::Topics;

use crate::up::{Extras, System, UpConfig};

#[derive(Args)]
pub struct UpArgs {
    /// The config (`deploy/govbus.toml` shows every setting). Default: every
    /// component with its default address, on an embedded broker.
    #[arg(long, env = "GOVBUS_CONFIG")]
    config: Option<PathBuf>,
    /// Do not create the catalog's missing topics on `[broker] bootstrap` at start.
    #[arg(long)]
    no_create_topics: bool,
}

#[derive(Args)]
pub struct CheckArgs {
    /// The config to check.
    #[arg(long, env = "GOVBUS_CONFIG")]
    config: PathBuf,
}

fn load(path: Option<&PathBuf>) -> anyhow::Result<UpConfig> {
    match path {
        Some(p) => UpConfig::load(p),
        None => Ok(UpConfig::everything()),
    }
}

/// Validates the config without starting anything.
pub fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let config = load(Some(&args.config))?;
    let (catalog, plan) = config.check()?;
    let problems = config.check_environment(&catalog);
    if !problems.is_empty() {
        anyhow::bail!("the config has problems:\n  {}", problems.join("\n  "));
    }
    println!("config OK: {}", args.config.display());
    for line in plan {
        println!("  {line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the components the config names until Ctrl-C / SIGTERM.
pub fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    let mut config = load(args.config.as_ref())?;
    if args.no_create_topics {
        config.broker.create_topics = false;
    }
    let (catalog, _) = config.check()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let system = System::start(&config, catalog.clone(), Extras::default()).await?;
        tracing::info!(message = "govbus is up.", bootstrap = %system.bootstrap, embedded_broker = system.embedded());
        // Bound addresses, so that port 0 ("any free port") can be found.
        for line in config.plan(&catalog, Some(&system.addrs)) {
            eprintln!("  {line}");
        }
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        let terminated = crate::signals::terminated();
        tokio::pin!(terminated);
        loop {
            tokio::select! {
                () = &mut terminated => break,
                _ = tick.tick() => {
                    if let Some(name) = system.failed() {
                        tracing::error!(message = "A component stopped; stopping the rest.", component = name);
                        break;
                    }
                }
            }
        }
        tracing::info!(message = "Stopping: finishing the batches in hand.");
        system.stop().await
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct FraudArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "GOVBUS_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Topic namespace prefix, as given to the sink.
    #[arg(long, default_value = "")]
    topic_prefix: String,
    /// Where the checkpoint lives (keep it between runs).
    #[arg(long, default_value = "var/fraud")]
    state_dir: PathBuf,
    /// Where to serve /metrics.
    #[arg(long, default_value = "127.0.0.1:9466")]
    listen: SocketAddr,
    /// Extra librdkafka setting, `key=value` (repeatable).
    #[arg(long = "kafka", value_name = "KEY=VALUE")]
    kafka: Vec<String>,
}

/// Runs the anti-fraud app alone.
pub fn fraud(args: FraudArgs) -> anyhow::Result<ExitCode> {
    let mut config = govbus_fraud::AppConfig::new(
        args.bootstrap,
        Topics::new(args.topic_prefix),
        args.state_dir,
    );
    config.client_overrides = super::kafka_overrides(&args.kafka)?;
    let metrics = govbus_fraud::Metrics::new();
    let stop = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let m = metrics.clone();
    let listener = runtime.block_on(tokio::net::TcpListener::bind(args.listen))?;
    tracing::info!(message = "Serving /metrics.", addr = %listener.local_addr()?);
    runtime.spawn(async move {
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let m = m.clone();
                async move { m.render() }
            }),
        );
        axum::serve(listener, app).await
    });
    let flag = stop.clone();
    runtime.spawn(async move {
        crate::signals::terminated().await;
        tracing::info!(message = "Stopping: writing the checkpoint.");
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    govbus_fraud::run(&config, &metrics, &stop)?;
    Ok(ExitCode::SUCCESS)
}
