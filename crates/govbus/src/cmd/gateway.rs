//! `govbus gateway` and `govbus credential new`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use govbus_gateway::{hash_token, serve, Credentials, Gateway, GatewayConfig};
use govbus_kafka::topics::Topics;
use govbus_validate::Engine;

use crate::catalog_source;

#[derive(Args)]
pub struct GatewayArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "GOVBUS_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Department credentials: `[[credential]] department = "..."`, `token_sha256 = "..."`.
    #[arg(long, env = "GOVBUS_CREDENTIALS")]
    credentials: PathBuf,
    /// Where to serve the API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Catalog directory. Default: the embedded sample catalog.
    #[arg(long, env = "GOVBUS_CATALOG")]
    catalog: Option<PathBuf>,
    /// Topic namespace prefix, as given to the router.
    #[arg(long, default_value = "")]
    topic_prefix: String,
    /// Also encode under schema versions registered at run time (follow the schema log).
    #[arg(long)]
    follow_schema_log: bool,
    /// Do not create the catalog's missing topics at start (`govbus topics ensure` lists them).
    #[arg(long)]
    no_create_topics: bool,
    /// Open connections at once; more are closed at accept.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Time for a request's headers to arrive, e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = super::sink::humantime_duration)]
    header_timeout: std::time::Duration,
    /// Time for an authenticated request's body to arrive, e.g. `30s`.
    #[arg(long, default_value = "30s", value_parser = super::sink::humantime_duration)]
    body_timeout: std::time::Duration,
}

pub fn run(args: GatewayArgs) -> anyhow::Result<ExitCode> {
    let catalog = catalog_source::load_checked(args.catalog.as_deref())?;
    let credentials = Credentials::load(&args.credentials, &|d| catalog.department(d).is_some())?;
    let engine = Arc::new(Engine::new(&catalog)?);
    let mut config = GatewayConfig::new(args.bootstrap);
    config.topics = Topics::new(args.topic_prefix);
    config.max_connections = args.max_connections.max(1);
    config.header_timeout = args.header_timeout;
    config.body_timeout = args.body_timeout;
    let create = (!args.no_create_topics).then(|| {
        (
            config.bootstrap.clone(),
            govbus_kafka::provision::plan(&catalog, &config.topics),
        )
    });
    let gateway = Arc::new(Gateway::new(engine, credentials, config)?);
    let _tail = if args.follow_schema_log {
        gateway.follow_schema_log(catalog)
    } else {
        None
    };
    super::serve_until_terminated(args.listen, "ingest gateway", |listener| async move {
        if let Some((bootstrap, plan)) = create {
            super::topics::ensure_logged(&bootstrap, &plan).await;
        }
        serve(listener, gateway, crate::signals::terminated()).await
    })
}

#[derive(Args)]
pub struct NewCredentialArgs {
    /// The department the token is for (a department of the catalog).
    #[arg(long)]
    department: String,
    /// Catalog directory. Default: the embedded sample catalog.
    #[arg(long, env = "GOVBUS_CATALOG")]
    catalog: Option<PathBuf>,
}

/// Prints a new random token (give it to the department) and the line for
/// the credentials file (keep it; it holds only the hash).
pub fn new_credential(args: NewCredentialArgs) -> anyhow::Result<ExitCode> {
    use std::io::Read;
    let catalog = catalog_source::load_checked(args.catalog.as_deref())?;
    if catalog.department(&args.department).is_none() {
        let known: Vec<&str> = catalog.departments().map(|d| d.id.as_str()).collect();
        anyhow::bail!(
            "`{}` is not a department of the catalog; the departments are: {}",
            crate::cmd::escape(&args.department),
            known.join(", ")
        );
    }
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("read /dev/urandom")?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    println!(
        "token for {} (give it to the department; it is not stored): {token}",
        args.department
    );
    println!(
        "\n[[credential]]\ndepartment = \"{}\"\ntoken_sha256 = \"{}\"",
        args.department,
        hash_token(&token)
    );
    Ok(ExitCode::SUCCESS)
}
