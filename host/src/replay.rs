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
use crate::progress::{HumanCount, Progress, Silent, Unit};
use crate::rule::Rule;
use crate::rule::WasmRule;
use crate::shutdown::Shutdown;
use crate::source::{Message, Source, SourceError};
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

/// How much a source holds, which progress counts reading toward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceSize {
    /// JSON lines of this many bytes (a file): reading is counted in bytes.
    Bytes(u64),
    /// This many records (Kafka: end offsets less first offsets; compaction may leave fewer).
    Records(u64),
    /// Not known (stdin): reading counts events, toward no total.
    Unknown,
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
    replay_with_progress(
        rule,
        source,
        config,
        store,
        rebuild,
        &Silent,
        SourceSize::Unknown,
    )
    .await
}

/// [`replay`], reporting to `progress`: the stage `reading` counts what is read of the
/// source's `size` (bytes, or events), then `comparing` counts keys compared (and written,
/// with `rebuild`).
pub async fn replay_with_progress<Src: Source, S: Store>(
    rule: WasmRule,
    source: &mut Src,
    config: PipelineConfig,
    store: &S,
    rebuild: bool,
    progress: &dyn Progress,
    size: SourceSize,
) -> Result<ReplayReport, ReplayError> {
    let stamp = rule.info().stamp();
    let mut pipeline = Pipeline::new(rule, MemoryStore::new(), MemoryDeadLetters::new(), config);
    let mut counted = Counted {
        source,
        progress,
        bytes: matches!(size, SourceSize::Bytes(_)),
        events: 0,
    };
    match size {
        SourceSize::Bytes(total) => progress.stage("reading", Unit::Bytes, Some(total)),
        SourceSize::Records(total) => {
            progress.stage("reading", Unit::Items("events"), Some(total));
        }
        SourceSize::Unknown => progress.stage("reading", Unit::Items("events"), None),
    }
    pipeline.run(&mut counted, Shutdown::never()).await?;
    let replayed = pipeline.store().snapshot();
    progress.stage(
        if rebuild { "rebuilding" } else { "comparing" },
        Unit::Items("keys"),
        Some(replayed.len() as u64),
    );
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
        progress.advance(chunk.len() as u64);
    }
    Ok(report)
}

/// A source whose reads are reported to a [`Progress`], batch by batch.
struct Counted<'a, Src> {
    source: &'a mut Src,
    progress: &'a dyn Progress,
    /// Count bytes (lines) rather than events.
    bytes: bool,
    events: u64,
}

impl<Src: Source> Source for Counted<'_, Src> {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Message>, SourceError> {
        // Counted once the inner read completed: a dropped read loses nothing and counts
        // nothing, and the inner source delivers its messages later.
        let batch = self.source.next_batch(max).await?;
        self.events += batch.len() as u64;
        if self.bytes {
            // Each line and its newline: what the reader consumed, but for blank lines and
            // carriage returns, so the count may end a little short of the file's size.
            let read: usize = batch
                .iter()
                .map(|message| message.payload.as_ref().map_or(0, Vec::len) + 1)
                .sum();
            self.progress.advance(read as u64);
            self.progress
                .note(format_args!("{} events", HumanCount(self.events)));
        } else {
            self.progress.advance(batch.len() as u64);
        }
        Ok(batch)
    }

    fn generation(&self) -> u64 {
        self.source.generation()
    }

    async fn ack(&mut self, batch: &[Message]) -> Result<(), SourceError> {
        self.source.ack(batch).await
    }

    async fn hold(&mut self) {
        self.source.hold().await;
    }
}
