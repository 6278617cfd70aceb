//! krafka 0.28 (a pure-Rust client, crates.io): producer only. `Producer::enqueue` per record,
//! the `DeliveryHandle`s reaped in send order (as the rust-rdkafka `FutureProducer` runner
//! does), one warm-up record acknowledged before the clock starts. krafka cannot read the
//! librdkafka mock cluster's ApiVersions answer (see README: the mock's fault), so it runs on
//! `--broker tansu` or an external cluster only.

use std::time::{Duration, Instant};

use bytes::Bytes;
use krafka::producer::Acks;
use krafka::{Compression, Kafka, Record};

use super::{produce_count, produce_result, record_key, InOrder};
use crate::model::{ChildResult, ChildSpec, WorkloadKind, BATCH_BYTES, BUFFER_KBYTES};

pub fn run(spec: &ChildSpec) -> Result<ChildResult, String> {
    match spec.workload {
        WorkloadKind::Produce => super::runtime()?.block_on(produce(spec)),
        other => Err(format!(
            "krafka runs the produce workload only, not {other:?}"
        )),
    }
}

fn compression(name: &str) -> Result<Compression, String> {
    Ok(match name {
        "none" => Compression::None,
        "snappy" => Compression::Snappy,
        "lz4" => Compression::Lz4,
        "zstd" => Compression::Zstd,
        "gzip" => Compression::Gzip,
        other => return Err(format!("krafka: unknown codec {other}")),
    })
}

fn record(spec: &ChildSpec, payload: &Bytes, i: u64) -> Record {
    let r = Record::new(spec.topic.clone(), payload.clone());
    match record_key(spec, i) {
        Some(k) => r.key(Bytes::copy_from_slice(&k)),
        None => r,
    }
}

async fn produce(spec: &ChildSpec) -> Result<ChildResult, String> {
    let total = produce_count(spec);
    let payload = Bytes::from(super::value(spec.value_size));
    let kafka = Kafka::builder(spec.brokers.clone())
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("krafka connect: {e}"))?;
    let producer = kafka
        .producer()
        .acks(Acks::All)
        .linger(Duration::from_millis(spec.linger_ms))
        .batch_size(BATCH_BYTES)
        .buffer_memory(BUFFER_KBYTES * 1024)
        .compression(compression(&spec.compression)?)
        .idempotent(spec.idempotence)
        .build()
        .await
        .map_err(|e| format!("krafka producer: {e}"))?;
    producer
        .send(record(spec, &payload, total))
        .await
        .map(|_metadata| ())
        .map_err(|e| format!("krafka: the warm-up record failed: {e}"))?;
    let start = Instant::now();
    let mut pending = InOrder::new();
    for i in 0..total {
        match producer.enqueue(record(spec, &payload, i)).await {
            Ok(handle) => pending.push(handle),
            Err(_) => pending.errors += 1,
        }
        if i % 1000 == 999 {
            pending.reap_ready(|_| true);
        }
    }
    pending.drain().await;
    let elapsed = start.elapsed();
    Ok(produce_result(
        spec,
        pending.delivered,
        pending.errors,
        elapsed,
        None,
    ))
}
