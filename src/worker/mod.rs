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

mod config;
mod dispatcher;
mod metrics;
mod partition_task;

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use serde::de::DeserializeOwned;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

pub use config::{DecodeErrorPolicy, DlqFailurePolicy, RetryPolicy, RunnerConfig};
pub use metrics::RunMetrics;

use crate::breaker::{BreakerState, CircuitBreaker};
use crate::consumer::Consumer;
use crate::dedup::{DedupKey, Deduplicator};
use crate::dlq::DeadLetterRouter;
use crate::error::{Error, Result};
use crate::handler::{HandlerError, Json, Plain, Process};
use crate::producer::Producer;
use crate::record::ConsumedRecord;
use dispatcher::{Dispatcher, Eos, EOS_TIMEOUT};
use metrics::Counters;
use partition_task::TaskContext;

/// What a run's handle, loop and partition tasks share: the stop switch, the counters, the
/// breaker and the error that stopped the run on its own.
struct RunControl {
    counters: Counters,
    /// Why the run stopped on its own ([`DlqFailurePolicy::Stop`]); `run` returns it.
    fatal: std::sync::Mutex<Option<Error>>,
    breaker: OnceLock<Arc<CircuitBreaker>>,
    stop: watch::Sender<bool>,
}

/// Stops a run and reads its counters; cheap to clone.
#[derive(Clone)]
pub struct RunHandle {
    control: Arc<RunControl>,
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
        self.control.stop.send_replace(true);
    }

    /// Whether shutdown was asked for.
    pub fn is_shutting_down(&self) -> bool {
        *self.control.stop.borrow()
    }

    /// The counters now.
    pub fn metrics(&self) -> RunMetrics {
        let c = &self.control.counters;
        let (breaker_state, breaker_opened) = match self.control.breaker.get() {
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
            pending: c.pending.load(Ordering::Relaxed),
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
                control: Arc::new(RunControl {
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
        let _ = handle.control.breaker.set(Arc::clone(&breaker));
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
        let ctx = Arc::new(TaskContext {
            process,
            dedup,
            router,
            breaker: Arc::clone(&breaker),
            sem: Semaphore::new(config.concurrency.max(1)),
            control: Arc::clone(&handle.control),
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
            .control
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
