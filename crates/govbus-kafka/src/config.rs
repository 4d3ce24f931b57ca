//! Client settings every component starts from; callers add their own.

use rdkafka::ClientConfig;

/// A consumer that stores offsets only when told to (`store_offset` after the
/// effect is durable) and commits stored offsets in the background.
pub fn consumer(bootstrap: &str, group: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Short fetch waits: Tansu's fetch path otherwise idles (DESIGN.md §7).
        .set("fetch.wait.max.ms", "10")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        // New ingest topics are found by the regex subscription within this time.
        .set("topic.metadata.refresh.interval.ms", "5000")
        .set("statistics.interval.ms", "1000");
    c
}

/// An idempotent producer (per-partition order survives retries) that never
/// gives up on a record by itself: a record that cannot be written stalls its
/// batch, and the component stops consuming instead of skipping it.
pub fn producer(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "200000")
        .set("message.timeout.ms", "0")
        .set(
            "message.max.bytes",
            crate::limits::MAX_RECORD_BYTES.to_string(),
        )
        .set("compression.type", "lz4");
    c
}
