//! [`Client`]: the connection to a Kafka cluster, shared by producers and consumers.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rskafka::client::partition::{PartitionClient, UnknownTopicHandling};
use rskafka::client::ClientBuilder;

use crate::config::{Config, SaslMechanism};
use crate::error::{Error, Result};
use crate::health::{Health, HealthState};
use crate::reconnect;
use crate::wire::admin::{self, NewTopicSpec, TopicOutcome};
use crate::wire::Cluster;

/// A topic as the cluster describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopicInfo {
    /// The topic name.
    pub name: String,
    /// Its partition ids, in ascending order.
    pub partitions: Vec<i32>,
}

/// A connection to a Kafka cluster: bootstrap, metadata, topic administration, health.
///
/// Cheap to clone (it is an `Arc`); producers and consumers made from it share its
/// connections. Every connection it opens is purekafka's own (`src/wire`); an rskafka client
/// exists only once [`rskafka`](Self::rskafka) is called. Connection attempts and retried requests follow the configuration's
/// [`ReconnectPolicy`](crate::ReconnectPolicy); a lost connection is re-established the same
/// way, transparently to callers, and [`health`](Self::health) says how that is going.
///
/// ```no_run
/// # async fn demo() -> purekafka::Result<()> {
/// use purekafka::{Client, Config};
///
/// let client = Client::connect(Config::from_env()?).await?;
/// for topic in client.list_topics().await? {
///     println!("{} has {} partitions", topic.name, topic.partitions.len());
/// }
/// println!("health: {:?}", client.health());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientResources>,
}

struct ClientResources {
    config: Config,
    /// Whether Kafka is enabled by configuration.
    enabled: bool,
    /// purekafka's own connections: bootstrap, metadata, admin, producer, fetchers, groups.
    wire: Arc<Cluster>,
    health: Arc<HealthState>,
    /// The raw escape hatch, built on the first call of [`Client::rskafka`].
    rskafka: tokio::sync::OnceCell<rskafka::client::Client>,
    partitions: Mutex<HashMap<(String, i32), Arc<PartitionClient>>>,
    probe: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for ClientResources {
    fn drop(&mut self) {
        if let Some(probe) = self.probe.get_mut().ok().and_then(Option::take) {
            probe.abort();
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("brokers", &self.inner.config.brokers)
            .field("client_id", &self.inner.config.client_id)
            .field("health", &self.inner.health.get())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the cluster, retrying with the configured backoff until a broker answers
    /// ApiVersions and Metadata or `reconnect.max.elapsed.ms` has passed. Each failed attempt
    /// is logged (attempt, delay, error); the final error ([`Error::Connect`]) names the
    /// brokers tried, the number of attempts and the last cause.
    ///
    /// With `enabled = false` (`KAFKA_ENABLED=false`) nothing connects: the client reports
    /// [`Health::Disabled`] and producers made from it log and drop their records.
    pub async fn connect(config: Config) -> Result<Client> {
        let enabled = config.enabled;
        if !enabled {
            tracing::warn!("kafka is disabled (KAFKA_ENABLED=false): nothing will be sent");
        }
        let initial = if enabled {
            Health::Connected
        } else {
            Health::Disabled
        };
        let health = Arc::new(HealthState::new(initial, config.reconnect.max_elapsed));
        let wire = Cluster::new(config.clone(), Arc::clone(&health));
        if enabled {
            bootstrap(&config, &wire).await?;
        }
        let inner = Arc::new(ClientResources {
            health,
            wire,
            enabled,
            config,
            rskafka: tokio::sync::OnceCell::new(),
            partitions: Mutex::new(HashMap::new()),
            probe: Mutex::new(None),
        });
        if let (Some(every), true) = (inner.config.health_check_interval, enabled) {
            let handle = tokio::spawn(probe_loop(Arc::downgrade(&inner), every));
            *inner.probe.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        }
        Ok(Client { inner })
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The connection's health, for a service's health endpoint: `Connected`,
    /// `Reconnecting { attempt, since, last_error }`, `Down`, or `Disabled`.
    ///
    /// It follows every connection the client opens (the producer's and metadata's shared
    /// connections, the fetchers' and the group coordinator's own): a broker whose connect
    /// fails makes it `Reconnecting` until a connection to that broker opens again. A
    /// background probe every `health.check.interval.ms` (default 10 s) sends a small request
    /// on each open shared connection and reconnects to failing brokers, so that an idle
    /// client notices an outage and its end too.
    pub fn health(&self) -> Health {
        self.inner.health.get()
    }

    /// Lists the topics of the cluster (internal topics left out), retrying connection errors
    /// within the reconnect budget.
    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        let cluster = self.wire()?;
        let md = self.retry("list topics", || cluster.refresh(None)).await?;
        let mut topics: Vec<TopicInfo> = md
            .topics
            .iter()
            .filter(|(_, t)| !t.internal && t.error == 0)
            .map(|(name, t)| TopicInfo {
                name: name.clone(),
                partitions: t.partitions.iter().map(|p| p.id).collect(),
            })
            .collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(topics)
    }

    /// The number of partitions of `topic`, or [`Error::UnknownTopic`].
    pub async fn partition_count(&self, topic: &str) -> Result<usize> {
        let cluster = self.wire()?;
        let topics = [topic];
        let topics = &topics[..];
        let refreshed = self
            .retry(&format!("metadata of {topic}"), || {
                cluster.refresh(Some(topics))
            })
            .await?;
        match refreshed.topics.get(topic) {
            Some(t) if t.error == 0 && !t.partitions.is_empty() => Ok(t.partitions.len()),
            Some(t) if t.error != 0 && t.error != 3 => Err(Error::broker(
                t.error,
                format!("metadata of topic {topic}"),
                None,
            )),
            _ => Err(Error::UnknownTopic(topic.to_string())),
        }
    }

    /// Creates a topic and waits until the cluster's metadata shows it.
    ///
    /// A topic that already exists is an [`Error::Broker`] with code `TopicAlreadyExists`.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
    ) -> Result<()> {
        if partitions < 1 {
            return Err(Error::config(
                "partitions",
                partitions.to_string(),
                "a topic needs at least one partition",
            ));
        }
        let spec = NewTopicSpec {
            name: name.to_string(),
            partitions,
            replication_factor,
            configs: Vec::new(),
        };
        let outcome = self
            .create_topics_raw(std::slice::from_ref(&spec))
            .await?
            .into_iter()
            .find(|o| o.name == name);
        match outcome {
            Some(o) if o.code != 0 => {
                return Err(Error::broker(
                    o.code,
                    format!("create topic {name}"),
                    o.message,
                ))
            }
            Some(_) => {}
            None => {
                return Err(Error::Protocol(format!(
                    "CreateTopics response does not mention {name}"
                )))
            }
        }
        self.await_topic(name, partitions as usize).await
    }

    /// Deletes a topic.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let outcome = self
            .delete_topics_raw(&[name.to_string()])
            .await?
            .into_iter()
            .find(|o| o.name == name);
        match outcome {
            Some(o) if o.code != 0 => Err(Error::broker(
                o.code,
                format!("delete topic {name}"),
                o.message,
            )),
            Some(_) => Ok(()),
            None => Err(Error::Protocol(format!(
                "DeleteTopics response does not mention {name}"
            ))),
        }
    }

    /// CreateTopics under the retry policy; a per-topic retriable code (NOT_CONTROLLER, ...)
    /// retries the whole request.
    pub(crate) async fn create_topics_raw(
        &self,
        topics: &[NewTopicSpec],
    ) -> Result<Vec<TopicOutcome>> {
        let cluster = self.wire()?;
        let timeout_ms = self.timeout_ms();
        let what = format!(
            "create topics {}",
            topics
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        let what = what.as_str();
        self.retry(what, || async move {
            let outcomes = admin::create_topics(cluster, topics, timeout_ms).await?;
            retry_on_retriable_code(outcomes, what)
        })
        .await
    }

    /// DeleteTopics under the retry policy, as [`create_topics_raw`](Self::create_topics_raw).
    pub(crate) async fn delete_topics_raw(&self, topics: &[String]) -> Result<Vec<TopicOutcome>> {
        let cluster = self.wire()?;
        let timeout_ms = self.timeout_ms();
        let what = format!("delete topics {}", topics.join(","));
        let what = what.as_str();
        self.retry(what, || async move {
            let outcomes = admin::delete_topics(cluster, topics, timeout_ms).await?;
            retry_on_retriable_code(outcomes, what)
        })
        .await
    }

    fn timeout_ms(&self) -> i32 {
        i32::try_from(self.inner.config.request_timeout.as_millis()).unwrap_or(i32::MAX)
    }

    /// Waits until metadata lists `name` with `partitions` partitions.
    async fn await_topic(&self, name: &str, partitions: usize) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.inner.config.request_timeout;
        loop {
            let found = self
                .list_topics()
                .await?
                .into_iter()
                .any(|t| t.name == name && t.partitions.len() >= partitions);
            if found {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout {
                    operation: format!("waiting for new topic {name} in metadata"),
                    after: self.inner.config.request_timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The raw escape hatch: an [`rskafka`] client on the same cluster, for operations
    /// purekafka does not wrap.
    ///
    /// It is built on the first call, from this client's [`Config`] (brokers, client id,
    /// SASL, request timeout; TLS only with the opt-in `rskafka-tls` feature, since rskafka's
    /// TLS pulls *ring*: without it a TLS configuration is an [`Error::Config`] here, never a
    /// plaintext connection; OAUTHBEARER is not passed on), and reused after that; no rskafka
    /// connection exists before. Its requests bypass purekafka's retry loop and health
    /// tracking, and its types are rskafka's: `purekafka::rskafka` names that crate's version.
    pub async fn rskafka(&self) -> Result<&rskafka::client::Client> {
        if !self.inner.enabled {
            return Err(Error::Disabled);
        }
        let config = &self.inner.config;
        if config.security_protocol.uses_tls() && !cfg!(feature = "rskafka-tls") {
            return Err(Error::config(
                "security.protocol",
                format!("{:?}", config.security_protocol).to_lowercase(),
                "the raw rskafka client has TLS only with purekafka's `rskafka-tls` feature \
                 (which needs a C compiler); purekafka's own API uses TLS without it",
            ));
        }
        self.inner
            .rskafka
            .get_or_try_init(|| async {
                self.retry("connect rskafka client", || {
                    let builder = rskafka_builder(config);
                    async move { builder.build().await.map_err(from_rskafka) }
                })
                .await
            })
            .await
    }

    /// An rskafka client for one partition (cached per topic and partition), for raw produce
    /// and fetch through the [`rskafka`](Self::rskafka) escape hatch. Its requests bypass
    /// purekafka's batching, retries and health tracking.
    pub async fn partition_client(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Arc<PartitionClient>> {
        let key = (topic.to_string(), partition);
        if let Some(pc) = self.lock_partitions().get(&key) {
            return Ok(Arc::clone(pc));
        }
        let rs = self.rskafka().await?;
        let pc = self
            .retry(&format!("connect to {topic}/{partition}"), || async move {
                rs.partition_client(topic, partition, UnknownTopicHandling::Error)
                    .await
                    .map_err(from_rskafka)
            })
            .await?;
        let pc = Arc::new(pc);
        Ok(Arc::clone(self.lock_partitions().entry(key).or_insert(pc)))
    }

    fn lock_partitions(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(String, i32), Arc<PartitionClient>>> {
        self.inner
            .partitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// purekafka's own wire layer (metadata with leaders, one connection per broker).
    pub(crate) fn wire(&self) -> Result<&Arc<Cluster>> {
        if !self.inner.enabled {
            return Err(Error::Disabled);
        }
        Ok(&self.inner.wire)
    }

    /// Runs `op` under the client's retry policy: retriable errors are retried with backoff
    /// and logged, every attempt is bounded by `request.timeout.ms`, and the outcome feeds
    /// [`health`](Self::health).
    pub(crate) async fn retry<T, F, Fut>(&self, operation: &str, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.retry_with_timeout(operation, self.inner.config.request_timeout, op)
            .await
    }

    /// [`retry`](Self::retry) with a longer bound per attempt, for requests the broker may
    /// hold on purpose (JoinGroup waits for the whole group, up to the rebalance timeout).
    pub(crate) async fn retry_with_timeout<T, F, Fut>(
        &self,
        operation: &str,
        timeout: Duration,
        mut op: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let config = &self.inner.config;
        reconnect::retry(
            &config.reconnect,
            config.retry_hook(),
            &*self.inner.health,
            operation,
            |_| {
                let attempt = op();
                async move {
                    match tokio::time::timeout(timeout, attempt).await {
                        Ok(result) => result,
                        Err(_) => Err(Error::Timeout {
                            operation: operation.to_string(),
                            after: timeout,
                        }),
                    }
                }
            },
        )
        .await
    }
}

/// An rskafka error as purekafka's: a broker's code keeps its [`ErrorCode`](crate::ErrorCode),
/// connection trouble is retriable [`Error::Io`], anything else [`Error::Protocol`]. No
/// rskafka type reaches purekafka's own error.
pub(crate) fn from_rskafka(e: rskafka::client::error::Error) -> Error {
    use rskafka::client::error::{Error as Rs, ProtocolError};
    match e {
        Rs::ServerError {
            protocol_error,
            error_message,
            ..
        } => {
            let code = match protocol_error {
                ProtocolError::Unknown(code) => code,
                // rskafka's code table is private; `ProtocolError::new` maps codes to it.
                known => (-1i16..=300)
                    .find(|c| ProtocolError::new(*c) == Some(known))
                    .unwrap_or(-1),
            };
            Error::broker(code, "rskafka request", error_message)
        }
        e @ (Rs::Connection(_) | Rs::Request(_) | Rs::RetryFailed(_) | Rs::Timeout) => {
            Error::io("rskafka", std::io::Error::other(e.to_string()))
        }
        other => Error::Protocol(format!("rskafka: {other}")),
    }
}

/// Turns the first retriable per-topic code of an admin answer into an error, so that the
/// retry loop tries the request again (the controller moved, the cluster is loading, ...).
fn retry_on_retriable_code(outcomes: Vec<TopicOutcome>, what: &str) -> Result<Vec<TopicOutcome>> {
    if let Some(o) = outcomes
        .iter()
        .find(|o| o.code != 0 && Error::broker(o.code, String::new(), None).is_retriable())
    {
        return Err(Error::broker(
            o.code,
            format!("{what}: topic {}", o.name),
            o.message.clone(),
        ));
    }
    Ok(outcomes)
}

/// The first connection: ApiVersions and Metadata (brokers and controller, no topics) through
/// the wire layer, under the reconnect policy.
async fn bootstrap(config: &Config, cluster: &Cluster) -> Result<()> {
    let started = tokio::time::Instant::now();
    let attempts = std::sync::atomic::AtomicU32::new(0);
    let result = reconnect::retry(
        &config.reconnect,
        config.retry_hook(),
        &(),
        "connect",
        |attempt| {
            attempts.store(attempt, std::sync::atomic::Ordering::Relaxed);
            let timeout = config.request_timeout;
            async move {
                match tokio::time::timeout(timeout, cluster.refresh(Some(&[]))).await {
                    Ok(r) => r.map(drop),
                    Err(_) => Err(Error::Timeout {
                        operation: "connect".into(),
                        after: timeout,
                    }),
                }
            }
        },
    )
    .await;
    result.map_err(|e| {
        let last_error = match e {
            Error::RetriesExhausted { last_error, .. } => last_error,
            other => Box::new(other),
        };
        Error::Connect {
            brokers: config.brokers.clone(),
            attempts: attempts.load(std::sync::atomic::Ordering::Relaxed),
            elapsed: started.elapsed(),
            last_error,
        }
    })
}

/// An rskafka builder for `config`.
///
/// rskafka retries internally with its own backoff; purekafka's retry loop is the one that
/// logs, counts and gives up, so rskafka is told to make a single attempt per call.
fn rskafka_builder(config: &Config) -> ClientBuilder {
    let single_attempt = rskafka::BackoffConfig {
        init_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(1),
        base: 2.0,
        deadline: Some(Duration::from_millis(1)),
    };
    let max_frame = (config.consumer.fetch_max_bytes + (1 << 20)).max(100 << 20);
    let mut builder = ClientBuilder::new(config.brokers.clone())
        .client_id(config.client_id.as_str())
        .backoff_config(single_attempt)
        .max_message_size(max_frame);
    if let Some(sasl) = &config.sasl {
        use rskafka::client::{Credentials, SaslConfig};
        let creds = Credentials::new(sasl.username.clone(), sasl.password.expose().to_string());
        // OAUTHBEARER is not passed to the raw rskafka client: purekafka's own connections
        // run it (src/wire/sasl.rs).
        let rs = match sasl.mechanism {
            SaslMechanism::Plain => Some(SaslConfig::Plain(creds)),
            SaslMechanism::ScramSha256 => Some(SaslConfig::ScramSha256(creds)),
            SaslMechanism::ScramSha512 => Some(SaslConfig::ScramSha512(creds)),
            SaslMechanism::OAuthBearer => None,
        };
        if let Some(rs) = rs {
            builder = builder.sasl_config(rs);
        }
    }
    #[cfg(feature = "rskafka-tls")]
    if let Some(tls) = &config.tls_client {
        builder = builder.tls_config(Arc::clone(tls));
    }
    builder
}

/// Probes the cluster every `every` so that health follows an outage on an idle client: a
/// small request (Metadata without topics) on every open shared connection, a new connection
/// to every broker whose last connect failed, and a metadata request when nothing is open.
async fn probe_loop(inner: Weak<ClientResources>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        probe_once(&inner).await;
    }
}

async fn probe_once(inner: &ClientResources) {
    let cluster = &inner.wire;
    let health = cluster.health();
    let timeout = inner.config.request_timeout;
    let bounded = |what: String| Error::Timeout {
        operation: what,
        after: timeout,
    };
    let shared = cluster.shared_connections().await;
    for conn in &shared {
        if conn.is_closed() {
            // Reopens it; reports to health itself (connection_ok / connection_failed).
            let addr = conn.addr();
            if tokio::time::timeout(timeout, cluster.connection_to(addr))
                .await
                .is_err()
            {
                health.connection_failed(addr, &bounded(format!("connect to {addr}")));
            }
            continue;
        }
        let request = kafka_protocol::messages::MetadataRequest::default()
            .with_topics(Some(Vec::new()))
            .with_allow_auto_topic_creation(false);
        let outcome = match conn.version_for::<kafka_protocol::messages::MetadataRequest>(Some(12))
        {
            Ok(v) => match tokio::time::timeout(timeout, conn.send_version(&request, v)).await {
                Ok(r) => r.map(drop),
                Err(_) => Err(bounded(format!("health probe of {}", conn.addr()))),
            },
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => health.connection_ok(conn.addr()),
            Err(e) => {
                tracing::debug!(broker = conn.addr(), error = %e, "health probe failed");
                health.connection_failed(conn.addr(), &e);
            }
        }
    }
    for addr in health.failing_brokers() {
        if !cluster.knows(&addr) {
            health.forget(&addr);
            continue;
        }
        if shared.iter().any(|c| c.addr() == addr) {
            continue; // probed above
        }
        // Reports to health itself (connection_ok / connection_failed).
        if tokio::time::timeout(timeout, cluster.connection_to(&addr))
            .await
            .is_err()
        {
            health.connection_failed(&addr, &bounded(format!("connect to {addr}")));
        }
    }
    if shared.is_empty() && health.failing_brokers().is_empty() {
        match tokio::time::timeout(timeout, cluster.refresh(Some(&[]))).await {
            Ok(Ok(_)) => health.recovered(),
            Ok(Err(e)) => health.failed(&e),
            Err(_) => health.failed(&bounded("health probe".into())),
        }
    }
}
