//! One partition's committer: commits the partition's committable offset, the latest one
//! when several arrive while a commit is under way.

use std::sync::Arc;

use tokio::sync::watch;

use super::FluvioError;
use super::link::{COMMIT_READ_TIMEOUT, CommitRead, Link};
use crate::backoff::Backoff;
use crate::source::SourceError;

/// The first fetch size of a commit stream: enough for the producer's usual batches, small
/// enough not to ship megabytes of records just to commit one offset. It grows fourfold, up
/// to the cluster's cap, each time the stream yields nothing or begins past the offset (both
/// mean the fetch cut the record's batch).
pub(super) const COMMIT_FETCH_BYTES: i32 = 256 << 10;

/// How one commit ended.
enum Outcome {
    Committed,
    /// The offset no longer exists; the first one left is `next_available`.
    Evicted {
        next_available: i64,
    },
}

/// Commits what `acked` says until the source closes it, then commits the last value and
/// returns. A failed commit is retried after a backoff (the newest offset by then); nothing
/// is lost meanwhile, a restart only re-reads from the last committed offset. An offset that
/// retention removed before it could be committed is not retried: the next committable
/// offset past it is committed instead, when it comes.
pub(super) async fn commit_partition<L: Link>(
    mut link: L,
    topic: Arc<str>,
    partition: u32,
    mut acked: watch::Receiver<Option<i64>>,
    mut committed: Option<i64>,
    mut backoff: Backoff,
    fetch_cap: i32,
) {
    loop {
        let closed = acked.changed().await.is_err();
        loop {
            let Some(target) = *acked.borrow_and_update() else {
                break;
            };
            // `committed` is the last offset settled: committed, or found removed.
            if committed.is_some_and(|committed| committed >= target) {
                break;
            }
            match commit_one(&mut link, partition, target, fetch_cap).await {
                Ok(Outcome::Committed) => {
                    tracing::debug!(%topic, partition, offset = target, "committed");
                    committed = Some(target);
                    backoff.reset();
                }
                Ok(Outcome::Evicted { next_available }) => {
                    tracing::warn!(
                        %topic,
                        partition,
                        offset = target,
                        next_available,
                        "the offset to commit was removed by retention, so it cannot be \
                         committed; the next acknowledged offset past it will be (a restart \
                         before that reads from the offset committed before)"
                    );
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

/// Commits `target`, growing the commit stream's fetch while the record does not come out of
/// it whole (nothing within the wait, or the stream beginning past it).
async fn commit_one<L: Link>(
    link: &mut L,
    partition: u32,
    target: i64,
    fetch_cap: i32,
) -> Result<Outcome, SourceError> {
    let mut max_bytes = COMMIT_FETCH_BYTES.min(fetch_cap);
    loop {
        let read = link.commit(partition, target, max_bytes).await?;
        let grown = max_bytes.saturating_mul(4).min(fetch_cap);
        match read {
            CommitRead::Committed => return Ok(Outcome::Committed),
            CommitRead::Evicted { next_available } => {
                return Ok(Outcome::Evicted { next_available });
            }
            CommitRead::Mismatch { .. } | CommitRead::Nothing if grown > max_bytes => {
                tracing::debug!(
                    partition,
                    offset = target,
                    ?read,
                    max_bytes,
                    grown,
                    "the commit stream did not yield the record whole; asking with a larger fetch"
                );
                max_bytes = grown;
            }
            CommitRead::Mismatch { found } => {
                return Err(SourceError::Fluvio(FluvioError::CommitMismatch {
                    partition,
                    offset: target,
                    found,
                }));
            }
            CommitRead::Nothing => {
                return Err(SourceError::Fluvio(FluvioError::CommitTimeout {
                    partition,
                    offset: target,
                    waited: COMMIT_READ_TIMEOUT,
                }));
            }
        }
    }
}
