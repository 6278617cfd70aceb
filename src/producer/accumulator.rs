//! Per-partition batches waiting to be sent, and the byte budget across all of them.
//!
//! Each partition has one open batch (records are encoded into it at enqueue, under the
//! partition's lock, held for the encode only), a queue of closed batches, and up to
//! `max.in.flight` batches in flight. A batch that failed goes back into the queue in its
//! place (by the order its partition first sent it), ahead of every newer batch, and is sent
//! again only when nothing else of its partition is in flight, one at a time: a retried batch
//! is never overtaken by a later one that the broker might accept first. With idempotence the
//! broker refuses such a later batch (OUT_OF_ORDER_SEQUENCE_NUMBER) and it is resent after
//! it; each batch gets its base sequence number when it is first taken for sending.
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
use super::idempotence::{add_sequence, Current, Sequence};
use crate::config::Compression;
use crate::error::{Error, Result};
use crate::record::Record;
use crate::wire::TopicMetadata;

/// Settings the accumulator needs, copied from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) linger: Duration,
    /// Largest batch: `min(batch.size, message.max.bytes)`.
    pub(crate) batch_max_bytes: usize,
    pub(crate) buffer_max_bytes: usize,
    pub(crate) compression: Compression,
    /// Batches in flight per partition (`max.in.flight.requests.per.connection`).
    pub(crate) max_in_flight: usize,
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
    /// Its place in its partition once first taken for sending (the partition's count, and
    /// for a split batch's part its first record's delta): a batch that comes back is queued
    /// by it. `Some` also marks a batch sent before (a resend).
    pub(crate) order: Option<(u64, i32)>,
    /// The idempotent producer's sequence, assigned when first taken for sending (again after
    /// a new producer id or epoch).
    pub(crate) sequence: Option<Sequence>,
    /// The producer fields the encoded payload carries.
    stamped: Option<Sequence>,
}

impl ReadyBatch {
    /// Encoded size (before compression when not yet encoded).
    pub(crate) fn size(&self) -> usize {
        match &self.payload {
            Payload::Open(b) => b.size(),
            Payload::Encoded(b) => b.len(),
        }
    }

    /// A batch that was never sent.
    pub(crate) fn new(
        payload: Payload,
        records: i32,
        reserved: usize,
        created: Instant,
        completion: CompletionGuard,
    ) -> Self {
        ReadyBatch {
            payload,
            records,
            reserved,
            created,
            attempts: 0,
            retry_at: None,
            completion,
            order: None,
            sequence: None,
            stamped: None,
        }
    }

    /// Encodes the batch (compressing when configured) unless done already; an encoded batch
    /// whose sequence changed since (new producer id or epoch) gets its header rewritten.
    pub(crate) fn encode(&mut self, compression: Compression) -> Result<Bytes> {
        let payload = std::mem::replace(&mut self.payload, Payload::Encoded(Bytes::new()));
        let stamp = self.sequence.map(|s| s.stamp());
        let bytes = match payload {
            Payload::Open(builder) => builder.finish(compression, stamp),
            Payload::Encoded(b) if self.stamped == self.sequence => Ok(b),
            Payload::Encoded(b) => {
                let restamped = super::batch::restamp(&b, stamp);
                if restamped.is_err() {
                    self.payload = Payload::Encoded(b);
                }
                restamped
            }
        }?;
        self.stamped = self.sequence;
        self.payload = Payload::Encoded(bytes.clone());
        Ok(bytes)
    }

    /// Resolves the batch as failed for good with `error`; its records are handed back from
    /// its bytes (a batch never encoded is closed uncompressed for that).
    pub(crate) fn fail(&mut self, error: Error) {
        let data = match std::mem::replace(&mut self.payload, Payload::Encoded(Bytes::new())) {
            Payload::Encoded(b) => b,
            Payload::Open(builder) => builder.finish(Compression::None, None).unwrap_or_default(),
        };
        self.completion.0.fail(error, data.clone());
        self.payload = Payload::Encoded(data);
    }
}

impl Drop for ReadyBatch {
    /// A batch dropped unresolved (the producer's runtime shut down, say) fails its records
    /// with [`Error::Closed`] and hands them back.
    fn drop(&mut self) {
        if !self.completion.0.is_set() {
            tracing::warn!(
                topic = %self.completion.0.topic,
                partition = self.completion.0.partition,
                records = self.records,
                "producer stopped before a batch was acknowledged; its records fail"
            );
            self.fail(Error::Closed("producer (stopped before acknowledgement)"));
        }
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
        let records = self.builder.len();
        ReadyBatch::new(
            Payload::Open(self.builder),
            records,
            self.reserved,
            self.created,
            self.completion,
        )
    }
}

/// A batch in flight: its completion and the generation of its sequence (0 without
/// idempotence).
#[derive(Debug)]
struct InFlightEntry {
    completion: Arc<BatchCompletion>,
    generation: u64,
}

/// One partition's queue.
#[derive(Debug, Default)]
pub(crate) struct PartitionQueue {
    open: Option<OpenBatch>,
    /// Closed batches: resends first (by `order`), then new ones.
    closed: VecDeque<ReadyBatch>,
    in_flight: VecDeque<InFlightEntry>,
    /// Size of the last batch, to size the next one's buffer.
    last_size: usize,
    /// Batches of this partition taken for sending so far (their `order`).
    sent: u64,
    /// The generation `next_sequence` and `acked_sequence` belong to.
    generation: u64,
    /// The base sequence of the next new batch.
    next_sequence: i32,
    /// The sequence after the last acknowledged batch: the one the broker expects next.
    acked_sequence: i32,
}

impl Drop for PartitionQueue {
    fn drop(&mut self) {
        // An open batch dropped unresolved fails as a closed one does (with its records).
        if let Some(open) = self.open.take() {
            drop(open.close());
        }
    }
}

impl PartitionQueue {
    /// Puts a batch that came back into the queue in its place.
    fn insert_in_order(&mut self, batch: ReadyBatch) {
        let at = self
            .closed
            .iter()
            .position(|b| b.order.is_none_or(|o| Some(o) > batch.order))
            .unwrap_or(self.closed.len());
        self.closed.insert(at, batch);
    }

    fn remove_in_flight(&mut self, completion: &Arc<BatchCompletion>) {
        if let Some(i) = self
            .in_flight
            .iter()
            .position(|e| Arc::ptr_eq(&e.completion, completion))
        {
            self.in_flight.remove(i);
        }
    }
}

/// One topic's partitions.
#[derive(Debug)]
pub(crate) struct TopicQueues {
    pub(crate) name: Arc<str>,
    /// The name as the produce request carries it (cheap to clone).
    pub(crate) wire_name: TopicName,
    /// Shared with the topic's next `TopicQueues` when the topic grows (see
    /// [`Accumulator::learn_partitions`]): a batch in flight resolves into the same queue
    /// whichever of the two its sender holds.
    partitions: Box<[Arc<Mutex<PartitionQueue>>]>,
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

/// How early a lingering batch may go: the sender wakes at the earliest deadline, to the
/// microsecond (`deadline::DeadlineTimer`), and takes every batch due within this slack too,
/// so that batches of several partitions due together share a request. A batch lingers
/// between `linger - TIMER_SLACK` and `linger` plus the wake-up (0.12 ms at p50 in the benchmark).
pub(crate) const TIMER_SLACK: Duration = Duration::from_micros(100);

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
    /// Notified when `deferred` drops to zero.
    deferred_done: Notify,
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
    /// A record named a partition beyond its topic's known count: the sender refreshes the
    /// metadata of the producer's topics now instead of at `metadata.max.age.ms`.
    refresh_wanted: AtomicBool,
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
            deferred_done: Notify::new(),
            wake_sender: Notify::new(),
            closing: AtomicBool::new(false),
            clock_ms: AtomicI64::new(now_millis()),
            pool: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            refresh_wanted: AtomicBool::new(false),
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
        let builder = match recycled {
            Some(buf) => BatchBuilder::with_buffer(buf),
            None => BatchBuilder::new(capacity),
        };
        if crate::codec::codec_id(self.settings.compression) == 0 {
            builder
        } else {
            builder.without_running_crc()
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

    /// Registers `topic` with `partitions` partitions (a second registration only grows it,
    /// see [`learn_partitions`](Self::learn_partitions)).
    pub(crate) fn add_topic(&self, topic: &str, partitions: usize) {
        self.learn_partitions(topic, partitions);
    }

    /// Registers `topic` with `partitions` partitions, or grows a known topic to that many
    /// (from metadata). Kafka cannot shrink a topic: a smaller count (a broker whose metadata
    /// lags) is ignored. Returns the previous count when the topic grew.
    ///
    /// A grown topic gets a new `TopicQueues` that shares the existing partitions' queues
    /// (records already enqueued keep their partition and order) and adds empty ones; it
    /// replaces the old one under the topics' write lock, so an append sees either count,
    /// never a mix. The per-record path is unchanged: one read lock, one map lookup.
    pub(crate) fn learn_partitions(&self, topic: &str, partitions: usize) -> Option<usize> {
        let partitions = partitions.max(1);
        let mut topics = self.topics.write().unwrap_or_else(|p| p.into_inner());
        let (name, wire_name, mut queues, mut leaderless, sticky) = match topics.get(topic) {
            None => {
                let name: Arc<str> = Arc::from(topic);
                let wire_name = TopicName(StrBytes::from_string(topic.to_string()));
                let sticky = initial_sticky(partitions);
                (name, wire_name, Vec::new(), Vec::new(), sticky)
            }
            Some(known) if known.partitions.len() >= partitions => return None,
            Some(known) => (
                Arc::clone(&known.name),
                known.wire_name.clone(),
                known.partitions.to_vec(),
                known
                    .leaderless
                    .iter()
                    .map(|l| AtomicBool::new(l.load(Ordering::Relaxed)))
                    .collect(),
                known.sticky.load(Ordering::Relaxed),
            ),
        };
        let before = queues.len();
        queues.resize_with(partitions, Default::default);
        leaderless.resize_with(partitions, || AtomicBool::new(false));
        let grown = TopicQueues {
            name: Arc::clone(&name),
            wire_name,
            partitions: queues.into_boxed_slice(),
            sticky: AtomicI32::new(sticky),
            leaderless: leaderless.into_boxed_slice(),
        };
        topics.insert(name, Arc::new(grown));
        (before > 0).then_some(before)
    }

    /// Takes a topic's partition count and leaders from its metadata: registers the topic, or
    /// grows it (see [`learn_partitions`](Self::learn_partitions)), logging a growth. The
    /// count is that of the partitions listed with ids `0, 1, ...` (the broker lists every
    /// partition, sorted by `Cluster`), so nothing is sized by an id read off the wire.
    pub(crate) fn learn_metadata(&self, topic: &str, meta: &TopicMetadata) {
        let count = meta
            .partitions
            .iter()
            .enumerate()
            .take_while(|(i, p)| usize::try_from(p.id).is_ok_and(|id| id == *i))
            .count();
        if count == 0 {
            return;
        }
        if let Some(before) = self.learn_partitions(topic, count) {
            tracing::info!(
                topic,
                before,
                now = count,
                "the topic has more partitions: keyed records go to murmur2(key) % {count} from now on"
            );
        }
        self.with_topic(topic, |t| {
            for p in &meta.partitions {
                t.set_has_leader(p.id, p.leader >= 0 && p.error == 0);
            }
        });
    }

    /// Asks the sender for a metadata refresh of the producer's topics (a topic may have
    /// grown).
    pub(crate) fn want_metadata(&self) {
        self.refresh_wanted.store(true, Ordering::Release);
        self.wake_sender.notify_one();
    }

    /// Whether a metadata refresh was asked for since the last call.
    pub(crate) fn take_metadata_wanted(&self) -> bool {
        self.refresh_wanted.swap(false, Ordering::AcqRel)
    }

    /// The topics records were produced to (for the sender's metadata refresh).
    pub(crate) fn topic_names(&self) -> Vec<Arc<str>> {
        self.topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
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

    /// Takes the batches the sender may send now, per partition in order, up to
    /// `max_in_flight` in flight: closed batches whose backoff is over, then the open batch
    /// once it lingered long enough (at once when `closing`). A resend goes only when nothing
    /// else of its partition is in flight, and alone. Also returns when the next batch becomes
    /// due, and whether everything is empty.
    ///
    /// `producer`: `None` without idempotence; `Some(None)` while the idempotent producer has
    /// no id (nothing is taken); `Some(Some(current))`: new batches get sequence numbers of
    /// `current`, and a partition with batches of an older generation in flight waits for
    /// them before it sends (and re-numbers) anything.
    ///
    /// `gate`: the transactional producer's check that a partition is in the transaction; a
    /// partition with records it refuses sends nothing yet.
    pub(crate) fn drain(
        &self,
        now: Instant,
        producer: Option<Option<Current>>,
        gate: Option<&Gate<'_>>,
    ) -> Drained {
        let closing =
            self.closing.load(Ordering::Acquire) || self.waiting.load(Ordering::Acquire) > 0;
        let linger = self.settings.linger;
        let max_in_flight = self.settings.max_in_flight.max(1);
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
        let current = match producer {
            None => None,
            Some(Some(c)) => Some(c),
            Some(None) => {
                // No producer id yet: nothing can be sent; say whether anything waits.
                out.empty = self.topics().iter().all(|t| {
                    (0..t.partition_count()).all(|p| {
                        let q = t.lock(p);
                        q.open.is_none() && q.closed.is_empty() && q.in_flight.is_empty()
                    })
                });
                return out;
            }
        };
        let generation = current.map_or(0, |c| c.generation);
        for topic in self.topics() {
            for partition in 0..topic.partition_count() {
                let mut q = topic.lock(partition);
                if q.open.is_some() || !q.closed.is_empty() || !q.in_flight.is_empty() {
                    out.empty = false;
                }
                if q.in_flight.iter().any(|e| e.generation != generation) {
                    continue; // an older generation's batches are still out
                }
                if let Some(gate) = gate {
                    if (q.open.is_some() || !q.closed.is_empty()) && !gate(&topic.name, partition) {
                        continue; // not in the transaction yet
                    }
                }
                if q.generation != generation {
                    q.generation = generation;
                    q.next_sequence = 0;
                    q.acked_sequence = 0;
                }
                while q.in_flight.len() < max_in_flight {
                    let taken = if let Some(front) = q.closed.front() {
                        if front.order.is_some() && !q.in_flight.is_empty() {
                            break;
                        }
                        match front.retry_at {
                            Some(at) if at > horizon => {
                                due(at, &mut out);
                                break;
                            }
                            _ => q.closed.pop_front().expect("checked"),
                        }
                    } else if let Some(open) = &q.open {
                        let at = open.created + linger;
                        if closing || at <= horizon {
                            let open = q.open.take().expect("checked");
                            q.last_size = open.builder.size();
                            open.close()
                        } else {
                            due(at, &mut out);
                            break;
                        }
                    } else {
                        break;
                    };
                    let mut batch = taken;
                    let resend = batch.order.is_some();
                    if batch.order.is_none() {
                        batch.order = Some((q.sent, 0));
                        q.sent += 1;
                    }
                    if let Some(c) = current {
                        if batch.sequence.is_none_or(|s| s.generation != generation) {
                            batch.sequence = Some(Sequence {
                                generation,
                                producer_id: c.producer_id,
                                epoch: c.epoch,
                                base: q.next_sequence,
                                transactional: c.transactional,
                            });
                            q.next_sequence = add_sequence(q.next_sequence, batch.records);
                        }
                    }
                    q.in_flight.push_back(InFlightEntry {
                        completion: Arc::clone(&batch.completion.0),
                        generation,
                    });
                    out.ready.push((Arc::clone(&topic), partition, batch));
                    if resend {
                        break;
                    }
                }
            }
        }
        out
    }

    /// Puts a batch back into its partition's queue, in its place (to be resent).
    pub(crate) fn requeue(&self, topic: &TopicQueues, partition: i32, batch: ReadyBatch) {
        {
            let mut q = topic.lock(partition);
            q.remove_in_flight(&batch.completion.0);
            q.insert_in_order(batch);
        }
        self.wake_sender.notify_one();
    }

    /// Puts the two parts of a split batch (`original`) into its partition's queue, in its
    /// place.
    pub(crate) fn requeue_split(
        &self,
        topic: &TopicQueues,
        partition: i32,
        original: &Arc<BatchCompletion>,
        first: ReadyBatch,
        second: ReadyBatch,
    ) {
        {
            let mut q = topic.lock(partition);
            q.remove_in_flight(original);
            q.insert_in_order(first);
            q.insert_in_order(second);
        }
        self.wake_sender.notify_one();
    }

    /// A batch was resolved: frees its place in flight and its budget bytes; an acknowledged
    /// batch's sequence moves the partition's acknowledged sequence on.
    pub(crate) fn finished(
        &self,
        topic: &TopicQueues,
        partition: i32,
        completion: &Arc<BatchCompletion>,
        acked: Option<(Sequence, i32)>,
        reserved: usize,
    ) {
        {
            let mut q = topic.lock(partition);
            q.remove_in_flight(completion);
            if let Some((sequence, records)) = acked {
                if sequence.generation == q.generation {
                    q.acked_sequence = add_sequence(sequence.base, records);
                }
            }
        }
        self.tick_clock();
        self.release(reserved);
        self.wake_sender.notify_one();
    }

    /// Whether `sequence` is the one the broker expects next on this partition (nothing
    /// before it is unacknowledged): a sequence error for it is the broker's disagreement,
    /// not the echo of an earlier batch's failure.
    pub(crate) fn is_next_expected(
        &self,
        topic: &TopicQueues,
        partition: i32,
        sequence: Sequence,
    ) -> bool {
        let q = topic.lock(partition);
        q.generation == sequence.generation && q.acked_sequence == sequence.base
    }

    /// Fails every batch not yet in flight with `error` (a fatal producer error, or no
    /// producer id to be had); returns how many records failed.
    pub(crate) fn fail_queued(&self, error: &Error) -> u64 {
        let mut failed = 0u64;
        let mut released = 0usize;
        for topic in self.topics() {
            for partition in 0..topic.partition_count() {
                let batches: Vec<ReadyBatch> = {
                    let mut q = topic.lock(partition);
                    let mut batches: Vec<ReadyBatch> = q.closed.drain(..).collect();
                    batches.extend(q.open.take().map(OpenBatch::close));
                    batches
                };
                for mut b in batches {
                    failed += b.records as u64;
                    released += b.reserved;
                    b.fail(super::delivery::duplicate(error));
                }
            }
        }
        if failed > 0 {
            self.counters
                .records_failed
                .fetch_add(failed, Ordering::Relaxed);
            self.release(released);
        }
        failed
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
                pending.extend(q.in_flight.iter().map(|e| Arc::clone(&e.completion)));
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

    /// Waits until no append is pending (records waiting for their topic's metadata).
    pub(crate) async fn deferred_appended(&self) {
        loop {
            let done = self.deferred_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.deferred.load(Ordering::SeqCst) == 0 {
                return;
            }
            done.await;
        }
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
        if self.0.deferred.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.deferred_done.notify_waiters();
        }
        self.0.wake_sender.notify_one();
    }
}

/// Whether a partition's batches may be sent now (see [`Accumulator::drain`]).
pub(crate) type Gate<'a> = dyn Fn(&Arc<str>, i32) -> bool + 'a;

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
            max_in_flight: 1,
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
        let drained = a.drain(Instant::now() + Duration::from_secs(1), None, None);
        // Batches of at most 300 bytes: ~3 records each, spread over partitions.
        assert!(drained.ready.len() >= 2, "{partitions:?}");
        let parts: std::collections::HashSet<i32> =
            drained.ready.iter().map(|(_, p, _)| *p).collect();
        assert!(parts.len() >= 2);
        // In flight: nothing more until resolved.
        assert!(
            a.drain(Instant::now() + Duration::from_secs(1), None, None)
                .ready
                .len()
                <= 1
        );
    }

    #[test]
    fn a_topic_grows_and_never_shrinks_and_keeps_its_queued_batches() {
        let a = acc(1 << 20, 1 << 20);
        assert_eq!(a.learn_partitions("t", 2), None, "a new topic");
        let r = Record::new("t", vec![0u8; 10]);
        let p = prepared(&r);
        let queued = a.with_topic("t", |t| a.append(t, Some(1), &p)).unwrap();
        let old = a.topic("t").unwrap();
        assert_eq!(
            a.learn_partitions("t", 1),
            None,
            "a smaller count is ignored"
        );
        assert_eq!(
            a.learn_partitions("t", 2),
            None,
            "the same count changes nothing"
        );
        assert!(Arc::ptr_eq(&old, &a.topic("t").unwrap()));
        assert_eq!(a.learn_partitions("t", 5), Some(2));
        let grown = a.topic("t").unwrap();
        assert_eq!(grown.partition_count(), 5);
        assert_eq!(
            old.partition_count(),
            2,
            "a sender's old view keeps its count"
        );
        drop(a.with_topic("t", |t| a.append(t, Some(4), &p)).unwrap());
        // The record enqueued before the growth is still in partition 1, ahead of nothing
        // new; the new partition has its own.
        let mut ready = a
            .drain(Instant::now() + Duration::from_secs(1), None, None)
            .ready;
        ready.sort_by_key(|(_, p, _)| *p);
        let parts: Vec<i32> = ready.iter().map(|(_, p, _)| *p).collect();
        assert_eq!(parts, vec![1, 4]);
        // A batch taken from the grown view resolves through the old view into the same
        // queue (the queues are shared), which frees its place in flight.
        let (_, _, b1) = ready.remove(0);
        a.requeue(&old, 1, b1);
        let again = a
            .drain(Instant::now() + Duration::from_secs(1), None, None)
            .ready;
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].1, 1);
        drop(queued);
    }

    #[test]
    fn metadata_counts_listed_partitions_not_ids_read_off_the_wire() {
        use crate::wire::PartitionMetadata;
        let part = |id: i32| PartitionMetadata {
            id,
            leader: 1,
            leader_epoch: 0,
            error: 0,
        };
        let meta = |ids: &[i32]| TopicMetadata {
            error: 0,
            internal: false,
            partitions: ids.iter().map(|&id| part(id)).collect(),
        };
        let a = acc(1 << 20, 1 << 20);
        a.learn_metadata("t", &meta(&[0, 1]));
        assert_eq!(a.topic("t").unwrap().partition_count(), 2);
        // A hostile id does not size anything: only 0, 1, 2 count.
        a.learn_metadata("t", &meta(&[0, 1, 2, i32::MAX]));
        assert_eq!(a.topic("t").unwrap().partition_count(), 3);
        a.learn_metadata("t", &meta(&[0]));
        assert_eq!(a.topic("t").unwrap().partition_count(), 3, "never shrinks");
        a.learn_metadata("u", &meta(&[-1, 5]));
        assert!(a.topic("u").is_none(), "nothing usable listed");
    }

    #[test]
    fn five_in_flight_with_sequences_and_a_resend_goes_alone_in_its_place() {
        let a = Accumulator::new(Settings {
            linger: Duration::ZERO,
            batch_max_bytes: 200,
            buffer_max_bytes: 1 << 20,
            compression: Compression::None,
            max_in_flight: 5,
        });
        a.add_topic("t", 1);
        let r = Record::new("t", vec![0u8; 100]);
        let p = prepared(&r);
        for _ in 0..8 {
            drop(a.with_topic("t", |t| a.append(t, Some(0), &p)).unwrap());
        }
        let gen1 = Current {
            generation: 1,
            producer_id: 9,
            epoch: 0,
            transactional: false,
        };
        let later = Instant::now() + Duration::from_secs(1);
        assert!(
            a.drain(later, Some(None), None).ready.is_empty(),
            "no id yet"
        );
        let mut first = a.drain(later, Some(Some(gen1)), None).ready;
        assert_eq!(first.len(), 5, "five in flight");
        let bases: Vec<i32> = first
            .iter()
            .map(|(_, _, b)| b.sequence.unwrap().base)
            .collect();
        assert_eq!(bases, vec![0, 1, 2, 3, 4]);
        let t = a.topic("t").unwrap();
        // The second and first batches fail (in that order), the others are still out.
        let (_, _, b1) = first.remove(1);
        let (_, _, b0) = first.remove(0);
        a.requeue(&t, 0, b1);
        a.requeue(&t, 0, b0);
        assert!(
            a.drain(later, Some(Some(gen1)), None).ready.is_empty(),
            "a resend waits for the batches in flight"
        );
        for (_, _, b) in first {
            a.requeue(&t, 0, b);
        }
        // Resends go one at a time, in their order, with their sequences.
        for expected in 0..5 {
            let mut ready = a.drain(later, Some(Some(gen1)), None).ready;
            assert_eq!(ready.len(), 1);
            let (_, _, b) = ready.pop().unwrap();
            assert_eq!(b.sequence.unwrap().base, expected);
            if expected < 4 {
                a.finished(&t, 0, &b.completion.0, Some((b.sequence.unwrap(), 1)), 0);
            } else {
                // A new generation (KIP-360) while the last resend is out: nothing is sent
                // until it is back, then it is numbered from 0 again.
                let gen2 = Current {
                    generation: 2,
                    producer_id: 9,
                    epoch: 1,
                    transactional: false,
                };
                assert!(a.drain(later, Some(Some(gen2)), None).ready.is_empty());
                a.requeue(&t, 0, b);
                let ready = a.drain(later, Some(Some(gen2)), None).ready;
                let (_, _, b) = &ready[0];
                assert_eq!(ready.len(), 1);
                assert_eq!(b.sequence.unwrap().base, 0);
                assert_eq!(b.sequence.unwrap().epoch, 1);
                a.finished(&t, 0, &b.completion.0, Some((b.sequence.unwrap(), 1)), 0);
                let fresh = a.drain(later, Some(Some(gen2)), None).ready;
                let bases: Vec<i32> = fresh
                    .iter()
                    .map(|(_, _, b)| b.sequence.unwrap().base)
                    .collect();
                assert_eq!(bases, vec![1, 2, 3], "new batches follow, pipelined");
            }
        }
    }
}
