//! Router settings.

use std::time::Duration;

/// Delivery guarantee of the ingest → data/dlq step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Offsets are stored only after every record of the batch is
    /// acknowledged; a crash replays the unacknowledged tail (duplicates with
    /// the same `ce_id`, never a loss). The base guarantee.
    #[default]
    AtLeastOnce,
    /// Kafka read-process-write: the batch's records and its input offsets
    /// commit in one transaction. Needs a broker with EndTxn (Apache Kafka);
    /// Tansu 0.6.0 has none (ARCHITECTURE.md).
    Transactional,
}

/// How the router runs. Build with [`RouterConfig::new`], then adjust.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// `host:port` of the brokers.
    pub bootstrap: String,
    /// Topic namespace (`ingest.*`, `data.*`, `dlq.*` under a prefix). Default none.
    pub topics: govbus_kafka::topics::Topics,
    /// Consumer group shared by every router instance. Default `govbus-router`.
    pub group: String,
    /// Delivery guarantee. Default at-least-once.
    pub mode: Mode,
    /// This instance's name, for the transactional id and logs. Default: host-pid.
    pub instance: String,
    /// Most records routed as one batch. Default 2,000.
    pub max_batch: usize,
    /// How long to wait for a batch to fill once its first record arrived. Default 5 ms.
    pub linger: Duration,
    /// Partitions for `data.*` and `dlq.*` topics the router creates. Default 3.
    pub partitions: i32,
    /// Whether to create missing output topics (CreateTopics). Turn off where
    /// operators provision topics or the broker auto-creates them. Default on.
    pub create_topics: bool,
    /// Timeout of a transaction commit or abort; after it the producer is recreated. Default 30 s.
    pub transaction_timeout: Duration,
    /// Extra librdkafka settings for both clients (e.g. `session.timeout.ms`).
    pub client_overrides: Vec<(String, String)>,
}

impl RouterConfig {
    /// Defaults for the given brokers.
    pub fn new(bootstrap: impl Into<String>) -> RouterConfig {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "router".to_owned());
        RouterConfig {
            bootstrap: bootstrap.into(),
            topics: govbus_kafka::topics::Topics::default(),
            group: "govbus-router".to_owned(),
            mode: Mode::AtLeastOnce,
            instance: format!("{host}-{}", std::process::id()),
            max_batch: 2_000,
            linger: Duration::from_millis(5),
            partitions: 3,
            create_topics: true,
            transaction_timeout: Duration::from_secs(30),
            client_overrides: Vec::new(),
        }
    }
}
