//! confluent-kafka 1.0 (Confluent's Rust client, translated from the Java client; crates.io):
//! producer only. `KafkaProducer::send` with byte slices (its zero-copy path) and a completion
//! `Callback` per record that counts acknowledgements and failures (Java's
//! `send(record, callback)`, the counterpart of rust-rdkafka's delivery callback); the
//! returned `KafkaFuture`s are dropped. One warm-up record is acknowledged before the clock
//! starts; the clock stops when `flush()` returns (all batches completed, callbacks run).
//!
//! It runs against an external cluster (`KAFKA_BROKERS`) only: like krafka it cannot read the
//! librdkafka mock cluster's ApiVersions answer to a request above v3 (the mock's KIP-511
//! fault, see README), and tansu 0.6.0 closes the connection on the ApiVersions v5 request it
//! sends (seen with `COMPARE_CONFLUENT_LOG=debug`: "disconnected: EOF during size header read"
//! right after "Sending API_VERSIONS request ... apiVersion=5", in a loop until `max.block.ms`).
//! Its consumer speaks only KIP-848 (`group.protocol=consumer`): tansu 0.6.0 does not list
//! ConsumerGroupHeartbeat (key 68) in its ApiVersions, so it has no consume rows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use confluent_kafka::common::serialization::ByteArraySerializer;
use confluent_kafka::common::Error;
use confluent_kafka::producer::{
    Callback, KafkaProducer, Producer, ProducerConfig, ProducerRecord, RecordMetadata,
};

use super::{produce_count, produce_result, record_key};
use crate::model::{ChildResult, ChildSpec, WorkloadKind, ACKS, BATCH_BYTES, BUFFER_KBYTES};

pub fn run(spec: &ChildSpec) -> Result<ChildResult, String> {
    log_from_env();
    match spec.workload {
        WorkloadKind::Produce => super::runtime()?.block_on(produce(spec)),
        other => Err(format!(
            "confluent-kafka runs the produce workload only, not {other:?}"
        )),
    }
}

/// The producer settings, in the Java client's names (printed by `compare run`).
pub fn settings(spec: &ChildSpec) -> Vec<(&'static str, String)> {
    vec![
        ("acks", ACKS.to_string()),
        ("linger.ms", spec.linger_ms.to_string()),
        ("batch.size", BATCH_BYTES.to_string()),
        // The buffer bound every client gets (Java's default is 32 MiB).
        ("buffer.memory", (BUFFER_KBYTES * 1024).to_string()),
        // As librdkafka's message.max.bytes here: a full batch fits in a request.
        ("max.request.size", (BATCH_BYTES + 64 * 1024).to_string()),
        ("compression.type", spec.compression.clone()),
        ("enable.idempotence", spec.idempotence.to_string()),
    ]
}

/// `COMPARE_CONFLUENT_LOG=debug` (or info, trace, ...) prints confluent-kafka's `log` records to
/// stderr, to find out why a run fails (it logs nothing otherwise).
fn log_from_env() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, r: &log::Record<'_>) {
            eprintln!("{} {}: {}", r.level(), r.target(), r.args());
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    let level = std::env::var("COMPARE_CONFLUENT_LOG")
        .ok()
        .and_then(|l| l.parse::<log::LevelFilter>().ok());
    if let Some(level) = level {
        if log::set_logger(&LOGGER).is_ok() {
            log::set_max_level(level);
        }
    }
}

#[derive(Default)]
struct Counts {
    delivered: AtomicU64,
    errors: AtomicU64,
}

async fn produce(spec: &ChildSpec) -> Result<ChildResult, String> {
    let total = produce_count(spec);
    let payload = super::value(spec.value_size);
    let mut props: HashMap<String, String> = HashMap::new();
    props.insert("bootstrap.servers".into(), spec.brokers.clone());
    for (k, v) in settings(spec) {
        props.insert(k.into(), v);
    }
    let config = ProducerConfig::new(&props).map_err(|e| format!("confluent-kafka config: {e}"))?;
    let producer: KafkaProducer<Vec<u8>, Vec<u8>> = KafkaProducer::new(
        config,
        ByteArraySerializer::new(),
        ByteArraySerializer::new(),
    )
    .map_err(|e| format!("confluent-kafka producer: {e}"))?;

    // Warm-up: metadata and connections outside the clock.
    let warm_key = record_key(spec, total);
    let warm = ProducerRecord::with_key(
        spec.topic.clone(),
        warm_key.as_ref().map(|k| &k[..]),
        Some(&payload[..]),
    );
    let future = producer
        .send(warm, None)
        .await
        .map_err(|e| format!("confluent-kafka: the warm-up record failed: {e}"))?;
    future
        .get()
        .await
        .map_err(|e| format!("confluent-kafka: the warm-up record failed: {e}"))?;

    let counts = Arc::new(Counts::default());
    let start = Instant::now();
    let mut refused = 0u64;
    for i in 0..total {
        let key = record_key(spec, i);
        let record = ProducerRecord::with_key(
            spec.topic.clone(),
            key.as_ref().map(|k| &k[..]),
            Some(&payload[..]),
        );
        let c = Arc::clone(&counts);
        let callback: Box<dyn Callback> =
            Box::new(move |_: Option<&RecordMetadata>, error: Option<&Error>| {
                if error.is_some() {
                    c.errors.fetch_add(1, Ordering::Relaxed);
                } else {
                    c.delivered.fetch_add(1, Ordering::Relaxed);
                }
            });
        if producer.send(record, Some(callback)).await.is_err() {
            refused += 1;
        }
    }
    producer
        .flush()
        .await
        .map_err(|e| format!("confluent-kafka flush: {e}"))?;
    let elapsed = start.elapsed();
    // flush() returns after every batch completed, callbacks included; give stragglers a
    // moment rather than count them as lost.
    let deadline = Instant::now() + Duration::from_secs(10);
    while counts.delivered.load(Ordering::Relaxed) + counts.errors.load(Ordering::Relaxed) + refused
        < total
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let delivered = counts.delivered.load(Ordering::Relaxed);
    let errors = counts.errors.load(Ordering::Relaxed) + refused;
    producer
        .close()
        .await
        .map_err(|e| format!("confluent-kafka close: {e}"))?;
    Ok(produce_result(spec, delivered, errors, elapsed, None))
}
