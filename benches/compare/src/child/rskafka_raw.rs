//! rskafka used directly, the layer purekafka starts from: what it costs to produce and fetch
//! with no partitioner, accumulator or group logic beyond the least a benchmark needs.
//!
//! Produce: one `PartitionClient` per partition; records go round-robin (`i % partitions`,
//! no key hashing) into per-partition `Vec<rskafka::record::Record>` batches, sent with
//! `PartitionClient::produce` when a batch reaches `batch.size` or has lingered 5 ms; several
//! requests in flight (rskafka always sends acks=all).
//! Consume: rskafka has no consumer groups, so one task per partition fetches from the
//! earliest offset (`fetch_records`, up to 1 MiB per partition per request, like librdkafka's
//! `max.partition.fetch.bytes`). No group join, no offset commits: a lower bound for the
//! group consumers, not a like-for-like one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rskafka::client::partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::ClientBuilder;
use rskafka::record::Record;
use tokio::task::JoinSet;

use super::{
    consume_result, consume_target, produce_count, produce_result, record_key, value, ConsumeCheck,
    Pacer,
};
use crate::model::{ChildResult, ChildSpec, WorkloadKind, BATCH_BYTES, PARTITIONS};

/// Produce requests in flight at once, over all partitions.
const MAX_IN_FLIGHT: usize = 5 * PARTITIONS as usize;
/// Bytes a record adds to a batch beyond its key and value (varints, attributes).
const RECORD_OVERHEAD: usize = 20;

pub fn run(spec: &ChildSpec) -> Result<ChildResult, String> {
    let rt = super::runtime()?;
    match spec.workload {
        WorkloadKind::Produce | WorkloadKind::ProduceLatency => rt.block_on(produce(spec)),
        WorkloadKind::Consume | WorkloadKind::FirstRecord => rt.block_on(consume(spec)),
        WorkloadKind::Runtime => Err("rskafka has no processing runtime".into()),
    }
}

fn compression(spec: &ChildSpec) -> Result<Compression, String> {
    match spec.compression.as_str() {
        "none" => Ok(Compression::NoCompression),
        "snappy" => Ok(Compression::Snappy),
        other => Err(format!(
            "rskafka runner: compression {other} is not built in"
        )),
    }
}

async fn partition_clients(spec: &ChildSpec) -> Result<Vec<Arc<PartitionClient>>, String> {
    let brokers = spec.brokers.split(',').map(str::to_string).collect();
    let client = ClientBuilder::new(brokers)
        .build()
        .await
        .map_err(|e| format!("rskafka client: {e}"))?;
    let mut clients = Vec::new();
    for p in 0..spec.partitions.max(1) {
        let pc = client
            .partition_client(spec.topic.clone(), p, UnknownTopicHandling::Retry)
            .await
            .map_err(|e| format!("rskafka partition client {p}: {e}"))?;
        clients.push(Arc::new(pc));
    }
    Ok(clients)
}

/// One partition's batch being filled.
struct Pending {
    records: Vec<Record>,
    /// Schedule indices of the records (latency runs only).
    indices: Vec<u32>,
    bytes: usize,
    since: Instant,
}

impl Pending {
    fn new() -> Pending {
        Pending {
            records: Vec::new(),
            indices: Vec::new(),
            bytes: 0,
            since: Instant::now(),
        }
    }
}

type Sent = (usize, Vec<u32>, Result<(), String>);

struct Sender {
    compression: Compression,
    linger: Duration,
    clients: Vec<Arc<PartitionClient>>,
    pending: Vec<Pending>,
    in_flight: JoinSet<Sent>,
    delivered: u64,
    errors: u64,
    latencies: Option<Vec<u32>>,
    pacer: Pacer,
}

impl Sender {
    async fn send(&mut self, p: usize) {
        let batch = std::mem::replace(&mut self.pending[p], Pending::new());
        if batch.records.is_empty() {
            return;
        }
        while self.in_flight.len() >= MAX_IN_FLIGHT {
            self.reap_one().await;
        }
        let client = Arc::clone(&self.clients[p]);
        let compression = self.compression;
        self.in_flight.spawn(async move {
            let n = batch.records.len();
            let r = client
                .produce(batch.records, compression)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
            (n, batch.indices, r)
        });
    }

    async fn reap_one(&mut self) {
        if let Some(done) = self.in_flight.join_next().await {
            self.tally(done.expect("produce task panicked"));
        }
    }

    fn reap_ready(&mut self) {
        while let Some(done) = self.in_flight.try_join_next() {
            self.tally(done.expect("produce task panicked"));
        }
    }

    fn tally(&mut self, (n, indices, r): Sent) {
        match r {
            Ok(()) => {
                self.delivered += n as u64;
                if let Some(l) = &mut self.latencies {
                    let now = Instant::now();
                    l.extend(
                        indices
                            .iter()
                            .map(|&i| self.pacer.latency_us(i as u64, now)),
                    );
                }
            }
            Err(e) => {
                if self.errors == 0 {
                    eprintln!("rskafka produce failed: {e}");
                }
                self.errors += n as u64;
            }
        }
    }

    /// Sends every batch that has lingered long enough.
    async fn send_lingering(&mut self) {
        let linger = self.linger;
        for p in 0..self.pending.len() {
            if !self.pending[p].records.is_empty() && self.pending[p].since.elapsed() >= linger {
                self.send(p).await;
            }
        }
    }
}

async fn produce(spec: &ChildSpec) -> Result<ChildResult, String> {
    if spec.idempotence {
        return Err("rskafka has no idempotent producer (run it with idempotence off)".into());
    }
    let total = produce_count(spec);
    let paced = spec.workload == WorkloadKind::ProduceLatency;
    let payload = value(spec.value_size);
    let clients = partition_clients(spec).await?;
    let partitions = clients.len();
    // Warm-up: one record, acknowledged, before the clock or pacer starts.
    clients[0]
        .produce(
            vec![Record {
                key: record_key(spec, total).map(|k| k.to_vec()),
                value: Some(payload.clone()),
                headers: BTreeMap::new(),
                timestamp: chrono::Utc::now(),
            }],
            compression(spec)?,
        )
        .await
        .map_err(|e| format!("rskafka: the warm-up record failed: {e}"))?;
    let mut s = Sender {
        compression: compression(spec)?,
        linger: Duration::from_millis(spec.linger_ms),
        pending: (0..partitions).map(|_| Pending::new()).collect(),
        clients,
        in_flight: JoinSet::new(),
        delivered: 0,
        errors: 0,
        latencies: paced.then(|| Vec::with_capacity(total as usize)),
        pacer: Pacer::new(spec.rate, 0),
    };
    let start = Instant::now();
    s.pacer = Pacer::new(spec.rate, if paced { total } else { 0 });
    s.pacer.start = start;
    let mut next = 0u64;
    while next < total {
        let due = if paced {
            s.pacer.due(Instant::now())
        } else {
            total
        };
        while next < due {
            if paced {
                s.pacer.sending(next);
            }
            // Round robin, keyed or not (rskafka has no partitioner).
            let p = (next % partitions as u64) as usize;
            let key = record_key(spec, next);
            let record = Record {
                key: key.map(|k| k.to_vec()),
                value: Some(payload.clone()),
                headers: BTreeMap::new(),
                timestamp: chrono::Utc::now(),
            };
            let size = key.map_or(0, |k| k.len()) + payload.len() + RECORD_OVERHEAD;
            if s.pending[p].bytes + size > BATCH_BYTES {
                s.send(p).await;
            }
            let pending = &mut s.pending[p];
            if pending.records.is_empty() {
                pending.since = Instant::now();
            }
            pending.records.push(record);
            pending.bytes += size;
            if paced {
                pending.indices.push(next as u32);
            }
            next += 1;
            if next.is_multiple_of(256) {
                s.reap_ready();
                s.send_lingering().await;
            }
        }
        if paced && next < total {
            s.reap_ready();
            s.send_lingering().await;
            let until = s.pacer.scheduled(next);
            tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
        }
    }
    // End of input: send what is left without waiting out the linger (librdkafka's flush()
    // does the same).
    for p in 0..partitions {
        s.send(p).await;
    }
    while !s.in_flight.is_empty() {
        s.reap_one().await;
    }
    let elapsed = start.elapsed();
    Ok(produce_result(
        spec,
        s.delivered,
        s.errors,
        elapsed,
        s.latencies,
    ))
}

async fn consume(spec: &ChildSpec) -> Result<ChildResult, String> {
    let target = consume_target(spec);
    let start = Instant::now();
    let clients = partition_clients(spec).await?;
    let count = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let checksum = Arc::new(AtomicU64::new(0));
    // Nanoseconds after `start` of the first record (0 = none yet).
    let first = Arc::new(AtomicU64::new(0));
    // Nanoseconds after `start` when the target count was reached.
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for (p, client) in clients.into_iter().enumerate() {
        let (count, bytes, checksum, first, done) = (
            count.clone(),
            bytes.clone(),
            checksum.clone(),
            first.clone(),
            done.clone(),
        );
        tasks.spawn(async move {
            let mut offset = client
                .get_offset(OffsetAt::Earliest)
                .await
                .map_err(|e| format!("rskafka list offsets: {e}"))?;
            if offset != 0 {
                return Err(format!("partition {p} starts at {offset}, not 0"));
            }
            let mut check = ConsumeCheck::new(1);
            let mut last_progress = Instant::now();
            while count.load(Ordering::Relaxed) < target {
                let (records, _high) = client
                    .fetch_records(offset, 1..1024 * 1024, 500)
                    .await
                    .map_err(|e| format!("rskafka fetch: {e}"))?;
                let before_check = (check.count, check.bytes, check.checksum);
                // A fetch answers whole batches: records before the requested offset are the
                // start of its first batch, not repeats.
                for r in records.iter().filter(|r| r.offset >= offset) {
                    check
                        .see(
                            0,
                            r.offset,
                            r.record.key.as_deref(),
                            r.record.value.as_deref(),
                        )
                        .map_err(|e| format!("partition {p}: {e}"))?;
                }
                let n = check.count - before_check.0;
                if n > 0 {
                    let t = start.elapsed().as_nanos() as u64;
                    let _ =
                        first.compare_exchange(0, t.max(1), Ordering::Relaxed, Ordering::Relaxed);
                    offset += n as i64;
                    bytes.fetch_add(check.bytes - before_check.1, Ordering::Relaxed);
                    checksum.fetch_add(
                        check.checksum.wrapping_sub(before_check.2),
                        Ordering::Relaxed,
                    );
                    let before = count.fetch_add(n, Ordering::Relaxed);
                    if before < target && before + n >= target {
                        done.store(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    }
                    last_progress = Instant::now();
                } else if last_progress.elapsed() > super::STALL_TIMEOUT {
                    return Err(format!("rskafka fetch stalled at offset {offset}"));
                }
            }
            Ok::<_, String>(())
        });
    }
    // Stop at the first error, or when the tasks have read the target between them (the
    // others may still be waiting in a fetch of an exhausted partition).
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| format!("fetch task: {e}"))??;
        if count.load(Ordering::Relaxed) >= target {
            tasks.abort_all();
            break;
        }
    }
    let first = Duration::from_nanos(first.load(Ordering::Relaxed));
    let end = Duration::from_nanos(done.load(Ordering::Relaxed));
    let mut check = ConsumeCheck::new(1);
    check.count = count.load(Ordering::Relaxed);
    check.bytes = bytes.load(Ordering::Relaxed);
    check.checksum = checksum.load(Ordering::Relaxed);
    Ok(consume_result(&check, first, end))
}
