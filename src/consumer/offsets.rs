//! Offsets: ListOffsets (earliest / latest, for `auto.offset.reset` and lag), start positions
//! of a new assignment (committed offset, else the reset rule), and commits of processed
//! offsets.

use std::collections::HashMap;
use std::sync::Arc;

use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{BrokerId, ListOffsetsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::assignor::TopicPartition;
use super::state::ConsumerHub;
use super::GroupMember;
use crate::client::Client;
use crate::config::{IsolationLevel, OffsetReset};
use crate::coordinator::Coordinator;
use crate::error::{Error, ErrorCode, Result};

const LIST_OFFSETS_MAX: i16 = 7;

/// ListOffsets timestamp for the earliest offset.
pub(crate) const EARLIEST: i64 = -2;
/// ListOffsets timestamp for the latest offset: the high watermark, or with
/// `read_committed` the last stable offset.
pub(crate) const LATEST: i64 = -1;

/// One attempt: the offsets at `timestamp` (EARLIEST / LATEST) of `partitions`, asking each
/// partition's leader.
async fn list_offsets_once(
    client: &Client,
    partitions: &[TopicPartition],
    timestamp: i64,
    isolation: IsolationLevel,
) -> Result<HashMap<TopicPartition, i64>> {
    let cluster = client.wire()?;
    let mut by_leader: HashMap<i32, HashMap<Arc<str>, Vec<i32>>> = HashMap::new();
    for TopicPartition {
        topic: t,
        partition: p,
    } in partitions
    {
        let (leader, _) = cluster.leader(t, *p).await?;
        by_leader
            .entry(leader)
            .or_default()
            .entry(Arc::clone(t))
            .or_default()
            .push(*p);
    }
    let mut out = HashMap::new();
    for (leader, topics) in by_leader {
        let conn = cluster.broker(leader).await?;
        let version = conn.version_for::<ListOffsetsRequest>(Some(LIST_OFFSETS_MAX))?;
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_isolation_level(match isolation {
                IsolationLevel::ReadCommitted => 1,
                IsolationLevel::ReadUncommitted => 0,
            })
            .with_topics(
                topics
                    .iter()
                    .map(|(t, ps)| {
                        ListOffsetsTopic::default()
                            .with_name(TopicName(StrBytes::from_string(t.to_string())))
                            .with_partitions(
                                ps.iter()
                                    .map(|p| {
                                        ListOffsetsPartition::default()
                                            .with_partition_index(*p)
                                            .with_current_leader_epoch(-1)
                                            .with_timestamp(timestamp)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
        let response = conn.send_version(&request, version).await?;
        for t in response.topics {
            let Some((topic, _)) = topics.get_key_value(t.name.0.as_str()) else {
                continue;
            };
            for p in t.partitions {
                if p.error_code != 0 {
                    if matches!(
                        ErrorCode::from_code(p.error_code),
                        ErrorCode::UnknownTopicOrPartition
                            | ErrorCode::LeaderNotAvailable
                            | ErrorCode::NotLeaderOrFollower
                            | ErrorCode::FencedLeaderEpoch
                            | ErrorCode::UnknownLeaderEpoch
                    ) {
                        // The leader moved: look again before the next attempt.
                        cluster.refresh(Some(&[topic])).await.ok();
                    }
                    return Err(Error::broker(
                        p.error_code,
                        format!("list offsets of {topic}/{}", p.partition_index),
                        None,
                    ));
                }
                out.insert(
                    TopicPartition::new(Arc::clone(topic), p.partition_index),
                    p.offset,
                );
            }
        }
    }
    Ok(out)
}

/// The offsets at `timestamp` (EARLIEST / LATEST: the high watermark) of `partitions`, with
/// retries.
pub(crate) async fn list_offsets(
    client: &Client,
    partitions: &[TopicPartition],
    timestamp: i64,
) -> Result<HashMap<TopicPartition, i64>> {
    list_offsets_isolated(
        client,
        partitions,
        timestamp,
        IsolationLevel::ReadUncommitted,
    )
    .await
}

/// As [`list_offsets`], with LATEST meaning the last stable offset under `read_committed`
/// (what a consumer of that isolation level can read up to; Java's consumer asks the same).
pub(crate) async fn list_offsets_isolated(
    client: &Client,
    partitions: &[TopicPartition],
    timestamp: i64,
    isolation: IsolationLevel,
) -> Result<HashMap<TopicPartition, i64>> {
    if partitions.is_empty() {
        return Ok(HashMap::new());
    }
    let what = if timestamp == EARLIEST {
        "earliest"
    } else {
        "latest"
    };
    client
        .retry(&format!("list {what} offsets"), || {
            list_offsets_once(client, partitions, timestamp, isolation)
        })
        .await
}

/// Moves `partitions` to the offset `auto.offset.reset` names. Partitions re-positioned
/// meanwhile (epoch changed) are left alone.
pub(crate) async fn reset_positions(
    client: &Client,
    shared: &ConsumerHub,
    partitions: &[(TopicPartition, u64)],
) -> Result<()> {
    if partitions.is_empty() {
        return Ok(());
    }
    let timestamp = match client.config().consumer().auto_offset_reset {
        OffsetReset::Earliest => EARLIEST,
        OffsetReset::Latest => LATEST,
        OffsetReset::Error => {
            let (tp, _) = &partitions[0];
            return Err(Error::config(
                "auto.offset.reset",
                "error",
                format!(
                    "{}/{} has no committed offset (or it is out of range) and the reset \
                     policy is to fail",
                    tp.topic, tp.partition
                ),
            ));
        }
    };
    let tps: Vec<TopicPartition> = partitions.iter().map(|(tp, _)| tp.clone()).collect();
    // `latest` under read_committed is the last stable offset, so that a transaction open
    // now is read from its start if it commits (as Java's consumer resets).
    let isolation = client.config().consumer().isolation_level;
    let offsets = list_offsets_isolated(client, &tps, timestamp, isolation).await?;
    let mut state = shared.lock();
    for (tp, epoch) in partitions {
        let Some(&offset) = offsets.get(tp) else {
            continue;
        };
        let Some(p) = state.partitions.get_mut(tp) else {
            continue;
        };
        if p.epoch == *epoch {
            tracing::info!(topic = %tp.topic, partition = tp.partition, offset, "position reset by auto.offset.reset");
            p.reposition(offset);
            p.backoff_until = None;
        }
    }
    drop(state);
    shared.fetch_wakeup.notify_waiters();
    Ok(())
}

/// Sets the start positions of newly assigned `partitions`: the group's committed offset,
/// else the reset rule.
pub(crate) async fn initial_positions(
    client: &Client,
    coordinator: &Coordinator,
    shared: &ConsumerHub,
    partitions: &[TopicPartition],
) -> Result<()> {
    if partitions.is_empty() {
        return Ok(());
    }
    let committed = client
        .retry(
            &format!("fetch offsets of group {}", coordinator.group()),
            || coordinator.committed(partitions),
        )
        .await?;
    let mut to_reset = Vec::new();
    {
        let mut state = shared.lock();
        for tp in partitions {
            let Some(p) = state.partitions.get_mut(tp) else {
                continue;
            };
            if p.position.is_some() {
                continue;
            }
            match committed.get(tp) {
                Some(&offset) => {
                    p.reposition(offset);
                    p.committed = Some(offset);
                    p.processed = Some(offset);
                }
                None => to_reset.push((tp.clone(), p.epoch)),
            }
        }
    }
    shared.fetch_wakeup.notify_waiters();
    reset_positions(client, shared, &to_reset).await
}

/// Commits `offsets` (next offsets to read) for the current generation, with retries, and
/// records them as committed.
///
/// Committed offsets never move backwards: commits run one at a time (so a slow
/// `commit_async` cannot land after a later commit), and an offset at or below what this
/// member already committed for the partition is left out — unless `rewind` (an explicit
/// `commit_offsets`), which sets exactly the given offsets.
pub(crate) async fn commit(
    member: &GroupMember,
    offsets: HashMap<TopicPartition, i64>,
    rewind: bool,
) -> Result<()> {
    if offsets.is_empty() {
        return Ok(());
    }
    let (client, coordinator, shared) = (&member.client, &member.coordinator, &*member.shared);
    let me = shared.lock().group.me.clone();
    let offsets = &offsets;
    let me = &me;
    client
        .retry(
            &format!("commit offsets of group {}", coordinator.group()),
            || async move {
                // One attempt at a time (not the whole retry loop: a commit retrying through
                // a rebalance must not hold up the commit on revoke).
                let _one_at_a_time = shared.commit_serial.lock().await;
                let ahead = ahead_of_committed(shared, offsets, rewind);
                if ahead.is_empty() {
                    return Ok(());
                }
                coordinator.commit(me, &ahead).await?;
                let mut state = shared.lock();
                for (tp, offset) in ahead {
                    if let Some(p) = state.partitions.get_mut(&tp) {
                        if rewind {
                            p.committed = Some(offset);
                            p.processed = Some(offset);
                        } else {
                            p.committed = p.committed.max(Some(offset));
                            p.processed = p.processed.max(Some(offset));
                        }
                    }
                }
                Ok(())
            },
        )
        .await?;
    Ok(())
}

/// The offsets ahead of what this member committed (all of them with `rewind`).
fn ahead_of_committed(
    shared: &ConsumerHub,
    offsets: &HashMap<TopicPartition, i64>,
    rewind: bool,
) -> HashMap<TopicPartition, i64> {
    let state = shared.lock();
    offsets
        .iter()
        .filter(|(tp, offset)| {
            let behind = !rewind
                && state
                    .partitions
                    .get(*tp)
                    .and_then(|p| p.committed)
                    .is_some_and(|committed| **offset <= committed);
            if behind {
                tracing::debug!(
                    topic = %tp.topic,
                    partition = tp.partition,
                    offset,
                    "commit left out: not ahead of the committed offset"
                );
            }
            !behind
        })
        .map(|(tp, o)| (tp.clone(), *o))
        .collect()
}
