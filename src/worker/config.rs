//! The runner's options: [`RunnerConfig`] and the policies it holds.

use std::time::Duration;

use crate::breaker::BreakerConfig;
use crate::dlq::DEFAULT_TEMPLATE;
use crate::reconnect::ReconnectPolicy;

#[allow(unused_imports)] // named by the docs
use super::{RunMetrics, Runner};

/// What to do with a record whose payload does not decode (`run_json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DecodeErrorPolicy {
    /// Write it to the dead-letter topic (default: nothing is lost silently).
    #[default]
    DeadLetter,
    /// Skip it and count it in [`RunMetrics::dropped`] (what some services do with junk).
    Drop,
}

/// What the runner does when a dead letter cannot be written for good (the record is too
/// large for the dead-letter topic, the topic is missing and may not be created, writing is
/// not authorized). Either way the failure is counted ([`RunMetrics::dlq_permanent_failures`])
/// and reported to the circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DlqFailurePolicy {
    /// Stop the run: the record stays uncommitted (delivered again after the fix) and `run`
    /// returns the write's error. The default: nothing is lost silently.
    #[default]
    Stop,
    /// Skip the record (commit past it, counted in [`RunMetrics::dlq_skipped`]) and go on.
    Skip,
}

/// How a retriable handler failure is retried: [`Default`], then the setters.
///
/// ```
/// use std::time::Duration;
/// use purekafka::{ReconnectPolicy, RetryPolicy};
///
/// let retry = RetryPolicy::default()
///     .max_attempts(3)
///     .backoff(ReconnectPolicy::default().initial_delay(Duration::from_millis(20)));
/// assert_eq!(retry.max_attempts, 3);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Delays between attempts (`backoff` crate schedule) and the time budget
    /// (`max_elapsed`, counted from the first failure). Default: 100 ms doubling up to 5 s,
    /// ±20 % jitter, at most 30 s: a dependency's brief hiccup is ridden out, a long outage
    /// reaches the dead-letter topic (or opens the breaker) instead of stalling a partition.
    pub backoff: ReconnectPolicy,
    /// Most handler calls per record, the first included. Default 5.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            backoff: ReconnectPolicy {
                initial_delay: Duration::from_millis(100),
                multiplier: 2.0,
                max_delay: Duration::from_secs(5),
                jitter: 0.2,
                max_elapsed: Some(Duration::from_secs(30)),
            },
            max_attempts: 5,
        }
    }
}

impl RetryPolicy {
    /// Sets [`backoff`](Self::backoff).
    pub fn backoff(mut self, backoff: ReconnectPolicy) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets [`max_attempts`](Self::max_attempts).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }
}

/// Options of [`Runner`]; every field documents its default. Built from [`Default`] with
/// the setters (one per field, named after it).
///
/// ```
/// use std::time::Duration;
/// use purekafka::{BreakerConfig, RetryPolicy, RunnerConfig};
///
/// let config = RunnerConfig::default()
///     .concurrency(4)
///     .retry(RetryPolicy::default().max_attempts(3))
///     .breaker(BreakerConfig::default().failure_threshold(0))
///     .commit_interval(Duration::from_millis(500));
/// assert_eq!(config.concurrency, 4);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RunnerConfig {
    /// Retries of retriable handler failures (see [`RetryPolicy`]).
    pub retry: RetryPolicy,
    /// Most handlers running at once (each partition runs one record at a time, so this
    /// bounds how many partitions progress together). Default 16: enough to overlap
    /// I/O-bound handlers, few enough not to flood a downstream service; 1 processes one
    /// record at a time overall.
    pub concurrency: usize,
    /// Dead-letter topic name; `{topic}` is the original topic. Default `{topic}.dlq`.
    pub dlq_topic_template: String,
    /// Delays between attempts to write a dead letter. Default: 100 ms doubling up to 10 s;
    /// never given up while the failure is transient (the original record stays uncommitted
    /// until its dead letter lands); permanent failures follow `dlq_permanent_failure`.
    pub dlq_retry: ReconnectPolicy,
    /// A dead letter that cannot be written for good: stop the run (default) or skip it.
    pub dlq_permanent_failure: DlqFailurePolicy,
    /// Create a missing dead-letter topic (default false: topics are usually provisioned,
    /// and a typo in the template should not create topics).
    pub dlq_create_topic: bool,
    /// Partitions of a created dead-letter topic. Default `None`: as many as the original.
    pub dlq_topic_partitions: Option<i32>,
    /// Replicas of a created dead-letter topic. Default -1: the broker's
    /// `default.replication.factor`.
    pub dlq_topic_replication: i16,
    /// Undecodable payloads: dead-letter (default) or drop.
    pub decode_errors: DecodeErrorPolicy,
    /// The circuit breaker (default: opens after 10 consecutive failures, 30 s cool-down).
    pub breaker: BreakerConfig,
    /// How often processed offsets are committed. Default 1 s: a crash repeats at most about
    /// a second of work, at one commit request per second.
    pub commit_interval: Duration,
    /// A partition is paused while this many of its records wait for its handler. Default
    /// 20 000 (two polls' worth): bounds memory without starving a fast handler.
    pub max_pending_per_partition: usize,
    /// The run loop takes no more records from the consumer while this many in all wait for
    /// their handlers (it still counts as polling for `max.poll.interval.ms`; the consumer
    /// keeps what it prefetched, up to `queued.max.messages.kbytes`). Default 100 000 (ten
    /// polls' worth): the per-partition bound alone let a runner with
    /// many partitions hold 20 000 records for each (48 partitions of 100-byte records and a
    /// slow handler: about 1M records, 553 MiB peak RSS in the comparison harness).
    pub max_pending: usize,
    /// Shut down gracefully on SIGTERM / SIGINT. Default true (what a service wants).
    pub shutdown_on_signal: bool,
    /// Exactly-once processing (default false: at-least-once, offsets committed by the
    /// consumer). The runner's producer ([`Runner::producer`]) must be transactional
    /// (`transactional.id`; the runner calls its `init_transactions` and `begin_transaction`)
    /// and the handler must produce through that producer and await its sends. Every
    /// `commit_interval` no new record starts, the records in progress finish,
    /// and the records the handlers produced, the dead letters and the consumed offsets
    /// commit in one transaction (`send_offsets_to_transaction` with the member's group
    /// metadata); a failed transaction is aborted and its input records are processed again
    /// from the last commit. A transaction during which the group rebalanced is aborted the
    /// same way (its records may belong to another member now).
    pub exactly_once: bool,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            retry: RetryPolicy::default(),
            concurrency: 16,
            dlq_topic_template: DEFAULT_TEMPLATE.to_string(),
            dlq_retry: ReconnectPolicy {
                initial_delay: Duration::from_millis(100),
                multiplier: 2.0,
                max_delay: Duration::from_secs(10),
                jitter: 0.2,
                max_elapsed: None,
            },
            dlq_permanent_failure: DlqFailurePolicy::Stop,
            dlq_create_topic: false,
            dlq_topic_partitions: None,
            dlq_topic_replication: -1,
            decode_errors: DecodeErrorPolicy::DeadLetter,
            breaker: BreakerConfig::default(),
            commit_interval: Duration::from_secs(1),
            max_pending_per_partition: 20_000,
            max_pending: 100_000,
            shutdown_on_signal: true,
            exactly_once: false,
        }
    }
}

impl RunnerConfig {
    /// Sets [`retry`](Self::retry).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets [`concurrency`](Self::concurrency).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Sets [`dlq_topic_template`](Self::dlq_topic_template).
    pub fn dlq_topic_template(mut self, dlq_topic_template: impl Into<String>) -> Self {
        self.dlq_topic_template = dlq_topic_template.into();
        self
    }

    /// Sets [`dlq_retry`](Self::dlq_retry).
    pub fn dlq_retry(mut self, dlq_retry: ReconnectPolicy) -> Self {
        self.dlq_retry = dlq_retry;
        self
    }

    /// Sets [`dlq_permanent_failure`](Self::dlq_permanent_failure).
    pub fn dlq_permanent_failure(mut self, dlq_permanent_failure: DlqFailurePolicy) -> Self {
        self.dlq_permanent_failure = dlq_permanent_failure;
        self
    }

    /// Sets [`dlq_create_topic`](Self::dlq_create_topic).
    pub fn dlq_create_topic(mut self, dlq_create_topic: bool) -> Self {
        self.dlq_create_topic = dlq_create_topic;
        self
    }

    /// Sets [`dlq_topic_partitions`](Self::dlq_topic_partitions).
    pub fn dlq_topic_partitions(mut self, dlq_topic_partitions: Option<i32>) -> Self {
        self.dlq_topic_partitions = dlq_topic_partitions;
        self
    }

    /// Sets [`dlq_topic_replication`](Self::dlq_topic_replication).
    pub fn dlq_topic_replication(mut self, dlq_topic_replication: i16) -> Self {
        self.dlq_topic_replication = dlq_topic_replication;
        self
    }

    /// Sets [`decode_errors`](Self::decode_errors).
    pub fn decode_errors(mut self, decode_errors: DecodeErrorPolicy) -> Self {
        self.decode_errors = decode_errors;
        self
    }

    /// Sets [`breaker`](Self::breaker).
    pub fn breaker(mut self, breaker: BreakerConfig) -> Self {
        self.breaker = breaker;
        self
    }

    /// Sets [`commit_interval`](Self::commit_interval).
    pub fn commit_interval(mut self, commit_interval: Duration) -> Self {
        self.commit_interval = commit_interval;
        self
    }

    /// Sets [`max_pending`](Self::max_pending).
    pub fn max_pending(mut self, max_pending: usize) -> Self {
        self.max_pending = max_pending;
        self
    }

    /// Sets [`max_pending_per_partition`](Self::max_pending_per_partition).
    pub fn max_pending_per_partition(mut self, max_pending_per_partition: usize) -> Self {
        self.max_pending_per_partition = max_pending_per_partition;
        self
    }

    /// Sets [`shutdown_on_signal`](Self::shutdown_on_signal).
    pub fn shutdown_on_signal(mut self, shutdown_on_signal: bool) -> Self {
        self.shutdown_on_signal = shutdown_on_signal;
        self
    }

    /// Sets [`exactly_once`](Self::exactly_once).
    pub fn exactly_once(mut self, exactly_once: bool) -> Self {
        self.exactly_once = exactly_once;
        self
    }
}
