//! Telemetry: the metrics every component reports to, and the named events that go with them.
//!
//! One [`Metrics`] registry is created per `serve` and shared (an `Arc`) by the source, the
//! pipeline and the rule control; the admin endpoint only renders it. Components that run
//! without `serve` (tests, `converge run`) get a registry of their own, so reporting is never
//! optional and never branches.
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

pub(crate) mod events;
mod ignores;
mod labels;

pub use labels::{Role, Service, Stage, SwapResult};

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::entity::{DecisionKind, RuleInfo};

pub(crate) use events::InternalEvent;
pub(crate) use ignores::{KindCounts, RuleMeter};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabel {
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SwapLabel {
    role: &'static str,
    result: &'static str,
    /// The gate that refused; empty when applied.
    gate: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UnavailableLabel {
    service: &'static str,
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabel {
    topic: String,
    partition: i32,
}

/// Every metric converge exports; shared by the source, the pipeline and the rule control, and
/// rendered by the admin endpoint.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabel, Counter>,
    dead_letters: Family<KindLabel, Counter>,
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
    rebalances: Counter,
    rule_info: Family<RuleLabel, Gauge>,
    store_duration: Family<OperationLabel, Histogram, fn() -> Histogram>,
    enrichment_duration: Histogram,
    enrichment_keys: Counter,
    stored_latency: Histogram,
    unavailable: Family<UnavailableLabel, Counter>,
    consumer_lag: Family<PartitionLabel, Gauge>,
    source_gaps: Family<PartitionLabel, Counter>,
    source_reconnects: Family<PartitionLabel, Counter>,
    swaps: Family<SwapLabel, Counter>,
    shadow_decisions: Counter,
    shadow_disagreements: Counter,
    admin_refusals: Family<ReasonLabel, Counter>,
    /// Ignores by reason, decisions and ignore share per rule version, auto-rollbacks.
    silence: ignores::SilenceMetrics,
    /// The versions whose series are kept, and every version with series.
    versions: Mutex<RuleVersions>,
    ready: AtomicBool,
}

/// The rule versions (stamps) an instance can still serve, whose series are kept, and the
/// versions that have series at all (those of `ignores_total` aside: its reasons are tracked
/// with the reasons' labels).
#[derive(Debug, Default)]
struct RuleVersions {
    /// The stamp `rule_info` shows as 1.
    active: Option<String>,
    /// The version the active one replaced (`rule_info` 0): what a rollback brings back.
    previous: Option<String>,
    /// The shadow, as the pipeline last took up its rules: the active rule's meter is taken
    /// first, then the shadow's if one runs (see [`Metrics::rule_meter`]).
    shadow: Option<String>,
    /// Every version with series, and the roles it was metered in.
    labelled: HashMap<String, HashSet<Role>>,
}

impl RuleVersions {
    fn keeps(&self, rule: &str) -> bool {
        [&self.active, &self.previous, &self.shadow]
            .into_iter()
            .any(|kept| kept.as_deref() == Some(rule))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("converge");
        let decisions = Family::<DecisionLabel, Counter>::default();
        let dead_letters = Family::<KindLabel, Counter>::default();
        let batches = Counter::default();
        // 100 µs .. ~6.5 s
        let batch_duration = Histogram::new(exponential_buckets(0.0001, 2.0, 17));
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
        let messages = Counter::default();
        let writes = Counter::default();
        let conflicts = Counter::default();
        let unreadable_states = Counter::default();
        let rebalances = Counter::default();
        let rule_info = Family::<RuleLabel, Gauge>::default();
        registry.register(
            "decisions",
            "Decisions by outcome, one per decided event",
            decisions.clone(),
        );
        registry.register(
            "dead_letters",
            "Messages dead-lettered, by kind",
            dead_letters.clone(),
        );
        registry.register(
            "batches",
            "Batches processed and acknowledged",
            batches.clone(),
        );
        registry.register(
            "batch_duration_seconds",
            "Time from a batch's arrival to its acknowledgement",
            batch_duration.clone(),
        );
        registry.register("messages", "Messages processed", messages.clone());
        registry.register(
            "writes",
            "States written (at most one per key per batch)",
            writes.clone(),
        );
        registry.register(
            "conflicts",
            "Compare-and-set races lost and decided again",
            conflicts.clone(),
        );
        registry.register(
            "unreadable_states",
            "Keys set aside because their stored state could not be read (their events are dead-lettered)",
            unreadable_states.clone(),
        );
        registry.register(
            "rebalances",
            "Consumer-group assignments and revocations this member went through",
            rebalances.clone(),
        );
        registry.register("rule_info", "The active rule (value 1)", rule_info.clone());
        // 50 µs .. ~3.3 s: a pipelined round trip on loopback is well under a millisecond.
        let store_duration =
            Family::<OperationLabel, Histogram, fn() -> Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.00005, 2.0, 17))
            });
        registry.register(
            "store_duration_seconds",
            "One pipelined store round trip for a batch, by operation (load, write)",
            store_duration.clone(),
        );
        let enrichment_duration = Histogram::new(exponential_buckets(0.0001, 2.0, 17));
        registry.register(
            "enrichment_duration_seconds",
            "Fetching the distinct id-only keys of one batch from the order API",
            enrichment_duration.clone(),
        );
        // 1 ms .. ~65 s
        let stored_latency = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "event_to_stored_seconds",
            "From the producer's timestamp of a message to its state stored (or dead-lettered)",
            stored_latency.clone(),
        );
        let enrichment_keys = Counter::default();
        registry.register(
            "enrichment_keys",
            "Keys fetched from the order API",
            enrichment_keys.clone(),
        );
        let unavailable = Family::<UnavailableLabel, Counter>::default();
        registry.register(
            "unavailable",
            "Failed calls to the store or dead-letter queue, each retried after a backoff",
            unavailable.clone(),
        );
        let consumer_lag = Family::<PartitionLabel, Gauge>::default();
        registry.register(
            "consumer_lag",
            "Messages between the last acknowledged offset and the partition's end",
            consumer_lag.clone(),
        );
        let source_gaps = Family::<PartitionLabel, Counter>::default();
        registry.register(
            "source_gaps",
            "Ranges of offsets a partition's stream skipped; each is read again, or dead-lettered as lost when the records no longer exist",
            source_gaps.clone(),
        );
        let source_reconnects = Family::<PartitionLabel, Counter>::default();
        registry.register(
            "source_reconnects",
            "Partition streams opened again after they failed, ended or skipped offsets",
            source_reconnects.clone(),
        );
        let swaps = Family::<SwapLabel, Counter>::default();
        registry.register(
            "rule_swaps",
            "Rule candidates offered, by role (active, shadow), result (applied, refused) and refusing gate",
            swaps.clone(),
        );
        let shadow_decisions = Counter::default();
        registry.register(
            "shadow_decisions",
            "Events the shadow rule decided beside the active rule",
            shadow_decisions.clone(),
        );
        let shadow_disagreements = Counter::default();
        registry.register(
            "shadow_disagreements",
            "Events the shadow rule decided otherwise than the active rule",
            shadow_disagreements.clone(),
        );
        let admin_refusals = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "admin_refusals",
            "Admin endpoint requests refused, by reason (disabled, origin, no_token, bad_token, content_type)",
            admin_refusals.clone(),
        );
        let silence = ignores::SilenceMetrics::register(&mut registry);
        Self {
            registry,
            decisions,
            dead_letters,
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
            rebalances,
            rule_info,
            store_duration,
            enrichment_duration,
            enrichment_keys,
            stored_latency,
            unavailable,
            consumer_lag,
            source_gaps,
            source_reconnects,
            swaps,
            shadow_decisions,
            shadow_disagreements,
            admin_refusals,
            silence,
            versions: Mutex::new(RuleVersions::default()),
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

    /// Records the rule now serving: `rule_info{rule}` is 1 for it and 0 for the one before
    /// (which becomes the previous version); drops the series of versions that are neither
    /// active, previous nor shadow.
    pub(crate) fn set_rule(&self, info: &RuleInfo) {
        let stamp = info.stamp();
        let mut versions = self.versions();
        if let Some(previous) = versions.active.replace(stamp.clone()) {
            if previous != stamp {
                self.rule_info
                    .get_or_create(&RuleLabel {
                        rule: previous.clone(),
                    })
                    .set(0);
            }
            versions.previous = Some(previous);
        }
        self.rule_info
            .get_or_create(&RuleLabel {
                rule: stamp.clone(),
            })
            .set(1);
        versions.labelled.entry(stamp).or_default();
        self.drop_retired(&mut versions);
    }

    fn versions(&self) -> MutexGuard<'_, RuleVersions> {
        self.versions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that `rule` is metered in `role`: the pipeline takes up its rules by metering
    /// the active one, then the shadow if one runs, so the shadow is known from these calls.
    /// A new shadow drops the series of versions no longer served.
    fn metered(&self, rule: &str, role: Role) {
        let mut versions = self.versions();
        versions
            .labelled
            .entry(rule.to_owned())
            .or_default()
            .insert(role);
        match role {
            Role::Shadow => {
                versions.shadow = Some(rule.to_owned());
                self.drop_retired(&mut versions);
            }
            Role::Active => versions.shadow = None,
        }
    }

    /// Drops every series of the versions `versions` no longer keeps.
    fn drop_retired(&self, versions: &mut RuleVersions) {
        let retired: Vec<(String, HashSet<Role>)> = versions
            .labelled
            .iter()
            .filter(|(rule, _)| !versions.keeps(rule))
            .map(|(rule, roles)| (rule.clone(), roles.clone()))
            .collect();
        for (rule, roles) in retired {
            versions.labelled.remove(&rule);
            self.silence.forget(&rule, &roles);
            self.rule_info.remove(&RuleLabel { rule });
        }
        self.forget_ignores(|rule| versions.keeps(rule));
    }

    pub(crate) fn record_swap(&self, role: Role, result: SwapResult, gate: Option<&'static str>) {
        self.swaps
            .get_or_create(&SwapLabel {
                role: role.as_str(),
                result: result.as_str(),
                gate: gate.unwrap_or_default(),
            })
            .inc();
    }

    pub(crate) fn record_shadow(&self, decisions: u64, disagreements: u64) {
        self.shadow_decisions.inc_by(decisions);
        self.shadow_disagreements.inc_by(disagreements);
    }

    pub(crate) fn record_admin_refusal(&self, reason: &'static str) {
        self.admin_refusals
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub(crate) fn record_decisions(&self, kind: DecisionKind, count: u64) {
        self.decisions
            .get_or_create(&DecisionLabel {
                decision: kind.as_str(),
            })
            .inc_by(count);
    }

    pub(crate) fn record_dead_letter(&self, kind: &'static str) {
        self.dead_letters.get_or_create(&KindLabel { kind }).inc();
    }

    pub(crate) fn record_batch(
        &self,
        messages: usize,
        writes: u64,
        conflicts: u64,
        took: Duration,
    ) {
        self.batches.inc();
        self.messages.inc_by(messages as u64);
        self.writes.inc_by(writes);
        self.conflicts.inc_by(conflicts);
        self.batch_duration.observe(took.as_secs_f64());
        self.batch_messages.observe(messages as f64);
    }

    pub(crate) fn record_stage(&self, stage: Stage, took: Duration) {
        self.stage_duration
            .get_or_create(&StageLabel {
                stage: stage.as_str(),
            })
            .observe(took.as_secs_f64());
    }

    pub(crate) fn record_rebalance(&self) {
        self.rebalances.inc();
    }

    pub(crate) fn record_unreadable_state(&self) {
        self.unreadable_states.inc();
    }

    pub(crate) fn record_cache(&self, hits: u64, misses: u64) {
        self.cache_hits.inc_by(hits);
        self.cache_misses.inc_by(misses);
    }

    pub(crate) fn set_in_flight(&self, batches: usize) {
        self.in_flight.set(batches as i64);
    }

    pub(crate) fn record_store_call(&self, operation: &'static str, took: Duration) {
        self.store_duration
            .get_or_create(&OperationLabel { operation })
            .observe(took.as_secs_f64());
    }

    pub(crate) fn record_enrichment(&self, keys: usize, took: Duration) {
        self.enrichment_keys.inc_by(keys as u64);
        self.enrichment_duration.observe(took.as_secs_f64());
    }

    pub(crate) fn record_stored_latency(&self, millis: i64) {
        self.stored_latency.observe(millis.max(0) as f64 / 1000.0);
    }

    pub(crate) fn record_unavailable(&self, service: Service, operation: &'static str) {
        self.unavailable
            .get_or_create(&UnavailableLabel {
                service: service.as_str(),
                operation,
            })
            .inc();
    }

    /// Records how far behind its partition's end this consumer is.
    pub(crate) fn set_consumer_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.consumer_lag
            .get_or_create(&PartitionLabel {
                topic: topic.to_owned(),
                partition,
            })
            .set(lag.max(0));
    }

    /// Forgets a partition's lag when this consumer gives the partition up: its last value
    /// would otherwise stay exported for good, and be added to its new owner's by the lag alerts.
    pub(crate) fn forget_consumer_lag(&self, topic: &str, partition: i32) {
        self.consumer_lag.remove(&PartitionLabel {
            topic: topic.to_owned(),
            partition,
        });
    }

    /// Records a range of offsets a partition's stream skipped.
    pub(crate) fn record_source_gap(&self, topic: &str, partition: i32) {
        self.source_gaps
            .get_or_create(&PartitionLabel {
                topic: topic.to_owned(),
                partition,
            })
            .inc();
    }

    /// Records a partition stream opened again.
    pub(crate) fn record_source_reconnect(&self, topic: &str, partition: i32) {
        self.source_reconnects
            .get_or_create(&PartitionLabel {
                topic: topic.to_owned(),
                partition,
            })
            .inc();
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
