//! The run loop: polls, hands each partition's records to its task, commits what the tasks
//! handled, pauses partitions that are far behind (and all while the breaker is open).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::partition_task::{partition_task, TaskContext};
use super::RunnerConfig;
use crate::breaker::BreakerState;
use crate::consumer::{Consumer, TopicPartition};
use crate::error::{Error, Result};
use crate::handler::Process;
use crate::producer::Producer;
use crate::record::ConsumedRecord;

/// Time limit of each transactional call of the exactly-once mode.
pub(super) const EOS_TIMEOUT: Duration = Duration::from_secs(60);

/// The exactly-once mode's transaction.
pub(super) struct Eos {
    pub(super) producer: Producer,
    /// Per partition, the offset the open transaction's records start at: committed by the
    /// last transaction, or where this runner started the partition. An aborted transaction
    /// is processed again from here.
    pub(super) base: HashMap<TopicPartition, i64>,
    /// The group generation the open transaction's records were polled in.
    pub(super) generation: Option<i32>,
    /// Records of more than one generation are in the open transaction.
    pub(super) mixed: bool,
}

/// One assigned partition's task, seen from the run loop.
pub(super) struct PartitionSlot {
    /// `None` once shutting down.
    pub(super) tx: Option<mpsc::UnboundedSender<Vec<ConsumedRecord>>>,
    /// Records sent to the task and not finished.
    pub(super) backlog: Arc<AtomicUsize>,
    /// Next offset after the last record handled (-1: none yet).
    pub(super) handled: Arc<AtomicI64>,
    /// Set when the partition was revoked: the task drops what it has not started.
    pub(super) revoked: Arc<AtomicBool>,
    /// Next offset to hand to the task (records before it were handed already).
    pub(super) dispatched: i64,
}

pub(super) struct Dispatcher<'a, P> {
    pub(super) consumer: &'a Consumer,
    pub(super) ctx: Arc<TaskContext<P>>,
    pub(super) slots: HashMap<TopicPartition, PartitionSlot>,
    pub(super) tasks: JoinSet<()>,
    pub(super) eos: Option<Eos>,
}

impl<P: Process> Dispatcher<'_, P> {
    pub(super) async fn run_loop(&mut self, config: &RunnerConfig) -> Result<()> {
        let mut stop = self.ctx.control.stop.subscribe();
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
            if self.update_pauses(config) {
                // As many records wait for handlers as `max_pending` lets: take no more until
                // they go down (the consumer keeps what it prefetched).
                self.consumer.poll_without_records();
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(10)) => {}
                    _ = stop.wait_for(|s| *s) => return Ok(()),
                }
                continue;
            }
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
    pub(super) async fn commit_transaction(&mut self, begin_next: bool) -> Result<()> {
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
    pub(super) async fn abort_transaction(&mut self) -> Result<()> {
        match &self.eos {
            Some(eos) => eos.producer.abort_transaction(EOS_TIMEOUT).await,
            None => Ok(()),
        }
    }

    /// After an abort: every partition's task is dropped and its position goes back to where
    /// the aborted transaction started, so those records are processed again.
    pub(super) fn rewind(&mut self) {
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
    pub(super) fn dispatch(&mut self, mut batch: Vec<ConsumedRecord>) {
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

    pub(super) fn send_run(&mut self, mut run: Vec<ConsumedRecord>) {
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

    pub(super) fn spawn_slot(&mut self, first: i64) -> PartitionSlot {
        let (tx, rx) = mpsc::unbounded_channel();
        let slot = PartitionSlot {
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
    pub(super) fn sync_handled(&self) {
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
    pub(super) fn close_senders(&mut self) {
        for s in self.slots.values_mut() {
            s.tx = None;
        }
    }

    /// Pauses partitions whose task is far behind, and all while the breaker is open; resumes
    /// the others; drops the tasks of partitions no longer assigned. Returns whether the
    /// records waiting for handlers reached `max_pending`.
    pub(super) fn update_pauses(&mut self, config: &RunnerConfig) -> bool {
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
        let pending: usize = self
            .slots
            .values()
            .map(|s| s.backlog.load(Ordering::Relaxed))
            .sum();
        self.ctx
            .control
            .counters
            .pending
            .store(pending as u64, Ordering::Relaxed);
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
        pending >= config.max_pending
    }
}
