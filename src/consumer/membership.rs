//! Group membership on a background task: JoinGroup → SyncGroup (the leader assigns) →
//! heartbeats, until the group rebalances, the member is fenced, the application stops
//! polling for longer than `max.poll.interval.ms`, or the consumer closes.
//!
//! The protocol is eager: before rejoining, the member gives up all its partitions (commits
//! what was processed, calls `on_revoked`). Join metadata and assignments use the standard
//! ConsumerProtocol encodings, so Java and librdkafka members share groups with purekafka.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedTopic;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::time::Instant;

use super::assignor::{self, MemberSubscription, TopicPartition};
use super::state::PartitionState;
use super::GroupMember;
use crate::coordinator::{Joined, MemberIdentityInfo};
use crate::error::{Error, ErrorCode, Result};

/// Subscription metadata version sent in JoinGroup (v1: topics, user data, owned partitions).
const SUBSCRIPTION_VERSION: i16 = 1;
/// Assignment version sent by a purekafka leader (v0 is read by every client).
const ASSIGNMENT_VERSION: i16 = 0;
/// Newest ConsumerProtocol version kafka-protocol decodes; newer ones are read as this one
/// (the format only appends fields).
const PROTOCOL_VERSION_MAX: i16 = 3;

/// Why a stable member stops heartbeating.
#[derive(Debug, PartialEq, Eq)]
enum Exit {
    /// The group is rebalancing: rejoin with the same member id.
    Rejoin,
    /// The coordinator no longer knows this member (or its generation): rejoin as new.
    Reset,
    /// No poll for longer than `max.poll.interval.ms`: leave, rejoin on the next poll.
    PollTimeout,
    /// The consumer is closing.
    Shutdown,
    /// A fatal group error: the membership ends (see `is_fatal_group_error`).
    Fatal,
}

/// Encodes the subscription sent in JoinGroup. `counts`, the member's view of its topics'
/// partition counts, goes in the user data as `topic=count` lines (none: null user data, the
/// bytes the Java client sends): the member's metadata then changes when a topic grows, and a
/// coordinator that rebalances only on changed metadata (tansu 0.6.0) rebalances when the
/// leader rejoins for that; Apache Kafka rebalances on a leader's rejoin anyway. Range and
/// roundrobin, here and in Java and librdkafka, ignore user data.
pub(crate) fn encode_subscription(topics: &[String], counts: &BTreeMap<String, i32>) -> Bytes {
    let user_data = (!counts.is_empty()).then(|| {
        let lines: Vec<String> = counts.iter().map(|(t, n)| format!("{t}={n}")).collect();
        Bytes::from(lines.join("\n"))
    });
    let sub = ConsumerProtocolSubscription::default()
        .with_topics(
            topics
                .iter()
                .map(|t| StrBytes::from_string(t.clone()))
                .collect(),
        )
        .with_user_data(user_data);
    let mut buf = BytesMut::new();
    buf.put_i16(SUBSCRIPTION_VERSION);
    sub.encode(&mut buf, SUBSCRIPTION_VERSION)
        .expect("a subscription always encodes");
    buf.freeze()
}

/// The partition counts of `topics` in the metadata cache (topics it does not hold are left
/// out): what this member knows when it joins.
fn known_partition_counts(inner: &GroupMember, topics: &[String]) -> BTreeMap<String, i32> {
    let Ok(cluster) = inner.client.wire() else {
        return BTreeMap::new();
    };
    let md = cluster.metadata();
    topics
        .iter()
        .filter_map(|t| {
            let tm = md.topics.get(t)?;
            (tm.error == 0 && !tm.partitions.is_empty())
                .then(|| (t.clone(), tm.partitions.len() as i32))
        })
        .collect()
}

/// Decodes a member's subscription (any version).
pub(crate) fn decode_subscription(mut data: Bytes) -> Result<ConsumerProtocolSubscription> {
    if data.remaining() < 2 {
        return Err(Error::Protocol("subscription metadata too short".into()));
    }
    let version = data.get_i16().clamp(0, PROTOCOL_VERSION_MAX);
    ConsumerProtocolSubscription::decode(&mut data, version)
        .map_err(|e| Error::Protocol(format!("decoding a member's subscription: {e}")))
}

/// Encodes one member's assignment for SyncGroup.
pub(crate) fn encode_assignment(partitions: &[TopicPartition]) -> Bytes {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for TopicPartition {
        topic: t,
        partition: p,
    } in partitions
    {
        by_topic.entry(t).or_default().push(*p);
    }
    let a = ConsumerProtocolAssignment::default().with_assigned_partitions(
        by_topic
            .into_iter()
            .map(|(t, ps)| {
                AssignedTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(t.to_string())))
                    .with_partitions(ps)
            })
            .collect(),
    );
    let mut buf = BytesMut::new();
    buf.put_i16(ASSIGNMENT_VERSION);
    a.encode(&mut buf, ASSIGNMENT_VERSION)
        .expect("an assignment always encodes");
    buf.freeze()
}

/// Decodes this member's assignment from SyncGroup (empty bytes: nothing assigned).
pub(crate) fn decode_assignment(mut data: Bytes) -> Result<Vec<TopicPartition>> {
    if data.remaining() < 2 {
        return Ok(Vec::new());
    }
    let version = data.get_i16().clamp(0, PROTOCOL_VERSION_MAX);
    let a = ConsumerProtocolAssignment::decode(&mut data, version)
        .map_err(|e| Error::Protocol(format!("decoding the group assignment: {e}")))?;
    let mut out = Vec::new();
    for t in a.assigned_partitions {
        let topic: Arc<str> = Arc::from(t.topic.0.as_str());
        out.extend(
            t.partitions
                .into_iter()
                .map(|p| TopicPartition::new(Arc::clone(&topic), p)),
        );
    }
    out.sort();
    Ok(out)
}

fn code_of(e: &Error) -> Option<ErrorCode> {
    e.kafka_code()
}

/// Group errors after which the member must not rejoin (as the Java client treats them):
/// FENCED_INSTANCE_ID (another member took this `group.instance.id`),
/// GROUP_AUTHORIZATION_FAILED, INCONSISTENT_GROUP_PROTOCOL, INVALID_SESSION_TIMEOUT,
/// GROUP_MAX_SIZE_REACHED, TOPIC_AUTHORIZATION_FAILED, UNSUPPORTED_VERSION.
pub(crate) fn is_fatal_group_error(e: &Error) -> bool {
    matches!(
        code_of(e),
        Some(
            ErrorCode::FencedInstanceId
                | ErrorCode::GroupAuthorizationFailed
                | ErrorCode::InconsistentGroupProtocol
                | ErrorCode::InvalidSessionTimeout
                | ErrorCode::GroupMaxSizeReached
                | ErrorCode::TopicAuthorizationFailed
                | ErrorCode::UnsupportedVersion
        )
    )
}

/// As the leader: whether a subscribed topic's partition count changed (or it appeared)
/// since the last assignment (`topic.metadata.refresh.interval.ms`); then the group must
/// rebalance so that the new partitions are consumed. A failed lookup says no.
async fn leader_view_changed(inner: &GroupMember) -> bool {
    let Some(view) = inner.shared.lock().leader_view.clone() else {
        return false;
    };
    let Ok(cluster) = inner.client.wire() else {
        return false;
    };
    let topics: Vec<&str> = view.keys().map(String::as_str).collect();
    let md = match cluster.refresh(Some(&topics)).await {
        Ok(md) => md,
        Err(e) => {
            tracing::debug!(error = %e, "metadata check of subscribed topics failed");
            return false;
        }
    };
    for (topic, &count) in &view {
        let now = md
            .topics
            .get(topic)
            .filter(|tm| tm.error == 0)
            .map_or(0, |tm| tm.partitions.len() as i32);
        if now != count {
            tracing::info!(group = %inner.coordinator.group(), topic = %topic, was = count, now, "a subscribed topic's partition count changed: rejoining to rebalance");
            return true;
        }
    }
    false
}

/// Ends the membership for good: every later poll (and `run`) fails with `e`.
fn fail_fatally(inner: &GroupMember, e: &Error) {
    tracing::error!(group = %inner.coordinator.group(), error = %e, "fatal group error: the consumer stops");
    let code = code_of(e).map_or(-1, |c| c.code());
    let mut s = inner.shared.lock();
    s.fatal = Some((code, format!("group {}: {e}", inner.coordinator.group())));
    drop(s);
    inner.shared.data_ready.notify_waiters();
}

/// The membership task: runs until the consumer closes.
pub(crate) async fn run(inner: Arc<GroupMember>) {
    let config = inner.client.config().consumer().clone();
    let mut me = MemberIdentityInfo {
        member_id: String::new(),
        generation: -1,
        instance_id: config.group_instance_id.clone(),
    };
    let mut failures = 0u32;
    loop {
        if inner.shared.lock().closed {
            return;
        }
        let joined = tokio::select! {
            r = join_and_sync(&inner, &mut me) => r,
            _ = inner.shared.membership_wakeup.notified() => continue,
        };
        let assignment = match joined {
            Ok(a) => {
                failures = 0;
                a
            }
            Err(e) if is_fatal_group_error(&e) => {
                fail_fatally(&inner, &e);
                return;
            }
            Err(e) => {
                failures += 1;
                let delay = inner.client.config().reconnect.delay_for_attempt(failures);
                tracing::warn!(group = %inner.coordinator.group(), attempt = failures, delay_ms = delay.as_millis() as u64, error = %e, "joining the group failed, retrying");
                if !e.is_retriable() {
                    inner.shared.fail(e);
                }
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        // Heartbeats start at once and go on while the start positions are looked up, so a
        // slow or retried lookup cannot cost the membership.
        let exit = {
            let work = assign(&inner, &me, assignment);
            let beat = heartbeat(&inner, &me);
            tokio::pin!(work, beat);
            let mut assigned = false;
            loop {
                tokio::select! {
                    () = &mut work, if !assigned => assigned = true,
                    exit = &mut beat => break exit,
                }
            }
        };
        // Fenced or timed out (Reset): the partitions are lost, not handed over.
        revoke(&inner, matches!(exit, Exit::Reset)).await;
        match exit {
            Exit::Rejoin => {}
            Exit::Reset => {
                me.member_id.clear();
                me.generation = -1;
            }
            Exit::Shutdown => {
                leave(&inner, &me).await;
                return;
            }
            Exit::Fatal => return,
            Exit::PollTimeout => {
                tracing::warn!(group = %inner.coordinator.group(), max_poll_interval_ms = config.max_poll_interval.as_millis() as u64, "no poll within max.poll.interval.ms: leaving the group until the next poll");
                leave(&inner, &me).await;
                me.member_id.clear();
                me.generation = -1;
                // Rejoin when the application polls again (or stop when it closes).
                loop {
                    let woke = inner.shared.membership_wakeup.notified();
                    {
                        let s = inner.shared.lock();
                        if s.closed {
                            return;
                        }
                        if s.last_poll.elapsed() < config.max_poll_interval {
                            break;
                        }
                    }
                    woke.await;
                }
            }
        }
    }
}

/// JoinGroup then SyncGroup until one generation completes; returns this member's partitions.
async fn join_and_sync(
    inner: &GroupMember,
    me: &mut MemberIdentityInfo,
) -> Result<Vec<TopicPartition>> {
    let config = inner.client.config().consumer();
    inner.shared.lock().leader_view = None;
    let metadata =
        encode_subscription(&inner.topics, &known_partition_counts(inner, &inner.topics));
    let protocols: Vec<(String, Bytes)> = config
        .assignment_strategies
        .iter()
        .map(|name| (name.clone(), metadata.clone()))
        .collect();
    let group = inner.coordinator.group().to_string();
    loop {
        let joined: Result<Joined> = inner
            .client
            .retry_with_timeout(
                &format!("join group {group}"),
                config.max_poll_interval + Duration::from_secs(10),
                || {
                    inner.coordinator.join(
                        me,
                        config.session_timeout,
                        config.max_poll_interval,
                        &protocols,
                    )
                },
            )
            .await;
        let joined = match joined {
            Ok(j) => j,
            Err(e) => match code_of(&e) {
                Some(ErrorCode::MemberIdRequired) => {
                    if let Error::Broker {
                        message: Some(id), ..
                    } = &e
                    {
                        me.member_id = id.clone();
                    }
                    continue;
                }
                Some(ErrorCode::UnknownMemberId | ErrorCode::IllegalGeneration) => {
                    me.member_id.clear();
                    me.generation = -1;
                    continue;
                }
                Some(ErrorCode::RebalanceInProgress) => continue,
                _ => return Err(e),
            },
        };
        me.generation = joined.generation;
        me.member_id = joined.member_id.clone();
        tracing::info!(group = %group, member = %me.member_id, generation = me.generation, leader = joined.leader == me.member_id, protocol = %joined.protocol, "joined group");
        let assignments = if joined.leader == me.member_id {
            leader_assign(inner, &joined).await?
        } else {
            Vec::new()
        };
        let synced = inner
            .client
            .retry(&format!("sync group {group}"), || {
                inner
                    .coordinator
                    .sync(me, &joined.protocol, assignments.clone())
            })
            .await;
        match synced {
            Ok(bytes) => return decode_assignment(bytes),
            Err(e) => match code_of(&e) {
                Some(ErrorCode::RebalanceInProgress) => continue,
                Some(ErrorCode::UnknownMemberId | ErrorCode::IllegalGeneration) => {
                    me.member_id.clear();
                    me.generation = -1;
                    continue;
                }
                _ => return Err(e),
            },
        }
    }
}

/// The leader's job: decode everyone's subscription, look up partition counts, assign.
async fn leader_assign(inner: &GroupMember, joined: &Joined) -> Result<Vec<(String, Bytes)>> {
    let assignor = assignor::by_name(&joined.protocol).ok_or_else(|| {
        Error::Protocol(format!(
            "the group chose assignor {:?}, which purekafka does not have",
            joined.protocol
        ))
    })?;
    let mut members = Vec::new();
    for (member_id, instance_id, metadata) in &joined.members {
        let sub = decode_subscription(metadata.clone())?;
        members.push(MemberSubscription {
            member_id: member_id.clone(),
            group_instance_id: instance_id.clone(),
            topics: sub.topics.iter().map(|t| t.to_string()).collect(),
            owned: Vec::new(),
        });
    }
    let mut topics: Vec<&str> = members
        .iter()
        .flat_map(|m| m.topics.iter().map(String::as_str))
        .collect();
    topics.sort_unstable();
    topics.dedup();
    let cluster = inner.client.wire()?;
    let md = inner
        .client
        .retry("metadata for assignment", || cluster.refresh(Some(&topics)))
        .await?;
    let partitions: BTreeMap<String, i32> = topics
        .iter()
        .filter_map(|t| {
            let tm = md.topics.get(*t)?;
            (tm.error == 0 && !tm.partitions.is_empty())
                .then(|| (t.to_string(), tm.partitions.len() as i32))
        })
        .collect();
    inner.shared.lock().leader_view = Some(
        topics
            .iter()
            .map(|t| (t.to_string(), partitions.get(*t).copied().unwrap_or(0)))
            .collect(),
    );
    let plan = assignor.assign(&members, &partitions);
    tracing::info!(group = %inner.coordinator.group(), assignor = assignor.name(), plan = ?plan.iter().map(|(m, ps)| (m.as_str(), ps.len())).collect::<Vec<_>>(), "assigned partitions as leader");
    Ok(plan
        .into_iter()
        .map(|(member, ps)| (member, encode_assignment(&ps)))
        .collect())
}

/// Takes on a new assignment: start positions, fetchers, the `on_assigned` callback.
async fn assign(inner: &GroupMember, me: &MemberIdentityInfo, assignment: Vec<TopicPartition>) {
    tracing::info!(group = %inner.coordinator.group(), generation = me.generation, partitions = ?assignment, "partitions assigned");
    {
        let mut state = inner.shared.lock();
        state.group.me = me.clone();
        state.group.stable = true;
        state.partitions = assignment
            .iter()
            .map(|tp| (tp.clone(), PartitionState::new()))
            .collect();
    }
    let mut topics: Vec<&str> = assignment.iter().map(|tp| &*tp.topic).collect();
    topics.dedup();
    if !assignment.is_empty() {
        if let Err(e) = inner.fetcher.start(&topics).await {
            inner.shared.fail(e);
        }
        // Runs beside the heartbeats (see `run`); a failed lookup is tried again until
        // every partition has a position (only `auto.offset.reset = error` gives up).
        let mut attempt = 0u32;
        loop {
            match super::offsets::initial_positions(
                &inner.client,
                &inner.coordinator,
                &inner.shared,
                &assignment,
            )
            .await
            {
                Ok(()) => break,
                Err(e @ Error::Config { .. }) => {
                    inner.shared.fail(e);
                    break;
                }
                Err(e) => {
                    attempt += 1;
                    let delay = Duration::from_millis(200 * u64::from(attempt.min(10)));
                    tracing::warn!(group = %inner.coordinator.group(), attempt, delay_ms = delay.as_millis() as u64, error = %e, "looking up start positions failed, retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
    inner.callbacks.assigned(&assignment);
    inner.shared.data_ready.notify_waiters();
}

/// Gives up every partition: commits what was processed (unless disabled) and calls
/// `on_revoked`, or, when they were `lost` (session ran out, member fenced), commits nothing
/// and calls `on_lost`; drops buffered records.
async fn revoke(inner: &GroupMember, lost: bool) {
    let (partitions, processed) = {
        let state = inner.shared.lock();
        let processed = state.uncommitted_processed();
        let mut partitions: Vec<TopicPartition> = state.partitions.keys().cloned().collect();
        partitions.sort();
        (partitions, processed)
    };
    if !lost && inner.callbacks.commit_on_revoke() && !processed.is_empty() {
        if let Err(e) = super::offsets::commit(inner, processed, false).await {
            tracing::warn!(group = %inner.coordinator.group(), error = %e, "committing processed offsets on revoke failed; their records will be delivered again");
        }
    }
    if lost {
        inner.callbacks.lost(&partitions);
    } else {
        inner.callbacks.revoked(&partitions);
    }
    let mut state = inner.shared.lock();
    state.partitions.clear();
    state.buffer.clear();
    state.buffered_bytes = 0;
    state.group.stable = false;
    drop(state);
    tracing::info!(group = %inner.coordinator.group(), partitions = ?partitions, "partitions revoked");
}

/// LeaveGroup (skipped for static members, so that a restart keeps their partitions).
async fn leave(inner: &GroupMember, me: &MemberIdentityInfo) {
    if me.member_id.is_empty() || me.instance_id.is_some() {
        return;
    }
    let result = tokio::time::timeout(
        inner.client.config().request_timeout(),
        inner.coordinator.leave(me),
    )
    .await
    .unwrap_or_else(|_| {
        Err(Error::Timeout {
            operation: "leave group".into(),
            after: inner.client.config().request_timeout(),
        })
    });
    match result {
        Ok(()) => {
            tracing::info!(group = %inner.coordinator.group(), member = %me.member_id, "left group")
        }
        Err(e) => {
            tracing::warn!(group = %inner.coordinator.group(), error = %e, "leaving the group failed; the coordinator drops the member after session.timeout.ms")
        }
    }
}

/// Heartbeats until the member has to rejoin, leave or stop.
async fn heartbeat(inner: &GroupMember, me: &MemberIdentityInfo) -> Exit {
    let config = inner.client.config().consumer();
    let metadata_every = inner.client.config().metadata_max_age();
    let mut metadata_checked = Instant::now();
    let mut last_ok = Instant::now();
    let mut failures = 0u32;
    loop {
        let woke = inner.shared.membership_wakeup.notified();
        tokio::pin!(woke);
        woke.as_mut().enable();
        {
            let s = inner.shared.lock();
            if s.closed {
                return Exit::Shutdown;
            }
            if s.last_poll.elapsed() > config.max_poll_interval {
                return Exit::PollTimeout;
            }
        }
        let wait = if failures == 0 {
            config.heartbeat_interval
        } else {
            // Retry sooner while the coordinator is being looked for.
            (config.heartbeat_interval / 4).max(Duration::from_millis(100))
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut woke => continue,
        }
        if metadata_checked.elapsed() >= metadata_every {
            metadata_checked = Instant::now();
            if leader_view_changed(inner).await {
                return Exit::Rejoin;
            }
        }
        match inner.coordinator.heartbeat(me).await {
            Ok(()) => {
                failures = 0;
                last_ok = Instant::now();
            }
            Err(e) => match code_of(&e) {
                Some(ErrorCode::RebalanceInProgress) => {
                    tracing::info!(group = %inner.coordinator.group(), "group is rebalancing");
                    return Exit::Rejoin;
                }
                _ if is_fatal_group_error(&e) => {
                    fail_fatally(inner, &e);
                    return Exit::Fatal;
                }
                Some(ErrorCode::UnknownMemberId | ErrorCode::IllegalGeneration) => {
                    tracing::warn!(group = %inner.coordinator.group(), error = %e, "member fenced; rejoining as a new member");
                    return Exit::Reset;
                }
                _ => {
                    failures += 1;
                    tracing::warn!(operation = "heartbeat", group = %inner.coordinator.group(), attempt = failures, delay_ms = (config.heartbeat_interval / 4).max(Duration::from_millis(100)).as_millis() as u64, error = %e, "heartbeat failed, retrying");
                    if last_ok.elapsed() > config.session_timeout {
                        // The coordinator has dropped us by now; stop working on partitions
                        // someone else may own, and rejoin.
                        tracing::warn!(group = %inner.coordinator.group(), "no heartbeat for session.timeout.ms; rejoining");
                        return Exit::Reset;
                    }
                }
            },
        }
    }
}

/// Offsets to commit for the partitions still assigned out of `offsets`.
pub(crate) fn still_assigned(
    inner: &GroupMember,
    offsets: HashMap<TopicPartition, i64>,
) -> HashMap<TopicPartition, i64> {
    let state = inner.shared.lock();
    offsets
        .into_iter()
        .filter(|(tp, _)| state.partitions.contains_key(tp))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_and_assignment_round_trip() {
        let counts = BTreeMap::from([("a".to_string(), 3), ("b".to_string(), 12)]);
        let sub =
            decode_subscription(encode_subscription(&["a".into(), "b".into()], &counts)).unwrap();
        assert_eq!(
            sub.topics.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(sub.user_data.as_deref(), Some(&b"a=3\nb=12"[..]));
        let tps: Vec<TopicPartition> = vec![
            TopicPartition::new("a", 0),
            TopicPartition::new("a", 2),
            TopicPartition::new("b", 1),
        ];
        assert_eq!(decode_assignment(encode_assignment(&tps)).unwrap(), tps);
        assert!(decode_assignment(Bytes::new()).unwrap().is_empty());
    }

    #[test]
    fn subscription_bytes_match_the_java_client() {
        // Java's ConsumerProtocol.serializeSubscription(new Subscription(["t"])) at v1:
        // version, topics (array of string), user data (null), owned partitions (empty).
        let bytes = encode_subscription(&["t".into()], &BTreeMap::new());
        assert_eq!(
            &bytes[..],
            &[0, 1, 0, 0, 0, 1, 0, 1, b't', 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0][..]
        );
    }
}
