//! The idempotent producer's state: producer id and epoch (InitProducerId), the generation
//! that ties per-partition sequence numbers to them, KIP-360 recovery and fatal errors.
//!
//! Sequence numbers live with each partition's queue (`accumulator`); this module holds what
//! all partitions share. A *generation* starts each time a producer id / epoch is installed:
//! a partition whose batches carry an older generation's sequences re-numbers them from 0
//! before sending them again (after the old generation's batches in flight came back).
//!
//! Recovery (KIP-360): OUT_OF_ORDER_SEQUENCE_NUMBER, UNKNOWN_PRODUCER_ID or
//! INVALID_PRODUCER_EPOCH for a partition's *first* unacknowledged batch mean the broker's
//! view of the producer no longer matches ours; the producer asks for the next epoch of the
//! same producer id (InitProducerId v3+ with the current id and epoch) and, where the broker
//! refuses that (tansu 0.6.0 answers UNKNOWN_SERVER_ERROR), for a new producer id. The same
//! errors for a later batch only say that an earlier one failed: that batch is simply resent
//! after it. Errors the protocol makes fatal (PRODUCER_FENCED, CLUSTER_AUTHORIZATION_FAILED,
//! TRANSACTIONAL_ID_AUTHORIZATION_FAILED) stop the producer: every later send fails with that
//! error.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use kafka_protocol::messages::{InitProducerIdRequest, ProducerId};

use super::batch::ProducerStamp;
use crate::error::{Error, Result};
use crate::reconnect::{self, ReconnectPolicy, RetryHook};
use crate::wire::Cluster;

/// Kafka error codes the idempotent producer treats specially.
pub(crate) mod codes {
    use crate::error_code::ErrorCode;

    /// Errors after which the producer must not send again: CLUSTER_AUTHORIZATION_FAILED (no
    /// IdempotentWrite permission), TRANSACTIONAL_ID_AUTHORIZATION_FAILED, PRODUCER_FENCED.
    pub(crate) fn is_fatal(code: i16) -> bool {
        matches!(
            ErrorCode::from_code(code),
            ErrorCode::ClusterAuthorizationFailed
                | ErrorCode::TransactionalIdAuthorizationFailed
                | ErrorCode::ProducerFenced
        )
    }

    /// Errors that mean the broker's sequence state differs from ours (KIP-360).
    pub(crate) fn is_sequence_error(code: i16) -> bool {
        matches!(
            ErrorCode::from_code(code),
            ErrorCode::OutOfOrderSequenceNumber
                | ErrorCode::UnknownProducerId
                | ErrorCode::InvalidProducerEpoch
        )
    }

    /// DUPLICATE_SEQUENCE_NUMBER: the broker has the batch already, which is success.
    pub(crate) fn is_duplicate(code: i16) -> bool {
        ErrorCode::from_code(code) == ErrorCode::DuplicateSequenceNumber
    }
}

/// The producer id and epoch in use, and the generation they started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Current {
    pub(crate) generation: u64,
    pub(crate) producer_id: i64,
    pub(crate) epoch: i16,
    /// The producer is transactional: its batches are marked so.
    pub(crate) transactional: bool,
}

/// The sequence of one batch: its first record's number under a generation's id and epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sequence {
    pub(crate) generation: u64,
    pub(crate) producer_id: i64,
    pub(crate) epoch: i16,
    pub(crate) base: i32,
    pub(crate) transactional: bool,
}

impl Sequence {
    /// The header fields for this sequence.
    pub(crate) fn stamp(&self) -> ProducerStamp {
        ProducerStamp {
            producer_id: self.producer_id,
            epoch: self.epoch,
            base_sequence: self.base,
            transactional: self.transactional,
        }
    }

    /// The sequence `records` further on (same generation).
    pub(crate) fn plus(&self, records: i32) -> Sequence {
        Sequence {
            base: add_sequence(self.base, records),
            ..*self
        }
    }
}

/// `base + n` as Kafka counts sequences: wrapping to 0 after `i32::MAX`.
pub(crate) fn add_sequence(base: i32, n: i32) -> i32 {
    ((i64::from(base) + i64::from(n)) % (i64::from(i32::MAX) + 1)) as i32
}

#[derive(Debug, Default)]
struct State {
    /// `None` while no id is known (before the first InitProducerId, during a reset).
    current: Option<(i64, i16)>,
    generation: u64,
    /// An InitProducerId is under way.
    initializing: bool,
    /// The id and epoch to bump (KIP-360) at the next InitProducerId.
    bump_from: Option<(i64, i16)>,
    /// Ids or epochs installed after the first.
    resets: u64,
}

/// Shared by the producer's handles and its sender.
#[derive(Debug, Default)]
pub(crate) struct Idempotence {
    state: Mutex<State>,
    fatal: OnceLock<Error>,
    /// Set for the transactional producer: its batches are marked transactional, and its
    /// producer id comes from `init_transactions`, never from the sender.
    transactional: bool,
}

impl Idempotence {
    /// The state of a transactional producer (see `transactional`).
    pub(crate) fn transactional() -> Self {
        Idempotence {
            transactional: true,
            ..Idempotence::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The id and epoch to stamp batches with; `None` while there is none.
    pub(crate) fn current(&self) -> Option<Current> {
        let s = self.lock();
        s.current.map(|(producer_id, epoch)| Current {
            generation: s.generation,
            producer_id,
            epoch,
            transactional: self.transactional,
        })
    }

    /// When an InitProducerId is needed and none runs: marks one as running and returns the
    /// id and epoch to bump (`Some(None)`: ask for a new id).
    pub(crate) fn start_init(&self) -> Option<Option<(i64, i16)>> {
        if self.fatal.get().is_some() || self.transactional {
            return None;
        }
        let mut s = self.lock();
        if s.current.is_some() || s.initializing {
            return None;
        }
        s.initializing = true;
        Some(s.bump_from.take())
    }

    /// A new id or epoch: a new generation starts.
    pub(crate) fn installed(&self, producer_id: i64, epoch: i16) {
        let mut s = self.lock();
        s.current = Some((producer_id, epoch));
        if s.generation > 0 {
            s.resets += 1;
        }
        s.generation += 1;
        s.initializing = false;
        s.bump_from = None;
    }

    /// The InitProducerId gave up (not fatally); the next send tries again with a new id.
    pub(crate) fn init_failed(&self) {
        let mut s = self.lock();
        s.initializing = false;
        s.bump_from = None;
    }

    /// The broker's state for `(producer_id, epoch)` differs from ours: stop sending and get
    /// the next epoch. A request for an id already replaced is ignored.
    pub(crate) fn reset(&self, producer_id: i64, epoch: i16) {
        let mut s = self.lock();
        if s.current == Some((producer_id, epoch)) {
            tracing::warn!(
                producer_id,
                epoch,
                "idempotent producer: broker and producer disagree on sequences; bumping the epoch (KIP-360)"
            );
            s.current = None;
            s.bump_from = Some((producer_id, epoch));
        }
    }

    /// Ids or epochs installed after the first.
    pub(crate) fn resets(&self) -> u64 {
        self.lock().resets
    }

    /// Marks the producer failed for good (the first fatal error wins).
    pub(crate) fn set_fatal(&self, e: Error) {
        if self.fatal.get().is_none() {
            tracing::error!(error = %e, "idempotent producer failed fatally; every later send fails");
        }
        let _ = self.fatal.set(e);
    }

    /// The fatal error, once there is one.
    pub(crate) fn fatal(&self) -> Option<&Error> {
        self.fatal.get()
    }
}

/// Asks a broker for a producer id: the next epoch of `bump_from` (KIP-360, InitProducerId
/// v3+) or, when there is none, the broker is older, or it refuses the bump, a new id. Each
/// attempt is bounded by `timeout`; retriable errors are retried under `policy`.
pub(crate) async fn init_producer_id(
    cluster: &Cluster,
    policy: &ReconnectPolicy,
    hook: Option<&RetryHook>,
    timeout: Duration,
    bump_from: Option<(i64, i16)>,
) -> Result<(i64, i16)> {
    if let Some(from) = bump_from {
        match request(cluster, policy, hook, timeout, Some(from)).await {
            Ok(Some(id)) => return Ok(id),
            Ok(None) => {}
            Err(e) if e.kafka_code().is_some_and(|c| codes::is_fatal(c.code())) => return Err(e),
            Err(e) => tracing::warn!(
                producer_id = from.0,
                epoch = from.1,
                error = %e,
                "the broker refused the epoch bump; asking for a new producer id"
            ),
        }
    }
    request(cluster, policy, hook, timeout, None)
        .await
        .map(|id| id.expect("a new id is asked for at any version"))
}

/// One InitProducerId under the retry policy. `Ok(None)`: a bump was asked for, but the
/// broker's version (< 3) cannot bump.
async fn request(
    cluster: &Cluster,
    policy: &ReconnectPolicy,
    hook: Option<&RetryHook>,
    timeout: Duration,
    bump_from: Option<(i64, i16)>,
) -> Result<Option<(i64, i16)>> {
    let operation = if bump_from.is_some() {
        "InitProducerId (epoch bump)"
    } else {
        "InitProducerId"
    };
    reconnect::retry(policy, hook, &(), operation, |_| async move {
        let attempt = async {
            let conn = cluster.any_broker().await?;
            let version = conn.version_for::<InitProducerIdRequest>(Some(4))?;
            let (id, epoch) = match bump_from {
                Some(_) if version < 3 => return Ok(None),
                Some(from) => from,
                None => (-1, -1),
            };
            let request = InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_transaction_timeout_ms(i32::MAX)
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(epoch);
            let response = conn.send_version(&request, version).await?;
            if response.error_code != 0 {
                return Err(Error::broker(
                    response.error_code,
                    operation,
                    Some(format!("producer id {id}, epoch {epoch}")),
                ));
            }
            tracing::info!(
                producer_id = response.producer_id.0,
                epoch = response.producer_epoch,
                "idempotent producer: producer id assigned"
            );
            Ok(Some((response.producer_id.0, response.producer_epoch)))
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                operation: operation.to_string(),
                after: timeout,
            }),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_wrap_after_i32_max() {
        assert_eq!(add_sequence(5, 10), 15);
        assert_eq!(add_sequence(i32::MAX, 1), 0);
        assert_eq!(add_sequence(i32::MAX - 1, 5), 3);
    }

    #[test]
    fn a_reset_bumps_the_current_id_once_and_starts_a_generation() {
        let i = Idempotence::default();
        assert_eq!(i.start_init(), Some(None));
        assert_eq!(i.start_init(), None, "one InitProducerId at a time");
        i.installed(7, 0);
        let first = i.current().unwrap();
        i.reset(7, 1); // not the current epoch: stale, ignored
        assert_eq!(i.current(), Some(first));
        i.reset(7, 0);
        assert_eq!(i.current(), None);
        assert_eq!(i.start_init(), Some(Some((7, 0))));
        i.installed(7, 1);
        assert!(i.current().unwrap().generation > first.generation);
        i.set_fatal(Error::broker(90, "produce", None));
        assert!(i.fatal().is_some());
        i.reset(7, 1);
        assert_eq!(
            i.start_init(),
            None,
            "no InitProducerId after a fatal error"
        );
    }
}
