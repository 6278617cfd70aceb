//! Per-partition batches waiting to be sent, and the byte budget across all of them.
//!
//! Each partition has one open batch (records are encoded into it at enqueue, under the
//! partition's lock, held for the encode only), a queue of closed batches, and at most one
//! batch in flight (so a retried batch can never be overtaken: per-partition order holds).
//! A batch closes when the next record would not fit (`batch.size`), when it has waited
//! `linger`, or on flush/close.
//!
//! The budget (`queue.buffering.max.kbytes`) counts every record's reserved size from enqueue
//! until its batch is resolved; [`Accumulator::reserve`] waits for room and
//! [`Accumulator::try_reserve`] refuses.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::batch::{BatchBuilder, BATCH_HEADER_SIZE};
use super::delivery::{BatchCompletion, CompletionGuard, DeliveryFuture};
use crate::config::Compression;
use crate::error::{Error, Result};
use crate::record::Record;

/// Settings the accumulator needs, copied from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) linger: Duration,
    /// Largest batch: `min(batch.size, message.max.bytes)`.
    pub(crate) batch_max_bytes: usize,
    pub(crate) buffer_max_bytes: usize,
    pub(crate) compression: Compression,
}

/// Counters behind [`ProducerMetrics`](super::ProducerMetrics).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) enqueued: AtomicU64,
    pub(crate) records_sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) batches_sent: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) records_failed: AtomicU64,
    pub(crate) buffered_peak: AtomicUsize,
}

/// A batch's payload: still being filled, or encoded (and kept for resends).
#[derive(Debug)]
pub(crate) enum Payload {
    Open(BatchBuilder),
    Encoded(Bytes),
}

/// A closed batch, queued or in flight.
#[derive(Debug)]
pub(crate) struct ReadyBatch {
    pub(crate) payload: Payload,
    pub(crate) records: i32,
    /// Budget bytes reserved by its records; released when it is resolved.
    pub(crate) reserved: usize,
    pub(crate) created: Instant,
    /// Failed attempts so far.
    pub(crate) attempts: u32,
    /// Not to be sent before this (backoff after a failure).
    pub(crate) retry_at: Option<Instant>,
    pub(crate) completion: CompletionGuard,
}

impl ReadyBatch {
    /// Encoded size (before compression when not yet encoded).
    pub(crate) fn size(&self) -> usize {
        match &self.payload {
            Payload::Open(b) => b.size(),
            Payload::Encoded(b) => b.len(),
        }
    }

    /// Encodes the batch (compressing when configured) unless done already.
    pub(crate) fn encode(&mut self, compression: Compression) -> Result<Bytes> {
        let payload = std::mem::replace(&mut self.payload, Payload::Encoded(Bytes::new()));
        let bytes = match payload {
            Payload::Open(builder) => builder.finish(compression)?,
            Payload::Encoded(b) => b,
        };
        self.payload = Payload::Encoded(bytes.clone());
        Ok(bytes)
    }
}

#[derive(Debug)]
struct OpenBatch {
    builder: BatchBuilder,
    reserved: usize,
    created: Instant,
    completion: CompletionGuard,
}

impl OpenBatch {
    fn close(self) -> ReadyBatch {
        ReadyBatch {
            records: self.builder.len(),
            payload: Payload::Open(self.builder),
            reserved: self.reserved,
            created: self.created,
            attempts: 0,
            retry_at: None,
            completion: self.completion,
        }
    }
}

/// One partition's queue.
#[derive(Debug, Default)]
pub(crate) struct PartitionQueue {
    open: Option<OpenBatch>,
    closed: VecDeque<ReadyBatch>,
    in_flight: Option<Arc<BatchCompletion>>,
    /// Size of the last batch, to size the next one's buffer.
    last_size: usize,
}

/// One topic's partitions.
#[derive(Debug)]
pub(crate) struct TopicQueues {
    pub(crate) name: Arc<str>,
    /// The name as the produce request carries it (cheap to clone).
    pub(crate) wire_name: TopicName,
    partitions: Box<[Mutex<PartitionQueue>]>,
    /// The sticky partition for records without a key.
    sticky: AtomicI32,
    /// Partitions last seen without a leader: records without a key avoid them (as the Java
    /// client does), unless no partition has one.
    leaderless: Box<[AtomicBool]>,
}

impl TopicQueues {
    pub(crate) fn partition_count(&self) -> i32 {
        self.partitions.len() as i32
    }

    /// Records whether `partition` has a leader (from metadata, by the sender).
    pub(crate) fn set_has_leader(&self, partition: i32, has_leader: bool) {
        if let Some(flag) = self.leaderless.get(partition as usize) {
            flag.store(!has_leader, Ordering::Relaxed);
        }
    }

    /// The next partition for keyless records after `current`: the next one with a leader,
    /// or simply the next one when none has.
    fn next_sticky(&self, current: i32) -> i32 {
        let n = self.partition_count();
        (1..=n)
            .map(|step| (current + step) % n)
            .find(|p| !self.leaderless[*p as usize].load(Ordering::Relaxed))
            .unwrap_or((current + 1) % n)
    }

    fn lock(&self, partition: i32) -> MutexGuard<'_, PartitionQueue> {
        self.partitions[partition as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// A record ready to be appended: its encoded body size, reserved bytes and the caller's
/// timestamp (`None`: the producer's coarse clock, see [`Accumulator::clock_ms`]).
pub(crate) struct Prepared<'a> {
    pub(crate) record: &'a Record,
    pub(crate) body: usize,
    pub(crate) reserved: usize,
    pub(crate) timestamp: Option<i64>,
}

/// How early a lingering batch may go: tokio's timer has a 1 ms granularity and rounds a
/// deadline *up* to the next tick (plus the wake-up), which made `linger.ms = 5` wait 5–6 ms.
/// The sender sleeps until `deadline - TIMER_SLACK` and sends what is due within the slack, so
/// a batch lingers between `linger - 1 ms` and `linger`.
pub(crate) const TIMER_SLACK: Duration = Duration::from_millis(1);

/// Most batch buffers kept for reuse.
const POOL_MAX: usize = 4;

/// While anything is queued, the sender ticks (and reads the clock) at least this often.
pub(crate) const CLOCK_TICK: Duration = Duration::from_millis(10);

/// Now, in milliseconds since the Unix epoch.
#[inline]
pub(crate) fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// All partitions' batches and the byte budget.
#[derive(Debug)]
pub(crate) struct Accumulator {
    pub(crate) settings: Settings,
    topics: RwLock<HashMap<Arc<str>, Arc<TopicQueues>>>,
    buffered: AtomicUsize,
    /// Budget bytes were released.
    space: Notify,
    /// Callers waiting for budget bytes: lingering batches are sent at once meanwhile (as
    /// the Java client does when its buffer is exhausted).
    waiting: AtomicUsize,
    /// Something for the sender: a new batch (linger clock started), a full batch, a batch
    /// back from the broker, flush, close.
    pub(crate) wake_sender: Notify,
    /// Appends started but not finished (a `try_send` learning its topic in the background):
    /// the sender keeps running until they are done, so their records are not stranded.
    deferred: AtomicUsize,
    /// Send everything now, linger or not (close / last producer dropped).
    closing: AtomicBool,
    /// Buffers of acknowledged batches, reused for new batches (at most [`POOL_MAX`]): a
    /// fresh 1 MiB buffer per batch cost page faults on every batch.
    pool: Mutex<Vec<BytesMut>>,
    /// A coarse wall clock (ms since the epoch) for records without a timestamp: read when a
    /// batch is opened, on every sender tick (at least every [`CLOCK_TICK`] while anything is
    /// queued) and when a batch is resolved, instead of once per record (a clock read per
    /// record was 8–10% of the producer's CPU). A record's create time is thus at most
    /// about one tick old; the records of a batch mostly share one timestamp (delta 0).
    clock_ms: AtomicI64,
    /// No more records accepted.
    pub(crate) closed: AtomicBool,
    pub(crate) counters: Counters,
}

impl Accumulator {
    pub(crate) fn new(settings: Settings) -> Arc<Self> {
        Arc::new(Accumulator {
            settings,
            topics: RwLock::new(HashMap::new()),
            buffered: AtomicUsize::new(0),
            space: Notify::new(),
            waiting: AtomicUsize::new(0),
            deferred: AtomicUsize::new(0),
            wake_sender: Notify::new(),
            closing: AtomicBool::new(false),
            clock_ms: AtomicI64::new(now_millis()),
            pool: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            counters: Counters::default(),
        })
    }

    /// Reads the wall clock into the coarse clock; returns it.
    #[inline]
    pub(crate) fn tick_clock(&self) -> i64 {
        let now = now_millis();
        self.clock_ms.fetch_max(now, Ordering::Relaxed);
        now
    }

    /// Keeps the buffer of a resolved batch for a later batch (when it is not shared any
    /// more and the pool has room).
    pub(crate) fn recycle(&self, data: Bytes) {
        let Ok(buf) = data.try_into_mut() else {
            return;
        };
        let largest = self.settings.batch_max_bytes.max(BATCH_HEADER_SIZE) + 64;
        if !(4 << 10..=largest).contains(&buf.capacity()) {
            return;
        }
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL_MAX {
            pool.push(buf);
        }
    }

    /// A buffer for a new batch: a recycled one, or a new one of `capacity` bytes.
    fn batch_buffer(&self, capacity: usize) -> BatchBuilder {
        let recycled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match recycled {
            Some(buf) => BatchBuilder::with_buffer(buf),
            None => BatchBuilder::new(capacity),
        }
    }

    /// The coarse clock (see `clock_ms`).
    #[inline]
    pub(crate) fn clock_ms(&self) -> i64 {
        self.clock_ms.load(Ordering::Relaxed)
    }

    /// Bytes reserved by records not yet resolved.
    pub(crate) fn buffered(&self) -> usize {
        self.buffered.load(Ordering::Relaxed)
    }

    /// Runs `f` with the queues of `topic`, if the topic is known.
    #[inline]
    pub(crate) fn with_topic<R>(
        &self,
        topic: &str,
        f: impl FnOnce(&TopicQueues) -> R,
    ) -> Option<R> {
        let topics = self.topics.read().unwrap_or_else(|p| p.into_inner());
        topics.get(topic).map(|t| f(t))
    }

    /// Registers `topic` with `partitions` partitions (a second registration keeps the first).
    pub(crate) fn add_topic(&self, topic: &str, partitions: usize) {
        let mut topics = self.topics.write().unwrap_or_else(|p| p.into_inner());
        if topics.contains_key(topic) {
            return;
        }
        let name: Arc<str> = Arc::from(topic);
        let queues = TopicQueues {
            name: Arc::clone(&name),
            wire_name: TopicName(StrBytes::from_string(topic.to_string())),
            partitions: (0..partitions.max(1))
                .map(|_| Mutex::new(PartitionQueue::default()))
                .collect(),
            sticky: AtomicI32::new(initial_sticky(partitions)),
            leaderless: (0..partitions.max(1))
                .map(|_| AtomicBool::new(false))
                .collect(),
        };
        topics.insert(name, Arc::new(queues));
    }

    /// The queues of `topic`, if known (tests).
    #[cfg(test)]
    pub(crate) fn topic(&self, topic: &str) -> Option<Arc<TopicQueues>> {
        let topics = self.topics.read().unwrap_or_else(|p| p.into_inner());
        topics.get(topic).cloned()
    }

    fn topics(&self) -> Vec<Arc<TopicQueues>> {
        self.topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Reserves `n` budget bytes if they fit.
    #[inline]
    pub(crate) fn try_reserve(&self, n: usize) -> Result<()> {
        let limit = self.settings.buffer_max_bytes;
        let mut current = self.buffered.load(Ordering::Relaxed);
        loop {
            let next = current + n;
            if next > limit {
                return Err(Error::QueueFull {
                    buffered: current,
                    limit,
                });
            }
            match self.buffered.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    let peak = &self.counters.buffered_peak;
                    if next > peak.load(Ordering::Relaxed) {
                        peak.fetch_max(next, Ordering::Relaxed);
                    }
                    return Ok(());
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Reserves `n` budget bytes, waiting for room (backpressure).
    pub(crate) async fn reserve(&self, n: usize) -> Result<()> {
        if self.try_reserve(n).is_ok() {
            return Ok(());
        }
        // There may be nothing in flight to free room: have the sender send what lingers.
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        // Decremented also when the caller gives up waiting (the future is dropped).
        let _waiting = Waiting(&self.waiting);
        self.wake_sender.notify_one();
        loop {
            let released = self.space.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if self.try_reserve(n).is_ok() {
                return Ok(());
            }
            if self.closed.load(Ordering::Acquire) {
                return Err(Error::Closed("producer"));
            }
            released.await;
        }
    }

    /// Gives back budget bytes of a resolved batch.
    pub(crate) fn release(&self, n: usize) {
        self.buffered.fetch_sub(n, Ordering::AcqRel);
        self.space.notify_waiters();
    }

    /// Appends a prepared record to `partition` (or the sticky partition when `None`).
    /// Returns its delivery future. The caller reserved `p.reserved` bytes.
    #[inline]
    pub(crate) fn append(
        &self,
        topic: &TopicQueues,
        partition: Option<i32>,
        p: &Prepared<'_>,
    ) -> DeliveryFuture {
        self.counters.enqueued.fetch_add(1, Ordering::Relaxed);
        match partition {
            Some(partition) => self
                .append_to(topic, partition, p, false)
                .expect("no abort"),
            None => {
                // Sticky: fill the current partition's batch; when it would need a new batch,
                // move on to the next partition first (as the Java client does).
                let current = topic.sticky.load(Ordering::Relaxed);
                if let Some(f) = self.append_to(topic, current, p, true) {
                    return f;
                }
                let next = topic.next_sticky(current);
                let _ = topic.sticky.compare_exchange(
                    current,
                    next,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                let chosen = topic.sticky.load(Ordering::Relaxed);
                self.append_to(topic, chosen, p, false).expect("no abort")
            }
        }
    }

    /// Appends under the partition's lock. With `abort_if_new`, returns `None` instead of
    /// starting a new batch.
    #[inline]
    fn append_to(
        &self,
        topic: &TopicQueues,
        partition: i32,
        p: &Prepared<'_>,
        abort_if_new: bool,
    ) -> Option<DeliveryFuture> {
        let max = self.settings.batch_max_bytes;
        let mut wake = false;
        let future = {
            let mut q = topic.lock(partition);
            let fits = q
                .open
                .as_ref()
                .is_some_and(|o| o.builder.size() + p.reserved <= max || o.builder.len() == 0);
            if !fits {
                if let Some(full) = q.open.take() {
                    q.last_size = full.builder.size();
                    q.closed.push_back(full.close());
                    wake = true;
                }
                if abort_if_new {
                    drop(q);
                    if wake {
                        self.wake_sender.notify_one();
                    }
                    return None;
                }
                let capacity = q
                    .last_size
                    .max(16 << 10)
                    .min(max.max(BATCH_HEADER_SIZE) + 64);
                if p.timestamp.is_none() {
                    self.tick_clock();
                }
                q.open = Some(OpenBatch {
                    builder: self.batch_buffer(capacity),
                    reserved: 0,
                    created: Instant::now(),
                    completion: CompletionGuard(BatchCompletion::new(
                        Arc::clone(&topic.name),
                        partition,
                    )),
                });
                wake = true;
            }
            let open = q.open.as_mut().expect("opened above");
            let r = p.record;
            let timestamp = p.timestamp.unwrap_or_else(|| self.clock_ms());
            let delta = open.builder.append(
                p.body,
                timestamp,
                r.key.as_deref(),
                r.value.as_deref(),
                &r.headers,
            );
            open.reserved += p.reserved;
            DeliveryFuture::batch(Arc::clone(&open.completion.0), delta, timestamp)
        };
        if wake {
            self.wake_sender.notify_one();
        }
        Some(future)
    }

    /// Takes the batches the sender may send now: per partition the first closed batch whose
    /// backoff is over, or the open batch once it lingered long enough (at once when
    /// `closing`). Partitions with a batch in flight are skipped. Also returns when the next
    /// batch becomes due, and whether everything is empty.
    pub(crate) fn drain(&self, now: Instant) -> Drained {
        let closing =
            self.closing.load(Ordering::Acquire) || self.waiting.load(Ordering::Acquire) > 0;
        let linger = self.settings.linger;
        // Due within the timer's granularity counts as due (see `TIMER_SLACK`).
        let horizon = now + TIMER_SLACK;
        let mut out = Drained {
            ready: Vec::new(),
            next_due: None,
            empty: true,
        };
        let due = |at: Instant, out: &mut Drained| {
            out.next_due = Some(out.next_due.map_or(at, |d: Instant| d.min(at)));
        };
        for topic in self.topics() {
            for partition in 0..topic.partition_count() {
                let mut q = topic.lock(partition);
                if q.in_flight.is_some() {
                    out.empty = false;
                    continue;
                }
                let taken = if let Some(front) = q.closed.front() {
                    out.empty = false;
                    match front.retry_at {
                        Some(at) if at > horizon => {
                            due(at, &mut out);
                            None
                        }
                        _ => q.closed.pop_front(),
                    }
                } else if let Some(open) = &q.open {
                    out.empty = false;
                    let at = open.created + linger;
                    if closing || at <= horizon {
                        let open = q.open.take().expect("checked");
                        q.last_size = open.builder.size();
                        Some(open.close())
                    } else {
                        due(at, &mut out);
                        None
                    }
                } else {
                    None
                };
                if let Some(batch) = taken {
                    q.in_flight = Some(Arc::clone(&batch.completion.0));
                    drop(q);
                    out.ready.push((Arc::clone(&topic), partition, batch));
                }
            }
        }
        out
    }

    /// Puts a batch back at the front of its partition's queue (to be retried).
    pub(crate) fn requeue(&self, topic: &TopicQueues, partition: i32, batch: ReadyBatch) {
        {
            let mut q = topic.lock(partition);
            q.in_flight = None;
            q.closed.push_front(batch);
        }
        self.wake_sender.notify_one();
    }

    /// Puts the two halves of a split batch back at the front of its partition's queue.
    pub(crate) fn requeue_split(
        &self,
        topic: &TopicQueues,
        partition: i32,
        first: ReadyBatch,
        second: ReadyBatch,
    ) {
        {
            let mut q = topic.lock(partition);
            q.in_flight = None;
            q.closed.push_front(second);
            q.closed.push_front(first);
        }
        self.wake_sender.notify_one();
    }

    /// A batch was resolved: frees its partition for the next one and its budget bytes.
    pub(crate) fn finished(&self, topic: &TopicQueues, partition: i32, reserved: usize) {
        topic.lock(partition).in_flight = None;
        self.tick_clock();
        self.release(reserved);
        self.wake_sender.notify_one();
    }

    /// Closes every open batch and returns the completions of everything not yet resolved.
    pub(crate) fn flush_all(&self) -> Vec<Arc<BatchCompletion>> {
        let mut pending = Vec::new();
        for topic in self.topics() {
            for partition in 0..topic.partition_count() {
                let mut q = topic.lock(partition);
                if let Some(open) = q.open.take() {
                    q.last_size = open.builder.size();
                    q.closed.push_back(open.close());
                }
                pending.extend(q.in_flight.iter().cloned());
                pending.extend(q.closed.iter().map(|b| Arc::clone(&b.completion.0)));
            }
        }
        self.wake_sender.notify_one();
        pending
    }

    /// From now on everything is sent without lingering; the sender stops once all is sent.
    pub(crate) fn start_closing(&self) {
        self.closing.store(true, Ordering::Release);
        self.wake_sender.notify_one();
    }

    /// Whether the sender may stop: closing, and no append pending. Checked *before* a
    /// drain that finds everything empty: an append finished before this check is seen by
    /// that drain.
    pub(crate) fn may_stop(&self) -> bool {
        self.closing.load(Ordering::SeqCst) && self.deferred.load(Ordering::SeqCst) == 0
    }

    /// Records enqueued and not yet resolved.
    pub(crate) fn queue_depth(&self) -> u64 {
        let c = &self.counters;
        let done =
            c.records_sent.load(Ordering::Relaxed) + c.records_failed.load(Ordering::Relaxed);
        c.enqueued.load(Ordering::Relaxed).saturating_sub(done)
    }
}

/// A pending append (see `Accumulator::deferred`); dropping it ends it and wakes the sender.
pub(crate) struct DeferredAppend(Arc<Accumulator>);

impl DeferredAppend {
    pub(crate) fn new(acc: Arc<Accumulator>) -> Self {
        acc.deferred.fetch_add(1, Ordering::SeqCst);
        DeferredAppend(acc)
    }
}

impl Drop for DeferredAppend {
    fn drop(&mut self) {
        self.0.deferred.fetch_sub(1, Ordering::SeqCst);
        self.0.wake_sender.notify_one();
    }
}

/// What [`Accumulator::drain`] found.
pub(crate) struct Drained {
    pub(crate) ready: Vec<(Arc<TopicQueues>, i32, ReadyBatch)>,
    pub(crate) next_due: Option<Instant>,
    pub(crate) empty: bool,
}

/// A starting sticky partition that differs between producers (so that many producers do
/// not all start on partition 0).
fn initial_sticky(partitions: usize) -> i32 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0) as usize;
    (seed % partitions.max(1)) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc(batch_max: usize, buffer: usize) -> Arc<Accumulator> {
        Accumulator::new(Settings {
            linger: Duration::from_millis(5),
            batch_max_bytes: batch_max,
            buffer_max_bytes: buffer,
            compression: Compression::None,
        })
    }

    fn prepared(r: &Record) -> Prepared<'_> {
        let body =
            super::super::batch::record_body_size(r.key.as_deref(), r.value.as_deref(), &r.headers);
        Prepared {
            record: r,
            body,
            reserved: super::super::batch::record_size_upper_bound(body),
            timestamp: Some(1),
        }
    }

    #[test]
    fn budget_refuses_beyond_the_limit_and_frees_on_release() {
        let a = acc(1000, 100);
        a.try_reserve(60).unwrap();
        assert!(matches!(a.try_reserve(60), Err(Error::QueueFull { .. })));
        a.release(60);
        a.try_reserve(60).unwrap();
        assert_eq!(a.buffered(), 60);
    }

    #[test]
    fn sticky_fills_a_batch_then_moves_on() {
        let a = acc(300, 1 << 20);
        a.add_topic("t", 3);
        let r = Record::new("t", vec![0u8; 50]);
        let p = prepared(&r);
        let mut partitions = Vec::new();
        for _ in 0..10 {
            let f = a.with_topic("t", |t| a.append(t, None, &p)).unwrap();
            partitions.push(format!("{f:?}"));
        }
        let drained = a.drain(Instant::now() + Duration::from_secs(1));
        // Batches of at most 300 bytes: ~3 records each, spread over partitions.
        assert!(drained.ready.len() >= 2, "{partitions:?}");
        let parts: std::collections::HashSet<i32> =
            drained.ready.iter().map(|(_, p, _)| *p).collect();
        assert!(parts.len() >= 2);
        // In flight: nothing more until resolved.
        assert!(a.drain(Instant::now() + Duration::from_secs(1)).ready.len() <= 1);
    }
}
