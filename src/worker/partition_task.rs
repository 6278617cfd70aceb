//! One partition's task and the per-record state machine: dedup claim → breaker permit →
//! handler (panics caught) → retries with backoff → dead letter → "handled up to".

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backoff::backoff::Backoff;
use futures::FutureExt;
use tokio::sync::{mpsc, watch, Semaphore};

use super::{DecodeErrorPolicy, DlqFailurePolicy, RunControl, RunnerConfig};
use crate::breaker::CircuitBreaker;
use crate::dedup::{Check, DedupKey, Deduplicator};
use crate::dlq::DeadLetterRouter;
use crate::error::Error;
use crate::handler::{HandlerError, Process};
use crate::record::ConsumedRecord;

/// What the partition tasks share.
pub(super) struct TaskContext<P> {
    pub(super) process: P,
    pub(super) dedup: Option<(Deduplicator, DedupKey)>,
    pub(super) router: DeadLetterRouter,
    pub(super) breaker: Arc<CircuitBreaker>,
    pub(super) sem: Semaphore,
    pub(super) control: Arc<RunControl>,
    pub(super) config: RunnerConfig,
    /// Exactly-once mode: held (read) by each record's processing, and (write) by the
    /// transaction's commit, so a commit sees no record half processed.
    pub(super) gate: Option<tokio::sync::RwLock<()>>,
}

impl<P> TaskContext<P> {
    pub(super) fn stopping(&self) -> bool {
        *self.control.stop.borrow()
    }
}

/// How one record ended.
pub(super) enum Outcome {
    /// Handled, skipped as a duplicate, dropped or dead-lettered: its offset may be committed.
    Done,
    /// Shutdown came first: not committed, delivered again later.
    Abandoned,
}

pub(super) async fn partition_task<P: Process>(
    ctx: Arc<TaskContext<P>>,
    mut rx: mpsc::UnboundedReceiver<Vec<ConsumedRecord>>,
    backlog: Arc<AtomicUsize>,
    handled: Arc<AtomicI64>,
    revoked: Arc<AtomicBool>,
) {
    let mut stop = ctx.control.stop.subscribe();
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

pub(super) async fn handle_one<P: Process>(
    ctx: &TaskContext<P>,
    record: &ConsumedRecord,
    stop: &mut watch::Receiver<bool>,
) -> Outcome {
    let counters = &ctx.control.counters;
    let mut claim = None;
    if let Some((dedup, key)) = &ctx.dedup {
        if let Some(key) = key.of(record) {
            loop {
                match dedup.check_and_mark(&key) {
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
                    ctx.control
                        .fatal
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(e);
                    ctx.control.stop.send_replace(true);
                    Outcome::Abandoned
                }
            }
        }
    }
}

pub(super) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic".to_string()
    }
}
