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
use crate::wire::Cluster;

/// A topic as the cluster describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// The topic name.
    pub name: String,
    /// Its partition ids, in ascending order.
    pub partitions: Vec<i32>,
}

/// A connection to a Kafka cluster: bootstrap, metadata, topic administration, health.
///
/// Cheap to clone (it is an `Arc`); producers and consumers made from it share its
/// connections. Connection attempts and retried requests follow the configuration's
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
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    /// `None` when Kafka is disabled by configuration.
    cluster: Option<rskafka::client::Client>,
    /// purekafka's own connections (producer batches, groups, offsets).
    wire: Arc<Cluster>,
    health: HealthState,
    partitions: Mutex<HashMap<(String, i32), Arc<PartitionClient>>>,
    probe: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
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
    /// or `reconnect.max.elapsed.ms` has passed. Each failed attempt is logged (attempt,
    /// delay, error); the final error ([`Error::Connect`]) names the brokers tried, the number
    /// of attempts and the last cause.
    ///
    /// With `enabled = false` (`KAFKA_ENABLED=false`) nothing connects: the client reports
    /// [`Health::Disabled`] and producers made from it log and drop their records.
    pub async fn connect(config: Config) -> Result<Client> {
        let cluster = if config.enabled {
            Some(bootstrap(&config).await?)
        } else {
            tracing::warn!("kafka is disabled (KAFKA_ENABLED=false): nothing will be sent");
            None
        };
        let initial = if cluster.is_some() {
            Health::Connected
        } else {
            Health::Disabled
        };
        let inner = Arc::new(Inner {
            health: HealthState::new(initial, config.reconnect.max_elapsed),
            wire: Cluster::new(config.clone()),
            config,
            cluster,
            partitions: Mutex::new(HashMap::new()),
            probe: Mutex::new(None),
        });
        if let (Some(every), Some(_)) = (inner.config.health_check_interval, &inner.cluster) {
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
    /// It follows the outcome of every request, and of a background metadata probe every
    /// `health.check.interval.ms` (default 10 s) so that an idle client notices an outage too.
    pub fn health(&self) -> Health {
        self.inner.health.get()
    }

    /// Lists the topics of the cluster (internal topics left out), retrying connection errors
    /// within the reconnect budget.
    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        let cluster = self.cluster()?;
        self.retry("list topics", || async move {
            let topics = cluster.list_topics().await?;
            Ok(topics
                .into_iter()
                .map(|t| {
                    let mut partitions: Vec<i32> = t.partitions.into_iter().collect();
                    partitions.sort_unstable();
                    TopicInfo {
                        name: t.name,
                        partitions,
                    }
                })
                .collect())
        })
        .await
    }

    /// The number of partitions of `topic`, or [`Error::UnknownTopic`].
    pub async fn partition_count(&self, topic: &str) -> Result<usize> {
        self.list_topics()
            .await?
            .into_iter()
            .find(|t| t.name == topic)
            .map(|t| t.partitions.len())
            .ok_or_else(|| Error::UnknownTopic(topic.to_string()))
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
        let cluster = self.cluster()?;
        let timeout_ms = self.inner.config.request_timeout.as_millis() as i32;
        let controller = cluster.controller_client()?;
        self.retry(&format!("create topic {name}"), || {
            let controller = &controller;
            async move {
                controller
                    .create_topic(name, partitions, replication_factor, timeout_ms)
                    .await
                    .map_err(Error::from)
            }
        })
        .await
        .map_err(|e| match e.kafka_code() {
            Some(code) => Error::Broker {
                code,
                context: format!("create topic {name}"),
                message: Some(e.to_string()),
            },
            None => e,
        })?;
        self.await_topic(name, partitions as usize).await
    }

    /// Deletes a topic.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let cluster = self.cluster()?;
        let timeout_ms = self.inner.config.request_timeout.as_millis() as i32;
        let controller = cluster.controller_client()?;
        self.retry(&format!("delete topic {name}"), || {
            let controller = &controller;
            async move {
                controller
                    .delete_topic(name, timeout_ms)
                    .await
                    .map_err(Error::from)
            }
        })
        .await
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

    /// The underlying rskafka client, for operations purekafka does not wrap.
    ///
    /// Its requests bypass purekafka's retry loop and health tracking.
    pub fn rskafka(&self) -> Result<&rskafka::client::Client> {
        self.cluster()
    }

    /// An rskafka client for one partition (cached per topic and partition), for raw produce
    /// and fetch. Its requests bypass purekafka's batching, retries and health tracking.
    pub async fn partition_client(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Arc<PartitionClient>> {
        let key = (topic.to_string(), partition);
        if let Some(pc) = self.lock_partitions().get(&key) {
            return Ok(Arc::clone(pc));
        }
        let cluster = self.cluster()?;
        let pc = self
            .retry(&format!("connect to {topic}/{partition}"), || async move {
                Ok(cluster
                    .partition_client(topic, partition, UnknownTopicHandling::Error)
                    .await?)
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
        self.cluster()?;
        Ok(&self.inner.wire)
    }

    fn cluster(&self) -> Result<&rskafka::client::Client> {
        self.inner.cluster.as_ref().ok_or(Error::Disabled)
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
            &self.inner.health,
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

/// The first connection: builds the rskafka client under the reconnect policy.
async fn bootstrap(config: &Config) -> Result<rskafka::client::Client> {
    let started = tokio::time::Instant::now();
    let attempts = std::sync::atomic::AtomicU32::new(0);
    let result = reconnect::retry(
        &config.reconnect,
        config.retry_hook(),
        &(),
        "connect",
        |attempt| {
            attempts.store(attempt, std::sync::atomic::Ordering::Relaxed);
            let builder = rskafka_builder(config);
            let timeout = config.request_timeout;
            async move {
                match tokio::time::timeout(timeout, builder.build()).await {
                    Ok(r) => r.map_err(Error::from),
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

/// Probes the cluster every `every` so that health follows an outage on an idle client.
async fn probe_loop(inner: Weak<Inner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        let Some(cluster) = &inner.cluster else {
            return;
        };
        let timeout = inner.config.request_timeout;
        let outcome = match tokio::time::timeout(timeout, cluster.list_topics()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Error::from(e)),
            Err(_) => Err(Error::Timeout {
                operation: "health probe".into(),
                after: timeout,
            }),
        };
        match outcome {
            Ok(()) => inner.health.recovered(),
            Err(e) => {
                tracing::debug!(error = %e, "health probe failed");
                inner.health.failed(&e);
            }
        }
    }
}
