//! The Kafka-view sink: the masked, filtered stream in `view.<subscription>`
//! for apps that consume Kafka directly. Values are the delivered record as
//! JSON (a tombstone for a delete), keys the treated record key, headers the
//! CloudEvents binary binding. Scope the app's credentials to this one topic
//! with the broker's ACLs (deploy/ shows Apache Kafka's).

use std::time::Duration;

use govbus_kafka::headers as h;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::event::Delivery;

/// Writes one batch and waits for every acknowledgement; a write that fails
/// is retried until it succeeds (the offsets do not move before).
pub async fn write(
    producer: &FutureProducer,
    topic: &str,
    policy_version: &str,
    events: &[Delivery],
) {
    let bodies: Vec<(Option<Vec<u8>>, String)> = events
        .iter()
        .map(|e| {
            (
                e.data.as_ref().and_then(|d| serde_json::to_vec(d).ok()),
                e.source_version.to_string(),
            )
        })
        .collect();
    let mut pending: Vec<usize> = (0..events.len()).collect();
    while !pending.is_empty() {
        let sends = pending.iter().map(|&i| {
            let e = &events[i];
            let (body, version) = &bodies[i];
            let headers = h::owned([
                (h::CE_SPECVERSION, b"1.0".as_slice()),
                (h::CE_ID, e.id.as_bytes()),
                (h::CE_SOURCE, e.source.as_bytes()),
                (h::CE_TYPE, e.dataset.as_bytes()),
                (h::CE_SUBJECT, e.subject.as_bytes()),
                (h::CE_TIME, e.time.as_bytes()),
                (h::CE_OP, e.op.as_bytes()),
                (h::CE_SOURCEVERSION, version.as_bytes()),
                ("ce_policyversion", policy_version.as_bytes()),
                (h::CONTENT_TYPE, b"application/json".as_slice()),
            ]);
            let mut record = FutureRecord::to(topic)
                .key(e.subject.as_bytes())
                .headers(headers);
            if let Some(b) = body {
                record = record.payload(b.as_slice());
            }
            producer.send(record, Duration::from_secs(30))
        });
        let results = futures_util::future::join_all(sends).await;
        let failed: Vec<usize> = pending
            .iter()
            .zip(results)
            .filter_map(|(&i, r)| match r {
                Ok(_) => None,
                Err((error, _)) => {
                    tracing::warn!(message = "Kafka view write failed; retrying.", %topic, %error);
                    Some(i)
                }
            })
            .collect();
        pending = failed;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
