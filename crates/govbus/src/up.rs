//! Every component in one process (`govbus up`, `govbus demo`): the config
//! file, its check, the embedded broker and the running system.
//!
//! Each component is the same library code its own subcommand runs
//! (`govbus router`, `gateway`, `registry`, `sink`, `fraud`), so a section
//! can move to its own process — or to several, for scale-out — without
//! changing behaviour.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use govbus_catalog::Catalog;
use govbus_gateway::{Credentials, Gateway, GatewayConfig};
use govbus_kafka::topics::Topics;
use govbus_validate::Engine;
use serde::Deserialize;
use tokio::sync::watch;

use crate::catalog_source;

/// `govbus.toml`. A section runs its component; leave a section out to run
/// that component elsewhere. Relative paths are relative to the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpConfig {
    /// Catalog directory; the embedded sample when absent.
    pub catalog: Option<PathBuf>,
    /// Topic namespace prefix (e.g. `staging.`).
    #[serde(default)]
    pub topic_prefix: String,
    /// The broker; an embedded one when absent.
    #[serde(default)]
    pub broker: BrokerSection,
    /// The combined `/metrics`, `/health` and `/ready` of every component here.
    #[serde(default)]
    pub metrics: MetricsSection,
    /// The schema registry API (read-only).
    pub registry: Option<RegistrySection>,
    /// The HTTP ingest gateway.
    pub gateway: Option<GatewaySection>,
    /// The schema-validating router.
    pub router: Option<RouterSection>,
    /// Delivery and live streams.
    pub sink: Option<SinkSection>,
    /// The anti-fraud app.
    pub fraud: Option<FraudSection>,
    /// The live interfaces (lookup and verification).
    pub query: Option<QuerySection>,
}

/// `[broker]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSection {
    /// Kafka bootstrap servers. Absent: an embedded in-process broker.
    pub bootstrap: Option<String>,
    /// Extra librdkafka settings for every client.
    #[serde(default)]
    pub kafka: BTreeMap<String, String>,
    /// Create the catalog's missing topics at start (`govbus topics ensure`).
    /// Default true; `govbus up --no-create-topics` sets it false.
    #[serde(default = "yes")]
    pub create_topics: bool,
}

fn yes() -> bool {
    true
}

impl Default for BrokerSection {
    fn default() -> Self {
        BrokerSection {
            bootstrap: None,
            kafka: BTreeMap::new(),
            create_topics: true,
        }
    }
}

/// `[metrics]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Where to serve them.
    #[serde(default = "default_metrics")]
    pub listen: SocketAddr,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            listen: default_metrics(),
        }
    }
}

/// `[registry]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySection {
    /// Where to serve it.
    pub listen: SocketAddr,
    /// HTTPS: certificate chain (PEM). With `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// HTTPS: the certificate's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// CAs whose client certificates are accepted (PEM bundle); optional.
    pub client_ca: Option<PathBuf>,
}

/// `[gateway]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// Where to serve it.
    #[serde(default = "default_gateway")]
    pub listen: SocketAddr,
    /// Department credentials (`govbus credential new`). Without them every request is 401.
    pub credentials: Option<PathBuf>,
    /// HTTPS: certificate chain (PEM). With `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// HTTPS: the certificate's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// CAs whose client certificates are accepted (PEM bundle); optional.
    pub client_ca: Option<PathBuf>,
}

/// `[router]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterSection {
    /// Consumer group shared by every router instance.
    #[serde(default = "default_group")]
    pub group: String,
    /// `at-least-once` (default) or `transactional`.
    #[serde(default)]
    pub mode: RouterMode,
}

/// `[router] mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouterMode {
    /// Records first, offsets after (duplicates possible after a crash).
    #[default]
    AtLeastOnce,
    /// Each batch one Kafka transaction with its offsets.
    Transactional,
}

impl RouterMode {
    fn name(self) -> &'static str {
        match self {
            RouterMode::AtLeastOnce => "at-least-once",
            RouterMode::Transactional => "transactional",
        }
    }
}

impl From<RouterMode> for govbus_router::Mode {
    fn from(mode: RouterMode) -> govbus_router::Mode {
        match mode {
            RouterMode::AtLeastOnce => govbus_router::Mode::AtLeastOnce,
            RouterMode::Transactional => govbus_router::Mode::Transactional,
        }
    }
}

/// `[sink]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSection {
    /// Where to serve the live streams.
    #[serde(default = "default_sink")]
    pub listen: SocketAddr,
    /// PostgreSQL connection for `postgres` sinks that name none.
    pub postgres: Option<String>,
    /// Subscriber tokens for the live streams.
    pub credentials: Option<PathBuf>,
    /// Run only these subscriptions (default: all).
    #[serde(default)]
    pub subscriptions: Vec<String>,
    /// Live-stream heartbeat, e.g. `15s`.
    #[serde(default = "default_heartbeat", with = "humantime_serde_compat")]
    pub heartbeat: Duration,
    /// HTTPS: certificate chain (PEM). With `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// HTTPS: the certificate's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// CAs whose client certificates are accepted (PEM bundle); optional.
    pub client_ca: Option<PathBuf>,
    /// CAs https:// webhook receivers' certificates must chain to (PEM),
    /// instead of the Mozilla root set; optional.
    pub webhook_ca: Option<PathBuf>,
}

/// `[query]`: the live interfaces, as `govbus query` runs them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuerySection {
    /// Where to serve the API.
    #[serde(default = "default_query")]
    pub listen: SocketAddr,
    /// Subscriber tokens (`govbus credential new` format).
    pub credentials: Option<PathBuf>,
    /// Where the state store lives (one per instance).
    #[serde(default = "default_query_state")]
    pub state_dir: PathBuf,
    /// HTTPS: certificate chain (PEM). With `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// HTTPS: the certificate's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// CAs whose client certificates are accepted (PEM bundle); optional.
    pub client_ca: Option<PathBuf>,
}

fn default_query() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9468))
}
fn default_query_state() -> PathBuf {
    PathBuf::from("var/query")
}

/// `[fraud]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FraudSection {
    /// Where its checkpoint lives.
    #[serde(default = "default_fraud_state")]
    pub state_dir: PathBuf,
}

fn default_metrics() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}
fn default_gateway() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_sink() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9465))
}
fn default_group() -> String {
    "govbus-router".to_owned()
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(15)
}
fn default_fraud_state() -> PathBuf {
    PathBuf::from("var/fraud")
}

mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

impl UpConfig {
    /// Every component with its defaults, on the embedded broker and catalog.
    pub fn everything() -> UpConfig {
        UpConfig {
            registry: Some(RegistrySection {
                listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
                tls_cert: None,
                tls_key: None,
                client_ca: None,
            }),
            gateway: Some(GatewaySection {
                listen: default_gateway(),
                credentials: None,
                tls_cert: None,
                tls_key: None,
                client_ca: None,
            }),
            router: Some(RouterSection {
                group: default_group(),
                mode: RouterMode::default(),
            }),
            sink: Some(SinkSection {
                listen: default_sink(),
                postgres: None,
                credentials: None,
                subscriptions: Vec::new(),
                heartbeat: default_heartbeat(),
                tls_cert: None,
                tls_key: None,
                client_ca: None,
                webhook_ca: None,
            }),
            ..UpConfig::default()
        }
    }

    /// Reads `path`; relative paths in it become relative to its directory.
    pub fn load(path: &Path) -> anyhow::Result<UpConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let mut c: UpConfig =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(p) = c.catalog.as_mut() {
            fix(p);
        }
        if let Some(p) = c.gateway.as_mut().and_then(|g| g.credentials.as_mut()) {
            fix(p);
        }
        if let Some(p) = c.sink.as_mut().and_then(|s| s.credentials.as_mut()) {
            fix(p);
        }
        if let Some(f) = c.fraud.as_mut() {
            fix(&mut f.state_dir);
        }
        if let Some(p) = c.sink.as_mut().and_then(|s| s.webhook_ca.as_mut()) {
            fix(p);
        }
        if let Some(q) = c.query.as_mut() {
            fix(&mut q.state_dir);
            if let Some(p) = q.credentials.as_mut() {
                fix(p);
            }
        }
        let tls_files = [
            c.registry
                .as_mut()
                .map(|r| [&mut r.tls_cert, &mut r.tls_key, &mut r.client_ca]),
            c.gateway
                .as_mut()
                .map(|g| [&mut g.tls_cert, &mut g.tls_key, &mut g.client_ca]),
            c.sink
                .as_mut()
                .map(|s| [&mut s.tls_cert, &mut s.tls_key, &mut s.client_ca]),
            c.query
                .as_mut()
                .map(|q| [&mut q.tls_cert, &mut q.tls_key, &mut q.client_ca]),
        ];
        for p in tls_files.into_iter().flatten().flatten().flatten() {
            fix(p);
        }
        Ok(c)
    }

    /// Everything that can be known without starting anything: the catalog,
    /// credentials, subscriptions, connection strings, distinct addresses.
    /// Returns the catalog and one line per component that would run.
    pub fn check(&self) -> anyhow::Result<(Catalog, Vec<String>)> {
        if let Some(dir) = &self.catalog {
            if !dir.is_dir() {
                anyhow::bail!(
                    "catalog = {}: no such directory (a relative path is relative to the config file, not to where the command runs)",
                    dir.display()
                );
            }
        }
        let catalog = catalog_source::load_checked(self.catalog.as_deref())?;
        let mut problems = Vec::new();
        let mut addrs: Vec<(&str, SocketAddr)> = vec![("metrics", self.metrics.listen)];
        let known = |d: &str| catalog.department(d).is_some();
        let mut tls = |section: &str,
                       cert: &Option<PathBuf>,
                       key: &Option<PathBuf>,
                       ca: &Option<PathBuf>| {
            if let Err(e) =
                crate::cmd::gateway::tls_from_files(cert.as_deref(), key.as_deref(), ca.as_deref())
            {
                problems.push(format!("[{section}] tls_cert, tls_key, client_ca: {e:#}"));
            }
        };
        if let Some(r) = &self.registry {
            tls("registry", &r.tls_cert, &r.tls_key, &r.client_ca);
        }
        if let Some(g) = &self.gateway {
            tls("gateway", &g.tls_cert, &g.tls_key, &g.client_ca);
        }
        if let Some(s) = &self.sink {
            tls("sink", &s.tls_cert, &s.tls_key, &s.client_ca);
            if let Some(ca) = &s.webhook_ca {
                if let Err(e) = govbus_sink::sinks::webhook::check_ca(ca) {
                    problems.push(format!("[sink] webhook_ca: {e}"));
                }
            }
        }
        if let Some(r) = &self.registry {
            addrs.push(("registry", r.listen));
        }
        if let Some(g) = &self.gateway {
            addrs.push(("gateway", g.listen));
            if let Some(p) = &g.credentials {
                if let Err(e) = Credentials::load(p, &known) {
                    problems.push(format!("[gateway] credentials: {e}"));
                }
            }
        }
        if let Some(q) = &self.query {
            addrs.push(("query", q.listen));
        }
        if let Some(s) = &self.sink {
            addrs.push(("sink", s.listen));
            for id in &s.subscriptions {
                if catalog.subscription(id).is_none() {
                    problems.push(format!(
                        "[sink] subscriptions: {id} is not in the catalog (see `govbus subscriptions list`)"
                    ));
                }
            }
            if let Some(p) = &s.credentials {
                if let Err(e) = Credentials::load(p, &known) {
                    problems.push(format!("[sink] credentials: {e}"));
                }
            }
            if let Some(pg) = &s.postgres {
                if let Err(e) = pg.parse::<tokio_postgres::Config>() {
                    problems.push(format!("[sink] postgres: not a connection string: {e}"));
                }
            }
        }
        if self.fraud.is_some() {
            for id in govbus_fraud::FEEDS {
                if catalog.subscription(id).is_none() {
                    problems.push(format!(
                        "[fraud] needs the subscription {id} in the catalog (see schemas/subscriptions/)"
                    ));
                }
            }
            if catalog.dataset(govbus_fraud::ALERTS).is_none() {
                problems.push(format!(
                    "[fraud] needs the dataset {} in the catalog",
                    govbus_fraud::ALERTS
                ));
            }
        }
        for (i, (a, x)) in addrs.iter().enumerate() {
            for (b, y) in &addrs[i + 1..] {
                if x == y && x.port() != 0 {
                    problems.push(format!("[{a}] and [{b}] both listen on {x}"));
                }
            }
        }
        for k in self.broker.kafka.keys() {
            if k.trim().is_empty() {
                problems.push("[broker.kafka] has an empty setting name".to_owned());
            }
        }
        if problems.is_empty() {
            let plan = self.plan(&catalog, None);
            Ok((catalog, plan))
        } else {
            anyhow::bail!("the config has problems:\n  {}", problems.join("\n  "))
        }
    }

    /// What `govbus check` adds to [`UpConfig::check`]: this machine's
    /// environment — the secrets the configured components need (set, and
    /// long enough) and the ports (free now). Every problem, with its section.
    pub fn check_environment(&self, catalog: &Catalog) -> Vec<String> {
        let mut problems = Vec::new();
        self.check_secrets(catalog, &mut problems);
        let mut addrs = vec![("metrics", self.metrics.listen)];
        addrs.extend(self.registry.as_ref().map(|r| ("registry", r.listen)));
        addrs.extend(self.gateway.as_ref().map(|g| ("gateway", g.listen)));
        addrs.extend(self.sink.as_ref().map(|s| ("sink", s.listen)));
        addrs.extend(self.query.as_ref().map(|q| ("query", q.listen)));
        for (what, addr) in addrs {
            if addr.port() != 0 {
                if let Err(e) = std::net::TcpListener::bind(addr) {
                    problems.push(format!("[{what}] listen = {addr}: cannot bind it now ({e}); is another process using it?"));
                }
            }
        }
        problems
    }

    fn check_secrets(&self, catalog: &Catalog, problems: &mut Vec<String>) {
        const MIN: usize = 16;
        // The live interfaces pseudonymise and audit with the same secrets
        // as the sinks: a query-only deployment needs them as much.
        let section = match (&self.sink, &self.query) {
            (Some(_), _) => "[sink]",
            (None, Some(_)) => "[query]",
            (None, None) => return,
        };
        let production = self.broker.bootstrap.is_some();
        match std::env::var("GOVBUS_PSEUDONYM_SECRET") {
            Ok(v) if v.len() < MIN => problems.push(format!(
                "{section} GOVBUS_PSEUDONYM_SECRET holds {} bytes; it needs at least {MIN}",
                v.len()
            )),
            Err(_) if production => problems.push(
                format!("{section} GOVBUS_PSEUDONYM_SECRET is not set: pseudonyms would use the public development secret (set at least 16 random bytes)"),
            ),
            _ => {}
        }
        match std::env::var(crate::cmd::sink::LEDGER_KEY_ENV) {
            Ok(v) if v.len() < MIN => problems.push(format!(
                "{section} GOVBUS_LEDGER_KEY holds {} bytes; it needs at least {MIN}",
                v.len()
            )),
            Err(_) if production => problems.push(
                format!("{section} GOVBUS_LEDGER_KEY is not set: ledger entries would be authenticated with the public development key (set at least 16 random bytes; the auditor needs the same key)"),
            ),
            _ => {}
        }
        let Some(sink) = &self.sink else {
            return;
        };
        for sub in catalog.subscriptions() {
            if !sink.subscriptions.is_empty() && !sink.subscriptions.contains(&sub.id) {
                continue;
            }
            if let govbus_catalog::SinkSpec::Webhook {
                secret: govbus_catalog::SecretSource::Env(var),
                ..
            } = &sub.sink
            {
                match std::env::var(var) {
                    Ok(v) if v.len() >= MIN => {}
                    Ok(v) => problems.push(format!(
                        "[sink] subscription {}: its webhook secret {var} holds {} bytes; it needs at least {MIN}",
                        sub.id,
                        v.len()
                    )),
                    Err(_) => problems.push(format!(
                        "[sink] subscription {}: its webhook secret {var} is not set in the environment",
                        sub.id
                    )),
                }
            }
        }
    }

    /// One line per component that runs: where it listens (`bound`, once
    /// started, else as configured), what it serves.
    pub fn plan(&self, catalog: &Catalog, bound: Option<&Addrs>) -> Vec<String> {
        let bound = bound.cloned().unwrap_or_default();
        let at = |configured: SocketAddr, actual: Option<SocketAddr>| actual.unwrap_or(configured);
        let mut plan = Vec::new();
        plan.push(match &self.broker.bootstrap {
            Some(b) => format!("broker    {b}"),
            None => "broker    embedded (in-process; for trying out — see README)".to_owned(),
        });
        plan.push(format!(
            "catalog   {}",
            catalog_source::describe(self.catalog.as_deref())
        ));
        if let Some(r) = &self.registry {
            plan.push(format!("registry  http://{}", at(r.listen, bound.registry)));
        }
        if let Some(g) = &self.gateway {
            let addr = at(g.listen, bound.gateway);
            plan.push(match &g.credentials {
                Some(_) => format!("gateway   http://{addr}"),
                None => format!(
                    "gateway   http://{addr} — no credentials file: every publish is refused (set credentials = \"...\"; `govbus credential new` makes entries)"
                ),
            });
        }
        if let Some(r) = &self.router {
            plan.push(format!("router    group {} ({})", r.group, r.mode.name()));
        }
        if let Some(s) = &self.sink {
            let n = if s.subscriptions.is_empty() {
                catalog.subscriptions().count()
            } else {
                s.subscriptions.len()
            };
            plan.push(format!(
                "sink      http://{} ({n} subscriptions)",
                at(s.listen, bound.sink)
            ));
        }
        if let Some(f) = &self.fraud {
            plan.push(format!("fraud     state in {}", f.state_dir.display()));
        }
        if let Some(q) = &self.query {
            plan.push(format!(
                "query     http://{}/v1/query/ (state in {})",
                at(q.listen, bound.query),
                q.state_dir.display()
            ));
        }
        plan.push(format!(
            "metrics   http://{}/metrics",
            at(self.metrics.listen, bound.metrics)
        ));
        plan
    }
}

/// librdkafka's in-process mock cluster on a thread of its own (it is not
/// `Send`), with every topic the catalog implies created up front (it has no
/// CreateTopics). Data lives in memory and is gone when the process stops.
#[derive(Debug)]
pub struct EmbeddedBroker {
    bootstrap: String,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EmbeddedBroker {
    /// Starts the cluster and creates `topics` (name, partitions).
    pub fn start(topics: Vec<(String, i32)>) -> anyhow::Result<EmbeddedBroker> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("embedded-broker".into())
            .spawn(move || {
                let cluster = match rdkafka::mocking::MockCluster::new(1) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                for (t, p) in &topics {
                    if let Err(e) = cluster.create_topic(t, *p, 1) {
                        let _ = ready_tx.send(Err(format!("create {t}: {e}")));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                let _ = stop_rx.recv();
                drop(cluster);
            })?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("the embedded broker thread died"))?
            .map_err(|e| anyhow::anyhow!("start the embedded broker: {e}"))?;
        Ok(EmbeddedBroker {
            bootstrap,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Its bootstrap address.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Every topic the catalog implies, with partition counts.
pub fn catalog_topics(catalog: &Catalog, topics: &Topics) -> Vec<(String, i32)> {
    govbus_kafka::provision::plan(catalog, topics)
        .into_iter()
        .map(|t| (t.name, t.partitions))
        .collect()
}

/// What the running system exposes, for the live view and the report.
#[derive(Clone)]
pub struct Telemetry {
    router: Option<govbus_router::Metrics>,
    gateway: Option<Arc<Gateway>>,
    sink: Option<govbus_sink::Metrics>,
    fraud: Option<govbus_fraud::Metrics>,
    query: Option<govbus_query::Metrics>,
    extra: Vec<Arc<dyn Fn() -> String + Send + Sync>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Every component's metrics, one exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(m) = &self.router {
            out.push_str(&m.render());
        }
        if let Some(g) = &self.gateway {
            out.push_str(&g.render_metrics());
        }
        if let Some(m) = &self.sink {
            out.push_str(&m.render());
        }
        if let Some(m) = &self.fraud {
            out.push_str(&m.render());
        }
        if let Some(m) = &self.query {
            out.push_str(&m.render());
        }
        for f in &self.extra {
            out.push_str(&f());
        }
        out
    }

    /// Adds a source of metrics (the demo's generator).
    pub fn add(&mut self, f: Arc<dyn Fn() -> String + Send + Sync>) {
        self.extra.push(f);
    }

    /// Why the system is not ready, if it is not.
    fn not_ready(&self) -> Option<&'static str> {
        if !self.router.as_ref().is_none_or(|r| r.is_ready()) {
            return Some("the router is not connected to the broker\n");
        }
        if !self.sink.as_ref().is_none_or(|m| m.is_ready()) {
            return Some("a subscription task failed and waits to restart (govbus_sink_tasks_held; see the log)\n");
        }
        None
    }
}

/// Where the running system listens.
#[derive(Debug, Clone, Default)]
pub struct Addrs {
    /// Combined metrics.
    pub metrics: Option<SocketAddr>,
    /// Schema registry.
    pub registry: Option<SocketAddr>,
    /// Gateway.
    pub gateway: Option<SocketAddr>,
    /// Live streams.
    pub sink: Option<SocketAddr>,
    /// Live interfaces.
    pub query: Option<SocketAddr>,
}

/// Things `govbus demo` adds to a config.
#[derive(Debug, Default)]
pub struct Extras {
    /// Gateway tokens in addition to the credentials file: (department, token).
    pub gateway_tokens: Vec<(String, String)>,
    /// Live-stream tokens in addition to the credentials file.
    pub sink_tokens: Vec<(String, String)>,
    /// Subscriptions not to run (their sink has nowhere to deliver).
    pub skip_subscriptions: Vec<String>,
}

/// The running components.
pub struct System {
    /// The broker everything talks to.
    pub bootstrap: String,
    /// Topic names.
    pub topics: Topics,
    /// Where each component listens.
    pub addrs: Addrs,
    /// Metrics of everything in this process.
    pub telemetry: Telemetry,
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, tokio::task::JoinHandle<anyhow::Result<()>>)>,
    fraud: Option<(Arc<AtomicBool>, tokio::task::JoinHandle<anyhow::Result<()>>)>,
    broker: Option<EmbeddedBroker>,
    /// The sinks' and live interfaces' schema-log tails (stopped on drop).
    _schema_logs: Vec<govbus_kafka::schema_log::Tail>,
}

impl std::fmt::Debug for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("System")
            .field("bootstrap", &self.bootstrap)
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("[{what}] listen on {addr} (is something else using the port?)"))
}

/// The sockets of every component that listens, bound up front.
struct Listeners {
    metrics: tokio::net::TcpListener,
    registry: Option<tokio::net::TcpListener>,
    gateway: Option<tokio::net::TcpListener>,
    sink: Option<tokio::net::TcpListener>,
    query: Option<tokio::net::TcpListener>,
}

impl Listeners {
    async fn bind(config: &UpConfig) -> anyhow::Result<Listeners> {
        Ok(Listeners {
            metrics: bind(config.metrics.listen, "metrics").await?,
            registry: match &config.registry {
                Some(r) => Some(bind(r.listen, "registry").await?),
                None => None,
            },
            gateway: match &config.gateway {
                Some(g) => Some(bind(g.listen, "gateway").await?),
                None => None,
            },
            sink: match &config.sink {
                Some(s) => Some(bind(s.listen, "sink").await?),
                None => None,
            },
            query: match &config.query {
                Some(q) => Some(bind(q.listen, "query").await?),
                None => None,
            },
        })
    }

    fn addrs(&self) -> std::io::Result<Addrs> {
        let local =
            |l: &Option<tokio::net::TcpListener>| l.as_ref().map(|l| l.local_addr()).transpose();
        Ok(Addrs {
            metrics: Some(self.metrics.local_addr()?),
            registry: local(&self.registry)?,
            gateway: local(&self.gateway)?,
            sink: local(&self.sink)?,
            query: local(&self.query)?,
        })
    }
}

impl System {
    /// Starts every component the config names. Call inside a Tokio runtime.
    pub async fn start(
        config: &UpConfig,
        catalog: Catalog,
        extras: Extras,
    ) -> anyhow::Result<System> {
        let topics = Topics::new(config.topic_prefix.clone());
        // Every listener before anything else: a taken port fails here, before
        // the broker is touched, and nothing started below (the embedded
        // broker, clients' connections) can take a port the config names.
        let mut listeners = Listeners::bind(config).await?;
        let addrs = listeners.addrs()?;
        let broker = match &config.broker.bootstrap {
            Some(_) => None,
            None => Some(EmbeddedBroker::start(catalog_topics(&catalog, &topics))?),
        };
        let embedded = broker.is_some();
        if !embedded && config.broker.create_topics {
            crate::cmd::topics::ensure_logged(
                config.broker.bootstrap.as_deref().unwrap_or_default(),
                &govbus_kafka::provision::plan(&catalog, &topics),
            )
            .await;
        }
        let bootstrap = match (&broker, &config.broker.bootstrap) {
            (Some(b), _) => b.bootstrap().to_owned(),
            (None, Some(b)) => b.clone(),
            (None, None) => unreachable!("one of the two is set"),
        };
        let overrides: Vec<(String, String)> = config
            .broker
            .kafka
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let engine = Arc::new(Engine::new(&catalog)?);
        // Credentials files are re-read every second: a removed token stops
        // working within seconds, without a restart.
        let live_credentials = |p: &PathBuf| -> anyhow::Result<Credentials> {
            Ok(Credentials::load_and_watch(
                p,
                department_check(&catalog),
                Duration::from_secs(1),
            )?)
        };
        let (stop, stop_rx) = watch::channel(false);
        let until = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let mut tasks: Vec<(&'static str, tokio::task::JoinHandle<anyhow::Result<()>>)> =
            Vec::new();
        let mut tails: Vec<govbus_kafka::schema_log::Tail> = Vec::new();
        let mut telemetry = Telemetry {
            router: None,
            gateway: None,
            sink: None,
            fraud: None,
            query: None,
            extra: Vec::new(),
        };

        if let Some(listener) = listeners.registry.take() {
            let registry = Arc::new(govbus_registry::Registry::new(&catalog, &topics));
            let options = govbus_http::Options {
                tls: match &config.registry {
                    Some(r) => crate::cmd::gateway::tls_from_files(
                        r.tls_cert.as_deref(),
                        r.tls_key.as_deref(),
                        r.client_ca.as_deref(),
                    )?,
                    None => None,
                },
                ..govbus_http::Options::default()
            };
            let shutdown = until(stop_rx.clone());
            tasks.push((
                "registry",
                tokio::spawn(async move {
                    govbus_registry::serve_with(listener, registry, options, shutdown).await?;
                    Ok(())
                }),
            ));
        }

        if let (Some(g), Some(listener)) = (&config.gateway, listeners.gateway.take()) {
            let mut credentials = match &g.credentials {
                Some(p) => live_credentials(p)?,
                None => Credentials::default(),
            };
            for (d, t) in &extras.gateway_tokens {
                credentials = credentials.with_token(d, t);
            }
            let mut gc = GatewayConfig::new(bootstrap.clone());
            gc.topics = topics.clone();
            gc.client_overrides = overrides.clone();
            gc.tls = crate::cmd::gateway::tls_from_files(
                g.tls_cert.as_deref(),
                g.tls_key.as_deref(),
                g.client_ca.as_deref(),
            )?;
            let gateway = Arc::new(Gateway::new(engine.clone(), credentials, gc)?);
            telemetry.gateway = Some(gateway.clone());
            let shutdown = until(stop_rx.clone());
            tasks.push((
                "gateway",
                tokio::spawn(async move {
                    govbus_gateway::serve(listener, gateway, shutdown).await?;
                    Ok(())
                }),
            ));
        }

        if let Some(r) = &config.router {
            let mut rc = govbus_router::RouterConfig::new(bootstrap.clone());
            rc.group = r.group.clone();
            rc.topics = topics.clone();
            rc.mode = r.mode.into();
            rc.create_topics = !embedded;
            rc.client_overrides = overrides.clone();
            let metrics = govbus_router::Metrics::new();
            metrics.set_freshness(&catalog);
            telemetry.router = Some(metrics.clone());
            let router = govbus_router::Router::new(engine.clone(), rc, metrics);
            let shutdown = until(stop_rx.clone());
            tasks.push((
                "router",
                tokio::spawn(async move {
                    router.run(shutdown).await?;
                    Ok(())
                }),
            ));
        }

        if let (Some(s), Some(listener)) = (&config.sink, listeners.sink.take()) {
            let mut credentials = match &s.credentials {
                Some(p) => live_credentials(p)?,
                None => Credentials::default(),
            };
            for (d, t) in &extras.sink_tokens {
                credentials = credentials.with_token(d, t);
            }
            let mut sc = govbus_sink::SinkConfig::new(bootstrap.clone());
            sc.topics = topics.clone();
            sc.pseudonym_secret = crate::cmd::sink::pseudonym_secret("GOVBUS_PSEUDONYM_SECRET")?;
            sc.ledger_key = crate::cmd::sink::ledger_key()?;
            sc.postgres = s.postgres.clone();
            sc.webhook_ca = s.webhook_ca.clone();
            sc.only = if s.subscriptions.is_empty() && !extras.skip_subscriptions.is_empty() {
                catalog
                    .subscriptions()
                    .map(|x| x.id.clone())
                    .filter(|id| !extras.skip_subscriptions.contains(id))
                    .collect()
            } else {
                s.subscriptions.clone()
            };
            sc.create_topics = !embedded;
            sc.client_overrides = overrides.clone();
            // Like the router and gateway here, without the schema log.
            let (cat_rx, schema_log) = crate::cmd::sink::catalog_feed(
                config.catalog.clone(),
                catalog.clone(),
                (&bootstrap, &topics, false),
            );
            tails.extend(schema_log);
            let sinks = govbus_sink::Sinks::start(sc, cat_rx, govbus_sink::Metrics::new()).await?;
            telemetry.sink = Some(sinks.metrics().clone());
            let app = govbus_sink::sse::router(&sinks, credentials, s.heartbeat);
            let options = govbus_http::Options {
                tls: crate::cmd::gateway::tls_from_files(
                    s.tls_cert.as_deref(),
                    s.tls_key.as_deref(),
                    s.client_ca.as_deref(),
                )?,
                ..govbus_http::Options::default()
            };
            let shutdown = until(stop_rx.clone());
            let rx = stop_rx.clone();
            tasks.push((
                "sink",
                tokio::spawn(async move {
                    let server = tokio::spawn(govbus_http::serve(listener, app, options, shutdown));
                    sinks.run(rx).await;
                    server.abort();
                    Ok(())
                }),
            ));
        }

        if let (Some(q), Some(listener)) = (&config.query, listeners.query.take()) {
            let mut credentials = match &q.credentials {
                Some(p) => live_credentials(p)?,
                None => Credentials::default(),
            };
            for (d, t) in &extras.sink_tokens {
                credentials = credentials.with_token(d, t);
            }
            let mut qc = govbus_query::QueryConfig::new(bootstrap.clone(), &q.state_dir);
            qc.topics = topics.clone();
            qc.pseudonym_secret = crate::cmd::sink::pseudonym_secret("GOVBUS_PSEUDONYM_SECRET")?;
            qc.ledger_key = crate::cmd::sink::ledger_key()?;
            qc.client_overrides = overrides.clone();
            qc.create_topics = !embedded;
            // Like the router and gateway here, without the schema log.
            let (cat_rx, schema_log) = crate::cmd::sink::catalog_feed(
                config.catalog.clone(),
                catalog.clone(),
                (&bootstrap, &topics, false),
            );
            tails.extend(schema_log);
            let query =
                govbus_query::Query::start(qc, cat_rx, credentials, govbus_query::Metrics::new())
                    .await
                    .context("[query] start the live interfaces")?;
            telemetry.query = Some(query.metrics().clone());
            let app = govbus_query::api::router(&query);
            let options = govbus_http::Options {
                tls: crate::cmd::gateway::tls_from_files(
                    q.tls_cert.as_deref(),
                    q.tls_key.as_deref(),
                    q.client_ca.as_deref(),
                )?,
                ..govbus_http::Options::default()
            };
            let shutdown = until(stop_rx.clone());
            let rx = stop_rx.clone();
            tasks.push((
                "query",
                tokio::spawn(async move {
                    let server = tokio::spawn(govbus_http::serve(listener, app, options, shutdown));
                    query.supervise(rx).await;
                    server.abort();
                    Ok(())
                }),
            ));
        }

        let fraud = match &config.fraud {
            Some(f) => {
                let mut ac = govbus_fraud::AppConfig::new(
                    bootstrap.clone(),
                    topics.clone(),
                    f.state_dir.clone(),
                );
                ac.client_overrides = overrides.clone();
                let metrics = govbus_fraud::Metrics::new();
                telemetry.fraud = Some(metrics.clone());
                let flag = Arc::new(AtomicBool::new(false));
                let stop_flag = flag.clone();
                let handle = tokio::task::spawn_blocking(move || {
                    govbus_fraud::run(&ac, &metrics, &stop_flag)?;
                    Ok(())
                });
                Some((flag, handle))
            }
            None => None,
        };

        let listener = listeners.metrics;
        let shutdown = until(stop_rx.clone());
        let t = telemetry.clone();
        tasks.push((
            "metrics",
            tokio::spawn(async move {
                serve_metrics(listener, t, shutdown).await?;
                Ok(())
            }),
        ));

        Ok(System {
            bootstrap,
            topics,
            addrs,
            telemetry,
            stop,
            tasks,
            fraud,
            broker,
            _schema_logs: tails,
        })
    }

    /// Whether the embedded broker is in use.
    pub fn embedded(&self) -> bool {
        self.broker.is_some()
    }

    /// The first component that stopped by itself, with why (it should not).
    pub fn failed(&self) -> Option<&'static str> {
        self.tasks
            .iter()
            .find(|(_, t)| t.is_finished())
            .map(|(n, _)| *n)
            .or_else(|| {
                self.fraud
                    .as_ref()
                    .filter(|(_, t)| t.is_finished())
                    .map(|_| "fraud")
            })
    }

    /// Stops everything (batches in hand are finished) and reports the
    /// first component that failed.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let mut first: Option<anyhow::Error> = None;
        if let Some((flag, handle)) = self.fraud.take() {
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
            match handle.await {
                Ok(Err(e)) => first = first.or(Some(e.context("fraud"))),
                Err(e) => first = first.or(Some(anyhow::anyhow!("fraud: {e}"))),
                Ok(Ok(())) => {}
            }
        }
        for (name, task) in self.tasks.drain(..) {
            match tokio::time::timeout(Duration::from_secs(30), task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => first = first.or(Some(e.context(name))),
                Ok(Err(e)) => first = first.or(Some(anyhow::anyhow!("{name}: {e}"))),
                Err(_) => {
                    first = first.or(Some(anyhow::anyhow!("{name} did not stop within 30 s")))
                }
            }
        }
        // The broker goes last: clients still open when it stops log errors.
        let broker = self.broker.take();
        drop(self);
        drop(broker);
        first.map_or(Ok(()), Err)
    }
}

async fn serve_metrics(
    listener: tokio::net::TcpListener,
    telemetry: Telemetry,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let t = telemetry.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let t = t.clone();
                async move { ([("content-type", "text/plain; version=0.0.4")], t.render()) }
            }),
        )
        .route("/health", get(|| async { "ok\n" }))
        .route(
            "/ready",
            get(move || {
                let not_ready = telemetry.not_ready();
                async move {
                    match not_ready {
                        None => (StatusCode::OK, "ready\n"),
                        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
                    }
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Whether a department is in `catalog` (as it was at start), for
/// credentials files followed while running.
pub(crate) fn department_check(catalog: &Catalog) -> impl Fn(&str) -> bool + Send + 'static {
    let departments: std::collections::BTreeSet<String> =
        catalog.departments().map(|d| d.id.clone()).collect();
    move |d: &str| departments.contains(d)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn the_deploy_config_checks() {
        // As mounted by docker-compose.yml: the repository's layout.
        let dir = tempfile::tempdir().unwrap();
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
        std::fs::create_dir(dir.path().join("deploy")).unwrap();
        std::fs::copy(
            deploy.join("govbus.toml"),
            dir.path().join("deploy/govbus.toml"),
        )
        .unwrap();
        std::fs::copy(
            deploy.join("credentials.toml"),
            dir.path().join("deploy/credentials.toml"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            deploy.join("../schemas").canonicalize().unwrap(),
            dir.path().join("schemas"),
        )
        .unwrap();
        let c = UpConfig::load(&dir.path().join("deploy/govbus.toml")).unwrap();
        let (_, plan) = c.check().unwrap();
        for component in ["registry", "gateway", "sink", "fraud", "metrics"] {
            assert!(
                plan.iter().any(|l| l.starts_with(component)),
                "{component}: {plan:?}"
            );
        }
        assert!(
            !plan.iter().any(|l| l.starts_with("router")),
            "the router runs as its own service: {plan:?}"
        );
    }

    #[tokio::test]
    async fn a_taken_port_fails_the_start_before_the_broker_is_touched() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = UpConfig::everything();
        c.metrics.listen = taken.local_addr().unwrap();
        // No broker exists at this address: the start must fail on the port first.
        c.broker.bootstrap = Some("127.0.0.1:1".to_owned());
        let (catalog, _) = c.check().unwrap();
        let e = System::start(&c, catalog, Extras::default())
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("[metrics] listen on"), "{e:#}");
    }

    #[test]
    fn problems_are_named_with_their_section() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "a.toml",
            "[gateway]\nlisten = \"127.0.0.1:7000\"\n[sink]\nlisten = \"127.0.0.1:7000\"\nsubscriptions = [\"nope\"]\npostgres = \"host=x port=notaport\"\n",
        );
        let e = UpConfig::load(&p).unwrap().check().unwrap_err().to_string();
        for want in [
            "[sink] subscriptions: nope is not in the catalog",
            "[sink] postgres: not a connection string",
            "[gateway] and [sink] both listen on 127.0.0.1:7000",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
        let mode = write(dir.path(), "m.toml", "[router]\nmode = \"fast\"\n");
        let e = format!("{:#}", UpConfig::load(&mode).unwrap_err());
        assert!(
            e.contains("unknown variant `fast`, expected `at-least-once` or `transactional`"),
            "{e}"
        );
        let typo = write(dir.path(), "b.toml", "[routr]\ngroup = \"x\"\n");
        let e = UpConfig::load(&typo).unwrap_err().to_string();
        assert!(e.contains("unknown field `routr`"), "{e}");
    }
}
