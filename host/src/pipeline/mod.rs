//! The data path: one batch at a time through named stages, then acknowledged.
//!
//! ```text
//! decode -> enrich -> group by key -> settle (load, fold, compare-and-set, retry) -> dead-letter -> record
//! ```
//!
//! Nothing is dropped: an undecodable message, a rejected event or an event the rule fails on
//! is dead-lettered with its reason, and the batch is acknowledged only after its writes and
//! dead letters are. An unavailable store or dead-letter queue (an outage, a timeout, a reset)
//! does not fail the batch: the step is retried with exponential backoff until it succeeds or
//! shutdown is asked for.
//!
//! Each stage is a function of the batch in flight (`batch`) and the resources it needs. Batches
//! run one at a time: overlapping them also needs a rule instance per worker, per-key ordering
//! and acknowledging only the contiguous prefix of finished batches.
//!
//! # Layout
//! - this module: [`Pipeline`], its configuration and the run loop;
//! - `decode`: message -> event by [`FieldMapping`] (the shared codec);
//! - `enrich` (feature `http`): id-only message -> latest entity from the order-detail HTTP
//!   API ([`Enricher`]);
//! - `batch`: one batch in flight: messages, rule stamp, dead letters, tally;
//! - `group`: the decode and group-by-key stages;
//! - `settle`: load, fold through the rule, compare-and-set, conflict retry;
//! - `outage`: waiting out an unavailable store or dead-letter queue; the dead-letter stage;
//! - `record`: stats and metrics, once per batch.

mod batch;
mod decode;
#[cfg(feature = "http")]
mod enrich;
mod group;
mod outage;
mod record;
mod settle;

pub use crate::config::PipelineConfig;
pub use decode::{DecodeError, Decoded, FieldMapping, decode, decode_bytes};
#[cfg(feature = "http")]
pub use enrich::{EnrichError, EnrichSetupError, Enricher};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::dead_letter::{DeadLetterError, DeadLetterKind, DeadLetterSink};
use crate::entity::{DecisionKind, Event};
use crate::rule::Rule;
use crate::source::{Message, Source, SourceError};
use crate::store::{Store, StoreError};
use crate::telemetry::Metrics;
use batch::Batch;
use outage::Outage;

/// Why a batch could not be completed. The batch is not acknowledged; after a restart it is
/// delivered again, which the rule makes harmless.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The store failed in a way waiting does not cure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The dead-letter queue failed in a way waiting does not cure.
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
    /// The source failed to deliver or to acknowledge.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Keys kept losing compare-and-set races (another writer is busy on them).
    #[error("keys still conflicting after {attempts} attempts: {keys:?}")]
    Contended {
        /// Attempts made (`pipeline.max_write_attempts`).
        attempts: u32,
        /// The keys still conflicting.
        keys: Vec<String>,
    },
    /// Shutdown was asked for while the batch waited for the store or dead-letter queue to
    /// come back; the batch is left unacknowledged.
    #[error("interrupted by shutdown while waiting for {0}")]
    Interrupted(&'static str),
}

/// Counters since the pipeline started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Batches processed and acknowledged.
    pub batches: u64,
    /// Messages in those batches.
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

impl<R: Rule, S: Store, D: DeadLetterSink> Pipeline<R, S, D> {
    /// A pipeline deciding with `rule`, writing to `store`, dead-lettering to `dead_letters`.
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

    /// The store it writes to.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Where its dead letters go.
    pub fn dead_letters(&self) -> &D {
        &self.dead_letters
    }

    /// The rule it decides with.
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

    /// Takes one batch through the stages. Returns once its writes and dead letters are
    /// acknowledged; the caller then acknowledges the batch to its source.
    pub async fn process(&mut self, messages: &[Message]) -> Result<(), PipelineError> {
        let started = Instant::now();
        self.rule.before_batch();
        let mut batch = Batch::new(messages, self.rule.info().stamp());
        let decoded = group::decode_all(&mut batch, &self.config.mapping);
        let fetched = self.enrich(&decoded).await;
        let groups = group::by_key(&mut batch, decoded, &fetched);
        let outage = Outage::new(&self.metrics, self.stopping.subscribe(), &self.config);
        settle::settle(
            &mut batch,
            groups,
            &mut self.rule,
            &self.store,
            &outage,
            &self.config,
        )
        .await?;
        outage
            .send_dead_letters(&self.dead_letters, &batch.letters)
            .await?;
        record::record(&mut self.stats, &self.metrics, batch, started);
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
}
