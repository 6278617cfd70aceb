//! purekafka: throughput through the fire-and-forget `DetachedProducer` (one report per
//! batch, the counterpart of librdkafka's delivery callback), latency through `enqueue` and
//! one `DeliveryFuture` per record (seen when it resolves), consume through `Consumer::poll`
//! in a consumer group, and the processing runtime (`Runner::run`, no-op handler, dedup off
//! or on).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use purekafka::dedup::{DedupKey, Deduplicator};
use purekafka::producer::BatchReport;
use purekafka::{Client, Config, Record, RunnerConfig};

use super::{
    consume_result, consume_target, produce_count, produce_result, record_key, ConsumeCheck, Pacer,
};
use crate::model::{
    ChildResult, ChildSpec, WorkloadKind, ACKS, BATCH_BYTES, BUFFER_KBYTES, PREFETCH_KBYTES,
};

pub fn run(spec: &ChildSpec) -> Result<ChildResult, String> {
    if let Ok(filter) = std::env::var("COMPARE_PUREKAFKA_LOG") {
        // Diagnosis only: a child run by hand (`compare child ...`) shows purekafka's log.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
    let rt = super::runtime()?;
    match spec.workload {
        WorkloadKind::Produce => rt.block_on(produce_throughput(spec)),
        WorkloadKind::ProduceLatency => rt.block_on(produce_paced(spec)),
        WorkloadKind::Consume | WorkloadKind::FirstRecord => rt.block_on(consume(spec)),
        WorkloadKind::Runtime => rt.block_on(runtime(spec)),
    }
}

/// purekafka's settings for the run, printed by `compare run` (see README).
pub fn settings(spec: &ChildSpec, group: bool) -> Vec<(&'static str, String)> {
    let mut v = vec![
        ("acks", ACKS.to_string()),
        ("linger.ms", spec.linger_ms.to_string()),
        ("batch.size", BATCH_BYTES.to_string()),
        ("compression.type", spec.compression.clone()),
        ("queue.buffering.max.kbytes", BUFFER_KBYTES.to_string()),
        ("enable.idempotence", spec.idempotence.to_string()),
    ];
    if group {
        v.extend([
            ("group.id", spec.group.clone()),
            ("auto.offset.reset", "earliest".to_string()),
            // librdkafka's defaults, as the librdkafka consumer has them.
            ("enable.auto.commit", "true".to_string()),
            ("auto.commit.interval.ms", "5000".to_string()),
            ("queued.max.messages.kbytes", PREFETCH_KBYTES.to_string()),
            ("max.partition.fetch.bytes", "1048576".to_string()),
            ("fetch.max.bytes", "52428800".to_string()),
            ("fetch.wait.max.ms", "500".to_string()),
        ]);
    }
    v
}

fn config(spec: &ChildSpec, group: bool) -> Result<Config, String> {
    let mut b = Config::builder().brokers(spec.brokers.split(','));
    for (k, v) in settings(spec, group) {
        b = b.set(k, v);
    }
    // `COMPARE_PUREKAFKA_SET=key=value,...` overrides settings, to explore how one changes a
    // figure (such runs are not like for like: say so when quoting them).
    if let Ok(pairs) = std::env::var("COMPARE_PUREKAFKA_SET") {
        for kv in pairs.split(',') {
            if let Some((k, v)) = kv.split_once('=') {
                b = b.set(k.trim(), v.trim());
            }
        }
    }
    b.build().map_err(|e| format!("purekafka config: {e}"))
}

fn record(spec: &ChildSpec, topic: &str, payload: &Bytes, i: u64) -> Record {
    let r = Record::new(topic.to_string(), payload.clone());
    match record_key(spec, i) {
        Some(k) => r.with_key(Bytes::copy_from_slice(&k)),
        None => r,
    }
}

/// Sends the warm-up record and waits for its acknowledgement.
async fn warm_up(client: &Client, spec: &ChildSpec, payload: &Bytes) -> Result<(), String> {
    let producer = client.producer();
    producer
        .send(record(spec, &spec.topic, payload, produce_count(spec)))
        .await
        .map_err(|e| format!("purekafka: the warm-up record failed: {e}"))?;
    Ok(())
}

/// What the delivery callback counts.
#[derive(Default)]
struct Tally {
    delivered: AtomicU64,
    errors: AtomicU64,
    /// When the last record of the run was reported.
    last: OnceLock<Instant>,
}

/// Throughput: `DetachedProducer::send` per record, outcomes counted by the batch callback;
/// the clock stops when the last record is reported.
async fn produce_throughput(spec: &ChildSpec) -> Result<ChildResult, String> {
    let total = produce_count(spec);
    let payload = Bytes::from(super::value(spec.value_size));
    let topic = spec.topic.clone();
    let client = Client::connect(config(spec, false)?)
        .await
        .map_err(|e| format!("purekafka connect: {e}"))?;
    let tally = Arc::new(Tally::default());
    let t = Arc::clone(&tally);
    let producer = client.detached_producer(move |report: BatchReport| {
        let n = u64::from(report.records);
        let counter = if report.result.is_ok() {
            &t.delivered
        } else {
            if t.errors.load(Ordering::Relaxed) == 0 {
                if let Err(e) = &report.result {
                    eprintln!("purekafka: {n} records failed: {e}");
                }
            }
            &t.errors
        };
        let before = counter.fetch_add(n, Ordering::Relaxed);
        let other = if report.result.is_ok() {
            &t.errors
        } else {
            &t.delivered
        };
        if before + n + other.load(Ordering::Relaxed) >= total {
            let _ = t.last.set(Instant::now());
        }
    });
    // The warm-up goes through the same producer's connections.
    warm_up(&client, spec, &payload).await?;
    let start = Instant::now();
    for i in 0..total {
        producer
            .send(record(spec, &topic, &payload, i))
            .await
            .map_err(|e| format!("purekafka send: {e}"))?;
    }
    producer.flush().await;
    let end = tally.last.get().copied().unwrap_or_else(Instant::now);
    producer.close().await;
    Ok(produce_result(
        spec,
        tally.delivered.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
        end - start,
        None,
    ))
}

/// Fixed rate: one `DeliveryFuture` per record, every acknowledgement seen when it arrives.
async fn produce_paced(spec: &ChildSpec) -> Result<ChildResult, String> {
    let total = produce_count(spec);
    let payload = Bytes::from(super::value(spec.value_size));
    let topic = spec.topic.clone();
    let client = Client::connect(config(spec, false)?)
        .await
        .map_err(|e| format!("purekafka connect: {e}"))?;
    let producer = client.producer();
    producer
        .send(record(spec, &topic, &payload, total))
        .await
        .map_err(|e| format!("purekafka: the warm-up record failed: {e}"))?;
    let mut pending = FuturesUnordered::new();
    let mut delivered = 0u64;
    let mut errors = 0u64;
    let mut latencies = Some(Vec::with_capacity(total as usize));
    let pacer = Pacer::new(spec.rate, total);
    let start = pacer.start;

    let mut tally = |i: u64, ok: bool, latencies: &mut Option<Vec<u32>>| {
        if ok {
            delivered += 1;
            if let Some(l) = latencies {
                l.push(pacer.latency_us(i, Instant::now()));
            }
        } else {
            errors += 1;
        }
    };

    let mut next = 0u64;
    while next < total {
        let due = pacer.due(Instant::now());
        while next < due {
            pacer.sending(next);
            let fut = producer
                .enqueue(record(spec, &topic, &payload, next))
                .await
                .map_err(|e| format!("purekafka enqueue: {e}"))?;
            let i = next;
            pending.push(fut.map(move |r| (i, r.is_ok())));
            next += 1;
            if next.is_multiple_of(1024) {
                while let Some(Some((i, ok))) = pending.next().now_or_never() {
                    tally(i, ok, &mut latencies);
                }
            }
        }
        if next < total {
            let until = tokio::time::Instant::from_std(pacer.scheduled(next));
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    Some((i, ok)) = pending.next() => tally(i, ok, &mut latencies),
                }
            }
        }
    }
    while let Some((i, ok)) = pending.next().await {
        tally(i, ok, &mut latencies);
    }
    let elapsed = start.elapsed();
    producer.close().await;
    Ok(produce_result(spec, delivered, errors, elapsed, latencies))
}

/// Group consume, timed from creating the consumer (subscribe) to the last record.
async fn consume(spec: &ChildSpec) -> Result<ChildResult, String> {
    let target = consume_target(spec);
    let start = Instant::now();
    let client = Client::connect(config(spec, true)?)
        .await
        .map_err(|e| format!("purekafka connect: {e}"))?;
    let consumer = client
        .consumer(&[spec.topic.as_str()])
        .map_err(|e| format!("purekafka consumer: {e}"))?;
    let mut check = ConsumeCheck::new(spec.partitions);
    let mut first: Option<Instant> = None;
    let mut last_progress = Instant::now();
    while check.count < target {
        let batch = consumer
            .poll(Duration::from_millis(100))
            .await
            .map_err(|e| format!("purekafka poll: {e}"))?;
        if batch.is_empty() {
            if last_progress.elapsed() > super::STALL_TIMEOUT {
                return Err(format!(
                    "purekafka consumer stalled at {}/{target} records",
                    check.count
                ));
            }
            continue;
        }
        first.get_or_insert_with(Instant::now);
        last_progress = Instant::now();
        for r in batch.iter() {
            check.see(r.partition, r.offset, r.key.as_deref(), r.value.as_deref())?;
        }
    }
    let end = Instant::now();
    let first = first.unwrap_or(end);
    let result = consume_result(&check, first - start, end - start);
    consumer
        .close()
        .await
        .map_err(|e| format!("purekafka close: {e}"))?;
    Ok(result)
}

/// The processing runtime over the filled topic: `Runner::run` with a handler that does
/// nothing, dedup off or on (`event_id` header, 1M keys); timed from creating the consumer
/// until every record was processed.
async fn runtime(spec: &ChildSpec) -> Result<ChildResult, String> {
    let target = spec.records;
    let start = Instant::now();
    let client = Client::connect(config(spec, true)?)
        .await
        .map_err(|e| format!("purekafka connect: {e}"))?;
    let consumer = client
        .consumer(&[spec.topic.as_str()])
        .map_err(|e| format!("purekafka consumer: {e}"))?;
    let mut runner = consumer
        .runner()
        .config(RunnerConfig::default().shutdown_on_signal(false));
    if spec.dedup {
        runner = runner.dedup(
            Deduplicator::new(1_000_000, Duration::from_secs(3600)),
            DedupKey::Header("event_id".into()),
        );
    }
    let handle = runner.handle();
    let watcher = {
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut last = (0, Instant::now());
            loop {
                let m = handle.metrics();
                let done = m.processed + m.duplicates_skipped;
                if done >= target {
                    let end = Instant::now();
                    handle.shutdown();
                    return Ok(end);
                }
                if done != last.0 {
                    last = (done, Instant::now());
                } else if last.1.elapsed() > super::STALL_TIMEOUT {
                    handle.shutdown();
                    return Err(format!("purekafka runner stalled at {done}/{target}"));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let metrics = runner
        .run(|_record| async { Ok(()) })
        .await
        .map_err(|e| format!("purekafka run: {e}"))?;
    let end = watcher.await.map_err(|e| format!("watcher: {e}"))??;
    let errors = metrics.dead_lettered + metrics.dropped + metrics.dlq_write_failures;
    Ok(ChildResult {
        records: metrics.processed + metrics.duplicates_skipped,
        bytes: (metrics.processed + metrics.duplicates_skipped) * spec.value_size as u64,
        elapsed_s: (end - start).as_secs_f64(),
        first_record_ms: None,
        latency: None,
        // Every record of the topic carries a unique event_id: none may be skipped.
        errors: errors + metrics.duplicates_skipped,
        checksum: None,
        warmup: 0,
        vm_hwm_kib: None,
    })
}
