//! The pipeline's series: batches and their stages, the state cache, decisions and writes.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::{Metrics, Stage};
use crate::entity::DecisionKind;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabel {
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: &'static str,
}

/// The series the pipeline reports to.
#[derive(Debug)]
pub(super) struct PipelineMetrics {
    decisions: Family<DecisionLabel, Counter>,
    batches: Counter,
    batch_duration: Histogram,
    batch_messages: Histogram,
    stage_duration: Family<StageLabel, Histogram, fn() -> Histogram>,
    cache_hits: Counter,
    cache_misses: Counter,
    in_flight: Gauge,
    messages: Counter,
    writes: Counter,
    conflicts: Counter,
    unreadable_states: Counter,
    stored_latency: Histogram,
}

impl PipelineMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        // 1 .. 32768 messages
        let batch_messages = Histogram::new(exponential_buckets(1.0, 2.0, 16));
        registry.register(
            "batch_messages",
            "Messages per batch",
            batch_messages.clone(),
        );
        // 10 µs .. ~0.65 s
        let stage_duration =
            Family::<StageLabel, Histogram, fn() -> Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.00001, 2.0, 17))
            });
        registry.register(
            "stage_duration_seconds",
            "Time a batch spends in each stage (decode, enrich, load, fold, write, dead_letter, ack)",
            stage_duration.clone(),
        );
        let cache_hits = Counter::default();
        registry.register(
            "cache_hits",
            "Keys decided from the write-through state cache, without a load",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "cache_misses",
            "Keys loaded from the store because the state cache did not hold them",
            cache_misses.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "in_flight_batches",
            "Batches decided whose writes or dead letters are not acknowledged yet",
            in_flight.clone(),
        );
        let decisions = Family::<DecisionLabel, Counter>::default();
        registry.register(
            "decisions",
            "Decisions by outcome, one per decided event",
            decisions.clone(),
        );
        let batches = Counter::default();
        registry.register(
            "batches",
            "Batches processed and acknowledged",
            batches.clone(),
        );
        // 100 µs .. ~6.5 s
        let batch_duration = Histogram::new(exponential_buckets(0.0001, 2.0, 17));
        registry.register(
            "batch_duration_seconds",
            "Time from a batch's arrival to its acknowledgement",
            batch_duration.clone(),
        );
        let messages = Counter::default();
        registry.register("messages", "Messages processed", messages.clone());
        let writes = Counter::default();
        registry.register(
            "writes",
            "States written (at most one per key per batch)",
            writes.clone(),
        );
        let conflicts = Counter::default();
        registry.register(
            "conflicts",
            "Compare-and-set races lost and decided again",
            conflicts.clone(),
        );
        let unreadable_states = Counter::default();
        registry.register(
            "unreadable_states",
            "Keys set aside because their stored state could not be read (their events are dead-lettered)",
            unreadable_states.clone(),
        );
        // 1 ms .. ~65 s
        let stored_latency = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "event_to_stored_seconds",
            "From the producer's timestamp of a message to its state stored (or dead-lettered)",
            stored_latency.clone(),
        );
        Self {
            decisions,
            batches,
            batch_duration,
            batch_messages,
            stage_duration,
            cache_hits,
            cache_misses,
            in_flight,
            messages,
            writes,
            conflicts,
            unreadable_states,
            stored_latency,
        }
    }
}

impl Metrics {
    pub(crate) fn record_decisions(&self, kind: DecisionKind, count: u64) {
        self.pipeline
            .decisions
            .get_or_create(&DecisionLabel {
                decision: kind.as_str(),
            })
            .inc_by(count);
    }

    pub(crate) fn record_batch(
        &self,
        messages: usize,
        writes: u64,
        conflicts: u64,
        took: Duration,
    ) {
        let pipeline = &self.pipeline;
        pipeline.batches.inc();
        pipeline.messages.inc_by(messages as u64);
        pipeline.writes.inc_by(writes);
        pipeline.conflicts.inc_by(conflicts);
        pipeline.batch_duration.observe(took.as_secs_f64());
        pipeline.batch_messages.observe(messages as f64);
    }

    pub(crate) fn record_stage(&self, stage: Stage, took: Duration) {
        self.pipeline
            .stage_duration
            .get_or_create(&StageLabel {
                stage: stage.as_str(),
            })
            .observe(took.as_secs_f64());
    }

    pub(crate) fn record_unreadable_state(&self) {
        self.pipeline.unreadable_states.inc();
    }

    pub(crate) fn record_cache(&self, hits: u64, misses: u64) {
        self.pipeline.cache_hits.inc_by(hits);
        self.pipeline.cache_misses.inc_by(misses);
    }

    pub(crate) fn set_in_flight(&self, batches: usize) {
        self.pipeline.in_flight.set(batches as i64);
    }

    pub(crate) fn record_stored_latency(&self, millis: i64) {
        self.pipeline
            .stored_latency
            .observe(millis.max(0) as f64 / 1000.0);
    }
}
