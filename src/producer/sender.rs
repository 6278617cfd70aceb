//! The background task that sends batches: it takes ready batches from the accumulator,
//! groups them per leader broker into one produce request, and resolves them from the
//! response.
//!
//! Retriable failures (not leader, leader not available, timeouts, a dropped connection)
//! refresh metadata, back off and resend the same encoded batch; the batch goes back to the
//! front of its partition's queue and its partition sends nothing else meanwhile, so records of
//! one partition are never reordered. A batch still failing after `delivery.timeout.ms` is
//! given up with [`Error::RetriesExhausted`]; permanent errors fail at once, naming topic,
//! partition and cause.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::ProduceRequest;
use tokio::time::Instant;

use super::accumulator::{Accumulator, Payload, ReadyBatch, TopicQueues, CLOCK_TICK};
use super::deadline::DeadlineTimer;
use super::delivery::{BatchAck, BatchCompletion, CompletionGuard};
use super::idempotence::{self, codes, Idempotence};
use super::transaction::Transactions;
use super::{batch, delivery};
use crate::config::Acks;
use crate::error::Error;
use crate::reconnect::{ReconnectPolicy, RetryEvent, RetryHook};
use crate::wire::Cluster;

/// Largest produce request we build (several batches of different partitions); a single
/// batch may exceed it.
const MAX_REQUEST_BYTES: usize = 16 << 20;
/// Highest produce version used: v9 (flexible) is spoken by every broker we meet; later
/// versions add nothing the producer uses (v13 replaces topic names by ids).
const MAX_PRODUCE_VERSION: i16 = 9;
/// Kafka error code MESSAGE_TOO_LARGE.
const MESSAGE_TOO_LARGE: i16 = 10;

/// What the sender needs besides the accumulator.
pub(crate) struct Sender {
    pub(crate) acc: Arc<Accumulator>,
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) acks: Acks,
    pub(crate) request_timeout: Duration,
    pub(crate) delivery_timeout: Duration,
    pub(crate) message_max_bytes: usize,
    pub(crate) backoff: ReconnectPolicy,
    pub(crate) hook: Option<RetryHook>,
    /// The idempotent producer's state (`None` with `enable.idempotence=false`).
    pub(crate) idempotence: Option<Arc<Idempotence>>,
    /// The transactional producer's state (`None` without `transactional.id`).
    pub(crate) txn: Option<Arc<Transactions>>,
    /// How often the metadata of the producer's topics is refreshed
    /// (`metadata.max.age.ms`), so that partitions added to a topic are used.
    pub(crate) metadata_max_age: Duration,
}

/// A metadata refresh running beside the produce requests.
type Refresh = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs the refresh, if any (never resolves without one).
async fn refreshed(refresh: &mut Option<Refresh>) {
    match refresh {
        Some(r) => r.await,
        None => std::future::pending().await,
    }
}

/// A batch on its way to the broker.
struct InFlight {
    topic: Arc<TopicQueues>,
    partition: i32,
    batch: ReadyBatch,
    data: Bytes,
}

impl Sender {
    /// Runs until the accumulator is closing and everything was resolved.
    ///
    /// Requests run inside this task (a `FuturesUnordered`), not as spawned tasks: a batch
    /// that is due is written to its broker's socket in the same wake-up that found it due,
    /// with no hop through the scheduler (on a busy machine each hop can cost a time slice).
    /// Requests to different brokers, and several to one broker (pipelined on its
    /// connection), still run concurrently.
    pub(crate) async fn run(self: Arc<Self>) {
        let mut requests: FuturesUnordered<Pin<Box<dyn Future<Output = ()> + Send>>> =
            FuturesUnordered::new();
        let mut idle = false;
        // Linger (and backoff) deadlines wake the sender through this thread, to the
        // microsecond; tokio's millisecond timer only when it cannot be started.
        let timer = self.precise_timer();
        // The metadata of the topics produced to is refreshed every metadata.max.age.ms (and
        // when a record names a partition beyond its topic's known count), in its own future
        // so that a slow refresh holds no produce request; a refresh still running when the
        // sender stops is dropped.
        let mut next_refresh = Instant::now() + self.metadata_max_age;
        let mut refresh: Option<Refresh> = None;
        loop {
            let may_stop = self.acc.may_stop();
            let now = Instant::now();
            self.acc.tick_clock();
            if refresh.is_none() && (now >= next_refresh || self.acc.take_metadata_wanted()) {
                next_refresh = now + self.metadata_max_age;
                refresh = Some(Box::pin(Arc::clone(&self).refresh_metadata()));
            }
            let producer = match &self.idempotence {
                None => None,
                Some(idem) => {
                    if let Some(fatal) = idem.fatal() {
                        self.acc.fail_queued(fatal);
                    } else if !idle {
                        if let Some(bump_from) = idem.start_init() {
                            requests.push(Box::pin(Arc::clone(&self).init(bump_from)));
                        }
                    }
                    Some(idem.current())
                }
            };
            let gate = self
                .txn
                .as_deref()
                .map(|t| move |topic: &Arc<str>, p: i32| t.may_send(topic, p));
            let drained = self.acc.drain(
                now,
                producer,
                gate.as_ref().map(|g| g as &super::accumulator::Gate<'_>),
            );
            if let Some(txn) = &self.txn {
                // Partitions with records that are not in the transaction yet join it.
                if let Some(add) = txn.start_add() {
                    requests.push(Box::pin(add));
                }
            }
            idle = drained.empty;
            if drained.empty && may_stop {
                while requests.next().await.is_some() {}
                tracing::debug!("producer sender: everything sent, stopping");
                return;
            }
            if !drained.ready.is_empty() {
                self.dispatch(drained.ready, &mut requests);
            }
            let wake = self.acc.wake_sender.notified();
            // While records wait, tick at least every CLOCK_TICK (the coarse clock records
            // without a timestamp get); the next linger or backoff deadline is armed on the
            // precise timer, or slept on tokio's when there is none.
            let tick = (!drained.empty).then(|| now + CLOCK_TICK);
            let due = match (drained.next_due, &timer) {
                (Some(at), Some(timer)) => {
                    timer.arm(at.into_std());
                    tick
                }
                (Some(at), None) => Some(at.min(now + CLOCK_TICK)),
                (None, _) => tick,
            };
            let sleep = async {
                match due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => tokio::time::sleep_until(next_refresh).await,
                }
            };
            // New requests are polled (written) here first; a finished one loops to drain.
            let mut refresh_done = false;
            tokio::select! {
                biased;
                Some(()) = requests.next(), if !requests.is_empty() => {}
                _ = wake => {}
                () = refreshed(&mut refresh) => refresh_done = true,
                _ = sleep => {}
            }
            if refresh_done {
                refresh = None;
            }
        }
    }

    /// Refreshes the metadata of every topic the producer has sent to and learns their
    /// partition counts and leaders (see [`learn`](Self::learn)).
    async fn refresh_metadata(self: Arc<Self>) {
        let names = self.acc.topic_names();
        if names.is_empty() {
            return;
        }
        let topics: Vec<&str> = names.iter().map(|t| &**t).collect();
        match self.cluster.refresh(Some(&topics)).await {
            Ok(metadata) => self.learn(&metadata, &topics),
            Err(e) => tracing::debug!(
                error = %e,
                "metadata refresh of the producer's topics failed; tried again in metadata.max.age.ms"
            ),
        }
    }

    /// Takes the partition counts and leaders of `topics` from fresh metadata: a topic with
    /// more partitions than the producer knows grows, so that keyed records go to
    /// `murmur2(key) % new count` from now on, as in the Java client and librdkafka (records
    /// already enqueued keep their partition). A smaller count is ignored (Kafka cannot
    /// shrink a topic; the answering broker's metadata lags).
    fn learn(&self, metadata: &crate::wire::Metadata, topics: &[&str]) {
        for &topic in topics {
            if let Some(meta) = metadata.topics.get(topic).filter(|m| m.error == 0) {
                self.acc.learn_metadata(topic, meta);
            }
        }
    }

    /// The thread that wakes this sender at linger deadlines (see [`DeadlineTimer`]); none
    /// without linger (nothing waits but backoffs, which tokio's timer serves well enough), or
    /// when the system refuses a thread (then tokio's timer: batches may linger up to about
    /// 2 ms longer).
    fn precise_timer(&self) -> Option<DeadlineTimer> {
        if self.acc.settings.linger.is_zero() {
            return None;
        }
        let acc = Arc::clone(&self.acc);
        match DeadlineTimer::spawn(move || acc.wake_sender.notify_one()) {
            Ok(timer) => Some(timer),
            Err(e) => {
                tracing::warn!(error = %e, "producer: no linger timer thread; lingering on tokio's millisecond timer");
                None
            }
        }
    }

    /// Gets a producer id (or the next epoch) for the idempotent producer. A give-up fails the
    /// queued records (the next record tries again); a fatal answer fails the producer.
    async fn init(self: Arc<Self>, bump_from: Option<(i64, i16)>) {
        let Some(idem) = &self.idempotence else {
            return;
        };
        let result = idempotence::init_producer_id(
            &self.cluster,
            &self.backoff,
            self.hook.as_ref(),
            self.request_timeout,
            bump_from,
        )
        .await;
        match result {
            Ok((id, epoch)) => idem.installed(id, epoch),
            Err(e) if e.kafka_code().is_some_and(|c| codes::is_fatal(c.code())) => {
                idem.set_fatal(e)
            }
            Err(e) => {
                tracing::error!(error = %e, "idempotent producer: no producer id; queued records fail");
                idem.init_failed();
                self.acc.fail_queued(&e);
            }
        }
        self.acc.wake_sender.notify_one();
    }

    /// Groups ready batches per leader and starts one request per group.
    fn dispatch(
        self: &Arc<Self>,
        ready: Vec<(Arc<TopicQueues>, i32, ReadyBatch)>,
        requests: &mut FuturesUnordered<Pin<Box<dyn Future<Output = ()> + Send>>>,
    ) {
        let metadata = self.cluster.metadata();
        let mut groups: Vec<(i32, Vec<InFlight>, usize)> = Vec::new();
        let mut leaderless = Vec::new();
        for (topic, partition, batch) in ready {
            let b = InFlight {
                topic,
                partition,
                batch,
                data: Bytes::new(),
            };
            let leader = metadata.leader(&b.topic.name, partition);
            b.topic.set_has_leader(partition, leader.is_some());
            let Some(leader) = leader else {
                leaderless.push(b);
                continue;
            };
            let size = b.batch.size();
            // One batch per partition in a request (its response has one entry per
            // partition); a partition's next batch goes in a later request on the same
            // connection, which the broker handles after the earlier one.
            let same_partition =
                |x: &InFlight| x.partition == b.partition && Arc::ptr_eq(&x.topic, &b.topic);
            match groups.iter_mut().find(|(l, batches, bytes)| {
                *l == leader
                    && *bytes + size <= MAX_REQUEST_BYTES
                    && !batches.iter().any(same_partition)
            }) {
                Some((_, batches, bytes)) => {
                    batches.push(b);
                    *bytes += size;
                }
                None => groups.push((leader, vec![b], size)),
            }
        }
        for (leader, batches, _) in groups {
            requests.push(Box::pin(Arc::clone(self).send(leader, batches)));
        }
        if !leaderless.is_empty() {
            let this = Arc::clone(self);
            requests.push(Box::pin(async move {
                let failed = leaderless
                    .into_iter()
                    .map(|b| {
                        let e = Error::broker(
                            5,
                            format!("produce to {}/{}", b.topic.name, b.partition),
                            Some("no leader in metadata".into()),
                        );
                        (b, e)
                    })
                    .collect();
                this.retry_all(failed, false).await;
            }));
        }
    }

    /// Sends one produce request to `leader` and resolves its batches.
    async fn send(self: Arc<Self>, leader: i32, batches: Vec<InFlight>) {
        let mut encoded = Vec::with_capacity(batches.len());
        for mut b in batches {
            match b.batch.encode(self.acc.settings.compression) {
                Ok(data) => {
                    b.data = data;
                    encoded.push(b);
                }
                Err(e) => self.give_up(b, e),
            }
        }
        if encoded.is_empty() {
            return;
        }
        let conn = match self.cluster.broker(leader).await {
            Ok(c) => c,
            Err(e) => {
                // The leader cannot be reached or is missing from metadata (a broker that is
                // down): retried like a dropped connection, whatever the error says.
                let failed = encoded.into_iter().map(|b| (b, duplicate(&e))).collect();
                return self.retry_all(failed, true).await;
            }
        };
        let version = match conn.version_for::<ProduceRequest>(Some(MAX_PRODUCE_VERSION)) {
            Ok(v) => v,
            Err(e) => {
                for b in encoded {
                    self.give_up(b, duplicate(&e));
                }
                return;
            }
        };
        let expect_response = self.acks != Acks::None;
        // The batches go out as they are (vectored write), not copied into a request frame.
        let transactional_id = self.txn.as_ref().map(|t| t.id());
        let sent = match encode_produce(
            &encoded,
            transactional_id,
            self.acks,
            self.request_timeout,
            version,
        ) {
            Some(body) => {
                conn.send_parts::<ProduceRequest>(&body, version, expect_response)
                    .await
            }
            None => {
                let request =
                    build_request(&encoded, transactional_id, self.acks, self.request_timeout);
                if expect_response {
                    conn.send_version(&request, version).await.map(Some)
                } else {
                    conn.send_without_response(&request, version)
                        .await
                        .map(|()| None)
                }
            }
        };
        let response = match sent {
            Ok(Some(r)) => r,
            Ok(None) => {
                for b in encoded {
                    self.succeed(
                        b,
                        BatchAck {
                            base_offset: -1,
                            log_append_time: None,
                        },
                    );
                }
                return;
            }
            Err(e) => {
                let failed = encoded.into_iter().map(|b| (b, duplicate(&e))).collect();
                return self.retry_all(failed, false).await;
            }
        };
        let mut failed = Vec::new();
        for b in encoded {
            let found = response
                .responses
                .iter()
                .filter(|t| t.name.0.as_str() == &*b.topic.name)
                .flat_map(|t| t.partition_responses.iter())
                .find(|p| p.index == b.partition);
            let context = || format!("produce to {}/{}", b.topic.name, b.partition);
            match found {
                None => {
                    let e = Error::Protocol(format!(
                        "{}: the broker's response has no entry for this partition",
                        context()
                    ));
                    self.give_up(b, e);
                }
                Some(p) if codes::is_duplicate(p.error_code) && b.batch.sequence.is_some() => {
                    // The broker wrote this batch before (a resend of an unanswered
                    // request); it does not say at which offset.
                    tracing::debug!(
                        topic = %b.topic.name,
                        partition = b.partition,
                        "resent batch was a duplicate; acknowledged without offsets"
                    );
                    self.succeed(
                        b,
                        BatchAck {
                            base_offset: -1,
                            log_append_time: None,
                        },
                    );
                }
                Some(p)
                    if self.txn.is_some()
                        && (codes::is_sequence_error(p.error_code)
                            || codes::is_fatal(p.error_code)) =>
                {
                    // A transactional producer does not recover sequences in the middle of a
                    // transaction: INVALID_PRODUCER_EPOCH is fencing (fatal), the other
                    // sequence errors doom the transaction (its abort takes a new epoch).
                    let e = Error::broker(
                        p.error_code,
                        context(),
                        p.error_message.as_ref().map(|m| m.to_string()),
                    );
                    let e = match &self.txn {
                        Some(txn) => txn.classify(e),
                        None => e,
                    };
                    self.give_up(b, e);
                }
                Some(p) if codes::is_sequence_error(p.error_code) && b.batch.sequence.is_some() => {
                    let e = Error::broker(
                        p.error_code,
                        context(),
                        p.error_message.as_ref().map(|m| m.to_string()),
                    );
                    let sequence = b.batch.sequence.expect("checked");
                    if self.acc.is_next_expected(&b.topic, b.partition, sequence) {
                        // The broker lost or refuses our sequence state (KIP-360).
                        if let Some(idem) = &self.idempotence {
                            idem.reset(sequence.producer_id, sequence.epoch);
                        }
                    }
                    // Otherwise an earlier batch failed: this one follows it again.
                    self.retry_or_give_up(b, e, true);
                }
                Some(p) if codes::is_fatal(p.error_code) && self.idempotence.is_some() => {
                    let e = Error::broker(
                        p.error_code,
                        context(),
                        p.error_message.as_ref().map(|m| m.to_string()),
                    );
                    if let Some(idem) = &self.idempotence {
                        idem.set_fatal(delivery::duplicate(&e));
                    }
                    self.give_up(b, e);
                }
                Some(p) if p.error_code == 0 => {
                    let ack = BatchAck {
                        base_offset: p.base_offset,
                        log_append_time: (p.log_append_time_ms >= 0)
                            .then_some(p.log_append_time_ms),
                    };
                    self.succeed(b, ack);
                }
                Some(p) if p.error_code == MESSAGE_TOO_LARGE && b.batch.records > 1 => {
                    self.split(b);
                }
                Some(p) if p.error_code == MESSAGE_TOO_LARGE => {
                    tracing::warn!(
                        topic = %b.topic.name,
                        partition = b.partition,
                        records = b.batch.records,
                        bytes = b.data.len(),
                        "broker rejected a batch as too large (MESSAGE_TOO_LARGE)"
                    );
                    let e = Error::RecordTooLarge {
                        topic: b.topic.name.to_string(),
                        size: b.data.len(),
                        max: self.message_max_bytes,
                    };
                    self.give_up(b, e);
                }
                Some(p) => {
                    let e = Error::broker(
                        p.error_code,
                        context(),
                        p.error_message.as_ref().map(|m| m.to_string()),
                    );
                    if e.is_retriable() {
                        failed.push((b, e));
                    } else {
                        self.give_up(b, e);
                    }
                }
            }
        }
        if !failed.is_empty() {
            self.retry_all(failed, false).await;
        }
    }

    /// Refreshes metadata of the topics involved, then retries each batch after its backoff
    /// or gives it up.
    async fn retry_all(&self, failed: Vec<(InFlight, Error)>, resend: bool) {
        let mut topics: Vec<&str> = failed.iter().map(|(b, _)| &*b.topic.name).collect();
        topics.sort_unstable();
        topics.dedup();
        let retriable = resend || failed.iter().any(|(_, e)| e.is_retriable());
        if retriable {
            match self.cluster.refresh(Some(&topics)).await {
                Ok(metadata) => {
                    // A partition the producer did not know (a topic that grew) is learnt.
                    self.learn(&metadata, &topics);
                    // Keyless records avoid partitions without a leader until they have one.
                    for (b, _) in &failed {
                        for p in 0..b.topic.partition_count() {
                            b.topic
                                .set_has_leader(p, metadata.leader(&b.topic.name, p).is_some());
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "metadata refresh after a failed produce failed")
                }
            }
        }
        for (b, e) in failed {
            self.retry_or_give_up(b, e, resend);
        }
    }

    /// Resends the batch after a backoff (retriable errors, or `resend` for the idempotent
    /// producer's sequence errors) until `delivery.timeout.ms`; gives it up otherwise.
    fn retry_or_give_up(&self, mut b: InFlight, error: Error, resend: bool) {
        b.batch.attempts += 1;
        let attempt = b.batch.attempts;
        let elapsed = b.batch.created.elapsed();
        let operation = || format!("produce to {}/{}", b.topic.name, b.partition);
        if !resend && !error.is_retriable() {
            return self.give_up(b, error);
        }
        if self.txn.as_ref().is_some_and(|t| t.is_doomed()) {
            // The transaction can only be aborted: nothing of it is resent.
            return self.give_up(b, error);
        }
        if elapsed >= self.delivery_timeout {
            let e = Error::RetriesExhausted {
                operation: format!(
                    "{} ({} records, delivery.timeout.ms = {})",
                    operation(),
                    b.batch.records,
                    self.delivery_timeout.as_millis()
                ),
                attempts: attempt,
                elapsed,
                last_error: Box::new(error),
            };
            return self.give_up(b, e);
        }
        // The last attempt happens at the deadline at the latest.
        let delay = self
            .backoff
            .delay_for_attempt(attempt)
            .min(self.delivery_timeout - elapsed);
        let op = operation();
        tracing::warn!(
            operation = %op,
            attempt,
            delay_ms = delay.as_millis() as u64,
            error = %error,
            "produce failed, retrying the batch"
        );
        if let Some(hook) = &self.hook {
            hook(&RetryEvent {
                operation: &op,
                attempt,
                delay,
                error: &error,
            });
        }
        self.acc.counters.retries.fetch_add(1, Ordering::Relaxed);
        b.batch.retry_at = Some(Instant::now() + delay);
        self.acc.requeue(&b.topic, b.partition, b.batch);
    }

    /// The broker rejected a batch of several records as too large: send its records again
    /// in two halves (each may split again), in order, ahead of the partition's queue.
    fn split(&self, b: InFlight) {
        let (first, second, at) = match batch::split(&b.data) {
            Ok(halves) => halves,
            Err(e) => return self.give_up(b, e),
        };
        tracing::warn!(
            topic = %b.topic.name,
            partition = b.partition,
            records = b.batch.records,
            bytes = b.data.len(),
            "broker rejected a batch as too large (MESSAGE_TOO_LARGE); splitting it in two"
        );
        self.acc.counters.retries.fetch_add(1, Ordering::Relaxed);
        // The parts take the batch's place and, with idempotence, its sequence numbers:
        // the second part continues where the first ends, the next batch where it ended.
        let (order, sub) = b.batch.order.unwrap_or((0, 0));
        let part = |builder: batch::BatchBuilder, reserved: usize, delta: i32| {
            let records = builder.len();
            let mut part = ReadyBatch::new(
                Payload::Open(builder),
                records,
                reserved,
                b.batch.created,
                CompletionGuard(BatchCompletion::new(Arc::clone(&b.topic.name), b.partition)),
            );
            part.order = Some((order, sub + delta));
            part.sequence = b.batch.sequence.map(|s| s.plus(delta));
            part
        };
        let half_reserved = b.batch.reserved / 2;
        let first = part(first, half_reserved, 0);
        let second = part(second, b.batch.reserved - half_reserved, at);
        b.batch.completion.0.split(vec![
            (0, Arc::clone(&first.completion.0)),
            (at, Arc::clone(&second.completion.0)),
        ]);
        self.acc
            .requeue_split(&b.topic, b.partition, &b.batch.completion.0, first, second);
    }

    fn succeed(&self, b: InFlight, ack: BatchAck) {
        let c = &self.acc.counters;
        c.records_sent
            .fetch_add(b.batch.records as u64, Ordering::Relaxed);
        c.bytes_sent
            .fetch_add(b.data.len() as u64, Ordering::Relaxed);
        c.batches_sent.fetch_add(1, Ordering::Relaxed);
        b.batch.completion.0.acknowledge(ack);
        self.acc.finished(
            &b.topic,
            b.partition,
            &b.batch.completion.0,
            b.batch.sequence.map(|s| (s, b.batch.records)),
            b.batch.reserved,
        );
        // Nothing needs the bytes any more (no retry): the buffer serves a later batch.
        let InFlight {
            data, mut batch, ..
        } = b;
        drop(data);
        if let Payload::Encoded(bytes) =
            std::mem::replace(&mut batch.payload, Payload::Encoded(Bytes::new()))
        {
            self.acc.recycle(bytes);
        }
    }

    fn give_up(&self, mut b: InFlight, error: Error) {
        tracing::error!(
            topic = %b.topic.name,
            partition = b.partition,
            records = b.batch.records,
            error = %error,
            "produce failed for good; the batch's records fail"
        );
        self.acc
            .counters
            .records_failed
            .fetch_add(b.batch.records as u64, Ordering::Relaxed);
        if let Some(txn) = &self.txn {
            // Before the record's future resolves: whoever sees its error finds the
            // transaction doomed already.
            txn.batch_failed(&error);
        }
        b.batch.fail(error);
        self.acc.finished(
            &b.topic,
            b.partition,
            &b.batch.completion.0,
            None,
            b.batch.reserved,
        );
    }
}

fn duplicate(e: &Error) -> Error {
    delivery::duplicate(e)
}

/// The body of a produce request (v3–v9) for batches that all go to the same broker, as
/// chunks: the small encoded fields between the batches, and each batch's own `Bytes`. Same
/// bytes as `build_request(..).encode(version)` (checked by a test). `None` for other
/// versions.
fn encode_produce(
    batches: &[InFlight],
    transactional_id: Option<&str>,
    acks: Acks,
    timeout: Duration,
    version: i16,
) -> Option<Vec<Bytes>> {
    use bytes::{BufMut, BytesMut};
    if !(3..=9).contains(&version) {
        return None;
    }
    let flexible = version >= 9;
    use crate::varint::put_uvarint;
    let put_len = |buf: &mut BytesMut, n: usize, wide: bool| {
        if flexible {
            put_uvarint(buf, n as u64 + 1);
        } else if wide {
            buf.put_i32(n as i32);
        } else {
            buf.put_i16(n as i16);
        }
    };
    // Topics in first-seen order, each with its partitions, as `build_request` groups them.
    let mut topics: Vec<(&TopicQueues, Vec<&InFlight>)> = Vec::new();
    for b in batches {
        match topics
            .iter_mut()
            .find(|(t, _)| t.wire_name == b.topic.wire_name)
        {
            Some((_, v)) => v.push(b),
            None => topics.push((&b.topic, vec![b])),
        }
    }
    let mut parts = Vec::with_capacity(2 * batches.len() + 1);
    let mut buf = BytesMut::with_capacity(64 + 32 * batches.len());
    match transactional_id {
        Some(id) => {
            put_len(&mut buf, id.len(), false);
            buf.put_slice(id.as_bytes());
        }
        // null
        None if flexible => put_uvarint(&mut buf, 0),
        None => buf.put_i16(-1),
    }
    buf.put_i16(acks.as_i16());
    buf.put_i32(timeout.as_millis().min(i32::MAX as u128) as i32);
    put_len(&mut buf, topics.len(), true);
    for (topic, partitions) in &topics {
        let name = topic.wire_name.0.as_bytes();
        put_len(&mut buf, name.len(), false);
        buf.put_slice(name);
        put_len(&mut buf, partitions.len(), true);
        for b in partitions {
            buf.put_i32(b.partition);
            put_len(&mut buf, b.data.len(), true);
            parts.push(buf.split().freeze());
            parts.push(b.data.clone());
            if flexible {
                put_uvarint(&mut buf, 0); // partition's tagged fields
            }
        }
        if flexible {
            put_uvarint(&mut buf, 0); // topic's tagged fields
        }
    }
    if flexible {
        put_uvarint(&mut buf, 0); // request's tagged fields
    }
    parts.push(buf.freeze());
    Some(parts)
}

/// One produce request for batches that all go to the same broker.
fn build_request(
    batches: &[InFlight],
    transactional_id: Option<&str>,
    acks: Acks,
    timeout: Duration,
) -> ProduceRequest {
    let mut topic_data: Vec<TopicProduceData> = Vec::new();
    for b in batches {
        let partition = PartitionProduceData::default()
            .with_index(b.partition)
            .with_records(Some(b.data.clone()));
        match topic_data.iter_mut().find(|t| t.name == b.topic.wire_name) {
            Some(t) => t.partition_data.push(partition),
            None => topic_data.push(
                TopicProduceData::default()
                    .with_name(b.topic.wire_name.clone())
                    .with_partition_data(vec![partition]),
            ),
        }
    }
    ProduceRequest::default()
        .with_transactional_id(transactional_id.map(|id| {
            kafka_protocol::messages::TransactionalId(
                kafka_protocol::protocol::StrBytes::from_string(id.to_string()),
            )
        }))
        .with_acks(acks.as_i16())
        .with_timeout_ms(timeout.as_millis().min(i32::MAX as u128) as i32)
        .with_topic_data(topic_data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Compression;
    use crate::producer::accumulator::Settings;
    use kafka_protocol::protocol::Encodable;

    #[test]
    fn produce_chunks_encode_like_kafka_protocol() {
        let acc = Accumulator::new(Settings {
            linger: Duration::from_millis(5),
            batch_max_bytes: 1 << 20,
            buffer_max_bytes: 1 << 30,
            compression: Compression::None,
            max_in_flight: 5,
        });
        acc.add_topic("alpha", 3);
        acc.add_topic("b", 2);
        let alpha = acc.topic("alpha").unwrap();
        let b = acc.topic("b").unwrap();
        let batch = |topic: &Arc<TopicQueues>, partition: i32, data: &'static [u8]| InFlight {
            topic: Arc::clone(topic),
            partition,
            batch: ReadyBatch::new(
                Payload::Encoded(Bytes::from_static(data)),
                1,
                0,
                Instant::now(),
                CompletionGuard(BatchCompletion::new(Arc::clone(&topic.name), partition)),
            ),
            data: Bytes::from_static(data),
        };
        let big: &'static [u8] = Box::leak(vec![7u8; 300].into_boxed_slice());
        let batches = vec![
            batch(&alpha, 2, b"first batch"),
            batch(&b, 0, big),
            batch(&alpha, 0, b"third"),
        ];
        for version in 3..=9 {
            for acks in [Acks::All, Acks::Leader, Acks::None] {
                for txn in [None, Some("orders-tx")] {
                    let timeout = Duration::from_millis(30_000);
                    let request = build_request(&batches, txn, acks, timeout);
                    let mut expected = bytes::BytesMut::new();
                    request.encode(&mut expected, version).unwrap();
                    let parts = encode_produce(&batches, txn, acks, timeout, version).unwrap();
                    let got: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
                    assert_eq!(got, &expected[..], "v{version} {acks:?} {txn:?}");
                }
            }
        }
        assert!(encode_produce(&batches, None, Acks::All, Duration::from_secs(1), 2).is_none());
    }
}
