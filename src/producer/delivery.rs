//! Batch-level completion: one shared [`BatchCompletion`] per batch, and per record a
//! [`DeliveryFuture`] that holds an `Arc` of it plus the record's offset delta.
//!
//! No channel and no allocation per record: a record's delivery is `base_offset + delta` of
//! its batch. A future that is polled before its batch completes registers on the batch's
//! `Notify` (two small boxes, only on that slow path: the future itself stays 24 bytes);
//! futures awaited after the batch completed return at once.
//!
//! A failed batch keeps its encoded bytes: each record's [`SendError`] hands the record back,
//! decoded from them (once per batch, on the first failed record asked for; key, value and
//! header values are slices of the batch, not copies). Nothing is kept per record on the way:
//! success costs nothing extra.
//!
//! A batch dropped unresolved (the producer's runtime shut down, say) resolves its records
//! with [`Error::Closed`] and hands them back: never silence.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::consumer::decode::{decode_batches, Decoded};
use crate::error::{Error, Result};
use crate::record::{ConsumedRecord, Record};

/// A record that was not sent, handed back with the reason (rust-rdkafka's
/// `(KafkaError, OwnedMessage)`), so that the caller can retry it, route it elsewhere or log
/// it. What [`Producer::send`](super::Producer::send), [`enqueue`](super::Producer::enqueue),
/// [`try_send`](super::Producer::try_send) and a [`DeliveryFuture`] fail with.
///
/// The record is the one that was sent: topic, key, value, headers (with the default headers
/// the producer added, if any) and timestamp; `partition` is the partition it was given when
/// it got that far (so a retry goes to the same partition and keeps a key's order; set it to
/// `None` to let the partitioner choose again) and the timestamp the one it was sent with.
///
/// Converts into [`Error`] (dropping the record), so `?` works in functions that return
/// [`crate::Result`].
///
/// ```no_run
/// # async fn demo(producer: purekafka::Producer) {
/// use purekafka::{ErrorKind, Record};
///
/// if let Err(failed) = producer.send(Record::new("orders", "{\"id\":1}")).await {
///     eprintln!("not sent: {}", failed.error());
///     if failed.error().kind() == ErrorKind::QueueFull {
///         let record = failed.into_record();
///         // ... keep it and send it again later
/// #       drop(record);
///     }
/// }
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SendError(Box<(Error, Record)>);

impl SendError {
    /// A record handed back with the reason it was not sent.
    pub fn new(error: Error, record: Record) -> Self {
        SendError(Box::new((error, record)))
    }

    /// Why the record was not sent.
    pub fn error(&self) -> &Error {
        &self.0 .0
    }

    /// The record that was not sent.
    pub fn record(&self) -> &Record {
        &self.0 .1
    }

    /// The record, to send again or route elsewhere.
    pub fn into_record(self) -> Record {
        self.0 .1
    }

    /// The reason and the record.
    pub fn into_parts(self) -> (Error, Record) {
        *self.0
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self.error(), f)
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(self.error())
    }
}

impl From<SendError> for Error {
    fn from(e: SendError) -> Self {
        e.0 .0
    }
}

/// Where a record was written: what a successful send resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    /// The topic (shared by the records of a batch: no allocation per record).
    pub topic: Arc<str>,
    /// The partition.
    pub partition: i32,
    /// The record's offset in the partition; `-1` with `acks=0`, where the broker says
    /// nothing, and for a batch the idempotent producer resent and the broker had written
    /// already (DUPLICATE_SEQUENCE_NUMBER: written once, offset not said again).
    pub offset: i64,
    /// The record's timestamp in milliseconds since the Unix epoch: its create time, or the
    /// broker's log append time when the topic uses `LogAppendTime`.
    pub timestamp: i64,
}

/// The broker's answer for a whole batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchAck {
    /// Offset of the batch's first record (`-1` when unknown, with `acks=0`).
    pub(crate) base_offset: i64,
    /// The broker's log append time, when the topic uses it.
    pub(crate) log_append_time: Option<i64>,
}

/// How a batch ended.
#[derive(Debug)]
enum Outcome {
    /// Acknowledged.
    Acknowledged(BatchAck),
    /// Failed for good.
    Failed(FailedBatch),
    /// The broker found it too large: its records went on in smaller batches. Each entry is
    /// the offset delta (in this batch) of a part's first record, and that part's completion.
    Split(Vec<(i32, Arc<BatchCompletion>)>),
}

/// A batch that failed for good: the error, and the batch's bytes to hand its records back.
#[derive(Debug)]
struct FailedBatch {
    error: Error,
    /// The encoded batch (v2, header included, compressed or not).
    data: Bytes,
    /// Its records, decoded on the first request.
    records: OnceLock<Vec<ConsumedRecord>>,
}

/// The outcome of one batch, shared by all its records.
#[derive(Debug)]
pub(crate) struct BatchCompletion {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    result: OnceLock<Outcome>,
    notify: Notify,
}

impl BatchCompletion {
    pub(crate) fn new(topic: Arc<str>, partition: i32) -> Arc<Self> {
        Arc::new(BatchCompletion {
            topic,
            partition,
            result: OnceLock::new(),
            notify: Notify::new(),
        })
    }

    /// Resolves the batch as acknowledged (the first resolution wins) and wakes every
    /// waiting record.
    pub(crate) fn acknowledge(&self, ack: BatchAck) {
        self.set(Outcome::Acknowledged(ack));
    }

    /// Resolves the batch as failed for good (the first resolution wins); `data` is the
    /// encoded batch, from which each record is handed back.
    pub(crate) fn fail(&self, error: Error, data: Bytes) {
        self.set(Outcome::Failed(FailedBatch {
            error,
            data,
            records: OnceLock::new(),
        }));
    }

    /// Hands the batch's records over to `parts` (first offset delta, completion), in order.
    pub(crate) fn split(&self, parts: Vec<(i32, Arc<BatchCompletion>)>) {
        self.set(Outcome::Split(parts));
    }

    fn set(&self, outcome: Outcome) {
        if self.result.set(outcome).is_ok() {
            self.notify.notify_waiters();
        }
    }

    /// Whether this batch has an outcome (possibly "split", with parts still pending).
    pub(crate) fn is_set(&self) -> bool {
        self.result.get().is_some()
    }

    /// Whether the batch ended as one (acknowledged or failed), not split into parts.
    pub(crate) fn is_whole(&self) -> bool {
        matches!(
            self.result.get(),
            Some(Outcome::Acknowledged(_) | Outcome::Failed(_))
        )
    }

    /// Whether every record of the batch is resolved (following splits).
    pub(crate) fn is_done(&self) -> bool {
        match self.result.get() {
            None => false,
            Some(Outcome::Acknowledged(_) | Outcome::Failed(_)) => true,
            Some(Outcome::Split(parts)) => parts.iter().all(|(_, c)| c.is_done()),
        }
    }

    /// Whether the record at `delta` is resolved (following splits).
    fn is_done_for(&self, delta: i32) -> bool {
        match self.result.get() {
            None => false,
            Some(Outcome::Acknowledged(_) | Outcome::Failed(_)) => true,
            Some(Outcome::Split(parts)) => {
                let (first, part) = part_of(parts, delta);
                part.is_done_for(delta - first)
            }
        }
    }

    /// Waits until every record of the batch is resolved (following splits).
    pub(crate) fn wait(self: &Arc<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        self.wait_for(None)
    }

    /// Waits until the record at `delta` (all records: `None`) is resolved.
    fn wait_for(self: &Arc<Self>, delta: Option<i32>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let this = Arc::clone(self);
        Box::pin(async move {
            loop {
                let notified = this.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if this.is_set() {
                    break;
                }
                notified.await;
            }
            if let Some(Outcome::Split(parts)) = this.result.get() {
                match delta {
                    Some(delta) => {
                        let (first, part) = part_of(parts, delta);
                        part.wait_for(Some(delta - first)).await;
                    }
                    None => {
                        for (_, part) in parts {
                            part.wait().await;
                        }
                    }
                }
            }
        })
    }

    /// The outcome of the record at `delta` of a resolved batch (following splits); its
    /// `timestamp` is the batch's log append time when the topic uses it, else `-1`; a
    /// failure hands the record back.
    pub(crate) fn outcome_of(&self, delta: i32) -> Result<Delivery, SendError> {
        self.delivery(delta, -1)
    }

    fn delivery(&self, delta: i32, timestamp: i64) -> Result<Delivery, SendError> {
        match self.result.get().expect("resolved") {
            Outcome::Acknowledged(ack) => Ok(Delivery {
                topic: Arc::clone(&self.topic),
                partition: self.partition,
                offset: if ack.base_offset < 0 {
                    -1
                } else {
                    ack.base_offset + i64::from(delta)
                },
                timestamp: ack.log_append_time.unwrap_or(timestamp),
            }),
            Outcome::Failed(failed) => Err(SendError::new(
                duplicate(&failed.error),
                self.record_of(failed, delta),
            )),
            Outcome::Split(parts) => {
                let (first, part) = part_of(parts, delta);
                part.delivery(delta - first, timestamp)
            }
        }
    }

    /// The record at `delta` of a failed batch, decoded from its bytes (all records at once,
    /// on the first call).
    fn record_of(&self, failed: &FailedBatch, delta: i32) -> Record {
        let records = failed.records.get_or_init(|| {
            let mut out = Decoded::default();
            // Our own encoding, checked by the tests for every codec: a failure here is a bug.
            if let Err(e) = decode_batches(
                failed.data.clone(),
                &self.topic,
                self.partition,
                0,
                false,
                None, // every record of it: none was written, none is aborted
                &mut out,
            ) {
                tracing::error!(
                    topic = %self.topic,
                    partition = self.partition,
                    error = %e,
                    "a failed batch's records could not be decoded to hand them back"
                );
            }
            out.records
        });
        // The producer writes base offset 0: a record's offset is its delta.
        match records
            .get(delta as usize)
            .filter(|r| r.offset == i64::from(delta))
        {
            Some(r) => Record {
                topic: std::borrow::Cow::Owned(self.topic.to_string()),
                partition: Some(self.partition),
                key: r.key.clone(),
                value: r.value.clone(),
                headers: r.headers.clone(),
                timestamp: Some(r.timestamp),
            },
            None => {
                // Every failed batch is resolved with its bytes (see `ReadyBatch::fail` and its
                // drop); only a batch whose compression failed has none. Topic and partition
                // are all that is known then.
                tracing::error!(
                    topic = %self.topic,
                    partition = self.partition,
                    delta,
                    "a failed record could not be recovered from its batch; handing back an empty record"
                );
                let mut r = Record::new(self.topic.to_string(), Bytes::new());
                r.value = None;
                r.partition = Some(self.partition);
                r
            }
        }
    }
}

/// The part of a split batch holding the record at `delta`, with the part's first delta.
fn part_of(parts: &[(i32, Arc<BatchCompletion>)], delta: i32) -> (i32, &Arc<BatchCompletion>) {
    let (first, part) = parts
        .iter()
        .rev()
        .find(|(first, _)| *first <= delta)
        .expect("the first part starts at delta 0");
    (*first, part)
}

/// The batch's owning handle: resolves the batch with an error if it is dropped unresolved
/// (the batch that holds it does that first, with its records).
#[derive(Debug)]
pub(crate) struct CompletionGuard(pub(crate) Arc<BatchCompletion>);

impl Drop for CompletionGuard {
    fn drop(&mut self) {
        if !self.0.is_set() {
            tracing::warn!(
                topic = %self.0.topic,
                partition = self.0.partition,
                "producer stopped before a batch was acknowledged; its records fail"
            );
            // Not reached for a batch with records: a `ReadyBatch` resolves its completion
            // with its bytes when dropped, before this guard goes.
            self.0.fail(
                Error::Closed("producer (stopped before acknowledgement)"),
                Bytes::new(),
            );
        }
    }
}

/// The pending delivery of one record, from [`Producer::enqueue`](super::Producer::enqueue)
/// or [`Producer::try_send`](super::Producer::try_send). It resolves once the broker
/// acknowledged the record's batch (or the batch failed for good), whether or not it is
/// polled: dropping it does not cancel the send. A failure hands the record back
/// ([`SendError`]).
#[must_use = "a DeliveryFuture tells whether the record was written; await it or drop it knowingly"]
pub struct DeliveryFuture {
    state: State,
}

enum State {
    /// The common case, kept small (24 bytes: callers hold one per record in flight).
    Batch {
        completion: Arc<BatchCompletion>,
        delta: i32,
        timestamp: i64,
    },
    /// Polled before its batch was resolved: registered on the batch's `Notify` (boxed, only
    /// on this slow path).
    Waiting(Box<Waiting>),
    /// Known at once (disabled, errors): boxed, so that the common variant stays small.
    Ready(Option<Box<Result<Delivery, SendError>>>),
    Deferred(Pin<Box<dyn Future<Output = Result<Delivery, SendError>> + Send>>),
}

struct Waiting {
    completion: Arc<BatchCompletion>,
    delta: i32,
    timestamp: i64,
    wait: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl std::fmt::Debug for DeliveryFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.state {
            State::Batch {
                completion, delta, ..
            } => debug_batch(f, completion, *delta),
            State::Waiting(w) => debug_batch(f, &w.completion, w.delta),
            State::Ready(r) => f.debug_tuple("DeliveryFuture").field(r).finish(),
            State::Deferred(_) => f.write_str("DeliveryFuture(deferred)"),
        }
    }
}

fn debug_batch(
    f: &mut std::fmt::Formatter<'_>,
    completion: &BatchCompletion,
    delta: i32,
) -> std::fmt::Result {
    f.debug_struct("DeliveryFuture")
        .field("topic", &completion.topic)
        .field("partition", &completion.partition)
        .field("offset_delta", &delta)
        .field("done", &completion.is_done())
        .finish()
}

impl DeliveryFuture {
    pub(crate) fn batch(completion: Arc<BatchCompletion>, delta: i32, timestamp: i64) -> Self {
        DeliveryFuture {
            state: State::Batch {
                completion,
                delta,
                timestamp,
            },
        }
    }

    pub(crate) fn ready(result: Result<Delivery, SendError>) -> Self {
        DeliveryFuture {
            state: State::Ready(Some(Box::new(result))),
        }
    }

    pub(crate) fn deferred(
        f: impl Future<Output = Result<Delivery, SendError>> + Send + 'static,
    ) -> Self {
        DeliveryFuture {
            state: State::Deferred(Box::pin(f)),
        }
    }

    /// The batch this record went into and its offset delta there (`None` for a future
    /// known at once or deferred). Used by the detached producer to report per batch.
    pub(crate) fn batch_slot(&self) -> Option<(&Arc<BatchCompletion>, i32)> {
        match &self.state {
            State::Batch {
                completion, delta, ..
            } => Some((completion, *delta)),
            State::Waiting(w) => Some((&w.completion, w.delta)),
            State::Ready(_) | State::Deferred(_) => None,
        }
    }

    /// Whether the outcome is known (awaiting it would not wait).
    pub fn is_done(&self) -> bool {
        match &self.state {
            State::Batch {
                completion, delta, ..
            } => completion.is_done_for(*delta),
            State::Waiting(w) => w.completion.is_done_for(w.delta),
            State::Ready(_) => true,
            State::Deferred(_) => false,
        }
    }
}

impl Future for DeliveryFuture {
    type Output = Result<Delivery, SendError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let State::Batch {
            completion,
            delta,
            timestamp,
        } = &this.state
        {
            if completion.is_done_for(*delta) {
                return Poll::Ready(completion.delivery(*delta, *timestamp));
            }
            let wait = completion.wait_for(Some(*delta));
            this.state = State::Waiting(Box::new(Waiting {
                completion: Arc::clone(completion),
                delta: *delta,
                timestamp: *timestamp,
                wait,
            }));
        }
        match &mut this.state {
            State::Batch { .. } => unreachable!("moved to Waiting above"),
            State::Waiting(w) => match w.wait.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(w.completion.delivery(w.delta, w.timestamp)),
                Poll::Pending => Poll::Pending,
            },
            State::Ready(r) => Poll::Ready(match r.take() {
                Some(result) => *result,
                // A future is not polled after it completed; should it be, say so.
                None => Err(SendError::new(
                    Error::Closed("delivery future (already awaited)"),
                    Record::new("", Bytes::new()),
                )),
            }),
            State::Deferred(f) => f.as_mut().poll(cx),
        }
    }
}

/// A copy of a batch's error for one of its records.
pub(crate) fn duplicate(e: &Error) -> Error {
    e.clone()
}

#[cfg(test)]
mod tests {

    use super::*;

    #[tokio::test]
    async fn records_of_a_batch_share_one_completion() {
        let c = BatchCompletion::new(Arc::from("t"), 3);
        let futures: Vec<_> = (0..3)
            .map(|d| DeliveryFuture::batch(Arc::clone(&c), d, 100 + i64::from(d)))
            .collect();
        let waiter = tokio::spawn(async move {
            let mut out = Vec::new();
            for f in futures {
                out.push(f.await.unwrap());
            }
            out
        });
        tokio::task::yield_now().await;
        c.acknowledge(BatchAck {
            base_offset: 40,
            log_append_time: None,
        });
        let out = waiter.await.unwrap();
        assert_eq!(
            out.iter().map(|d| d.offset).collect::<Vec<_>>(),
            vec![40, 41, 42]
        );
        assert_eq!(out[2].timestamp, 102);
        assert_eq!(out[0].partition, 3);
    }

    #[test]
    fn a_delivery_future_is_small_send_and_unpin() {
        // One per record in flight: a million of them should not cost 100 MB.
        assert!(std::mem::size_of::<DeliveryFuture>() <= 24);
        fn is_send_unpin<T: Send + Unpin>() {}
        is_send_unpin::<DeliveryFuture>();
        fn is_send_sync<T: Send + Sync>() {}
        is_send_sync::<crate::Producer>();
    }

    #[tokio::test]
    async fn records_of_a_split_batch_follow_their_part() {
        let c = BatchCompletion::new(Arc::from("t"), 0);
        let futures: Vec<_> = (0..4)
            .map(|d| DeliveryFuture::batch(Arc::clone(&c), d, 0))
            .collect();
        let a = BatchCompletion::new(Arc::from("t"), 0);
        let b = BatchCompletion::new(Arc::from("t"), 0);
        c.split(vec![(0, Arc::clone(&a)), (2, Arc::clone(&b))]);
        assert!(!futures[0].is_done());
        a.acknowledge(BatchAck {
            base_offset: 10,
            log_append_time: None,
        });
        assert!(futures[1].is_done());
        assert!(!futures[2].is_done());
        let waiter = tokio::spawn(async move {
            let mut offsets = Vec::new();
            for f in futures {
                let value = |e: SendError| e.record().value.clone().unwrap_or_default();
                offsets.push(f.await.map(|d| d.offset).map_err(value));
            }
            offsets
        });
        tokio::task::yield_now().await;
        // The second part holds the records at deltas 2 and 3 (its own 0 and 1).
        b.fail(Error::broker(87, "t/0", None), encoded(&["v2", "v3"]));
        let offsets = waiter.await.unwrap();
        assert_eq!(offsets[0], Ok(10));
        assert_eq!(offsets[1], Ok(11));
        for (i, outcome) in offsets.into_iter().enumerate().skip(2) {
            let value = outcome.expect_err("failed part");
            assert_eq!(
                value,
                format!("v{i}").as_bytes(),
                "the part's own record comes back"
            );
        }
        c.wait().await;
    }

    /// A batch of records with these values (timestamp 0), as the producer encodes it.
    fn encoded(values: &[&str]) -> Bytes {
        use crate::config::Compression;
        use crate::producer::batch::{record_body_size, BatchBuilder};
        let mut batch = BatchBuilder::new(256);
        for v in values {
            let headers = crate::record::Headers::new();
            let body = record_body_size(None, Some(v.as_bytes()), &headers);
            batch.append(body, 0, None, Some(v.as_bytes()), &headers);
        }
        batch.finish(Compression::None, None).unwrap()
    }

    #[tokio::test]
    async fn a_dropped_batch_fails_its_records_and_hands_them_back() {
        use crate::producer::accumulator::{Payload, ReadyBatch};
        use crate::producer::batch::{record_body_size, BatchBuilder};
        let c = BatchCompletion::new(Arc::from("t"), 2);
        let mut builder = BatchBuilder::new(256);
        let record = Record::new("t", "kept").with_key("k").with_timestamp(7);
        let body = record_body_size(
            record.key.as_deref(),
            record.value.as_deref(),
            &record.headers,
        );
        let delta = builder.append(
            body,
            7,
            record.key.as_deref(),
            record.value.as_deref(),
            &record.headers,
        );
        let f = DeliveryFuture::batch(Arc::clone(&c), delta, 7);
        let batch = ReadyBatch::new(
            Payload::Open(builder),
            1,
            0,
            tokio::time::Instant::now(),
            CompletionGuard(c),
        );
        drop(batch);
        let (error, back) = f.await.expect_err("dropped").into_parts();
        assert!(matches!(error, Error::Closed(_)), "{error}");
        assert_eq!(back, record.with_partition(2));
    }

    /// Records encoded into a batch as the producer does, the batch failed: each record's
    /// future hands back exactly the record that was appended, for every codec.
    #[tokio::test]
    async fn a_failed_batch_hands_each_record_back() {
        use crate::config::Compression;
        use crate::producer::batch::{record_body_size, BatchBuilder};

        let records: Vec<Record> = (0..50)
            .map(|i| {
                let mut r = Record::new("orders", format!("value {i} ").repeat(i % 7 + 1))
                    .with_timestamp(1_700_000_000_000 + i as i64 * 3);
                if i % 3 != 0 {
                    r = r.with_key(format!("key-{i}"));
                }
                if i % 5 == 0 {
                    r.value = None;
                }
                if i % 2 == 0 {
                    r = r.with_header("h", format!("{i}")).with_header("h", "again");
                }
                r
            })
            .collect();
        #[allow(unused_mut)]
        let mut codecs = vec![Compression::None, Compression::Gzip, Compression::Snappy];
        #[cfg(feature = "lz4")]
        codecs.push(Compression::Lz4);
        #[cfg(feature = "zstd")]
        codecs.push(Compression::Zstd);
        for compression in codecs {
            let c = BatchCompletion::new(Arc::from("orders"), 4);
            let mut batch = BatchBuilder::new(4096);
            let mut futures = Vec::new();
            for r in &records {
                let body = record_body_size(r.key.as_deref(), r.value.as_deref(), &r.headers);
                let ts = r.timestamp.unwrap();
                let delta =
                    batch.append(body, ts, r.key.as_deref(), r.value.as_deref(), &r.headers);
                futures.push(DeliveryFuture::batch(Arc::clone(&c), delta, ts));
            }
            let data = batch.finish(compression, None).unwrap();
            c.fail(Error::broker(10, "orders/4", None), data);
            for (f, sent) in futures.into_iter().zip(&records) {
                let back = f.await.expect_err("the batch failed");
                assert_eq!(
                    back.error().kafka_code(),
                    Some(crate::ErrorCode::MessageTooLarge)
                );
                let expected = Record {
                    partition: Some(4),
                    ..sent.clone()
                };
                assert_eq!(back.record(), &expected, "{compression:?}");
            }
        }
    }
}
