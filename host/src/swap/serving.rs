//! The rule a pipeline runs when rules can be swapped: it takes up a new generation of the
//! [`RuleControl`] only in [`Rule::before_batch`], so a batch is decided by exactly one rule and
//! every state it writes is stamped with that rule's `name@version`; a shadow decides beside it.

use std::sync::Arc;

use super::control::{RuleControl, now_ms};
use super::ignore_share::Meter;
use super::status::Disagreement;
use crate::entity::{Decision, DecisionKind, Event, RuleInfo, State};
use crate::rule::{DecideError, Rule, WasmRule};
use crate::telemetry::KindCounts;

/// Whether two decisions store the same thing; reasons of `ignore` and `reject` are free text
/// and do not count.
fn same(a: &Decision, b: &Decision) -> bool {
    a.kind() == b.kind() && a.stored_state() == b.stored_state()
}

/// The rule a pipeline runs when rules can be swapped: the active rule of a [`RuleControl`]
/// (and its shadow, whose decisions are compared and never applied).
#[derive(Debug)]
pub struct SwappableRule {
    control: Arc<RuleControl>,
    generation: u64,
    active: Deciding,
    /// The shadow, taken up with the active rule.
    shadow: Option<Deciding>,
}

/// A rule version as the pipeline runs it: an instance, its hash, and where its decisions are
/// counted.
#[derive(Debug)]
pub(super) struct Deciding {
    pub(super) rule: WasmRule,
    pub(super) hash: String,
    pub(super) meter: Meter,
}

/// Drops the instances a swap replaced on a blocking thread when there is a runtime: freeing a
/// big component's memories takes milliseconds the pipeline's task would pause for.
fn retire<T: Send + 'static>(retired: T) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(move || drop(retired))),
        Err(_) => drop(retired),
    }
}

impl SwappableRule {
    /// The active rule's instance, as the next batch will be decided by.
    pub fn active_rule(&self) -> &WasmRule {
        &self.active.rule
    }

    pub(super) fn new(
        control: Arc<RuleControl>,
        generation: u64,
        active: Deciding,
        shadow: Option<Deciding>,
    ) -> Self {
        Self {
            control,
            generation,
            active,
            shadow,
        }
    }

    /// Counts the active rule's decisions of one call; rolls it back when that brought its
    /// judgement and its ignore share jumped.
    fn count_active(&self, counts: &KindCounts) {
        if let Some(jump) = self.active.meter.record(counts) {
            self.control.auto_roll_back(&self.active.hash, &jump);
        }
    }

    fn shadow_compare(
        &mut self,
        items: &[(Option<State>, Event)],
        active: &[Decision],
        active_ignores: u64,
    ) -> Option<()> {
        let shadow = self.shadow.as_mut()?;
        let answers: Vec<Result<Decision, DecideError>> = match shadow.rule.decide_batch(items) {
            Ok(decisions) => decisions.into_iter().map(Ok).collect(),
            Err(_) => items
                .iter()
                .map(|(current, incoming)| shadow.rule.decide(current.as_ref(), incoming))
                .collect(),
        };
        // A shadow is never judged by itself (it has no probation): only a promotion is.
        shadow.meter.record(&KindCounts::of(
            answers.iter().filter_map(|answer| answer.as_ref().ok()),
        ));
        let at_ms = now_ms();
        let disagreements = items
            .iter()
            .zip(active)
            .zip(answers)
            .filter(|((_, active), shadow)| {
                !shadow.as_ref().is_ok_and(|shadow| same(active, shadow))
            })
            .map(|(((current, incoming), active), shadow)| Disagreement {
                at_ms,
                current: current.clone(),
                incoming: incoming.clone(),
                active: active.clone(),
                shadow,
            })
            .collect();
        self.control.record_shadow(
            &shadow.hash,
            items.len() as u64,
            active_ignores,
            disagreements,
        );
        Some(())
    }
}

impl Rule for SwappableRule {
    fn info(&self) -> &RuleInfo {
        self.active.rule.info()
    }

    fn swap_pending(&self) -> bool {
        self.control.generation() != self.generation
    }

    /// The active rule's share of `ignore`s, and its probation, are judged on applied
    /// decisions only: a key decided again after a lost race or a failed write counts once,
    /// so a store fault cannot make a healthy rule look silent.
    fn applied(&mut self, decisions: &std::collections::BTreeMap<DecisionKind, u64>) {
        self.count_active(&KindCounts::of_tally(decisions));
    }

    fn before_batch(&mut self) {
        if self.control.generation() != self.generation {
            let (generation, active, shadow) = self.control.serving();
            self.generation = generation;
            let retired = (
                std::mem::replace(&mut self.active, active),
                std::mem::replace(&mut self.shadow, shadow),
            );
            retire(retired);
        }
    }

    fn decide(
        &mut self,
        current: Option<&State>,
        incoming: &Event,
    ) -> Result<Decision, DecideError> {
        let decision = self.active.rule.decide(current, incoming)?;
        if self.shadow.is_some() {
            let counts = KindCounts::of([&decision]);
            let items = [(current.cloned(), incoming.clone())];
            self.shadow_compare(&items, std::slice::from_ref(&decision), counts.ignores());
        }
        Ok(decision)
    }

    fn decide_batch(
        &mut self,
        items: &[(Option<State>, Event)],
    ) -> Result<Vec<Decision>, DecideError> {
        let decisions = self.active.rule.decide_batch(items)?;
        if self.shadow.is_some() {
            let counts = KindCounts::of(&decisions);
            self.shadow_compare(items, &decisions, counts.ignores());
        }
        Ok(decisions)
    }
}
