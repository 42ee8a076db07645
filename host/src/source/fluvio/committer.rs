//! One partition's committer: commits the partition's committable offset, the latest one
//! when several arrive while a commit is under way.

use std::sync::Arc;

use tokio::sync::watch;

use super::link::Link;
use crate::backoff::Backoff;

/// Commits what `acked` says until the source closes it, then commits the last value and
/// returns. A failed commit is retried after a backoff (the newest offset by then); nothing
/// is lost meanwhile, a restart only re-reads from the last committed offset.
pub(super) async fn commit_partition<L: Link>(
    mut link: L,
    topic: Arc<str>,
    partition: u32,
    mut acked: watch::Receiver<Option<i64>>,
    mut committed: Option<i64>,
    mut backoff: Backoff,
) {
    loop {
        let closed = acked.changed().await.is_err();
        loop {
            let Some(target) = *acked.borrow_and_update() else {
                break;
            };
            if committed.is_some_and(|committed| committed >= target) {
                break;
            }
            match link.commit(partition, target).await {
                Ok(()) => {
                    tracing::debug!(%topic, partition, offset = target, "committed");
                    committed = Some(target);
                    backoff.reset();
                }
                Err(error) => {
                    tracing::warn!(
                        %topic,
                        partition,
                        offset = target,
                        error = %error,
                        "commit failed; retrying after a backoff"
                    );
                    link.reset();
                    tokio::time::sleep(backoff.next_wait()).await;
                }
            }
        }
        if closed {
            return;
        }
    }
}
