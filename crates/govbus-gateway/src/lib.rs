//! The govbus HTTP ingest gateway: `POST /v1/datasets/{dataset}/records`.
//!
//! A department authenticates with its bearer token (stored as a SHA-256
//! hash, [`Credentials`]), may publish only the datasets it owns, and gets a
//! per-record answer (index, reason, field) at once: the records are validated
//! with the same engine as the router. Accepted records are written to
//! `ingest.<dept>` as canonical Avro with CloudEvents headers by an idempotent
//! producer, and the response is sent only after the broker acknowledged them.
//! An `Idempotency-Key` makes a retried request safe; body size, records per
//! request and concurrent requests are bounded (413, 429 with `Retry-After`);
//! a broker that does not acknowledge in time is a 503 with `Retry-After`.
//!
//! Key types: [`Gateway`], [`GatewayConfig`], [`Credentials`], [`app`].
//! Not here (yet): mTLS client certificates; idempotency keys shared across
//! instances (the cache is per instance).

mod credentials;
mod handler;
mod openapi;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::{get, post};
use govbus_kafka::topics::Topics;
use govbus_validate::Engine;
use prometheus::{Encoder, IntCounterVec, Opts, Registry, TextEncoder};
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;

pub use credentials::{hash_token, Credentials, CredentialsError};

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Kafka bootstrap servers.
    pub bootstrap: String,
    /// Topic namespace.
    pub topics: Topics,
    /// Largest request body. Default 16 MiB.
    pub max_body_bytes: usize,
    /// Most records in one request. Default 10,000.
    pub max_records: usize,
    /// Requests processed at once; more get 429. Default 64.
    pub max_concurrent: usize,
    /// How long to wait for the broker's acknowledgement before answering 503. Default 30 s.
    pub ack_timeout: Duration,
    /// Idempotency keys remembered (per instance, oldest forgotten first). Default 10,000.
    pub idempotency_capacity: usize,
    /// Extra librdkafka settings for the producer.
    pub client_overrides: Vec<(String, String)>,
}

impl GatewayConfig {
    /// Defaults for the given brokers.
    pub fn new(bootstrap: impl Into<String>) -> GatewayConfig {
        GatewayConfig {
            bootstrap: bootstrap.into(),
            topics: Topics::default(),
            max_body_bytes: 16 << 20,
            max_records: 10_000,
            max_concurrent: 64,
            ack_timeout: Duration::from_secs(30),
            idempotency_capacity: 10_000,
            client_overrides: Vec::new(),
        }
    }
}

/// A remembered response for an idempotency key.
#[derive(Debug, Clone)]
pub(crate) struct Remembered {
    status: u16,
    body: String,
    /// SHA-256 of what was asked (dataset, content type, body): a key reused
    /// for a different request is refused instead of answered from the cache.
    request: [u8; 32],
}

/// Idempotency keys per (department, key), and their insertion order for eviction.
type IdempotencyCache = (
    HashMap<(String, String), Remembered>,
    VecDeque<(String, String)>,
);

/// The gateway's shared state.
pub struct Gateway {
    /// Replaced when the schema log adds a version ([`Gateway::follow_schema_log`]).
    engine: govbus_kafka::schema_log::EngineSlot,
    credentials: Credentials,
    producer: FutureProducer,
    config: GatewayConfig,
    permits: tokio::sync::Semaphore,
    idempotency: Mutex<IdempotencyCache>,
    metrics: GatewayMetrics,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct GatewayMetrics {
    registry: Registry,
    requests: IntCounterVec,
    records: IntCounterVec,
}

impl GatewayMetrics {
    fn new() -> GatewayMetrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "govbus_gateway_requests_total",
                "Publish requests, by department and HTTP status.",
            ),
            &["department", "status"],
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        let records = IntCounterVec::new(
            Opts::new(
                "govbus_gateway_records_total",
                "Records received, by department, dataset and outcome (accepted or a reason code).",
            ),
            &["department", "dataset", "outcome"],
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        let _ = registry.register(Box::new(requests.clone()));
        let _ = registry.register(Box::new(records.clone()));
        GatewayMetrics {
            registry,
            requests,
            records,
        }
    }

    fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Gateway {
    /// Creates the gateway and its producer.
    pub fn new(
        engine: Arc<Engine>,
        credentials: Credentials,
        config: GatewayConfig,
    ) -> Result<Gateway, rdkafka::error::KafkaError> {
        let mut c: ClientConfig = govbus_kafka::config::producer(&config.bootstrap);
        c.set(
            "message.timeout.ms",
            config.ack_timeout.as_millis().to_string(),
        );
        for (k, v) in &config.client_overrides {
            c.set(k, v);
        }
        let producer = c.create()?;
        Ok(Gateway {
            engine: Arc::new(std::sync::RwLock::new(engine)),
            credentials,
            producer,
            permits: tokio::sync::Semaphore::new(config.max_concurrent),
            config,
            idempotency: Mutex::new((HashMap::new(), VecDeque::new())),
            metrics: GatewayMetrics::new(),
        })
    }

    pub(crate) fn engine(&self) -> Arc<Engine> {
        self.engine
            .read()
            .map(|e| e.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// The gateway's metrics, in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        self.metrics.render()
    }

    /// Follows the schema log, so that JSON is encoded under versions
    /// registered at run time too (each checked against `catalog` like a
    /// catalog file). Keep the returned tail alive.
    pub fn follow_schema_log(
        &self,
        catalog: govbus_catalog::Catalog,
    ) -> Option<govbus_kafka::schema_log::Tail> {
        govbus_kafka::schema_log::follow(
            &self.config.bootstrap,
            &self.config.topics,
            catalog,
            self.engine.clone(),
        )
    }

    pub(crate) fn remembered(&self, department: &str, key: &str) -> Option<Remembered> {
        let guard = self.idempotency.lock().ok()?;
        guard
            .0
            .get(&(department.to_owned(), key.to_owned()))
            .cloned()
    }

    pub(crate) fn remember(
        &self,
        department: &str,
        key: &str,
        request: [u8; 32],
        status: u16,
        body: &str,
    ) {
        let Ok(mut guard) = self.idempotency.lock() else {
            return;
        };
        let k = (department.to_owned(), key.to_owned());
        if guard
            .0
            .insert(
                k.clone(),
                Remembered {
                    status,
                    body: body.to_owned(),
                    request,
                },
            )
            .is_none()
        {
            guard.1.push_back(k);
        }
        while guard.1.len() > self.config.idempotency_capacity {
            if let Some(old) = guard.1.pop_front() {
                guard.0.remove(&old);
            }
        }
    }
}

/// The HTTP application: the publish endpoint, `/openapi.json`, `/health`,
/// `/ready` and `/metrics`.
pub fn app(gateway: Arc<Gateway>) -> axum::Router {
    let limit = gateway.config.max_body_bytes;
    axum::Router::new()
        .route("/v1/datasets/{dataset}/records", post(handler::publish))
        .route(
            "/openapi.json",
            get(
                |axum::extract::State(g): axum::extract::State<Arc<Gateway>>| async move {
                    let engine = g.engine();
                    let names: Vec<&str> = engine.datasets().map(|d| d.name()).collect();
                    (
                        [("content-type", "application/json")],
                        openapi::document(&names),
                    )
                },
            ),
        )
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(handler::ready))
        .route(
            "/metrics",
            get(
                |axum::extract::State(g): axum::extract::State<Arc<Gateway>>| async move {
                    g.metrics.render()
                },
            ),
        )
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(gateway)
}

/// Serves the gateway on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(gateway))
        .with_graceful_shutdown(shutdown)
        .await
}
