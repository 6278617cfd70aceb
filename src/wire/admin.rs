//! Topic administration requests on purekafka's own connections: CreateTopics,
//! DeleteTopics and CreatePartitions go to the controller. One attempt each; the caller retries.

use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::{CreateTopicsRequest, DeleteTopicsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::cluster::Cluster;
use crate::error::Result;

/// DeleteTopics v6 names topics by id or name in a new layout; v5 is the last with a plain
/// list of names, which every broker here reads.
const DELETE_TOPICS_MAX: i16 = 5;
/// CreateTopics v5+ answers with the topic's configs; v4 is enough and parsed by both brokers.
const CREATE_TOPICS_MAX: i16 = 4;

/// NOT_CONTROLLER: the controller moved; look it up again.
const NOT_CONTROLLER: i16 = crate::error::ErrorCode::NotController.code();

/// One topic to create.
#[derive(Debug, Clone)]
pub(crate) struct NewTopicSpec {
    pub(crate) name: String,
    pub(crate) partitions: i32,
    pub(crate) replication_factor: i16,
    pub(crate) configs: Vec<(String, String)>,
}

/// A per-topic outcome: the topic, the Kafka error code (0 = done) and the broker's message.
#[derive(Debug, Clone)]
pub(crate) struct TopicOutcome {
    pub(crate) name: String,
    pub(crate) code: i16,
    pub(crate) message: Option<String>,
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// Sends CreateTopics for `topics` to the controller.
pub(crate) async fn create_topics(
    cluster: &Cluster,
    topics: &[NewTopicSpec],
    timeout_ms: i32,
) -> Result<Vec<TopicOutcome>> {
    let conn = cluster.controller().await?;
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(timeout_ms)
        .with_topics(
            topics
                .iter()
                .map(|t| {
                    CreatableTopic::default()
                        .with_name(name(&t.name))
                        .with_num_partitions(t.partitions)
                        .with_replication_factor(t.replication_factor)
                        .with_configs(
                            t.configs
                                .iter()
                                .map(|(k, v)| {
                                    CreatableTopicConfig::default()
                                        .with_name(StrBytes::from_string(k.clone()))
                                        .with_value(Some(StrBytes::from_string(v.clone())))
                                })
                                .collect(),
                        )
                })
                .collect(),
        );
    let version = conn.version_for::<CreateTopicsRequest>(Some(CREATE_TOPICS_MAX))?;
    let response = conn.send_version(&request, version).await?;
    let outcomes: Vec<TopicOutcome> = response
        .topics
        .into_iter()
        .map(|t| TopicOutcome {
            name: t.name.0.to_string(),
            code: t.error_code,
            message: t.error_message.map(|m| m.to_string()),
        })
        .collect();
    if outcomes.iter().any(|o| o.code == NOT_CONTROLLER) {
        cluster.forget_controller();
    }
    Ok(outcomes)
}

/// Sends DeleteTopics for `topics` to the controller.
pub(crate) async fn delete_topics(
    cluster: &Cluster,
    topics: &[String],
    timeout_ms: i32,
) -> Result<Vec<TopicOutcome>> {
    let conn = cluster.controller().await?;
    let request = DeleteTopicsRequest::default()
        .with_timeout_ms(timeout_ms)
        .with_topic_names(topics.iter().map(|t| name(t)).collect());
    let version = conn.version_for::<DeleteTopicsRequest>(Some(DELETE_TOPICS_MAX))?;
    let response = conn.send_version(&request, version).await?;
    let outcomes: Vec<TopicOutcome> = response
        .responses
        .into_iter()
        .map(|t| TopicOutcome {
            name: t.name.map(|n| n.0.to_string()).unwrap_or_default(),
            code: t.error_code,
            message: t.error_message.map(|m| m.to_string()),
        })
        .collect();
    if outcomes.iter().any(|o| o.code == NOT_CONTROLLER) {
        cluster.forget_controller();
    }
    Ok(outcomes)
}

/// CreatePartitions v0–v3 carry the same fields (v2+ in the flexible layout).
const CREATE_PARTITIONS_MAX: i16 = 3;

/// Sends CreatePartitions to the controller: each `(topic, total)` raises the topic's
/// partition count to `total` (replicas placed by the broker).
pub(crate) async fn create_partitions(
    cluster: &Cluster,
    topics: &[(String, i32)],
    timeout_ms: i32,
) -> Result<Vec<TopicOutcome>> {
    use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
    use kafka_protocol::messages::CreatePartitionsRequest;
    let conn = cluster.controller().await?;
    let request = CreatePartitionsRequest::default()
        .with_timeout_ms(timeout_ms)
        .with_topics(
            topics
                .iter()
                .map(|(t, count)| {
                    CreatePartitionsTopic::default()
                        .with_name(name(t))
                        .with_count(*count)
                })
                .collect(),
        );
    let version = conn.version_for::<CreatePartitionsRequest>(Some(CREATE_PARTITIONS_MAX))?;
    let response = conn.send_version(&request, version).await?;
    let outcomes: Vec<TopicOutcome> = response
        .results
        .into_iter()
        .map(|t| TopicOutcome {
            name: t.name.0.to_string(),
            code: t.error_code,
            message: t.error_message.map(|m| m.to_string()),
        })
        .collect();
    if outcomes.iter().any(|o| o.code == NOT_CONTROLLER) {
        cluster.forget_controller();
    }
    Ok(outcomes)
}

/// DescribeConfigs v1 and later name each entry's source; v4 is the newest kafka-protocol
/// has; v2 is what both test brokers parse.
const DESCRIBE_CONFIGS_MAX: i16 = 2;
/// ListGroups v4 adds the group state filter; v5 the type filter (not needed).
const LIST_GROUPS_MAX: i16 = 4;
/// DescribeGroups v5 is the last before the per-group error message (v6).
const DESCRIBE_GROUPS_MAX: i16 = 5;
/// OffsetFetch v8 moves to a list of groups; v7 is the last with one group, and v2+ asks
/// for every partition of the group with a null topic list.
const OFFSET_FETCH_MAX: i16 = 7;
/// FindCoordinator v4 batches keys; v3 is the last with one key.
const FIND_COORDINATOR_MAX: i16 = 3;

/// A raw config entry from DescribeConfigs.
#[derive(Debug, Clone)]
pub(crate) struct RawConfigEntry {
    pub(crate) name: String,
    pub(crate) value: Option<String>,
    pub(crate) read_only: bool,
    pub(crate) source: i8,
    pub(crate) sensitive: bool,
}

/// A resource's outcome from DescribeConfigs / IncrementalAlterConfigs.
#[derive(Debug, Clone)]
pub(crate) struct RawResourceOutcome {
    pub(crate) code: i16,
    pub(crate) message: Option<String>,
    pub(crate) entries: Vec<RawConfigEntry>,
}

/// A config resource: 2 = topic, 4 = broker (Kafka's ConfigResource types).
pub(crate) type RawResource = (i8, String);

/// The broker a config request for `resource` goes to: a broker resource to that broker,
/// anything else to any broker (which forwards topic changes to the controller).
async fn config_connection(
    cluster: &Cluster,
    resource: &RawResource,
) -> Result<std::sync::Arc<super::BrokerConnection>> {
    if resource.0 == 4 {
        if let Ok(id) = resource.1.parse::<i32>() {
            return cluster.broker(id).await;
        }
    }
    cluster.any_broker().await
}

/// DescribeConfigs for one resource (all its keys).
pub(crate) async fn describe_configs(
    cluster: &Cluster,
    resource: &RawResource,
) -> Result<RawResourceOutcome> {
    use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
    use kafka_protocol::messages::DescribeConfigsRequest;
    let conn = config_connection(cluster, resource).await?;
    let request =
        DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(resource.0)
            .with_resource_name(StrBytes::from_string(resource.1.clone()))
            .with_configuration_keys(None)]);
    let version = conn.version_for::<DescribeConfigsRequest>(Some(DESCRIBE_CONFIGS_MAX))?;
    let response = conn.send_version(&request, version).await?;
    let r = response
        .results
        .into_iter()
        .find(|r| r.resource_type == resource.0 && r.resource_name.as_str() == resource.1)
        .ok_or_else(|| {
            crate::Error::Protocol(format!(
                "DescribeConfigs response from {} does not mention {}",
                conn.addr(),
                resource.1
            ))
        })?;
    Ok(RawResourceOutcome {
        code: r.error_code,
        message: r.error_message.map(|m| m.to_string()),
        entries: r
            .configs
            .into_iter()
            .map(|c| RawConfigEntry {
                name: c.name.to_string(),
                value: c.value.map(|v| v.to_string()),
                read_only: c.read_only,
                source: c.config_source,
                sensitive: c.is_sensitive,
            })
            .collect(),
    })
}

/// IncrementalAlterConfigs for one resource: `(key, operation, value)` with Kafka's
/// operation codes (0 set, 1 delete, 2 append, 3 subtract).
pub(crate) async fn incremental_alter_configs(
    cluster: &Cluster,
    resource: &RawResource,
    ops: &[(String, i8, Option<String>)],
) -> Result<RawResourceOutcome> {
    use kafka_protocol::messages::incremental_alter_configs_request::{
        AlterConfigsResource, AlterableConfig,
    };
    use kafka_protocol::messages::IncrementalAlterConfigsRequest;
    let conn = config_connection(cluster, resource).await?;
    let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(resource.0)
            .with_resource_name(StrBytes::from_string(resource.1.clone()))
            .with_configs(
                ops.iter()
                    .map(|(k, op, v)| {
                        AlterableConfig::default()
                            .with_name(StrBytes::from_string(k.clone()))
                            .with_config_operation(*op)
                            .with_value(v.clone().map(StrBytes::from_string))
                    })
                    .collect(),
            ),
    ]);
    let version = conn.version_for::<IncrementalAlterConfigsRequest>(None)?;
    let response = conn.send_version(&request, version).await?;
    let r = response.responses.into_iter().next().ok_or_else(|| {
        crate::Error::Protocol(format!(
            "IncrementalAlterConfigs response from {} is empty",
            conn.addr()
        ))
    })?;
    Ok(RawResourceOutcome {
        code: r.error_code,
        message: r.error_message.map(|m| m.to_string()),
        entries: Vec::new(),
    })
}

/// A group as ListGroups lists it: id, protocol type, state (empty before v4).
pub(crate) type RawListedGroup = (String, String, String);

/// ListGroups on one broker (each broker lists the groups it coordinates).
pub(crate) async fn list_groups(
    conn: &super::BrokerConnection,
) -> Result<(i16, Vec<RawListedGroup>)> {
    use kafka_protocol::messages::ListGroupsRequest;
    let version = conn.version_for::<ListGroupsRequest>(Some(LIST_GROUPS_MAX))?;
    let response = conn
        .send_version(&ListGroupsRequest::default(), version)
        .await?;
    Ok((
        response.error_code,
        response
            .groups
            .into_iter()
            .map(|g| {
                (
                    g.group_id.0.to_string(),
                    g.protocol_type.to_string(),
                    g.group_state.to_string(),
                )
            })
            .collect(),
    ))
}

/// The address of `group`'s coordinator (FindCoordinator on any broker).
pub(crate) async fn find_coordinator(cluster: &Cluster, group: &str) -> Result<String> {
    use kafka_protocol::messages::FindCoordinatorRequest;
    let any = cluster.any_broker().await?;
    let version = any.version_for::<FindCoordinatorRequest>(Some(FIND_COORDINATOR_MAX))?;
    let request = FindCoordinatorRequest::default()
        .with_key(StrBytes::from_string(group.to_string()))
        .with_key_type(0);
    let response = any.send_version(&request, version).await?;
    if response.error_code != 0 {
        return Err(crate::Error::broker(
            response.error_code,
            format!("find coordinator of group {group}"),
            response.error_message.map(|m| m.to_string()),
        ));
    }
    Ok(format!("{}:{}", response.host.as_str(), response.port))
}

/// A described group member: member id, instance id, client id, host, assignment bytes.
#[derive(Debug, Clone)]
pub(crate) struct RawMember {
    pub(crate) member_id: String,
    pub(crate) instance_id: Option<String>,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    pub(crate) assignment: bytes::Bytes,
}

/// A described group.
#[derive(Debug, Clone)]
pub(crate) struct RawGroup {
    pub(crate) code: i16,
    pub(crate) state: String,
    pub(crate) protocol_type: String,
    pub(crate) protocol: String,
    pub(crate) members: Vec<RawMember>,
}

/// DescribeGroups for one group, on its coordinator.
pub(crate) async fn describe_group(cluster: &Cluster, group: &str) -> Result<RawGroup> {
    use kafka_protocol::messages::{DescribeGroupsRequest, GroupId};
    let addr = find_coordinator(cluster, group).await?;
    let conn = cluster.connection_to(&addr).await?;
    let version = conn.version_for::<DescribeGroupsRequest>(Some(DESCRIBE_GROUPS_MAX))?;
    let request = DescribeGroupsRequest::default()
        .with_groups(vec![GroupId(StrBytes::from_string(group.to_string()))]);
    let response = conn.send_version(&request, version).await?;
    let g = response
        .groups
        .into_iter()
        .find(|g| g.group_id.0.as_str() == group)
        .ok_or_else(|| {
            crate::Error::Protocol(format!(
                "DescribeGroups response from {addr} does not mention {group}"
            ))
        })?;
    Ok(RawGroup {
        code: g.error_code,
        state: g.group_state.to_string(),
        protocol_type: g.protocol_type.to_string(),
        protocol: g.protocol_data.to_string(),
        members: g
            .members
            .into_iter()
            .map(|m| RawMember {
                member_id: m.member_id.to_string(),
                instance_id: m.group_instance_id.map(|i| i.to_string()),
                client_id: m.client_id.to_string(),
                client_host: m.client_host.to_string(),
                assignment: m.member_assignment,
            })
            .collect(),
    })
}

/// OffsetFetch of every partition of `topics` for `group`, on its coordinator:
/// `(topic, partition, next offset or -1, error code)`.
///
/// The topics are named: asked with a null topic list ("all"), both test brokers answer with
/// a null array that OffsetFetch does not allow.
pub(crate) async fn group_offsets(
    cluster: &Cluster,
    group: &str,
    topics: &[(String, Vec<i32>)],
) -> Result<Vec<(String, i32, i64, i16)>> {
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
    use kafka_protocol::messages::{GroupId, OffsetFetchRequest};
    let addr = find_coordinator(cluster, group).await?;
    let conn = cluster.connection_to(&addr).await?;
    let version = conn.version_for::<OffsetFetchRequest>(Some(OFFSET_FETCH_MAX))?;
    let request = OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_topics(Some(
            topics
                .iter()
                .map(|(t, ps)| {
                    OffsetFetchRequestTopic::default()
                        .with_name(name(t))
                        .with_partition_indexes(ps.clone())
                })
                .collect(),
        ));
    let response = conn.send_version(&request, version).await?;
    if response.error_code != 0 {
        return Err(crate::Error::broker(
            response.error_code,
            format!("offset fetch of group {group}"),
            None,
        ));
    }
    let mut out = Vec::new();
    for t in response.topics {
        for p in t.partitions {
            out.push((
                t.name.0.to_string(),
                p.partition_index,
                p.committed_offset,
                p.error_code,
            ));
        }
    }
    Ok(out)
}
