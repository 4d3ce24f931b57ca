//! Creating topics that must exist before an idempotent producer with
//! `message.timeout.ms=0` writes to them (it would wait for a missing topic
//! forever).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

/// Creates each `(name, partitions)` that does not exist yet. Brokers
/// without CreateTopics (librdkafka's mock cluster) and topics that exist are
/// fine; the call gives up after about 12 seconds and says so in the log.
/// Needs a Tokio runtime with timers.
pub async fn ensure_topics(bootstrap: &str, topics: &[(String, i32)]) {
    let Ok(admin) = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create::<AdminClient<DefaultClientContext>>()
    else {
        return;
    };
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    match tokio::time::timeout(Duration::from_secs(12), admin.create_topics(&new, &opts))
        .await
        .ok()
    {
        Some(Ok(results)) => {
            for r in results {
                match r {
                    Ok(t) => tracing::info!(message = "Created topic.", topic = %t),
                    Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((t, e)) => {
                        tracing::warn!(message = "Could not create topic.", topic = %t, error = %e)
                    }
                }
            }
        }
        Some(Err(error)) => tracing::debug!(message = "Topic creation not available.", %error),
        None => {
            tracing::debug!(message = "Topic creation timed out (the broker may not support it).")
        }
    }
}
