//! Dead-letter records and their routing.
//!
//! A dead-letter record keeps the original key, value and headers and adds six headers:
//! `dlq.original.topic`, `dlq.original.partition`, `dlq.original.offset`, `dlq.error`,
//! `dlq.attempts` (handler attempts made; 0 when the payload did not decode) and
//! `dlq.failed.at` (RFC 3339, UTC). [`DeadLetterRouter::send`] does not return before the
//! broker acknowledged the record: a failed write is retried with backoff (each retry logged)
//! until it lands, so that the runner commits the original offset only once its dead letter
//! is safe. A *permanent* failure (the record is too large, the topic is missing, writing is
//! not authorized: see [`is_permanent`]) is not retried: `send` returns it, and the runner
//! applies the user's [`DlqFailurePolicy`](crate::DlqFailurePolicy). A missing dead-letter
//! topic is created first when [`DeadLetterRouter::create_missing_topics`] allows it.

use std::sync::Arc;

use chrono::SecondsFormat;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::producer::{Delivery, Producer};
use crate::reconnect::ReconnectPolicy;
use crate::record::{ConsumedRecord, Record};

/// Header: the topic the record was read from.
pub const HEADER_TOPIC: &str = "dlq.original.topic";
/// Header: its partition (decimal).
pub const HEADER_PARTITION: &str = "dlq.original.partition";
/// Header: its offset (decimal).
pub const HEADER_OFFSET: &str = "dlq.original.offset";
/// Header: why it was dead-lettered (the handler's or the decoder's error).
pub const HEADER_ERROR: &str = "dlq.error";
/// Header: handler attempts made (decimal; 0: the payload did not decode).
pub const HEADER_ATTEMPTS: &str = "dlq.attempts";
/// Header: when it was dead-lettered (RFC 3339, UTC, milliseconds).
pub const HEADER_FAILED_AT: &str = "dlq.failed.at";

/// Default topic template: `{topic}` is replaced by the original topic.
pub const DEFAULT_TEMPLATE: &str = "{topic}.dlq";

/// Whether a failed dead-letter write will fail again however often it is retried: the
/// record is too large, the topic does not exist or is invalid, writing is not authorized,
/// or the producer's transaction failed or it is fenced (exactly-once mode).
pub fn is_permanent(error: &Error) -> bool {
    use crate::ErrorCode as E;
    match error {
        Error::RecordTooLarge { .. } | Error::UnknownTopic(_) => true,
        // The runner's transaction failed (exactly-once mode) or the producer is fenced:
        // no retry can write it.
        Error::Transaction(_) => true,
        e if e.is_fatal() => true,
        e => matches!(
            e.kafka_code(),
            Some(
                E::MessageTooLarge
                    | E::RecordListTooLarge
                    | E::InvalidTopicException
                    | E::UnknownTopicOrPartition
                    | E::TopicAuthorizationFailed
                    | E::ClusterAuthorizationFailed
                    | E::TransactionalIdAuthorizationFailed
            )
        ),
    }
}

/// How missing dead-letter topics are created.
#[derive(Clone)]
struct Create {
    client: Client,
    partitions: Option<i32>,
    replication: i16,
}

/// Writes dead-letter records and waits until they are acknowledged.
#[derive(Clone)]
pub struct DeadLetterRouter {
    producer: Producer,
    template: Arc<str>,
    retry: ReconnectPolicy,
    create: Option<Create>,
}

impl std::fmt::Debug for DeadLetterRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetterRouter")
            .field("template", &self.template)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl DeadLetterRouter {
    /// A router writing with `producer` to topics named by `template` (`{topic}` → the
    /// original topic; [`DEFAULT_TEMPLATE`] is `{topic}.dlq`). Failed writes are retried
    /// with `retry`'s delays, without its `max_elapsed` limit: a dead letter is never
    /// given up.
    pub fn new(producer: Producer, template: impl Into<String>, retry: ReconnectPolicy) -> Self {
        DeadLetterRouter {
            producer,
            template: Arc::from(template.into()),
            retry: ReconnectPolicy {
                max_elapsed: None,
                ..retry
            },
            create: None,
        }
    }

    /// Creates a missing dead-letter topic (CreateTopics through `client`) before writing to
    /// it, with `partitions` partitions (`None`: as many as the original topic has) and
    /// `replication` replicas (-1: the broker's default, `default.replication.factor`).
    pub fn create_missing_topics(
        mut self,
        client: Client,
        partitions: Option<i32>,
        replication: i16,
    ) -> Self {
        self.create = Some(Create {
            client,
            partitions,
            replication,
        });
        self
    }

    /// Creates `topic` as configured; an existing topic is fine.
    async fn create_topic(&self, create: &Create, topic: &str, original: &str) -> Result<()> {
        let partitions = match create.partitions {
            Some(p) => p,
            None => create.client.partition_count(original).await? as i32,
        };
        tracing::info!(
            topic,
            partitions,
            replication = create.replication,
            "creating the missing dead-letter topic"
        );
        match create
            .client
            .create_topic(topic, partitions, create.replication)
            .await
        {
            Err(e) if e.kafka_code() == Some(crate::ErrorCode::TopicAlreadyExists) => Ok(()),
            other => other,
        }
    }

    /// The dead-letter topic of `topic`.
    pub fn topic_for(&self, topic: &str) -> String {
        self.template.replace("{topic}", topic)
    }

    /// The dead-letter record of `original`.
    pub fn dead_letter(&self, original: &ConsumedRecord, error: &str, attempts: u32) -> Record {
        let mut record = Record {
            topic: self.topic_for(&original.topic).into(),
            partition: None,
            key: original.key.clone(),
            value: original.value.clone(),
            headers: original.headers.clone(),
            timestamp: None,
        };
        let h = &mut record.headers;
        h.insert(HEADER_TOPIC, original.topic.to_string());
        h.insert(HEADER_PARTITION, original.partition.to_string());
        h.insert(HEADER_OFFSET, original.offset.to_string());
        h.insert(HEADER_ERROR, error.to_string());
        h.insert(HEADER_ATTEMPTS, attempts.to_string());
        h.insert(
            HEADER_FAILED_AT,
            chrono::Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        );
        record
    }

    /// Writes the dead letter of `original` and waits for the acknowledgement, retrying
    /// failed writes with backoff until one lands or `stop` says to give up (shutdown: the
    /// original is then not committed and will be delivered again; the error is
    /// [`Error::Closed`]). A permanent failure ([`is_permanent`]) is returned at once, after
    /// creating a missing topic and trying once more when that is allowed.
    ///
    /// `on_retry` is called with each failed write's error (for metrics).
    pub async fn send(
        &self,
        original: &ConsumedRecord,
        error: &str,
        attempts: u32,
        stop: &(dyn Fn() -> bool + Sync),
        on_retry: &(dyn Fn(&Error) + Sync),
    ) -> Result<Delivery> {
        let record = self.dead_letter(original, error, attempts);
        let mut schedule = self.retry.schedule();
        let mut attempt = 0u32;
        let mut created = false;
        loop {
            attempt += 1;
            let e = match self.producer.send(record.clone()).await {
                Ok(d) => {
                    if attempt > 1 {
                        tracing::info!(topic = %record.topic, original = %format_args!("{}/{}@{}", original.topic, original.partition, original.offset), attempt, "dead letter written after retrying");
                    }
                    return Ok(d);
                }
                // The record is kept here (cloned per attempt): only the reason is needed.
                Err(e) => Error::from(e),
            };
            let missing = matches!(e, Error::UnknownTopic(_))
                || e.kafka_code() == Some(crate::ErrorCode::UnknownTopicOrPartition);
            if let (true, false, Some(create)) = (missing, created, &self.create) {
                created = true;
                match self
                    .create_topic(create, &record.topic, &original.topic)
                    .await
                {
                    Ok(()) => continue,
                    Err(c) => {
                        tracing::error!(topic = %record.topic, error = %c, "creating the dead-letter topic failed");
                        if is_permanent(&c) || !c.is_retriable() {
                            return Err(c);
                        }
                    }
                }
            }
            if is_permanent(&e) {
                tracing::error!(
                    topic = %record.topic,
                    original = %format_args!("{}/{}@{}", original.topic, original.partition, original.offset),
                    error = %e,
                    "dead-letter write failed for good"
                );
                return Err(e);
            }
            on_retry(&e);
            let delay = backoff::backoff::Backoff::next_backoff(&mut schedule)
                .unwrap_or(self.retry.max_delay);
            tracing::warn!(
                topic = %record.topic,
                original = %format_args!("{}/{}@{}", original.topic, original.partition, original.offset),
                attempt,
                delay_ms = delay.as_millis() as u64,
                error = %e,
                "dead-letter write failed; the original stays uncommitted, retrying"
            );
            let deadline = tokio::time::Instant::now() + delay;
            while tokio::time::Instant::now() < deadline {
                if stop() {
                    return Err(Error::Closed("dead-letter router (shutting down)"));
                }
                tokio::time::sleep_until(
                    deadline
                        .min(tokio::time::Instant::now() + std::time::Duration::from_millis(50)),
                )
                .await;
            }
        }
    }
}
