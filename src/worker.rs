//! The processing runtime: [`Consumer::run`] / [`Consumer::run_json`] and [`Runner`].
//!
//! For each record, in partition order: dedup → handler → (retries with backoff) → dead-letter
//! topic → commit. One task per assigned partition runs its records in order; up to
//! [`RunnerConfig::concurrency`] handlers (of different partitions) run at once. The run loop
//! polls, hands each partition's records to its task, and every
//! [`RunnerConfig::commit_interval`] commits, per partition, the offset after the last record
//! that was handled or whose dead letter was acknowledged — never beyond. Partitions are paused
//! while their task is far behind, and all of them while the circuit breaker is open (the group
//! membership stays alive: heartbeats run on their own task and the loop keeps polling).
//!
//! Exactly-once mode ([`RunnerConfig::exactly_once`]): the offsets commit instead in the
//! runner's producer's transactions, together with what the handlers produced and the dead
//! letters; a failed transaction is aborted and its records are processed again.
//!
//! Shutdown ([`RunHandle::shutdown`], SIGTERM/SIGINT unless turned off): no new record starts,
//! handlers in flight finish (a record waiting between retries is abandoned, uncommitted, and
//! delivered again later), the processed offsets are committed and the consumer leaves the
//! group.
//!
//! ```no_run
//! # async fn demo(client: purekafka::Client) -> purekafka::Result<()> {
//! use purekafka::{HandlerError, worker::RunnerConfig};
//!
//! #[derive(serde::Deserialize)]
//! struct Order { id: u64 }
//!
//! let consumer = client.consumer(&["orders"])?;
//! let metrics = consumer
//!     .runner()
//!     .config(RunnerConfig::default())
//!     .run_json(|order: Order, _record| async move {
//!         if order.id == 0 {
//!             return Err(HandlerError::permanent("order without id"));
//!         }
//!         Ok(())
//!     })
//!     .await?;
//! println!("processed {}", metrics.processed);
//! # Ok(()) }
//! ```

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use backoff::backoff::Backoff;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
use crate::consumer::{Consumer, TopicPartition};
use crate::dedup::{Check, DedupKey, Deduplicator};
use crate::dlq::{DeadLetterRouter, DEFAULT_TEMPLATE};
use crate::error::{Error, Result};
use crate::handler::{HandlerError, Json, Plain, Process};
use crate::producer::Producer;
use crate::reconnect::ReconnectPolicy;
use crate::record::ConsumedRecord;

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

/// Counters of a run (a snapshot: [`RunHandle::metrics`], or the result of `run`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunMetrics {
    /// Records whose handler succeeded.
    pub processed: u64,
    /// Records skipped because their dedup key was processed before.
    pub duplicates_skipped: u64,
    /// Handler retries (attempts after the first).
    pub retries: u64,
    /// Records written to the dead-letter topic (acknowledged).
    pub dead_lettered: u64,
    /// Undecodable records dropped ([`DecodeErrorPolicy::Drop`]).
    pub dropped: u64,
    /// Failed dead-letter writes (each was retried).
    pub dlq_write_failures: u64,
    /// Dead letters that could not be written for good (too large, topic missing, not
    /// authorized); see [`DlqFailurePolicy`].
    pub dlq_permanent_failures: u64,
    /// Records skipped after such a failure ([`DlqFailurePolicy::Skip`]).
    pub dlq_skipped: u64,
    /// The circuit breaker's state.
    pub breaker_state: BreakerState,
    /// How many times the breaker opened.
    pub breaker_opened: u64,
}

#[derive(Default)]
struct Counters {
    processed: AtomicU64,
    duplicates: AtomicU64,
    retries: AtomicU64,
    dead_lettered: AtomicU64,
    dropped: AtomicU64,
    dlq_failures: AtomicU64,
    dlq_permanent: AtomicU64,
    dlq_skipped: AtomicU64,
}

struct RunShared {
    counters: Counters,
    /// Why the run stopped on its own ([`DlqFailurePolicy::Stop`]); `run` returns it.
    fatal: std::sync::Mutex<Option<Error>>,
    breaker: OnceLock<Arc<CircuitBreaker>>,
    stop: watch::Sender<bool>,
}

/// Stops a run and reads its counters; cheap to clone.
#[derive(Clone)]
pub struct RunHandle {
    shared: Arc<RunShared>,
}

impl std::fmt::Debug for RunHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunHandle")
            .field("metrics", &self.metrics())
            .finish()
    }
}

impl RunHandle {
    /// Asks the run to stop gracefully (finish in-flight handlers, commit, leave the group);
    /// `run` returns when that is done.
    pub fn shutdown(&self) {
        self.shared.stop.send_replace(true);
    }

    /// Whether shutdown was asked for.
    pub fn is_shutting_down(&self) -> bool {
        *self.shared.stop.borrow()
    }

    /// The counters now.
    pub fn metrics(&self) -> RunMetrics {
        let c = &self.shared.counters;
        let (breaker_state, breaker_opened) = match self.shared.breaker.get() {
            Some(b) => (b.state(), b.times_opened()),
            None => (BreakerState::Closed, 0),
        };
        RunMetrics {
            processed: c.processed.load(Ordering::Relaxed),
            duplicates_skipped: c.duplicates.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            dlq_write_failures: c.dlq_failures.load(Ordering::Relaxed),
            dlq_permanent_failures: c.dlq_permanent.load(Ordering::Relaxed),
            dlq_skipped: c.dlq_skipped.load(Ordering::Relaxed),
            breaker_state,
            breaker_opened,
        }
    }
}

/// Runs a handler over a consumer's records: made by [`Consumer::runner`], configured with
/// its builder methods, started with [`run`](Self::run) or [`run_json`](Self::run_json).
pub struct Runner {
    consumer: Arc<Consumer>,
    config: RunnerConfig,
    dedup: Option<(Deduplicator, DedupKey)>,
    producer: Option<Producer>,
    handle: RunHandle,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("consumer", &self.consumer)
            .field("config", &self.config)
            .field("dedup", &self.dedup)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// A [`Runner`] over this consumer, with default options.
    pub fn runner(self) -> Runner {
        let (stop, _) = watch::channel(false);
        Runner {
            consumer: Arc::new(self),
            config: RunnerConfig::default(),
            dedup: None,
            producer: None,
            handle: RunHandle {
                shared: Arc::new(RunShared {
                    counters: Counters::default(),
                    fatal: std::sync::Mutex::new(None),
                    breaker: OnceLock::new(),
                    stop,
                }),
            },
        }
    }

    /// Runs `handler` for every record until shutdown (SIGTERM / SIGINT), with default
    /// options: see [`Runner::run`].
    pub async fn run<F, Fut>(self, handler: F) -> Result<RunMetrics>
    where
        F: Fn(ConsumedRecord) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.runner().run(handler).await
    }

    /// Runs `handler` for every record's value decoded from JSON as `T`, with default
    /// options: see [`Runner::run_json`].
    pub async fn run_json<T, F, Fut>(self, handler: F) -> Result<RunMetrics>
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(T, ConsumedRecord) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.runner().run_json(handler).await
    }
}

impl Runner {
    /// Sets the options.
    pub fn config(mut self, config: RunnerConfig) -> Self {
        self.config = config;
        self
    }

    /// Skips records whose `key` was processed before, using `dedup` (share one
    /// [`Deduplicator`] between runners of a process so a successor skips its predecessor's
    /// work). Default: no deduplication.
    pub fn dedup(mut self, dedup: Deduplicator, key: DedupKey) -> Self {
        self.dedup = Some((dedup, key));
        self
    }

    /// The producer that writes dead letters. Default: a new producer of the consumer's
    /// client.
    pub fn producer(mut self, producer: Producer) -> Self {
        self.producer = Some(producer);
        self
    }

    /// A handle to stop the run and read its counters.
    pub fn handle(&self) -> RunHandle {
        self.handle.clone()
    }

    /// Runs `handler(record)` for every record until shutdown; returns the final counters.
    ///
    /// A consumer closed elsewhere ends the run normally; the error returned is that of the
    /// final commit / leave (`Consumer::close`), or, with [`DlqFailurePolicy::Stop`], the
    /// error of a dead letter that could not be written for good.
    pub async fn run<F, Fut>(self, handler: F) -> Result<RunMetrics>
    where
        F: Fn(ConsumedRecord) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.run_process(Plain(handler)).await
    }

    /// Runs `handler(value, record)` for every record whose value decodes from JSON as `T`;
    /// one that does not is dead-lettered (or dropped, per
    /// [`RunnerConfig::decode_errors`]) without calling the handler.
    pub async fn run_json<T, F, Fut>(self, handler: F) -> Result<RunMetrics>
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(T, ConsumedRecord) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.run_process(Json(handler, PhantomData)).await
    }

    async fn run_process<P: Process>(self, process: P) -> Result<RunMetrics> {
        let Runner {
            consumer,
            config,
            dedup,
            producer,
            handle,
        } = self;
        consumer.track_processed_manually();
        let breaker = Arc::new(CircuitBreaker::new(config.breaker.clone()));
        let _ = handle.shared.breaker.set(Arc::clone(&breaker));
        let producer = producer.unwrap_or_else(|| consumer.client().producer());
        let eos = if config.exactly_once {
            producer.init_transactions(EOS_TIMEOUT).await?;
            producer.begin_transaction()?;
            Some(Eos {
                producer: producer.clone(),
                base: HashMap::new(),
                generation: None,
                mixed: false,
            })
        } else {
            None
        };
        let mut router = DeadLetterRouter::new(
            producer,
            config.dlq_topic_template.clone(),
            config.dlq_retry.clone(),
        );
        if config.dlq_create_topic {
            router = router.create_missing_topics(
                consumer.client().clone(),
                config.dlq_topic_partitions,
                config.dlq_topic_replication,
            );
        }
        let signal_task = config.shutdown_on_signal.then(|| {
            let h = handle.clone();
            tokio::spawn(async move {
                crate::consumer::shutdown_signal().await;
                tracing::info!("shutdown signal: stopping the runner");
                h.shutdown();
            })
        });
        let ctx = Arc::new(Ctx {
            process,
            dedup,
            router,
            breaker: Arc::clone(&breaker),
            sem: Semaphore::new(config.concurrency.max(1)),
            shared: Arc::clone(&handle.shared),
            config: config.clone(),
            gate: eos.as_ref().map(|_| tokio::sync::RwLock::new(())),
        });
        let mut dispatcher = Dispatcher {
            consumer: &consumer,
            ctx,
            slots: HashMap::new(),
            tasks: JoinSet::new(),
            eos,
        };
        let mut result = dispatcher.run_loop(&config).await;
        // Graceful end: no new record starts; in-flight handlers finish.
        handle.shutdown();
        dispatcher.close_senders();
        while dispatcher.tasks.join_next().await.is_some() {}
        dispatcher.sync_handled();
        if dispatcher.eos.is_some() {
            // The last transaction: what the handlers finished commits with its offsets.
            let last = if result.is_ok() {
                dispatcher.commit_transaction(false).await
            } else {
                dispatcher.abort_transaction().await
            };
            result = result.and(last);
        }
        let close = consumer.close().await;
        if let Some(t) = signal_task {
            t.abort();
        }
        let metrics = handle.metrics();
        tracing::info!(?metrics, "runner stopped");
        let fatal = handle
            .shared
            .fatal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(e) = fatal {
            return Err(e);
        }
        result.and(close).map(|()| metrics)
    }
}

/// What the partition tasks share.
struct Ctx<P> {
    process: P,
    dedup: Option<(Deduplicator, DedupKey)>,
    router: DeadLetterRouter,
    breaker: Arc<CircuitBreaker>,
    sem: Semaphore,
    shared: Arc<RunShared>,
    config: RunnerConfig,
    /// Exactly-once mode: held (read) by each record's processing, and (write) by the
    /// transaction's commit, so a commit sees no record half processed.
    gate: Option<tokio::sync::RwLock<()>>,
}

/// Time limit of each transactional call of the exactly-once mode.
const EOS_TIMEOUT: Duration = Duration::from_secs(60);

/// The exactly-once mode's transaction.
struct Eos {
    producer: Producer,
    /// Per partition, the offset the open transaction's records start at: committed by the
    /// last transaction, or where this runner started the partition. An aborted transaction
    /// is processed again from here.
    base: HashMap<TopicPartition, i64>,
    /// The group generation the open transaction's records were polled in.
    generation: Option<i32>,
    /// Records of more than one generation are in the open transaction.
    mixed: bool,
}

impl<P> Ctx<P> {
    fn stopping(&self) -> bool {
        *self.shared.stop.borrow()
    }
}

/// One assigned partition's task, seen from the run loop.
struct Slot {
    /// `None` once shutting down.
    tx: Option<mpsc::UnboundedSender<Vec<ConsumedRecord>>>,
    /// Records sent to the task and not finished.
    backlog: Arc<AtomicUsize>,
    /// Next offset after the last record handled (-1: none yet).
    handled: Arc<AtomicI64>,
    /// Set when the partition was revoked: the task drops what it has not started.
    revoked: Arc<AtomicBool>,
    /// Next offset to hand to the task (records before it were handed already).
    dispatched: i64,
}

struct Dispatcher<'a, P> {
    consumer: &'a Consumer,
    ctx: Arc<Ctx<P>>,
    slots: HashMap<TopicPartition, Slot>,
    tasks: JoinSet<()>,
    eos: Option<Eos>,
}

impl<P: Process> Dispatcher<'_, P> {
    async fn run_loop(&mut self, config: &RunnerConfig) -> Result<()> {
        let mut stop = self.ctx.shared.stop.subscribe();
        let mut last_commit = Instant::now();
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            self.sync_handled();
            if last_commit.elapsed() >= config.commit_interval {
                if self.eos.is_some() {
                    self.commit_transaction(true).await?;
                } else if let Err(e) = self.consumer.commit_processed().await {
                    tracing::warn!(error = %e, "committing processed offsets failed; retried at the next interval");
                }
                last_commit = Instant::now();
            }
            self.update_pauses(config);
            let batch = tokio::select! {
                b = self.consumer.poll(Duration::from_millis(100)) => b,
                _ = stop.wait_for(|s| *s) => return Ok(()),
            };
            match batch {
                Ok(batch) => self.dispatch(batch),
                Err(Error::Closed(_)) => return Ok(()),
                // The group will not take this member back (fenced, not authorized, ...).
                Err(e) if crate::consumer::is_fatal_group_error(&e) => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "poll failed; polling again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Exactly-once mode: waits until no record is in progress, then commits the open
    /// transaction with the offsets after the records handled in it (or aborts it and rewinds
    /// when the group rebalanced meanwhile or the commit failed); begins the next one when
    /// `begin_next`. Only a fatal error (fenced) ends the run.
    async fn commit_transaction(&mut self, begin_next: bool) -> Result<()> {
        let ctx = Arc::clone(&self.ctx);
        let Some(gate) = &ctx.gate else {
            return Ok(());
        };
        let _no_record_in_progress = gate.write().await;
        let Some(eos) = &self.eos else { return Ok(()) };
        let offsets: Vec<(TopicPartition, i64)> = self
            .slots
            .iter()
            .filter_map(|(tp, s)| {
                let handled = s.handled.load(Ordering::Acquire);
                (handled >= 0 && eos.base.get(tp).is_none_or(|b| handled > *b))
                    .then(|| (tp.clone(), handled))
            })
            .collect();
        let metadata = self.consumer.group_metadata();
        let assignment = self.consumer.assignment();
        // A partition of this transaction that is no longer ours may be processed by its new
        // owner from the last commit: committing our outputs for it would repeat them.
        let lost = offsets
            .iter()
            .any(|(tp, _)| !assignment.iter().any(|a| a == tp));
        let rebalanced =
            lost || eos.mixed || eos.generation.is_some_and(|g| g != metadata.generation_id);
        let producer = eos.producer.clone();
        let outcome = if rebalanced {
            Err(Error::Transaction(
                "the group rebalanced during the transaction".into(),
            ))
        } else {
            let sent = if offsets.is_empty() {
                Ok(())
            } else {
                producer
                    .send_offsets_to_transaction(offsets.iter().cloned(), &metadata, EOS_TIMEOUT)
                    .await
            };
            match sent {
                Ok(()) => producer.commit_transaction(EOS_TIMEOUT).await,
                Err(e) => Err(e),
            }
        };
        match outcome {
            Ok(()) => {
                let eos = self.eos.as_mut().expect("checked");
                eos.base.extend(offsets);
            }
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "exactly-once: the transaction failed; aborting it, its records are processed again");
                producer.abort_transaction(EOS_TIMEOUT).await?;
                self.rewind();
            }
        }
        let eos = self.eos.as_mut().expect("checked");
        eos.generation = None;
        eos.mixed = false;
        if begin_next {
            producer.begin_transaction()?;
        }
        Ok(())
    }

    /// Exactly-once mode, the run ends with an error: the open transaction is aborted.
    async fn abort_transaction(&mut self) -> Result<()> {
        match &self.eos {
            Some(eos) => eos.producer.abort_transaction(EOS_TIMEOUT).await,
            None => Ok(()),
        }
    }

    /// After an abort: every partition's task is dropped and its position goes back to where
    /// the aborted transaction started, so those records are processed again.
    fn rewind(&mut self) {
        let Some(eos) = &self.eos else { return };
        for (tp, slot) in self.slots.drain() {
            slot.revoked.store(true, Ordering::Release);
            if let Some(&base) = eos.base.get(&tp) {
                if let Err(e) = self.consumer.seek(&tp.topic, tp.partition, base) {
                    tracing::debug!(partition = ?tp, error = %e, "rewind: partition no longer assigned");
                }
            }
        }
    }

    /// Hands each partition's run of records to its task, in the order polled.
    fn dispatch(&mut self, mut batch: Vec<ConsumedRecord>) {
        if batch.is_empty() {
            return;
        }
        if let Some(eos) = &mut self.eos {
            let generation = self.consumer.group_metadata().generation_id;
            match eos.generation {
                None => eos.generation = Some(generation),
                Some(g) if g != generation => eos.mixed = true,
                Some(_) => {}
            }
        }
        // Split into runs of one partition (poll returns whole chunks, one partition each;
        // a partition may have several chunks in one batch). Split from the end so that
        // every record moves at most once, then send the runs in poll order.
        let mut runs = Vec::new();
        while !batch.is_empty() {
            let last = batch.len() - 1;
            let (t, p) = (&batch[last].topic, batch[last].partition);
            let mut start = last;
            while start > 0 && batch[start - 1].partition == p && batch[start - 1].topic == *t {
                start -= 1;
            }
            runs.push(if start == 0 {
                std::mem::take(&mut batch)
            } else {
                batch.split_off(start)
            });
        }
        for run in runs.into_iter().rev() {
            self.send_run(run);
        }
    }

    fn send_run(&mut self, mut run: Vec<ConsumedRecord>) {
        let tp = TopicPartition::new(Arc::clone(&run[0].topic), run[0].partition);
        let slot = match self.slots.get_mut(&tp) {
            Some(s) if s.tx.as_ref().is_some_and(|t| !t.is_closed()) => s,
            _ => {
                let slot = self.spawn_slot(run[0].offset);
                if let Some(eos) = &mut self.eos {
                    // The partition (re)starts here: from its committed offset.
                    eos.base.insert(tp.clone(), run[0].offset);
                }
                self.slots.insert(tp.clone(), slot);
                self.slots.get_mut(&tp).expect("just inserted")
            }
        };
        // Records handed over before (a rebalance gave the partition back from its last
        // commit) are not handled twice by this runner.
        if run[0].offset < slot.dispatched {
            let from = slot.dispatched;
            run.retain(|r| r.offset >= from);
            if run.is_empty() {
                return;
            }
        }
        slot.dispatched = run[run.len() - 1].offset + 1;
        slot.backlog.fetch_add(run.len(), Ordering::Relaxed);
        if let Some(tx) = &slot.tx {
            let _ = tx.send(run);
        }
    }

    fn spawn_slot(&mut self, first: i64) -> Slot {
        let (tx, rx) = mpsc::unbounded_channel();
        let slot = Slot {
            tx: Some(tx),
            backlog: Arc::new(AtomicUsize::new(0)),
            handled: Arc::new(AtomicI64::new(-1)),
            revoked: Arc::new(AtomicBool::new(false)),
            dispatched: first,
        };
        self.tasks.spawn(partition_task(
            Arc::clone(&self.ctx),
            rx,
            Arc::clone(&slot.backlog),
            Arc::clone(&slot.handled),
            Arc::clone(&slot.revoked),
        ));
        slot
    }

    /// Tells the consumer what the tasks finished (one lock for all partitions). Not in the
    /// exactly-once mode: there the offsets commit with the transaction, never by the
    /// consumer (revoke and close then commit nothing).
    fn sync_handled(&self) {
        if self.eos.is_some() {
            return;
        }
        let marks: Vec<(TopicPartition, i64)> = self
            .slots
            .iter()
            .filter_map(|(tp, s)| {
                let h = s.handled.load(Ordering::Acquire);
                (h >= 0).then(|| (tp.clone(), h))
            })
            .collect();
        if !marks.is_empty() {
            self.consumer.mark_processed(marks);
        }
    }

    /// Shutdown: drops the senders so that idle tasks end (busy ones end after their
    /// in-flight record); their `handled` counters stay readable.
    fn close_senders(&mut self) {
        for s in self.slots.values_mut() {
            s.tx = None;
        }
    }

    /// Pauses partitions whose task is far behind, and all while the breaker is open;
    /// resumes the others. Drops the tasks of partitions no longer assigned.
    fn update_pauses(&mut self, config: &RunnerConfig) {
        let assignment = self.consumer.assignment();
        let assigned: HashSet<&TopicPartition> = assignment.iter().collect();
        self.slots.retain(|tp, s| {
            let keep = assigned.contains(tp);
            if !keep {
                s.revoked.store(true, Ordering::Release);
            }
            keep
        });
        let open = self.ctx.breaker.state() != BreakerState::Closed;
        let paused: HashSet<TopicPartition> = self.consumer.paused().into_iter().collect();
        let mut to_pause = Vec::new();
        let mut to_resume = Vec::new();
        for tp in &assignment {
            let behind = self.slots.get(tp).is_some_and(|s| {
                s.backlog.load(Ordering::Relaxed) >= config.max_pending_per_partition
            });
            let want = open || behind;
            match (want, paused.contains(tp)) {
                (true, false) => to_pause.push((&*tp.topic, tp.partition)),
                (false, true) => to_resume.push((&*tp.topic, tp.partition)),
                _ => {}
            }
        }
        if !to_pause.is_empty() {
            tracing::debug!(partitions = to_pause.len(), breaker_open = open, "pausing");
            let _ = self.consumer.pause(&to_pause);
        }
        if !to_resume.is_empty() {
            tracing::debug!(partitions = to_resume.len(), "resuming");
            let _ = self.consumer.resume(&to_resume);
        }
    }
}

/// How one record ended.
enum Outcome {
    /// Handled, skipped as a duplicate, dropped or dead-lettered: its offset may be committed.
    Done,
    /// Shutdown came first: not committed, delivered again later.
    Abandoned,
}

async fn partition_task<P: Process>(
    ctx: Arc<Ctx<P>>,
    mut rx: mpsc::UnboundedReceiver<Vec<ConsumedRecord>>,
    backlog: Arc<AtomicUsize>,
    handled: Arc<AtomicI64>,
    revoked: Arc<AtomicBool>,
) {
    let mut stop = ctx.shared.stop.subscribe();
    while let Some(chunk) = rx.recv().await {
        let n = chunk.len();
        for record in &chunk {
            if ctx.stopping() {
                return;
            }
            if revoked.load(Ordering::Acquire) {
                break;
            }
            // Exactly-once mode: no commit while this record is processed; a rewind may have
            // come while waiting for a commit to end.
            let _in_transaction = match &ctx.gate {
                Some(gate) => Some(gate.read().await),
                None => None,
            };
            if revoked.load(Ordering::Acquire) || ctx.stopping() {
                break;
            }
            match handle_one(&ctx, record, &mut stop).await {
                Outcome::Done => handled.store(record.offset + 1, Ordering::Release),
                Outcome::Abandoned => return,
            }
        }
        backlog.fetch_sub(n, Ordering::Relaxed);
    }
}

async fn handle_one<P: Process>(
    ctx: &Ctx<P>,
    record: &ConsumedRecord,
    stop: &mut watch::Receiver<bool>,
) -> Outcome {
    let counters = &ctx.shared.counters;
    let mut claim = None;
    if let Some((dedup, key)) = &ctx.dedup {
        if let Some(key) = key.of(record) {
            loop {
                match dedup.check_and_mark(key.clone()) {
                    Check::Claimed(c) => {
                        claim = Some(c);
                        break;
                    }
                    Check::Duplicate => {
                        counters.duplicates.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(topic = %record.topic, partition = record.partition, offset = record.offset, "duplicate skipped");
                        return Outcome::Done;
                    }
                    Check::InProgress => {
                        // Another partition's task holds the key: wait for its outcome.
                        if ctx.stopping() {
                            return Outcome::Abandoned;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        }
    }
    let mut schedule = None;
    let mut attempt = 0u32;
    let (error, attempts) = loop {
        attempt += 1;
        let permit = tokio::select! {
            p = ctx.breaker.acquire() => p,
            _ = stop.wait_for(|s| *s) => return Outcome::Abandoned,
        };
        let result = {
            let Ok(_slot) = ctx.sem.acquire().await else {
                return Outcome::Abandoned;
            };
            let fut = match ctx.process.call(record) {
                Ok(f) => f,
                Err(decode) => {
                    drop(permit);
                    if ctx.config.decode_errors == DecodeErrorPolicy::Drop {
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(topic = %record.topic, partition = record.partition, offset = record.offset, error = %decode, "undecodable record dropped");
                        return Outcome::Done;
                    }
                    break (decode, 0);
                }
            };
            match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(r) => r,
                Err(panic) => Err(HandlerError::permanent(format!(
                    "handler panicked: {}",
                    panic_message(&panic)
                ))),
            }
        };
        match result {
            Ok(()) => {
                permit.success();
                if let Some(c) = claim {
                    c.complete();
                }
                counters.processed.fetch_add(1, Ordering::Relaxed);
                return Outcome::Done;
            }
            Err(HandlerError::Permanent(e)) => {
                permit.failure();
                break (format!("permanent: {e}"), attempt);
            }
            Err(HandlerError::Retriable(e)) => {
                permit.failure();
                let s = schedule.get_or_insert_with(|| ctx.config.retry.backoff.schedule());
                let delay = if attempt >= ctx.config.retry.max_attempts {
                    None
                } else {
                    s.next_backoff()
                };
                let Some(delay) = delay else {
                    tracing::error!(topic = %record.topic, partition = record.partition, offset = record.offset, attempts = attempt, error = %e, "handler retries exhausted; dead-lettering");
                    break (
                        format!("retriable, gave up after {attempt} attempts: {e}"),
                        attempt,
                    );
                };
                counters.retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    topic = %record.topic,
                    partition = record.partition,
                    offset = record.offset,
                    attempt,
                    delay_ms = delay.as_millis() as u64,
                    error = %e,
                    "handler failed, retrying"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.wait_for(|s| *s) => return Outcome::Abandoned,
                }
            }
        }
    };
    // Failed for good: release the key (a redelivery is processed), dead-letter the record.
    if let Some(c) = claim {
        c.release();
    }
    let stop = || ctx.stopping();
    let on_retry = |_: &Error| {
        counters.dlq_failures.fetch_add(1, Ordering::Relaxed);
    };
    match ctx
        .router
        .send(record, &error, attempts, &stop, &on_retry)
        .await
    {
        Ok(d) => {
            counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(topic = %record.topic, partition = record.partition, offset = record.offset, dlq = %d.topic, error = %error, "record dead-lettered");
            Outcome::Done
        }
        Err(Error::Closed(_)) => Outcome::Abandoned,
        Err(e) => {
            counters.dlq_permanent.fetch_add(1, Ordering::Relaxed);
            ctx.breaker.on_failure();
            match ctx.config.dlq_permanent_failure {
                DlqFailurePolicy::Skip => {
                    counters.dlq_skipped.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(topic = %record.topic, partition = record.partition, offset = record.offset, error = %e, "dead letter could not be written; record skipped (DlqFailurePolicy::Skip)");
                    Outcome::Done
                }
                DlqFailurePolicy::Stop => {
                    tracing::error!(topic = %record.topic, partition = record.partition, offset = record.offset, error = %e, "dead letter could not be written; stopping the run (DlqFailurePolicy::Stop)");
                    ctx.shared
                        .fatal
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(e);
                    ctx.shared.stop.send_replace(true);
                    Outcome::Abandoned
                }
            }
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic".to_string()
    }
}
