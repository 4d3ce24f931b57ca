//! The Kafka-view sink: the masked, filtered stream in `view.<subscription>`
//! for apps that consume Kafka directly. Values are the delivered record as
//! JSON (a tombstone for a delete), keys the treated record key, headers the
//! CloudEvents binary binding. Scope the app's credentials to this one topic
//! with the broker's ACLs (deploy/ shows Apache Kafka's).

use std::time::Duration;

use govbus_kafka::headers as h;
use govbus_kafka::retry::Backoff;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::event::Delivery;

/// Writes one batch and waits for every acknowledgement; when a write
/// fails, it and every event after it are written again (by the one
/// [`Backoff`] policy) until all are acknowledged: an event written again
/// after a later one of its key had landed would leave the older version
/// last in the view. The offsets do not move before.
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
    let mut from = 0;
    let mut backoff = Backoff::broker();
    while from < events.len() {
        let sends = (from..events.len()).map(|i| {
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
        let failed = results.iter().position(Result::is_err);
        let Some(first) = failed else { return };
        let errors = results.iter().filter(|r| r.is_err()).count();
        let error = results[first]
            .as_ref()
            .err()
            .map(|(e, _)| e.to_string())
            .unwrap_or_default();
        let wait = backoff.next_delay();
        tracing::warn!(message = "Kafka view write failed; writing again from the first failed event.", %topic, %error, failed = errors, again = events.len() - from - first, attempt = backoff.attempts(), wait_ms = wait.as_millis() as u64);
        from += first;
        tokio::time::sleep(wait).await;
    }
}
