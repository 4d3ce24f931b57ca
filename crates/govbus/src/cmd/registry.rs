//! `govbus registry`: serve the Confluent-compatible schema registry API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

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
    let catalog = catalog_source::load_checked(args.catalog.as_deref())?;
    let registry = Arc::new(Registry::new(&catalog, &Topics::new(args.topic_prefix)));
    super::serve_until_terminated(args.listen, "schema registry", |listener| {
        serve(listener, registry, crate::signals::terminated())
    })
}
