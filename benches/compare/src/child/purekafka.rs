//! purekafka's `Producer` (enqueue → `DeliveryFuture`) and `Consumer` (group member polling
//! batches, offsets auto-committed like librdkafka's default).

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use purekafka::{Client, Config, Record};

use super::{consume_result, consume_target, produce_count, produce_result, InOrder, Pacer};
use crate::model::{ChildResult, ChildSpec, WorkloadKind, ACKS, BATCH_BYTES, LINGER_MS};

pub fn run(spec: &ChildSpec) -> Result<ChildResult, String> {
    let rt = super::runtime()?;
    match spec.workload {
        WorkloadKind::Produce | WorkloadKind::ProduceLatency => rt.block_on(produce(spec)),
        WorkloadKind::Consume | WorkloadKind::FirstRecord => rt.block_on(consume(spec)),
    }
}

fn config(spec: &ChildSpec, group: bool) -> Result<Config, String> {
    let mut b = Config::builder()
        .brokers(spec.brokers.split(','))
        .set("acks", ACKS)
        .set("linger.ms", LINGER_MS.to_string())
        .set("batch.size", BATCH_BYTES.to_string())
        .set("compression.type", "none");
    if group {
        // Offsets are committed in the background every 5 s, as librdkafka's defaults do
        // (enable.auto.commit=true, auto.commit.interval.ms=5000): like for like.
        b = b
            .set("group.id", &spec.group)
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "5000");
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

/// Throughput: delivery futures reaped in send order (`DeliveryFuture::is_done` is a cheap
/// check), the counterpart of librdkafka's delivery callback.
async fn produce_throughput(spec: &ChildSpec) -> Result<ChildResult, String> {
    let total = produce_count(spec);
    let payload = Bytes::from(super::value(spec.value_size));
    let topic = spec.topic.clone();
    let client = Client::connect(config(spec, false)?)
        .await
        .map_err(|e| format!("purekafka connect: {e}"))?;
    let producer = client.producer();
    let mut pending = InOrder::new();
    let start = Instant::now();
    for i in 0..total {
        let record = Record::new(topic.clone(), payload.clone())
            .with_key(Bytes::copy_from_slice(&super::key(i)));
        let fut = producer
            .enqueue(record)
            .await
            .map_err(|e| format!("purekafka enqueue: {e}"))?;
        pending.push(fut);
        if i.is_multiple_of(1024) {
            pending.reap_ready(|f| f.is_done());
        }
    }
    // Send lingering batches now, as librdkafka's flush() does.
    #[allow(clippy::let_unit_value)]
    let _ = producer.flush().await;
    pending.drain().await;
    let elapsed = start.elapsed();
    #[allow(clippy::let_unit_value)]
    let _ = producer.close().await;
    Ok(produce_result(
        spec,
        pending.delivered,
        pending.errors,
        elapsed,
        None,
    ))
}

/// Fixed rate: every acknowledgement is seen when it arrives.
async fn produce(spec: &ChildSpec) -> Result<ChildResult, String> {
    if spec.workload != WorkloadKind::ProduceLatency {
        return produce_throughput(spec).await;
    }
    let total = produce_count(spec);
    let paced = true;
    let payload = Bytes::from(super::value(spec.value_size));
    let topic = spec.topic.clone();
    let client = Client::connect(config(spec, false)?)
        .await
        .map_err(|e| format!("purekafka connect: {e}"))?;
    let producer = client.producer();
    let mut pending = FuturesUnordered::new();
    let mut delivered = 0u64;
    let mut errors = 0u64;
    let mut latencies = paced.then(|| Vec::with_capacity(total as usize));
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
        let due = if paced {
            pacer.due(Instant::now())
        } else {
            total
        };
        while next < due {
            let record = Record::new(topic.clone(), payload.clone())
                .with_key(Bytes::copy_from_slice(&super::key(next)));
            let fut = producer
                .enqueue(record)
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
        if paced && next < total {
            let until = tokio::time::Instant::from_std(pacer.scheduled(next));
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    Some((i, ok)) = pending.next() => tally(i, ok, &mut latencies),
                }
            }
        }
    }
    // `flush` waits until every enqueued record is resolved; failures come through the
    // futures, counted below.
    #[allow(clippy::let_unit_value)]
    let _ = producer.flush().await;
    while let Some((i, ok)) = pending.next().await {
        tally(i, ok, &mut latencies);
    }
    let elapsed = start.elapsed();
    #[allow(clippy::let_unit_value)]
    let _ = producer.close().await;
    Ok(produce_result(spec, delivered, errors, elapsed, latencies))
}

async fn consume(spec: &ChildSpec) -> Result<ChildResult, String> {
    let target = consume_target(spec);
    let start = Instant::now();
    let client = Client::connect(config(spec, true)?)
        .await
        .map_err(|e| format!("purekafka connect: {e}"))?;
    let consumer = client
        .consumer(&[spec.topic.as_str()])
        .map_err(|e| format!("purekafka consumer: {e}"))?;
    let mut count = 0u64;
    let mut bytes = 0u64;
    let mut first: Option<Instant> = None;
    let mut last_progress = Instant::now();
    while count < target {
        let batch = consumer
            .poll(Duration::from_millis(100))
            .await
            .map_err(|e| format!("purekafka poll: {e}"))?;
        if batch.is_empty() {
            if last_progress.elapsed() > super::STALL_TIMEOUT {
                return Err(format!(
                    "purekafka consumer stalled at {count}/{target} records"
                ));
            }
            continue;
        }
        first.get_or_insert_with(Instant::now);
        last_progress = Instant::now();
        count += batch.len() as u64;
        bytes += batch
            .iter()
            .map(|r| r.value.as_ref().map_or(0, |v| v.len() as u64))
            .sum::<u64>();
    }
    let end = Instant::now();
    let first = first.unwrap_or(end);
    let result = consume_result(count, bytes, first - start, end - first);
    consumer
        .close()
        .await
        .map_err(|e| format!("purekafka close: {e}"))?;
    Ok(result)
}
