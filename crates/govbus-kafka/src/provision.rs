//! Every topic the catalog implies, with its partitions and settings, and
//! one idempotent step that creates the missing ones. Run by `govbus up`,
//! the router and the gateway at start (unless `--no-create-topics`) and
//! alone as `govbus topics ensure [--dry-run]`, for clusters whose
//! operators provision topics themselves.
//!
//! | topic | partitions | settings | why |
//! |---|---|---|---|
//! | `ingest.<dept>` | 3 | delete, 7 days | raw input; replayable for a week |
//! | `dlq.<dept>` | 1 | delete, 30 days | rejected input, kept for the department to fix |
//! | `data.<dataset>` | 3 | compact | the canonical stream: the newest value of every key stays (deletes are tombstones) |
//! | `view.<subscription>` | 3 | delete, 7 days | Kafka view sinks (only for `type = "kafka"` grants) |
//! | `dlq.sub.<subscription>` | 1 | delete, 30 days | deliveries that exhausted their retries |
//! | `_govbus.audit` | 1 | delete, unlimited | the delivery ledger is never deleted by the broker |
//! | `_govbus.schemas` | 1 | compact | the schema log (key = dataset) |
//! | `_govbus.idempotency` | 1 | compact, 7 days | the gateway's kept answers (honoured for its TTL, 24 h by default) |
//!
//! Replication is 1 unless `replication` says otherwise (the production
//! compose file runs one broker; a real cluster passes 3).

use std::time::Duration;

use govbus_catalog::Catalog;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use crate::topics::Topics;

const DAY_MS: u64 = 24 * 3600 * 1000;

/// One topic to provision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Full name, with the namespace prefix.
    pub name: String,
    /// Partitions.
    pub partitions: i32,
    /// Topic-level settings (`cleanup.policy`, `retention.ms`).
    pub settings: Vec<(&'static str, String)>,
}

impl TopicSpec {
    fn new(name: String, partitions: i32, settings: &[(&'static str, String)]) -> TopicSpec {
        TopicSpec {
            name,
            partitions,
            settings: settings.to_vec(),
        }
    }

    /// `cleanup.policy=compact,retention.ms=…` as one line, for `--dry-run`.
    pub fn describe(&self) -> String {
        let s: Vec<String> = self
            .settings
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "{} partitions={} {}",
            self.name,
            self.partitions,
            s.join(",")
        )
    }
}

fn delete_after(days: u64) -> Vec<(&'static str, String)> {
    vec![
        ("cleanup.policy", "delete".into()),
        ("retention.ms", (days * DAY_MS).to_string()),
    ]
}

/// Every topic the catalog implies, in a stable order.
pub fn plan(catalog: &Catalog, topics: &Topics) -> Vec<TopicSpec> {
    let compact = vec![("cleanup.policy", "compact".to_owned())];
    let mut out = Vec::new();
    for d in catalog.departments() {
        out.push(TopicSpec::new(topics.ingest(&d.id), 3, &delete_after(7)));
        out.push(TopicSpec::new(topics.dlq(&d.id), 1, &delete_after(30)));
    }
    for ds in catalog.datasets() {
        out.push(TopicSpec::new(topics.data(&ds.name), 3, &compact));
    }
    for s in catalog.subscriptions() {
        if matches!(s.sink, govbus_catalog::SinkSpec::KafkaView) {
            out.push(TopicSpec::new(topics.view(&s.id), 3, &delete_after(7)));
        }
        out.push(TopicSpec::new(
            topics.subscription_dlq(&s.id),
            1,
            &delete_after(30),
        ));
    }
    out.push(TopicSpec::new(
        topics.audit(),
        1,
        &[
            ("cleanup.policy", "delete".into()),
            ("retention.ms", "-1".into()),
        ],
    ));
    out.push(TopicSpec::new(
        crate::schema_log::topic(topics),
        1,
        &compact,
    ));
    out.push(idempotency(topics));
    out
}

/// `_govbus.idempotency`: compacted, and kept 7 days (the gateway's answers;
/// its `idempotency_ttl`, default 24 h, decides which it honours, up to this).
pub fn idempotency(topics: &Topics) -> TopicSpec {
    TopicSpec::new(
        topics.idempotency(),
        1,
        &[
            ("cleanup.policy", "compact,delete".into()),
            ("retention.ms", (7 * DAY_MS).to_string()),
        ],
    )
}

/// What [`ensure`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Created now.
    pub created: Vec<String>,
    /// There already.
    pub existing: Vec<String>,
    /// Could not be created, with the broker's reason.
    pub failed: Vec<(String, String)>,
}

/// Why provisioning could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The admin client could not be made.
    #[error("cannot create a Kafka admin client for {bootstrap}: {source}")]
    Client {
        /// Bootstrap servers.
        bootstrap: String,
        /// The client's error.
        source: rdkafka::error::KafkaError,
    },
    /// The broker did not answer CreateTopics in time.
    #[error(
        "the broker at {bootstrap} did not answer within {timeout:?}: is it running and reachable?"
    )]
    Timeout {
        /// Bootstrap servers.
        bootstrap: String,
        /// The bound.
        timeout: Duration,
    },
    /// The broker refused the request as a whole.
    #[error("the broker at {bootstrap} refused to create topics: {source}")]
    Refused {
        /// Bootstrap servers.
        bootstrap: String,
        /// The broker's error.
        source: rdkafka::error::KafkaError,
    },
}

/// Creates every topic of `specs` that does not exist, with its settings;
/// existing topics are left as they are. Bounded by `timeout`.
pub async fn ensure(
    bootstrap: &str,
    specs: &[TopicSpec],
    replication: i32,
    timeout: Duration,
) -> Result<Outcome, ProvisionError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(|source| ProvisionError::Client {
            bootstrap: bootstrap.to_owned(),
            source,
        })?;
    let new: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|s| {
            s.settings.iter().fold(
                NewTopic::new(&s.name, s.partitions, TopicReplication::Fixed(replication)),
                |n, (k, v)| n.set(k, v),
            )
        })
        .collect();
    let opts = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    let results = tokio::time::timeout(
        timeout + Duration::from_secs(2),
        admin.create_topics(&new, &opts),
    )
    .await
    .map_err(|_| ProvisionError::Timeout {
        bootstrap: bootstrap.to_owned(),
        timeout,
    })?
    .map_err(|source| ProvisionError::Refused {
        bootstrap: bootstrap.to_owned(),
        source,
    })?;
    let mut out = Outcome::default();
    for r in results {
        match r {
            Ok(t) => out.created.push(t),
            Err((t, RDKafkaErrorCode::TopicAlreadyExists)) => out.existing.push(t),
            Err((t, e)) => out.failed.push((t, e.to_string())),
        }
    }
    for t in &out.created {
        tracing::info!(message = "Created topic.", topic = %t);
    }
    for (t, error) in &out.failed {
        tracing::warn!(message = "Could not create topic.", topic = %t, %error);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_covers_every_topic_the_catalog_implies() {
        let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas"));
        let catalog = Catalog::load(root).unwrap_or_else(|e| panic!("{e}"));
        let topics = Topics::new("x.");
        let plan = plan(&catalog, &topics);
        let names: Vec<&str> = plan.iter().map(|s| s.name.as_str()).collect();
        for d in catalog.departments() {
            assert!(names.contains(&topics.ingest(&d.id).as_str()));
            assert!(names.contains(&topics.dlq(&d.id).as_str()));
        }
        for ds in catalog.datasets() {
            assert!(names.contains(&topics.data(&ds.name).as_str()));
        }
        for s in catalog.subscriptions() {
            assert!(names.contains(&topics.subscription_dlq(&s.id).as_str()));
        }
        for t in [
            "x._govbus.audit",
            "x._govbus.schemas",
            "x._govbus.idempotency",
        ] {
            assert!(names.contains(&t), "{t}");
        }
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "no topic twice");
    }
}
