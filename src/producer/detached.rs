//! Fire and forget: a producer that hands back no per-record future, and reports each batch's
//! outcome once to a callback (what rust-rdkafka's `BaseProducer` delivery callback and the
//! Java client's send callback give high-volume producers).
//!
//! ```no_run
//! # async fn demo() -> purekafka::Result<()> {
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::sync::Arc;
//! use purekafka::{Client, Config, Record};
//!
//! let client = Client::connect(Config::from_env()?).await?;
//! let failed = Arc::new(AtomicU64::new(0));
//! let f = Arc::clone(&failed);
//! let producer = client.detached_producer(move |report| {
//!     if let Err(e) = &report.result {
//!         f.fetch_add(u64::from(report.records), Ordering::Relaxed);
//!         eprintln!("{} records to {}/{} failed: {e}", report.records, report.topic, report.partition);
//!         // report.failed_records: the records themselves, to retry or route elsewhere
//!     }
//! });
//! for i in 0..1_000_000 {
//!     producer.send(Record::new("events", format!("event {i}"))).await?;
//! }
//! producer.close().await; // every record reported before this returns
//! # Ok(()) }
//! ```
//!
//! Memory: the caller holds nothing per record (a [`DeliveryFuture`] per record in flight is
//! 24 bytes, 24 MB for a million); the producer keeps one small entry per batch in flight.
//!
//! How: [`DetachedProducer::send`] enqueues like [`Producer::enqueue`], then files the record
//! under its batch (one map entry per batch, found by the batch's address, counted under one
//! mutex); a reporter task waits for each batch and calls the callback with the batch's count.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, Notify};

use super::delivery::BatchCompletion;
use super::{Delivery, DeliveryFuture, Producer, SendError};
use crate::client::Client;
use crate::error::{Error, Result};
use crate::record::Record;

/// The outcome of some records of one batch, given once to the callback of a
/// [`DetachedProducer`].
#[derive(Debug)]
#[non_exhaustive]
pub struct BatchReport {
    /// The topic.
    pub topic: Arc<str>,
    /// The partition (`-1` when the record failed before it was given one).
    pub partition: i32,
    /// How many of this producer's records the report covers.
    pub records: u32,
    /// The offset of the first of them (`-1` when the broker says none, with `acks=0`), or
    /// why they all failed (the same errors as [`DeliveryFuture`]'s).
    pub result: Result<i64>,
    /// When `result` is an error: the records themselves, in order, handed back to be
    /// retried or routed elsewhere (as in [`SendError`]). Empty on success.
    pub failed_records: Vec<Record>,
}

/// The callback of a [`DetachedProducer`].
type Callback = Arc<dyn Fn(BatchReport) + Send + Sync>;

/// A producer without per-record futures: every record's outcome reaches the callback, one
/// [`BatchReport`] per batch (made by [`Client::detached_producer`]). Cheap to clone: clones
/// share the producer and the callback.
///
/// The callback runs on a tokio task of the producer: keep it short (count, log, hand off).
#[derive(Clone)]
pub struct DetachedProducer {
    producer: Producer,
    shared: Arc<Shared>,
    jobs: Arc<OnceLock<mpsc::UnboundedSender<Job>>>,
}

impl std::fmt::Debug for DetachedProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DetachedProducer")
            .field("producer", &self.producer)
            .field(
                "unreported",
                &self.shared.unreported.load(Ordering::Relaxed),
            )
            .finish()
    }
}

/// The batches' map is keyed by addresses of our own allocations (nothing a peer chooses), so
/// it needs no DoS-resistant hash: SipHash of the key, once per record, was about 1.5 % of
/// the producer's CPU at 1 KiB records. One multiply, with the high bits folded down (the
/// table picks buckets by the low bits, which are the address's alignment zeros).
#[derive(Default)]
struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.0 = (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
}

type BatchMap = HashMap<usize, Tracked, BuildHasherDefault<AddressHasher>>;

/// What the senders and the reporter task share.
struct Shared {
    batches: Mutex<BatchMap>,
    callback: Callback,
    /// Records sent and not yet reported.
    unreported: AtomicU64,
    /// Woken when `unreported` drops.
    reported: Notify,
}

/// One batch's records sent through this producer.
struct Tracked {
    completion: Arc<BatchCompletion>,
    /// The smallest offset delta of this producer's records in the batch.
    first_delta: i32,
    records: u32,
}

enum Job {
    /// A new batch (keyed by its completion's address) to wait for.
    Batch(usize, Arc<BatchCompletion>),
    /// A record without a batch (failed at once, or waiting for its topic's metadata).
    Single(DeliveryFuture),
}

type Waiting = Pin<Box<dyn Future<Output = Done> + Send>>;

enum Done {
    Batch(usize),
    Single(Result<Delivery, SendError>),
}

impl Client {
    /// A fire-and-forget producer (its own [`Producer`] with this client's configuration):
    /// every record's outcome is given to `on_report`, one [`BatchReport`] per batch.
    pub fn detached_producer(
        &self,
        on_report: impl Fn(BatchReport) + Send + Sync + 'static,
    ) -> DetachedProducer {
        DetachedProducer {
            producer: self.producer(),
            shared: Arc::new(Shared {
                batches: Mutex::new(BatchMap::default()),
                callback: Arc::new(on_report),
                unreported: AtomicU64::new(0),
                reported: Notify::new(),
            }),
            jobs: Arc::new(OnceLock::new()),
        }
    }
}

impl DetachedProducer {
    /// Queues a record, waiting only while the buffer is full. Fails at once, as
    /// [`Producer::enqueue`] does, for a record that cannot be queued (too large, unknown
    /// topic, closed producer), handing the record back; everything after that goes to the
    /// callback.
    pub async fn send(&self, record: Record) -> Result<(), SendError> {
        let future = self.producer.enqueue(record).await?;
        self.track(future);
        Ok(())
    }

    /// Queues a record without waiting: [`Error::QueueFull`](crate::Error::QueueFull) when the
    /// buffer is full, with the record handed back. Otherwise like [`send`](Self::send).
    pub fn try_send(&self, record: Record) -> Result<(), SendError> {
        let future = self.producer.try_send(record)?;
        self.track(future);
        Ok(())
    }

    /// Waits until every record sent before this call was reported to the callback.
    pub async fn flush(&self) {
        self.producer.flush().await;
        loop {
            let woken = self.shared.reported.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.shared.unreported.load(Ordering::Acquire) == 0 {
                return;
            }
            woken.await;
        }
    }

    /// Flushes (every record reported) and closes the producer.
    pub async fn close(&self) {
        self.flush().await;
        self.producer.close().await;
    }

    /// The producer's counters.
    pub fn metrics(&self) -> super::ProducerMetrics {
        self.producer.metrics()
    }

    fn track(&self, future: DeliveryFuture) {
        self.shared.unreported.fetch_add(1, Ordering::AcqRel);
        let job = match future.batch_slot() {
            Some((completion, delta)) => {
                let key = Arc::as_ptr(completion) as usize;
                let mut batches = self
                    .shared
                    .batches
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                match batches.get_mut(&key) {
                    Some(t) => {
                        t.records += 1;
                        t.first_delta = t.first_delta.min(delta);
                        return;
                    }
                    None => {
                        // The map holds the completion, so its address is not reused while
                        // the entry exists.
                        batches.insert(
                            key,
                            Tracked {
                                completion: Arc::clone(completion),
                                first_delta: delta,
                                records: 1,
                            },
                        );
                        Job::Batch(key, Arc::clone(completion))
                    }
                }
            }
            None => Job::Single(future),
        };
        let jobs = self.jobs.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(report_loop(Arc::clone(&self.shared), rx));
            tx
        });
        if let Err(mpsc::error::SendError(job)) = jobs.send(job) {
            // The reporter is gone (its runtime shut down): report here, as failed.
            self.shared.report_lost(job);
        }
    }
}

/// Waits for each batch and reports it; ends when every sender is gone and all is reported.
async fn report_loop(shared: Arc<Shared>, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut waiting: FuturesUnordered<Waiting> = FuturesUnordered::new();
    let mut open = true;
    while open || !waiting.is_empty() {
        tokio::select! {
            job = jobs.recv(), if open => match job {
                Some(Job::Batch(key, completion)) => waiting.push(Box::pin(async move {
                    completion.wait().await;
                    Done::Batch(key)
                })),
                Some(Job::Single(future)) => {
                    waiting.push(Box::pin(async move { Done::Single(future.await) }))
                }
                None => open = false,
            },
            Some(done) = waiting.next(), if !waiting.is_empty() => match done {
                Done::Batch(key) => shared.report_batch(key),
                Done::Single(result) => shared.report_single(result),
            },
        }
    }
}

impl Shared {
    fn report_batch(&self, key: usize) {
        let tracked = self
            .batches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        let Some(t) = tracked else { return };
        let c = &t.completion;
        let deltas = t.first_delta..t.first_delta.saturating_add(t.records as i32);
        if c.is_whole() {
            let (result, failed_records) = match c.outcome_of(t.first_delta) {
                Ok(d) => (Ok(d.offset), Vec::new()),
                Err(first) => {
                    // A whole batch failed as one: every record comes back.
                    let records = deltas.filter_map(|delta| c.outcome_of(delta).err());
                    let records = records.map(SendError::into_record).collect();
                    (Err(first.into_parts().0), records)
                }
            };
            self.deliver(BatchReport {
                topic: Arc::clone(&c.topic),
                partition: c.partition,
                records: t.records,
                result,
                failed_records,
            });
            return;
        }
        // Split by the broker (too large): its parts may have ended differently. One report
        // per run of records with the same kind of outcome and consecutive offsets.
        let mut run: Option<(BatchReport, i64)> = None;
        for delta in deltas {
            let outcome = c.outcome_of(delta);
            let joins = match (&run, &outcome) {
                (Some((r, next)), Ok(d)) => r.result.is_ok() && (*next < 0 || d.offset == *next),
                (Some((r, _)), Err(_)) => r.result.is_err(),
                (None, _) => false,
            };
            if joins {
                let (r, next) = run.as_mut().expect("joined a run");
                r.records += 1;
                if *next >= 0 {
                    *next += 1;
                }
                if let Err(e) = outcome {
                    r.failed_records.push(e.into_record());
                }
                continue;
            }
            if let Some((r, _)) = run.take() {
                self.deliver(r);
            }
            let next = match &outcome {
                Ok(d) if d.offset >= 0 => d.offset + 1,
                _ => -1,
            };
            run = Some((report(Arc::clone(&c.topic), c.partition, outcome), next));
        }
        if let Some((r, _)) = run {
            self.deliver(r);
        }
    }

    fn report_single(&self, result: Result<Delivery, SendError>) {
        let (topic, partition) = match &result {
            Ok(d) => (Arc::clone(&d.topic), d.partition),
            Err(e) => (
                Arc::from(&*e.record().topic),
                e.record().partition.unwrap_or(-1),
            ),
        };
        self.deliver(report(topic, partition, result));
    }

    /// A job the reporter can no longer take (the runtime is shutting down).
    fn report_lost(&self, job: Job) {
        match job {
            Job::Batch(key, _) => {
                let tracked = self
                    .batches
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&key);
                if let Some(t) = tracked {
                    // The batch is not resolved yet, so its records are not at hand.
                    self.deliver(BatchReport {
                        topic: Arc::clone(&t.completion.topic),
                        partition: t.completion.partition,
                        records: t.records,
                        result: Err(Error::Closed("detached producer (reporter stopped)")),
                        failed_records: Vec::new(),
                    });
                }
            }
            Job::Single(_) => self.deliver(BatchReport {
                topic: Arc::from(""),
                partition: -1,
                records: 1,
                result: Err(Error::Closed("detached producer (reporter stopped)")),
                failed_records: Vec::new(),
            }),
        }
    }

    fn deliver(&self, report: BatchReport) {
        let n = u64::from(report.records);
        (self.callback)(report);
        self.unreported.fetch_sub(n, Ordering::AcqRel);
        self.reported.notify_waiters();
    }
}

/// A report of one record's outcome (a failure hands the record back).
fn report(topic: Arc<str>, partition: i32, outcome: Result<Delivery, SendError>) -> BatchReport {
    let (result, failed_records) = match outcome {
        Ok(d) => (Ok(d.offset), Vec::new()),
        Err(e) => {
            let (error, record) = e.into_parts();
            (Err(error), vec![record])
        }
    };
    BatchReport {
        topic,
        partition,
        records: 1,
        result,
        failed_records,
    }
}
