//! The transactional producer (`transactional.id`): its state, and the requests to the
//! transaction coordinator and the group coordinator (`wire::txn`), retried under the
//! client's one `ReconnectPolicy`.
//!
//! States: *uninitialized* → `init_transactions` (InitProducerId with the transactional id:
//! the broker fences any older instance with the same id and ends its open transaction) →
//! *ready* → `begin_transaction` → *in a transaction* → `commit_transaction` (flush, then
//! EndTxn commit) or `abort_transaction` (queued records fail, records in flight are awaited,
//! then EndTxn abort) → *ready*.
//!
//! Partitions join the transaction before their first batch is sent: the sender's drain asks
//! [`Transactions::may_send`] per partition; a partition not yet added is *requested* and
//! waits; the sender sends one AddPartitionsToTxn for all requested partitions at a time
//! (retried on CONCURRENT_TRANSACTIONS, COORDINATOR_LOAD_IN_PROGRESS, NOT_COORDINATOR and
//! connection errors), and sends the batches once they are added. AddPartitionsToTxn and
//! EndTxn never overlap (`serial`).
//!
//! Errors: fencing (PRODUCER_FENCED, INVALID_PRODUCER_EPOCH, which for a transactional
//! producer means a newer instance took over and is reported as PRODUCER_FENCED as Java does)
//! and TRANSACTIONAL_ID_AUTHORIZATION_FAILED are fatal ([`Error::is_fatal`]): the producer
//! refuses every later send and transactional call. Any other failure inside a transaction
//! (a record given up, a partition or the offsets that could not be added) is *abortable*:
//! sends are refused and `commit_transaction` returns the error until `abort_transaction`,
//! after which the producer goes on. When a batch failed after it may have been written, the
//! partition's sequence numbers no longer match the broker's: the abort then also takes a new
//! epoch (InitProducerId again), so the next transaction numbers from 0.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use super::accumulator::Accumulator;
use super::delivery;
use super::idempotence::Idempotence;
use crate::consumer::{ConsumerGroupMetadata, TopicPartition};
use crate::coordinator::Coordinator;
use crate::error::{Error, ErrorCode, Result};
use crate::reconnect::{self, ReconnectPolicy, RetryHook, RetryObserver};
use crate::wire::txn::{self, TxnGroup, TxnProducer};
use crate::wire::{BrokerConnection, Cluster};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Uninitialized,
    Ready,
    InTransaction,
    Committing,
    Aborting,
}

/// A partition's place in the ongoing transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Joined {
    /// Has records; waits for the next AddPartitionsToTxn.
    Requested,
    /// In an AddPartitionsToTxn under way.
    Pending,
    /// Added: its batches may be sent.
    Added,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// The error that dooms the ongoing transaction: it can only be aborted.
    abortable: Option<Error>,
    /// A batch failed after it may have been written: the abort takes a new epoch.
    dirty: bool,
    /// Partitions or offsets were added on the coordinator: EndTxn is needed.
    started: bool,
    partitions: HashMap<(Arc<str>, i32), Joined>,
    /// An AddPartitionsToTxn task runs.
    adding: bool,
}

/// Retries what the transaction coordinator asks to be retried besides the usual retriable
/// errors: CONCURRENT_TRANSACTIONS (the previous transaction is still being completed).
struct TxnRetry;

impl RetryObserver for TxnRetry {
    fn is_retriable(&self, error: &Error) -> bool {
        error.is_retriable() || error.kafka_code() == Some(ErrorCode::ConcurrentTransactions)
    }
}

/// The transactional producer's state, shared by the producer's handles and its sender.
pub(crate) struct Transactions {
    id: String,
    timeout_ms: i32,
    cluster: Arc<Cluster>,
    policy: ReconnectPolicy,
    hook: Option<RetryHook>,
    idem: Arc<Idempotence>,
    acc: Arc<Accumulator>,
    state: Mutex<State>,
    /// Sends between their state check and their append: a commit or abort waits for them.
    appending: AtomicUsize,
    appended: Notify,
    /// The transaction coordinator's connection (found with FindCoordinator).
    conn: Mutex<Option<Arc<BrokerConnection>>>,
    /// Held across AddPartitionsToTxn, AddOffsetsToTxn, EndTxn and InitProducerId, so that
    /// none overlaps another.
    serial: tokio::sync::Mutex<()>,
    /// Group coordinators of the groups whose offsets were sent (their connections are kept
    /// for the next transaction).
    groups: Mutex<HashMap<String, Arc<Coordinator>>>,
}

impl std::fmt::Debug for Transactions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transactions")
            .field("transactional_id", &self.id)
            .field("phase", &self.lock().phase)
            .finish_non_exhaustive()
    }
}

/// Held by a send from its state check until its record is appended.
pub(crate) struct SendGuard(Arc<Transactions>);

impl Drop for SendGuard {
    fn drop(&mut self) {
        if self.0.appending.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.appended.notify_waiters();
        }
    }
}

/// Puts the phase back when a commit or abort ends early (error, timeout, dropped future).
struct Restore<'a> {
    txn: &'a Transactions,
    armed: bool,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.txn.lock().phase = Phase::InTransaction;
        }
    }
}

fn state_error(what: &str) -> Error {
    Error::Transaction(what.to_string())
}

async fn within<T>(
    operation: &str,
    timeout: Duration,
    work: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| {
            Err(Error::Timeout {
                operation: operation.to_string(),
                after: timeout,
            })
        })
}

impl Transactions {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: String,
        timeout: Duration,
        cluster: Arc<Cluster>,
        policy: ReconnectPolicy,
        hook: Option<RetryHook>,
        idem: Arc<Idempotence>,
        acc: Arc<Accumulator>,
    ) -> Self {
        Transactions {
            id,
            timeout_ms: timeout.as_millis().min(i32::MAX as u128) as i32,
            cluster,
            policy,
            hook,
            idem,
            acc,
            state: Mutex::new(State {
                phase: Phase::Uninitialized,
                abortable: None,
                dirty: false,
                started: false,
                partitions: HashMap::new(),
                adding: false,
            }),
            appending: AtomicUsize::new(0),
            appended: Notify::new(),
            conn: Mutex::new(None),
            serial: tokio::sync::Mutex::new(()),
            groups: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The transactional id (for produce requests).
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    fn check_fatal(&self) -> Result<()> {
        match self.idem.fatal() {
            Some(e) => Err(delivery::duplicate(e)),
            None => Ok(()),
        }
    }

    /// Sorts an error of a transactional request: fencing and authorization failures make the
    /// producer fail for good (INVALID_PRODUCER_EPOCH reads as PRODUCER_FENCED); returns the
    /// error to report.
    pub(crate) fn classify(&self, e: Error) -> Error {
        let e = match e {
            Error::Broker {
                code: ErrorCode::InvalidProducerEpoch,
                context,
                message,
            } => Error::Broker {
                code: ErrorCode::ProducerFenced,
                context,
                message: Some(format!(
                    "INVALID_PRODUCER_EPOCH: a newer producer with transactional.id {:?} took over{}",
                    self.id,
                    message.map(|m| format!(" ({m})")).unwrap_or_default()
                )),
            },
            other => other,
        };
        if e.is_fatal() {
            self.idem.set_fatal(delivery::duplicate(&e));
            self.acc.fail_queued(&e);
        }
        e
    }

    /// The current producer id and epoch for a request.
    fn who(&self) -> Result<TxnProducer<'_>> {
        let current = self
            .idem
            .current()
            .ok_or_else(|| state_error("no producer id: call init_transactions first"))?;
        Ok(TxnProducer {
            transactional_id: &self.id,
            producer_id: current.producer_id,
            epoch: current.epoch,
        })
    }

    async fn coordinator(&self) -> Result<Arc<BrokerConnection>> {
        {
            let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = conn.as_ref().filter(|c| !c.is_closed()) {
                return Ok(Arc::clone(c));
            }
        }
        let c = txn::find_coordinator(&self.cluster, &self.id).await?;
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&c));
        Ok(c)
    }

    /// Runs `f` on the transaction coordinator under the reconnect policy; a moved
    /// coordinator or a broken connection is looked up again.
    async fn on_coordinator<T, F, Fut>(&self, operation: &str, f: F) -> Result<T>
    where
        F: Fn(Arc<BrokerConnection>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let f = &f;
        reconnect::retry(
            &self.policy,
            self.hook.as_ref(),
            &TxnRetry,
            operation,
            |_| async move {
                let conn = self.coordinator().await?;
                let result = f(conn).await;
                if let Err(e) = &result {
                    if e.is_connection_error()
                        || matches!(
                            e.kafka_code(),
                            Some(ErrorCode::NotCoordinator | ErrorCode::CoordinatorNotAvailable)
                        )
                    {
                        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    }
                }
                result
            },
        )
        .await
    }

    /// InitProducerId with the transactional id, installed as the producer's id and epoch.
    async fn init_producer_id(&self) -> Result<()> {
        let (id, epoch) = self
            .on_coordinator("InitProducerId (transactional)", |conn| async move {
                txn::init_producer_id(&conn, &self.id, self.timeout_ms).await
            })
            .await?;
        tracing::info!(transactional_id = %self.id, producer_id = id, epoch, "transactional producer: producer id and epoch assigned");
        self.idem.installed(id, epoch);
        Ok(())
    }

    /// `init_transactions`.
    pub(crate) async fn init(&self, timeout: Duration) -> Result<()> {
        self.check_fatal()?;
        within("init_transactions", timeout, async {
            let _serial = self.serial.lock().await;
            if self.lock().phase != Phase::Uninitialized {
                return Err(state_error("init_transactions was called already"));
            }
            self.init_producer_id()
                .await
                .map_err(|e| self.classify(e))?;
            self.lock().phase = Phase::Ready;
            Ok(())
        })
        .await
    }

    /// `begin_transaction`.
    pub(crate) fn begin(&self) -> Result<()> {
        self.check_fatal()?;
        let mut s = self.lock();
        match s.phase {
            Phase::Ready => {
                s.phase = Phase::InTransaction;
                s.abortable = None;
                s.started = false;
                s.partitions.clear();
                Ok(())
            }
            Phase::Uninitialized => Err(state_error("begin_transaction before init_transactions")),
            _ => Err(state_error(
                "a transaction is open already: commit or abort it first",
            )),
        }
    }

    /// A send may go ahead: the producer is in a transaction that has not failed. The guard
    /// keeps a commit or abort waiting until the record is appended.
    pub(crate) fn enter_send(self: &Arc<Self>) -> Result<SendGuard> {
        self.appending.fetch_add(1, Ordering::SeqCst);
        let guard = SendGuard(Arc::clone(self));
        self.check_fatal()?;
        let s = self.lock();
        match s.phase {
            Phase::InTransaction => {}
            Phase::Uninitialized | Phase::Ready => {
                return Err(state_error(
                    "a transactional producer sends only inside a transaction: call begin_transaction first",
                ))
            }
            Phase::Committing | Phase::Aborting => {
                return Err(state_error(
                    "the transaction is being committed or aborted: begin the next one first",
                ))
            }
        }
        if let Some(e) = &s.abortable {
            return Err(state_error(&format!(
                "the transaction failed and must be aborted: {e}"
            )));
        }
        Ok(guard)
    }

    /// Waits until no send is between its state check and its append.
    async fn appends_done(&self) {
        loop {
            let done = self.appended.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.appending.load(Ordering::SeqCst) == 0 {
                return;
            }
            done.await;
        }
    }

    /// Asked by the sender's drain for each partition with records: whether its batches may
    /// be sent (it is in the transaction). A partition not yet in it is requested.
    pub(crate) fn may_send(&self, topic: &Arc<str>, partition: i32) -> bool {
        let mut s = self.lock();
        let key = (Arc::clone(topic), partition);
        match s.partitions.get(&key) {
            Some(Joined::Added) => true,
            Some(_) => false,
            None => {
                if matches!(s.phase, Phase::InTransaction | Phase::Committing) {
                    s.partitions.insert(key, Joined::Requested);
                }
                false
            }
        }
    }

    /// For the sender: an AddPartitionsToTxn for the requested partitions, when there are
    /// some and none runs.
    pub(crate) fn start_add(self: &Arc<Self>) -> Option<impl Future<Output = ()> + Send + 'static> {
        let mut s = self.lock();
        if s.adding || !s.partitions.values().any(|j| *j == Joined::Requested) {
            return None;
        }
        s.adding = true;
        Some(Arc::clone(self).add_partitions())
    }

    async fn add_partitions(self: Arc<Self>) {
        let _serial = self.serial.lock().await;
        let doomed = {
            let mut s = self.lock();
            let live = matches!(s.phase, Phase::InTransaction | Phase::Committing)
                && s.abortable.is_none()
                && self.idem.fatal().is_none();
            if live {
                None
            } else {
                s.partitions.retain(|_, j| *j == Joined::Added);
                s.adding = false;
                Some(s.abortable.clone())
            }
        };
        if let Some(abortable) = doomed {
            // Records of a doomed transaction are not sent: they fail with its error.
            if let Some(e) = abortable {
                self.acc.fail_queued(&e);
            }
            self.acc.wake_sender.notify_one();
            return;
        }
        let batch: Vec<(Arc<str>, i32)> = {
            let mut s = self.lock();
            s.partitions
                .iter_mut()
                .filter(|(_, j)| **j == Joined::Requested)
                .map(|(k, j)| {
                    *j = Joined::Pending;
                    k.clone()
                })
                .collect()
        };
        let mut topics: Vec<(Arc<str>, Vec<i32>)> = Vec::new();
        for (topic, partition) in &batch {
            match topics.iter_mut().find(|(t, _)| t == topic) {
                Some((_, ps)) => ps.push(*partition),
                None => topics.push((Arc::clone(topic), vec![*partition])),
            }
        }
        let topics = &topics;
        let result = match self.who() {
            Ok(who) => {
                self.on_coordinator("AddPartitionsToTxn", |conn| async move {
                    txn::add_partitions(&conn, who, topics).await
                })
                .await
            }
            Err(e) => Err(e),
        };
        let failed = {
            let mut s = self.lock();
            s.adding = false;
            match result {
                Ok(()) => {
                    for key in batch {
                        s.partitions.insert(key, Joined::Added);
                    }
                    s.started = true;
                    None
                }
                Err(e) => {
                    for key in &batch {
                        s.partitions.remove(key);
                    }
                    Some(e)
                }
            }
        };
        if let Some(e) = failed {
            let e = self.classify(e);
            tracing::error!(transactional_id = %self.id, error = %e, "adding partitions to the transaction failed");
            self.set_abortable(&e);
            self.acc.fail_queued(&e);
        }
        self.acc.wake_sender.notify_one();
    }

    fn set_abortable(&self, e: &Error) {
        if e.is_fatal() {
            return;
        }
        let mut s = self.lock();
        if s.abortable.is_none() && matches!(s.phase, Phase::InTransaction | Phase::Committing) {
            s.abortable = Some(delivery::duplicate(e));
        }
    }

    /// The sender gave a batch up: the transaction can only be aborted, and the abort takes a
    /// new epoch (the partition's sequence numbers may no longer match the broker's).
    pub(crate) fn batch_failed(&self, e: &Error) {
        self.lock().dirty = true;
        if !e.is_fatal() {
            self.set_abortable(e);
        }
        self.acc.fail_queued(e);
    }

    /// Whether the ongoing transaction can no longer commit (the sender gives failed batches
    /// up instead of retrying them).
    pub(crate) fn is_doomed(&self) -> bool {
        self.idem.fatal().is_some() || self.lock().abortable.is_some()
    }

    /// `commit_transaction`: waits for sends under way, flushes (`flush`), then EndTxn.
    pub(crate) async fn commit(
        &self,
        timeout: Duration,
        flush: impl Future<Output = ()>,
    ) -> Result<()> {
        self.check_fatal()?;
        {
            let mut s = self.lock();
            match s.phase {
                Phase::InTransaction => {}
                Phase::Committing | Phase::Aborting => {
                    return Err(state_error("a commit or abort is under way"))
                }
                _ => return Err(state_error("commit_transaction without begin_transaction")),
            }
            if let Some(e) = &s.abortable {
                return Err(delivery::duplicate(e));
            }
            s.phase = Phase::Committing;
        }
        let mut restore = Restore {
            txn: self,
            armed: true,
        };
        let result = within("commit_transaction", timeout, async {
            self.appends_done().await;
            flush.await;
            self.check_fatal()?;
            if let Some(e) = &self.lock().abortable {
                return Err(delivery::duplicate(e));
            }
            let _serial = self.serial.lock().await;
            if self.lock().started {
                let who = self.who()?;
                self.on_coordinator("EndTxn (commit)", |conn| async move {
                    txn::end_txn(&conn, who, true).await
                })
                .await
                .map_err(|e| self.classify(e))?;
            }
            Ok(())
        })
        .await;
        match result {
            Ok(()) => {
                restore.armed = false;
                self.finished();
                Ok(())
            }
            Err(e) => {
                // A timeout may be retried; any other failure dooms the transaction.
                if !matches!(e, Error::Timeout { .. }) {
                    self.set_abortable(&e);
                }
                Err(e)
            }
        }
    }

    /// `abort_transaction`: queued records fail, records in flight are awaited (`flush`),
    /// then EndTxn abort (and a new epoch when a batch failed).
    pub(crate) async fn abort(
        &self,
        timeout: Duration,
        flush: impl Future<Output = ()>,
    ) -> Result<()> {
        self.check_fatal()?;
        {
            let mut s = self.lock();
            match s.phase {
                Phase::InTransaction => {}
                Phase::Committing | Phase::Aborting => {
                    return Err(state_error("a commit or abort is under way"))
                }
                _ => return Err(state_error("abort_transaction without begin_transaction")),
            }
            s.phase = Phase::Aborting;
        }
        let mut restore = Restore {
            txn: self,
            armed: true,
        };
        let result = within("abort_transaction", timeout, async {
            self.appends_done().await;
            self.acc.deferred_appended().await;
            self.acc
                .fail_queued(&state_error("the transaction was aborted"));
            flush.await;
            self.check_fatal()?;
            let _serial = self.serial.lock().await;
            let (started, dirty) = {
                let s = self.lock();
                (s.started, s.dirty)
            };
            if started {
                let who = self.who()?;
                self.on_coordinator("EndTxn (abort)", |conn| async move {
                    txn::end_txn(&conn, who, false).await
                })
                .await
                .map_err(|e| self.classify(e))?;
            }
            if dirty {
                // Sequence numbers in doubt: a new epoch starts them from 0 again.
                self.init_producer_id()
                    .await
                    .map_err(|e| self.classify(e))?;
                self.lock().dirty = false;
            }
            Ok(())
        })
        .await;
        if result.is_ok() {
            restore.armed = false;
            self.finished();
        }
        result
    }

    /// The transaction ended (committed or aborted): ready for the next.
    fn finished(&self) {
        let mut s = self.lock();
        s.phase = Phase::Ready;
        s.abortable = None;
        s.started = false;
        s.partitions.clear();
    }

    /// `send_offsets_to_transaction`: AddOffsetsToTxn to the transaction coordinator, then
    /// TxnOffsetCommit to the group's coordinator with the member's generation and ids.
    pub(crate) async fn send_offsets(
        &self,
        offsets: Vec<(TopicPartition, i64)>,
        group: &ConsumerGroupMetadata,
        timeout: Duration,
    ) -> Result<()> {
        self.check_fatal()?;
        {
            let s = self.lock();
            if s.phase != Phase::InTransaction {
                return Err(state_error(
                    "send_offsets_to_transaction outside a transaction",
                ));
            }
            if let Some(e) = &s.abortable {
                return Err(state_error(&format!(
                    "the transaction failed and must be aborted: {e}"
                )));
            }
        }
        if offsets.is_empty() {
            return Ok(());
        }
        let offsets: Vec<(Arc<str>, i32, i64)> = offsets
            .into_iter()
            .map(|(tp, offset)| (Arc::from(&*tp.topic), tp.partition, offset))
            .collect();
        let result = within("send_offsets_to_transaction", timeout, async {
            let who = self.who()?;
            {
                let _serial = self.serial.lock().await;
                let group_id = &group.group_id;
                self.on_coordinator("AddOffsetsToTxn", |conn| async move {
                    txn::add_offsets(&conn, who, group_id).await
                })
                .await?;
                self.lock().started = true;
            }
            let target = TxnGroup {
                group_id: &group.group_id,
                generation_id: group.generation_id,
                member_id: &group.member_id,
                group_instance_id: group.group_instance_id.as_deref(),
            };
            let coordinator = Arc::clone(
                self.groups
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(group.group_id.clone())
                    .or_insert_with(|| {
                        Arc::new(Coordinator::new(Arc::clone(&self.cluster), &group.group_id))
                    }),
            );
            let (coordinator, offsets) = (&*coordinator, &offsets);
            reconnect::retry(
                &self.policy,
                self.hook.as_ref(),
                &TxnRetry,
                "TxnOffsetCommit",
                |_| async move {
                    let conn = coordinator.connection().await?;
                    let result = txn::txn_offset_commit(&conn, who, target, offsets).await;
                    if let Err(e) = &result {
                        if e.is_connection_error()
                            || matches!(
                                e.kafka_code(),
                                Some(
                                    ErrorCode::NotCoordinator | ErrorCode::CoordinatorNotAvailable
                                )
                            )
                        {
                            coordinator.forget();
                        }
                    }
                    result
                },
            )
            .await
        })
        .await;
        result.map_err(|e| {
            let e = self.classify(e);
            if !matches!(e, Error::Timeout { .. }) {
                self.set_abortable(&e);
            }
            e
        })
    }
}
