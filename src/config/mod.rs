//! Client configuration: a builder with documented defaults, librdkafka-style keys, and the
//! environment.
//!
//! Three ways in, one validation:
//! - typed builder methods ([`ConfigBuilder::brokers`], [`ConfigBuilder::client_id`], ...);
//! - librdkafka / Java style keys through [`ConfigBuilder::set`], so a configuration copied
//!   from an rdkafka, Karafka or Java service works (the key table is in [`keys`]);
//! - [`Config::from_env`] for the `KAFKA_*` variables services are deployed with (see [`env`](mod@env)).
//!
//! Every mistake is reported by [`ConfigBuilder::build`] as an [`Error::Config`] that names
//! the key and the value. Passwords are kept in [`Secret`] and never printed.
//!
//! ```
//! use std::time::Duration;
//! use purekafka::Config;
//!
//! let config = Config::builder()
//!     .brokers(["127.0.0.1:9092"])
//!     .client_id("orders-service")
//!     .set("linger.ms", "10")
//!     .set("acks", "all")
//!     .build()?;
//! assert_eq!(config.producer().linger, Duration::from_millis(10));
//!
//! let err = Config::builder().brokers(["127.0.0.1:9092"]).set("linger.ms", "-5").build();
//! assert!(err.unwrap_err().to_string().contains("linger.ms"));
//! # Ok::<(), purekafka::Error>(())
//! ```

pub mod env;
pub mod keys;

use std::fmt;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::reconnect::{ReconnectPolicy, RetryEvent, RetryHook};

/// A string that is never shown: `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret value itself, for the code that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How the connection to the brokers is secured (`security.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecurityProtocol {
    /// Plain TCP. The default: what a local or in-cluster broker speaks.
    #[default]
    Plaintext,
    /// TLS on every connection (the `tls` feature, on by default).
    Ssl,
    /// SASL authentication over plain TCP.
    SaslPlaintext,
    /// SASL authentication over TLS (the `tls` feature, on by default).
    SaslSsl,
}

impl SecurityProtocol {
    /// Whether this protocol runs over TLS.
    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
    /// Whether this protocol authenticates with SASL.
    pub fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// A SASL mechanism (`sasl.mechanism`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// `PLAIN`: user name and password, sent as they are (use TLS).
    Plain,
    /// `SCRAM-SHA-256`.
    ScramSha256,
    /// `SCRAM-SHA-512`.
    ScramSha512,
    /// `OAUTHBEARER` (KIP-255): a token from [`ConfigBuilder::oauthbearer_token_provider`], or
    /// for development an unsecured JWT built from `sasl.oauthbearer.config`.
    OAuthBearer,
}

impl SaslMechanism {
    /// The mechanism's name on the wire (`PLAIN`, `SCRAM-SHA-256`, ...).
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::OAuthBearer => "OAUTHBEARER",
        }
    }
}

/// An OAUTHBEARER token, as a token provider returns it (built with
/// [`new`](Self::new)). `Debug` never shows the value.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OAuthBearerToken {
    /// The token (a JWT, usually) sent as `auth=Bearer <value>`.
    pub value: Secret,
    /// The principal the token names (for errors and logs only).
    pub principal: String,
    /// SASL extensions sent with the token (KIP-342), e.g. Confluent Cloud's
    /// `logicalCluster` and `identityPoolId`.
    pub extensions: Vec<(String, String)>,
}

impl OAuthBearerToken {
    /// A token (`value`, usually a JWT) for `principal`, without SASL extensions.
    pub fn new(value: impl Into<String>, principal: impl Into<String>) -> Self {
        OAuthBearerToken {
            value: Secret::new(value),
            principal: principal.into(),
            extensions: Vec::new(),
        }
    }

    /// Adds a SASL extension (KIP-342), e.g. `logicalCluster`.
    pub fn with_extension(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.extensions.push((key.into(), value.into()));
        self
    }
}

/// The future an OAUTHBEARER token provider returns.
pub type OAuthBearerTokenFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = std::result::Result<OAuthBearerToken, String>> + Send>,
>;

/// Called for a token on every OAUTHBEARER login (each new connection and each
/// re-authentication); it should cache and refresh tokens itself.
pub type OAuthBearerTokenProvider =
    std::sync::Arc<dyn Fn() -> OAuthBearerTokenFuture + Send + Sync>;

/// SASL credentials. `Debug` never shows the password.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SaslCredentials {
    /// The mechanism.
    pub mechanism: SaslMechanism,
    /// The user name.
    pub username: String,
    /// The password.
    pub password: Secret,
}

/// TLS settings, by librdkafka's `ssl.*` keys. `Debug` never shows a private key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsSettings {
    /// PEM file of the CA certificate(s) to trust (`ssl.ca.location`, `KAFKA_SSL_CA_LOCATION`);
    /// with neither this nor `ca_pem`, the Mozilla root store is used.
    pub ca_location: Option<String>,
    /// CA certificate(s) as PEM text (`ssl.ca.pem`, `KAFKA_SSL_CA_PEM`).
    pub ca_pem: Option<String>,
    /// PEM file of the client certificate chain for mutual TLS (`ssl.certificate.location`).
    pub certificate_location: Option<String>,
    /// The client certificate chain as PEM text (`ssl.certificate.pem`).
    pub certificate_pem: Option<String>,
    /// PEM file of the client's unencrypted private key (`ssl.key.location`).
    pub key_location: Option<String>,
    /// The client's unencrypted private key as PEM text (`ssl.key.pem`; never printed).
    pub key_pem: Option<Secret>,
    /// Verify the broker's host name or IP address against its certificate
    /// (`ssl.endpoint.identification.algorithm`: `https`, the default, or `none`).
    pub verify_hostname: bool,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            ca_location: None,
            ca_pem: None,
            certificate_location: None,
            certificate_pem: None,
            key_location: None,
            key_pem: None,
            verify_hostname: true,
        }
    }
}

/// The acknowledgement a produce request waits for (`acks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acks {
    /// Fire and forget (`0`): nothing is confirmed, so nothing can be retried.
    None,
    /// The leader wrote it (`1`).
    Leader,
    /// All in-sync replicas wrote it (`all`, `-1`). The default, as in Java 3.0+ and
    /// librdkafka: an acknowledged record survives the loss of the leader.
    #[default]
    All,
}

impl Acks {
    /// The value sent in a produce request.
    pub fn as_i16(self) -> i16 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }
}

/// Compression of produced record batches (`compression.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// No compression. The default: the cheapest on CPU, as librdkafka.
    #[default]
    None,
    /// gzip (pure Rust).
    Gzip,
    /// snappy (pure Rust).
    Snappy,
    /// lz4, LZ4 frame format (the `lz4` feature, on by default; pure Rust, `lz4_flex`).
    #[cfg(feature = "lz4")]
    Lz4,
    /// zstd (the `zstd` feature, on by default; pure Rust, `ruzstd`). Every level is written
    /// at ruzstd's only encoder level, "fastest" (about zstd level 1).
    #[cfg(feature = "zstd")]
    Zstd,
}

/// Where a consumer starts when its group has no committed offset (`auto.offset.reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffsetReset {
    /// The oldest record still on the broker.
    Earliest,
    /// Only records written from now on. The default, as librdkafka and Java.
    #[default]
    Latest,
    /// Fail with an error instead of guessing.
    Error,
}

/// Which records a consumer reads (`isolation.level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IsolationLevel {
    /// Only records of committed transactions (and records written outside transactions).
    /// Fetches stop at the last stable offset (the first offset of the oldest transaction
    /// still open), records of aborted transactions are dropped. The default, as in the Java
    /// client and librdkafka: a consumer should never act on data whose producer took it back.
    #[default]
    ReadCommitted,
    /// Every data record up to the high watermark, including those of open and aborted
    /// transactions.
    ReadUncommitted,
}

/// Producer options. Set them with [`ConfigBuilder::set`] or read them with
/// [`Config::producer`]; each field names its key and default.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ProducerConfig {
    /// How long a partition's batch may wait for more records (`linger.ms`, default 5 ms, as
    /// librdkafka): enough to fill batches under load, unnoticeable for a single record.
    pub linger: Duration,
    /// Largest batch per partition in bytes (`batch.size`, default 1 MiB).
    pub batch_max_bytes: usize,
    /// Bound on bytes buffered across all partitions before `send` waits
    /// (`queue.buffering.max.kbytes`, default 64 MiB).
    pub buffer_max_bytes: usize,
    /// How long a record may take from `send` to acknowledgement, retries included
    /// (`delivery.timeout.ms`, alias `message.timeout.ms`; default 120 s, as Java).
    pub delivery_timeout: Duration,
    /// Acknowledgement required (`acks`, alias `request.required.acks`; default all).
    pub acks: Acks,
    /// Batch compression (`compression.type`, alias `compression.codec`; default none).
    pub compression: Compression,
    /// Stamp `event_id`, `timestamp`, `service` and `version` headers on every record
    /// (`default.headers`, default false: headers cost bytes and nobody asked for them).
    pub default_headers: bool,
    /// The `version` header value when `default_headers` is on (`service.version`, default the
    /// empty string).
    pub service_version: String,
    /// The idempotent producer (`enable.idempotence`, default true, as Java 3.0+): a producer
    /// id and per-partition sequence numbers let the broker drop a resent batch it already
    /// wrote and refuse a gap, so retries neither duplicate nor reorder records. Needs
    /// `acks=all` and `max.in.flight.requests.per.connection` ≤ 5; when one of them is set
    /// otherwise and this key is not set, idempotence is turned off (as Java does); when it is
    /// set to true as well, the configuration is refused.
    pub enable_idempotence: bool,
    /// Batches in flight per partition (`max.in.flight.requests.per.connection`, alias
    /// `max.in.flight`; default 5). With idempotence off, more than one may reorder records
    /// of a partition when a batch is retried (as in Java and librdkafka).
    pub max_in_flight: usize,
    /// The transactional producer's id (`transactional.id`, default none: no transactions).
    /// It names the producer across restarts: the broker hands a restarted producer with the
    /// same id the same producer id with a higher epoch, aborts its unfinished transaction and
    /// fences the old instance. Implies idempotence; `enable.idempotence=false` with it is a
    /// configuration error.
    pub transactional_id: Option<String>,
    /// How long the transaction coordinator lets a transaction stay open before it aborts it
    /// (`transaction.timeout.ms`, default 60 s, as Java and librdkafka): long enough for a
    /// batch of processing, short enough that a crashed producer's transaction does not hold
    /// back read_committed consumers for long. Brokers refuse values above their
    /// `transaction.max.timeout.ms` (15 min by default).
    pub transaction_timeout: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            linger: Duration::from_millis(5),
            batch_max_bytes: 1 << 20,
            buffer_max_bytes: 64 << 20,
            delivery_timeout: Duration::from_secs(120),
            acks: Acks::All,
            compression: Compression::None,
            default_headers: false,
            service_version: String::new(),
            enable_idempotence: true,
            max_in_flight: 5,
            transactional_id: None,
            transaction_timeout: Duration::from_secs(60),
        }
    }
}

/// Consumer options. Set them with [`ConfigBuilder::set`] or read them with
/// [`Config::consumer`]; each field names its key and default.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ConsumerConfig {
    /// The consumer group (`group.id`, no default: a group consumer needs one).
    pub group_id: Option<String>,
    /// Static membership id (`group.instance.id`, default none: dynamic membership).
    pub group_instance_id: Option<String>,
    /// The coordinator drops a member silent for this long (`session.timeout.ms`, default
    /// 45 s, as Java 3.0+).
    pub session_timeout: Duration,
    /// Heartbeat period (`heartbeat.interval.ms`, default 3 s): a third of a short session
    /// timeout, as Kafka recommends.
    pub heartbeat_interval: Duration,
    /// Longest time between two polls before the member leaves the group
    /// (`max.poll.interval.ms`, default 5 min, as Java and librdkafka).
    pub max_poll_interval: Duration,
    /// Start position without a committed offset (`auto.offset.reset`, default latest).
    pub auto_offset_reset: OffsetReset,
    /// Commit polled offsets in the background (`enable.auto.commit`, default **false**:
    /// commit after processing, so nothing unprocessed is marked done).
    pub enable_auto_commit: bool,
    /// Count polled records as processed at the next poll (`enable.auto.offset.store`,
    /// default true, as librdkafka). With false, only what the application stores with
    /// [`Consumer::store_offset`](crate::Consumer::store_offset) /
    /// [`store_offsets`](crate::Consumer::store_offsets) is committed by auto-commit, by a
    /// rebalance and by close.
    pub enable_auto_offset_store: bool,
    /// Period of auto-commit (`auto.commit.interval.ms`, default 5 s).
    pub auto_commit_interval: Duration,
    /// Assignment strategies in order of preference (`partition.assignment.strategy`,
    /// default `range,roundrobin`, as librdkafka).
    pub assignment_strategies: Vec<String>,
    /// Smallest response the broker should wait for (`fetch.min.bytes`, default 1).
    pub fetch_min_bytes: usize,
    /// Largest fetch response (`fetch.max.bytes`, default 50 MiB).
    pub fetch_max_bytes: usize,
    /// Largest amount fetched per partition per request (`max.partition.fetch.bytes`,
    /// default 1 MiB).
    pub max_partition_fetch_bytes: usize,
    /// How long the broker may hold a fetch to gather `fetch.min.bytes`
    /// (`fetch.wait.max.ms`, alias `fetch.max.wait.ms`; default 500 ms).
    pub fetch_max_wait: Duration,
    /// Bound on prefetched, not yet polled bytes (`queued.max.messages.kbytes`, default
    /// 64 MiB): the fetched record data and the decoded records' structs (`ConsumedRecord`,
    /// about 130 bytes each), so the bound holds for small records too.
    pub prefetch_max_bytes: usize,
    /// Verify each fetched batch's CRC32C (`check.crcs`, default true as in the Java
    /// client); a mismatch is an error for that partition only.
    pub check_crcs: bool,
    /// Which records `poll` returns (`isolation.level`, default `read_committed`, as in the
    /// Java client and librdkafka): with `read_committed`, records of aborted transactions are
    /// never returned and fetching stops at the last stable offset; with `read_uncommitted`,
    /// every data record is. Control records (transaction markers) are never returned.
    pub isolation_level: IsolationLevel,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            group_id: None,
            group_instance_id: None,
            session_timeout: Duration::from_secs(45),
            heartbeat_interval: Duration::from_secs(3),
            max_poll_interval: Duration::from_secs(300),
            auto_offset_reset: OffsetReset::Latest,
            enable_auto_commit: false,
            enable_auto_offset_store: true,
            auto_commit_interval: Duration::from_secs(5),
            assignment_strategies: vec!["range".into(), "roundrobin".into()],
            fetch_min_bytes: 1,
            fetch_max_bytes: 50 << 20,
            max_partition_fetch_bytes: 1 << 20,
            fetch_max_wait: Duration::from_millis(500),
            prefetch_max_bytes: 64 << 20,
            check_crcs: true,
            isolation_level: IsolationLevel::ReadCommitted,
        }
    }
}

/// A validated client configuration. Build one with [`Config::builder`] or
/// [`Config::from_env`].
#[derive(Clone)]
pub struct Config {
    pub(crate) brokers: Vec<String>,
    pub(crate) client_id: String,
    pub(crate) enabled: bool,
    pub(crate) security_protocol: SecurityProtocol,
    pub(crate) sasl: Option<SaslCredentials>,
    pub(crate) tls: TlsSettings,
    pub(crate) oauthbearer_provider: Option<OAuthBearerTokenProvider>,
    /// librdkafka's `sasl.oauthbearer.config` (unsecured JWT settings).
    pub(crate) oauthbearer_config: Option<String>,
    pub(crate) oauthbearer_unsecure_jwt: bool,
    /// The rustls configuration built from `tls` by `build()` when the protocol uses TLS.
    #[cfg(feature = "tls-core")]
    pub(crate) tls_client: Option<std::sync::Arc<rustls::ClientConfig>>,
    pub(crate) reconnect: ReconnectPolicy,
    pub(crate) request_timeout: Duration,
    pub(crate) metadata_max_age: Duration,
    pub(crate) health_check_interval: Option<Duration>,
    pub(crate) message_max_bytes: usize,
    /// Largest response frame accepted from a broker (`receive.message.max.bytes`).
    pub(crate) receive_message_max_bytes: usize,
    pub(crate) producer: ProducerConfig,
    pub(crate) consumer: ConsumerConfig,
    pub(crate) on_retry: Option<RetryHook>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("brokers", &self.brokers)
            .field("client_id", &self.client_id)
            .field("enabled", &self.enabled)
            .field("security_protocol", &self.security_protocol)
            .field("sasl", &self.sasl)
            .field("tls", &self.tls)
            .field(
                "oauthbearer_provider",
                &self.oauthbearer_provider.as_ref().map(|_| "<provider>"),
            )
            .field("reconnect", &self.reconnect)
            .field("request_timeout", &self.request_timeout)
            .field("metadata_max_age", &self.metadata_max_age)
            .field("health_check_interval", &self.health_check_interval)
            .field("message_max_bytes", &self.message_max_bytes)
            .field("receive_message_max_bytes", &self.receive_message_max_bytes)
            .field("producer", &self.producer)
            .field("consumer", &self.consumer)
            .field("on_retry", &self.on_retry.as_ref().map(|_| "<hook>"))
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            brokers: Vec::new(),
            client_id: "purekafka".into(),
            enabled: true,
            security_protocol: SecurityProtocol::Plaintext,
            sasl: None,
            tls: TlsSettings::default(),
            oauthbearer_provider: None,
            oauthbearer_config: None,
            oauthbearer_unsecure_jwt: false,
            #[cfg(feature = "tls-core")]
            tls_client: None,
            reconnect: ReconnectPolicy::default(),
            request_timeout: Duration::from_secs(30),
            metadata_max_age: Duration::from_secs(300),
            health_check_interval: Some(Duration::from_secs(10)),
            message_max_bytes: 1 << 20,
            receive_message_max_bytes: 100_000_000,
            producer: ProducerConfig::default(),
            consumer: ConsumerConfig::default(),
            on_retry: None,
        }
    }
}

impl Config {
    /// A builder with every option at its default.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// Reads the `KAFKA_*` environment variables (see [`env`](mod@env)) and validates them.
    ///
    /// ```no_run
    /// let config = purekafka::Config::from_env()?;
    /// # Ok::<(), purekafka::Error>(())
    /// ```
    pub fn from_env() -> Result<Config> {
        ConfigBuilder::from_env().build()
    }

    /// Bootstrap brokers as `host:port` (`bootstrap.servers`, `KAFKA_BROKERS`; no default).
    pub fn brokers(&self) -> &[String] {
        &self.brokers
    }
    /// The client id sent to brokers (`client.id`, `KAFKA_CLIENT_ID`; default `purekafka`).
    pub fn client_id(&self) -> &str {
        &self.client_id
    }
    /// Whether Kafka is enabled (`enabled`, `KAFKA_ENABLED`; default true). When false,
    /// producers log and drop sends instead of connecting, so an application runs without a
    /// broker in development.
    pub fn enabled(&self) -> bool {
        self.enabled
    }
    /// `security.protocol` (default plaintext).
    pub fn security_protocol(&self) -> SecurityProtocol {
        self.security_protocol
    }
    /// SASL credentials, when `security.protocol` uses SASL.
    pub fn sasl(&self) -> Option<&SaslCredentials> {
        self.sasl.as_ref()
    }
    /// TLS settings (`ssl.*`), used when `security.protocol` is `ssl` or `sasl_ssl`.
    pub fn tls(&self) -> &TlsSettings {
        &self.tls
    }
    /// The backoff policy for connecting, reconnecting and retrying.
    pub fn reconnect(&self) -> &ReconnectPolicy {
        &self.reconnect
    }
    /// Time limit of one request to a broker (`request.timeout.ms`, default 30 s).
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }
    /// How long cached metadata is trusted (`metadata.max.age.ms`, alias
    /// `topic.metadata.refresh.interval.ms`, default 5 min).
    ///
    /// A running producer looks up the metadata of the topics it sends to this often, and
    /// a consumer group's leader that of the subscribed topics, so that partitions added to a
    /// topic are used: keyed records go to `murmur2(key) % new count` (where the Java client
    /// and librdkafka put them) once the producer has seen the new count, and the group
    /// rebalances to consume them. A record sent to an explicit partition beyond the known
    /// count makes the producer look at once.
    ///
    /// Why 5 minutes: it is Java's default (librdkafka refreshes every 5 minutes too); a
    /// refresh is one Metadata request per producer or group leader, and adding partitions
    /// is rare and done by an operator. Shorter means new partitions are used sooner, at one
    /// small request per interval. Longer means a key's records keep going to their old
    /// partition longer after a topic grew.
    pub fn metadata_max_age(&self) -> Duration {
        self.metadata_max_age
    }
    /// Period of the background connectivity probe behind [`Client::health`](crate::Client::health)
    /// (`health.check.interval.ms`, default 10 s; 0 disables the probe).
    pub fn health_check_interval(&self) -> Option<Duration> {
        self.health_check_interval
    }
    /// Largest record the producer accepts, encoded (`message.max.bytes`, alias
    /// `max.request.size`; default 1 MiB, as the Java client).
    pub fn message_max_bytes(&self) -> usize {
        self.message_max_bytes
    }
    /// Producer options.
    pub fn producer(&self) -> &ProducerConfig {
        &self.producer
    }
    /// Consumer options.
    pub fn consumer(&self) -> &ConsumerConfig {
        &self.consumer
    }
    /// The retry hook, if one was set.
    pub(crate) fn retry_hook(&self) -> Option<&RetryHook> {
        self.on_retry.as_ref()
    }
}

/// Builds a [`Config`]; every error is reported by [`ConfigBuilder::build`].
#[derive(Default, Debug)]
pub struct ConfigBuilder {
    config: Config,
    /// The first error met while setting keys; reported by `build`.
    error: Option<Error>,
    /// Whether `enable.idempotence` was set explicitly (see `ProducerConfig::enable_idempotence`).
    idempotence_set: bool,
}

impl ConfigBuilder {
    /// Sets the bootstrap brokers (`host:port` each).
    pub fn brokers<I, S>(mut self, brokers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.brokers = brokers.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the client id sent to brokers and used in the `service` header.
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.config.client_id = client_id.into();
        self
    }

    /// Sets the consumer group id.
    pub fn group_id(mut self, group_id: impl Into<String>) -> Self {
        self.config.consumer.group_id = Some(group_id.into());
        self
    }

    /// Turns Kafka on or off (off: producers log and drop, nothing connects).
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.config.enabled = enabled;
        self
    }

    /// Authenticates with SASL (sets `security.protocol` to `sasl_plaintext` unless TLS was
    /// already chosen).
    pub fn sasl(
        mut self,
        mechanism: SaslMechanism,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.config.sasl = Some(SaslCredentials {
            mechanism,
            username: username.into(),
            password: Secret::new(password),
        });
        self.config.security_protocol = if self.config.security_protocol.uses_tls() {
            SecurityProtocol::SaslSsl
        } else {
            SecurityProtocol::SaslPlaintext
        };
        self
    }

    /// Authenticates with SASL OAUTHBEARER, asking `provider` for a token on every login (sets
    /// `sasl.mechanism` and, unless TLS was chosen, `security.protocol` = `sasl_plaintext`).
    ///
    /// ```
    /// use purekafka::config::OAuthBearerToken;
    ///
    /// let config = purekafka::Config::builder()
    ///     .brokers(["127.0.0.1:9092"])
    ///     .oauthbearer_token_provider(|| async {
    ///         // The value is fetched from the identity provider.
    ///         Ok(OAuthBearerToken::new("eyJ...", "svc-orders"))
    ///     })
    ///     .build()?;
    /// assert_eq!(config.sasl().unwrap().mechanism.name(), "OAUTHBEARER");
    /// # Ok::<(), purekafka::Error>(())
    /// ```
    pub fn oauthbearer_token_provider<F, Fut>(mut self, provider: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = std::result::Result<OAuthBearerToken, String>>
            + Send
            + 'static,
    {
        self.config.oauthbearer_provider = Some(std::sync::Arc::new(move || {
            Box::pin(provider()) as OAuthBearerTokenFuture
        }));
        let sasl = self.config.sasl.get_or_insert_with(|| SaslCredentials {
            mechanism: SaslMechanism::OAuthBearer,
            username: String::new(),
            password: Secret::new(""),
        });
        sasl.mechanism = SaslMechanism::OAuthBearer;
        self.config.security_protocol = if self.config.security_protocol.uses_tls() {
            SecurityProtocol::SaslSsl
        } else {
            SecurityProtocol::SaslPlaintext
        };
        self
    }

    /// Replaces the reconnect / retry policy.
    pub fn reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.config.reconnect = policy;
        self
    }

    /// Calls `hook` on every retry (connection attempts and retried requests), with the
    /// operation, attempt, delay and error. Useful for metrics; keep it cheap.
    pub fn on_retry(mut self, hook: impl Fn(&RetryEvent<'_>) + Send + Sync + 'static) -> Self {
        self.config.on_retry = Some(std::sync::Arc::new(hook));
        self
    }

    /// Sets one option by its librdkafka / Java name, e.g. `set("linger.ms", "10")`.
    ///
    /// The keys, their aliases and defaults are listed in [`keys`]. An unknown key or a value
    /// that does not parse is reported by [`build`](Self::build), naming the key and value.
    pub fn set(mut self, key: &str, value: impl AsRef<str>) -> Self {
        if self.error.is_none() {
            if let Err(e) = keys::apply(&mut self, key, value.as_ref()) {
                self.error = Some(e);
            }
        }
        self
    }

    /// Sets several options, as [`set`](Self::set) does for each.
    pub fn set_all<I, K, V>(mut self, pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        for (k, v) in pairs {
            self = self.set(k.as_ref(), v);
        }
        self
    }

    /// Validates everything set so far and returns the configuration, or the first error.
    pub fn build(self) -> Result<Config> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let idempotence_set = self.idempotence_set;
        let mut c = self.config;
        resolve_idempotence(&mut c.producer, idempotence_set)?;
        if c.enabled {
            if c.brokers.is_empty() {
                return Err(Error::config(
                    "bootstrap.servers",
                    "",
                    "no broker given: set KAFKA_BROKERS or bootstrap.servers to host:port[,host:port...]",
                ));
            }
            for b in &c.brokers {
                keys::validate_broker(b)?;
            }
        }
        if c.client_id.trim().is_empty() {
            return Err(Error::config(
                "client.id",
                &c.client_id,
                "must not be empty",
            ));
        }
        #[allow(unused_mut)]
        let mut c = c;
        if c.security_protocol.uses_tls() {
            #[cfg(feature = "tls-core")]
            {
                c.tls_client = Some(crate::tls::client_config(&c.tls)?);
            }
            #[cfg(not(feature = "tls-core"))]
            return Err(Error::config(
                "security.protocol",
                format!("{:?}", c.security_protocol).to_lowercase(),
                "this build has no TLS: enable purekafka's `tls` feature (on by default)",
            ));
        }
        match (&c.sasl, c.security_protocol.uses_sasl()) {
            (None, true) => {
                return Err(Error::config(
                    "sasl.username",
                    "",
                    "security.protocol uses SASL but no sasl.username / sasl.password is set",
                ))
            }
            (Some(s), _)
                if s.mechanism == SaslMechanism::OAuthBearer
                    && c.oauthbearer_provider.is_none() =>
            {
                if !c.oauthbearer_unsecure_jwt {
                    return Err(Error::config(
                        "sasl.mechanism",
                        "OAUTHBEARER",
                        "needs a token provider (ConfigBuilder::oauthbearer_token_provider), or \
                         enable.sasl.oauthbearer.unsecure.jwt=true with sasl.oauthbearer.config \
                         for development",
                    ));
                }
                crate::wire::unsecured_jwt(c.oauthbearer_config.as_deref().unwrap_or(""))?;
            }
            (Some(s), _) if s.username.is_empty() && s.mechanism != SaslMechanism::OAuthBearer => {
                return Err(Error::config("sasl.username", "", "SASL needs a user name"))
            }
            _ => {}
        }
        if c.message_max_bytes == 0 {
            return Err(Error::config("message.max.bytes", "0", "must be positive"));
        }
        let p = &c.producer;
        if p.batch_max_bytes == 0 {
            return Err(Error::config("batch.size", "0", "must be positive"));
        }
        if p.buffer_max_bytes < p.batch_max_bytes.min(c.message_max_bytes) {
            return Err(Error::config(
                "queue.buffering.max.kbytes",
                (p.buffer_max_bytes / 1024).to_string(),
                "must hold at least one batch (batch.size) or one record (message.max.bytes)",
            ));
        }
        let g = &c.consumer;
        if g.heartbeat_interval >= g.session_timeout {
            return Err(Error::config(
                "heartbeat.interval.ms",
                g.heartbeat_interval.as_millis().to_string(),
                format!(
                    "must be lower than session.timeout.ms ({})",
                    g.session_timeout.as_millis()
                ),
            ));
        }
        if g.assignment_strategies.is_empty() {
            return Err(Error::config(
                "partition.assignment.strategy",
                "",
                "name at least one of range, roundrobin",
            ));
        }
        if c.reconnect.multiplier < 1.0 || !c.reconnect.multiplier.is_finite() {
            return Err(Error::config(
                "reconnect.backoff.multiplier",
                c.reconnect.multiplier.to_string(),
                "must be a number >= 1",
            ));
        }
        if !(0.0..=1.0).contains(&c.reconnect.jitter) {
            return Err(Error::config(
                "reconnect.backoff.jitter",
                c.reconnect.jitter.to_string(),
                "must be between 0 and 1",
            ));
        }
        if c.reconnect.max_delay < c.reconnect.initial_delay {
            return Err(Error::config(
                "reconnect.backoff.max.ms",
                c.reconnect.max_delay.as_millis().to_string(),
                "must not be lower than reconnect.backoff.ms",
            ));
        }
        Ok(c)
    }
}

/// Idempotence needs `acks=all` and at most 5 batches in flight per partition: refuses a
/// contradiction with an explicit `enable.idempotence=true`, turns idempotence off (with a log
/// line) when it was only the default.
fn resolve_idempotence(p: &mut ProducerConfig, explicit: bool) -> Result<()> {
    if p.max_in_flight == 0 {
        return Err(Error::config(
            "max.in.flight.requests.per.connection",
            "0",
            "must be positive",
        ));
    }
    if let Some(id) = &p.transactional_id {
        if !p.enable_idempotence && explicit {
            return Err(Error::config(
                "enable.idempotence",
                "false",
                format!("transactional.id = {id:?} needs the idempotent producer"),
            ));
        }
        // transactional.id implies idempotence: its conflicts are refused below.
        p.enable_idempotence = true;
    }
    let explicit = explicit || p.transactional_id.is_some();
    if !p.enable_idempotence {
        return Ok(());
    }
    let conflict = if p.acks != Acks::All {
        Some((
            "acks",
            format!("{:?}", p.acks),
            "the idempotent producer needs acks=all",
        ))
    } else if p.max_in_flight > 5 {
        Some((
            "max.in.flight.requests.per.connection",
            p.max_in_flight.to_string(),
            "the idempotent producer allows at most 5 batches in flight per partition",
        ))
    } else {
        None
    };
    match conflict {
        Some((key, value, reason)) if explicit => Err(Error::config(
            key,
            value,
            format!("{reason} (enable.idempotence=true or transactional.id is set)"),
        )),
        Some((key, value, reason)) => {
            tracing::info!(key, value, "{reason}: enable.idempotence turned off");
            p.enable_idempotence = false;
            Ok(())
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ConfigBuilder {
        Config::builder().brokers(["127.0.0.1:9092"])
    }

    #[test]
    fn defaults_are_documented_values() {
        let c = base().build().unwrap();
        assert_eq!(c.producer().linger, Duration::from_millis(5));
        assert_eq!(c.producer().batch_max_bytes, 1 << 20);
        assert_eq!(c.producer().buffer_max_bytes, 64 << 20);
        assert_eq!(c.producer().delivery_timeout, Duration::from_secs(120));
        assert_eq!(c.message_max_bytes(), 1 << 20);
        assert!(!c.consumer().enable_auto_commit);
        assert_eq!(c.client_id(), "purekafka");
    }

    #[test]
    fn empty_broker_list_is_an_error() {
        let e = Config::builder().build().unwrap_err();
        assert!(
            matches!(&e, Error::Config { key, .. } if key == "bootstrap.servers"),
            "{e}"
        );
    }

    #[test]
    fn disabled_needs_no_broker() {
        let c = Config::builder().enabled(false).build().unwrap();
        assert!(!c.enabled());
    }

    #[test]
    fn malformed_broker_is_an_error_naming_it() {
        for bad in [
            "localhost",
            "host:",
            ":9092",
            "host:99999",
            "host:abc",
            "a b:1",
        ] {
            let e = Config::builder().brokers([bad]).build().unwrap_err();
            match &e {
                Error::Config { key, value, .. } => {
                    assert_eq!(key, "bootstrap.servers");
                    assert_eq!(value, bad);
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        base()
            .brokers(["[::1]:9092", "kafka-0.kafka:9092"])
            .build()
            .unwrap();
    }

    #[test]
    fn heartbeat_must_be_below_session_timeout() {
        let e = base()
            .set("session.timeout.ms", "3000")
            .set("heartbeat.interval.ms", "3000")
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("heartbeat.interval.ms"), "{e}");
    }

    #[test]
    fn tls_without_feature_is_explained() {
        if cfg!(feature = "tls-core") {
            return;
        }
        let e = base().set("security.protocol", "ssl").build().unwrap_err();
        assert!(e.to_string().contains("tls"), "{e}");
    }

    #[test]
    fn sasl_without_credentials_is_an_error() {
        let e = base()
            .set("security.protocol", "sasl_plaintext")
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("sasl.username"), "{e}");
    }

    #[test]
    fn password_never_in_debug() {
        let c = base()
            .sasl(SaslMechanism::ScramSha512, "svc", "hunter2-secret")
            .build()
            .unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("***"), "{dbg}");
        assert_eq!(c.sasl().unwrap().password.expose(), "hunter2-secret");
        let e = base().set("sasl.password", "").set("nope", "x").build();
        assert!(!format!("{e:?}").contains("hunter2"));
    }

    #[test]
    fn transactional_id_implies_idempotence_and_refuses_it_off() {
        let c = base().build().unwrap();
        assert_eq!(c.producer().transactional_id, None);
        assert_eq!(c.producer().transaction_timeout, Duration::from_secs(60));
        let c = base()
            .set("transactional.id", "orders-tx")
            .set("transaction.timeout.ms", "10000")
            .build()
            .unwrap();
        assert_eq!(c.producer().transactional_id.as_deref(), Some("orders-tx"));
        assert_eq!(c.producer().transaction_timeout, Duration::from_secs(10));
        assert!(c.producer().enable_idempotence);
        let e = base()
            .set("transactional.id", "orders-tx")
            .set("enable.idempotence", "false")
            .build()
            .unwrap_err();
        assert!(
            e.to_string().contains("enable.idempotence") && e.to_string().contains("orders-tx"),
            "{e}"
        );
        let e = base()
            .set("transactional.id", "orders-tx")
            .set("acks", "1")
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("acks"), "{e}");
        assert!(base().set("transaction.timeout.ms", "0").build().is_err());
        assert!(base().set("transactional.id", "").build().is_err());
    }

    #[test]
    fn idempotence_is_on_by_default_and_gives_way_to_acks_unless_asked_for() {
        let c = base().build().unwrap();
        assert!(c.producer().enable_idempotence);
        assert_eq!(c.producer().max_in_flight, 5);
        let c = base().set("acks", "1").build().unwrap();
        assert!(
            !c.producer().enable_idempotence,
            "default gives way to acks=1"
        );
        let c = base().set("max.in.flight", "8").build().unwrap();
        assert!(!c.producer().enable_idempotence);
        let e = base()
            .set("enable.idempotence", "true")
            .set("acks", "1")
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("acks"), "{e}");
        let e = base()
            .set("enable.idempotence", "true")
            .set("max.in.flight.requests.per.connection", "6")
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("max.in.flight"), "{e}");
        assert!(base().set("max.in.flight", "0").build().is_err());
        let c = base().set("enable.idempotence", "false").build().unwrap();
        assert!(!c.producer().enable_idempotence);
    }
}
