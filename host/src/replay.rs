//! `converge replay`: a rule folded from scratch over recorded events (a JSON-lines file, or
//! Kafka topics from their first retained offset to their current end), compared key by key
//! with the stored states — and, on request, written over them.
//!
//! Rebuilding is needed when a rule changes its *ranking* (which of two states is newer), not
//! merely its validation: the stored state of a key is the old rule's fold, and folding new
//! events onto it with the new rule is not in general the new rule's fold of all events. The
//! procedure is in the README ("Changing a rule's ranking").

use serde::Serialize;

use crate::dead_letter::MemoryDeadLetters;
use crate::entity::State;
use crate::pipeline::{Pipeline, PipelineConfig, PipelineError};
use crate::rule::Rule;
use crate::rule::WasmRule;
use crate::source::Source;
use crate::store::{MemoryStore, Store, StoreError, Write, WriteOutcome};

/// Keys loaded from the store per round trip.
const CHUNK: usize = 500;

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Folding the recorded events failed (reading the source, most likely).
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// Loading or writing the store compared with failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One key whose replayed state is not the stored one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyDifference {
    /// The key.
    pub key: String,
    /// What the store holds (`None`: nothing).
    pub stored: Option<State>,
    /// The rule stamp on the stored state.
    pub stored_by: Option<String>,
    /// What the replayed rule folds the recorded events to.
    pub replayed: State,
}

/// What a replay found, and did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// The replayed rule's stamp.
    pub rule: String,
    /// Messages read from the source.
    pub messages: u64,
    /// Messages that would be dead-lettered (undecodable, rejected, ...).
    pub dead_letters: usize,
    /// Keys the recorded events touch.
    pub keys: usize,
    /// Keys whose stored state equals the replayed one.
    pub same: usize,
    /// Keys whose stored state is not the replayed one, in key order.
    pub differences: Vec<KeyDifference>,
    /// Keys written with their replayed state (with `rebuild`).
    pub rebuilt: usize,
    /// Keys written by someone else between the comparison and the rebuild: not rebuilt;
    /// replay again.
    pub conflicts: Vec<String>,
}

/// Folds everything `source` holds through `rule` and compares with `store`; with `rebuild`,
/// writes each differing key's replayed state (compare-and-set on the revision compared, so a
/// concurrent write is never overwritten).
pub async fn replay<Src: Source, S: Store>(
    rule: WasmRule,
    source: &mut Src,
    config: PipelineConfig,
    store: &S,
    rebuild: bool,
) -> Result<ReplayReport, ReplayError> {
    let stamp = rule.info().stamp();
    let mut pipeline = Pipeline::new(rule, MemoryStore::new(), MemoryDeadLetters::new(), config);
    pipeline.run(source, std::future::pending()).await?;
    let replayed = pipeline.store().snapshot();
    let mut report = ReplayReport {
        rule: stamp.clone(),
        messages: pipeline.stats().messages,
        dead_letters: pipeline.dead_letters().letters().len(),
        keys: replayed.len(),
        same: 0,
        differences: Vec::new(),
        rebuilt: 0,
        conflicts: Vec::new(),
    };
    for chunk in replayed.chunks(CHUNK) {
        let keys: Vec<String> = chunk.iter().map(|s| s.state.key.clone()).collect();
        let stored = store.inspect(&keys).await?;
        let mut writes = Vec::new();
        for (replayed, stored) in chunk.iter().zip(stored) {
            if stored.as_ref().is_some_and(|s| s.state == replayed.state) {
                report.same += 1;
                continue;
            }
            writes.push(Write {
                key: replayed.state.key.clone(),
                expected_revision: stored.as_ref().map_or(0, |s| s.revision),
                expected_writer: stored.as_ref().map_or(0, |s| s.writer),
                writer: crate::store::new_writer_id(),
                state: replayed.state.clone(),
                rule: stamp.clone(),
                position: "replay".to_owned(),
            });
            report.differences.push(KeyDifference {
                key: replayed.state.key.clone(),
                stored_by: stored.as_ref().map(|s| s.rule.clone()),
                stored: stored.map(|s| s.state),
                replayed: replayed.state.clone(),
            });
        }
        if rebuild && !writes.is_empty() {
            for (write, outcome) in writes.iter().zip(store.write(&writes).await?) {
                match outcome {
                    WriteOutcome::Written { .. } => report.rebuilt += 1,
                    WriteOutcome::Conflict { .. } => report.conflicts.push(write.key.clone()),
                }
            }
        }
    }
    Ok(report)
}
