//! One batch through the data path: decode, enrich, coalesce, load, decide, write, dead-letter.
//!
//! Events of one key within a batch are folded through the rule locally (coalesced), starting
//! from the state loaded for the key, so a key is written at most once per batch. The write is
//! a compare-and-set on the revision the fold started from; on conflict the key is reloaded and
//! folded again. Decisions are asked in rounds — the first event of every key in one
//! `decide-batch` call, then the second of every key, and so on — so the per-call cost of the
//! rule is paid once per round rather than once per event.
//!
//! Nothing is dropped: an undecodable message, a rejected event or an event the rule fails on
//! is dead-lettered with its reason, and the batch is acknowledged only after its writes and
//! dead letters are.
//!
//! An unavailable store or dead-letter queue (an outage, a timeout, a reset) does not fail the
//! batch: the step is retried with exponential backoff until it succeeds or shutdown is asked
//! for. A write whose answer was lost is harmless to retry: the retry reloads the key, and the
//! compare-and-set makes a write that did land count as a newer revision to decide against.
//!
//! # Layout
//! - this module: [`Pipeline`], its configuration and the run loop;
//! - `decode`: message -> event by [`FieldMapping`];
//! - `enrich` (feature `http`): id-only message -> latest entity from the order-detail HTTP
//!   API ([`Enricher`]).

mod decode;
#[cfg(feature = "http")]
mod enrich;

pub use decode::{DecodeError, Decoded, FieldMapping, decode, decode_bytes};
#[cfg(feature = "http")]
pub use enrich::{EnrichError, EnrichSetupError, Enricher};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backoff::Backoff;
use crate::dead_letter::{DeadLetter, DeadLetterError, DeadLetterKind, DeadLetterSink};
use crate::entity::{Decision, DecisionKind, Event, State};
use crate::rule::{DecideError, Rule};
use crate::source::Message;
use crate::source::{Source, SourceError};
use crate::store::{Store, StoreError, Write, WriteOutcome};
use crate::telemetry::Metrics;
use crate::telemetry::events::{DeadLettered, Unavailable};

/// Pipeline settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// The most messages in one batch.
    pub batch_size: usize,
    /// How a message's fields map to an event.
    pub mapping: FieldMapping,
    /// How often a key is reloaded and decided again after losing a compare-and-set race
    /// before the batch fails (and, unacknowledged, is delivered again).
    pub max_write_attempts: u32,
    /// How often a failed decision is retried on a fresh rule instance before the event is
    /// dead-lettered.
    pub rule_retries: u32,
    /// The first wait after the store or the dead-letter queue was unavailable, in
    /// milliseconds; each further wait doubles, up to `max_backoff_ms`. Retries go on until
    /// the step succeeds or shutdown is asked for: the batch is never skipped.
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            batch_size: 512,
            mapping: FieldMapping::default(),
            max_write_attempts: 16,
            rule_retries: 1,
            backoff_ms: 50,
            max_backoff_ms: 5_000,
        }
    }
}

/// Why a batch could not be completed. The batch is not acknowledged; after a restart it is
/// delivered again, which the rule makes harmless.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("keys still conflicting after {attempts} attempts: {keys:?}")]
    Contended { attempts: u32, keys: Vec<String> },
    /// Shutdown was asked for while the batch waited for the store or dead-letter queue to
    /// come back; the batch is left unacknowledged.
    #[error("interrupted by shutdown while waiting for {0}")]
    Interrupted(&'static str),
}

/// Counters since the pipeline started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub batches: u64,
    pub messages: u64,
    /// Decisions by outcome, one per decided event.
    pub decisions: BTreeMap<DecisionKind, u64>,
    /// Dead letters by kind.
    pub dead_letters: BTreeMap<DeadLetterKind, u64>,
    /// States written (at most one per key per batch).
    pub writes: u64,
    /// Compare-and-set conflicts that made a key be decided again.
    pub conflicts: u64,
}

/// The data path, generic over its rule, store and dead-letter sink.
#[derive(Debug)]
pub struct Pipeline<R, S, D> {
    rule: R,
    store: S,
    dead_letters: D,
    config: PipelineConfig,
    stats: Stats,
    #[cfg(feature = "http")]
    enricher: Option<Enricher>,
    metrics: Arc<Metrics>,
    /// Becomes true when shutdown is asked for; ends waits for an unavailable store.
    stopping: Arc<tokio::sync::watch::Sender<bool>>,
}

/// The events of one key in a batch, in delivery order, with the index of their message.
struct KeyEvents {
    key: String,
    events: Vec<(usize, Event)>,
}

/// What folding one key's events produced.
struct Folded {
    start_revision: u64,
    changed: Option<State>,
    outcomes: Vec<(usize, Result<Decision, DecideError>)>,
}

impl<R: Rule, S: Store, D: DeadLetterSink> Pipeline<R, S, D> {
    pub fn new(rule: R, store: S, dead_letters: D, config: PipelineConfig) -> Self {
        Self {
            rule,
            store,
            dead_letters,
            config,
            stats: Stats::default(),
            #[cfg(feature = "http")]
            enricher: None,
            metrics: Arc::new(Metrics::new()),
            stopping: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }

    /// Reports every batch, decision and dead letter to `metrics` (shared with the admin
    /// endpoint); without it, the pipeline reports to a registry of its own.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Completes id-only messages by fetching their entity (see [`Enricher`]); without an
    /// enricher they are dead-lettered.
    #[cfg(feature = "http")]
    pub fn with_enricher(mut self, enricher: Enricher) -> Self {
        self.enricher = Some(enricher);
        self
    }

    /// The pipeline's settings.
    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    /// Counters since the pipeline started.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn dead_letters(&self) -> &D {
        &self.dead_letters
    }

    pub fn rule(&self) -> &R {
        &self.rule
    }

    /// Reads, processes and acknowledges batches until the source ends or `shutdown` resolves.
    /// A batch in progress when `shutdown` resolves is finished first — unless it is waiting
    /// for an unavailable store or dead-letter queue; then it is left unacknowledged, to be
    /// delivered again.
    pub async fn run<Src: Source>(
        &mut self,
        source: &mut Src,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), PipelineError> {
        let stopping = Arc::clone(&self.stopping);
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let batch = tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                batch = source.next_batch(self.config.batch_size) => batch?,
            };
            if batch.is_empty() {
                return Ok(());
            }
            let processed = {
                let mut processing = std::pin::pin!(self.process(&batch));
                tokio::select! {
                    biased;
                    result = &mut processing => result,
                    () = &mut shutdown => {
                        stopping.send_replace(true);
                        processing.await
                    }
                }
            };
            match processed {
                Ok(()) => source.ack(&batch).await?,
                Err(PipelineError::Interrupted(what)) => {
                    tracing::warn!(
                        waiting_for = what,
                        messages = batch.len(),
                        "shutdown while waiting; batch left unacknowledged"
                    );
                    return Ok(());
                }
                Err(error) => return Err(error),
            }
            if *stopping.borrow() {
                return Ok(());
            }
        }
    }

    /// Takes one batch through the data path. Returns once its writes and dead letters are
    /// acknowledged; the caller then acknowledges the batch to its source.
    pub async fn process(&mut self, batch: &[Message]) -> Result<(), PipelineError> {
        let started = std::time::Instant::now();
        let (writes_before, conflicts_before) = (self.stats.writes, self.stats.conflicts);
        let decisions_before = self.stats.decisions.clone();
        self.rule.before_batch();
        let stamp = self.rule.info().stamp();
        let mut letters = Vec::new();
        let mut decoded: Vec<(usize, Decoded)> = Vec::with_capacity(batch.len());
        for (index, message) in batch.iter().enumerate() {
            if let Some(lost) = &message.lost {
                letters.push(letter(
                    message,
                    DeadLetterKind::Lost,
                    lost.reason.clone(),
                    &stamp,
                ));
                continue;
            }
            match decode(&self.config.mapping, message) {
                Ok(event) => decoded.push((index, event)),
                Err(error) => {
                    letters.push(letter(
                        message,
                        DeadLetterKind::Undecodable,
                        error.to_string(),
                        &stamp,
                    ));
                }
            }
        }
        let fetched = self.enrich(&decoded).await;

        let mut groups: Vec<KeyEvents> = Vec::new();
        let mut group_of: HashMap<String, usize> = HashMap::new();
        for (index, decoded) in decoded {
            let message = &batch[index];
            let event = match decoded {
                Decoded::Event(event) => event,
                Decoded::IdOnly { key } => match fetched.get(&key) {
                    Some(Ok(event)) => event.clone(),
                    Some(Err(error)) => {
                        letters.push(letter(
                            message,
                            DeadLetterKind::NotEnriched,
                            error.to_string(),
                            &stamp,
                        ));
                        continue;
                    }
                    None => {
                        letters.push(letter(
                            message,
                            DeadLetterKind::NotEnriched,
                            format!("id-only message for key {key:?} and no enrichment configured"),
                            &stamp,
                        ));
                        continue;
                    }
                },
            };
            let group = *group_of.entry(event.key.clone()).or_insert_with(|| {
                groups.push(KeyEvents {
                    key: event.key.clone(),
                    events: Vec::new(),
                });
                groups.len() - 1
            });
            groups[group].events.push((index, event));
        }

        let mut pending: Vec<&KeyEvents> = groups.iter().collect();
        let mut attempt = 0;
        while !pending.is_empty() {
            attempt += 1;
            if attempt > self.config.max_write_attempts {
                return Err(PipelineError::Contended {
                    attempts: self.config.max_write_attempts,
                    keys: pending.iter().map(|g| g.key.clone()).collect(),
                });
            }
            let keys: Vec<String> = pending.iter().map(|g| g.key.clone()).collect();
            let loaded = self.load(&keys).await?;
            let folded = self.fold(&pending, loaded);
            let mut writes = Vec::new();
            let mut written_groups = Vec::new();
            for (slot, fold) in folded.iter().enumerate() {
                if let Some(state) = &fold.changed {
                    let group = pending[slot];
                    let last_index = group.events.last().map_or(0, |(index, _)| *index);
                    writes.push(Write {
                        key: group.key.clone(),
                        expected_revision: fold.start_revision,
                        state: state.clone(),
                        rule: stamp.clone(),
                        position: batch[last_index].position.to_string(),
                    });
                    written_groups.push(slot);
                }
            }
            let outcomes = match self.write(&writes).await? {
                Some(outcomes) => outcomes,
                // The store failed mid-write: some writes may have landed. Reload and decide
                // again; the compare-and-set keeps a landed write from being applied twice.
                None => {
                    attempt -= 1;
                    continue;
                }
            };
            let mut conflicted = vec![false; pending.len()];
            for (slot, outcome) in written_groups.into_iter().zip(outcomes) {
                match outcome {
                    WriteOutcome::Written { .. } => self.stats.writes += 1,
                    WriteOutcome::Conflict => {
                        self.stats.conflicts += 1;
                        conflicted[slot] = true;
                    }
                }
            }
            let mut retry = Vec::new();
            for ((group, fold), conflicted) in pending.into_iter().zip(folded).zip(conflicted) {
                if conflicted {
                    retry.push(group);
                    continue;
                }
                for (index, outcome) in fold.outcomes {
                    self.count(&batch[index], outcome, &stamp, &mut letters);
                }
            }
            pending = retry;
        }

        if !letters.is_empty() {
            self.send_dead_letters(&letters).await?;
            for letter in &letters {
                *self.stats.dead_letters.entry(letter.kind).or_default() += 1;
                self.metrics.emit(DeadLettered { letter });
            }
        }
        self.stats.batches += 1;
        self.stats.messages += batch.len() as u64;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as i64);
        for produced_at_ms in batch.iter().filter_map(|message| message.produced_at_ms) {
            self.metrics
                .record_stored_latency(now_ms.saturating_sub(produced_at_ms));
        }
        for (kind, count) in &self.stats.decisions {
            let before = decisions_before.get(kind).copied().unwrap_or(0);
            if *count > before {
                self.metrics.record_decisions(*kind, count - before);
            }
        }
        self.metrics.record_batch(
            batch.len(),
            self.stats.writes - writes_before,
            self.stats.conflicts - conflicts_before,
            started.elapsed(),
        );
        tracing::debug!(messages = batch.len(), dead_letters = letters.len(), took = ?started.elapsed(), "batch done");
        Ok(())
    }

    /// Fetches the entity of every distinct id-only key of the batch, if an enricher is set.
    #[cfg(feature = "http")]
    async fn enrich(
        &self,
        decoded: &[(usize, Decoded)],
    ) -> HashMap<String, Result<Event, EnrichError>> {
        let Some(enricher) = &self.enricher else {
            return HashMap::new();
        };
        let id_only = decoded.iter().filter_map(|(_, d)| match d {
            Decoded::IdOnly { key } => Some(key.clone()),
            Decoded::Event(_) => None,
        });
        let asked = Instant::now();
        let fetched = enricher.fetch_all(id_only, &self.config.mapping).await;
        if !fetched.is_empty() {
            self.metrics
                .record_enrichment(fetched.len(), asked.elapsed());
        }
        fetched
    }

    /// Without the `http` feature there is no enricher: id-only messages are dead-lettered.
    #[cfg(not(feature = "http"))]
    async fn enrich(
        &self,
        _decoded: &[(usize, Decoded)],
    ) -> HashMap<String, Result<Event, std::convert::Infallible>> {
        HashMap::new()
    }

    /// Loads `keys`, waiting out store outages.
    async fn load(
        &self,
        keys: &[String],
    ) -> Result<Vec<Option<crate::store::Stored>>, PipelineError> {
        let mut backoff = self.backoff();
        loop {
            let asked = Instant::now();
            match self.store.load(keys).await {
                Ok(loaded) => {
                    self.observe_store("load", asked);
                    return Ok(loaded);
                }
                Err(StoreError::Unavailable(reason)) => {
                    self.wait_out("store", "load", &reason, &mut backoff)
                        .await?;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Writes, or `None` when the store failed and the caller must reload before trying
    /// again (after the backoff has been waited).
    async fn write(&self, writes: &[Write]) -> Result<Option<Vec<WriteOutcome>>, PipelineError> {
        let asked = Instant::now();
        match self.store.write(writes).await {
            Ok(outcomes) => {
                self.observe_store("write", asked);
                Ok(Some(outcomes))
            }
            Err(StoreError::Unavailable(reason)) => {
                let mut backoff = self.backoff();
                self.wait_out("store", "write", &reason, &mut backoff)
                    .await?;
                Ok(None)
            }
            Err(error) => Err(error.into()),
        }
    }

    async fn send_dead_letters(&self, letters: &[DeadLetter]) -> Result<(), PipelineError> {
        let mut backoff = self.backoff();
        loop {
            match self.dead_letters.send(letters).await {
                Ok(()) => return Ok(()),
                Err(DeadLetterError(reason)) => {
                    self.wait_out("dead-letter queue", "send", &reason, &mut backoff)
                        .await?;
                }
            }
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(
            Duration::from_millis(self.config.backoff_ms),
            Duration::from_millis(self.config.max_backoff_ms),
        )
    }

    fn observe_store(&self, operation: &'static str, asked: Instant) {
        self.metrics.record_store_call(operation, asked.elapsed());
    }

    /// Reports one failure of `service`, then waits out the backoff's next wait, or returns
    /// `Interrupted` if shutdown is asked for meanwhile.
    async fn wait_out(
        &self,
        service: &'static str,
        operation: &'static str,
        reason: &dyn std::fmt::Display,
        backoff: &mut Backoff,
    ) -> Result<(), PipelineError> {
        let wait = backoff.next_wait();
        self.metrics.emit(Unavailable {
            service,
            operation,
            reason,
            retry_in: wait,
        });
        let mut stopping = self.stopping.subscribe();
        let interrupted = tokio::select! {
            () = tokio::time::sleep(wait) => false,
            changed = stopping.wait_for(|stopping| *stopping) => changed.is_ok(),
        };
        if interrupted {
            return Err(PipelineError::Interrupted(service));
        }
        Ok(())
    }

    /// Folds each group's events over its loaded state, in rounds of one event per key.
    fn fold(
        &mut self,
        groups: &[&KeyEvents],
        loaded: Vec<Option<crate::store::Stored>>,
    ) -> Vec<Folded> {
        let mut states: Vec<Option<State>> = Vec::with_capacity(groups.len());
        let mut folded: Vec<Folded> = Vec::with_capacity(groups.len());
        for stored in loaded {
            folded.push(Folded {
                start_revision: stored.as_ref().map_or(0, |s| s.revision),
                changed: None,
                outcomes: Vec::new(),
            });
            states.push(stored.map(|s| s.state));
        }
        let rounds = groups.iter().map(|g| g.events.len()).max().unwrap_or(0);
        for round in 0..rounds {
            let members: Vec<usize> = (0..groups.len())
                .filter(|&slot| round < groups[slot].events.len())
                .collect();
            let items: Vec<(Option<State>, Event)> = members
                .iter()
                .map(|&slot| (states[slot].clone(), groups[slot].events[round].1.clone()))
                .collect();
            let decisions = self.decide_all(&items);
            for (slot, decision) in members.into_iter().zip(decisions) {
                if let Ok(decision) = &decision
                    && let Some(state) = decision.stored_state()
                {
                    states[slot] = Some(state.clone());
                    folded[slot].changed = Some(state.clone());
                }
                folded[slot]
                    .outcomes
                    .push((groups[slot].events[round].0, decision));
            }
        }
        folded
    }

    /// Decides a round in one batch call; if the batch fails, decides each pair alone (with
    /// retries) so that only the culprit fails.
    fn decide_all(
        &mut self,
        items: &[(Option<State>, Event)],
    ) -> Vec<Result<Decision, DecideError>> {
        match self.rule.decide_batch(items) {
            Ok(decisions) => decisions.into_iter().map(Ok).collect(),
            Err(_) => items
                .iter()
                .map(|(current, incoming)| self.decide_with_retries(current.as_ref(), incoming))
                .collect(),
        }
    }

    fn decide_with_retries(
        &mut self,
        current: Option<&State>,
        incoming: &Event,
    ) -> Result<Decision, DecideError> {
        let mut result = self.rule.decide(current, incoming);
        for _ in 0..self.config.rule_retries {
            if result.is_ok() {
                break;
            }
            result = self.rule.decide(current, incoming);
        }
        result
    }

    /// Records one applied event's outcome; rejects and failures become dead letters.
    fn count(
        &mut self,
        message: &Message,
        outcome: Result<Decision, DecideError>,
        stamp: &str,
        letters: &mut Vec<DeadLetter>,
    ) {
        match outcome {
            Ok(decision) => {
                *self.stats.decisions.entry(decision.kind()).or_default() += 1;
                if let Decision::Reject(reason) = decision {
                    letters.push(letter(message, DeadLetterKind::Rejected, reason, stamp));
                }
            }
            Err(error) => {
                tracing::warn!(position = %message.position, %error, "rule failed; dead-lettering the event");
                letters.push(letter(
                    message,
                    DeadLetterKind::RuleFailed,
                    error.to_string(),
                    stamp,
                ));
            }
        }
    }
}

fn letter(message: &Message, kind: DeadLetterKind, reason: String, stamp: &str) -> DeadLetter {
    DeadLetter {
        kind,
        reason,
        position: message.position.clone(),
        key: message.key.clone(),
        bytes: message.payload.clone().unwrap_or_default(),
        rule: stamp.to_owned(),
    }
}
