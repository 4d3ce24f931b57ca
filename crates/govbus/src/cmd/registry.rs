//! `govbus registry`: serve the Confluent-compatible schema registry API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use govbus_kafka::topics::Topics;
use govbus_registry::{follow_log, serve_with, Mode, Registry};

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
    /// Accept new compatible schema versions, kept in the schema log on this broker
    /// (routers follow it with `--follow-schema-log`). Without it the registry is read-only.
    #[arg(long, value_name = "BOOTSTRAP")]
    read_write: Option<String>,
    #[command(flatten)]
    tls: super::gateway::TlsArgs,
}

pub fn run(args: RegistryArgs) -> anyhow::Result<ExitCode> {
    let catalog = catalog_source::load_checked(args.catalog.as_deref())?;
    let topics = Topics::new(args.topic_prefix);
    let mode = match &args.read_write {
        None => Mode::ReadOnly,
        Some(bootstrap) => {
            let topic = govbus_kafka::schema_log::topic(&topics);
            create_log_topic(bootstrap, &topic)?;
            Mode::ReadWrite {
                bootstrap: bootstrap.clone(),
                topic,
            }
        }
    };
    let options = govbus_http::Options {
        tls: args.tls.load()?,
        ..govbus_http::Options::default()
    };
    let registry = Arc::new(Registry::with_mode(&catalog, &topics, mode));
    // Versions registered earlier (by any instance) are served before the first request.
    let tail = follow_log(&registry);
    if let Some(t) = &tail {
        if !t.catch_up(std::time::Duration::from_secs(30)) {
            anyhow::bail!("could not replay the schema log within 30 s");
        }
    }
    super::serve_until_terminated(args.listen, "schema registry", |listener| {
        serve_with(listener, registry, options, crate::signals::terminated())
    })
}

/// Creates the one-partition schema log topic (an existing one is fine).
fn create_log_topic(bootstrap: &str, topic: &str) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            rdkafka::ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .create()?;
        let t =
            NewTopic::new(topic, 1, TopicReplication::Fixed(1)).set("cleanup.policy", "compact");
        let opts = AdminOptions::new().request_timeout(Some(std::time::Duration::from_secs(10)));
        for r in admin.create_topics([&t], &opts).await? {
            match r {
                Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, e)) => anyhow::bail!("create the schema log {name}: {e}"),
            }
        }
        anyhow::Ok(())
    })
}
