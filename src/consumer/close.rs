//! Closing a consumer: commit what was processed, revoke, leave the group, stop the tasks —
//! from [`Consumer::close`] or on SIGTERM / SIGINT ([`Consumer::close_on_shutdown_signal`]).

use std::sync::Arc;

use tokio::task::JoinHandle;

use super::{offsets, Consumer, GroupMember};
use crate::error::{Error, Result};

impl Consumer {
    /// Commits what was processed, leaves the group (static members stay, so a restart keeps
    /// their partitions) and stops the background tasks. Later polls return
    /// [`Error::Closed`]. Calling it again does nothing.
    ///
    /// When [`close_on_shutdown_signal`](Self::close_on_shutdown_signal) is closing the
    /// consumer already, waits until that close has committed and left, so a process that
    /// returns from `main` after `close` does not cut the LeaveGroup off.
    pub async fn close(&self) -> Result<()> {
        close_member(&self.member).await
    }

    /// Closes the consumer (commit, leave) when the process gets SIGTERM or SIGINT (Ctrl-C);
    /// polls then return [`Error::Closed`], so a poll loop ends cleanly.
    pub fn close_on_shutdown_signal(&self) -> JoinHandle<()> {
        let member = Arc::clone(&self.member);
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!(group = %member.coordinator.group(), "shutdown signal: closing consumer");
            if let Err(e) = close_member(&member).await {
                tracing::warn!(error = %e, "commit on shutdown failed");
            }
        })
    }
}

/// Commits what was processed, lets the membership task revoke and leave (waiting for it up
/// to twice the request timeout), and stops the other tasks. Runs once; a concurrent second
/// call waits for the first to finish and returns `Ok`.
async fn close_member(member: &GroupMember) -> Result<()> {
    let mut done = member.close_done.lock().await;
    if *done {
        return Ok(());
    }
    // With auto-commit, a clean close commits what the last poll returned too (as Java and
    // librdkafka do), so that a successor is not handed those records again.
    let auto_commit = member.client.config().consumer().enable_auto_commit
        && !member
            .callbacks
            .manual_processed
            .load(std::sync::atomic::Ordering::Relaxed);
    let processed = {
        let mut state = member.shared.lock();
        state.closed = true;
        if auto_commit {
            for p in state.partitions.values_mut() {
                if p.position > p.processed {
                    p.processed = p.position;
                }
            }
        }
        state.uncommitted_processed()
    };
    member.fetcher.stop();
    // Close has a deadline even when the coordinator never answers: the commit gets one
    // request timeout (its retries included), the LeaveGroup two below.
    let limit = member.client.config().request_timeout();
    let commit = tokio::time::timeout(limit, offsets::commit(member, processed, false))
        .await
        .unwrap_or_else(|_| {
            Err(Error::Timeout {
                operation: "commit on close".into(),
                after: limit,
            })
        });
    // Clear what revoke would commit again, then let the membership task leave.
    for p in member.shared.lock().partitions.values_mut() {
        p.processed = p.committed;
    }
    member.shared.membership_wakeup.notify_waiters();
    member.shared.data_ready.notify_waiters();
    let tasks = member
        .tasks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain(..)
        .collect::<Vec<_>>();
    let mut iter = tasks.into_iter();
    if let Some(membership) = iter.next() {
        let limit = member.client.config().request_timeout() * 2;
        let _ = tokio::time::timeout(limit, membership).await;
    }
    for t in iter {
        t.abort();
    }
    *done = true;
    commit
}

/// Resolves when the process receives SIGTERM or SIGINT (Ctrl-C elsewhere than Unix).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
