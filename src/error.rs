//! The crate's error type.
//!
//! Every error carries its cause: a broker error keeps the Kafka error code and what the
//! request was about, a give-up after retries keeps what was tried and the last cause, and a
//! configuration error names the key and the value. [`Error::is_retriable`] tells whether the
//! same operation may succeed when tried again, [`Error::is_fatal`] whether the client can go
//! on at all, and [`Error::kind`] sorts every error into an [`ErrorKind`].
//!
//! `Error` is `Clone` (causes that are not, I/O and JSON errors, are shared behind an `Arc`)
//! and `#[non_exhaustive]`; Kafka's error codes are purekafka's own [`ErrorCode`], so no
//! protocol crate's type is part of this API.

use std::sync::Arc;
use std::time::Duration;

pub use crate::error_code::ErrorCode;

/// Result type used throughout purekafka.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in purekafka.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration key has a value that cannot be used, or the key is unknown.
    #[error("invalid configuration: {key} = {value:?}: {reason}")]
    Config {
        /// The key, as written by the caller (`linger.ms`, `KAFKA_BROKERS`, ...).
        key: String,
        /// The value that was rejected (`"***"` for secrets).
        value: String,
        /// Why it was rejected.
        reason: String,
    },

    /// No broker of the bootstrap list could be reached within the reconnect budget.
    #[error(
        "could not connect to any of [{brokers}] after {attempts} attempts in {elapsed:?}: {last_error}",
        brokers = brokers.join(", ")
    )]
    Connect {
        /// The bootstrap brokers that were tried.
        brokers: Vec<String>,
        /// How many connection attempts were made.
        attempts: u32,
        /// How long the attempts took in total.
        elapsed: Duration,
        /// The cause of the last failed attempt.
        #[source]
        last_error: Box<Error>,
    },

    /// An operation kept failing with retriable errors until its retry budget ran out.
    #[error("{operation} failed after {attempts} attempts in {elapsed:?}: {last_error}")]
    RetriesExhausted {
        /// What was being done (`"list topics"`, `"produce to orders/3"`, ...).
        operation: String,
        /// How many attempts were made.
        attempts: u32,
        /// How long the attempts took in total.
        elapsed: Duration,
        /// The cause of the last failed attempt.
        #[source]
        last_error: Box<Error>,
    },

    /// The broker answered with a Kafka error code.
    #[error("broker error {code} ({}) for {context}{}", code.code(), message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Broker {
        /// The Kafka error code.
        code: ErrorCode,
        /// What the request was about (topic, partition, group, ...).
        context: String,
        /// The broker's error message, when it sent one.
        message: Option<String>,
    },

    /// A network error on a connection to a broker (refused, reset, closed).
    #[error("i/o error talking to {broker}: {source}")]
    Io {
        /// The broker address.
        broker: String,
        /// The underlying error (shared, so that the error can be cloned).
        #[source]
        source: Arc<std::io::Error>,
    },

    /// The TLS handshake with a broker failed: certificate rejected, alert, or the peer does
    /// not speak TLS. Not retried: the same handshake fails the same way.
    #[error("TLS with {broker} failed: {reason}")]
    Tls {
        /// The broker address.
        broker: String,
        /// What went wrong and what to check.
        reason: String,
    },

    /// The broker refused SASL authentication: wrong password, unknown user, or a mechanism
    /// it does not enable. Not retried.
    #[error("SASL {mechanism} authentication of user {user:?} with {broker} failed: {reason}")]
    Authentication {
        /// The broker address.
        broker: String,
        /// The SASL mechanism (`PLAIN`, `SCRAM-SHA-256`, ...).
        mechanism: String,
        /// The user name (never the password).
        user: String,
        /// The broker's answer.
        reason: String,
    },

    /// The broker does not support a request purekafka needs (an API it lacks, or no
    /// version both sides speak). Not retried.
    #[error("broker {broker} does not support {what}")]
    Unsupported {
        /// The broker address.
        broker: String,
        /// The request and versions (`CreateTopics (API key 19)`, ...).
        what: String,
    },

    /// Bytes from the network could not be decoded (a malformed response or record batch),
    /// or a response did not match its request.
    #[error("protocol error: {0}")]
    Protocol(String),

    /// A record is larger than the configured maximum; it was not sent.
    #[error("record for topic {topic} is {size} bytes, larger than message.max.bytes = {max}")]
    RecordTooLarge {
        /// The record's topic.
        topic: String,
        /// The encoded size of the record in bytes.
        size: usize,
        /// The configured maximum.
        max: usize,
    },

    /// The producer's buffer is full (only returned by non-blocking sends).
    #[error("producer queue is full ({buffered} bytes buffered, limit {limit} bytes)")]
    QueueFull {
        /// Bytes buffered at the time.
        buffered: usize,
        /// The configured limit (`queue.buffering.max.kbytes`).
        limit: usize,
    },

    /// An operation did not complete in time.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// What was being done.
        operation: String,
        /// The time limit that was exceeded.
        after: Duration,
    },

    /// A value could not be serialized to or deserialized from JSON.
    #[error("JSON error: {0}")]
    Json(#[source] Arc<serde_json::Error>),

    /// Kafka is disabled (`KAFKA_ENABLED=false`): nothing was sent.
    #[error("kafka is disabled (KAFKA_ENABLED=false): nothing was sent")]
    Disabled,

    /// The component was closed and takes no more work.
    #[error("{0} is closed")]
    Closed(&'static str),

    /// The topic does not exist on the cluster.
    #[error("unknown topic {0}")]
    UnknownTopic(String),

    /// A transactional producer's call that its state does not allow (a send outside a
    /// transaction, a commit without `begin_transaction`, ...), or a record dropped by
    /// `abort_transaction`. Not fatal: the producer goes on once the call fits its state.
    #[error("transaction: {0}")]
    Transaction(String),
}

impl Error {
    /// Builds a [`Error::Config`].
    pub(crate) fn config(
        key: impl Into<String>,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::Config {
            key: key.into(),
            value: value.into(),
            reason: reason.into(),
        }
    }

    /// Builds an [`Error::Broker`] from a Kafka error code.
    pub(crate) fn broker(code: i16, context: impl Into<String>, message: Option<String>) -> Self {
        Error::Broker {
            code: ErrorCode::from_code(code),
            context: context.into(),
            message,
        }
    }

    /// Builds an [`Error::Io`].
    pub(crate) fn io(broker: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            broker: broker.into(),
            source: Arc::new(source),
        }
    }

    /// The Kafka error code behind this error, if a broker sent one (also inside a give-up
    /// after retries).
    pub fn kafka_code(&self) -> Option<ErrorCode> {
        match self {
            Error::Broker { code, .. } => Some(*code),
            Error::RetriesExhausted { last_error, .. } | Error::Connect { last_error, .. } => {
                last_error.kafka_code()
            }
            _ => None,
        }
    }

    /// What kind of error this is (a give-up after retries has its last cause's kind).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config { .. } => ErrorKind::Config,
            Error::Connect { .. } | Error::Io { .. } => ErrorKind::Connection,
            Error::RetriesExhausted { last_error, .. } => last_error.kind(),
            Error::Broker { code, .. } => match code {
                c if c.is_authentication() => ErrorKind::Authentication,
                c if c.is_authorization() => ErrorKind::Authorization,
                ErrorCode::MessageTooLarge | ErrorCode::RecordListTooLarge => {
                    ErrorKind::RecordTooLarge
                }
                ErrorCode::RequestTimedOut => ErrorKind::Timeout,
                ErrorCode::UnknownTopicOrPartition => ErrorKind::UnknownTopic,
                ErrorCode::UnsupportedVersion => ErrorKind::Unsupported,
                _ => ErrorKind::Broker,
            },
            Error::Tls { .. } | Error::Authentication { .. } => ErrorKind::Authentication,
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::Protocol(_) => ErrorKind::Protocol,
            Error::RecordTooLarge { .. } => ErrorKind::RecordTooLarge,
            Error::QueueFull { .. } => ErrorKind::QueueFull,
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::Json(_) => ErrorKind::Serialization,
            Error::Disabled => ErrorKind::Disabled,
            Error::Closed(_) => ErrorKind::Closed,
            Error::UnknownTopic(_) => ErrorKind::UnknownTopic,
            Error::Transaction(_) => ErrorKind::Transaction,
        }
    }

    /// Whether this error says the cluster could not be reached (refused or dropped
    /// connection, timeout), as opposed to the broker answering with an error.
    pub fn is_connection_error(&self) -> bool {
        match self {
            Error::Io { .. } | Error::Timeout { .. } | Error::Connect { .. } => true,
            Error::RetriesExhausted { last_error, .. } => last_error.is_connection_error(),
            _ => false,
        }
    }

    /// Whether the same operation may succeed if tried again: network errors, timeouts and
    /// broker errors that Kafka marks as retriable (not leader, leader not available,
    /// coordinator moved, ...). Configuration errors, oversized records, JSON errors and
    /// give-ups after retries are not.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Broker { code, .. } => code.is_retriable(),
            Error::Io { .. } | Error::Timeout { .. } => true,
            _ => false,
        }
    }

    /// Whether the client (or producer, or group member) cannot go on as configured:
    /// authentication or authorization refused, TLS failed, an unsupported broker, an
    /// invalid configuration, or a fatal Kafka code (fenced producer or instance, ...).
    /// Unlike a record that is too large, no later request can succeed either.
    pub fn is_fatal(&self) -> bool {
        match self {
            Error::Broker { code, .. } => code.is_fatal(),
            Error::RetriesExhausted { last_error, .. } => last_error.is_fatal(),
            other => matches!(
                other.kind(),
                ErrorKind::Config
                    | ErrorKind::Authentication
                    | ErrorKind::Authorization
                    | ErrorKind::Unsupported
            ),
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Json(Arc::new(e))
    }
}

/// The kind of an [`Error`], for callers that decide by category rather than by variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A configuration key or value was rejected.
    Config,
    /// The cluster or a broker could not be reached, or the connection broke.
    Connection,
    /// Something did not complete in time (including the broker's REQUEST_TIMED_OUT).
    Timeout,
    /// Who the client is was refused: SASL or TLS.
    Authentication,
    /// The client may not do this (a `*_AUTHORIZATION_FAILED` code).
    Authorization,
    /// A record or batch is larger than the client's or the broker's limit.
    RecordTooLarge,
    /// The producer's buffer is full.
    QueueFull,
    /// The topic or partition does not exist.
    UnknownTopic,
    /// The broker lacks an API or version purekafka needs.
    Unsupported,
    /// Malformed bytes from the network.
    Protocol,
    /// Another Kafka error code (see [`Error::kafka_code`]).
    Broker,
    /// A value could not be serialized or deserialized.
    Serialization,
    /// The component was closed.
    Closed,
    /// Kafka is disabled by configuration.
    Disabled,
    /// A transactional producer's call its state does not allow, or a record of an aborted
    /// transaction.
    Transaction,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_errors_know_if_they_are_retriable() {
        let not_leader = Error::broker(6, "orders/0", None);
        assert!(not_leader.is_retriable());
        let too_large = Error::broker(10, "orders/0", None);
        assert!(!too_large.is_retriable());
        assert_eq!(too_large.kafka_code(), Some(ErrorCode::MessageTooLarge));
        assert_eq!(too_large.kind(), ErrorKind::RecordTooLarge);
        assert!(!too_large.is_fatal());
        assert!(
            too_large.to_string().contains("MESSAGE_TOO_LARGE"),
            "{too_large}"
        );
        let denied = Error::broker(29, "orders", None);
        assert_eq!(denied.kind(), ErrorKind::Authorization);
        assert!(denied
            .clone()
            .to_string()
            .contains("TOPIC_AUTHORIZATION_FAILED"));
    }

    #[test]
    fn config_errors_name_key_and_value() {
        let e = Error::config("linger.ms", "-5", "must not be negative");
        let text = e.to_string();
        assert!(text.contains("linger.ms"), "{text}");
        assert!(text.contains("-5"), "{text}");
        assert!(!e.is_retriable());
    }
}
