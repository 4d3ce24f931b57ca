//! `govbus gateway`, `govbus credential new` and `govbus credential fingerprint`,
//! and the TLS options the gateway, the registry and the sink share.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use govbus_gateway::{
    certificate_fingerprint, hash_token, serve, Credentials, Gateway, GatewayConfig,
};
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
    #[command(flatten)]
    tls: TlsArgs,
}

/// HTTPS for a server command: `--tls-cert FILE --tls-key FILE [--client-ca FILE]`.
#[derive(Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// Serve HTTPS with this certificate chain (PEM). Needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Accept client certificates issued by these CAs (PEM bundle); a client
    /// without one still connects (and uses a token). Needs --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// The TLS configuration, if HTTPS was asked for.
    pub fn load(&self) -> anyhow::Result<Option<govbus_http::Tls>> {
        tls_from_files(
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            self.client_ca.as_deref(),
        )
    }
}

/// The TLS configuration from PEM files (the CLI flags or `govbus up`'s
/// `tls_cert`/`tls_key`/`client_ca` keys); none without a certificate.
pub fn tls_from_files(
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
    client_ca: Option<&std::path::Path>,
) -> anyhow::Result<Option<govbus_http::Tls>> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(
            govbus_http::Tls::load(cert, key, client_ca).context("load the TLS configuration")?,
        )),
        (None, None) if client_ca.is_none() => Ok(None),
        _ => {
            anyhow::bail!("TLS needs both a certificate and a key (and a client CA only with them)")
        }
    }
}

pub fn run(args: GatewayArgs) -> anyhow::Result<ExitCode> {
    let catalog = catalog_source::load_checked(args.catalog.as_deref())?;
    let credentials = Credentials::load_and_watch(
        &args.credentials,
        crate::up::department_check(&catalog),
        std::time::Duration::from_secs(1),
    )?;
    let engine = Arc::new(Engine::new(&catalog)?);
    let mut config = GatewayConfig::new(args.bootstrap);
    config.topics = Topics::new(args.topic_prefix);
    config.max_connections = args.max_connections.max(1);
    config.header_timeout = args.header_timeout;
    config.body_timeout = args.body_timeout;
    config.tls = args.tls.load()?;
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

#[derive(Args)]
pub struct FingerprintArgs {
    /// The department's client certificate (PEM; the first certificate is used).
    #[arg(long, value_name = "FILE")]
    cert: PathBuf,
    /// The department the certificate authenticates.
    #[arg(long)]
    department: Option<String>,
}

/// Prints the credentials-file entry for a client certificate: the SHA-256
/// of its DER.
pub fn fingerprint(args: FingerprintArgs) -> anyhow::Result<ExitCode> {
    let certs = govbus_http::read_certificates(&args.cert)?;
    let Some(leaf) = certs.first() else {
        anyhow::bail!("{}: no certificate", args.cert.display());
    };
    let department = args.department.as_deref().unwrap_or("<department>");
    println!(
        "[[credential]]\ndepartment = {}\ncertificate_sha256 = \"{}\"",
        toml::Value::String(department.to_owned()),
        certificate_fingerprint(leaf.as_ref())
    );
    Ok(ExitCode::SUCCESS)
}
