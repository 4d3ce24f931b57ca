//! The Kafka-view sink: the masked, filtered stream in `view.<subscription>`
//! for apps that consume Kafka directly. Values are the delivered record as
//! JSON (a tombstone for a delete), keys the treated record key, headers the
//! CloudEvents binary binding. Scope the app's credentials to this one topic
//! with the broker's ACLs (deploy/ shows Apache Kafka's).

use std::time::Duration;

use govbus_kafka::headers as h;
use govbus_kafka::retry::Backoff;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::{Batch, Progress, Sink};
use crate::event::Delivery;

/// Writes one batch and waits for every acknowledgement. Events are handed
/// to the producer one at a time, in batch order (a full queue is waited
/// out before the next), so the broker receives a key's versions in order.
/// When a write fails for a reason that may pass (the broker down, an ACL
/// being fixed), it and every event after it are written again by the one
/// [`Backoff`] policy until all are acknowledged: an event written again
/// after a later one of its key had landed would leave the older version
/// last in the view. An event the broker refuses as such (too large, an
/// invalid record) is returned, with its reason, to be dead-lettered:
/// writing it again would stall the subscription for ever. The offsets do
/// not move before.
pub async fn write(
    producer: &FutureProducer,
    topic: &str,
    policy_version: &str,
    events: &[Delivery],
) -> Vec<(usize, &'static str, String)> {
    let bodies: Vec<(Option<Vec<u8>>, String)> = events
        .iter()
        .map(|e| {
            (
                e.data.as_ref().and_then(|d| serde_json::to_vec(d).ok()),
                e.source_version.to_string(),
            )
        })
        .collect();
    let mut dead: Vec<(usize, &'static str, String)> = Vec::new();
    let mut from = 0;
    let mut backoff = Backoff::broker();
    while from < events.len() {
        let mut pending = Vec::with_capacity(events.len() - from);
        for i in from..events.len() {
            if dead.iter().any(|(d, _, _)| *d == i) {
                continue;
            }
            let e = &events[i];
            let (body, version) = &bodies[i];
            let trace = e.traceparent.as_ref().map(|tp| (h::TRACEPARENT, &tp[..]));
            let headers = h::owned(
                [
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
                ]
                .into_iter()
                .chain(trace),
            );
            let mut record = FutureRecord::to(topic)
                .key(e.subject.as_bytes())
                .headers(headers);
            if let Some(b) = body {
                record = record.payload(b.as_slice());
            }
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push((i, Ok(delivery)));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((error, _)) => {
                        pending.push((i, Err(error)));
                        break;
                    }
                }
            }
        }
        let mut again: Option<(usize, String)> = None;
        for (i, delivery) in pending {
            let result = match delivery {
                Ok(d) => match d.await {
                    Ok(Ok(_)) => continue,
                    Ok(Err((error, _))) => error,
                    Err(_) => KafkaError::Canceled,
                },
                Err(error) => error,
            };
            if refused_for_good(&result) {
                tracing::warn!(message = "The broker refused a Kafka view event; dead-lettering it.", %topic, error = %result);
                dead.push((i, "view_refused", result.to_string()));
            } else if again.is_none() {
                again = Some((i, result.to_string()));
            }
        }
        let Some((first, error)) = again else {
            break;
        };
        let wait = backoff.next_delay();
        tracing::warn!(message = "Kafka view write failed; writing again from the first failed event.", %topic, %error, again = events.len() - first, attempt = backoff.attempts(), wait_ms = wait.as_millis() as u64);
        from = first;
        tokio::time::sleep(wait).await;
    }
    dead.sort_unstable_by_key(|(i, _, _)| *i);
    dead
}

/// Whether the broker refused the record itself, so that writing it again
/// cannot succeed.
fn refused_for_good(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::InvalidMessage
                | C::InvalidRecord
                | C::BadMessage
                | C::InvalidRequiredAcks
        )
    )
}

/// The Kafka view of one subscription: `view.<subscription>`.
#[derive(Debug)]
pub struct ViewSink {
    /// The view topic.
    pub topic: String,
}

impl Sink for ViewSink {
    async fn deliver(&mut self, batch: Batch<'_>) -> Progress {
        let sub = batch.policy.subscription();
        Progress {
            done: batch.events.len(),
            dead: write(
                &batch.shared.producer,
                &self.topic,
                &sub.policy_version,
                batch.events,
            )
            .await,
            stop: None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    fn event(i: usize) -> Delivery {
        Delivery {
            id: format!("e-{i}"),
            source: "/departments/civil_affairs".into(),
            dataset: "civil_affairs.death_registration".into(),
            subject: format!("DR-{i}"),
            time: "2026-03-06T09:00:00.000Z".into(),
            op: "create".into(),
            source_version: 1,
            data: Some(serde_json::Map::new()),
            partition: 0,
            offset: i as i64,
            timestamp_ms: 0,
            traceparent: None,
        }
    }

    /// A record the broker refuses as such is handed back to be
    /// dead-lettered; the write returns instead of retrying it for ever.
    #[tokio::test(flavor = "multi_thread")]
    async fn an_event_the_broker_refuses_for_good_is_returned_not_retried() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("view.t", 1, 1).unwrap();
        let producer: FutureProducer = govbus_kafka::config::producer(&cluster.bootstrap_servers())
            .create()
            .unwrap();
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; 3],
        );
        let events: Vec<Delivery> = (0..3).map(event).collect();
        let dead = tokio::time::timeout(
            Duration::from_secs(30),
            write(&producer, "view.t", "p1", &events),
        )
        .await
        .expect("the write returned");
        assert!(!dead.is_empty(), "nothing was refused");
        assert!(dead.iter().all(|(_, reason, _)| *reason == "view_refused"));
        assert!(dead.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
