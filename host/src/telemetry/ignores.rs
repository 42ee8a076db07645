//! Visible silence: `ignore` decisions by reason, and every rule version's decisions and ignore
//! share.
//!
//! An `ignore` is acknowledged without a trace in the store, so a rule that ignores what it
//! should not loses events silently. These metrics make the silence visible:
//! `ignores_total{rule,reason}` (the applied ignores, counted with the other outcomes once per
//! batch), `rule_decisions_total{rule,role,decision}` and `ignore_share{rule,role}` (every
//! decision a rule version makes, active or shadow, counted where it is made).
//!
//! A reason is the rule's own free text, and a label value is a time series: a rule quoting
//! keys in its reasons would create one per key. So a reason is normalised (control characters
//! dropped, whitespace runs made one space, at most [`MAX_REASON_CHARS`] characters) and each
//! rule version gets at most [`MAX_REASONS_PER_RULE`] of them; further ones are counted as
//! [`OTHER_REASON`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{Metrics, Role};
use crate::entity::{Decision, DecisionKind};

/// The longest reason label, in characters.
pub(crate) const MAX_REASON_CHARS: usize = 64;
/// Distinct reason labels per rule version before further ones are folded into
/// [`OTHER_REASON`].
pub(crate) const MAX_REASONS_PER_RULE: usize = 32;
/// The reason label of every reason past a rule version's first [`MAX_REASONS_PER_RULE`].
pub(crate) const OTHER_REASON: &str = "other";
/// The reason label of a reason with nothing left after normalising.
const EMPTY_REASON: &str = "(empty)";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IgnoreLabel {
    rule: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleDecisionLabel {
    rule: String,
    role: &'static str,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleRoleLabel {
    rule: String,
    role: &'static str,
}

/// The metrics of this module, registered with the others.
#[derive(Debug)]
pub(super) struct SilenceMetrics {
    ignores: Family<IgnoreLabel, Counter>,
    rule_decisions: Family<RuleDecisionLabel, Counter>,
    ignore_share: Family<RuleRoleLabel, Gauge<f64, AtomicU64>>,
    auto_rollbacks: Counter,
    reasons: Mutex<ReasonLabels>,
}

impl SilenceMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let ignores = Family::<IgnoreLabel, Counter>::default();
        registry.register(
            "ignores",
            "Events the active rule ignored (acknowledged, nothing stored), by rule version and the rule's reason (normalised; past 32 reasons per version: other)",
            ignores.clone(),
        );
        let rule_decisions = Family::<RuleDecisionLabel, Counter>::default();
        registry.register(
            "rule_decisions",
            "Decisions each rule version made, by role (active, shadow) and outcome; decisions made again after a lost compare-and-set count again",
            rule_decisions.clone(),
        );
        let ignore_share = Family::<RuleRoleLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "ignore_share",
            "Share of a rule version's decisions that are ignore, over about its last 10,000 decisions in the role",
            ignore_share.clone(),
        );
        let auto_rollbacks = Counter::default();
        registry.register(
            "rule_auto_rollbacks",
            "Swaps rolled back by the control because the new version's ignore share jumped (rule.auto_rollback)",
            auto_rollbacks.clone(),
        );
        Self {
            ignores,
            rule_decisions,
            ignore_share,
            auto_rollbacks,
            reasons: Mutex::new(ReasonLabels::default()),
        }
    }
}

/// The decisions one rule version made in one role, as the metrics count them: handles taken
/// once when the version takes up its role, so counting is a few atomic additions.
#[derive(Debug, Clone)]
pub(crate) struct RuleMeter {
    /// By [`DecisionKind::ALL`]'s order.
    decisions: [Counter; 4],
    share: Gauge<f64, AtomicU64>,
}

impl RuleMeter {
    /// Counts `counts` and sets the version's current ignore share.
    pub(crate) fn record(&self, counts: &KindCounts, share: f64) {
        for (counter, count) in self.decisions.iter().zip(counts.0) {
            if count > 0 {
                counter.inc_by(count);
            }
        }
        self.share.set(share);
    }
}

/// Decisions by kind, in [`DecisionKind::ALL`]'s order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct KindCounts(pub [u64; 4]);

impl KindCounts {
    /// Counts `decisions` by kind.
    pub(crate) fn of<'a>(decisions: impl IntoIterator<Item = &'a Decision>) -> Self {
        let mut counts = Self::default();
        for decision in decisions {
            counts.0[index(decision.kind())] += 1;
        }
        counts
    }

    /// Counts a batch's tally of decisions by kind.
    pub(crate) fn of_tally(tally: &std::collections::BTreeMap<DecisionKind, u64>) -> Self {
        let mut counts = Self::default();
        for (kind, count) in tally {
            counts.0[index(*kind)] += count;
        }
        counts
    }

    /// Every decision counted.
    pub(crate) fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The `ignore`s among them.
    pub(crate) fn ignores(&self) -> u64 {
        self.0[index(DecisionKind::Ignore)]
    }
}

fn index(kind: DecisionKind) -> usize {
    match kind {
        DecisionKind::Insert => 0,
        DecisionKind::Update => 1,
        DecisionKind::Ignore => 2,
        DecisionKind::Reject => 3,
    }
}

impl Metrics {
    /// Counts a batch's applied ignores of rule `rule` (its stamp) by reason.
    pub(crate) fn record_ignores(&self, rule: &str, reasons: &HashMap<String, u64>) {
        if reasons.is_empty() {
            return;
        }
        let mut labels = self
            .silence
            .reasons
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (reason, count) in reasons {
            let reason = labels.label(rule, reason);
            self.silence
                .ignores
                .get_or_create(&IgnoreLabel {
                    rule: rule.to_owned(),
                    reason,
                })
                .inc_by(*count);
        }
    }

    /// The handles counting rule `rule`'s decisions in `role` (`active` or `shadow`).
    pub(crate) fn rule_meter(&self, rule: &str, role: Role) -> RuleMeter {
        self.metered(rule, role);
        let counter = |kind: DecisionKind| {
            self.silence
                .rule_decisions
                .get_or_create(&RuleDecisionLabel {
                    rule: rule.to_owned(),
                    role: role.as_str(),
                    decision: kind.as_str(),
                })
                .clone()
        };
        RuleMeter {
            decisions: DecisionKind::ALL.map(counter),
            share: self
                .silence
                .ignore_share
                .get_or_create(&RuleRoleLabel {
                    rule: rule.to_owned(),
                    role: role.as_str(),
                })
                .clone(),
        }
    }

    pub(crate) fn record_auto_rollback(&self) {
        self.silence.auto_rollbacks.inc();
    }

    /// Drops the `ignores_total` series of every version `keep` does not keep.
    pub(super) fn forget_ignores(&self, keep: impl Fn(&str) -> bool) {
        let mut labels = self
            .silence
            .reasons
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        labels.by_rule.retain(|rule, reasons| {
            if keep(rule) {
                return true;
            }
            for reason in reasons.drain() {
                self.silence.ignores.remove(&IgnoreLabel {
                    rule: rule.clone(),
                    reason,
                });
            }
            false
        });
    }
}

impl SilenceMetrics {
    /// Drops the decision and ignore-share series of version `rule`, metered in `roles`.
    pub(super) fn forget(&self, rule: &str, roles: &HashSet<Role>) {
        for role in roles.iter().map(|role| role.as_str()) {
            for kind in DecisionKind::ALL {
                self.rule_decisions.remove(&RuleDecisionLabel {
                    rule: rule.to_owned(),
                    role,
                    decision: kind.as_str(),
                });
            }
            self.ignore_share.remove(&RuleRoleLabel {
                rule: rule.to_owned(),
                role,
            });
        }
    }
}

/// The reason labels each rule version has used so far.
#[derive(Debug, Default)]
struct ReasonLabels {
    by_rule: HashMap<String, HashSet<String>>,
}

impl ReasonLabels {
    /// The label `reason` is counted under for `rule`: the reason normalised, or
    /// [`OTHER_REASON`] once the rule has used [`MAX_REASONS_PER_RULE`] others. A new label is
    /// logged once.
    fn label(&mut self, rule: &str, reason: &str) -> String {
        let reason = normalise_reason(reason);
        if let Some(known) = self.by_rule.get(rule)
            && known.contains(&reason)
        {
            return reason;
        }
        let known = self.by_rule.entry(rule.to_owned()).or_default();
        if known.len() >= MAX_REASONS_PER_RULE {
            if known.insert(OTHER_REASON.to_owned()) {
                tracing::warn!(
                    rule,
                    reason = %reason,
                    limit = MAX_REASONS_PER_RULE,
                    "the rule gives more ignore reasons than the metrics keep apart; further ones are counted as \"other\""
                );
            }
            return OTHER_REASON.to_owned();
        }
        tracing::info!(rule, reason = %reason, "new ignore reason");
        known.insert(reason.clone());
        reason
    }
}

/// `reason` as a label value: control characters dropped, whitespace runs made one space,
/// trimmed, at most [`MAX_REASON_CHARS`] characters.
pub(crate) fn normalise_reason(reason: &str) -> String {
    let mut label = String::with_capacity(reason.len().min(MAX_REASON_CHARS));
    let mut chars = 0;
    let mut pending_space = false;
    for c in reason.chars() {
        if c.is_whitespace() {
            pending_space = !label.is_empty();
            continue;
        }
        if c.is_control() {
            continue;
        }
        let needed = 1 + usize::from(pending_space);
        if chars + needed > MAX_REASON_CHARS {
            break;
        }
        if pending_space {
            label.push(' ');
            pending_space = false;
        }
        label.push(c);
        chars += needed;
    }
    if label.is_empty() {
        EMPTY_REASON.to_owned()
    } else {
        label
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_trimmed_cleaned_and_cut() {
        assert_eq!(normalise_reason("stale"), "stale");
        assert_eq!(
            normalise_reason("  stale \t version\n\n3 "),
            "stale version 3"
        );
        assert_eq!(normalise_reason("a\u{0}b\u{1b}[31mc"), "ab[31mc");
        assert_eq!(normalise_reason(" \n\u{7f} "), EMPTY_REASON);
        let long = "é".repeat(200);
        assert_eq!(normalise_reason(&long).chars().count(), MAX_REASON_CHARS);
        let spaced = format!("{} b", "a".repeat(MAX_REASON_CHARS - 1));
        assert_eq!(normalise_reason(&spaced), "a".repeat(MAX_REASON_CHARS - 1));
    }

    #[test]
    fn reasons_past_the_limit_of_a_rule_version_are_folded_into_other() {
        let metrics = Metrics::new();
        let reasons: HashMap<String, u64> = (0..MAX_REASONS_PER_RULE + 8)
            .map(|n| (format!("stale key order-{n}"), 2))
            .collect();
        metrics.record_ignores("noisy@1", &reasons);
        metrics.record_ignores("noisy@1", &reasons);
        metrics.record_ignores("quiet@1", &HashMap::from([("stale".to_owned(), 5)]));
        let text = metrics.render();
        let lines: Vec<&str> = text
            .lines()
            .filter(|line| line.starts_with("converge_ignores_total{rule=\"noisy@1\""))
            .collect();
        assert_eq!(lines.len(), MAX_REASONS_PER_RULE + 1, "{text}");
        let total: u64 = lines
            .iter()
            .map(|line| {
                line.rsplit(' ')
                    .next()
                    .and_then(|value| value.parse::<u64>().ok())
                    .expect("a count")
            })
            .sum();
        assert_eq!(total, 2 * 2 * (MAX_REASONS_PER_RULE as u64 + 8));
        assert!(
            text.contains("converge_ignores_total{rule=\"noisy@1\",reason=\"other\"} 32"),
            "{text}"
        );
        // Another version has a budget of its own.
        assert!(
            text.contains("converge_ignores_total{rule=\"quiet@1\",reason=\"stale\"} 5"),
            "{text}"
        );
    }

    #[test]
    fn decisions_are_counted_by_kind() {
        let state = crate::entity::Event {
            key: "k".to_owned(),
            status: "paid".to_owned(),
            version: 1,
            timestamp_ms: 0,
            payload: "null".to_owned(),
        };
        let decisions = [
            Decision::Insert(state.clone()),
            Decision::Ignore("stale".to_owned()),
            Decision::Ignore("duplicate".to_owned()),
            Decision::Update(state),
            Decision::Reject("bad".to_owned()),
        ];
        let counts = KindCounts::of(&decisions);
        assert_eq!(counts.0, [1, 1, 2, 1]);
        assert_eq!((counts.total(), counts.ignores()), (5, 2));
        let metrics = Metrics::new();
        metrics.rule_meter("r@1", Role::Shadow).record(&counts, 0.4);
        let text = metrics.render();
        assert!(
            text.contains(
                "converge_rule_decisions_total{rule=\"r@1\",role=\"shadow\",decision=\"ignore\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("converge_ignore_share{rule=\"r@1\",role=\"shadow\"} 0.4"),
            "{text}"
        );
    }
}
