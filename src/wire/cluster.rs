//! The cluster as purekafka's own wire layer sees it: a metadata cache (brokers, topics,
//! partition leaders) and one shared [`BrokerConnection`] per broker, re-opened when broken.
//!
//! Every method makes one attempt; retrying with backoff is the caller's job (through
//! [`Client::retry`](crate::Client)), so that each retry is logged and counted once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{MetadataRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use tokio::time::Instant;

use super::connection::BrokerConnection;
use crate::config::Config;
use crate::error::{Error, ErrorCode, Result};
use crate::health::HealthState;

/// One partition's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartitionMetadata {
    pub(crate) id: i32,
    pub(crate) leader: i32,
    pub(crate) leader_epoch: i32,
    pub(crate) error: i16,
}

/// One topic's metadata; partitions sorted by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicMetadata {
    pub(crate) error: i16,
    /// Kafka's own topics (`__consumer_offsets`, ...).
    pub(crate) internal: bool,
    pub(crate) partitions: Vec<PartitionMetadata>,
}

/// A snapshot of cluster metadata.
#[derive(Debug, Clone)]
pub(crate) struct Metadata {
    pub(crate) brokers: HashMap<i32, String>,
    pub(crate) topics: HashMap<String, TopicMetadata>,
    /// The controller's node id, when the broker named one (CreateTopics goes there).
    pub(crate) controller: Option<i32>,
    pub(crate) fetched_at: Instant,
}

impl Metadata {
    fn empty() -> Self {
        Metadata {
            brokers: HashMap::new(),
            topics: HashMap::new(),
            controller: None,
            fetched_at: Instant::now(),
        }
    }

    /// The leader of `topic`/`partition`, if known and valid.
    pub(crate) fn leader(&self, topic: &str, partition: i32) -> Option<i32> {
        let t = self.topics.get(topic)?;
        let p = t.partitions.iter().find(|p| p.id == partition)?;
        (p.leader >= 0 && p.error == 0).then_some(p.leader)
    }
}

/// The connection to one broker address, opened on demand.
type ConnectionSlot = tokio::sync::Mutex<Option<Arc<BrokerConnection>>>;

/// Broker connections and metadata for purekafka's own requests.
pub(crate) struct Cluster {
    config: Config,
    metadata: RwLock<Arc<Metadata>>,
    /// One slot per broker address; a slot's async lock is held while connecting to that
    /// broker only, so a slow broker never holds requests to the others.
    connections: Mutex<HashMap<String, Arc<ConnectionSlot>>>,
    /// Brokers a metadata request recently failed or was abandoned on, with when; the next
    /// refresh asks the others first, the least recently suspected before the rest.
    suspects: Mutex<HashMap<String, Instant>>,
    /// One metadata refresh at a time; concurrent callers wait and reuse its result.
    refreshing: tokio::sync::Mutex<()>,
    /// Every connect of every connection the client opens reports here.
    health: Arc<HealthState>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("bootstrap", &self.config.brokers)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// A cluster view for `config`; nothing connects until the first request. Connects
    /// report to `health`.
    pub(crate) fn new(config: Config, health: Arc<HealthState>) -> Arc<Cluster> {
        Arc::new(Cluster {
            config,
            metadata: RwLock::new(Arc::new(Metadata::empty())),
            connections: Mutex::new(HashMap::new()),
            suspects: Mutex::new(HashMap::new()),
            refreshing: tokio::sync::Mutex::new(()),
            health,
        })
    }

    /// The configuration.
    #[allow(dead_code)] // for the consumer and coordinator paths
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// The health state every connection reports to.
    pub(crate) fn health(&self) -> &Arc<HealthState> {
        &self.health
    }

    /// Opens a new connection to `addr` that the caller owns (the fetchers and the group
    /// coordinator keep their own), reporting the outcome to health. One attempt.
    pub(crate) async fn open(&self, addr: &str) -> Result<Arc<BrokerConnection>> {
        match BrokerConnection::connect(addr, &self.config).await {
            Ok(c) => {
                self.health.connection_ok(addr);
                Ok(Arc::new(c))
            }
            Err(e) => {
                self.health.connection_failed(addr, &e);
                Err(e)
            }
        }
    }

    /// The shared connections (open or broken), for the health probe.
    pub(crate) async fn shared_connections(&self) -> Vec<Arc<BrokerConnection>> {
        let slots: Vec<Arc<ConnectionSlot>> = self
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut open = Vec::with_capacity(slots.len());
        for slot in slots {
            // A slot being connected is skipped rather than waited for.
            if let Ok(guard) = slot.try_lock() {
                open.extend(guard.as_ref().cloned());
            }
        }
        open
    }

    /// Whether `addr` is a broker of the cluster: in metadata once metadata names brokers
    /// (a dead bootstrap alias is then no longer watched), the bootstrap list before that.
    pub(crate) fn knows(&self, addr: &str) -> bool {
        let md = self.metadata();
        if md.brokers.is_empty() {
            self.config.brokers.iter().any(|b| b == addr)
        } else {
            md.brokers.values().any(|b| b == addr)
        }
    }

    /// The connection to the controller (topic administration), refreshing metadata when
    /// the controller is not known.
    pub(crate) async fn controller(&self) -> Result<Arc<BrokerConnection>> {
        let id = match self.metadata().controller {
            Some(id) => id,
            None => self.refresh(Some(&[])).await?.controller.ok_or_else(|| {
                // NOT_CONTROLLER: retriable, the next refresh may name one.
                Error::broker(
                    ErrorCode::NotController.code(),
                    "metadata names no controller",
                    None,
                )
            })?,
        };
        if !self.metadata().brokers.contains_key(&id) {
            // Some brokers (librdkafka's mock cluster) name a controller that is not one of
            // the brokers; any broker then gets the request (and says if it cannot serve it).
            return self.any_broker().await;
        }
        self.broker(id).await
    }

    /// Forgets the cached controller (after NOT_CONTROLLER), so the next call looks again.
    pub(crate) fn forget_controller(&self) {
        let mut md = self.metadata.write().unwrap_or_else(|p| p.into_inner());
        if md.controller.is_some() {
            let mut next = Metadata::clone(&md);
            next.controller = None;
            *md = Arc::new(next);
        }
    }

    /// The cached metadata (possibly empty or stale).
    pub(crate) fn metadata(&self) -> Arc<Metadata> {
        Arc::clone(&self.metadata.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The shared connection to `addr`, opened (or re-opened when broken) on demand. Only
    /// callers for the same address wait for one another's connect.
    pub(crate) async fn connection_to(&self, addr: &str) -> Result<Arc<BrokerConnection>> {
        let slot = {
            let mut conns = self.connections.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(conns.entry(addr.to_string()).or_default())
        };
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.is_closed() {
                return Ok(Arc::clone(c));
            }
        }
        *slot = None;
        let conn = self.open(addr).await?;
        *slot = Some(Arc::clone(&conn));
        Ok(conn)
    }

    /// The connection to broker `node_id`, refreshing metadata once if the id is unknown.
    pub(crate) async fn broker(&self, node_id: i32) -> Result<Arc<BrokerConnection>> {
        let addr = match self.metadata().brokers.get(&node_id) {
            Some(a) => a.clone(),
            None => self
                .refresh(None)
                .await?
                .brokers
                .get(&node_id)
                .cloned()
                // A broker that is down drops out of metadata: it cannot be reached now, which
                // is retriable (the producer retries until delivery.timeout.ms, as Java's
                // waits for a leader), not the broker's BROKER_NOT_AVAILABLE verdict.
                .ok_or_else(|| {
                    Error::io(
                        format!("node {node_id}"),
                        std::io::Error::new(
                            std::io::ErrorKind::NotConnected,
                            format!("broker {node_id} is not in metadata (down?)"),
                        ),
                    )
                })?,
        };
        self.connection_to(&addr).await
    }

    /// Known brokers then the bootstrap list; brokers under suspicion last, the least
    /// recently suspected first.
    fn candidates(&self) -> Vec<String> {
        let mut candidates: Vec<String> = self.metadata().brokers.values().cloned().collect();
        candidates.sort();
        for b in &self.config.brokers {
            if !candidates.contains(b) {
                candidates.push(b.clone());
            }
        }
        let suspects = self.suspects.lock().unwrap_or_else(|p| p.into_inner());
        candidates.sort_by_key(|c| suspects.get(c).copied());
        candidates
    }

    /// A connection to any reachable broker: known brokers first, then the bootstrap list.
    pub(crate) async fn any_broker(&self) -> Result<Arc<BrokerConnection>> {
        // An open connection serves as well as a new one, and opens no socket.
        if let Some(open) = self
            .shared_connections()
            .await
            .into_iter()
            .filter(|c| !c.is_closed())
            .min_by(|a, b| a.addr().cmp(b.addr()))
        {
            return Ok(open);
        }
        let mut last = None;
        for addr in &self.candidates() {
            match self.connection_to(addr).await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::config("bootstrap.servers", "", "no broker given")))
    }

    /// One Metadata request to `addr`.
    async fn metadata_from(
        &self,
        addr: &str,
        request: &MetadataRequest,
    ) -> Result<kafka_protocol::messages::MetadataResponse> {
        let conn = self.connection_to(addr).await?;
        let version = conn.version_for::<MetadataRequest>(Some(12))?;
        conn.send_version(request, version).await
    }

    /// Fetches metadata for `topics` (`None`: all topics) and merges it into the cache.
    pub(crate) async fn refresh(&self, topics: Option<&[&str]>) -> Result<Arc<Metadata>> {
        let asked_at = Instant::now();
        let _one_at_a_time = self.refreshing.lock().await;
        let current = self.metadata();
        if current.fetched_at > asked_at {
            // Somebody refreshed while we waited; use theirs if it covers our topics.
            let covered =
                topics.is_none_or(|ts| ts.iter().all(|t| current.topics.contains_key(*t)));
            if covered {
                return Ok(current);
            }
        }
        let request = MetadataRequest::default()
            .with_topics(topics.map(|ts| {
                ts.iter()
                    .map(|t| {
                        MetadataRequestTopic::default()
                            .with_name(Some(TopicName(StrBytes::from_string(t.to_string()))))
                    })
                    .collect()
            }))
            .with_allow_auto_topic_creation(false);
        // A broker is suspected from the moment it is asked until it answers: a silent one
        // stays suspected even when the caller's timeout cuts this attempt short, so the
        // next refresh asks another broker first.
        let mut last = None;
        let mut answer = None;
        for addr in self.candidates() {
            self.suspects
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(addr.clone(), Instant::now());
            match self.metadata_from(&addr, &request).await {
                Ok(r) => {
                    self.suspects
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&addr);
                    answer = Some(r);
                    break;
                }
                Err(e) => {
                    tracing::debug!(broker = %addr, error = %e, "metadata request failed; trying the next broker");
                    last = Some(e);
                }
            }
        }
        let Some(response) = answer else {
            return Err(
                last.unwrap_or_else(|| Error::config("bootstrap.servers", "", "no broker given"))
            );
        };
        let mut next = Metadata::clone(&current);
        next.fetched_at = Instant::now();
        next.brokers = response
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
            .collect();
        next.controller = (response.controller_id.0 >= 0).then_some(response.controller_id.0);
        if topics.is_none() {
            next.topics.clear();
        }
        for t in response.topics {
            let Some(name) = t.name else { continue };
            let mut partitions: Vec<PartitionMetadata> = t
                .partitions
                .iter()
                .map(|p| PartitionMetadata {
                    id: p.partition_index,
                    leader: p.leader_id.0,
                    leader_epoch: p.leader_epoch,
                    error: p.error_code,
                })
                .collect();
            partitions.sort_by_key(|p| p.id);
            next.topics.insert(
                name.0.to_string(),
                TopicMetadata {
                    error: t.error_code,
                    internal: t.is_internal,
                    partitions,
                },
            );
        }
        let next = Arc::new(next);
        *self.metadata.write().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&next);
        Ok(next)
    }

    /// Metadata of `topic`, refreshed when missing or older than `metadata.max.age.ms`.
    /// A topic the broker does not know is [`Error::UnknownTopic`].
    #[allow(dead_code)] // for the producer (issue 3)
    pub(crate) async fn topic(&self, topic: &str) -> Result<TopicMetadata> {
        let cached = self.metadata();
        let fresh = cached.fetched_at.elapsed() < self.config.metadata_max_age;
        if let (true, Some(t)) = (fresh, cached.topics.get(topic)) {
            if t.error == 0 && !t.partitions.is_empty() {
                return Ok(t.clone());
            }
        }
        let md = self.refresh(Some(&[topic])).await?;
        match md.topics.get(topic) {
            Some(t) if t.error == 0 && !t.partitions.is_empty() => Ok(t.clone()),
            Some(t) if t.error == 0 || t.error == ErrorCode::UnknownTopicOrPartition.code() => {
                Err(Error::UnknownTopic(topic.to_string()))
            }
            Some(t) => Err(Error::broker(
                t.error,
                format!("metadata of topic {topic}"),
                None,
            )),
            None => Err(Error::UnknownTopic(topic.to_string())),
        }
    }

    /// The connection to the leader of `topic`/`partition`, and the leader's id.
    #[allow(dead_code)] // for the fetch path (the producer reads leaders from `metadata()`)
    pub(crate) async fn leader(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<(i32, Arc<BrokerConnection>)> {
        let leader = match self.metadata().leader(topic, partition) {
            Some(l) => l,
            None => {
                self.refresh(Some(&[topic])).await?;
                self.metadata().leader(topic, partition).ok_or_else(|| {
                    Error::broker(
                        5,
                        format!("{topic}/{partition}"),
                        Some("no leader in metadata".into()),
                    )
                })?
            }
        };
        Ok((leader, self.broker(leader).await?))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use purekafka_testkit::{Backend, TestCluster};

    use super::*;

    /// A broker that accepts connections and never answers (a frozen process).
    async fn silent_broker() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        addr
    }

    #[tokio::test]
    async fn metadata_refresh_moves_past_a_silent_broker() {
        let broker = TestCluster::start(Backend::MockCluster).expect("start the mock cluster");
        let silent = silent_broker().await;
        let mut brokers = vec![silent.clone()];
        brokers.extend(broker.bootstrap_list());
        let config = Config::builder()
            .brokers(brokers)
            .set("request.timeout.ms", "60000")
            .build()
            .unwrap();
        let health = Arc::new(crate::health::HealthState::new(
            crate::health::Health::Connected,
            None,
        ));
        let cluster = Cluster::new(config, health);
        // The caller's own timeout cuts the first attempt long before the connection's
        // deadline (as `retry_with_timeout` does); the silent broker was asked first.
        let first = tokio::time::timeout(Duration::from_millis(500), cluster.refresh(None)).await;
        assert!(first.is_err(), "the silent broker held the first attempt");
        let md = tokio::time::timeout(Duration::from_secs(30), cluster.refresh(None))
            .await
            .expect("the next attempt asks another broker first")
            .expect("metadata from the live broker");
        assert!(!md.brokers.is_empty());
        // A connect that hangs on the silent broker does not hold a connection to another.
        let slow = {
            let cluster = Arc::clone(&cluster);
            let silent = silent.clone();
            tokio::spawn(async move { cluster.connection_to(&silent).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let live = md.brokers.values().next().unwrap().clone();
        tokio::time::timeout(Duration::from_secs(30), cluster.connection_to(&live))
            .await
            .expect("not held behind the silent broker's connect")
            .expect("connected");
        slow.abort();
    }
}
