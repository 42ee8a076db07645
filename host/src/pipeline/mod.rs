//! The data path: batches through named stages, several in flight, acknowledged in order.
//!
//! ```text
//!            ┌──────────────── main task (CPU) ───────────────┐   ┌──── write window ────┐
//! source ──> decode -> enrich -> group by key -> current state -> fold ──> write + dead-letter ──> ack, record
//!                                               (cache or load)         (up to max_in_flight
//!                                                                        batches at once)
//! ```
//!
//! The rule decides batch N+1 while batch N's writes are on their way: converge's CPU and the
//! store work at the same time. Batches complete in the order they arrived, so the source is
//! acknowledged only for a contiguous prefix of finished batches; a batch is finished when all
//! its writes (retries included) and its dead letters are acknowledged.
//!
//! A key in two batches in flight is decided in the later one on the state the earlier one is
//! writing (the write-through cache), and that write is *fenced*: its compare-and-set expects
//! the earlier write's revision and writer, so it can never land on another base. If a write is
//! refused or fails, the window is drained and each batch settles its unfinished keys in order
//! on the sequential path (`settle`).
//!
//! Nothing is dropped: an undecodable message, a rejected event or an event the rule fails on
//! is dead-lettered with its reason. An unavailable store or dead-letter queue (an outage, a
//! timeout, a reset) does not fail the batch: the step is retried with exponential backoff
//! until it succeeds or shutdown is asked for.
//!
//! While the pipeline works without asking for a batch (deciding, settling, waiting out an
//! outage), the source holds its place ([`Source::hold`]): a Kafka member pauses its
//! partitions and keeps polling, so a long outage does not eject it from its group.
//!
//! Batches close as soon as the window has room: a source hands over what has arrived, so
//! batches are large under a backlog (the window is full while they accumulate) and small at
//! low rates, which keeps latency low without a fixed linger.
//!
//! One file per stage, in a batch's order: following one event from the run loop's
//! `next_batch` to its `ack` visits each once (ARCHITECTURE.md walks it function by function).
//! Its files, and what each holds: the module map in ARCHITECTURE.md.

mod batch;
mod config;
mod context;
mod decode;
#[cfg(feature = "http")]
mod enrich;
#[cfg(not(feature = "http"))]
#[path = "enrich_disabled.rs"]
mod enrich;
mod enrich_config;
mod flight;
mod fold;
mod group;
mod record;
mod settle;
mod state;

pub use config::PipelineConfig;
pub use decode::{DecodeError, Decoded, FieldMapping, decode, decode_bytes};
pub use enrich::{EnrichError, EnrichSetupError, Enricher};
pub use enrich_config::{EnrichConfig, OnUnavailable};

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use serde::Serialize;

use crate::dead_letter::{DeadLetterError, DeadLetterKind, DeadLetterSink};
use crate::entity::DecisionKind;
use crate::fault::{self, CrashPoint};
use crate::rule::Rule;
use crate::shutdown::Shutdown;
use crate::source::{Message, Source, SourceError};
use crate::store::{Store, StoreError};
use crate::telemetry::{Metrics, Service, Stage};
use batch::Batch;
use context::Context;
use flight::{Cargo, Flight, Landed, Window};
use state::StateCache;

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
    /// Shutdown was asked for while a batch waited for the store, the dead-letter queue or
    /// the order API to come back; it and the batches after it are left unacknowledged.
    #[error("interrupted by shutdown while waiting for {0}")]
    Interrupted(Service),
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
    /// Shared with the flights in the write window, which write to it while the next batch is
    /// decided.
    store: Arc<S>,
    /// Shared with the flights in the write window, like the store.
    dead_letters: Arc<D>,
    config: PipelineConfig,
    enricher: Option<Enricher>,
    context: Context,
    cache: StateCache,
    stats: Stats,
    /// Batches started, numbering them.
    started: u64,
}

/// What the run loop is woken by.
#[allow(clippy::large_enum_variant)] // One at a time, on the stack, moved out at once.
enum Next {
    Batch(Vec<Message>),
    Landed(Flight, Landed),
    Stop,
}

impl<R: Rule, S: Store, D: DeadLetterSink> Pipeline<R, S, D> {
    /// A pipeline deciding with `rule`, writing to `store`, dead-lettering to `dead_letters`.
    pub fn new(rule: R, store: S, dead_letters: D, config: PipelineConfig) -> Self {
        Self {
            rule,
            store: Arc::new(store),
            dead_letters: Arc::new(dead_letters),
            enricher: None,
            context: Context::new(&config),
            cache: StateCache::new(config.state_cache_keys),
            config,
            stats: Stats::default(),
            started: 0,
        }
    }

    /// Reports every batch, decision and dead letter to `metrics` (shared with the admin
    /// endpoint); without it, the pipeline reports to a registry of its own.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.context.metrics = metrics;
        self
    }

    /// Completes id-only messages by fetching their entity (see [`Enricher`]); without an
    /// enricher they are dead-lettered.
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

    /// Forgets every cached state, so the next batch loads its keys: after something other
    /// than this pipeline changed the store (e.g. `replay --rebuild`).
    pub fn clear_cache(&mut self) {
        self.cache.clear();
    }

    /// Reads, processes and acknowledges batches until the source ends or `shutdown` is
    /// requested. Batches in flight then are finished and acknowledged first — unless
    /// one is waiting for an unavailable store or dead-letter queue; then it and the batches
    /// after it are left unacknowledged, to be delivered again.
    pub async fn run<Src: Source>(
        &mut self,
        source: &mut Src,
        shutdown: Shutdown,
    ) -> Result<(), PipelineError> {
        self.context.shutdown = shutdown;
        self.work(source).await
    }

    /// Takes one batch through every stage and returns once its writes and dead letters are
    /// acknowledged (one batch in flight; the caller acknowledges it to its source).
    pub async fn process(&mut self, messages: &[Message]) -> Result<(), PipelineError> {
        let stamp = self.rule.info().stamp();
        self.rule.before_batch();
        if self.rule.info().stamp() != stamp {
            // What is cached was decided by another rule.
            self.cache.clear();
        }
        let mut window = Window::new();
        let (flight, cargo) = self.prepare(messages.to_vec()).await?;
        window.launch(flight, self.land(cargo));
        for batch in self.drain(&mut window).await? {
            self.record(&batch);
        }
        Ok(())
    }

    /// The run loop: keeps the write window full, settles flights in order and acknowledges
    /// them, until the source ends or stopping is asked for.
    async fn work<Src: Source>(&mut self, source: &mut Src) -> Result<(), PipelineError> {
        let mut stop = self.context.shutdown.clone();
        let mut window = Window::new();
        let mut stamp = self.rule.info().stamp();
        let mut generation = source.generation();
        let max_in_flight = self.config.max_in_flight.max(1);
        let result: Result<(), PipelineError> = async {
            loop {
                if stop.is_requested() {
                    return Ok(());
                }
                let next = if window.len() < max_in_flight {
                    tokio::select! {
                        biased;
                        Some((flight, landed)) = window.next_landed(), if !window.is_empty() => {
                            Next::Landed(flight, landed)
                        }
                        batch = source.next_batch(self.config.batch_size) => Next::Batch(batch?),
                        () = stop.requested() => Next::Stop,
                    }
                } else {
                    match holding(source, window.next_landed()).await {
                        Some((flight, landed)) => Next::Landed(flight, landed),
                        None => continue,
                    }
                };
                let messages = match next {
                    Next::Stop => return Ok(()),
                    Next::Landed(flight, landed) => {
                        let done = holding(source, self.settle_landed(flight, landed, &mut window))
                            .await?;
                        self.finish(done, source).await?;
                        self.context.metrics.set_in_flight(window.len());
                        continue;
                    }
                    Next::Batch(messages) if messages.is_empty() => return Ok(()),
                    Next::Batch(messages) => messages,
                };
                // A new rule is taken up only once the window is empty: a batch in flight is
                // completed — and repaired, if its writes fail — by the rule that decided and
                // stamped it, never by its successor.
                let swapping = self.rule.swap_pending();
                let now_generation = source.generation();
                if swapping || now_generation != generation {
                    let done = holding(source, self.drain(&mut window)).await?;
                    self.finish(done, source).await?;
                }
                self.rule.before_batch();
                let now_stamp = self.rule.info().stamp();
                if now_stamp != stamp || now_generation != generation {
                    // What is cached was decided by another rule, or about partitions another
                    // instance may have written meanwhile.
                    self.cache.clear();
                    stamp = now_stamp;
                    generation = now_generation;
                }
                let (flight, cargo) = holding(source, self.prepare(messages)).await?;
                window.launch(flight, self.land(cargo));
                self.context.metrics.set_in_flight(window.len());
            }
        }
        .await;
        // Whatever ended the loop, the flights in the window are finished (or, waiting for an
        // outage at shutdown, left unacknowledged) before returning.
        let drained = match holding(source, self.drain(&mut window)).await {
            Ok(done) => self.finish(done, source).await,
            Err(error) => Err(error),
        };
        self.context.metrics.set_in_flight(0);
        match (result, drained) {
            (Err(error), _) | (Ok(()), Err(error)) => interrupted_is_done(error),
            (Ok(()), Ok(())) => Ok(()),
        }
    }

    /// Takes a batch through decode, enrich, group, current state and fold: the flight to
    /// launch into the write window, and what to send for it.
    async fn prepare(&mut self, messages: Vec<Message>) -> Result<(Flight, Cargo), PipelineError> {
        self.started += 1;
        let mut batch = Batch::new(self.started, messages, self.rule.info().stamp());
        let mapping = &self.config.mapping;
        let context = &self.context;
        let decoded = context.timed(Stage::Decode, || decode::decode_all(&mut batch, mapping));
        fault::point(CrashPoint::AfterDecode, batch.seq);
        let fetched = enrich::enrich(self.enricher.as_ref(), &decoded, mapping, context).await?;
        let mut groups = group::by_key(&mut batch, decoded, &fetched);
        let currents = state::current_states(
            &mut batch,
            &mut groups,
            &mut self.cache,
            &*self.store,
            context,
        )
        .await?;
        fault::point(CrashPoint::AfterLoad, batch.seq);
        let retries = self.config.rule_retries;
        let folded = context.timed(Stage::Fold, || {
            fold::fold(&mut self.rule, &mut groups, currents, retries)
        });
        Ok(Flight::take_off(batch, groups, folded, &mut self.cache))
    }
}

/// Runs `work` while `source` holds its place ([`Source::hold`]): however long the work waits
/// for an outage, a consumer-group member stays in its group.
async fn holding<T>(source: &mut impl Source, work: impl Future<Output = T>) -> T {
    tokio::pin!(work);
    tokio::select! {
        biased;
        done = &mut work => return done,
        () = source.hold() => {}
    }
    // A source's hold never ends; if one did, the work still must.
    work.await
}

/// A wait for an outage that shutdown interrupted leaves its batch unacknowledged, to be
/// delivered again: that is a clean stop.
fn interrupted_is_done(error: PipelineError) -> Result<(), PipelineError> {
    match error {
        PipelineError::Interrupted(what) => {
            tracing::warn!(
                waiting_for = what.as_str(),
                "shutdown while waiting; batches in flight left unacknowledged"
            );
            Ok(())
        }
        error => Err(error),
    }
}
