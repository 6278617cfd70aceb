//! The transactional producer's requests: FindCoordinator (key type TRANSACTION),
//! InitProducerId with a transactional id, AddPartitionsToTxn, AddOffsetsToTxn, EndTxn and
//! TxnOffsetCommit. One attempt each, on connections of this wire layer (same TLS, SASL and
//! timeouts as every other request); retries and the transaction's state are
//! `producer::transaction`'s.
//!
//! Versions are capped below KIP-890's (AddPartitionsToTxn v4+ is the brokers' batched form;
//! EndTxn v5 and TxnOffsetCommit v5 let the broker bump the epoch per transaction, which this
//! producer does not follow).

use std::sync::Arc;

use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::txn_offset_commit_request::{
    TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddPartitionsToTxnRequest, EndTxnRequest, FindCoordinatorRequest,
    GroupId, InitProducerIdRequest, ProducerId, TopicName, TransactionalId, TxnOffsetCommitRequest,
};
use kafka_protocol::protocol::StrBytes;

use super::{BrokerConnection, Cluster};
use crate::error::{Error, Result};

const FIND_COORDINATOR_MAX: i16 = 3;
const INIT_PRODUCER_ID_MAX: i16 = 4;
const ADD_PARTITIONS_MAX: i16 = 3;
const ADD_OFFSETS_MAX: i16 = 3;
const END_TXN_MAX: i16 = 3;
const TXN_OFFSET_COMMIT_MAX: i16 = 3;

/// FindCoordinator key type of a transactional id.
const KEY_TYPE_TRANSACTION: i8 = 1;

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// The producer a transactional request speaks for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TxnProducer<'a> {
    pub(crate) transactional_id: &'a str,
    pub(crate) producer_id: i64,
    pub(crate) epoch: i16,
}

impl TxnProducer<'_> {
    fn error(&self, code: i16, what: &str, message: Option<&StrBytes>) -> Error {
        Error::broker(
            code,
            format!("{what} of transactional id {}", self.transactional_id),
            message.map(|m| m.to_string()),
        )
    }
}

/// Finds the transaction coordinator of `transactional_id` and opens a connection of the
/// caller's own to it.
pub(crate) async fn find_coordinator(
    cluster: &Cluster,
    transactional_id: &str,
) -> Result<Arc<BrokerConnection>> {
    let any = cluster.any_broker().await?;
    let version = any.version_for::<FindCoordinatorRequest>(Some(FIND_COORDINATOR_MAX))?;
    let request = FindCoordinatorRequest::default()
        .with_key(str_bytes(transactional_id))
        .with_key_type(KEY_TYPE_TRANSACTION);
    let response = any.send_version(&request, version).await?;
    if response.error_code != 0 {
        return Err(Error::broker(
            response.error_code,
            format!("find the transaction coordinator of {transactional_id}"),
            response.error_message.map(|m| m.to_string()),
        ));
    }
    let addr = format!("{}:{}", response.host.as_str(), response.port);
    tracing::debug!(transactional_id, coordinator = %addr, node = response.node_id.0, "found the transaction coordinator");
    cluster.open(&addr).await
}

/// InitProducerId for a transactional id: a new epoch of its producer id (the broker aborts
/// or completes a transaction the previous instance left open, and fences that instance).
pub(crate) async fn init_producer_id(
    conn: &BrokerConnection,
    transactional_id: &str,
    transaction_timeout_ms: i32,
) -> Result<(i64, i16)> {
    let version = conn.version_for::<InitProducerIdRequest>(Some(INIT_PRODUCER_ID_MAX))?;
    let request = InitProducerIdRequest::default()
        .with_transactional_id(Some(TransactionalId(str_bytes(transactional_id))))
        .with_transaction_timeout_ms(transaction_timeout_ms)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let response = conn.send_version(&request, version).await?;
    if response.error_code != 0 {
        return Err(Error::broker(
            response.error_code,
            format!("InitProducerId of transactional id {transactional_id}"),
            None,
        ));
    }
    Ok((response.producer_id.0, response.producer_epoch))
}

/// AddPartitionsToTxn: `partitions` (topic, partitions) join the ongoing transaction. Returns
/// the first error code of any partition (0: all added).
pub(crate) async fn add_partitions(
    conn: &BrokerConnection,
    who: TxnProducer<'_>,
    partitions: &[(Arc<str>, Vec<i32>)],
) -> Result<()> {
    let version = conn.version_for::<AddPartitionsToTxnRequest>(Some(ADD_PARTITIONS_MAX))?;
    let topics = partitions
        .iter()
        .map(|(topic, ps)| {
            AddPartitionsToTxnTopic::default()
                .with_name(TopicName(str_bytes(topic)))
                .with_partitions(ps.clone())
        })
        .collect();
    let request = AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(TransactionalId(str_bytes(who.transactional_id)))
        .with_v3_and_below_producer_id(ProducerId(who.producer_id))
        .with_v3_and_below_producer_epoch(who.epoch)
        .with_v3_and_below_topics(topics);
    let response = conn.send_version(&request, version).await?;
    // The partitions that failed for a reason of their own come first: the others say
    // OPERATION_NOT_ATTEMPTED (55) because of them.
    let mut first: Option<(i16, String)> = None;
    for t in &response.results_by_topic_v3_and_below {
        for p in &t.results_by_partition {
            let code = p.partition_error_code;
            if code != 0 && first.as_ref().is_none_or(|(c, _)| *c == 55) {
                first = Some((code, format!("{}/{}", t.name.0.as_str(), p.partition_index)));
            }
        }
    }
    match first {
        None => Ok(()),
        Some((code, tp)) => Err(who.error(code, &format!("AddPartitionsToTxn ({tp})"), None)),
    }
}

/// AddOffsetsToTxn: the group's offsets will be committed with the transaction.
pub(crate) async fn add_offsets(
    conn: &BrokerConnection,
    who: TxnProducer<'_>,
    group: &str,
) -> Result<()> {
    let version = conn.version_for::<AddOffsetsToTxnRequest>(Some(ADD_OFFSETS_MAX))?;
    let request = AddOffsetsToTxnRequest::default()
        .with_transactional_id(TransactionalId(str_bytes(who.transactional_id)))
        .with_producer_id(ProducerId(who.producer_id))
        .with_producer_epoch(who.epoch)
        .with_group_id(GroupId(str_bytes(group)));
    let response = conn.send_version(&request, version).await?;
    match response.error_code {
        0 => Ok(()),
        code => Err(who.error(code, &format!("AddOffsetsToTxn (group {group})"), None)),
    }
}

/// EndTxn: commits (`commit`) or aborts the ongoing transaction.
pub(crate) async fn end_txn(
    conn: &BrokerConnection,
    who: TxnProducer<'_>,
    commit: bool,
) -> Result<()> {
    let version = conn.version_for::<EndTxnRequest>(Some(END_TXN_MAX))?;
    let request = EndTxnRequest::default()
        .with_transactional_id(TransactionalId(str_bytes(who.transactional_id)))
        .with_producer_id(ProducerId(who.producer_id))
        .with_producer_epoch(who.epoch)
        .with_committed(commit);
    let response = conn.send_version(&request, version).await?;
    match response.error_code {
        0 => Ok(()),
        code => Err(who.error(
            code,
            if commit {
                "EndTxn (commit)"
            } else {
                "EndTxn (abort)"
            },
            None,
        )),
    }
}

/// The consumer group a transaction's offsets are committed for (KIP-447).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TxnGroup<'a> {
    pub(crate) group_id: &'a str,
    pub(crate) generation_id: i32,
    pub(crate) member_id: &'a str,
    pub(crate) group_instance_id: Option<&'a str>,
}

/// TxnOffsetCommit to the group's coordinator: `offsets` (topic, partition, next offset)
/// become the group's committed offsets when the transaction commits. Returns the first
/// partition error.
pub(crate) async fn txn_offset_commit(
    conn: &BrokerConnection,
    who: TxnProducer<'_>,
    group: TxnGroup<'_>,
    offsets: &[(Arc<str>, i32, i64)],
) -> Result<()> {
    let version = conn.version_for::<TxnOffsetCommitRequest>(Some(TXN_OFFSET_COMMIT_MAX))?;
    let mut topics: Vec<TxnOffsetCommitRequestTopic> = Vec::new();
    for (topic, partition, offset) in offsets {
        let p = TxnOffsetCommitRequestPartition::default()
            .with_partition_index(*partition)
            .with_committed_offset(*offset)
            .with_committed_leader_epoch(-1)
            .with_committed_metadata(Some(StrBytes::default()));
        match topics.iter_mut().find(|t| t.name.0.as_str() == &**topic) {
            Some(t) => t.partitions.push(p),
            None => topics.push(
                TxnOffsetCommitRequestTopic::default()
                    .with_name(TopicName(str_bytes(topic)))
                    .with_partitions(vec![p]),
            ),
        }
    }
    let mut request = TxnOffsetCommitRequest::default()
        .with_transactional_id(TransactionalId(str_bytes(who.transactional_id)))
        .with_group_id(GroupId(str_bytes(group.group_id)))
        .with_producer_id(ProducerId(who.producer_id))
        .with_producer_epoch(who.epoch)
        .with_topics(topics);
    if version >= 3 {
        request = request
            .with_generation_id(group.generation_id)
            .with_member_id(str_bytes(group.member_id))
            .with_group_instance_id(group.group_instance_id.map(str_bytes));
    }
    let response = conn.send_version(&request, version).await?;
    for t in &response.topics {
        for p in &t.partitions {
            if p.error_code != 0 {
                return Err(Error::broker(
                    p.error_code,
                    format!(
                        "TxnOffsetCommit of {}/{} for group {} in transactional id {}",
                        t.name.0.as_str(),
                        p.partition_index,
                        group.group_id,
                        who.transactional_id
                    ),
                    None,
                ));
            }
        }
    }
    Ok(())
}
