//! Live interfaces (数据调用接口): look a record up, or verify (核验) values
//! against it, at the moment a department acts — instead of copying the
//! whole dataset to answer one question.
//!
//! - [`builder`]: per dataset with a live-interface grant, the current state
//!   (last write wins by source version) built from `data.<dataset>` into
//!   the on-disk store of [`govbus_state`], offsets committed with it.
//! - [`api`]: the HTTP API under `/v1/query/<subscription>/`: lookups by key
//!   or by a declared lookup field, batch lookups, verification, and
//!   wait-for-version — every answer through the grant's policy (the same
//!   [`govbus_sink::policy::Policy`] the sinks apply), every call in the
//!   delivery ledger before it is answered.
//! - [`metrics`]: calls, results, latency, state size and freshness.

pub mod api;
pub mod builder;
pub mod metrics;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};

use govbus_catalog::{Catalog, PiiTag, SinkSpec};
use govbus_http::Credentials;
use govbus_kafka::topics::Topics;
use govbus_state::Store;
use serde_json::Value as Json;
use tokio::sync::watch;

pub use metrics::Metrics;

/// How `govbus query` runs.
#[derive(Debug, Clone)]
pub struct QueryConfig {
    /// Kafka bootstrap servers.
    pub bootstrap: String,
    /// Topic names.
    pub topics: Topics,
    /// The state store file.
    pub state_path: PathBuf,
    /// The store's page cache, bytes.
    pub cache_bytes: usize,
    /// The secret pseudonyms are keyed with (as the sinks have it).
    pub pseudonym_secret: Vec<u8>,
    /// The ledger key.
    pub ledger_key: Vec<u8>,
    /// Longest wait-for-version a caller may ask for.
    pub max_wait: std::time::Duration,
    /// Most records per state transaction.
    pub max_batch: usize,
    /// Extra librdkafka settings.
    pub client_overrides: Vec<(String, String)>,
    /// Create `_govbus.audit` when it is missing (off when topics are
    /// provisioned, or the broker has no CreateTopics).
    pub create_topics: bool,
}

impl QueryConfig {
    /// Defaults for `bootstrap`, with the state in `state_dir`.
    pub fn new(bootstrap: impl Into<String>, state_dir: &std::path::Path) -> QueryConfig {
        QueryConfig {
            bootstrap: bootstrap.into(),
            topics: Topics::default(),
            state_path: state_dir.join("query-state.redb"),
            cache_bytes: govbus_state::DEFAULT_CACHE_BYTES,
            pseudonym_secret: Vec::new(),
            ledger_key: govbus_sink::ledger::DEV_LEDGER_KEY.to_vec(),
            max_wait: std::time::Duration::from_secs(10),
            max_batch: 5000,
            client_overrides: Vec::new(),
            create_topics: true,
        }
    }
}

/// Why the live interfaces could not start.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The state store.
    #[error(transparent)]
    State(#[from] govbus_state::StateError),
    /// The delivery ledger.
    #[error(transparent)]
    Ledger(#[from] govbus_sink::ledger::LedgerError),
}

/// The running live interfaces: state builders and what the API needs.
#[derive(Debug, Clone)]
pub struct Query {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: QueryConfig,
    pub(crate) store: Store,
    pub(crate) catalog: watch::Receiver<Arc<Catalog>>,
    pub(crate) credentials: Credentials,
    pub(crate) metrics: Metrics,
    pub(crate) datasets: RwLock<HashMap<String, Arc<builder::DatasetState>>>,
    pub(crate) audit: api::Audit,
    pub(crate) limits: api::Limits,
    pub(crate) prepared: api::Prepared,
    stop: Arc<AtomicBool>,
}

impl Query {
    /// Opens the store (rebuilding a damaged one), opens a ledger chain,
    /// and starts a state builder for every dataset with a live-interface
    /// grant; later grants start theirs within seconds ([`Query::supervise`]).
    pub async fn start(
        config: QueryConfig,
        catalog: watch::Receiver<Arc<Catalog>>,
        credentials: Credentials,
        metrics: Metrics,
    ) -> Result<Query, QueryError> {
        let path = config.state_path.clone();
        let cache = config.cache_bytes;
        let (store, rebuilt) =
            tokio::task::spawn_blocking(move || Store::open_or_rebuild(&path, cache))
                .await
                .map_err(|e| govbus_state::StateError::Storage(e.to_string()))??;
        if let Some(why) = rebuilt {
            tracing::warn!(message = "The state store could not be opened; rebuilding it from the topics.", reason = %why);
        }
        if config.create_topics {
            govbus_kafka::admin::ensure_topics(&config.bootstrap, &[(config.topics.audit(), 1)])
                .await;
        }
        let ledger = govbus_sink::ledger::Ledger::open(
            &config.bootstrap,
            &config.topics.audit(),
            &config.ledger_key,
        )
        .await?;
        tracing::info!(message = "Query ledger ready; its chain opens with the first entry.", writer = %ledger.writer());
        let query = Query {
            inner: Arc::new(Inner {
                audit: api::Audit::start(ledger, metrics.clone()),
                limits: api::Limits::default(),
                prepared: api::Prepared::default(),
                config,
                store,
                catalog,
                credentials,
                metrics,
                datasets: RwLock::new(HashMap::new()),
                stop: Arc::new(AtomicBool::new(false)),
            }),
        };
        query.start_builders();
        Ok(query)
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The state of `dataset`, if it is being built.
    pub fn dataset(&self, dataset: &str) -> Option<Arc<builder::DatasetState>> {
        self.inner
            .datasets
            .read()
            .ok()
            .and_then(|d| d.get(dataset).cloned())
    }

    /// Whether every dataset's state has caught up with its topic once.
    pub fn ready(&self) -> bool {
        self.inner
            .datasets
            .read()
            .map(|d| {
                d.values().all(|s| {
                    let f = s.freshness();
                    f.caught_up && !f.failing
                })
            })
            .unwrap_or(false)
    }

    fn start_builders(&self) {
        let catalog = self.inner.catalog.borrow().clone();
        let wanted: Vec<String> = catalog
            .subscriptions()
            .filter(|s| matches!(s.sink, SinkSpec::Api { .. }))
            .map(|s| s.dataset.clone())
            .collect();
        let Ok(mut running) = self.inner.datasets.write() else {
            return;
        };
        for ds in wanted {
            if running.contains_key(&ds) {
                continue;
            }
            let config = builder::BuilderConfig {
                bootstrap: self.inner.config.bootstrap.clone(),
                topic: self.inner.config.topics.data(&ds),
                dataset: ds.clone(),
                max_batch: self.inner.config.max_batch.max(1),
                client_overrides: self.inner.config.client_overrides.clone(),
            };
            let state = builder::spawn(
                config,
                self.inner.store.clone(),
                self.inner.catalog.clone(),
                self.inner.metrics.clone(),
                self.inner.stop.clone(),
            );
            running.insert(ds, state);
        }
        let now = builder::now_ms();
        for s in catalog.subscriptions() {
            if matches!(s.sink, SinkSpec::Api { .. }) {
                self.inner.metrics.active(&s.id, s.is_active(now));
            }
        }
    }

    /// Starts builders for datasets that gained a live-interface grant and
    /// refreshes the grants' metrics, every second, until `shutdown`.
    pub async fn supervise(&self, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => {}
                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
            if *shutdown.borrow() {
                break;
            }
            self.start_builders();
        }
        self.stop().await;
    }

    /// Stops the builders (each finishes its transaction in hand) and closes
    /// the ledger chain: calls from now on are refused, those in an entry
    /// already are acknowledged first, then the `close` entry is written.
    /// Waits up to 15 s for the close entry's acknowledgement.
    pub async fn stop(&self) {
        self.inner
            .stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if self
            .inner
            .audit
            .close(std::time::Duration::from_secs(15))
            .await
        {
            tracing::info!(message = "Query ledger chain closed.");
        } else {
            tracing::warn!(message = "The query ledger chain's close entry was not acknowledged within 15 s; `govbus audit verify` will show this writer's chain without its close.");
        }
    }
}

/// The text a lookup field's value is indexed and looked up under: strings
/// as written (an ID number's final `x` upper-cased, as the edge writes
/// it), numbers in their JSON form. `None` for null and non-scalars.
pub fn index_text(tag: Option<PiiTag>, v: &Json) -> Option<String> {
    match v {
        Json::String(s) if tag == Some(PiiTag::IdNumber) => Some(s.to_uppercase()),
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
