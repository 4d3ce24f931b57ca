//! `govbus sink`: deliver subscriptions (webhook, PostgreSQL, Kafka view,
//! file) and serve the live streams (SSE), reloading the catalog's grants.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use govbus_catalog::Catalog;
use govbus_gateway::Credentials;
use govbus_kafka::topics::Topics;
use govbus_sink::{Metrics, SinkConfig, Sinks};

use crate::catalog_source;

/// Development-only pseudonym secret, used when none is configured.
const DEV_PSEUDONYM_SECRET: &[u8] = b"govbus-development-pseudonym-secret";

#[derive(Args)]
pub struct SinkArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "GOVBUS_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Catalog directory, re-read every second: a revoked, expired or changed
    /// grant takes effect within seconds. Default: the embedded sample.
    #[arg(long, env = "GOVBUS_CATALOG")]
    catalog: Option<PathBuf>,
    /// Also decode records under schema versions registered at run time
    /// (follow the schema log, as the router's `--follow-schema-log`).
    #[arg(long)]
    follow_schema_log: bool,
    /// Topic namespace prefix (e.g. `staging.`).
    #[arg(long, default_value = "")]
    topic_prefix: String,
    /// Run only this subscription (repeatable). Default: every subscription
    /// whose sink runs (SSE subscriptions are served on --listen either way).
    #[arg(long = "subscription", value_name = "ID")]
    subscriptions: Vec<String>,
    /// PostgreSQL connection for `postgres` sinks that name none.
    #[arg(long, env = "GOVBUS_POSTGRES")]
    postgres: Option<String>,
    /// Where to serve the live streams, /metrics and /health.
    #[arg(long, default_value = "127.0.0.1:9465")]
    listen: SocketAddr,
    #[command(flatten)]
    tls: super::gateway::TlsArgs,
    /// Subscriber tokens for the live streams (`govbus credential new` format).
    #[arg(long, env = "GOVBUS_CREDENTIALS")]
    credentials: Option<PathBuf>,
    /// Environment variable holding the secret pseudonyms are keyed with.
    #[arg(long, default_value = "GOVBUS_PSEUDONYM_SECRET")]
    pseudonym_secret_env: String,
    /// Heartbeat interval of the live streams.
    #[arg(long, default_value = "15s", value_parser = humantime_duration)]
    heartbeat: Duration,
    /// Most records per batch.
    #[arg(long, default_value_t = 1000)]
    max_batch: usize,
    /// The directory file sinks write below (a grant's `dir` is relative to it).
    #[arg(long, default_value = ".")]
    file_root: PathBuf,
    /// PEM file of the CAs https:// webhook receivers' certificates must
    /// chain to, instead of the Mozilla root set (a government's own CA).
    #[arg(long, env = "GOVBUS_WEBHOOK_CA")]
    webhook_ca: Option<PathBuf>,
    /// Do not create missing `_govbus.audit`, `dlq.sub.*` and `view.*` topics
    /// (they are provisioned, or the broker has no CreateTopics).
    #[arg(long)]
    no_create_topics: bool,
    /// Extra librdkafka setting, `key=value` (repeatable).
    #[arg(long = "kafka", value_name = "KEY=VALUE")]
    kafka: Vec<String>,
}

/// The key the delivery ledger's entries are authenticated with, from
/// `GOVBUS_LEDGER_KEY` (at least 16 bytes); the development key, with a
/// warning, when it is unset. Writers and the auditor (`govbus audit
/// verify`) must hold the same key.
pub(crate) fn ledger_key() -> anyhow::Result<Vec<u8>> {
    match std::env::var(LEDGER_KEY_ENV) {
        Ok(s) if s.len() >= 16 => Ok(s.into_bytes()),
        Ok(_) => anyhow::bail!("{LEDGER_KEY_ENV} must hold at least 16 bytes"),
        Err(_) => {
            tracing::warn!(message = "No ledger key set: using the development key. Set it in production, or anyone who can write the audit topic can forge ledger entries.", variable = LEDGER_KEY_ENV);
            Ok(govbus_sink::ledger::DEV_LEDGER_KEY.to_vec())
        }
    }
}

/// The environment variable holding the ledger key.
pub(crate) const LEDGER_KEY_ENV: &str = "GOVBUS_LEDGER_KEY";

/// The secret pseudonyms are keyed with, from the environment variable
/// `var`; the development secret (with a warning) when it is unset.
pub(crate) fn pseudonym_secret(var: &str) -> anyhow::Result<Vec<u8>> {
    match std::env::var(var) {
        Ok(s) if s.len() >= 16 => Ok(s.into_bytes()),
        Ok(_) => anyhow::bail!("{var} must hold at least 16 bytes"),
        Err(_) => {
            tracing::warn!(message = "No pseudonym secret set: using the development secret. Set it in production, or pseudonyms can be recomputed by anyone.", variable = %var);
            Ok(DEV_PSEUDONYM_SECRET.to_vec())
        }
    }
}

pub(crate) fn humantime_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// Re-reads `dir` every second and publishes a catalog that loads cleanly;
/// one with problems is logged and ignored (the last good one stays).
/// The catalog a sink or the live interfaces work from: the catalog files
/// (re-read every second when `dir` is given) with every change of the
/// schema log applied in order — the versions the registry accepted at run
/// time, which the router routes — so that a record written under such a
/// version decodes here as well (without it, the sinks dead-lettered it as
/// undecodable and a live stream skipped it). `follow` as the router's and
/// gateway's `--follow-schema-log`. Keep the returned tail alive.
pub(crate) fn catalog_feed(
    dir: Option<PathBuf>,
    catalog: Catalog,
    (bootstrap, topics, follow): (&str, &Topics, bool),
) -> (
    tokio::sync::watch::Receiver<Arc<Catalog>>,
    Option<govbus_kafka::schema_log::Tail>,
) {
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(catalog.clone()));
    let feed = Arc::new(Feed {
        tx,
        state: std::sync::Mutex::new(FeedState {
            files: Arc::new(catalog),
            changes: Vec::new(),
        }),
    });
    if let Some(dir) = dir {
        watch_catalog(dir, feed.clone());
    }
    if !follow {
        return (rx, None);
    }
    let f = feed.clone();
    let topic = govbus_kafka::schema_log::topic(topics);
    let tail = govbus_kafka::schema_log::Tail::start(bootstrap, &topic, move |key, value| {
        f.change(key, value)
    })
    .map_err(|error| tracing::warn!(message = "Cannot follow the schema log: versions registered at run time will not decode here.", %error))
    .ok();
    // Every version registered so far is known before the first record is
    // read (the router catches up the same way before deciding).
    if let Some(t) = &tail {
        let caught_up = govbus_kafka::stage::blocking(|| t.catch_up(Duration::from_secs(10)));
        if !caught_up {
            tracing::warn!(message = "The schema log was not replayed within 10 s; records under versions it holds may be dead-lettered as undecodable until it is.");
        }
    }
    (rx, tail)
}

/// The catalog files in force and the schema log's changes, published as
/// one catalog. A new log entry is applied to the catalog in force (one
/// catalog check); only a reload of the files replays the whole log.
struct Feed {
    tx: tokio::sync::watch::Sender<Arc<Catalog>>,
    state: std::sync::Mutex<FeedState>,
}

struct FeedState {
    files: Arc<Catalog>,
    changes: Vec<(String, String)>,
}

impl Feed {
    fn files(&self) -> Option<Arc<Catalog>> {
        self.state.lock().ok().map(|s| s.files.clone())
    }

    fn set_files(&self, files: Catalog) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        s.files = Arc::new(files);
        let mut current = s.files.clone();
        for (key, value) in &s.changes {
            if let Ok(c) = current.apply_change(key, value) {
                current = Arc::new(c);
            }
        }
        let _ = self.tx.send(current);
    }

    fn change(&self, key: &str, value: &str) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        s.changes.push((key.to_owned(), value.to_owned()));
        let current = self.tx.borrow().clone();
        match current.apply_change(key, value) {
            Ok(c) => {
                let _ = self.tx.send(Arc::new(c));
                tracing::info!(message = "Schema log change applied.", key);
            }
            Err(error) => {
                tracing::warn!(message = "Schema log change refused by this catalog.", key, %error)
            }
        }
    }
}

fn watch_catalog(dir: PathBuf, feed: Arc<Feed>) {
    tokio::spawn(async move {
        let mut last_error = String::new();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let d = dir.clone();
            let loaded = tokio::task::spawn_blocking(move || Catalog::load(&d)).await;
            match loaded {
                Ok(Ok(c)) => {
                    last_error.clear();
                    let changed = feed.files().is_none_or(|f| !f.same_sources(&c));
                    if changed {
                        // Logged once in force (tests and operators read it so).
                        let subscriptions = c.subscriptions().count();
                        feed.set_files(c);
                        tracing::info!(message = "Catalog reloaded.", subscriptions);
                    }
                }
                Ok(Err(problems)) => {
                    let text = problems.to_string();
                    if text != last_error {
                        tracing::error!(message = "Catalog has problems; keeping the last good one. Run `govbus catalog check`.", problems = %text);
                        last_error = text;
                    }
                }
                Err(_) => {}
            }
        }
    });
}

pub fn run(args: SinkArgs) -> anyhow::Result<ExitCode> {
    let catalog = catalog_source::load_checked(args.catalog.as_deref())?;
    for id in &args.subscriptions {
        if catalog.subscription(id).is_none() {
            anyhow::bail!(
                "--subscription {id}: no such subscription in {} (see `govbus subscriptions list`)",
                catalog_source::describe(args.catalog.as_deref())
            );
        }
    }
    let credentials = match &args.credentials {
        Some(path) => Credentials::load_and_watch(
            path,
            crate::up::department_check(&catalog),
            std::time::Duration::from_secs(1),
        )?,
        None => Credentials::default(),
    };
    let tls = args.tls.load()?;
    let secret = pseudonym_secret(&args.pseudonym_secret_env)?;
    let mut config = SinkConfig::new(args.bootstrap);
    config.topics = Topics::new(args.topic_prefix);
    config.pseudonym_secret = secret;
    config.ledger_key = ledger_key()?;
    config.file_root = args.file_root;
    config.webhook_ca = args.webhook_ca;
    config.postgres = args.postgres;
    config.only = args.subscriptions;
    config.max_batch = args.max_batch.max(1);
    config.create_topics = !args.no_create_topics;
    config.client_overrides = super::kafka_overrides(&args.kafka)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let follow = (config.bootstrap.as_str(), &config.topics, args.follow_schema_log);
        let (cat_rx, _schema_log) = catalog_feed(args.catalog, catalog, follow);
        let sinks = Sinks::start(config, cat_rx, Metrics::new()).await?;
        let app = govbus_sink::sse::router(&sinks, credentials, args.heartbeat);
        let options = govbus_http::Options {
            tls,
            ..govbus_http::Options::default()
        };
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listen on {}", args.listen))?;
        tracing::info!(message = "Serving live streams, /metrics, /health.", addr = %listener.local_addr()?);
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
            tracing::info!(message = "Stopping: finishing the batches in hand.");
            let _ = stop_tx.send(true);
        });
        sinks.run(stop_rx).await;
        server.abort();
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
