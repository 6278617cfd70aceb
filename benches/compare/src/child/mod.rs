//! `compare child ...`: runs one workload through one client and prints one result line.
//!
//! Each measured client runs in a process of its own so that the orchestrator's
//! `wait4` rusage (CPU time, peak RSS) belongs to that client alone.

mod confluent_kafka_client;
mod krafka_client;
pub mod librdkafka;
#[cfg(feature = "purekafka")]
mod purekafka;
pub mod rdkafka_performance;
pub mod rdkafka_performance_consumer;
mod rskafka_raw;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;

use crate::model::{ChildResult, ChildSpec, ClientKind, Latency, WorkloadKind, RESULT_PREFIX};

/// Gives up on a consume workload that has read nothing new for this long.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);

pub fn main(spec: ChildSpec) -> Result<(), String> {
    let result = match spec.client {
        ClientKind::Librdkafka | ClientKind::LibrdkafkaFuture => librdkafka::run(&spec)?,
        ClientKind::Rskafka => rskafka_raw::run(&spec)?,
        ClientKind::Krafka => krafka_client::run(&spec)?,
        ClientKind::ConfluentKafka => confluent_kafka_client::run(&spec)?,
        ClientKind::RdkafkaPerformance if spec.workload == WorkloadKind::Consume => {
            rdkafka_performance_consumer::run(&spec)?
        }
        ClientKind::RdkafkaPerformance | ClientKind::RdkafkaPerformanceCopy => {
            rdkafka_performance::run(&spec)?
        }
        #[cfg(feature = "purekafka")]
        ClientKind::Purekafka => purekafka::run(&spec)?,
        #[cfg(not(feature = "purekafka"))]
        ClientKind::Purekafka => {
            return Err(
                "this build has no purekafka runner: build with --features purekafka".into(),
            )
        }
    };
    let mut result = result;
    result.vm_hwm_kib = crate::proc::own_vm_hwm_kib();
    let line = serde_json::to_string(&result).map_err(|e| e.to_string())?;
    println!("{RESULT_PREFIX}{line}");
    Ok(())
}

/// A multi-threaded tokio runtime for the async clients (librdkafka's own threads are the
/// counterpart on the C side).
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

/// The value every produced record carries: `size` pseudo-random printable ASCII bytes (64
/// symbols: compressible to about 3/4 at best), the same for every client, rdkafka_performance
/// included (given as its `-m` pattern).
pub fn value(size: usize) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x: u32 = 0x9E37_79B9;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            ALPHABET[(x >> 26) as usize]
        })
        .collect()
}

/// The key of record `i`: 8 bytes, so every client spreads records over all partitions.
#[inline]
pub fn key(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

/// The key of record `i` when the run is keyed.
#[inline]
pub fn record_key(spec: &ChildSpec, i: u64) -> Option<[u8; 8]> {
    spec.keyed.then(|| key(i))
}

/// Sum of the bytes: the consumers' checksum touches every key and value byte.
#[inline]
pub fn byte_sum(b: &[u8]) -> u64 {
    b.iter().map(|&x| u64::from(x)).sum()
}

/// What a consume run checks as it reads: every partition's offsets from 0 with no gap and
/// no repeat, and the checksum of key and value bytes.
pub struct ConsumeCheck {
    next: Vec<i64>,
    pub count: u64,
    pub bytes: u64,
    pub checksum: u64,
}

impl ConsumeCheck {
    pub fn new(partitions: i32) -> ConsumeCheck {
        ConsumeCheck {
            next: vec![0; partitions.clamp(1, 100_000) as usize],
            count: 0,
            bytes: 0,
            checksum: 0,
        }
    }

    /// Counts one record; an error names a gap or a repeat.
    #[inline]
    pub fn see(
        &mut self,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<(), String> {
        let next = usize::try_from(partition)
            .ok()
            .and_then(|p| self.next.get_mut(p))
            .ok_or_else(|| format!("record from unexpected partition {partition}"))?;
        if offset != *next {
            return Err(format!(
                "partition {partition}: read offset {offset}, expected {next} ({})",
                if offset < *next { "a repeat" } else { "a gap" }
            ));
        }
        *next += 1;
        self.count += 1;
        let v = value.unwrap_or_default();
        self.bytes += v.len() as u64;
        self.checksum = self
            .checksum
            .wrapping_add(byte_sum(key.unwrap_or_default()))
            .wrapping_add(byte_sum(v));
        Ok(())
    }
}

/// How many records the workload produces.
pub fn produce_count(spec: &ChildSpec) -> u64 {
    match spec.workload {
        WorkloadKind::ProduceLatency => {
            ((spec.rate as f64 * spec.duration_s).round() as u64).max(1)
        }
        _ => spec.records,
    }
}

/// The send schedule of a fixed-rate run: record `i` is due at `start + i / rate`.
///
/// A record's latency runs from the moment its send call starts ([`Pacer::sending`], stamped
/// just before the call) to the moment the caller sees its acknowledgement: the same span for
/// every client. It does not run from the schedule: the pacers' own timers differ (tokio's
/// rounds a deadline up to its next millisecond tick and fires up to 2 ms late, a thread's
/// `sleep` wakes within microseconds), and their lateness is not the client's. A client that
/// falls behind still shows it: a send call that waits for buffer space counts from its start.
#[derive(Debug)]
pub struct Pacer {
    pub start: Instant,
    pub rate: f64,
    pub total: u64,
    /// Per record: when its send call started, in µs from `start` (filled by `sending`).
    sent_us: Vec<AtomicU32>,
}

impl Pacer {
    pub fn new(rate: u64, total: u64) -> Pacer {
        Pacer {
            start: Instant::now(),
            rate: rate.max(1) as f64,
            total,
            sent_us: (0..total).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// Records due by now (all records with a scheduled time not after `now`).
    pub fn due(&self, now: Instant) -> u64 {
        let n = (now.duration_since(self.start).as_secs_f64() * self.rate) as u64 + 1;
        n.min(self.total)
    }

    /// When record `i` should be sent.
    pub fn scheduled(&self, i: u64) -> Instant {
        self.start + Duration::from_secs_f64(i as f64 / self.rate)
    }

    /// Stamps record `i`'s send call as starting now; call it just before the send.
    #[inline]
    pub fn sending(&self, i: u64) {
        if let Some(slot) = self.sent_us.get(i as usize) {
            slot.store(micros(self.start.elapsed()), Ordering::Relaxed);
        }
    }

    /// Microseconds from the start of record `i`'s send call to `now`.
    pub fn latency_us(&self, i: u64, now: Instant) -> u32 {
        let sent = self
            .sent_us
            .get(i as usize)
            .map_or(0, |s| s.load(Ordering::Relaxed));
        micros(now.saturating_duration_since(self.start)).saturating_sub(sent)
    }
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

/// Delivery futures of a throughput run, kept in send order and reaped from the front: the
/// futures-based counterpart of a delivery callback, with no allocation or waker per record
/// (a `FuturesUnordered` would add both to the client's measured cost). Latency runs use a
/// `FuturesUnordered` instead, so that every acknowledgement is seen when it arrives.
pub struct InOrder<F> {
    queue: VecDeque<F>,
    pub delivered: u64,
    pub errors: u64,
}

impl<F, T, E> InOrder<F>
where
    F: Future<Output = Result<T, E>> + Unpin,
{
    pub fn new() -> Self {
        InOrder {
            queue: VecDeque::new(),
            delivered: 0,
            errors: 0,
        }
    }

    pub fn push(&mut self, f: F) {
        self.queue.push_back(f);
    }

    fn tally(&mut self, r: Result<T, E>) {
        match r {
            Ok(_) => self.delivered += 1,
            Err(_) => self.errors += 1,
        }
    }

    /// Takes the resolved futures at the front; `done` tells cheaply whether one is resolved
    /// (for futures that cannot tell, `|_| true` polls the front once).
    pub fn reap_ready(&mut self, done: impl Fn(&F) -> bool) {
        while let Some(front) = self.queue.front_mut() {
            if !done(front) {
                break;
            }
            match front.now_or_never() {
                Some(r) => {
                    self.queue.pop_front();
                    self.tally(r);
                }
                None => break,
            }
        }
    }

    /// Waits for the oldest future (to make room when a client's queue is full).
    pub async fn wait_one(&mut self) {
        if let Some(f) = self.queue.pop_front() {
            let r = f.await;
            self.tally(r);
        }
    }

    /// Waits for every remaining future.
    pub async fn drain(&mut self) {
        while let Some(f) = self.queue.pop_front() {
            let r = f.await;
            self.tally(r);
        }
    }
}

/// Percentiles of a set of latencies in microseconds.
pub fn percentiles(mut us: Vec<u32>) -> Option<Latency> {
    if us.is_empty() {
        return None;
    }
    us.sort_unstable();
    let at = |q: f64| {
        let idx = ((us.len() as f64 * q).ceil() as usize).clamp(1, us.len()) - 1;
        us[idx] as f64
    };
    Some(Latency {
        p50_us: at(0.50),
        p99_us: at(0.99),
        p999_us: at(0.999),
        max_us: *us.last().unwrap() as f64,
    })
}

/// Builds the result of a produce run.
pub fn produce_result(
    spec: &ChildSpec,
    delivered: u64,
    errors: u64,
    elapsed: Duration,
    latencies: Option<Vec<u32>>,
) -> ChildResult {
    ChildResult {
        records: delivered,
        bytes: delivered * spec.value_size as u64,
        elapsed_s: elapsed.as_secs_f64(),
        first_record_ms: None,
        latency: latencies.and_then(percentiles),
        errors,
        checksum: None,
        warmup: crate::model::WARMUP_RECORDS,
        vm_hwm_kib: None,
    }
}

/// Builds the result of a consume or first-record run. `elapsed` runs from creating the
/// consumer (subscribe) to the last record; `first` from there to the first record.
pub fn consume_result(check: &ConsumeCheck, first: Duration, elapsed: Duration) -> ChildResult {
    ChildResult {
        records: check.count,
        bytes: check.bytes,
        elapsed_s: elapsed.as_secs_f64(),
        first_record_ms: Some(first.as_secs_f64() * 1e3),
        latency: None,
        errors: 0,
        checksum: Some(check.checksum),
        warmup: 0,
        vm_hwm_kib: None,
    }
}

/// How many records a consume-type workload reads before it stops.
pub fn consume_target(spec: &ChildSpec) -> u64 {
    match spec.workload {
        WorkloadKind::FirstRecord => 1,
        _ => spec.records,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let l = percentiles((1..=1000).collect()).unwrap();
        assert_eq!(l.p50_us, 500.0);
        assert_eq!(l.p99_us, 990.0);
        assert_eq!(l.p999_us, 999.0);
        assert_eq!(l.max_us, 1000.0);
        assert!(percentiles(vec![]).is_none());
    }

    #[test]
    fn pacer_counts_due_records() {
        let p = Pacer::new(1000, 10);
        assert_eq!(p.due(p.start), 1);
        assert_eq!(p.due(p.start + Duration::from_millis(4)), 5);
        assert_eq!(p.due(p.start + Duration::from_secs(5)), 10);
        assert_eq!(p.scheduled(3) - p.start, Duration::from_millis(3));
        p.sending(3);
        let later = Instant::now() + Duration::from_millis(7);
        assert!(p.latency_us(3, later) >= 7_000);
        // Measured from the stamp, which is not before the schedule's start.
        assert!(p.latency_us(3, later) <= p.latency_us(2, later));
    }
}
