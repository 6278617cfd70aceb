//! What a consumer knows about its partitions (positions, pause, high watermarks) and the
//! prefetch buffer, shared by the API, the membership task and the fetch workers under one
//! short lock (taken per fetched chunk and per poll, never per record).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::assignor::TopicPartition;
use crate::coordinator::MemberIdentityInfo;
use crate::error::Error;
use crate::record::ConsumedRecord;

/// One assigned partition.
#[derive(Debug, Clone)]
pub(crate) struct PartitionState {
    /// Next offset `poll` hands out; `None` until the committed offset (or the reset policy)
    /// has set it.
    pub(crate) position: Option<i64>,
    /// Next offset to fetch (ahead of `position` by what is buffered).
    pub(crate) fetch_offset: i64,
    /// Bumped by seek / pause / reset: fetched data of an older epoch is dropped.
    pub(crate) epoch: u64,
    pub(crate) paused: bool,
    /// A fetch for this partition is on the wire.
    pub(crate) in_flight: bool,
    /// No fetch before this instant (after an error).
    pub(crate) backoff_until: Option<Instant>,
    /// High watermark from the last fetch response (-1: unknown).
    pub(crate) high_watermark: i64,
    /// Next offset counted as processed: records handed out by a poll that was followed by
    /// another poll, or committed explicitly. Committed on revoke and close.
    pub(crate) processed: Option<i64>,
    /// The last offset this consumer committed.
    pub(crate) committed: Option<i64>,
}

impl PartitionState {
    pub(crate) fn new() -> Self {
        PartitionState {
            position: None,
            fetch_offset: -1,
            epoch: 0,
            paused: false,
            in_flight: false,
            backoff_until: None,
            high_watermark: -1,
            processed: None,
            committed: None,
        }
    }

    /// Moves to `offset`, discarding whatever was fetched or is being fetched.
    pub(crate) fn reposition(&mut self, offset: i64) {
        self.position = Some(offset);
        self.fetch_offset = offset;
        self.epoch += 1;
    }
}

/// Fetched records of one partition, waiting for `poll`.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub(crate) tp: TopicPartition,
    pub(crate) epoch: u64,
    pub(crate) records: Vec<ConsumedRecord>,
    /// Bytes counted against the prefetch bound.
    pub(crate) bytes: usize,
    /// The offset after the chunk, past any batches skipped behind its last record (control
    /// batches, aborted transactions): the position once the whole chunk was polled.
    pub(crate) next: i64,
}

/// The membership's view shared with commits.
#[derive(Debug, Clone, Default)]
pub(crate) struct GroupView {
    pub(crate) me: MemberIdentityInfo,
    /// Whether the member holds an assignment of the current generation.
    pub(crate) stable: bool,
}

/// Everything behind the lock.
#[derive(Debug)]
pub(crate) struct ConsumerLedger {
    pub(crate) group: GroupView,
    /// Partitions assigned now, with their state.
    pub(crate) partitions: HashMap<TopicPartition, PartitionState>,
    pub(crate) buffer: VecDeque<Chunk>,
    pub(crate) buffered_bytes: usize,
    /// An error for the next `poll` to return.
    pub(crate) error: Option<Error>,
    /// A fatal group error (code, what it was about): every later poll returns it.
    pub(crate) fatal: Option<(i16, String)>,
    /// As the group's leader: the partition count of every subscribed topic (0: missing) the
    /// last assignment was made with; `None` when not the leader.
    pub(crate) leader_view: Option<std::collections::BTreeMap<String, i32>>,
    pub(crate) last_poll: Instant,
    pub(crate) closed: bool,
}

impl ConsumerLedger {
    /// Drops buffered chunks of `tp`.
    pub(crate) fn drop_buffered(&mut self, tp: &TopicPartition) {
        let mut freed = 0;
        self.buffer.retain(|c| {
            let keep = &c.tp != tp;
            if !keep {
                freed += c.bytes;
            }
            keep
        });
        self.buffered_bytes -= freed;
    }

    /// The offsets processed but not yet committed by this consumer.
    pub(crate) fn uncommitted_processed(&self) -> HashMap<TopicPartition, i64> {
        self.partitions
            .iter()
            .filter_map(|(tp, p)| match (p.processed, p.committed) {
                (Some(done), Some(c)) if done <= c => None,
                (Some(done), _) => Some((tp.clone(), done)),
                _ => None,
            })
            .collect()
    }
}

/// ConsumerLedger plus the wake-ups around it.
#[derive(Debug)]
pub(crate) struct ConsumerHub {
    state: Mutex<ConsumerLedger>,
    /// Wakes `poll` when data, an error or an assignment arrives.
    pub(crate) data_ready: Notify,
    /// Wakes fetch workers when there is work: new assignment, seek, resume, buffer space.
    pub(crate) fetch_wakeup: Notify,
    /// Wakes the membership task (close, or a poll after leaving for a poll timeout).
    pub(crate) membership_wakeup: Notify,
    /// Held by one commit at a time (`offsets::commit`), so that commits cannot overtake each
    /// other and move the group's offsets backwards.
    pub(crate) commit_serial: tokio::sync::Mutex<()>,
}

impl ConsumerHub {
    pub(crate) fn new() -> Arc<ConsumerHub> {
        Arc::new(ConsumerHub {
            state: Mutex::new(ConsumerLedger {
                group: GroupView {
                    me: MemberIdentityInfo {
                        generation: -1,
                        ..Default::default()
                    },
                    stable: false,
                },
                partitions: HashMap::new(),
                buffer: VecDeque::new(),
                buffered_bytes: 0,
                error: None,
                fatal: None,
                leader_view: None,
                last_poll: Instant::now(),
                closed: false,
            }),
            data_ready: Notify::new(),
            fetch_wakeup: Notify::new(),
            membership_wakeup: Notify::new(),
            commit_serial: tokio::sync::Mutex::new(()),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, ConsumerLedger> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an error for the next poll.
    pub(crate) fn fail(&self, error: Error) {
        tracing::error!(error = %error, "consumer error");
        self.lock().error = Some(error);
        self.data_ready.notify_waiters();
    }
}
