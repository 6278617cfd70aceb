//! The run's counters: [`RunMetrics`] (a snapshot) and the atomics behind it.

use std::sync::atomic::AtomicU64;

use crate::breaker::BreakerState;

#[allow(unused_imports)] // named by the docs
use super::{DecodeErrorPolicy, DlqFailurePolicy, RunHandle};

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
    /// Records handed to the partitions' tasks and not finished yet, as of the run loop's
    /// last pass (bounded by [`RunnerConfig::max_pending`](super::RunnerConfig::max_pending)
    /// plus one poll).
    pub pending: u64,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) processed: AtomicU64,
    pub(super) duplicates: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) dead_lettered: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) dlq_failures: AtomicU64,
    pub(super) dlq_permanent: AtomicU64,
    pub(super) dlq_skipped: AtomicU64,
    pub(super) pending: AtomicU64,
}
