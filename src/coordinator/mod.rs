//! The group coordinator: which broker it is (FindCoordinator), and the group requests sent to
//! it (JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit, OffsetFetch).
//!
//! Every method makes one attempt; callers retry through [`Client::retry`](crate::Client).
//! A response saying the coordinator moved (NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE) or a
//! broken connection forgets the cached coordinator, so the next attempt finds it again.
//!
//! Versions are capped at those tested against both test brokers (librdkafka's mock cluster
//! and tansu) and that still name topics (newer OffsetCommit / OffsetFetch / Fetch versions
//! move to topic ids or group arrays).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    FindCoordinatorRequest, GroupId, HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest,
    OffsetCommitRequest, OffsetFetchRequest, SyncGroupRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::consumer::TopicPartition;
use crate::error::{Error, ErrorCode, Result};
use crate::wire::{BrokerConnection, Cluster};

// librdkafka's mock cluster advertises JoinGroup v6, SyncGroup v4 and LeaveGroup v3+ but
// parses their arrays / member lists as the older, non-flexible versions; these caps are the
// newest versions both test brokers read correctly (librdkafka itself sends Join v5, Sync v3).
const FIND_COORDINATOR_MAX: i16 = 3;
const JOIN_GROUP_MAX: i16 = 5;
const SYNC_GROUP_MAX: i16 = 3;
const HEARTBEAT_MAX: i16 = 3;
const LEAVE_GROUP_MAX: i16 = 2;
const OFFSET_COMMIT_MAX: i16 = 8;
const OFFSET_FETCH_MAX: i16 = 7;

/// Who this member is in the group, as the coordinator knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct MemberIdentityInfo {
    /// Member id given by the coordinator ("" before the first join).
    pub(crate) member_id: String,
    /// Generation of the group this member last synced with (-1: none).
    pub(crate) generation: i32,
    /// Static membership id (`group.instance.id`).
    pub(crate) instance_id: Option<String>,
}

/// A successful JoinGroup.
#[derive(Debug, Clone)]
pub(crate) struct Joined {
    pub(crate) generation: i32,
    pub(crate) member_id: String,
    pub(crate) leader: String,
    pub(crate) protocol: String,
    /// Members and their subscription metadata (only filled for the leader).
    pub(crate) members: Vec<(String, Option<String>, Bytes)>,
}

/// The coordinator of one group.
pub(crate) struct Coordinator {
    cluster: Arc<Cluster>,
    group: String,
    current: Mutex<Option<Arc<BrokerConnection>>>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

/// NOT_COORDINATOR or COORDINATOR_NOT_AVAILABLE: the group's coordinator is to be found again.
fn coordinator_moved(code: i16) -> bool {
    matches!(
        ErrorCode::from_code(code),
        ErrorCode::NotCoordinator | ErrorCode::CoordinatorNotAvailable
    )
}

fn group_error(code: i16, what: &str, group: &str, message: Option<&StrBytes>) -> Error {
    Error::broker(
        code,
        format!("{what} of group {group}"),
        message.map(|m| m.to_string()),
    )
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

impl Coordinator {
    pub(crate) fn new(cluster: Arc<Cluster>, group: &str) -> Coordinator {
        Coordinator {
            cluster,
            group: group.to_string(),
            current: Mutex::new(None),
        }
    }

    /// The group id.
    pub(crate) fn group(&self) -> &str {
        &self.group
    }

    /// Forgets the coordinator, so the next request looks it up again.
    pub(crate) fn forget(&self) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The coordinator's connection, found with FindCoordinator when not known (or broken).
    pub(crate) async fn connection(&self) -> Result<Arc<BrokerConnection>> {
        if let Some(c) = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            if !c.is_closed() {
                return Ok(Arc::clone(c));
            }
        }
        let any = self.cluster.any_broker().await?;
        let version = any.version_for::<FindCoordinatorRequest>(Some(FIND_COORDINATOR_MAX))?;
        let request = FindCoordinatorRequest::default()
            .with_key(str_bytes(&self.group))
            .with_key_type(0);
        let response = any.send_version(&request, version).await?;
        if response.error_code != 0 {
            return Err(group_error(
                response.error_code,
                "find coordinator",
                &self.group,
                response.error_message.as_ref(),
            ));
        }
        let addr = format!("{}:{}", response.host.as_str(), response.port);
        // A connection of its own, not the cluster's shared one: brokers answer the requests
        // of one connection in order, and a JoinGroup waits for the whole group, so members
        // sharing a connection would wait for each other (and for fetches) forever.
        let conn = self.cluster.open(&addr).await?;
        tracing::debug!(group = %self.group, coordinator = %addr, node = response.node_id.0, "found coordinator");
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&conn));
        Ok(conn)
    }

    /// Checks a group response's error code; coordinator errors forget the coordinator.
    fn check(&self, code: i16, what: &str) -> Result<()> {
        if code == 0 {
            return Ok(());
        }
        if coordinator_moved(code) {
            self.forget();
        }
        Err(group_error(code, what, &self.group, None))
    }

    /// Runs `f` on the coordinator's connection; a connection error forgets the coordinator.
    async fn on_coordinator<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: FnOnce(Arc<BrokerConnection>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let conn = self.connection().await?;
        let result = f(conn).await;
        if let Err(e) = &result {
            if e.is_connection_error() {
                self.forget();
            }
        }
        result
    }

    /// JoinGroup. `protocols` are (assignor name, subscription metadata) by preference.
    pub(crate) async fn join(
        &self,
        me: &MemberIdentityInfo,
        session_timeout: Duration,
        rebalance_timeout: Duration,
        protocols: &[(String, Bytes)],
    ) -> Result<Joined> {
        self.on_coordinator(|conn| async move {
            let version = conn.version_for::<JoinGroupRequest>(Some(JOIN_GROUP_MAX))?;
            let request = JoinGroupRequest::default()
                .with_group_id(GroupId(str_bytes(&self.group)))
                .with_session_timeout_ms(session_timeout.as_millis() as i32)
                .with_rebalance_timeout_ms(rebalance_timeout.as_millis() as i32)
                .with_member_id(str_bytes(&me.member_id))
                .with_group_instance_id(if version >= 5 {
                    me.instance_id.as_deref().map(str_bytes)
                } else {
                    None
                })
                .with_protocol_type(StrBytes::from_static_str("consumer"))
                .with_protocols(
                    protocols
                        .iter()
                        .map(|(name, meta)| {
                            JoinGroupRequestProtocol::default()
                                .with_name(str_bytes(name))
                                .with_metadata(meta.clone())
                        })
                        .collect(),
                );
            // The coordinator holds JoinGroup until every member rejoined (up to the
            // rebalance timeout), so wait for that plus a margin, as the Java client does.
            let wait = rebalance_timeout + Duration::from_secs(5);
            let response = conn.send_version_timeout(&request, version, wait).await?;
            if response.error_code == ErrorCode::MemberIdRequired.code() {
                return Err(Error::Broker {
                    code: ErrorCode::MemberIdRequired,
                    context: format!("join group {}", self.group),
                    message: Some(response.member_id.to_string()),
                });
            }
            self.check(response.error_code, "join")?;
            Ok(Joined {
                generation: response.generation_id,
                member_id: response.member_id.to_string(),
                leader: response.leader.to_string(),
                protocol: response
                    .protocol_name
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
                members: response
                    .members
                    .into_iter()
                    .map(|m| {
                        (
                            m.member_id.to_string(),
                            m.group_instance_id.map(|i| i.to_string()),
                            m.metadata,
                        )
                    })
                    .collect(),
            })
        })
        .await
    }

    /// SyncGroup: the leader sends everyone's assignment; everyone gets their own back.
    pub(crate) async fn sync(
        &self,
        me: &MemberIdentityInfo,
        protocol: &str,
        assignments: Vec<(String, Bytes)>,
    ) -> Result<Bytes> {
        self.on_coordinator(|conn| async move {
            let version = conn.version_for::<SyncGroupRequest>(Some(SYNC_GROUP_MAX))?;
            let request = SyncGroupRequest::default()
                .with_group_id(GroupId(str_bytes(&self.group)))
                .with_generation_id(me.generation)
                .with_member_id(str_bytes(&me.member_id))
                .with_group_instance_id(if version >= 3 {
                    me.instance_id.as_deref().map(str_bytes)
                } else {
                    None
                })
                .with_protocol_type(Some(StrBytes::from_static_str("consumer")))
                .with_protocol_name(Some(str_bytes(protocol)))
                .with_assignments(
                    assignments
                        .into_iter()
                        .map(|(member, a)| {
                            SyncGroupRequestAssignment::default()
                                .with_member_id(StrBytes::from_string(member))
                                .with_assignment(a)
                        })
                        .collect(),
                );
            let response = match conn.send_version(&request, version).await {
                Ok(r) => r,
                // librdkafka's mock cluster answers a failed SyncGroup (rebalance in
                // progress) with a null assignment, which the protocol does not allow and
                // kafka-protocol refuses to decode. Any broker error here means "rejoin".
                Err(Error::Protocol(m)) if m.contains("negative") => {
                    return Err(group_error(
                        ErrorCode::RebalanceInProgress.code(),
                        "sync",
                        &self.group,
                        Some(&StrBytes::from_static_str(
                            "error response with a null assignment",
                        )),
                    ))
                }
                Err(e) => return Err(e),
            };
            self.check(response.error_code, "sync")?;
            Ok(response.assignment)
        })
        .await
    }

    /// Heartbeat.
    pub(crate) async fn heartbeat(&self, me: &MemberIdentityInfo) -> Result<()> {
        self.on_coordinator(|conn| async move {
            let version = conn.version_for::<HeartbeatRequest>(Some(HEARTBEAT_MAX))?;
            let request = HeartbeatRequest::default()
                .with_group_id(GroupId(str_bytes(&self.group)))
                .with_generation_id(me.generation)
                .with_member_id(str_bytes(&me.member_id))
                .with_group_instance_id(if version >= 3 {
                    me.instance_id.as_deref().map(str_bytes)
                } else {
                    None
                });
            let response = conn.send_version(&request, version).await?;
            self.check(response.error_code, "heartbeat")
        })
        .await
    }

    /// LeaveGroup.
    pub(crate) async fn leave(&self, me: &MemberIdentityInfo) -> Result<()> {
        self.on_coordinator(|conn| async move {
            let version = conn.version_for::<LeaveGroupRequest>(Some(LEAVE_GROUP_MAX))?;
            let mut request =
                LeaveGroupRequest::default().with_group_id(GroupId(str_bytes(&self.group)));
            if version >= 3 {
                request = request.with_members(vec![MemberIdentity::default()
                    .with_member_id(str_bytes(&me.member_id))
                    .with_group_instance_id(me.instance_id.as_deref().map(str_bytes))]);
            } else {
                request = request.with_member_id(str_bytes(&me.member_id));
            }
            let response = conn.send_version(&request, version).await?;
            self.check(response.error_code, "leave")?;
            for m in &response.members {
                // A member already gone is what we wanted.
                if m.error_code != 0 && m.error_code != ErrorCode::UnknownMemberId.code() {
                    self.check(m.error_code, "leave")?;
                }
            }
            Ok(())
        })
        .await
    }

    /// OffsetCommit of `offsets` (topic, partition) → next offset to read.
    pub(crate) async fn commit(
        &self,
        me: &MemberIdentityInfo,
        offsets: &HashMap<TopicPartition, i64>,
    ) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut by_topic: HashMap<&str, Vec<(i32, i64)>> = HashMap::new();
        for (
            TopicPartition {
                topic: t,
                partition: p,
            },
            o,
        ) in offsets
        {
            by_topic.entry(t).or_default().push((*p, *o));
        }
        self.on_coordinator(|conn| async move {
            let version = conn.version_for::<OffsetCommitRequest>(Some(OFFSET_COMMIT_MAX))?;
            let request = OffsetCommitRequest::default()
                .with_group_id(GroupId(str_bytes(&self.group)))
                .with_generation_id_or_member_epoch(me.generation)
                .with_member_id(str_bytes(&me.member_id))
                .with_group_instance_id(if version >= 7 {
                    me.instance_id.as_deref().map(str_bytes)
                } else {
                    None
                })
                .with_retention_time_ms(-1)
                .with_topics(
                    by_topic
                        .iter()
                        .map(|(t, ps)| {
                            OffsetCommitRequestTopic::default()
                                .with_name(TopicName(str_bytes(t)))
                                .with_partitions(
                                    ps.iter()
                                        .map(|(p, o)| {
                                            OffsetCommitRequestPartition::default()
                                                .with_partition_index(*p)
                                                .with_committed_offset(*o)
                                                .with_committed_leader_epoch(-1)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                );
            let response = conn.send_version(&request, version).await?;
            for t in &response.topics {
                for p in &t.partitions {
                    if p.error_code != 0 {
                        if coordinator_moved(p.error_code) {
                            self.forget();
                        }
                        return Err(Error::broker(
                            p.error_code,
                            format!(
                                "commit of {}/{} for group {}",
                                t.name.as_str(),
                                p.partition_index,
                                self.group
                            ),
                            None,
                        ));
                    }
                }
            }
            Ok(())
        })
        .await
    }

    /// OffsetFetch: the committed next offsets of `partitions` (absent: none committed).
    pub(crate) async fn committed(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<HashMap<TopicPartition, i64>> {
        let mut by_topic: HashMap<Arc<str>, Vec<i32>> = HashMap::new();
        for TopicPartition {
            topic: t,
            partition: p,
        } in partitions
        {
            by_topic.entry(Arc::clone(t)).or_default().push(*p);
        }
        self.on_coordinator(|conn| async move {
            let version = conn.version_for::<OffsetFetchRequest>(Some(OFFSET_FETCH_MAX))?;
            let request = OffsetFetchRequest::default()
                .with_group_id(GroupId(str_bytes(&self.group)))
                .with_require_stable(version >= 7)
                .with_topics(Some(
                    by_topic
                        .iter()
                        .map(|(t, ps)| {
                            OffsetFetchRequestTopic::default()
                                .with_name(TopicName(str_bytes(t)))
                                .with_partition_indexes(ps.clone())
                        })
                        .collect(),
                ));
            let response = conn.send_version(&request, version).await?;
            self.check(response.error_code, "offset fetch")?;
            let mut out = HashMap::new();
            for t in response.topics {
                let Some((topic, _)) = by_topic.get_key_value(t.name.0.as_str()) else {
                    continue;
                };
                for p in t.partitions {
                    if p.error_code != 0 {
                        self.check(p.error_code, "offset fetch")?;
                    }
                    if p.committed_offset >= 0 {
                        out.insert(
                            TopicPartition::new(Arc::clone(topic), p.partition_index),
                            p.committed_offset,
                        );
                    }
                }
            }
            Ok(out)
        })
        .await
    }
}
