//! The auto-commit task (`enable.auto.commit`): every `auto.commit.interval.ms` it commits
//! what was processed and not yet committed.

use std::sync::Arc;
use std::time::Duration;

use super::{offsets, GroupMember};

/// Commits what was processed every `every`, until the consumer stops the task.
pub(super) async fn run(member: Arc<GroupMember>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let offsets = member.shared.lock().uncommitted_processed();
        if let Err(e) = offsets::commit(&member, offsets, false).await {
            tracing::warn!(error = %e, "auto-commit failed");
        }
    }
}
