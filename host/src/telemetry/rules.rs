//! The rule control's series: the rule serving, swaps, the shadow's comparison, and which rule
//! versions keep their series.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{Metrics, Role, SwapResult};
use crate::entity::RuleInfo;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SwapLabel {
    role: &'static str,
    result: &'static str,
    /// The gate that refused; empty when applied.
    gate: &'static str,
}

/// The series the rule control reports to (each version's decisions aside: `ignores.rs`).
#[derive(Debug)]
pub(super) struct RuleMetrics {
    info: Family<RuleLabel, Gauge>,
    swaps: Family<SwapLabel, Counter>,
    shadow_decisions: Counter,
    shadow_disagreements: Counter,
    /// The versions whose series are kept, and every version with series.
    versions: Mutex<RuleVersions>,
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

impl RuleMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let info = Family::<RuleLabel, Gauge>::default();
        registry.register("rule_info", "The active rule (value 1)", info.clone());
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
        Self {
            info,
            swaps,
            shadow_decisions,
            shadow_disagreements,
            versions: Mutex::new(RuleVersions::default()),
        }
    }

    fn versions(&self) -> MutexGuard<'_, RuleVersions> {
        self.versions.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Metrics {
    /// Records the rule now serving: `rule_info{rule}` is 1 for it and 0 for the one before
    /// (which becomes the previous version); drops the series of versions that are neither
    /// active, previous nor shadow.
    pub(crate) fn set_rule(&self, info: &RuleInfo) {
        let stamp = info.stamp();
        let mut versions = self.rules.versions();
        if let Some(previous) = versions.active.replace(stamp.clone()) {
            if previous != stamp {
                self.rules
                    .info
                    .get_or_create(&RuleLabel {
                        rule: previous.clone(),
                    })
                    .set(0);
            }
            versions.previous = Some(previous);
        }
        self.rules
            .info
            .get_or_create(&RuleLabel {
                rule: stamp.clone(),
            })
            .set(1);
        versions.labelled.entry(stamp).or_default();
        self.drop_retired(&mut versions);
    }

    /// Records that `rule` is metered in `role`: the pipeline takes up its rules by metering
    /// the active one, then the shadow if one runs, so the shadow is known from these calls.
    /// A new shadow drops the series of versions no longer served.
    pub(super) fn metered(&self, rule: &str, role: Role) {
        let mut versions = self.rules.versions();
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
            self.rules.info.remove(&RuleLabel { rule });
        }
        self.forget_ignores(|rule| versions.keeps(rule));
    }

    pub(crate) fn record_swap(&self, role: Role, result: SwapResult, gate: Option<&'static str>) {
        self.rules
            .swaps
            .get_or_create(&SwapLabel {
                role: role.as_str(),
                result: result.as_str(),
                gate: gate.unwrap_or_default(),
            })
            .inc();
    }

    pub(crate) fn record_shadow(&self, decisions: u64, disagreements: u64) {
        self.rules.shadow_decisions.inc_by(decisions);
        self.rules.shadow_disagreements.inc_by(disagreements);
    }
}
