//! Background fetching: one worker per broker sends Fetch requests for the assigned partitions
//! that broker leads, decodes the batches (zero-copy, [`decode`](super::decode)) and queues
//! them for `poll`, while the buffered bytes stay under `queued.max.messages.kbytes`.
//!
//! One request per broker is in flight at a time, on the worker's own connection (opened as
//! soon as the worker starts, while positions are looked up). Each partition's records go to
//! `poll` as soon as that partition is decoded, and the next request is sent once the whole
//! response is, so `poll` normally finds data waiting. Leader changes (NOT_LEADER, unknown
//! partition, fenced epoch) refresh metadata; OFFSET_OUT_OF_RANGE applies `auto.offset.reset`.
//!
//! Fetches carry the consumer's `isolation.level` (read_committed by default: the broker
//! stops at the last stable offset and lists the aborted transactions, which the decoder
//! drops). Batches that yield nothing (control batches, aborted transactions) still move the
//! fetch offset and, once everything before them was polled, the position, so a consumer
//! neither stalls on them nor commits an offset before them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::assignor::TopicPartition;
use super::decode::{decode_batches, decode_fetch_response, AbortedTransaction, Decoded};
use super::offsets;
use super::state::{Chunk, ConsumerHub};
use crate::client::Client;
use crate::config::IsolationLevel;
use crate::error::{Error, ErrorCode, Result};
use crate::wire::BrokerConnection;

/// Fetch v13+ names topics by id; v12 is the last to use names, but tansu 0.6.0 sends a
/// top-level tagged field in v12 responses that v12 does not define: v11 works on both.
const FETCH_MAX: i16 = 11;
/// How often an idle worker looks again (leaders may have moved to it).
const IDLE_RECHECK: Duration = Duration::from_millis(200);

/// The fetch workers of one consumer.
pub(crate) struct Fetcher {
    client: Client,
    shared: Arc<ConsumerHub>,
    workers: Mutex<HashMap<i32, JoinHandle<()>>>,
    me: Weak<Fetcher>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher").finish_non_exhaustive()
    }
}

impl Drop for Fetcher {
    fn drop(&mut self) {
        for (_, w) in self
            .workers
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
        {
            w.abort();
        }
    }
}

/// What one fetch asks for.
struct Planned {
    tp: TopicPartition,
    offset: i64,
    epoch: u64,
}

impl Fetcher {
    pub(crate) fn new(client: Client, shared: Arc<ConsumerHub>) -> Arc<Fetcher> {
        Arc::new_cyclic(|me| Fetcher {
            client,
            shared,
            workers: Mutex::new(HashMap::new()),
            me: me.clone(),
        })
    }

    /// Stops every worker.
    pub(crate) fn stop(&self) {
        for (_, w) in self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
        {
            w.abort();
        }
    }

    /// Refreshes metadata for `topics` and makes sure every broker has a worker.
    pub(crate) async fn start(&self, topics: &[&str]) -> Result<()> {
        let cluster = self.client.wire()?;
        let md = self
            .client
            .retry("refresh metadata for fetching", || {
                cluster.refresh(Some(topics))
            })
            .await?;
        self.spawn_workers(md.brokers.keys().copied());
        self.shared.fetch_wakeup.notify_waiters();
        Ok(())
    }

    /// Starts a worker for each broker that has none (a plain function, so that the worker's
    /// future, which calls `start`, does not contain itself).
    fn spawn_workers(&self, brokers: impl Iterator<Item = i32>) {
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        for node in brokers {
            let alive = workers.get(&node).is_some_and(|w| !w.is_finished());
            if !alive {
                let Some(me) = self.me.upgrade() else {
                    return;
                };
                workers.insert(node, tokio::spawn(worker(me, node)));
            }
        }
    }

    /// Partitions this broker leads that can be fetched now; marks them in flight.
    fn plan(&self, node: i32) -> (Vec<Planned>, HashSet<Arc<str>>) {
        let cluster = match self.client.wire() {
            Ok(c) => c,
            Err(_) => return (Vec::new(), HashSet::new()),
        };
        let md = cluster.metadata();
        let limit = self.client.config().consumer().prefetch_max_bytes;
        let now = Instant::now();
        let mut state = self.shared.lock();
        let mut leaderless = HashSet::new();
        if state.closed || state.buffered_bytes >= limit {
            return (Vec::new(), leaderless);
        }
        let mut planned = Vec::new();
        for (tp, p) in state.partitions.iter_mut() {
            if p.position.is_none() || p.paused || p.in_flight {
                continue;
            }
            if p.backoff_until.is_some_and(|t| t > now) {
                continue;
            }
            match md.leader(&tp.topic, tp.partition) {
                Some(l) if l == node => {}
                Some(_) => continue,
                None => {
                    leaderless.insert(Arc::clone(&tp.topic));
                    continue;
                }
            }
            p.in_flight = true;
            planned.push(Planned {
                tp: tp.clone(),
                offset: p.fetch_offset,
                epoch: p.epoch,
            });
        }
        (planned, leaderless)
    }

    /// Marks planned partitions as no longer in flight, backing them off after a failure.
    fn release(&self, planned: &[Planned], failures: u32) {
        let mut state = self.shared.lock();
        let until = (failures > 0).then(|| Instant::now() + backoff(&self.client, failures));
        for f in planned {
            if let Some(p) = state.partitions.get_mut(&f.tp) {
                p.in_flight = false;
                if p.epoch == f.epoch {
                    p.backoff_until = until;
                }
            }
        }
    }

    /// The worker's own connection to `node`, opened (through the client's wire layer, with
    /// its security and timeouts) when there is none or it closed.
    async fn connection(
        &self,
        node: i32,
        own: &mut Option<Arc<BrokerConnection>>,
    ) -> Result<Arc<BrokerConnection>> {
        let cluster = self.client.wire()?;
        // Each worker has its own connection: a broker holds a fetch up to fetch.wait.max.ms
        // and answers one connection's requests in order, so a shared connection would make
        // other consumers' fetches (and the producer's requests) wait behind ours.
        Ok(match own {
            Some(c) if !c.is_closed() => Arc::clone(c),
            _ => {
                let addr = match cluster.metadata().brokers.get(&node) {
                    Some(a) => a.clone(),
                    None => cluster
                        .refresh(None)
                        .await?
                        .brokers
                        .get(&node)
                        .cloned()
                        .ok_or_else(|| {
                            Error::broker(
                                ErrorCode::BrokerNotAvailable.code(),
                                format!("broker {node} is not in metadata"),
                                None,
                            )
                        })?,
                };
                let c = cluster.open(&addr).await?;
                *own = Some(Arc::clone(&c));
                c
            }
        })
    }

    /// Sends one Fetch to `node` for `planned` and queues what comes back.
    async fn fetch(
        &self,
        node: i32,
        planned: &[Planned],
        own: &mut Option<Arc<BrokerConnection>>,
    ) -> Result<FetchOutcome> {
        let config = self.client.config().consumer();
        let conn = self.connection(node, own).await?;
        let version = conn.version_for::<FetchRequest>(Some(FETCH_MAX))?;
        let mut topics: Vec<FetchTopic> = Vec::new();
        for f in planned {
            let partition = FetchPartition::default()
                .with_partition(f.tp.partition)
                .with_current_leader_epoch(-1)
                .with_fetch_offset(f.offset)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(config.max_partition_fetch_bytes as i32);
            match topics
                .iter_mut()
                .find(|t| t.topic.0.as_str() == &*f.tp.topic)
            {
                Some(t) => t.partitions.push(partition),
                None => topics.push(
                    FetchTopic::default()
                        .with_topic(TopicName(StrBytes::from_string(f.tp.topic.to_string())))
                        .with_partitions(vec![partition]),
                ),
            }
        }
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(config.fetch_max_wait.as_millis() as i32)
            .with_min_bytes(config.fetch_min_bytes as i32)
            .with_max_bytes(config.fetch_max_bytes.min(i32::MAX as usize) as i32)
            .with_isolation_level(match config.isolation_level {
                IsolationLevel::ReadCommitted => 1,
                IsolationLevel::ReadUncommitted => 0,
            })
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(topics);
        let timeout = self.client.config().request_timeout() + config.fetch_max_wait;
        let body = conn.send_version_raw(&request, version, timeout).await?;
        let response = decode_fetch_response(body, version)?;
        if response.error_code != 0 {
            return Err(Error::broker(
                response.error_code,
                format!("fetch from broker {node}"),
                None,
            ));
        }

        let mut outcome = FetchOutcome::default();
        for t in response.responses {
            for p in t.partitions {
                let Some(f) = planned
                    .iter()
                    .find(|f| *f.tp.topic == *t.topic && f.tp.partition == p.partition_index)
                else {
                    continue;
                };
                match p.error_code {
                    0 => {}
                    1 => {
                        outcome.out_of_range.push((f.tp.clone(), f.epoch));
                        continue;
                    }
                    c if matches!(
                        ErrorCode::from_code(c),
                        ErrorCode::UnknownTopicOrPartition
                            | ErrorCode::LeaderNotAvailable
                            | ErrorCode::NotLeaderOrFollower
                            | ErrorCode::KafkaStorageError
                            | ErrorCode::FencedLeaderEpoch
                            | ErrorCode::UnknownLeaderEpoch
                    ) =>
                    {
                        tracing::debug!(topic = %f.tp.topic, partition = f.tp.partition, code = p.error_code, "leader changed; refreshing metadata");
                        outcome.stale_leaders.insert(Arc::clone(&f.tp.topic));
                        continue;
                    }
                    code => {
                        outcome.errors.push(Error::broker(
                            code,
                            format!("fetch of {}/{}", f.tp.topic, f.tp.partition),
                            None,
                        ));
                        continue;
                    }
                }
                let mut decoded = Decoded::default();
                let bytes = p.records.as_ref().map_or(0, |r| r.len());
                if let Some(records) = p.records {
                    // A corrupt batch is this partition's error only: the batches before it
                    // are delivered, the partition waits before fetching it again, and the
                    // other partitions of the response go on.
                    let aborted = (config.isolation_level == IsolationLevel::ReadCommitted)
                        .then_some(&p.aborted_transactions[..]);
                    if let Err(e) = decode(records, f, config.check_crcs, aborted, &mut decoded) {
                        tracing::warn!(topic = %f.tp.topic, partition = f.tp.partition, error = %e, "undecodable fetch data");
                        outcome.errors.push(e);
                        outcome.corrupt.push(f.tp.clone());
                    }
                }
                // What the chunk holds in memory: the fetched bytes and the records' own
                // structs (at 100-byte records about as much again).
                let bytes =
                    bytes + decoded.records.len() * std::mem::size_of::<crate::ConsumedRecord>();
                // Each partition's records are handed over as soon as they are decoded, so
                // `poll` has the first ones while the rest of the response is decoded.
                if self.deliver(f, decoded, bytes, p.high_watermark) {
                    outcome.got_data = true;
                    self.shared.data_ready.notify_waiters();
                }
            }
        }
        Ok(outcome)
    }

    /// Queues one partition's decoded records for `poll` (unless a seek, pause or revoke
    /// made them stale) and moves its fetch offset past them; whether records were queued.
    fn deliver(&self, f: &Planned, decoded: Decoded, bytes: usize, high_watermark: i64) -> bool {
        let mut state = self.shared.lock();
        let state = &mut *state;
        let Some(p) = state.partitions.get_mut(&f.tp) else {
            return false;
        };
        if p.epoch != f.epoch || p.fetch_offset != f.offset {
            return false;
        }
        p.high_watermark = high_watermark;
        let next = decoded
            .records
            .last()
            .map(|r| r.offset + 1)
            .into_iter()
            .chain(decoded.next_offset)
            .max();
        if let Some(next) = next {
            p.fetch_offset = next.max(p.fetch_offset);
        }
        let next = p.fetch_offset;
        if !decoded.records.is_empty() {
            state.buffered_bytes += bytes;
            state.buffer.push_back(Chunk {
                tp: f.tp.clone(),
                epoch: f.epoch,
                records: decoded.records,
                bytes,
                next,
            });
            return true;
        }
        if p.position == Some(f.offset) {
            // Only skipped batches (markers, aborted transactions) and nothing of this
            // partition waiting for poll: the position passes them now.
            p.position = Some(next);
        } else if let Some(c) = state
            .buffer
            .iter_mut()
            .rev()
            .find(|c| c.tp == f.tp && c.epoch == f.epoch)
        {
            // Records still wait for poll: it passes the skipped batches after them.
            c.next = c.next.max(next);
        }
        false
    }
}

/// Decodes one partition's records; a panic (a decoder bug) becomes that partition's error
/// rather than ending the worker (with unwinding builds; release builds abort on panic, which
/// is why the decoder is written and property-tested not to panic).
fn decode(
    data: bytes::Bytes,
    f: &Planned,
    check_crcs: bool,
    aborted: Option<&[AbortedTransaction]>,
    out: &mut Decoded,
) -> Result<()> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decode_batches(
            data,
            &f.tp.topic,
            f.tp.partition,
            f.offset,
            check_crcs,
            aborted,
            out,
        )
    }))
    .unwrap_or_else(|_| {
        Err(Error::Protocol(format!(
            "{}: the record batch decoder panicked",
            f.tp
        )))
    })
}

#[derive(Default)]
struct FetchOutcome {
    got_data: bool,
    /// Partitions whose data did not decode: backed off before the next fetch.
    corrupt: Vec<TopicPartition>,
    out_of_range: Vec<(TopicPartition, u64)>,
    stale_leaders: HashSet<Arc<str>>,
    errors: Vec<Error>,
}

/// The delay after `failures` failed fetches in a row: the client's reconnect policy.
fn backoff(client: &Client, failures: u32) -> Duration {
    client.config().reconnect.delay_for_attempt(failures)
}

/// Releases its planned partitions when dropped (forgotten once the fetch returned).
struct InFlight<'a> {
    fetcher: &'a Fetcher,
    planned: &'a [Planned],
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.fetcher.release(self.planned, 1);
    }
}

/// Refreshes metadata for `topics` and starts workers for brokers seen for the first time.
async fn refresh(fetcher: &Fetcher, topics: HashSet<Arc<str>>) {
    let names: Vec<&str> = topics.iter().map(|t| &**t).collect();
    if let Err(e) = fetcher.start(&names).await {
        tracing::warn!(error = %e, "metadata refresh for fetching failed");
    }
}

/// The loop of the worker for broker `node`.
async fn worker(fetcher: Arc<Fetcher>, node: i32) {
    let mut failures = 0u32;
    let mut conn = None;
    // Connect now, while the positions are being looked up (OffsetFetch, ListOffsets), rather
    // than on the first fetch: the first records then wait for no handshake (ApiVersions,
    // TLS, SASL). A failure here is met again, with backoff, by the first fetch.
    if let Err(e) = fetcher.connection(node, &mut conn).await {
        tracing::debug!(broker = node, error = %e, "fetch connection not opened yet");
    }
    loop {
        let wakeup = fetcher.shared.fetch_wakeup.notified();
        tokio::pin!(wakeup);
        wakeup.as_mut().enable();
        let (planned, leaderless) = fetcher.plan(node);
        if !leaderless.is_empty() {
            refresh(&fetcher, leaderless).await;
        }
        if planned.is_empty() {
            let _ = tokio::time::timeout(IDLE_RECHECK, wakeup).await;
            continue;
        }
        tracing::trace!(broker = node, partitions = planned.len(), "fetching");
        // Should this task end inside the fetch (aborted by `stop`, or a panic), its
        // partitions must not stay marked in flight, or no worker would fetch them again.
        let in_flight = InFlight {
            fetcher: &fetcher,
            planned: &planned,
        };
        let fetched = fetcher.fetch(node, &planned, &mut conn).await;
        std::mem::forget(in_flight);
        match fetched {
            Ok(outcome) => {
                tracing::trace!(broker = node, got_data = outcome.got_data, "fetched");
                failures = 0;
                fetcher.release(&planned, 0);
                if !outcome.stale_leaders.is_empty() {
                    let stale: Vec<&Planned> = planned
                        .iter()
                        .filter(|f| outcome.stale_leaders.contains(&f.tp.topic))
                        .collect();
                    // A moved leader: pause these partitions for the policy's first delay.
                    let pause = fetcher.client.config().reconnect.initial_delay;
                    {
                        let mut state = fetcher.shared.lock();
                        for f in stale {
                            if let Some(p) = state.partitions.get_mut(&f.tp) {
                                p.backoff_until = Some(Instant::now() + pause);
                            }
                        }
                    }
                    refresh(&fetcher, outcome.stale_leaders).await;
                }
                if !outcome.out_of_range.is_empty() {
                    tracing::warn!(partitions = ?outcome.out_of_range.iter().map(|(tp, _)| tp).collect::<Vec<_>>(), "fetch offset out of range; applying auto.offset.reset");
                    if let Err(e) = offsets::reset_positions(
                        &fetcher.client,
                        &fetcher.shared,
                        &outcome.out_of_range,
                    )
                    .await
                    {
                        fetcher.shared.fail(e);
                    }
                }
                if !outcome.corrupt.is_empty() {
                    // Corrupt data rarely heals quickly: wait the policy's longest delay.
                    let pause = fetcher.client.config().reconnect.max_delay;
                    let mut state = fetcher.shared.lock();
                    for tp in &outcome.corrupt {
                        if let Some(p) = state.partitions.get_mut(tp) {
                            p.backoff_until = Some(Instant::now() + pause);
                        }
                    }
                }
                for e in outcome.errors {
                    fetcher.shared.fail(e);
                }
            }
            Err(e) => {
                failures += 1;
                let delay = backoff(&fetcher.client, failures);
                tracing::warn!(
                    operation = "fetch",
                    broker = node,
                    attempt = failures,
                    delay_ms = delay.as_millis() as u64,
                    error = %e,
                    "fetch failed, retrying"
                );
                fetcher.release(&planned, failures);
                // A broker that is down drops out of metadata (BROKER_NOT_AVAILABLE): also
                // transient, fetching resumes when it is back.
                let transient = e.is_connection_error()
                    || e.is_retriable()
                    || e.kafka_code() == Some(ErrorCode::BrokerNotAvailable);
                if transient {
                    let topics = planned.iter().map(|f| Arc::clone(&f.tp.topic)).collect();
                    refresh(&fetcher, topics).await;
                } else {
                    fetcher.shared.fail(e);
                }
            }
        }
    }
}
