//! Telemetry: the metrics every component reports to, and the named events that go with them.
//!
//! One [`Metrics`] registry is created per `serve` and shared (an `Arc`) by the source, the
//! pipeline and the rule control; the admin endpoint only renders it. Components that run
//! without `serve` (tests, `converge run`) get a registry of their own, so reporting is never
//! optional and never branches.
//!
//! Each component's series live in a file of their own, which registers them and records them
//! (in the style of Vector's internal events): `pipeline` (batches, stages, the state cache,
//! decisions, writes), `enrich`, `store`, `dead_letters`, `source` (rebalances and each
//! partition's lag, gaps and reconnects), `unavailable` (outages waited out), `rules` (the rule
//! serving, swaps, the shadow; which versions keep their series), `ignores` (each version's
//! decisions and ignores), `admin`. `exposition.txt` pins what they render.
//!
//! Where a log line and a counter always go together they are one named event (`events`, in
//! the style of Vector's internal events): the event logs its line and counts itself, so the two
//! cannot drift apart.
//!
//! Metrics, all prefixed `converge_`: `decisions_total{decision}`, `dead_letters_total{kind}`,
//! `batches_total`, `batch_duration_seconds` (histogram), `messages_total`, `writes_total`,
//! `conflicts_total`, `rebalances_total` (consumer-group assignments and revocations this
//! member went through), `unreadable_states_total` (keys whose stored state could not be read,
//! their events dead-lettered), `batch_messages` (histogram: messages per batch),
//! `stage_duration_seconds{stage}` (time a batch spends in each stage: decode, enrich, load,
//! fold, write, dead_letter, ack), `cache_hits_total`, `cache_misses_total` (the write-through
//! state cache), `in_flight_batches` (batches whose writes are in flight),
//! `event_to_stored_seconds` (histogram: from the producer's timestamp to the
//! state stored or dead-lettered, for sources that record one),
//! `store_duration_seconds{operation}` (one pipelined round trip, load or write),
//! `enrichment_duration_seconds` (fetching one batch's distinct keys), `enrichment_keys_total`,
//! `unavailable_total{service,operation}` (failed calls to the store or dead-letter queue, each
//! retried after a backoff), `consumer_lag{topic,partition}` (messages behind the partition's
//! end, from the client's statistics; only for partitions this consumer owns), `source_gaps_total{topic,partition}`,
//! `source_reconnects_total{topic,partition}`, `rule_info{rule}` (1 for the active rule),
//! `rule_swaps_total{role,result,gate}`, `shadow_decisions_total`,
//! `shadow_disagreements_total`, `ignores_total{rule,reason}` (the active rule's ignores by
//! its reason, normalised, at most 32 per rule version, then `other`),
//! `rule_decisions_total{rule,role,decision}` and `ignore_share{rule,role}` (every decision of
//! each rule version, active or shadow; the share over about its last 10,000),
//! `rule_auto_rollbacks_total`, `admin_refusals_total{reason}` (admin requests refused:
//! `disabled`, `origin`, `no_token`, `bad_token`, `content_type`).
//!
//! Series labelled with a rule version (`rule_info`, `ignores_total`, `rule_decisions_total`,
//! `ignore_share`) are kept for the versions an instance can still serve: the active one, the
//! one before it (a rollback's target) and the shadow. When the active or the shadow rule
//! changes, the series of every other version are dropped, so a fleet republishing its rule
//! every minute does not grow `/metrics` without bound. (A shadow stopped without a
//! replacement keeps its series until the next change of the active rule.)

// Every metric is registered (and exported, at zero) in every build; a build without a
// transport never records the ones only that transport reports.
#![cfg_attr(
    not(all(feature = "kafka", feature = "fluvio", feature = "http")),
    allow(dead_code)
)]

mod admin;
mod dead_letters;
mod enrich;
pub(crate) mod events;
mod ignores;
mod labels;
mod pipeline;
mod rules;
mod source;
mod store;
mod unavailable;

pub use labels::{Operation, Role, Service, Stage, SwapResult};

use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::registry::Registry;

pub(crate) use events::InternalEvent;
pub(crate) use ignores::{KindCounts, RuleMeter};

/// Every metric converge exports; shared by the source, the pipeline and the rule control, and
/// rendered by the admin endpoint. Each component's series are registered, and recorded, in a
/// file of their own.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pipeline: pipeline::PipelineMetrics,
    enrich: enrich::EnrichMetrics,
    store: store::StoreMetrics,
    dead_letters: dead_letters::DeadLetterMetrics,
    source: source::SourceMetrics,
    unavailable: unavailable::UnavailableMetrics,
    rules: rules::RuleMetrics,
    /// Ignores by reason, decisions and ignore share per rule version, auto-rollbacks.
    silence: ignores::SilenceMetrics,
    admin: admin::AdminMetrics,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("converge");
        Self {
            pipeline: pipeline::PipelineMetrics::register(&mut registry),
            enrich: enrich::EnrichMetrics::register(&mut registry),
            store: store::StoreMetrics::register(&mut registry),
            dead_letters: dead_letters::DeadLetterMetrics::register(&mut registry),
            source: source::SourceMetrics::register(&mut registry),
            unavailable: unavailable::UnavailableMetrics::register(&mut registry),
            rules: rules::RuleMetrics::register(&mut registry),
            silence: ignores::SilenceMetrics::register(&mut registry),
            admin: admin::AdminMetrics::register(&mut registry),
            registry,
            ready: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    /// A registry with every metric at zero, not ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets what `/readyz` answers: ready once the rule is loaded and the source, store and
    /// dead-letter queue are connected; not ready again when serving stops.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// What `/readyz` answers.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

impl Metrics {
    /// Emits a named event: its log line and its count.
    pub(crate) fn emit(&self, event: impl InternalEvent) {
        event.emit(self);
    }
}

#[cfg(test)]
mod tests;
