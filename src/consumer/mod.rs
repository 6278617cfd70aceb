//! The group consumer: [`Client::consumer`] → [`Consumer`].
//!
//! ```no_run
//! # async fn demo() -> purekafka::Result<()> {
//! use std::time::Duration;
//! use purekafka::{Client, Config};
//!
//! let config = Config::builder()
//!     .brokers(["127.0.0.1:9092"])
//!     .group_id("billing")
//!     .set("auto.offset.reset", "earliest")
//!     .build()?;
//! let client = Client::connect(config).await?;
//! let consumer = client.consumer(&["orders"])?;
//! consumer.close_on_shutdown_signal();
//! loop {
//!     let batch = match consumer.poll(Duration::from_secs(1)).await {
//!         Ok(batch) => batch,
//!         Err(purekafka::Error::Closed(_)) => break,
//!         Err(e) => return Err(e),
//!     };
//!     for record in &batch {
//!         println!("{} {} {}", record.partition, record.offset, record.value_str().unwrap_or(""));
//!     }
//!     consumer.commit_batch(&batch).await?; // commit after processing
//! }
//! # Ok(()) }
//! ```
//!
//! How it works: a membership task joins the group on the first poll and keeps the member alive
//! with heartbeats (`membership`); fetch workers, one per broker, prefetch the assigned
//! partitions into a buffer bounded in bytes (`fetcher`); `poll` takes what is buffered.
//! Rebalances are eager: on revoke, offsets of processed records are committed, then every
//! partition is given up; a record counts as processed once it was committed, or once the poll
//! that returned it is followed by another poll.

pub mod assignor;
mod auto_commit;
mod close;
pub(crate) mod decode;
mod fetcher;
mod group_metadata;
pub(crate) mod membership;
pub(crate) mod offsets;
mod state;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use assignor::TopicPartition;
pub use close::shutdown_signal;
pub use group_metadata::ConsumerGroupMetadata;
pub(crate) use membership::is_fatal_group_error;

use crate::client::Client;
use crate::coordinator::Coordinator;
use crate::error::{Error, Result};
use crate::record::ConsumedRecord;
use fetcher::Fetcher;
use state::ConsumerHub;

/// Most records one `poll` returns (whole fetched chunks are split at this size).
const MAX_POLL_RECORDS: usize = 10_000;
/// A poll hands out a fetched chunk's own vector of records; it copies a further chunk's
/// records behind them only while that chunk is smaller than this (copying 4,000 records of
/// ~170 bytes each was 6 % of a 48-partition consume run's samples).
const MERGE_BELOW: usize = 1_024;

/// Told about rebalances: which partitions this member got, gave up, or lost. Set one with
/// [`Consumer::set_rebalance_listener`]. Runs on the membership task: keep it short.
///
/// ```no_run
/// use purekafka::consumer::RebalanceListener;
/// use purekafka::TopicPartition;
///
/// struct Log;
/// impl RebalanceListener for Log {
///     fn on_assigned(&self, partitions: &[TopicPartition]) {
///         println!("assigned {partitions:?}");
///     }
///     fn on_lost(&self, partitions: &[TopicPartition]) {
///         println!("lost {partitions:?}: another member may already process them");
///     }
/// }
/// # fn demo(consumer: &purekafka::Consumer) { consumer.set_rebalance_listener(Log); }
/// ```
pub trait RebalanceListener: Send + Sync + 'static {
    /// A new assignment, after its start positions are known.
    fn on_assigned(&self, _partitions: &[TopicPartition]) {}
    /// Partitions given up in an orderly rebalance (or on close), after the offsets of
    /// processed records were committed (unless [`Consumer::commit_on_revoke`] is off).
    fn on_revoked(&self, _partitions: &[TopicPartition]) {}
    /// Partitions lost without a rebalance: the session ran out or the coordinator fenced
    /// this member (unknown member, illegal generation). Nothing was committed: another
    /// member may own them already. By default the same as [`on_revoked`](Self::on_revoked).
    fn on_lost(&self, partitions: &[TopicPartition]) {
        self.on_revoked(partitions);
    }
}

/// Rebalance listener and options.
#[derive(Default)]
struct Callbacks {
    listener: Mutex<Option<Arc<dyn RebalanceListener>>>,
    no_commit_on_revoke: std::sync::atomic::AtomicBool,
    /// Set by the runtime (`worker`): a poll does not count the previous poll's records as
    /// processed; only [`Consumer::mark_processed`] does, so that revoke and close commit
    /// exactly what the handlers finished.
    manual_processed: std::sync::atomic::AtomicBool,
}

impl Callbacks {
    fn listener(&self) -> Option<Arc<dyn RebalanceListener>> {
        self.listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    fn assigned(&self, partitions: &[TopicPartition]) {
        if let Some(l) = self.listener() {
            l.on_assigned(partitions);
        }
    }
    fn revoked(&self, partitions: &[TopicPartition]) {
        if let Some(l) = self.listener() {
            l.on_revoked(partitions);
        }
    }
    fn lost(&self, partitions: &[TopicPartition]) {
        if let Some(l) = self.listener() {
            l.on_lost(partitions);
        }
    }
    fn commit_on_revoke(&self) -> bool {
        !self
            .no_commit_on_revoke
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The group member behind a [`Consumer`]: what its poll, membership, fetch and commit tasks
/// share.
pub(crate) struct GroupMember {
    client: Client,
    topics: Vec<String>,
    coordinator: Coordinator,
    shared: Arc<ConsumerHub>,
    fetcher: Arc<Fetcher>,
    callbacks: Callbacks,
    /// The membership task (first) and the auto-commit task, once started.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Held for the whole of a close; `true` once one finished. A second close (the
    /// shutdown-signal task's and the application's) waits for the first to finish.
    close_done: tokio::sync::Mutex<bool>,
}

/// A member of a consumer group: polls records of the partitions the group assigns to it and
/// commits their offsets.
///
/// Made by [`Client::consumer`]. The group is joined on the first [`poll`](Self::poll) (so
/// that callbacks set before it see the first assignment). Methods take `&self`: share the
/// consumer behind an `Arc` to close it from another task. Dropping it without
/// [`close`](Self::close) stops its tasks without committing or leaving (the coordinator then
/// drops the member after `session.timeout.ms`).
pub struct Consumer {
    member: Arc<GroupMember>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("group", &self.member.coordinator.group())
            .field("topics", &self.member.topics)
            .finish_non_exhaustive()
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        for t in self
            .member
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
        self.member.fetcher.stop();
    }
}

impl Client {
    /// A group consumer of `topics`, in the group named by `group.id`.
    ///
    /// Fails with a configuration error naming `group.id` when none is set. Nothing is sent
    /// until the first [`Consumer::poll`].
    pub fn consumer<S: AsRef<str>>(&self, topics: &[S]) -> Result<Consumer> {
        let group = self.config().consumer().group_id.clone().ok_or_else(|| {
            Error::config(
                "group.id",
                "",
                "a consumer needs a group: set group.id (KAFKA_GROUP_ID)",
            )
        })?;
        if topics.is_empty() {
            return Err(Error::config(
                "topics",
                "",
                "a consumer needs at least one topic",
            ));
        }
        let mut names: Vec<String> = topics.iter().map(|t| t.as_ref().to_string()).collect();
        names.sort();
        names.dedup();
        let shared = ConsumerHub::new();
        let callbacks = Callbacks::default();
        if !self.config().consumer().enable_auto_offset_store {
            callbacks
                .manual_processed
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let member = Arc::new(GroupMember {
            client: self.clone(),
            topics: names,
            coordinator: Coordinator::new(Arc::clone(self.wire()?), &group),
            fetcher: Fetcher::new(self.clone(), Arc::clone(&shared)),
            shared,
            callbacks,
            tasks: Mutex::new(Vec::new()),
            close_done: tokio::sync::Mutex::new(false),
        });
        Ok(Consumer { member })
    }
}

impl Consumer {
    /// The group id.
    pub fn group_id(&self) -> &str {
        self.member.coordinator.group()
    }

    /// This member's group id, generation, member id and instance id now, for
    /// [`Producer::send_offsets_to_transaction`](crate::Producer::send_offsets_to_transaction).
    pub fn group_metadata(&self) -> ConsumerGroupMetadata {
        let me = self.member.shared.lock().group.me.clone();
        ConsumerGroupMetadata {
            group_id: self.group_id().to_string(),
            generation_id: me.generation,
            member_id: me.member_id,
            group_instance_id: me.instance_id,
        }
    }

    /// Starts the membership (and auto-commit) tasks once.
    fn ensure_started(&self) {
        let mut tasks = self.member.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if !tasks.is_empty() {
            return;
        }
        tasks.push(tokio::spawn(membership::run(Arc::clone(&self.member))));
        let config = self.member.client.config().consumer();
        if config.enable_auto_commit {
            let every = config.auto_commit_interval;
            tasks.push(tokio::spawn(auto_commit::run(
                Arc::clone(&self.member),
                every,
            )));
        }
    }

    /// The processing runtime's turn of its loop while its handlers have as many records as
    /// it lets wait (`RunnerConfig::max_pending`): counts as a poll for
    /// `max.poll.interval.ms` and takes no record, so the prefetched ones stay buffered (the
    /// fetcher stops at `queued.max.messages.kbytes`) instead of being dropped by a pause and
    /// fetched again.
    pub(crate) fn poll_without_records(&self) {
        self.ensure_started();
        let max_poll = self.member.client.config().consumer().max_poll_interval;
        let mut state = self.member.shared.lock();
        if state.last_poll.elapsed() > max_poll {
            self.member.shared.membership_wakeup.notify_waiters();
        }
        state.last_poll = Instant::now();
    }

    /// Waits up to `timeout` for records and returns those available (at once when some are
    /// buffered; an empty batch when none came in time).
    ///
    /// The first call joins the group. Errors the background tasks met (a fetch the broker
    /// refused, `auto.offset.reset = error`, ...) are returned here, once. After
    /// [`close`](Self::close), returns [`Error::Closed`].
    pub async fn poll(&self, timeout: Duration) -> Result<Vec<ConsumedRecord>> {
        self.ensure_started();
        let deadline = Instant::now() + timeout;
        let max_poll = self.member.client.config().consumer().max_poll_interval;
        {
            let mut state = self.member.shared.lock();
            if state.last_poll.elapsed() > max_poll {
                self.member.shared.membership_wakeup.notify_waiters();
            }
            state.last_poll = Instant::now();
            // Records handed out by the previous poll count as processed now (unless the
            // runtime says what was processed).
            if !self
                .member
                .callbacks
                .manual_processed
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                for p in state.partitions.values_mut() {
                    if p.position > p.processed {
                        p.processed = p.position;
                    }
                }
            }
        }
        loop {
            let ready = self.member.shared.data_ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            if let Some(out) = self.take_buffered()? {
                return Ok(out);
            }
            if tokio::time::timeout_at(deadline, ready).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    /// Takes buffered records of assigned, unpaused partitions, dropping stale chunks.
    fn take_buffered(&self) -> Result<Option<Vec<ConsumedRecord>>> {
        let mut state = self.member.shared.lock();
        if state.closed {
            return Err(Error::Closed("consumer"));
        }
        if let Some(e) = state.error.take() {
            return Err(e);
        }
        if let Some((code, context)) = &state.fatal {
            return Err(Error::broker(*code, context.clone(), None));
        }
        let mut out: Vec<ConsumedRecord> = Vec::new();
        let mut freed = 0;
        while out.len() < MAX_POLL_RECORDS {
            let Some(mut chunk) = state.buffer.pop_front() else {
                break;
            };
            if !out.is_empty() && chunk.records.len() >= MERGE_BELOW {
                state.buffer.push_front(chunk);
                break;
            }
            let Some(p) = state.partitions.get_mut(&chunk.tp) else {
                freed += chunk.bytes;
                continue;
            };
            let expected = p.position;
            if p.epoch != chunk.epoch || p.paused {
                freed += chunk.bytes;
                continue;
            }
            // Skip anything before the position (a seek within buffered data).
            if let Some(pos) = expected {
                if chunk.records.first().is_some_and(|r| r.offset < pos) {
                    chunk.records.retain(|r| r.offset >= pos);
                }
            }
            let room = MAX_POLL_RECORDS - out.len();
            if chunk.records.len() > room {
                let rest = chunk.records.split_off(room);
                let bytes_taken = chunk.bytes * room / (room + rest.len());
                let last = chunk.records.last().map(|r| r.offset);
                if let Some(last) = last {
                    p.position = Some(last + 1);
                }
                freed += bytes_taken;
                let taken = std::mem::take(&mut chunk.records);
                state.buffer.push_front(state::Chunk {
                    tp: chunk.tp,
                    epoch: chunk.epoch,
                    records: rest,
                    bytes: chunk.bytes - bytes_taken,
                    next: chunk.next,
                });
                append(&mut out, taken);
                break;
            }
            if let Some(last) = chunk.records.last() {
                p.position = Some(last.offset + 1);
            }
            // Past the control batches / aborted transactions that followed its last record.
            p.position = p.position.max(Some(chunk.next));
            freed += chunk.bytes;
            append(&mut out, chunk.records);
        }
        state.buffered_bytes -= freed;
        drop(state);
        if freed > 0 {
            self.member.shared.fetch_wakeup.notify_waiters();
        }
        Ok((!out.is_empty()).then_some(out))
    }

    /// The records as a stream (polling with a 1 s wait); ends after [`close`](Self::close).
    /// A record counts as processed once the next one is asked for.
    pub fn stream(&self) -> impl Stream<Item = Result<ConsumedRecord>> + '_ {
        futures::stream::unfold(
            (self, std::collections::VecDeque::new()),
            |(consumer, mut pending)| async move {
                loop {
                    if let Some(r) = pending.pop_front() {
                        return Some((Ok(r), (consumer, pending)));
                    }
                    match consumer.poll(Duration::from_secs(1)).await {
                        Ok(batch) => pending.extend(batch),
                        Err(Error::Closed(_)) => return None,
                        Err(e) => return Some((Err(e), (consumer, pending))),
                    }
                }
            },
        )
    }

    /// Commits `record`'s offset + 1 for its partition, and waits for the coordinator.
    pub async fn commit(&self, record: &ConsumedRecord) -> Result<()> {
        self.commit_batch(std::slice::from_ref(record)).await
    }

    /// Commits, per partition, the highest offset + 1 among `records`, and waits.
    ///
    /// Offsets of partitions no longer assigned (revoked by a rebalance meanwhile) are not
    /// committed: the partition's new owner starts from the last commit, so those records are
    /// delivered again (at least once). A commit refused because the group is rebalancing is
    /// an [`Error::Broker`] with `RebalanceInProgress` / `IllegalGeneration`.
    pub async fn commit_batch(&self, records: &[ConsumedRecord]) -> Result<()> {
        let offsets = next_offsets(records);
        self.commit_next_offsets(offsets, false).await
    }

    /// Commits `offsets` (next offset to read, per partition) and waits. Unlike the other
    /// commits, which never move a committed offset backwards, this sets exactly these
    /// offsets (a deliberate rewind is allowed).
    pub async fn commit_offsets(&self, offsets: HashMap<TopicPartition, i64>) -> Result<()> {
        self.commit_next_offsets(offsets, true).await
    }

    async fn commit_next_offsets(
        &self,
        offsets: HashMap<TopicPartition, i64>,
        rewind: bool,
    ) -> Result<()> {
        if self.member.shared.lock().closed {
            return Err(Error::Closed("consumer"));
        }
        let before = offsets.len();
        let offsets = membership::still_assigned(&self.member, offsets);
        if offsets.len() < before {
            tracing::info!(
                skipped = before - offsets.len(),
                "commit skipped for partitions no longer assigned"
            );
        }
        offsets::commit(&self.member, offsets, rewind).await
    }

    /// Commits `records` in the background; a failure is logged (the next commit covers it).
    pub fn commit_async(&self, records: &[ConsumedRecord]) {
        let offsets = next_offsets(records);
        let member = Arc::clone(&self.member);
        tokio::spawn(async move {
            let offsets = membership::still_assigned(&member, offsets);
            if let Err(e) = offsets::commit(&member, offsets, false).await {
                tracing::warn!(error = %e, "asynchronous commit failed");
            }
        });
    }

    /// Moves the position of an assigned partition: the next poll returns records from
    /// `offset`. Buffered records of the partition are dropped.
    pub fn seek(&self, topic: &str, partition: i32, offset: i64) -> Result<()> {
        let mut state = self.member.shared.lock();
        let tp = TopicPartition::new(topic, partition);
        let p = state
            .partitions
            .get_mut(&tp)
            .ok_or_else(|| not_assigned(topic, partition))?;
        p.reposition(offset);
        p.backoff_until = None;
        state.drop_buffered(&tp);
        drop(state);
        self.member.shared.fetch_wakeup.notify_waiters();
        Ok(())
    }

    /// Stops returning (and fetching) records of these assigned partitions until
    /// [`resume`](Self::resume); their positions stay where they are. A rebalance forgets
    /// pauses, as in the Java client.
    pub fn pause(&self, partitions: &[(&str, i32)]) -> Result<()> {
        let mut state = self.member.shared.lock();
        for &(topic, partition) in partitions {
            let tp = TopicPartition::new(topic, partition);
            let p = state
                .partitions
                .get_mut(&tp)
                .ok_or_else(|| not_assigned(topic, partition))?;
            p.paused = true;
            if let Some(pos) = p.position {
                p.reposition(pos);
            }
            state.drop_buffered(&tp);
        }
        Ok(())
    }

    /// Resumes paused partitions.
    pub fn resume(&self, partitions: &[(&str, i32)]) -> Result<()> {
        let mut state = self.member.shared.lock();
        for &(topic, partition) in partitions {
            let tp = TopicPartition::new(topic, partition);
            let p = state
                .partitions
                .get_mut(&tp)
                .ok_or_else(|| not_assigned(topic, partition))?;
            p.paused = false;
        }
        drop(state);
        self.member.shared.fetch_wakeup.notify_waiters();
        Ok(())
    }

    /// The partitions paused now.
    pub fn paused(&self) -> Vec<TopicPartition> {
        let state = self.member.shared.lock();
        let mut out: Vec<TopicPartition> = state
            .partitions
            .iter()
            .filter(|(_, p)| p.paused)
            .map(|(tp, _)| tp.clone())
            .collect();
        out.sort();
        out
    }

    /// The next offset `poll` returns for an assigned partition (`None`: not assigned, or
    /// its start position is not known yet).
    pub fn position(&self, topic: &str, partition: i32) -> Option<i64> {
        let state = self.member.shared.lock();
        state
            .partitions
            .get(&TopicPartition::new(topic, partition))
            .and_then(|p| p.position)
    }

    /// The partitions assigned to this member now, sorted.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        let state = self.member.shared.lock();
        let mut out: Vec<TopicPartition> = state.partitions.keys().cloned().collect();
        out.sort();
        out
    }

    /// The group's committed offsets (next offset to read) of `partitions`, from the
    /// coordinator; partitions without a commit are absent.
    pub async fn committed(
        &self,
        partitions: &[(&str, i32)],
    ) -> Result<BTreeMap<TopicPartition, i64>> {
        let tps: Vec<TopicPartition> = partitions
            .iter()
            .map(|&(t, p)| TopicPartition::new(t, p))
            .collect();
        let coordinator = &self.member.coordinator;
        let found = self
            .member
            .client
            .retry(
                &format!("fetch offsets of group {}", coordinator.group()),
                || coordinator.committed(&tps),
            )
            .await?;
        Ok(found.into_iter().collect())
    }

    /// Lag per assigned partition: the end offset (asked from each leader now) minus the
    /// position (records not yet returned by `poll`). The end offset is the last stable
    /// offset with `isolation.level = read_committed` (the default: what this consumer can
    /// read up to, as Java's consumer counts lag) and the high watermark with
    /// `read_uncommitted`. Partitions without a known position are left out.
    pub async fn lag(&self) -> Result<BTreeMap<TopicPartition, i64>> {
        let tps = self.assignment();
        let isolation = self.member.client.config().consumer().isolation_level;
        let ends =
            offsets::list_offsets_isolated(&self.member.client, &tps, offsets::LATEST, isolation)
                .await?;
        let state = self.member.shared.lock();
        Ok(ends
            .into_iter()
            .filter_map(|(tp, end)| {
                let pos = state.partitions.get(&tp)?.position?;
                Some((tp, (end - pos).max(0)))
            })
            .collect())
    }

    /// Sets the [`RebalanceListener`] told about assigned, revoked and lost partitions
    /// (replacing any earlier one).
    pub fn set_rebalance_listener(&self, listener: impl RebalanceListener) {
        *self
            .member
            .callbacks
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(listener));
    }

    /// Whether processed offsets are committed when partitions are revoked (default true).
    pub fn commit_on_revoke(&self, enabled: bool) {
        self.member
            .callbacks
            .no_commit_on_revoke
            .store(!enabled, std::sync::atomic::Ordering::Relaxed);
    }

    /// The client this consumer was made from.
    pub(crate) fn client(&self) -> &Client {
        &self.member.client
    }

    /// From now on, only [`mark_processed`](Self::mark_processed) moves what revoke, close
    /// and [`commit_processed`](Self::commit_processed) commit (used by the runtime, whose
    /// handlers finish records long after they were polled).
    pub(crate) fn track_processed_manually(&self) {
        self.member
            .callbacks
            .manual_processed
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Stores `record` as processed (librdkafka's `rd_kafka_offset_store`): auto-commit, a
    /// rebalance and [`close`](Self::close) commit up to the offset after it. Meant for
    /// `enable.auto.offset.store = false`, where only stored records are committed; with the
    /// default (true) the next poll stores everything polled anyway. A record of a partition
    /// no longer assigned is ignored (the new owner reads it again). Offsets never move back.
    pub fn store_offset(&self, record: &ConsumedRecord) {
        self.mark_processed([(
            TopicPartition::new(Arc::clone(&record.topic), record.partition),
            record.offset + 1,
        )]);
    }

    /// Stores `offsets` (the next offset to read, per partition) as processed, as
    /// [`store_offset`](Self::store_offset) does for one record.
    pub fn store_offsets(&self, offsets: impl IntoIterator<Item = (TopicPartition, i64)>) {
        self.mark_processed(offsets);
    }

    /// Records `offsets` (next offset, per partition) as processed; partitions no longer
    /// assigned are ignored. One lock for the whole map.
    pub(crate) fn mark_processed(&self, offsets: impl IntoIterator<Item = (TopicPartition, i64)>) {
        let mut state = self.member.shared.lock();
        for (tp, next) in offsets {
            if let Some(p) = state.partitions.get_mut(&tp) {
                if p.processed.is_none_or(|done| done < next) {
                    p.processed = Some(next);
                }
            }
        }
    }

    /// Commits what was processed and not yet committed, and waits.
    pub(crate) async fn commit_processed(&self) -> Result<()> {
        let offsets = self.member.shared.lock().uncommitted_processed();
        offsets::commit(&self.member, offsets, false).await
    }
}

fn append(out: &mut Vec<ConsumedRecord>, records: Vec<ConsumedRecord>) {
    if out.is_empty() {
        *out = records;
    } else {
        out.extend(records);
    }
}

fn next_offsets(records: &[ConsumedRecord]) -> HashMap<TopicPartition, i64> {
    let mut offsets: HashMap<TopicPartition, i64> = HashMap::new();
    for r in records {
        let e = offsets
            .entry(TopicPartition::new(Arc::clone(&r.topic), r.partition))
            .or_insert(r.offset + 1);
        *e = (*e).max(r.offset + 1);
    }
    offsets
}

fn not_assigned(topic: &str, partition: i32) -> Error {
    Error::config(
        "partition",
        format!("{topic}/{partition}"),
        "not assigned to this consumer",
    )
}
