//! Cluster administration on purekafka's own connections: topics with configs, config
//! look-ups and changes, consumer groups, committed offsets, partition offsets and lag.
//!
//! Get one with [`Client::admin`]. Every call runs under the client's retry policy
//! (connection errors and retriable Kafka codes are retried, logged and counted in
//! [`Client::health`]); answers that concern several topics, resources or groups come back
//! with one outcome each, so one refused topic does not hide what happened to the others.
//!
//! ```no_run
//! # async fn demo(client: purekafka::Client) -> purekafka::Result<()> {
//! use purekafka::admin::{ConfigResource, NewTopic};
//!
//! let admin = client.admin();
//! for outcome in admin
//!     .create_topics(&[NewTopic::new("orders", 6)
//!         .replication_factor(3)
//!         .config("retention.ms", "86400000")
//!         .config("cleanup.policy", "compact")])
//!     .await?
//! {
//!     println!("{}: {:?}", outcome.topic, outcome.result);
//! }
//! for lag in admin.group_lag("billing").await? {
//!     println!("{}: {} behind", lag.partition, lag.lag);
//! }
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;

use crate::client::Client;
use crate::consumer::TopicPartition;
use crate::error::{Error, Result};
use crate::wire::admin as wire;

/// Topic and group administration, made by [`Client::admin`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Admin {
    client: Client,
}

impl Client {
    /// Administration of this cluster: topics, configs, groups, offsets and lag.
    pub fn admin(&self) -> Admin {
        Admin {
            client: self.clone(),
        }
    }
}

/// A topic to create.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NewTopic {
    /// The topic name.
    pub name: String,
    /// The number of partitions (at least 1).
    pub partitions: i32,
    /// The replication factor; `-1` (the default) asks for the broker's
    /// `default.replication.factor`.
    pub replication_factor: i16,
    /// Topic configs, e.g. `retention.ms`, `cleanup.policy`.
    pub configs: Vec<(String, String)>,
}

impl NewTopic {
    /// A topic named `name` with `partitions` partitions, the broker's default replication
    /// factor and no configs.
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        NewTopic {
            name: name.into(),
            partitions,
            replication_factor: -1,
            configs: Vec::new(),
        }
    }

    /// Sets the replication factor.
    pub fn replication_factor(mut self, replication_factor: i16) -> Self {
        self.replication_factor = replication_factor;
        self
    }

    /// Adds a topic config (`retention.ms`, `cleanup.policy`, `max.message.bytes`, ...).
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.configs.push((key.into(), value.into()));
        self
    }
}

/// What happened to one topic of a create, delete or create-partitions request.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TopicOutcome {
    /// The topic.
    pub topic: String,
    /// `Ok`, or the broker's error for this topic ([`Error::Broker`] with its code, e.g.
    /// `TopicAlreadyExists`, `InvalidReplicationFactor`, `InvalidConfig`).
    pub result: Result<()>,
}

/// Something that has configs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ConfigResource {
    /// A topic's configs.
    Topic(String),
    /// A broker's configs, by node id.
    Broker(i32),
}

impl ConfigResource {
    fn raw(&self) -> wire::RawResource {
        match self {
            ConfigResource::Topic(t) => (2, t.clone()),
            ConfigResource::Broker(id) => (4, id.to_string()),
        }
    }
}

impl std::fmt::Display for ConfigResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigResource::Topic(t) => write!(f, "topic {t}"),
            ConfigResource::Broker(id) => write!(f, "broker {id}"),
        }
    }
}

/// Where a config value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigSource {
    /// Set on the topic.
    DynamicTopic,
    /// Set dynamically on this broker.
    DynamicBroker,
    /// Set dynamically as the default of every broker.
    DynamicDefaultBroker,
    /// The broker's configuration file.
    StaticBroker,
    /// Kafka's default.
    Default,
    /// Another or unknown source (Kafka's source code).
    Other(i8),
}

impl ConfigSource {
    fn from_code(code: i8) -> Self {
        match code {
            1 => ConfigSource::DynamicTopic,
            2 => ConfigSource::DynamicBroker,
            3 => ConfigSource::DynamicDefaultBroker,
            4 => ConfigSource::StaticBroker,
            5 => ConfigSource::Default,
            other => ConfigSource::Other(other),
        }
    }
}

/// One config entry of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigEntry {
    /// The key.
    pub name: String,
    /// The value (`None` when unset or sensitive).
    pub value: Option<String>,
    /// Whether it cannot be changed.
    pub read_only: bool,
    /// Whether the broker hides the value (passwords).
    pub sensitive: bool,
    /// Where the value comes from.
    pub source: ConfigSource,
}

/// The configs of one resource, or why they could not be read.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ResourceConfigs {
    /// The resource.
    pub resource: ConfigResource,
    /// Its entries by name, or the broker's error for this resource.
    pub result: Result<BTreeMap<String, ConfigEntry>>,
}

/// One change of an incremental config update.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AlterConfigOp {
    /// Sets `key` to `value`.
    Set(String, String),
    /// Removes `key` (back to its default).
    Delete(String),
    /// Appends `value` to a list-valued `key`.
    Append(String, String),
    /// Removes `value` from a list-valued `key`.
    Subtract(String, String),
}

impl AlterConfigOp {
    fn raw(&self) -> (String, i8, Option<String>) {
        match self {
            AlterConfigOp::Set(k, v) => (k.clone(), 0, Some(v.clone())),
            AlterConfigOp::Delete(k) => (k.clone(), 1, None),
            AlterConfigOp::Append(k, v) => (k.clone(), 2, Some(v.clone())),
            AlterConfigOp::Subtract(k, v) => (k.clone(), 3, Some(v.clone())),
        }
    }
}

/// A group as ListGroups names it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupListing {
    /// The group id.
    pub group_id: String,
    /// `consumer` for consumer groups, empty for groups that only commit offsets.
    pub protocol_type: String,
    /// `Stable`, `Empty`, `PreparingRebalance`, ... when the broker says (ListGroups v4+).
    pub state: Option<String>,
}

/// One member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupMember {
    /// The member id the coordinator gave.
    pub member_id: String,
    /// The static member id (`group.instance.id`), if any.
    pub group_instance_id: Option<String>,
    /// The member's `client.id`.
    pub client_id: String,
    /// The member's host as the broker saw it.
    pub client_host: String,
    /// Its partitions (decoded for `consumer` groups; empty otherwise).
    pub assignment: Vec<TopicPartition>,
}

/// A group as DescribeGroups describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupDescription {
    /// The group id.
    pub group_id: String,
    /// `Stable`, `Empty`, `Dead`, `PreparingRebalance`, `CompletingRebalance`.
    pub state: String,
    /// `consumer` for consumer groups.
    pub protocol_type: String,
    /// The chosen assignor (`range`, `roundrobin`, ...).
    pub protocol: String,
    /// The members.
    pub members: Vec<GroupMember>,
}

/// The description of one group, or why it could not be described.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GroupOutcome {
    /// The group id.
    pub group_id: String,
    /// Its description, or the broker's error for this group.
    pub result: Result<GroupDescription>,
}

/// Which offset of a partition [`Admin::list_offsets`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OffsetSpec {
    /// The first offset still in the log.
    Earliest,
    /// The high watermark (the offset the next record gets).
    Latest,
    /// The first offset whose timestamp is at or after this many ms since the epoch.
    Timestamp(i64),
}

/// How far a group is behind on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartitionLag {
    /// The partition.
    pub partition: TopicPartition,
    /// The group's committed offset (the next record it will read).
    pub committed: i64,
    /// The partition's high watermark.
    pub end: i64,
    /// `end - committed`, at least 0.
    pub lag: i64,
}

/// Kafka's retriable codes in an outcome are retried as a whole request.
fn retriable(code: i16) -> bool {
    code != 0 && Error::broker(code, String::new(), None).is_retriable()
}

fn outcome(code: i16, context: String, message: Option<String>) -> Result<()> {
    if code == 0 {
        Ok(())
    } else {
        Err(Error::broker(code, context, message))
    }
}

impl Admin {
    /// Creates topics (partitions, replication factor, configs) on the controller; one
    /// outcome per topic. Does not wait for the topics to appear in metadata.
    pub async fn create_topics(&self, topics: &[NewTopic]) -> Result<Vec<TopicOutcome>> {
        if let Some(t) = topics.iter().find(|t| t.partitions < 1) {
            return Err(Error::config(
                "partitions",
                t.partitions.to_string(),
                format!("topic {} needs at least one partition", t.name),
            ));
        }
        let specs: Vec<wire::NewTopicSpec> = topics
            .iter()
            .map(|t| wire::NewTopicSpec {
                name: t.name.clone(),
                partitions: t.partitions,
                replication_factor: t.replication_factor,
                configs: t.configs.clone(),
            })
            .collect();
        let outcomes = self.client.create_topics_raw(&specs).await?;
        Ok(outcomes
            .into_iter()
            .map(|o| TopicOutcome {
                result: outcome(o.code, format!("create topic {}", o.name), o.message),
                topic: o.name,
            })
            .collect())
    }

    /// Adds partitions to existing topics (CreatePartitions on the controller): each
    /// `(topic, total)` raises that topic's partition count to `total`. Kafka cannot remove
    /// partitions: a `total` not above the current count is the broker's INVALID_PARTITIONS
    /// for that topic. One outcome per topic; does not wait for the partitions to appear in
    /// metadata.
    ///
    /// Keyed records move: from the moment a producer sees the new count, a key goes to
    /// `murmur2(key) % total` (purekafka's, Java's and librdkafka's producers alike), so
    /// records of one key written before and after are in two partitions. Running producers
    /// and group leaders notice within `metadata.max.age.ms`.
    pub async fn create_partitions(&self, topics: &[(&str, i32)]) -> Result<Vec<TopicOutcome>> {
        if let Some((t, total)) = topics.iter().find(|(_, total)| *total < 1) {
            return Err(Error::config(
                "partitions",
                total.to_string(),
                format!("topic {t} needs at least one partition"),
            ));
        }
        let cluster = self.client.wire()?;
        let timeout_ms =
            i32::try_from(self.client.config().request_timeout().as_millis()).unwrap_or(i32::MAX);
        let specs: Vec<(String, i32)> = topics.iter().map(|(t, n)| (t.to_string(), *n)).collect();
        let what = format!(
            "create partitions {}",
            specs
                .iter()
                .map(|(t, n)| format!("{t}={n}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let outcomes = self
            .client
            .retry(&what, || async {
                let outcomes = wire::create_partitions(cluster, &specs, timeout_ms).await?;
                if let Some(o) = outcomes.iter().find(|o| retriable(o.code)) {
                    return Err(Error::broker(o.code, what.clone(), o.message.clone()));
                }
                Ok(outcomes)
            })
            .await?;
        Ok(outcomes
            .into_iter()
            .map(|o| TopicOutcome {
                result: outcome(
                    o.code,
                    format!("create partitions of {}", o.name),
                    o.message,
                ),
                topic: o.name,
            })
            .collect())
    }

    /// Deletes topics; one outcome per topic.
    pub async fn delete_topics(&self, topics: &[&str]) -> Result<Vec<TopicOutcome>> {
        let names: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        let outcomes = self.client.delete_topics_raw(&names).await?;
        Ok(outcomes
            .into_iter()
            .map(|o| TopicOutcome {
                result: outcome(o.code, format!("delete topic {}", o.name), o.message),
                topic: o.name,
            })
            .collect())
    }

    /// Reads every config of each resource; one outcome per resource.
    pub async fn describe_configs(
        &self,
        resources: &[ConfigResource],
    ) -> Result<Vec<ResourceConfigs>> {
        let cluster = self.client.wire()?;
        let mut out = Vec::with_capacity(resources.len());
        for resource in resources {
            let raw = resource.raw();
            let what = format!("describe configs of {resource}");
            let r = self
                .client
                .retry(&what, || async {
                    let r = wire::describe_configs(cluster, &raw).await?;
                    if retriable(r.code) {
                        return Err(Error::broker(r.code, what.clone(), r.message));
                    }
                    Ok(r)
                })
                .await?;
            let result = outcome(r.code, what.clone(), r.message).map(|()| {
                r.entries
                    .into_iter()
                    .map(|e| {
                        (
                            e.name.clone(),
                            ConfigEntry {
                                name: e.name,
                                value: e.value,
                                read_only: e.read_only,
                                sensitive: e.sensitive,
                                source: ConfigSource::from_code(e.source),
                            },
                        )
                    })
                    .collect()
            });
            out.push(ResourceConfigs {
                resource: resource.clone(),
                result,
            });
        }
        Ok(out)
    }

    /// Changes configs of one resource incrementally (IncrementalAlterConfigs: only the keys
    /// named change). The broker's refusal is an [`Error::Broker`] (`InvalidConfig`, ...).
    pub async fn alter_configs(
        &self,
        resource: &ConfigResource,
        changes: &[AlterConfigOp],
    ) -> Result<()> {
        let cluster = self.client.wire()?;
        let raw = resource.raw();
        let ops: Vec<_> = changes.iter().map(AlterConfigOp::raw).collect();
        let what = format!("alter configs of {resource}");
        let r = self
            .client
            .retry(&what, || async {
                let r = wire::incremental_alter_configs(cluster, &raw, &ops).await?;
                if retriable(r.code) {
                    return Err(Error::broker(r.code, what.clone(), r.message));
                }
                Ok(r)
            })
            .await?;
        outcome(r.code, what, r.message)
    }

    /// Lists the groups of the cluster (asking every broker, since each lists the groups it
    /// coordinates), sorted by id.
    pub async fn list_groups(&self) -> Result<Vec<GroupListing>> {
        let cluster = self.client.wire()?;
        let md = self
            .client
            .retry("list groups: metadata", || cluster.refresh(Some(&[])))
            .await?;
        let mut brokers: Vec<i32> = md.brokers.keys().copied().collect();
        brokers.sort_unstable();
        let mut groups: BTreeMap<String, GroupListing> = BTreeMap::new();
        for id in brokers {
            let what = format!("list groups on broker {id}");
            let (code, listed) = self
                .client
                .retry(&what, || async {
                    let conn = cluster.broker(id).await?;
                    let (code, listed) = wire::list_groups(&conn).await?;
                    if retriable(code) {
                        return Err(Error::broker(code, what.clone(), None));
                    }
                    Ok((code, listed))
                })
                .await?;
            outcome(code, what, None)?;
            for (group_id, protocol_type, state) in listed {
                groups.insert(
                    group_id.clone(),
                    GroupListing {
                        group_id,
                        protocol_type,
                        state: (!state.is_empty()).then_some(state),
                    },
                );
            }
        }
        Ok(groups.into_values().collect())
    }

    /// Describes groups (state, assignor, members and their partitions); one outcome per
    /// group. A group nobody uses is described with state `Dead` (or, on newer brokers, as
    /// an error `GroupIdNotFound`).
    pub async fn describe_groups(&self, groups: &[&str]) -> Result<Vec<GroupOutcome>> {
        let cluster = self.client.wire()?;
        let mut out = Vec::with_capacity(groups.len());
        for group in groups {
            let what = format!("describe group {group}");
            let g = self
                .client
                .retry(&what, || async {
                    let g = wire::describe_group(cluster, group).await?;
                    if retriable(g.code) {
                        return Err(Error::broker(g.code, what.clone(), None));
                    }
                    Ok(g)
                })
                .await?;
            let result = outcome(g.code, what, None).and_then(|()| {
                let consumer = g.protocol_type == "consumer";
                let members = g
                    .members
                    .into_iter()
                    .map(|m| {
                        let assignment = if consumer {
                            crate::consumer::membership::decode_assignment(m.assignment)?
                        } else {
                            Vec::new()
                        };
                        Ok(GroupMember {
                            member_id: m.member_id,
                            group_instance_id: m.instance_id,
                            client_id: m.client_id,
                            client_host: m.client_host,
                            assignment,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(GroupDescription {
                    group_id: group.to_string(),
                    state: g.state,
                    protocol_type: g.protocol_type,
                    protocol: g.protocol,
                    members,
                })
            });
            out.push(GroupOutcome {
                group_id: group.to_string(),
                result,
            });
        }
        Ok(out)
    }

    /// The committed offsets of `group`: the next offset the group will read, for every
    /// partition of the cluster's topics on which it committed (OffsetFetch naming every
    /// topic in metadata).
    pub async fn group_offsets(&self, group: &str) -> Result<BTreeMap<TopicPartition, i64>> {
        let cluster = self.client.wire()?;
        let md = self
            .client
            .retry("group offsets: metadata", || cluster.refresh(None))
            .await?;
        let mut topics: Vec<(String, Vec<i32>)> = md
            .topics
            .iter()
            .filter(|(_, t)| t.error == 0 && !t.partitions.is_empty())
            .map(|(name, t)| (name.clone(), t.partitions.iter().map(|p| p.id).collect()))
            .collect();
        topics.sort();
        if topics.is_empty() {
            return Ok(BTreeMap::new());
        }
        let topics = &topics[..];
        let what = format!("offsets of group {group}");
        let rows = self
            .client
            .retry(&what, || async {
                let rows = wire::group_offsets(cluster, group, topics).await?;
                if let Some(r) = rows.iter().find(|r| retriable(r.3)) {
                    return Err(Error::broker(r.3, what.clone(), None));
                }
                Ok(rows)
            })
            .await?;
        let mut out = BTreeMap::new();
        for (topic, partition, offset, code) in rows {
            outcome(
                code,
                format!("offset of {topic}/{partition} in group {group}"),
                None,
            )?;
            if offset >= 0 {
                out.insert(TopicPartition::new(topic.as_str(), partition), offset);
            }
        }
        Ok(out)
    }

    /// The offsets of `partitions` at `spec` (ListOffsets on each partition's leader).
    pub async fn list_offsets(
        &self,
        partitions: &[TopicPartition],
        spec: OffsetSpec,
    ) -> Result<BTreeMap<TopicPartition, i64>> {
        let timestamp = match spec {
            OffsetSpec::Earliest => crate::consumer::offsets::EARLIEST,
            OffsetSpec::Latest => crate::consumer::offsets::LATEST,
            OffsetSpec::Timestamp(ms) => ms,
        };
        Ok(
            crate::consumer::offsets::list_offsets(&self.client, partitions, timestamp)
                .await?
                .into_iter()
                .collect(),
        )
    }

    /// How far `group` is behind on every partition it has committed: high watermark minus
    /// committed offset, sorted by partition. The high watermark whatever the group's
    /// `isolation.level` (the admin does not know it; `kafka-consumer-groups.sh` counts the
    /// same way): records of open transactions count as lag. A consumer's own
    /// [`Consumer::lag`](crate::Consumer::lag) counts against the last stable offset under
    /// `read_committed`.
    pub async fn group_lag(&self, group: &str) -> Result<Vec<PartitionLag>> {
        let committed = self.group_offsets(group).await?;
        let partitions: Vec<TopicPartition> = committed.keys().cloned().collect();
        let ends = self.list_offsets(&partitions, OffsetSpec::Latest).await?;
        Ok(committed
            .into_iter()
            .filter_map(|(partition, committed)| {
                let end = *ends.get(&partition)?;
                Some(PartitionLag {
                    lag: (end - committed).max(0),
                    partition,
                    committed,
                    end,
                })
            })
            .collect())
    }
}
