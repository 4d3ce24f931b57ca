//! `govbus`: the one binary. Each capability is a subcommand; this is the only
//! crate that knows every component.

mod catalog_source;
mod cmd;
mod demo;
mod promtext;
mod report;
mod signals;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The router allocates a handful of small buffers per record (headers, key,
/// value) across threads; glibc malloc spent a fifth of its CPU there
/// (BENCHMARKS.md). mimalloc handles that pattern far better.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "govbus",
    version,
    about = "Real-time data exchange bus for a city's government departments"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check and list the data catalog (数据目录).
    #[command(subcommand)]
    Catalog(cmd::catalog::CatalogCommand),
    /// Create the topics the catalog implies (`ensure`, `ensure --dry-run`).
    #[command(subcommand)]
    Topics(cmd::topics::TopicsCommand),
    /// Validate records (JSON array or NDJSON) against a dataset, offline.
    Validate(cmd::validate::ValidateArgs),
    /// List the rejection reason codes and what each means.
    Reasons(cmd::reasons::ReasonsArgs),
    /// Inspect and replay a department's dead letters.
    #[command(subcommand)]
    Dlq(Box<cmd::dlq::DlqCommand>),
    /// Measure components against baselines on a real broker.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// Serve the HTTP ingest gateway (POST /v1/datasets/{dataset}/records).
    Gateway(Box<cmd::gateway::GatewayArgs>),
    /// Publish a file of records (JSON, NDJSON, CSV) through the gateway.
    Publish(Box<cmd::publish::PublishArgs>),
    /// Department credentials for the gateway.
    #[command(subcommand)]
    Credential(CredentialCommand),
    /// Serve the Confluent-compatible schema registry API over the catalog.
    Registry(cmd::registry::RegistryArgs),
    /// Run the router: ingest.<dept> → validation → data.<dataset> | dlq.<dept>.
    Router(Box<cmd::router::RouterArgs>),
    /// Stream a department database's changes to its ingest topic.
    #[command(subcommand)]
    Capture(cmd::capture::CaptureCommand),
    /// Turn periodic table dumps into a live change stream (diff and publish).
    #[command(subcommand)]
    Snapshot(Box<cmd::snapshot::SnapshotCommand>),
    /// Deliver subscriptions (webhook, PostgreSQL, Kafka view, file) and serve live streams.
    Sink(Box<cmd::sink::SinkArgs>),
    /// Serve the live interfaces: look up and verify records against the
    /// current state of each dataset with an `api` grant.
    Query(Box<cmd::query::QueryArgs>),
    /// The grants (共享授权) in the catalog.
    #[command(subcommand)]
    Subscriptions(cmd::subscriptions::SubscriptionsCommand),
    /// See it all work: every component, five simulated departments, subscribers,
    /// the anti-fraud app and a live view, with nothing installed.
    Demo(Box<demo::DemoArgs>),
    /// Run every component in one process from one config (embedded broker when none is set).
    Up(cmd::up::UpArgs),
    /// Check a `govbus up` config without starting anything.
    Check(cmd::up::CheckArgs),
    /// Per-department scorecards (Markdown, HTML, JSON) from a running system.
    Report(Box<cmd::report::ReportArgs>),
    /// Run the anti-fraud app (reads the hrss_fraud_* views, publishes hrss.fraud_alert).
    Fraud(cmd::up::FraudArgs),
    /// Verify and query the delivery ledger (_govbus.audit).
    #[command(subcommand)]
    Audit(Box<cmd::audit::AuditCommand>),
}

#[derive(Subcommand)]
enum CredentialCommand {
    /// Make a new bearer token for a department and print its credentials-file entry.
    New(cmd::gateway::NewCredentialArgs),
    /// Print the credentials-file entry for a client certificate (mTLS): its SHA-256.
    Fingerprint(cmd::gateway::FingerprintArgs),
}

/// The one-shot commands whose output is read by people and pipes
/// (`govbus catalog list --format json | head`).
fn prints_to_a_pipe(c: &Command) -> bool {
    matches!(
        c,
        Command::Catalog(_)
            | Command::Validate(_)
            | Command::Reasons(_)
            | Command::Subscriptions(_)
            | Command::Audit(_)
            | Command::Dlq(_)
            | Command::Topics(_)
            | Command::Check(_)
            | Command::Report(_)
    )
}

/// The command's name, for the `service.name` of its spans.
fn name(c: &Command) -> &'static str {
    match c {
        Command::Router(_) => "router",
        Command::Sink(_) => "sink",
        Command::Query(_) => "query",
        Command::Snapshot(_) => "snapshot",
        Command::Capture(_) => "capture",
        Command::Gateway(_) => "gateway",
        Command::Publish(_) => "publish",
        Command::Registry(_) => "registry",
        Command::Fraud(_) => "fraud",
        Command::Bench(_) => "bench",
        Command::Demo(_) => "demo",
        _ => "up",
    }
}

/// Lets a closed pipe end the process quietly, as it ends `cat` or `grep`,
/// instead of `println!` panicking on EPIPE. Only for the one-shot commands:
/// servers keep SIGPIPE ignored, so a client that goes away is an error
/// value on its socket, not the end of the process.
#[allow(unsafe_code)]
fn quiet_broken_pipe() {
    // SAFETY: called once at start, before any thread is spawned; restores
    // the default disposition of one signal.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs go to stderr; GOVBUS_LOG / RUST_LOG set the filter, GOVBUS_LOG_FORMAT=json for JSON lines.
    let filter = tracing_subscriber::EnvFilter::try_from_env("GOVBUS_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only on a terminal: a log file or a pipe gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if prints_to_a_pipe(&cli.command) {
        quiet_broken_pipe();
    }
    if std::env::var("GOVBUS_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
    // Spans over OTLP when OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT is set; off otherwise.
    let exporting = if prints_to_a_pipe(&cli.command) {
        None
    } else {
        match govbus_trace::init(&format!("govbus-{}", name(&cli.command))) {
            Ok(e) => Some(e),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    let result = match cli.command {
        Command::Catalog(c) => cmd::catalog::run(c),
        Command::Topics(c) => cmd::topics::run(c),
        Command::Validate(a) => cmd::validate::run(a),
        Command::Reasons(a) => cmd::reasons::run(a),
        Command::Router(a) => cmd::router::run(*a),
        Command::Sink(a) => cmd::sink::run(*a),
        Command::Query(a) => cmd::query::run(*a),
        Command::Snapshot(c) => cmd::snapshot::run(*c),
        Command::Capture(c) => cmd::capture::run(c),
        Command::Subscriptions(c) => cmd::subscriptions::run(c),
        Command::Audit(c) => cmd::audit::run(*c),
        Command::Up(a) => cmd::up::up(a),
        Command::Demo(a) => demo::run(*a),
        Command::Check(a) => cmd::up::check(a),
        Command::Fraud(a) => cmd::up::fraud(a),
        Command::Report(a) => cmd::report::run(*a),
        Command::Bench(b) => cmd::bench::run(b),
        Command::Dlq(d) => cmd::dlq::run(*d),
        Command::Registry(a) => cmd::registry::run(a),
        Command::Gateway(a) => cmd::gateway::run(*a),
        Command::Publish(a) => cmd::publish::run(*a),
        Command::Credential(CredentialCommand::New(a)) => cmd::gateway::new_credential(a),
        Command::Credential(CredentialCommand::Fingerprint(a)) => cmd::gateway::fingerprint(a),
    };
    if let Some(e) = exporting {
        e.shutdown();
    }
    match result {
        Ok(code) => code,
        // 1 = failed, nothing (more) done; 2 is reserved for "done, but some
        // records were rejected" (publish, snapshot), which commands return as Ok.
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
