//! Topic administration requests on purekafka's own connections: CreateTopics and
//! DeleteTopics go to the controller. One attempt each; the caller retries.

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
const NOT_CONTROLLER: i16 = 41;

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
