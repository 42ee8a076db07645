//! The sequential fallback: what a batch settles its unfinished keys on after a refused or
//! failed write in the window (see `flight`). Each key is decided on its current state (cache
//! or load), written with one compare-and-set, and a key that lost a race is decided again on
//! the state the refusal answered, until every key is written or decided against the latest
//! state.
//!
//! A store that fails is waited out ([`Context::retry`](super::context::Context::retry)); a
//! write whose answer was lost is harmless to redo, because the compare-and-set makes a write
//! that did land a newer revision to decide against.

use super::batch::Batch;
use super::context::Context;
use super::group::KeyEvents;
use super::{Pipeline, PipelineError, fold, state};
use crate::backoff::Backoff;
use crate::rule::Rule;
use crate::store::{Store, StoreError, Write, WriteOutcome};
use crate::telemetry::events::KeysContended;
use crate::telemetry::{Operation, Service};

impl<R: Rule, S: Store, D> Pipeline<R, S, D> {
    /// Settles every key of `groups` completely: decided, written, the outcome of each event
    /// tallied (rejections and rule failures dead-lettered), and the cache told what was
    /// stored.
    ///
    /// `unsure`: a write of the batch failed before this, so it may have landed unconfirmed
    /// (not yet on the replicas `store.wait_replicas` asks for); deciding again finds it stored
    /// and writes nothing, so the store is synced before the batch can be acknowledged.
    pub(super) async fn settle(
        &mut self,
        batch: &mut Batch,
        groups: Vec<KeyEvents>,
        mut unsure: bool,
    ) -> Result<(), PipelineError> {
        let store = &*self.store;
        let context = &self.context;
        let max_write_attempts = self.config.max_write_attempts;
        let mut pending = groups;
        let mut attempt = 0;
        // Keys still conflicting after `max_write_attempts` are waited out rather than failed:
        // a failure would leave the batch unacknowledged and the restart would meet the same
        // keys. Backing off lets the other writer's batch land; what conflicts is decided again
        // on the state it stored, so nothing is lost and nothing moves backward.
        let mut contended: Option<Backoff> = None;
        while !pending.is_empty() {
            attempt += 1;
            if attempt > max_write_attempts {
                match contended.as_mut() {
                    Some(backoff) => {
                        context
                            .wait_quietly(Service::Store, Operation::Contended, backoff)
                            .await?
                    }
                    None => {
                        let keys: Vec<&str> =
                            pending.iter().map(|group| group.key.as_str()).collect();
                        context.metrics.emit(KeysContended {
                            keys: &keys,
                            attempts: max_write_attempts,
                        });
                        let mut backoff = context.backoff();
                        context.sleep(Service::Store, backoff.next_wait()).await?;
                        contended = Some(backoff);
                    }
                }
            }
            let currents =
                state::current_states(batch, &mut pending, &mut self.cache, store, context).await?;
            let folded = fold::fold(
                &mut self.rule,
                &mut pending,
                currents,
                self.config.rule_retries,
            );
            let mut writes = Vec::new();
            let mut written = Vec::new();
            for (slot, fold) in folded.iter().enumerate() {
                if let Some(write) =
                    fold.write(&pending[slot].key, batch, pending[slot].last_index())
                {
                    writes.push(write);
                    written.push(slot);
                }
            }
            let Some(outcomes) = write(store, &writes, context).await? else {
                // The store failed mid-write: some writes may have landed. Forget what is
                // cached, reload and decide again; the compare-and-set keeps a landed write from
                // being applied twice.
                self.cache.clear();
                attempt -= 1;
                unsure = true;
                continue;
            };
            let mut conflicted = vec![false; pending.len()];
            for ((slot, write), outcome) in written.into_iter().zip(writes).zip(outcomes) {
                match outcome {
                    WriteOutcome::Written { revision } => {
                        batch.tally.writes += 1;
                        self.cache
                            .remember(write.key.clone(), Some(write.landed(revision)));
                    }
                    WriteOutcome::Conflict { current } => {
                        batch.tally.conflicts += 1;
                        conflicted[slot] = true;
                        // Decided again on what the refusal answered, without a load.
                        self.cache.remember(write.key, current);
                    }
                }
            }
            let mut retry = Vec::new();
            for ((group, fold), conflicted) in pending.into_iter().zip(folded).zip(conflicted) {
                if conflicted {
                    retry.push(group);
                } else {
                    batch.tally(fold.outcomes);
                }
            }
            pending = retry;
        }
        if unsure {
            // Whatever landed unconfirmed is on the replicas before the batch is acknowledged.
            context
                .retry(Service::Store, Operation::Sync, async || store.sync().await)
                .await?;
        }
        Ok(())
    }
}

/// Writes, or `None` when the store failed and the caller must reload before trying again
/// (after the backoff has been waited).
async fn write(
    store: &impl Store,
    writes: &[Write],
    context: &Context,
) -> Result<Option<Vec<WriteOutcome>>, PipelineError> {
    if writes.is_empty() {
        return Ok(Some(Vec::new()));
    }
    let asked = std::time::Instant::now();
    match store.write(writes).await {
        Ok(outcomes) => {
            context
                .metrics
                .record_store_call(Operation::Write, asked.elapsed());
            Ok(Some(outcomes))
        }
        Err(error) if error.is_transient() => {
            let mut backoff = context.backoff();
            context
                .wait(Service::Store, Operation::Write, &error, &mut backoff)
                .await?;
            Ok(None)
        }
        // A key's value turned unreadable after it was loaded: the reload sets it aside.
        Err(StoreError::Unreadable(_)) => Ok(None),
        Err(error) => Err(error.into()),
    }
}
