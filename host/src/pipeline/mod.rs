//! The data path: batches through named stages, several in flight, acknowledged in order.
//!
//! ```text
//!            ┌──────────────── main task (CPU) ───────────────┐   ┌──── write window ────┐
//! source ──> decode -> enrich -> group by key -> current state -> fold ──> write + dead-letter ──> record, ack
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
//! writing (the write-through [`cache`](StateCache)), and that write is *fenced*: its
//! compare-and-set expects the earlier write's revision and writer, so it can never land on
//! another base. If a write is refused or fails, the window is drained and each batch settles
//! its unfinished keys in order on the sequential path (`settle`).
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
//! # Layout
//! - this module: [`Pipeline`], its configuration and the run loop;
//! - `decode`: message -> event by [`FieldMapping`] (the shared codec);
//! - `enrich` (feature `http`): id-only message -> latest entity from the order-detail HTTP
//!   API ([`Enricher`]);
//! - `batch`: one batch: messages, rule stamp, dead letters, tally;
//! - `group`: the decode and group-by-key stages;
//! - `cache`: the write-through state cache, with the states of writes in flight;
//! - `settle`: current states, the fold through the rule, and the sequential compare-and-set
//!   path with conflict retries;
//! - `flight`: a batch in flight: prepared, landed, completed or repaired;
//! - `outage`: waiting out an unavailable store or dead-letter queue;
//! - `record`: stats and metrics, once per batch.

mod batch;
mod cache;
mod config;
mod decode;
#[cfg(feature = "http")]
mod enrich;
mod enrich_config;
mod flight;
mod group;
mod outage;
mod record;
mod settle;

pub use config::PipelineConfig;
pub use decode::{DecodeError, Decoded, FieldMapping, decode, decode_bytes};
#[cfg(feature = "http")]
pub use enrich::{EnrichError, EnrichSetupError, Enricher};
pub use enrich_config::{EnrichConfig, OnUnavailable};

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use serde::Serialize;

use crate::dead_letter::{DeadLetterError, DeadLetterKind, DeadLetterSink};
use crate::entity::{DecisionKind, Event};
use crate::rule::Rule;
use crate::source::{Message, Source, SourceError};
use crate::store::{Store, StoreError};
use crate::telemetry::Metrics;
use batch::Batch;
use cache::StateCache;
use flight::{Cargo, Deciding, Flight, Landed};
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
    #[cfg(not(feature = "http"))]
    enricher: Option<Never>,
    metrics: Arc<Metrics>,
    /// Becomes true when shutdown is asked for; ends waits for an unavailable store.
    stopping: Arc<tokio::sync::watch::Sender<bool>>,
    cache: StateCache,
    /// Batches started, numbering flights.
    started: u64,
}

/// What the run loop is woken by.
enum Next {
    Batch(Vec<Message>),
    Landed(Landed),
    Stop,
}

impl<R: Rule, S: Store, D: DeadLetterSink> Pipeline<R, S, D> {
    /// A pipeline deciding with `rule`, writing to `store`, dead-lettering to `dead_letters`.
    pub fn new(rule: R, store: S, dead_letters: D, config: PipelineConfig) -> Self {
        Self {
            rule,
            store,
            dead_letters,
            cache: StateCache::new(config.state_cache_keys),
            config,
            stats: Stats::default(),
            enricher: None,
            metrics: Arc::new(Metrics::new()),
            stopping: Arc::new(tokio::sync::watch::Sender::new(false)),
            started: 0,
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

    /// Forgets every cached state, so the next batch loads its keys: after something other
    /// than this pipeline changed the store (e.g. `replay --rebuild`).
    pub fn clear_cache(&mut self) {
        self.cache.clear();
    }

    /// Reads, processes and acknowledges batches until the source ends or `shutdown` resolves.
    /// Batches in flight when `shutdown` resolves are finished and acknowledged first — unless
    /// one is waiting for an unavailable store or dead-letter queue; then it and the batches
    /// after it are left unacknowledged, to be delivered again.
    pub async fn run<Src: Source>(
        &mut self,
        source: &mut Src,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), PipelineError> {
        let stopping = Arc::clone(&self.stopping);
        let work = self.work(source);
        tokio::pin!(work);
        tokio::select! {
            biased;
            result = &mut work => return result,
            () = shutdown => {
                stopping.send_replace(true);
            }
        }
        work.await
    }

    /// Takes one batch through every stage and returns once its writes and dead letters are
    /// acknowledged (one batch in flight; the caller acknowledges it to its source).
    pub async fn process(&mut self, messages: &[Message]) -> Result<(), PipelineError> {
        let mut window = FuturesOrdered::new();
        let mut flights = VecDeque::new();
        let mut parts = self.parts();
        let stamp = parts.rule.info().stamp();
        parts.rule.before_batch();
        if parts.rule.info().stamp() != stamp {
            // What is cached was decided by another rule.
            parts.cache.clear();
        }
        let (flight, cargo) = parts.prepare(messages.to_vec()).await?;
        window.push_back(flight::land(parts.store, parts.dead_letters, cargo));
        flights.push_back(flight);
        for batch in parts.drain(&mut window, &mut flights).await? {
            record::record(parts.stats, parts.metrics, &batch);
            parts.rule.applied(&batch.tally.decisions);
        }
        Ok(())
    }

    /// The pipeline's parts, borrowed for one run.
    fn parts(&mut self) -> Parts<'_, R, S, D> {
        Parts {
            rule: &mut self.rule,
            store: &self.store,
            dead_letters: &self.dead_letters,
            cache: &mut self.cache,
            config: &self.config,
            outage: Outage::new(&self.metrics, self.stopping.subscribe(), &self.config),
            stats: &mut self.stats,
            metrics: &self.metrics,
            enricher: self.enricher.as_ref(),
            started: &mut self.started,
        }
    }

    /// The run loop: keeps the write window full, completes flights in order and acknowledges
    /// them, until the source ends or stopping is asked for.
    async fn work<Src: Source>(&mut self, source: &mut Src) -> Result<(), PipelineError> {
        let mut stop = self.stopping.subscribe();
        let mut parts = self.parts();
        let mut window = FuturesOrdered::new();
        let mut flights: VecDeque<Flight> = VecDeque::new();
        let mut stamp = parts.rule.info().stamp();
        let mut generation = source.generation();
        let max_in_flight = parts.config.max_in_flight.max(1);
        let result: Result<(), PipelineError> = async {
            loop {
                if *stop.borrow() {
                    return Ok(());
                }
                let next = if flights.len() < max_in_flight {
                    tokio::select! {
                        biased;
                        Some(landed) = window.next(), if !flights.is_empty() => Next::Landed(landed),
                        batch = source.next_batch(parts.config.batch_size) => Next::Batch(batch?),
                        _ = stop.changed() => Next::Stop,
                    }
                } else {
                    match holding(source, window.next()).await {
                        Some(landed) => Next::Landed(landed),
                        None => continue,
                    }
                };
                let messages = match next {
                    Next::Stop => return Ok(()),
                    Next::Landed(landed) => {
                        let done =
                            holding(source, parts.settle_landed(landed, &mut window, &mut flights))
                                .await?;
                        parts.finish(done, source).await?;
                        parts.metrics.set_in_flight(flights.len());
                        continue;
                    }
                    Next::Batch(messages) if messages.is_empty() => return Ok(()),
                    Next::Batch(messages) => messages,
                };
                // A new rule is taken up only once the window is empty: a batch in flight is
                // completed — and repaired, if its writes fail — by the rule that decided and
                // stamped it, never by its successor.
                let swapping = parts.rule.swap_pending();
                let now_generation = source.generation();
                if swapping || now_generation != generation {
                    let done = holding(source, parts.drain(&mut window, &mut flights)).await?;
                    parts.finish(done, source).await?;
                }
                parts.rule.before_batch();
                let now_stamp = parts.rule.info().stamp();
                if now_stamp != stamp || now_generation != generation {
                    // What is cached was decided by another rule, or about partitions another
                    // instance may have written meanwhile.
                    parts.cache.clear();
                    stamp = now_stamp;
                    generation = now_generation;
                }
                let (flight, cargo) = holding(source, parts.prepare(messages)).await?;
                window.push_back(flight::land(parts.store, parts.dead_letters, cargo));
                flights.push_back(flight);
                parts.metrics.set_in_flight(flights.len());
            }
        }
        .await;
        // Whatever ended the loop, batches in flight are finished (or, waiting for an outage
        // at shutdown, left unacknowledged) before returning.
        let drained = match holding(source, parts.drain(&mut window, &mut flights)).await {
            Ok(done) => parts.finish(done, source).await,
            Err(error) => Err(error),
        };
        parts.metrics.set_in_flight(0);
        match (result, drained) {
            (Err(error), _) | (Ok(()), Err(error)) => interrupted_is_done(error),
            (Ok(()), Ok(())) => Ok(()),
        }
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
                waiting_for = what,
                "shutdown while waiting; batches in flight left unacknowledged"
            );
            Ok(())
        }
        error => Err(error),
    }
}

#[cfg(feature = "http")]
type EnricherRef<'a> = Option<&'a Enricher>;
#[cfg(not(feature = "http"))]
type EnricherRef<'a> = Option<&'a Never>;

/// The pipeline's parts, borrowed for one run: what preparing, completing, repairing and
/// finishing flights need.
struct Parts<'a, R, S, D> {
    rule: &'a mut R,
    store: &'a S,
    dead_letters: &'a D,
    cache: &'a mut StateCache,
    config: &'a PipelineConfig,
    outage: Outage<'a>,
    stats: &'a mut Stats,
    metrics: &'a Metrics,
    enricher: EnricherRef<'a>,
    /// Batches started, numbering flights.
    started: &'a mut u64,
}

impl<R: Rule, S: Store, D: DeadLetterSink> Parts<'_, R, S, D> {
    fn deciding(&mut self) -> Deciding<'_, R, S> {
        Deciding {
            rule: &mut *self.rule,
            store: self.store,
            cache: &mut *self.cache,
            outage: &self.outage,
            config: self.config,
        }
    }

    /// Decides a batch: the flight to keep and what to send for it.
    async fn prepare(&mut self, messages: Vec<Message>) -> Result<(Flight, Cargo), PipelineError> {
        *self.started += 1;
        let seq = *self.started;
        let (enricher, config, metrics) = (self.enricher, self.config, self.metrics);
        let stopping = self.outage.stopping.clone();
        flight::prepare(self.deciding(), messages, seq, async |decoded| {
            enrich(enricher, config, metrics, stopping, decoded).await
        })
        .await
    }

    /// Settles the window's head, which has landed: completes it if it is clean; else drains
    /// the window, clears the cache and repairs every drained flight in order. Returns the
    /// finished batches, in order.
    async fn settle_landed<F: Future<Output = Landed>>(
        &mut self,
        landed: Landed,
        window: &mut FuturesOrdered<F>,
        flights: &mut VecDeque<Flight>,
    ) -> Result<Vec<Batch>, PipelineError> {
        let Some(head) = flights.pop_front() else {
            return Ok(Vec::new());
        };
        if landed.is_clean() {
            let batch =
                flight::complete(head, landed, self.cache, self.dead_letters, &self.outage).await?;
            return Ok(vec![batch]);
        }
        let mut drained = vec![(head, landed)];
        while let Some(landed) = window.next().await {
            if let Some(flight) = flights.pop_front() {
                drained.push((flight, landed));
            }
        }
        self.cache.clear();
        let mut done = Vec::with_capacity(drained.len());
        for (flight, landed) in drained {
            let dead_letters = self.dead_letters;
            done.push(flight::repair(flight, landed, self.deciding(), dead_letters).await?);
        }
        Ok(done)
    }

    /// Settles every flight in the window, in order.
    async fn drain<F: Future<Output = Landed>>(
        &mut self,
        window: &mut FuturesOrdered<F>,
        flights: &mut VecDeque<Flight>,
    ) -> Result<Vec<Batch>, PipelineError> {
        let mut done = Vec::new();
        while let Some(landed) = window.next().await {
            done.extend(self.settle_landed(landed, window, flights).await?);
        }
        Ok(done)
    }

    /// Acknowledges finished batches to the source and records them, in order.
    async fn finish<Src: Source>(
        &mut self,
        done: Vec<Batch>,
        source: &mut Src,
    ) -> Result<(), PipelineError> {
        for batch in done {
            let acking = Instant::now();
            crate::fault::point("before_ack", batch.seq);
            source.ack(&batch.messages).await?;
            crate::fault::point("after_ack", batch.seq);
            self.metrics.record_stage("ack", acking.elapsed());
            record::record(self.stats, self.metrics, &batch);
            self.rule.applied(&batch.tally.decisions);
        }
        Ok(())
    }
}

/// Fetches the entity of every distinct id-only key of the batch, if an enricher is set. An
/// order-API outage is waited out inside (see `enrich`); shutdown interrupts the wait, leaving
/// the batch unacknowledged.
#[cfg(feature = "http")]
async fn enrich(
    enricher: Option<&Enricher>,
    config: &PipelineConfig,
    metrics: &Metrics,
    mut stopping: tokio::sync::watch::Receiver<bool>,
    decoded: &[(usize, Decoded)],
) -> Result<HashMap<String, Result<Event, EnrichError>>, PipelineError> {
    let Some(enricher) = enricher else {
        return Ok(HashMap::new());
    };
    let id_only = decoded.iter().filter_map(|(_, d)| match d {
        Decoded::IdOnly { key } => Some(key.clone()),
        Decoded::Event(_) => None,
    });
    let asked = Instant::now();
    let fetched = tokio::select! {
        fetched = enricher.fetch_all(id_only, &config.mapping, metrics) => fetched,
        Ok(_) = stopping.wait_for(|stopping| *stopping) => {
            return Err(PipelineError::Interrupted("order API"));
        }
    };
    if !fetched.is_empty() {
        metrics.record_enrichment(fetched.len(), asked.elapsed());
        metrics.record_stage("enrich", asked.elapsed());
    }
    Ok(fetched)
}

/// Without the `http` feature there is no enricher: id-only messages are dead-lettered.
#[cfg(not(feature = "http"))]
async fn enrich(
    _enricher: Option<&Never>,
    _config: &PipelineConfig,
    _metrics: &Metrics,
    _stopping: tokio::sync::watch::Receiver<bool>,
    _decoded: &[(usize, Decoded)],
) -> Result<HashMap<String, Result<Event, std::convert::Infallible>>, PipelineError> {
    Ok(HashMap::new())
}

/// Stands in for the enricher in a build without one.
#[cfg(not(feature = "http"))]
#[derive(Debug)]
enum Never {}
