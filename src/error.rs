//! The crate's error type.
//!
//! Every error carries its cause: a broker error keeps the Kafka error code and what the
//! request was about, a give-up after retries keeps what was tried and the last cause, and a
//! configuration error names the key and the value. [`Error::is_retriable`] tells whether the
//! same operation may succeed when tried again.

use std::time::Duration;

pub use kafka_protocol::error::ResponseError;

/// Result type used throughout purekafka.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in purekafka.
#[derive(Debug, thiserror::Error)]
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
    #[error("broker error {code:?} ({}) for {context}", code.code())]
    Broker {
        /// The Kafka error code.
        code: ResponseError,
        /// What the request was about (topic, partition, group, ...).
        context: String,
        /// The broker's error message, when it sent one.
        message: Option<String>,
    },

    /// An error reported by the rskafka data-path client.
    #[error("kafka client error: {0}")]
    Client(#[from] rskafka::client::error::Error),

    /// A network error on a connection we manage ourselves.
    #[error("i/o error talking to {broker}: {source}")]
    Io {
        /// The broker address.
        broker: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
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

    /// A response could not be decoded, or did not match the request.
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
    Json(#[from] serde_json::Error),

    /// Kafka is disabled (`KAFKA_ENABLED=false`): nothing was sent.
    #[error("kafka is disabled (KAFKA_ENABLED=false): nothing was sent")]
    Disabled,

    /// The component was closed and takes no more work.
    #[error("{0} is closed")]
    Closed(&'static str),

    /// The topic does not exist on the cluster.
    #[error("unknown topic {0}")]
    UnknownTopic(String),
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
            code: ResponseError::try_from_code(code).unwrap_or(ResponseError::Unknown(code)),
            context: context.into(),
            message,
        }
    }

    /// The Kafka error code behind this error, if a broker sent one.
    pub fn kafka_code(&self) -> Option<ResponseError> {
        match self {
            Error::Broker { code, .. } => Some(*code),
            Error::Client(rskafka::client::error::Error::ServerError {
                protocol_error, ..
            }) => Some(response_error_of(*protocol_error)),
            Error::RetriesExhausted { last_error, .. } | Error::Connect { last_error, .. } => {
                last_error.kafka_code()
            }
            _ => None,
        }
    }

    /// Whether this error says the cluster could not be reached (refused or dropped
    /// connection, timeout), as opposed to the broker answering with an error.
    pub fn is_connection_error(&self) -> bool {
        use rskafka::client::error::Error as Rs;
        match self {
            Error::Io { .. } | Error::Timeout { .. } | Error::Connect { .. } => true,
            Error::Client(
                Rs::Connection(_) | Rs::Request(_) | Rs::Timeout | Rs::RetryFailed(_),
            ) => true,
            Error::RetriesExhausted { last_error, .. } => last_error.is_connection_error(),
            _ => false,
        }
    }

    /// Whether the same operation may succeed if tried again: network errors, timeouts and
    /// broker errors that Kafka marks as retriable (not leader, leader not available,
    /// coordinator moved, ...). Configuration errors, oversized records, JSON errors and
    /// give-ups after retries are not.
    pub fn is_retriable(&self) -> bool {
        use rskafka::client::error::Error as Rs;
        match self {
            Error::Broker { code, .. } => code.is_retriable(),
            Error::Io { .. } | Error::Timeout { .. } => true,
            Error::Client(e) => match e {
                Rs::Connection(_) | Rs::Request(_) | Rs::Timeout | Rs::RetryFailed(_) => true,
                Rs::ServerError { protocol_error, .. } => {
                    response_error_of(*protocol_error).is_retriable()
                }
                _ => false,
            },
            _ => false,
        }
    }
}

/// Maps rskafka's protocol error enum onto kafka-protocol's, by error code.
///
/// rskafka keeps its code conversion private but exposes `ProtocolError::new(code)`, so the
/// code is found by searching the (small, fixed) range of Kafka error codes.
fn response_error_of(e: rskafka::client::error::ProtocolError) -> ResponseError {
    use rskafka::client::error::ProtocolError;
    if let ProtocolError::Unknown(code) = e {
        return ResponseError::try_from_code(code).unwrap_or(ResponseError::Unknown(code));
    }
    (-1i16..=200)
        .find(|code| ProtocolError::new(*code) == Some(e))
        .and_then(ResponseError::try_from_code)
        .unwrap_or(ResponseError::UnknownServerError)
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
        assert_eq!(too_large.kafka_code(), Some(ResponseError::MessageTooLarge));
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
