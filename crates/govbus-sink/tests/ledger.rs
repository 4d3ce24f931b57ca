//! The delivery ledger on a real broker: a batch of any size is recorded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use govbus_sink::ledger::{verify_against, Against, Entry, Ledger, Record, MAX_EVENTS_PER_ENTRY};
use govbus_testkit::{create_topic, unique, Broker};

const KEY: &[u8] = b"a ledger key for this test only!";

/// A sink's `--max-batch` is the operator's choice, and an event id is up to
/// 256 characters that JSON may escape: a batch's entry could exceed what a
/// producer writes, which it refuses on every attempt — the sink stopped on
/// that batch for good. The events are recorded across several entries
/// instead, in order, and the chain verifies.
#[tokio::test]
async fn a_batch_of_any_size_is_recorded_in_entries_a_producer_accepts() {
    let bootstrap = Broker::shared().bootstrap();
    let topic = format!("{}._govbus.audit", unique("ledger"));
    create_topic(&bootstrap, &topic, 1).await.unwrap();
    let ledger = Ledger::open(&bootstrap, &topic, KEY).await.unwrap();
    // 5,000 events, each id 256 characters, 251 of them escaped in JSON.
    let events: Vec<String> = (0..5_000)
        .map(|i| format!("{i:05}{}", "\"".repeat(251)))
        .collect();
    let record = Record {
        subscription: "s",
        subscriber: "hrss",
        dataset: "civil_affairs.death_registration",
        sink: "webhook",
        policy: "p",
        outcome: "delivered",
        events: events.clone(),
        calls: Vec::new(),
    };
    tokio::time::timeout(Duration::from_secs(60), ledger.append(&record))
        .await
        .expect("appended within 60 s")
        .expect("the ledger took the batch");
    ledger.close().await.unwrap();

    let mut entries = Vec::new();
    govbus_kafka::read::each(
        &bootstrap,
        &topic,
        Duration::from_millis(500),
        Duration::from_secs(30),
        |r| {
            let entry: Option<Entry> = serde_json::from_slice(r.value.as_deref().unwrap()).ok();
            entries.push((r.offset as u64, entry));
        },
    )
    .unwrap();
    let deliveries: Vec<&Entry> = entries
        .iter()
        .filter_map(|(_, e)| e.as_ref())
        .filter(|e| e.kind == "delivery")
        .collect();
    assert_eq!(
        deliveries.len(),
        events.len().div_ceil(MAX_EVENTS_PER_ENTRY)
    );
    let recorded: Vec<String> = deliveries.iter().flat_map(|e| e.events.clone()).collect();
    assert_eq!(recorded, events, "every event, in order");
    let verified = verify_against(
        &entries,
        Against {
            key: Some(KEY),
            checkpoint: None,
        },
    );
    assert!(verified.findings.is_empty(), "{:?}", verified.findings);
    assert!(verified.open_chains.is_empty());
}
