//! `govbus registry`: serve the Confluent-compatible schema registry API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use govbus_kafka::topics::Topics;
use govbus_registry::{serve, Registry};

use crate::catalog_source;

#[derive(Args)]
pub struct RegistryArgs {
    /// Where to serve the API.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Catalog directory. Default: the embedded sample catalog.
    #[arg(long, env = "GOVBUS_CATALOG")]
    catalog: Option<PathBuf>,
    /// Topic namespace prefix, as given to the router (subjects follow topic names).
    #[arg(long, default_value = "")]
    topic_prefix: String,
}

pub fn run(args: RegistryArgs) -> anyhow::Result<ExitCode> {
    let catalog = catalog_source::load(args.catalog.as_deref()).map_err(|p| {
        anyhow::anyhow!("the catalog has problems; run `govbus catalog check`:\n{p}")
    })?;
    let registry = Arc::new(Registry::new(&catalog, &Topics::new(args.topic_prefix)));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listen on {}", args.listen))?;
        tracing::info!(message = "Schema registry serving.", addr = %listener.local_addr()?);
        serve(listener, registry, crate::signals::terminated()).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
