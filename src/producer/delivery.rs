//! Batch-level completion: one shared [`BatchCompletion`] per batch, and per record a
//! [`DeliveryFuture`] that holds an `Arc` of it plus the record's offset delta.
//!
//! No channel and no allocation per record: a record's delivery is `base_offset + delta` of
//! its batch. A future that is polled before its batch completes registers on the batch's
//! `Notify` (two small boxes, only on that slow path: the future itself stays 24 bytes);
//! futures awaited after the batch completed return at once.
//!
//! A batch whose completion is dropped unresolved (the producer's runtime shut down, say)
//! resolves its records with [`Error::Closed`]: never silence.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tokio::sync::Notify;

use crate::error::{Error, Result};

/// Where a record was written: what a successful send resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Acknowledged, or failed for good.
    Done(Result<BatchAck>),
    /// The broker found it too large: its records went on in smaller batches. Each entry is
    /// the offset delta (in this batch) of a part's first record, and that part's completion.
    Split(Vec<(i32, Arc<BatchCompletion>)>),
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

    /// Resolves the batch (the first call wins) and wakes every waiting record.
    pub(crate) fn complete(&self, result: Result<BatchAck>) {
        self.set(Outcome::Done(result));
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
        matches!(self.result.get(), Some(Outcome::Done(_)))
    }

    /// Whether every record of the batch is resolved (following splits).
    pub(crate) fn is_done(&self) -> bool {
        match self.result.get() {
            None => false,
            Some(Outcome::Done(_)) => true,
            Some(Outcome::Split(parts)) => parts.iter().all(|(_, c)| c.is_done()),
        }
    }

    /// Whether the record at `delta` is resolved (following splits).
    fn is_done_for(&self, delta: i32) -> bool {
        match self.result.get() {
            None => false,
            Some(Outcome::Done(_)) => true,
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
    /// `timestamp` is the batch's log append time when the topic uses it, else `-1`.
    pub(crate) fn outcome_of(&self, delta: i32) -> Result<Delivery> {
        self.delivery(delta, -1)
    }

    fn delivery(&self, delta: i32, timestamp: i64) -> Result<Delivery> {
        match self.result.get().expect("resolved") {
            Outcome::Done(Ok(ack)) => Ok(Delivery {
                topic: Arc::clone(&self.topic),
                partition: self.partition,
                offset: if ack.base_offset < 0 {
                    -1
                } else {
                    ack.base_offset + i64::from(delta)
                },
                timestamp: ack.log_append_time.unwrap_or(timestamp),
            }),
            Outcome::Done(Err(e)) => Err(duplicate(e)),
            Outcome::Split(parts) => {
                let (first, part) = part_of(parts, delta);
                part.delivery(delta - first, timestamp)
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

/// The batch's owning handle: resolves the batch with an error if it is dropped unresolved.
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
            self.0.complete(Err(Error::Closed(
                "producer (stopped before acknowledgement)",
            )));
        }
    }
}

/// The pending delivery of one record, from [`Producer::enqueue`](super::Producer::enqueue)
/// or [`Producer::try_send`](super::Producer::try_send). It resolves once the broker
/// acknowledged the record's batch (or the batch failed for good), whether or not it is
/// polled: dropping it does not cancel the send.
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
    Ready(Option<Box<Result<Delivery>>>),
    Deferred(Pin<Box<dyn Future<Output = Result<Delivery>> + Send>>),
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

    pub(crate) fn ready(result: Result<Delivery>) -> Self {
        DeliveryFuture {
            state: State::Ready(Some(Box::new(result))),
        }
    }

    pub(crate) fn deferred(f: impl Future<Output = Result<Delivery>> + Send + 'static) -> Self {
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
    type Output = Result<Delivery>;

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
                None => Err(Error::Closed("delivery future (already awaited)")),
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
        c.complete(Ok(BatchAck {
            base_offset: 40,
            log_append_time: None,
        }));
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
        a.complete(Ok(BatchAck {
            base_offset: 10,
            log_append_time: None,
        }));
        assert!(futures[1].is_done());
        assert!(!futures[2].is_done());
        let waiter = tokio::spawn(async move {
            let mut offsets = Vec::new();
            for f in futures {
                offsets.push(f.await.map(|d| d.offset).map_err(|e| e.to_string()));
            }
            offsets
        });
        tokio::task::yield_now().await;
        b.complete(Err(Error::broker(87, "t/0", None)));
        let offsets = waiter.await.unwrap();
        assert_eq!(offsets[0], Ok(10));
        assert_eq!(offsets[1], Ok(11));
        assert!(offsets[2].is_err() && offsets[3].is_err());
        c.wait().await;
    }

    #[tokio::test]
    async fn a_dropped_batch_fails_its_records() {
        let c = BatchCompletion::new(Arc::from("t"), 0);
        let f = DeliveryFuture::batch(Arc::clone(&c), 0, 0);
        drop(CompletionGuard(c));
        assert!(matches!(f.await, Err(Error::Closed(_))));
    }
}
