//! The producer: batching per partition, Java-compatible partitioning, delivery futures.
//!
//! ```no_run
//! # async fn demo() -> purekafka::Result<()> {
//! use purekafka::{Client, Config, Record};
//!
//! let client = Client::connect(Config::from_env()?).await?;
//! let producer = client.producer();
//!
//! // One record, waiting for the broker's acknowledgement.
//! let d = producer.send(Record::new("orders", "{\"id\":1}").with_key("customer-7")).await?;
//! println!("written to {}/{} at offset {}", d.topic, d.partition, d.offset);
//!
//! // Many records: enqueue (waits only for buffer space), then collect the deliveries.
//! let mut pending = Vec::new();
//! for i in 0..10_000 {
//!     pending.push(producer.enqueue(Record::new("events", format!("event {i}"))).await?);
//! }
//! for p in pending {
//!     p.await?;
//! }
//! producer.close().await;
//! # Ok(()) }
//! ```
//!
//! How it works: [`Producer::enqueue`] picks the partition ([`partitioner`]), reserves the
//! record's bytes in the buffer budget, and encodes the record once into the partition's open
//! batch (`batch`); a background task (`sender`) sends batches that are full or have lingered,
//! one produce request per leader broker, and resolves each batch's shared completion
//! (`delivery`), which every record's [`DeliveryFuture`] reads.

mod accumulator;
pub(crate) mod batch;
mod deadline;
mod delivery;
mod detached;
mod idempotence;
pub mod partitioner;
mod sender;
mod transaction;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::Serialize;

use crate::client::Client;
use crate::consumer::{ConsumerGroupMetadata, TopicPartition};
use crate::error::{Error, Result};
use crate::record::Record;
use crate::wire::Cluster;
use accumulator::{now_millis, Accumulator, Prepared, Settings};
use batch::{record_body_size, record_size_upper_bound, BATCH_HEADER_SIZE};
pub use delivery::{Delivery, DeliveryFuture, SendError};
pub use detached::{BatchReport, DetachedProducer};
pub use partitioner::{murmur2, partition_for_key, to_positive, DefaultPartitioner, Partitioner};

/// A Kafka producer. Cheap to clone: clones share the buffer, the background sender and the
/// connections.
///
/// Records are batched per partition (`linger.ms`, `batch.size`), bounded in memory across
/// partitions (`queue.buffering.max.kbytes`: [`send`](Self::send) and
/// [`enqueue`](Self::enqueue) wait for room, [`try_send`](Self::try_send) refuses with
/// [`Error::QueueFull`]), and retried on retriable errors within `delivery.timeout.ms` without
/// reordering a partition's records.
///
/// Partitions added to a topic are used: the producer looks up the metadata of its topics
/// every `metadata.max.age.ms` (alias `topic.metadata.refresh.interval.ms`, default 5 min),
/// after retriable produce errors, and at once for a record sent to a partition beyond the
/// count it knows. Once it has seen a larger count, keyed records go to
/// `murmur2(key) % new count`, the partition the Java client and librdkafka choose, so a
/// key's records move partition once when its topic grows (as with Java): records enqueued
/// before stay where they were put, in order. A smaller count (a broker whose metadata
/// lags) is ignored, since Kafka cannot remove partitions.
///
/// When the last clone is dropped, the records already enqueued are still sent by the
/// background task (as long as the tokio runtime runs); a record that cannot be sent resolves
/// its future with an error. [`close`](Self::close) waits for all of it.
///
/// With Kafka disabled (`KAFKA_ENABLED=false`) nothing is sent: every record is logged at
/// debug level and resolves as [`Error::Disabled`] ("not sent"), so an application runs
/// without a broker.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Handle>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("enabled", &self.inner.core.is_some())
            .field("metrics", &self.metrics())
            .finish()
    }
}

struct Handle {
    client: Client,
    /// `None` when Kafka is disabled.
    core: Option<Arc<Core>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Some(core) = &self.core {
            // The last producer is gone: send what is queued without lingering, then stop.
            core.acc.start_closing();
        }
    }
}

struct Core {
    acc: Arc<Accumulator>,
    /// Records of `try_send` (and `enqueue`s behind them) waiting for their topic's
    /// metadata, in arrival order per topic; one loader task per topic appends them in that
    /// order, so records of one key keep their order.
    waiting: Mutex<HashMap<Arc<str>, Vec<WaitingRecord>>>,
    /// Topics in `waiting` (read without the lock on the hot path).
    waiting_topics: AtomicUsize,
    cluster: Arc<Cluster>,
    /// `None`: the default (murmur2 of the key, sticky without key), inlined.
    partitioner: Option<Box<dyn Partitioner>>,
    message_max_bytes: usize,
    default_headers: Option<DefaultHeaders>,
    sender: Arc<sender::Sender>,
    /// The transactional producer's state (`transactional.id`).
    txn: Option<Arc<transaction::Transactions>>,
    started: AtomicBool,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A record waiting for its topic's metadata.
struct WaitingRecord {
    record: Record,
    body: usize,
    reserved: usize,
    /// Taken when the record's append is answered; a record dropped unanswered answers
    /// [`Error::Closed`] and hands itself back.
    reply: Option<tokio::sync::oneshot::Sender<Result<DeliveryFuture, SendError>>>,
    /// Keeps the sender running and `flush` waiting until the record is appended.
    _pending: accumulator::DeferredAppend,
}

impl WaitingRecord {
    /// Answers the record's sender with its append (or the reason it failed and the record).
    fn answer(&mut self, appended: Result<DeliveryFuture>) {
        if let Some(reply) = self.reply.take() {
            let answer = appended.map_err(|e| SendError::new(e, self.take_record()));
            let _ = reply.send(answer);
        }
    }

    fn take_record(&mut self) -> Record {
        std::mem::replace(&mut self.record, Record::new("", Bytes::new()))
    }
}

impl Drop for WaitingRecord {
    fn drop(&mut self) {
        self.answer(Err(Error::Closed("producer (stopped before the append)")));
    }
}

/// The value of `$result`, or a return with the error and the record (`$record`) handed
/// back.
macro_rules! or_hand_back {
    ($result:expr, $record:ident) => {
        match $result {
            Ok(v) => v,
            Err(e) => return Err(SendError::new(e, $record)),
        }
    };
}

/// The values of the default headers (`default.headers`).
struct DefaultHeaders {
    service: Bytes,
    version: Bytes,
}

/// Counters of a producer, from [`Producer::metrics`].
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ProducerMetrics {
    /// Records acknowledged by the broker (or written, with `acks=0`).
    pub records_sent: u64,
    /// Bytes of record batches acknowledged (after compression).
    pub bytes_sent: u64,
    /// Batches acknowledged.
    pub batches_sent: u64,
    /// Average acknowledged batch size in bytes.
    pub avg_batch_bytes: u64,
    /// Average number of records per acknowledged batch.
    pub avg_batch_records: f64,
    /// Batch resends after retriable errors.
    pub retries: u64,
    /// Records that failed for good.
    pub errors: u64,
    /// Records enqueued and not yet resolved.
    pub queue_depth: u64,
    /// Bytes reserved by records not yet resolved (bounded by `buffer_max_bytes`).
    pub buffered_bytes: usize,
    /// The highest `buffered_bytes` seen.
    pub buffered_bytes_peak: usize,
    /// The buffer bound (`queue.buffering.max.kbytes`).
    pub buffer_max_bytes: usize,
    /// The idempotent producer's id (-1 while it has none or without idempotence).
    pub producer_id: i64,
    /// The idempotent producer's epoch (-1 while it has none or without idempotence).
    pub producer_epoch: i16,
    /// Producer ids or epochs taken after the first, when the broker's sequence state
    /// differed from the producer's (KIP-360).
    pub producer_id_resets: u64,
}

impl Client {
    /// A producer using this client's connections and its producer configuration.
    pub fn producer(&self) -> Producer {
        Producer::new(self.clone(), None)
    }

    /// A producer with a custom [`Partitioner`].
    pub fn producer_with_partitioner(&self, partitioner: impl Partitioner) -> Producer {
        Producer::new(self.clone(), Some(Box::new(partitioner)))
    }
}

impl Producer {
    fn new(client: Client, partitioner: Option<Box<dyn Partitioner>>) -> Producer {
        let core = client.wire().ok().map(|cluster| {
            let config = client.config();
            let p = config.producer();
            let acc = Accumulator::new(Settings {
                linger: p.linger,
                batch_max_bytes: p.batch_max_bytes.min(config.message_max_bytes()),
                buffer_max_bytes: p.buffer_max_bytes,
                compression: p.compression,
                max_in_flight: p.max_in_flight,
            });
            let idempotence = p.enable_idempotence.then(|| {
                Arc::new(if p.transactional_id.is_some() {
                    idempotence::Idempotence::transactional()
                } else {
                    idempotence::Idempotence::default()
                })
            });
            let txn = match (&p.transactional_id, &idempotence) {
                (Some(id), Some(idem)) => Some(Arc::new(transaction::Transactions::new(
                    id.clone(),
                    p.transaction_timeout,
                    Arc::clone(cluster),
                    config.reconnect().clone(),
                    config.retry_hook().cloned(),
                    Arc::clone(idem),
                    Arc::clone(&acc),
                ))),
                _ => None,
            };
            let sender = Arc::new(sender::Sender {
                acc: Arc::clone(&acc),
                cluster: Arc::clone(cluster),
                acks: p.acks,
                request_timeout: config.request_timeout(),
                delivery_timeout: p.delivery_timeout,
                message_max_bytes: config.message_max_bytes(),
                backoff: config.reconnect().clone(),
                hook: config.retry_hook().cloned(),
                idempotence,
                txn: txn.clone(),
                metadata_max_age: config.metadata_max_age(),
            });
            Arc::new(Core {
                acc,
                waiting: Mutex::new(HashMap::new()),
                waiting_topics: AtomicUsize::new(0),
                cluster: Arc::clone(cluster),
                partitioner,
                message_max_bytes: config.message_max_bytes(),
                default_headers: p.default_headers.then(|| DefaultHeaders {
                    service: Bytes::from(config.client_id().to_string()),
                    version: Bytes::from(p.service_version.clone()),
                }),
                sender,
                txn,
                started: AtomicBool::new(false),
                task: Mutex::new(None),
            })
        });
        Producer {
            inner: Arc::new(Handle { client, core }),
        }
    }

    /// Sends one record and waits until the broker acknowledged it (or it failed for good).
    ///
    /// Waits for buffer space first when the buffer is full. A failure hands the record back
    /// ([`SendError`]) with an error that names the topic and partition and says why:
    /// [`Error::RecordTooLarge`] (before sending, or when the broker says
    /// MESSAGE_TOO_LARGE), [`Error::UnknownTopic`], [`Error::Broker`] for permanent broker
    /// errors, [`Error::RetriesExhausted`] when retriable errors outlasted
    /// `delivery.timeout.ms`, [`Error::Closed`] after [`close`](Self::close),
    /// [`Error::Disabled`] when Kafka is disabled (not sent).
    pub async fn send(&self, record: Record) -> Result<Delivery, SendError> {
        self.enqueue(record).await?.await
    }

    /// Serializes `value` as JSON and sends it with `key` to `topic`. The record is built
    /// here, so a failure is an [`Error`] without it; build it with [`Record::json`] and
    /// [`send`](Self::send) it to get it back on failure.
    pub async fn send_json<T: Serialize + ?Sized>(
        &self,
        topic: impl Into<std::borrow::Cow<'static, str>>,
        key: impl AsRef<[u8]>,
        value: &T,
    ) -> Result<Delivery> {
        let record = Record::json(topic, value)?.with_key(Bytes::copy_from_slice(key.as_ref()));
        Ok(self.send(record).await?)
    }

    /// Sends many records: enqueues them all, then waits for every delivery. Results are in
    /// the order of `records`; each failure hands its record back.
    pub async fn send_all(
        &self,
        records: impl IntoIterator<Item = Record>,
    ) -> Vec<Result<Delivery, SendError>> {
        let mut pending = Vec::new();
        for r in records {
            pending.push(self.enqueue(r).await);
        }
        let mut out = Vec::with_capacity(pending.len());
        for p in pending {
            out.push(match p {
                Ok(f) => f.await,
                Err(e) => Err(e),
            });
        }
        out
    }

    /// Queues a record and returns its [`DeliveryFuture`], waiting only while the buffer is
    /// full. The throughput API: enqueue many, then await the futures.
    ///
    /// Fails at once (nothing queued, the record handed back) for a record larger than
    /// `message.max.bytes` ([`Error::RecordTooLarge`]), an unknown topic or partition, or a
    /// closed producer. A partition beyond the topic's known count is looked up first (the
    /// topic may have grown): it fails only when fresh metadata does not have it either.
    pub async fn enqueue(&self, mut record: Record) -> Result<DeliveryFuture, SendError> {
        let core = match self.core_for(&record) {
            Ok(Some(core)) => core,
            Ok(None) => {
                let disabled = SendError::new(Error::Disabled, record);
                return Ok(DeliveryFuture::ready(Err(disabled)));
            }
            Err(e) => return Err(SendError::new(e, record)),
        };
        let _in_transaction = or_hand_back!(
            core.txn.as_ref().map(|t| t.enter_send()).transpose(),
            record
        );
        let (body, reserved) = or_hand_back!(core.prepare(&mut record), record);
        or_hand_back!(core.acc.reserve(reserved).await, record);
        if core.waiting_topics.load(Ordering::Acquire) > 0 {
            // Records of `try_send` wait for some topic's metadata: behind them if it is
            // this topic.
            return core.append_or_wait(&self.inner.client, record, body, reserved);
        }
        if let Some(appended) = try_append_record(
            &core.acc,
            core.partitioner.as_deref(),
            &record,
            body,
            reserved,
        ) {
            return match appended {
                // A partition beyond the topic's known count: the topic may have grown.
                Err(e) if beyond_known_partitions(&e) => {
                    core.append_after_refresh(&self.inner.client, record, body, reserved)
                        .await
                }
                other => other.map_err(|e| SendError::new(e, record)),
            };
        }
        // First record for this topic: learn its partitions, then append.
        if let Err(e) = core.load_topic(&self.inner.client, &record.topic).await {
            core.acc.release(reserved);
            return Err(SendError::new(e, record));
        }
        let appended = core.append(&record, body, reserved);
        appended.map_err(|e| SendError::new(e, record))
    }

    /// Queues a record without waiting: [`Error::QueueFull`] when the buffer is full, with
    /// the record handed back to send again later. Otherwise like
    /// [`enqueue`](Self::enqueue), except that a partition beyond the topic's known count
    /// fails at once (UNKNOWN_TOPIC_OR_PARTITION) while the producer looks the topic up in
    /// the background, so a later `try_send` finds a partition the topic gained.
    pub fn try_send(&self, mut record: Record) -> Result<DeliveryFuture, SendError> {
        let core = match self.core_for(&record) {
            Ok(Some(core)) => core,
            Ok(None) => {
                let disabled = SendError::new(Error::Disabled, record);
                return Ok(DeliveryFuture::ready(Err(disabled)));
            }
            Err(e) => return Err(SendError::new(e, record)),
        };
        let _in_transaction = or_hand_back!(
            core.txn.as_ref().map(|t| t.enter_send()).transpose(),
            record
        );
        let (body, reserved) = or_hand_back!(core.prepare(&mut record), record);
        or_hand_back!(core.acc.try_reserve(reserved), record);
        let appended = if core.waiting_topics.load(Ordering::Acquire) == 0 {
            try_append_record(
                &core.acc,
                core.partitioner.as_deref(),
                &record,
                body,
                reserved,
            )
        } else {
            None
        };
        let result = match appended {
            Some(appended) => appended.map_err(|e| SendError::new(e, record)),
            None => core.append_or_wait(&self.inner.client, record, body, reserved),
        };
        if matches!(&result, Err(e) if beyond_known_partitions(e.error())) {
            // A partition beyond the topic's known count, and no waiting here: the sender
            // looks the topic up now, so a later send finds a partition it gained.
            core.acc.want_metadata();
        }
        result
    }

    /// Waits until every record enqueued before this call is resolved (sent or failed).
    /// Batches still lingering are sent at once.
    pub async fn flush(&self) {
        let Some(core) = &self.inner.core else { return };
        // Records of `try_send` still waiting for their topic's metadata first.
        core.acc.deferred_appended().await;
        let pending = core.acc.flush_all();
        if !pending.is_empty() {
            core.start_sender();
        }
        for c in pending {
            c.wait().await;
        }
    }

    /// [`flush`](Self::flush), waiting at most `timeout` (rust-rdkafka's `flush(timeout)`):
    /// [`Error::Timeout`] when records are still unacknowledged then. They stay queued and
    /// are still delivered (or fail) within `delivery.timeout.ms`; only the wait ends.
    pub async fn flush_timeout(&self, timeout: std::time::Duration) -> Result<()> {
        tokio::time::timeout(timeout, self.flush())
            .await
            .map_err(|_| Error::Timeout {
                operation: "flush".into(),
                after: timeout,
            })
    }

    /// Flushes and stops: afterwards sends fail with [`Error::Closed`]. Nothing that was
    /// enqueued is dropped; when `close` returns, every record's future is resolved.
    pub async fn close(&self) {
        let Some(core) = &self.inner.core else { return };
        core.acc.closed.store(true, Ordering::Release);
        self.flush().await;
        core.acc.start_closing();
        let task = core.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// The transactional producer's state, or why there is none.
    fn transactions(&self) -> Result<(&Arc<Core>, &Arc<transaction::Transactions>)> {
        let core = self.inner.core.as_ref().ok_or(Error::Disabled)?;
        let txn = core
            .txn
            .as_ref()
            .ok_or_else(|| Error::Transaction("this producer has no transactional.id".into()))?;
        Ok((core, txn))
    }

    /// Readies a transactional producer (`transactional.id`): finds its transaction
    /// coordinator and gets the producer id and a new epoch for the transactional id
    /// (InitProducerId). The broker completes or aborts a transaction that an earlier
    /// instance with the same id left open, and fences that instance: its later sends and
    /// commits fail with PRODUCER_FENCED. Call once, before the first
    /// [`begin_transaction`](Self::begin_transaction); a timeout may be retried.
    ///
    /// ```no_run
    /// # async fn demo(client: purekafka::Client) -> purekafka::Result<()> {
    /// use std::time::Duration;
    /// use purekafka::Record;
    /// // client built with .set("transactional.id", "orders-enricher-1")
    /// let producer = client.producer();
    /// producer.init_transactions(Duration::from_secs(30)).await?;
    /// producer.begin_transaction()?;
    /// producer.enqueue(Record::new("orders-enriched", "{}")).await?;
    /// match producer.commit_transaction(Duration::from_secs(30)).await {
    ///     Ok(()) => {}
    ///     Err(e) if e.is_fatal() => return Err(e), // fenced: a newer instance took over
    ///     Err(_) => producer.abort_transaction(Duration::from_secs(30)).await?,
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn init_transactions(&self, timeout: std::time::Duration) -> Result<()> {
        let (core, txn) = self.transactions()?;
        core.start_sender();
        txn.init(timeout).await
    }

    /// Starts a transaction: from now until the commit or abort, sends belong to it. Sends
    /// outside a transaction fail with [`Error::Transaction`] (nothing is queued).
    pub fn begin_transaction(&self) -> Result<()> {
        self.transactions()?.1.begin()
    }

    /// Commits the transaction: waits for every record sent in it to be acknowledged
    /// (flush), then asks the transaction coordinator to commit (EndTxn). read_committed
    /// consumers then see its records, and offsets sent with
    /// [`send_offsets_to_transaction`](Self::send_offsets_to_transaction) become the group's
    /// committed offsets.
    ///
    /// Errors: [`Error::is_fatal`] (fenced, not authorized): the producer cannot go on; a
    /// timeout: the commit may be retried; anything else (a record that failed, ...): the
    /// transaction must be aborted with [`abort_transaction`](Self::abort_transaction).
    pub async fn commit_transaction(&self, timeout: std::time::Duration) -> Result<()> {
        let (_, txn) = self.transactions()?;
        txn.commit(timeout, self.flush()).await
    }

    /// Aborts the transaction: records not yet sent fail with [`Error::Transaction`], records
    /// in flight are awaited, then the coordinator aborts (EndTxn) — read_committed consumers
    /// never see its records, and its offsets are not committed. When a record of it failed
    /// after it may have been written, the producer also takes a new epoch. Afterwards the
    /// next transaction may begin. Only a fatal error ([`Error::is_fatal`]) ends the producer.
    pub async fn abort_transaction(&self, timeout: std::time::Duration) -> Result<()> {
        let (_, txn) = self.transactions()?;
        txn.abort(timeout, self.flush()).await
    }

    /// Adds a consumer group's offsets to the transaction (KIP-447): they become the group's
    /// committed offsets if, and only if, the transaction commits. `offsets` are the next
    /// offsets to read (the last processed record's offset + 1), as
    /// [`Consumer::commit_offsets`](crate::Consumer::commit_offsets) takes them; `group` is
    /// the consuming member's [`Consumer::group_metadata`](crate::Consumer::group_metadata),
    /// so the group coordinator refuses the commit of a member a rebalance has fenced.
    ///
    /// Sends AddOffsetsToTxn to the transaction coordinator, then TxnOffsetCommit to the
    /// group's coordinator. A failure other than a fatal one or a timeout dooms the
    /// transaction (abort it).
    pub async fn send_offsets_to_transaction(
        &self,
        offsets: impl IntoIterator<Item = (TopicPartition, i64)>,
        group: &ConsumerGroupMetadata,
        timeout: std::time::Duration,
    ) -> Result<()> {
        let (_, txn) = self.transactions()?;
        txn.send_offsets(offsets.into_iter().collect(), group, timeout)
            .await
    }

    /// The producer's counters.
    pub fn metrics(&self) -> ProducerMetrics {
        let Some(core) = &self.inner.core else {
            return ProducerMetrics::default();
        };
        let acc = &core.acc;
        let c = &acc.counters;
        let records_sent = c.records_sent.load(Ordering::Relaxed);
        let bytes_sent = c.bytes_sent.load(Ordering::Relaxed);
        let batches_sent = c.batches_sent.load(Ordering::Relaxed);
        let idempotence = core.sender.idempotence.as_deref();
        let current = idempotence.and_then(|i| i.current());
        ProducerMetrics {
            records_sent,
            bytes_sent,
            batches_sent,
            avg_batch_bytes: bytes_sent.checked_div(batches_sent).unwrap_or(0),
            avg_batch_records: if batches_sent == 0 {
                0.0
            } else {
                records_sent as f64 / batches_sent as f64
            },
            retries: c.retries.load(Ordering::Relaxed),
            errors: c.records_failed.load(Ordering::Relaxed),
            queue_depth: acc.queue_depth(),
            buffered_bytes: acc.buffered(),
            buffered_bytes_peak: c.buffered_peak.load(Ordering::Relaxed),
            buffer_max_bytes: acc.settings.buffer_max_bytes,
            producer_id: current.map_or(-1, |c| c.producer_id),
            producer_epoch: current.map_or(-1, |c| c.epoch),
            producer_id_resets: idempotence.map_or(0, |i| i.resets()),
        }
    }

    /// The core, `None` when Kafka is disabled (the record is logged), or `Closed`.
    #[inline]
    fn core_for(&self, record: &Record) -> Result<Option<&Arc<Core>>> {
        match &self.inner.core {
            None => {
                tracing::debug!(
                    topic = %record.topic,
                    key = ?record.key,
                    bytes = record.value.as_ref().map_or(0, |v| v.len()),
                    "kafka disabled: record not sent"
                );
                Ok(None)
            }
            Some(core) if core.acc.closed.load(Ordering::Acquire) => Err(Error::Closed("producer")),
            Some(core) => match core.sender.idempotence.as_ref().and_then(|i| i.fatal()) {
                Some(fatal) => Err(delivery::duplicate(fatal)),
                None => Ok(Some(core)),
            },
        }
    }
}

impl Core {
    /// Stamps default headers and the timestamp; returns the body size and the bytes to
    /// reserve, or [`Error::RecordTooLarge`].
    #[inline]
    fn prepare(&self, record: &mut Record) -> Result<(usize, usize)> {
        if let Some(d) = &self.default_headers {
            self.stamp(record, d);
        }
        let sizes = measure(record, self.message_max_bytes, &self.acc)?;
        self.start_sender();
        Ok(sizes)
    }

    fn stamp(&self, record: &mut Record, d: &DefaultHeaders) {
        let ts = *record.timestamp.get_or_insert_with(now_millis);
        let h = &mut record.headers;
        if h.get("event_id").is_none() {
            h.insert("event_id", uuid::Uuid::new_v4().to_string());
        }
        if h.get("timestamp").is_none() {
            let at = chrono::DateTime::from_timestamp_millis(ts).unwrap_or_default();
            h.insert(
                "timestamp",
                at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            );
        }
        if h.get("service").is_none() {
            h.insert("service", d.service.clone());
        }
        if h.get("version").is_none() {
            h.insert("version", d.version.clone());
        }
    }

    /// A waiting record's future: resolves once its append is done, then with its delivery.
    fn waiting_future(
        &self,
        record: Record,
        body: usize,
        reserved: usize,
        queue: &mut Vec<WaitingRecord>,
    ) -> DeliveryFuture {
        let (reply, appended) = tokio::sync::oneshot::channel();
        queue.push(WaitingRecord {
            record,
            body,
            reserved,
            reply: Some(reply),
            _pending: accumulator::DeferredAppend::new(Arc::clone(&self.acc)),
        });
        DeliveryFuture::deferred(async move {
            match appended.await {
                Ok(Ok(delivery)) => delivery.await,
                Ok(Err(e)) => Err(e),
                // Not reached: a waiting record answers before it is dropped.
                Err(_) => Err(SendError::new(
                    Error::Closed("producer (stopped before the append)"),
                    Record::new("", Bytes::new()),
                )),
            }
        })
    }

    /// A record for a topic not known yet, or sent while records wait for their topic's
    /// metadata: appended now when its topic is known and nothing of it waits, else queued
    /// behind the waiting ones (the first starts the topic's loader task).
    fn append_or_wait(
        self: &Arc<Self>,
        client: &Client,
        record: Record,
        body: usize,
        reserved: usize,
    ) -> Result<DeliveryFuture, SendError> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(queue) = waiting.get_mut(&*record.topic) {
            return Ok(self.waiting_future(record, body, reserved, queue));
        }
        // The loader appends under this lock, so nothing waiting can be overtaken here.
        if let Some(appended) = try_append_record(
            &self.acc,
            self.partitioner.as_deref(),
            &record,
            body,
            reserved,
        ) {
            return appended.map_err(|e| SendError::new(e, record));
        }
        let topic: Arc<str> = Arc::from(&*record.topic);
        let mut queue = Vec::new();
        let future = self.waiting_future(record, body, reserved, &mut queue);
        waiting.insert(Arc::clone(&topic), queue);
        self.waiting_topics.fetch_add(1, Ordering::AcqRel);
        drop(waiting);
        self.spawn_loader(client.clone(), topic);
        Ok(future)
    }

    /// Loads `topic`'s metadata, then appends its waiting records in their order.
    fn spawn_loader(self: &Arc<Self>, client: Client, topic: Arc<str>) {
        let core = Arc::clone(self);
        tokio::spawn(async move {
            let loaded = core.load_topic(&client, &topic).await;
            let mut waiting = core.waiting.lock().unwrap_or_else(|p| p.into_inner());
            let queue = waiting.remove(&topic).unwrap_or_default();
            for mut w in queue {
                let result = match &loaded {
                    Ok(()) => core.append(&w.record, w.body, w.reserved),
                    Err(e) => {
                        core.acc.release(w.reserved);
                        Err(delivery::duplicate(e))
                    }
                };
                w.answer(result);
            }
            // Only now may senders take the fast path again: one that saw this topic
            // waiting blocks on the lock above and appends after the waiting records.
            core.waiting_topics.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// Fetches the topic's partition count (under the client's retry policy).
    async fn load_topic(&self, client: &Client, topic: &str) -> Result<()> {
        let cluster = &self.cluster;
        let meta = client
            .retry(&format!("metadata of topic {topic}"), || {
                cluster.topic(topic)
            })
            .await?;
        self.acc.learn_metadata(topic, &meta);
        Ok(())
    }

    /// A record named a partition beyond its topic's known count (its reservation was
    /// released): refreshes the topic's metadata, as the Java client does before it gives
    /// up on such a partition, and appends when the topic has grown that far.
    async fn append_after_refresh(
        &self,
        client: &Client,
        record: Record,
        body: usize,
        reserved: usize,
    ) -> Result<DeliveryFuture, SendError> {
        let cluster = &self.cluster;
        let topic: &str = &record.topic;
        let topics = [topic];
        let refreshed = client
            .retry(&format!("metadata of topic {topic}"), || {
                cluster.refresh(Some(&topics))
            })
            .await;
        let metadata = or_hand_back!(refreshed, record);
        if let Some(meta) = metadata.topics.get(topic).filter(|m| m.error == 0) {
            self.acc.learn_metadata(topic, meta);
        }
        or_hand_back!(self.acc.reserve(reserved).await, record);
        self.append(&record, body, reserved)
            .map_err(|e| SendError::new(e, record))
    }

    /// Chooses the partition and appends; releases the reservation on failure.
    #[inline]
    fn append(&self, record: &Record, body: usize, reserved: usize) -> Result<DeliveryFuture> {
        append_record(
            &self.acc,
            self.partitioner.as_deref(),
            record,
            body,
            reserved,
        )
    }

    /// Starts the background sender on first use (inside the caller's tokio runtime).
    #[inline]
    fn start_sender(&self) {
        if self.started.load(Ordering::Acquire) {
            return;
        }
        let mut task = self.task.lock().unwrap_or_else(|p| p.into_inner());
        if self.started.load(Ordering::Acquire) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                *task = Some(rt.spawn(Arc::clone(&self.sender).run()));
                self.started.store(true, Ordering::Release);
            }
            Err(_) => tracing::error!("the producer needs a tokio runtime; none is running"),
        }
    }
}

/// Whether an append failed because the record's partition is beyond its topic's known
/// partition count (the only UNKNOWN_TOPIC_OR_PARTITION an append answers).
fn beyond_known_partitions(e: &Error) -> bool {
    e.kafka_code() == Some(crate::error::ErrorCode::UnknownTopicOrPartition)
}

/// The record's encoded body size and the bytes to reserve for it, or
/// [`Error::RecordTooLarge`] when it cannot fit in a batch under `message.max.bytes` (or in
/// the buffer).
#[inline]
fn measure(record: &Record, message_max_bytes: usize, acc: &Accumulator) -> Result<(usize, usize)> {
    let body = record_body_size(
        record.key.as_deref(),
        record.value.as_deref(),
        &record.headers,
    );
    let reserved = record_size_upper_bound(body);
    let max = message_max_bytes.min(acc.settings.buffer_max_bytes);
    if reserved + BATCH_HEADER_SIZE > max {
        return Err(Error::RecordTooLarge {
            topic: record.topic.to_string(),
            size: reserved + BATCH_HEADER_SIZE,
            max,
        });
    }
    Ok((body, reserved))
}

/// Chooses the record's partition (explicit, custom partitioner, murmur2 of the key, or
/// sticky) and appends it to that partition's open batch. The caller reserved `reserved`
/// bytes; they are released when this fails.
#[inline]
fn append_record(
    acc: &Accumulator,
    partitioner: Option<&dyn Partitioner>,
    record: &Record,
    body: usize,
    reserved: usize,
) -> Result<DeliveryFuture> {
    try_append_record(acc, partitioner, record, body, reserved).unwrap_or_else(|| {
        acc.release(reserved);
        Err(Error::UnknownTopic(record.topic.to_string()))
    })
}

/// [`append_record`], but `None` (reservation kept) when the topic is not known yet.
#[inline]
fn try_append_record(
    acc: &Accumulator,
    partitioner: Option<&dyn Partitioner>,
    record: &Record,
    body: usize,
    reserved: usize,
) -> Option<Result<DeliveryFuture>> {
    let prepared = Prepared {
        record,
        body,
        reserved,
        timestamp: record.timestamp,
    };
    let result = acc.with_topic(&record.topic, |t| {
        let n = t.partition_count();
        let partition = match record.partition {
            Some(p) => Some(p),
            None => match partitioner {
                None => record.key.as_deref().map(|k| partition_for_key(k, n)),
                Some(custom) => custom.partition(record, n),
            },
        };
        if let Some(p) = partition {
            if !(0..n).contains(&p) {
                return Err(Error::broker(
                    3,
                    format!("{}/{p}", record.topic),
                    Some(format!("the topic has partitions 0..{n}")),
                ));
            }
        }
        Ok(acc.append(t, partition, &prepared))
    })?;
    if result.is_err() {
        acc.release(reserved);
    }
    Some(result)
}

/// Access to the per-record path without a broker, for the criterion benchmarks in
/// `benches/producer.rs`. Not a stable API.
#[doc(hidden)]
pub mod bench {
    use super::*;
    use crate::config::Compression;

    /// An accumulator for one topic whose batches are "acknowledged" locally.
    pub struct Harness {
        acc: Arc<Accumulator>,
        message_max_bytes: usize,
    }

    impl Harness {
        pub fn new(
            topic: &str,
            partitions: usize,
            batch_max_bytes: usize,
            compression: Compression,
        ) -> Self {
            let acc = Accumulator::new(Settings {
                linger: std::time::Duration::from_millis(5),
                batch_max_bytes,
                buffer_max_bytes: 1 << 30,
                compression,
                max_in_flight: 1,
            });
            acc.add_topic(topic, partitions);
            Harness {
                acc,
                message_max_bytes: 1 << 20,
            }
        }

        /// The producer's per-record path: measure, reserve, partition, encode into the batch.
        #[inline]
        pub fn enqueue(&self, record: Record) -> Result<DeliveryFuture> {
            let (body, reserved) = measure(&record, self.message_max_bytes, &self.acc)?;
            self.acc.try_reserve(reserved)?;
            append_record(&self.acc, None, &record, body, reserved)
        }

        /// Closes, encodes (header, CRC, compression) and acknowledges every batch; returns
        /// the encoded bytes.
        pub fn complete_all(&self) -> usize {
            self.acc.start_closing();
            let mut bytes = 0;
            loop {
                let drained = self.acc.drain(tokio::time::Instant::now(), None, None);
                if drained.ready.is_empty() {
                    return bytes;
                }
                for (topic, partition, mut batch) in drained.ready {
                    let data = batch
                        .encode(self.acc.settings.compression)
                        .expect("encodes");
                    bytes += data.len();
                    batch.completion.0.acknowledge(delivery::BatchAck {
                        base_offset: 0,
                        log_append_time: None,
                    });
                    self.acc
                        .finished(&topic, partition, &batch.completion.0, None, batch.reserved);
                }
            }
        }
    }
}
