//! `govbus topics ensure [--dry-run]`: create every topic the catalog implies
//! (`govbus_kafka::provision`), for clusters whose operators provision topics
//! — and what the gateway, the router and `govbus up` run at start.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use govbus_kafka::provision::{self, TopicSpec};
use govbus_kafka::topics::Topics;

use crate::catalog_source;

#[derive(Subcommand)]
pub enum TopicsCommand {
    /// Create every topic the catalog implies that does not exist yet (idempotent).
    Ensure(EnsureArgs),
}

#[derive(Args)]
pub struct EnsureArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "GOVBUS_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Catalog directory. Default: the embedded sample catalog.
    #[arg(long, env = "GOVBUS_CATALOG")]
    catalog: Option<PathBuf>,
    /// Topic namespace prefix, as given to the other components.
    #[arg(long, default_value = "")]
    topic_prefix: String,
    /// Replication factor of new topics (3 on a production cluster).
    #[arg(long, default_value_t = 1)]
    replication: i32,
    /// Print the topics and their settings; create nothing (and connect to nothing).
    #[arg(long)]
    dry_run: bool,
}

pub fn run(c: TopicsCommand) -> anyhow::Result<ExitCode> {
    let TopicsCommand::Ensure(a) = c;
    let catalog = catalog_source::load_checked(a.catalog.as_deref())?;
    let plan = provision::plan(&catalog, &Topics::new(a.topic_prefix));
    if a.dry_run {
        for t in &plan {
            println!("{}", t.describe());
        }
        println!("{} topics (dry run: nothing created)", plan.len());
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(provision::ensure(
        &a.bootstrap,
        &plan,
        a.replication,
        Duration::from_secs(30),
    ))?;
    for t in &outcome.created {
        println!("created  {t}");
    }
    for (t, why) in &outcome.failed {
        println!("FAILED   {t}: {why}");
    }
    println!(
        "{} topics: {} created, {} already there, {} failed",
        plan.len(),
        outcome.created.len(),
        outcome.existing.len(),
        outcome.failed.len()
    );
    Ok(if outcome.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Provisioning at a component's start: bounded, logged, never fatal (a
/// publish to a topic still missing is answered with an error naming it).
pub async fn ensure_logged(bootstrap: &str, plan: &[TopicSpec]) {
    match provision::ensure(bootstrap, plan, 1, Duration::from_secs(15)).await {
        Ok(o) if o.failed.is_empty() => tracing::info!(
            message = "Topics provisioned.",
            created = o.created.len(),
            existing = o.existing.len()
        ),
        Ok(o) => tracing::warn!(
            message = "Some topics could not be created; `govbus topics ensure` says why.",
            failed = o.failed.len()
        ),
        Err(error) => tracing::warn!(message = "Topics not provisioned.", %error),
    }
}
