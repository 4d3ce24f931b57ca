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
//! Idempotency keys are race-free, durable and shared by every instance
//! through the compacted topic `_govbus.idempotency` ([`idempotency`]).
//! Records without a CloudEvent id get a UUIDv7 event id.
//!
//! A department that runs a PKI may authenticate with a client certificate
//! instead (mTLS, `GatewayConfig::tls` with a client CA bundle): a verified
//! certificate whose SHA-256 is listed as a `certificate_sha256` credential
//! publishes as that department with no token.
//!
//! It is served through [`govbus_http::serve`]: connections capped, the TLS
//! handshake and headers bounded by `header_timeout`, and the body read only
//! after the department is known (the handler takes the body stream, not
//! bytes), within `body_timeout` and `max_body_bytes`. So an unauthenticated
//! client costs at most one connection's header buffer; the bodies buffered
//! at once are bounded by `max_concurrent × max_body_bytes`, and only for
//! departments holding a credential.
//!
//! Key types: [`Gateway`], [`GatewayConfig`], [`Credentials`], [`app`].

mod handler;
mod idempotency;
mod openapi;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use govbus_kafka::topics::Topics;
use govbus_validate::Engine;
use prometheus::{Encoder, IntCounterVec, Opts, Registry, TextEncoder};
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;

pub use govbus_http::{certificate_fingerprint, hash_token, Credentials, CredentialsError};

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Kafka bootstrap servers.
    pub bootstrap: String,
    /// Topic namespace.
    pub topics: Topics,
    /// Largest request body. Default 16 MiB.
    pub max_body_bytes: usize,
    /// Open connections at once; one more is closed at accept. Default 1,024.
    pub max_connections: usize,
    /// Time for a request's headers to arrive. Default 10 s.
    pub header_timeout: Duration,
    /// Time for a request's body to arrive, once its token is accepted. Default 30 s.
    pub body_timeout: Duration,
    /// Most records in one request. Default 10,000.
    pub max_records: usize,
    /// Requests processed at once; more get 429. Default 64.
    pub max_concurrent: usize,
    /// How long to wait for the broker's acknowledgement before answering 503. Default 30 s.
    pub ack_timeout: Duration,
    /// How long an idempotency key's answer is kept. Default 24 h.
    pub idempotency_ttl: Duration,
    /// Bytes of kept answers per instance (oldest forgotten first). Default 256 MiB.
    pub idempotency_max_bytes: usize,
    /// Extra librdkafka settings for the producer.
    pub client_overrides: Vec<(String, String)>,
    /// Serve HTTPS; with a client CA bundle, client certificates listed in
    /// the credentials authenticate their department. Default: plain HTTP.
    pub tls: Option<govbus_http::Tls>,
}

impl GatewayConfig {
    /// Defaults for the given brokers.
    pub fn new(bootstrap: impl Into<String>) -> GatewayConfig {
        GatewayConfig {
            bootstrap: bootstrap.into(),
            topics: Topics::default(),
            max_body_bytes: 16 << 20,
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_records: 10_000,
            max_concurrent: 64,
            ack_timeout: Duration::from_secs(30),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            idempotency_max_bytes: 256 << 20,
            client_overrides: Vec::new(),
            tls: None,
        }
    }
}

/// The gateway's shared state.
pub struct Gateway {
    /// Replaced when the schema log adds a version ([`Gateway::follow_schema_log`]).
    engine: govbus_validate::SharedEngine,
    credentials: Credentials,
    producer: FutureProducer,
    config: GatewayConfig,
    permits: Arc<tokio::sync::Semaphore>,
    idempotency: Arc<idempotency::Store>,
    /// Set once `_govbus.idempotency` has been read to its end.
    idempotency_loaded: AtomicBool,
    /// Ingest topics seen in the broker's metadata.
    known_topics: std::sync::Mutex<std::collections::HashSet<String>>,
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
    idempotency_unsaved: prometheus::IntCounter,
    connections_refused: prometheus::IntCounter,
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
        let idempotency_unsaved = prometheus::IntCounter::new(
            "govbus_gateway_idempotency_unsaved_total",
            "Idempotency answers the broker did not acknowledge (a retry through another instance or after a restart would publish again).",
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        let _ = registry.register(Box::new(requests.clone()));
        let _ = registry.register(Box::new(records.clone()));
        let connections_refused = prometheus::IntCounter::new(
            "govbus_gateway_connections_refused_total",
            "Connections closed at accept because max_connections were open.",
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        let _ = registry.register(Box::new(idempotency_unsaved.clone()));
        let _ = registry.register(Box::new(connections_refused.clone()));
        GatewayMetrics {
            registry,
            requests,
            records,
            idempotency_unsaved,
            connections_refused,
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
            engine: govbus_validate::SharedEngine::new(engine),
            credentials,
            producer,
            permits: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent)),
            idempotency: idempotency::Store::new(
                config.idempotency_ttl,
                config.idempotency_max_bytes,
            ),
            idempotency_loaded: AtomicBool::new(false),
            known_topics: Default::default(),
            config,
            metrics: GatewayMetrics::new(),
        })
    }

    pub(crate) fn engine(&self) -> Arc<Engine> {
        self.engine.current()
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
        govbus_kafka::schema_log::follow(&self.config.bootstrap, &self.config.topics, catalog, {
            let engine = self.engine.clone();
            move |c| engine.recompile(c)
        })
    }

    /// Whether `topic` exists on the broker: `Some(false)` only when the
    /// broker says it does not (a publish to it would wait and then fail as
    /// "not acknowledged"); `None` when the broker did not answer.
    pub(crate) async fn topic_exists(&self, topic: &str) -> Option<bool> {
        use rdkafka::producer::Producer;
        if self.known_topics.lock().is_ok_and(|k| k.contains(topic)) {
            return Some(true);
        }
        let (producer, t) = (self.producer.clone(), topic.to_owned());
        let answer = tokio::task::spawn_blocking(move || {
            let m = producer
                .client()
                .fetch_metadata(Some(&t), Duration::from_secs(3))
                .ok()?;
            let found = m.topics().iter().find(|x| x.name() == t)?;
            Some(match found.error() {
                None => true,
                Some(e) => !matches!(
                    e,
                    rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART
                ),
            })
        })
        .await
        .ok()
        .flatten();
        if answer == Some(true) {
            if let Ok(mut k) = self.known_topics.lock() {
                k.insert(topic.to_owned());
            }
        }
        answer
    }

    /// Waits (at most 15 s) until the kept idempotency answers have been
    /// read from the broker; false if they have not.
    pub(crate) async fn idempotency_loaded(&self) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !self.idempotency_loaded.load(Ordering::Acquire) {
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Writes a kept answer to `_govbus.idempotency` and waits for the
    /// broker's acknowledgement, so that a retry after a restart or through
    /// another instance is answered from it. A failure is logged: the records
    /// are published either way, only a later retry could publish them again.
    pub(crate) async fn persist_answer(
        &self,
        key: idempotency::KeyHash,
        answer: &idempotency::Answer,
    ) {
        let topic = self.config.topics.idempotency();
        let (Ok(value), id) = (serde_json::to_vec(answer), idempotency::hex(&key)) else {
            return;
        };
        let rec = rdkafka::producer::FutureRecord::to(&topic)
            .key(id.as_bytes())
            .payload(&value);
        let ok = match self.producer.send_result(rec) {
            Ok(f) => matches!(f.await, Ok(Ok(_))),
            Err(_) => false,
        };
        if !ok {
            self.metrics.idempotency_unsaved.inc();
            tracing::warn!(message = "Idempotency answer not saved; a retry of this request through another instance or after a restart would publish again.", %topic);
        }
    }

    /// Reads `_govbus.idempotency` from the beginning into the store, marks
    /// the gateway loaded when it reached the end it had at the start (or the
    /// topic is empty or missing), then follows it until `stop`.
    fn follow_idempotency(self: Arc<Self>, stop: Arc<AtomicBool>) {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::Message;
        let topic = self.config.topics.idempotency();
        let loaded = |g: &Gateway| g.idempotency_loaded.store(true, Ordering::Release);
        let consumer: BaseConsumer = match govbus_kafka::config::fetching(&self.config.bootstrap)
            .set("group.id", "govbus-gateway-idempotency")
            .set("enable.auto.commit", "false")
            .create()
        {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(message = "Cannot read idempotency keys; keys are kept by this instance only.", %error);
                loaded(&self);
                return;
            }
        };
        let parts = govbus_kafka::read::partitions(&consumer, &topic, Duration::from_secs(10));
        let mut tpl = rdkafka::TopicPartitionList::new();
        let mut ends = std::collections::HashMap::new();
        for p in &parts {
            let _ = tpl.add_partition_offset(&topic, *p, rdkafka::Offset::Beginning);
            if let Ok((low, high)) = consumer.fetch_watermarks(&topic, *p, Duration::from_secs(10))
            {
                if high > low {
                    ends.insert(*p, high);
                }
            }
        }
        if parts.is_empty() || consumer.assign(&tpl).is_err() {
            tracing::warn!(message = "Idempotency topic not found; keys are kept by this instance only.", %topic);
            loaded(&self);
            return;
        }
        if ends.is_empty() {
            loaded(&self);
        }
        let started = std::time::Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let Some(m) = consumer.poll(Duration::from_millis(200)) else {
                // Tansu reports a partition's end as its last batch's first
                // offset + 1; a quiet topic after the start is read to its end.
                if !ends.is_empty() && started.elapsed() > Duration::from_secs(10) {
                    ends.clear();
                    loaded(&self);
                }
                continue;
            };
            let Ok(m) = m else { continue };
            if let (Some(k), Some(v)) = (m.key().and_then(idempotency::unhex), m.payload()) {
                if let Ok(a) = serde_json::from_slice::<idempotency::Answer>(v) {
                    self.idempotency.keep(k, a);
                }
            }
            if ends
                .get(&m.partition())
                .is_some_and(|end| m.offset() + 1 >= *end - 1)
            {
                ends.remove(&m.partition());
                if ends.is_empty() {
                    loaded(&self);
                }
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
    // The topic of kept answers: created here too, so a gateway started
    // with --no-create-topics on a provisioned cluster still finds it.
    let spec = govbus_kafka::provision::idempotency(&gateway.config.topics);
    if let Err(error) = govbus_kafka::provision::ensure(
        &gateway.config.bootstrap,
        &[spec],
        1,
        Duration::from_secs(10),
    )
    .await
    {
        tracing::warn!(message = "Cannot create the idempotency topic.", %error);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let follower = {
        let (g, stop) = (gateway.clone(), stop.clone());
        std::thread::Builder::new()
            .name("gateway-idempotency".into())
            .spawn(move || g.follow_idempotency(stop))?
    };
    let refused = gateway.metrics.connections_refused.clone();
    let options = govbus_http::Options {
        max_connections: gateway.config.max_connections.max(1),
        header_timeout: gateway.config.header_timeout,
        drain: gateway.config.ack_timeout + Duration::from_secs(5),
        tls: gateway.config.tls.clone(),
        on_refused: Some(Arc::new(move || refused.inc())),
    };
    let served = govbus_http::serve(listener, app(gateway), options, shutdown).await;
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || follower.join()).await;
    served
}
