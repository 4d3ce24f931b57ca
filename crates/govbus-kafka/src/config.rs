//! Client settings every component starts from; callers add their own.

use rdkafka::ClientConfig;

/// What every consumer of govbus fetches with, whatever its offsets and
/// group: `bootstrap`, no end-of-partition events, and the fetch timing below.
pub fn fetching(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("enable.partition.eof", "false")
        // Short fetch waits: Tansu's fetch path otherwise idles (DESIGN.md §7).
        .set("fetch.wait.max.ms", "10")
        // A consumer behind (catching up) fills its local queue past
        // `queued.min.messages`; librdkafka then postpones the next fetch
        // by this much, 1 s by default — a full second without records
        // once the queue is drained, every time it fills (BENCHMARKS.md,
        // "Start-up and catch-up stalls").
        .set("fetch.queue.backoff.ms", "10");
    c
}

/// A consumer that stores offsets only when told to (`store_offset` after the
/// effect is durable) and commits stored offsets in the background.
pub fn consumer(bootstrap: &str, group: &str) -> ClientConfig {
    let mut c = fetching(bootstrap);
    c.set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        // New ingest topics are found by the regex subscription within this time.
        .set("topic.metadata.refresh.interval.ms", "5000")
        .set("statistics.interval.ms", "1000");
    c
}

/// What every idempotent producer of govbus starts from: `bootstrap`,
/// idempotence, and connections to every broker at once. An idempotent
/// producer asks for its producer id only over a connection to a broker it
/// learned from the metadata (not the bootstrap address), and retries every
/// 500 ms; with sparse connections that connection opens only when the
/// first record is sent, so the first acknowledgement waited 0.5–1 s after
/// every start (BENCHMARKS.md, "Start-up and catch-up stalls").
pub fn idempotent(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("enable.sparse.connections", "false");
    c
}

/// An idempotent producer (per-partition order survives retries) that never
/// gives up on a record by itself: a record that cannot be written stalls its
/// batch, and the component stops consuming instead of skipping it.
pub fn producer(bootstrap: &str) -> ClientConfig {
    let mut c = idempotent(bootstrap);
    c.set("acks", "all")
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

#[cfg(test)]
mod tests {
    /// The two librdkafka defaults that stalled every component
    /// (BENCHMARKS.md, "Start-up and catch-up stalls"): measured by the
    /// benchmarks, not timed here; this keeps them from coming back.
    #[test]
    fn no_client_waits_on_librdkafka_stall_defaults() {
        let consumer = super::consumer("b", "g");
        assert_eq!(consumer.get("fetch.queue.backoff.ms"), Some("10"));
        let producer = super::producer("b");
        assert_eq!(producer.get("enable.sparse.connections"), Some("false"));
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
        let fetching = super::fetching("b");
        assert_eq!(fetching.get("fetch.queue.backoff.ms"), Some("10"));
        // librdkafka takes both (`enable.sparse.connections` is one of its
        // hidden properties: a version without it would refuse it here).
        // Creating a client needs no broker.
        producer
            .create::<rdkafka::producer::BaseProducer>()
            .expect("the producer settings are librdkafka's");
        consumer
            .create::<rdkafka::consumer::BaseConsumer>()
            .expect("the consumer settings are librdkafka's");
    }
}
