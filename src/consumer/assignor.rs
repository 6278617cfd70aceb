//! Partition assignors, computed by the group leader: `range` and `roundrobin`, exactly as the
//! Java client's (and librdkafka's) so that mixed groups agree whoever leads.
//!
//! Both are eager: every member gives up all its partitions before the rebalance. The
//! [`Assignor`] trait receives each member's currently owned partitions so that a cooperative
//! assignor (`cooperative-sticky`) can be added without changing the membership code.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// A topic partition: `orders/3`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// The topic name.
    pub topic: Arc<str>,
    /// The partition id.
    pub partition: i32,
}

impl TopicPartition {
    /// `topic`/`partition`.
    pub fn new(topic: impl Into<Arc<str>>, partition: i32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

impl From<(Arc<str>, i32)> for TopicPartition {
    fn from((topic, partition): (Arc<str>, i32)) -> Self {
        TopicPartition { topic, partition }
    }
}

impl From<(&str, i32)> for TopicPartition {
    fn from((topic, partition): (&str, i32)) -> Self {
        TopicPartition::new(topic, partition)
    }
}

/// One group member as the leader sees it (built with [`new`](Self::new) in tests of an
/// [`Assignor`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemberSubscription {
    /// Member id given by the coordinator.
    pub member_id: String,
    /// Static membership id, if any.
    pub group_instance_id: Option<String>,
    /// Subscribed topics.
    pub topics: Vec<String>,
    /// Partitions the member owns now (empty for eager members).
    pub owned: Vec<TopicPartition>,
}

impl MemberSubscription {
    /// A member subscribed to `topics`, without a static id and owning nothing.
    pub fn new<T: Into<String>>(
        member_id: impl Into<String>,
        topics: impl IntoIterator<Item = T>,
    ) -> Self {
        MemberSubscription {
            member_id: member_id.into(),
            group_instance_id: None,
            topics: topics.into_iter().map(Into::into).collect(),
            owned: Vec::new(),
        }
    }

    /// Sets the static membership id (`group.instance.id`).
    pub fn with_group_instance_id(mut self, id: impl Into<String>) -> Self {
        self.group_instance_id = Some(id.into());
        self
    }

    /// Sets the partitions the member owns now.
    pub fn with_owned(mut self, owned: Vec<TopicPartition>) -> Self {
        self.owned = owned;
        self
    }
}

/// Computes an assignment for the whole group.
pub trait Assignor: Send + Sync {
    /// The protocol name sent in JoinGroup (`range`, `roundrobin`, ...).
    fn name(&self) -> &'static str;
    /// Assigns partitions: `partitions` maps each subscribed topic to its partition count.
    /// Returns every member's partitions, keyed by member id (members with none included).
    fn assign(
        &self,
        members: &[MemberSubscription],
        partitions: &BTreeMap<String, i32>,
    ) -> BTreeMap<String, Vec<TopicPartition>>;
}

/// Members in the order Java's assignors use: by `group.instance.id` when both members have
/// one, otherwise by member id.
fn sorted_members(members: &[MemberSubscription]) -> Vec<&MemberSubscription> {
    let mut sorted: Vec<&MemberSubscription> = members.iter().collect();
    sorted.sort_by(|a, b| match (&a.group_instance_id, &b.group_instance_id) {
        (Some(x), Some(y)) => x.cmp(y).then_with(|| a.member_id.cmp(&b.member_id)),
        _ => a.member_id.cmp(&b.member_id),
    });
    sorted
}

fn empty_assignment(members: &[MemberSubscription]) -> BTreeMap<String, Vec<TopicPartition>> {
    members
        .iter()
        .map(|m| (m.member_id.clone(), Vec::new()))
        .collect()
}

/// `range`: per topic, the members subscribed to it (sorted) each take a contiguous range;
/// the first `partitions % members` take one extra.
#[derive(Debug, Default, Clone, Copy)]
pub struct RangeAssignor;

impl Assignor for RangeAssignor {
    fn name(&self) -> &'static str {
        "range"
    }

    fn assign(
        &self,
        members: &[MemberSubscription],
        partitions: &BTreeMap<String, i32>,
    ) -> BTreeMap<String, Vec<TopicPartition>> {
        let mut out = empty_assignment(members);
        let sorted = sorted_members(members);
        for (topic, &count) in partitions {
            let subscribed: Vec<&&MemberSubscription> = sorted
                .iter()
                .filter(|m| m.topics.iter().any(|t| t == topic))
                .collect();
            if subscribed.is_empty() {
                continue;
            }
            let topic: Arc<str> = Arc::from(topic.as_str());
            let n = subscribed.len() as i32;
            let per = count / n;
            let extra = count % n;
            for (i, m) in subscribed.iter().enumerate() {
                let i = i as i32;
                let start = per * i + i.min(extra);
                let len = per + i32::from(i < extra);
                let mine = out.entry(m.member_id.clone()).or_default();
                mine.extend(
                    (start..start + len).map(|p| TopicPartition::new(Arc::clone(&topic), p)),
                );
            }
        }
        out
    }
}

/// `roundrobin`: all partitions of all subscribed topics, sorted by topic and partition, dealt
/// in turn to the sorted members, skipping members not subscribed to a partition's topic.
#[derive(Debug, Default, Clone, Copy)]
pub struct RoundRobinAssignor;

impl Assignor for RoundRobinAssignor {
    fn name(&self) -> &'static str {
        "roundrobin"
    }

    fn assign(
        &self,
        members: &[MemberSubscription],
        partitions: &BTreeMap<String, i32>,
    ) -> BTreeMap<String, Vec<TopicPartition>> {
        let mut out = empty_assignment(members);
        let sorted = sorted_members(members);
        if sorted.is_empty() {
            return out;
        }
        let subscribed: BTreeSet<&str> = sorted
            .iter()
            .flat_map(|m| m.topics.iter().map(String::as_str))
            .collect();
        let mut next = 0usize;
        for (topic, &count) in partitions {
            if !subscribed.contains(topic.as_str()) {
                continue;
            }
            let name: Arc<str> = Arc::from(topic.as_str());
            for p in 0..count {
                // Java's CircularIterator: advance until a member subscribed to this topic.
                loop {
                    let m = sorted[next % sorted.len()];
                    next += 1;
                    if m.topics.iter().any(|t| t == topic) {
                        out.entry(m.member_id.clone())
                            .or_default()
                            .push(TopicPartition::new(Arc::clone(&name), p));
                        break;
                    }
                }
            }
        }
        out
    }
}

/// The assignor called `name`, if purekafka has it.
pub fn by_name(name: &str) -> Option<Box<dyn Assignor>> {
    match name {
        "range" => Some(Box::new(RangeAssignor)),
        "roundrobin" => Some(Box::new(RoundRobinAssignor)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, topics: &[&str]) -> MemberSubscription {
        MemberSubscription {
            member_id: id.into(),
            group_instance_id: None,
            topics: topics.iter().map(|t| t.to_string()).collect(),
            owned: vec![],
        }
    }

    fn names(a: &[TopicPartition]) -> Vec<String> {
        a.iter()
            .map(|tp| format!("{}{}", tp.topic, tp.partition))
            .collect()
    }

    #[test]
    fn range_matches_java() {
        // Java's RangeAssignorTest.testTwoConsumersTwoTopicsSixPartitions.
        let members = [member("c1", &["t1", "t2"]), member("c2", &["t1", "t2"])];
        let parts = BTreeMap::from([("t1".to_string(), 3), ("t2".to_string(), 3)]);
        let a = RangeAssignor.assign(&members, &parts);
        assert_eq!(names(&a["c1"]), ["t10", "t11", "t20", "t21"]);
        assert_eq!(names(&a["c2"]), ["t12", "t22"]);
    }

    #[test]
    fn range_with_more_members_than_partitions() {
        let members = [
            member("a", &["t"]),
            member("b", &["t"]),
            member("c", &["t"]),
        ];
        let parts = BTreeMap::from([("t".to_string(), 2)]);
        let a = RangeAssignor.assign(&members, &parts);
        assert_eq!(names(&a["a"]), ["t0"]);
        assert_eq!(names(&a["b"]), ["t1"]);
        assert!(a["c"].is_empty());
    }

    #[test]
    fn roundrobin_matches_java() {
        // Java's RoundRobinAssignorTest.testTwoConsumersTwoTopicsSixPartitions.
        let members = [member("c1", &["t1", "t2"]), member("c2", &["t1", "t2"])];
        let parts = BTreeMap::from([("t1".to_string(), 3), ("t2".to_string(), 3)]);
        let a = RoundRobinAssignor.assign(&members, &parts);
        assert_eq!(names(&a["c1"]), ["t10", "t12", "t21"]);
        assert_eq!(names(&a["c2"]), ["t11", "t20", "t22"]);
    }

    #[test]
    fn roundrobin_skips_unsubscribed_members() {
        // Java's testMultipleConsumersMixedTopics.
        let members = [
            member("c0", &["t1"]),
            member("c1", &["t1", "t2"]),
            member("c2", &["t1"]),
        ];
        let parts = BTreeMap::from([("t1".to_string(), 3), ("t2".to_string(), 2)]);
        let a = RoundRobinAssignor.assign(&members, &parts);
        assert_eq!(names(&a["c0"]), ["t10"]);
        assert_eq!(names(&a["c1"]), ["t11", "t20", "t21"]);
        assert_eq!(names(&a["c2"]), ["t12"]);
    }

    #[test]
    fn static_members_sort_by_instance_id() {
        let mut a = member("zzz", &["t"]);
        a.group_instance_id = Some("instance-1".into());
        let mut b = member("aaa", &["t"]);
        b.group_instance_id = Some("instance-2".into());
        let parts = BTreeMap::from([("t".to_string(), 2)]);
        let out = RangeAssignor.assign(&[a, b], &parts);
        assert_eq!(names(&out["zzz"]), ["t0"]);
        assert_eq!(names(&out["aaa"]), ["t1"]);
    }
}
