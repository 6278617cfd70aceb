//! What a transactional producer needs of a consumer group member to commit its offsets in a
//! transaction (KIP-447): [`Consumer::group_metadata`](super::Consumer::group_metadata).

/// A group member's identity at one moment: group id, generation, member id and static
/// instance id. [`Producer::send_offsets_to_transaction`](crate::Producer::send_offsets_to_transaction)
/// sends it with the offsets, so the group coordinator refuses the commit of a member that
/// was fenced by a rebalance (a zombie) instead of committing over its successor.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerGroupMetadata {
    /// The group id.
    pub group_id: String,
    /// The generation the member last joined (-1: none; the coordinator then does not check it).
    pub generation_id: i32,
    /// The member id the coordinator gave ("" before the first join).
    pub member_id: String,
    /// The static membership id (`group.instance.id`), if any.
    pub group_instance_id: Option<String>,
}

impl ConsumerGroupMetadata {
    /// Metadata for a group without a member of it (the partitions are assigned by hand): no
    /// generation and no member id, so the coordinator checks neither (Java's
    /// `new ConsumerGroupMetadata(groupId)`).
    pub fn new(group_id: impl Into<String>) -> Self {
        ConsumerGroupMetadata {
            group_id: group_id.into(),
            generation_id: -1,
            member_id: String::new(),
            group_instance_id: None,
        }
    }
}
