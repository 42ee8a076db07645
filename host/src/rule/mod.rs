//! Rules: what decides, per key, whether an incoming state is newer than the stored one.
//!
//! # Layout
//! - this module: the [`Rule`] trait every rule runner implements, and [`validate`], the
//!   contract checks on a decision;
//! - `engine`: compiles rule components and runs them under a deadline and a memory cap
//!   ([`RuleEngine`], [`CompiledRule`], [`WasmRule`]);
//! - `imports`: the import allowlist a component must stay within;
//! - [`vectors`]: conformance vectors, fixed cases a rule must answer as written;
//! - [`check`]: the convergence property check and its minimal counterexamples;
//! - `gate`: what a candidate passes before it serves ([`Gates`]), and the vectors a component
//!   carries in a custom section.

pub mod check;
mod engine;
mod gate;
mod imports;
pub mod vectors;

pub use engine::{CompiledRule, EngineLimits, LoadError, RuleEngine, WasmRule};
pub use gate::{
    Admitted, GateConfig, GateError, Gates, VECTORS_SECTION, content_hash, embedded_vectors, pack,
};
pub use imports::{ALLOWED_INTERFACES, ALLOWED_WASI_VERSION_PREFIX};

use std::time::Duration;

use crate::entity::{Decision, Event, RuleInfo, State};

/// Why one decision could not be had from a rule. The rule instance that failed is discarded;
/// the next call starts from a fresh one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    #[error("rule ran past its deadline of {0:?} and was interrupted")]
    Deadline(Duration),
    #[error("rule tried to grow its memory to {requested} bytes, past its cap of {cap} bytes")]
    MemoryCap { requested: usize, cap: usize },
    #[error("rule trapped: {0}")]
    Trap(String),
    #[error("rule bug: {0}")]
    InvalidDecision(String),
    #[error("rule instance could not be created: {0}")]
    Instantiate(String),
}

/// A business rule: decides, per key, what to store (see `wit/rule.wit`).
pub trait Rule {
    /// The rule's name, version and statuses.
    fn info(&self) -> &RuleInfo;

    /// Called by the pipeline before each batch, and only then: the one point where a rule that
    /// can be swapped takes up a new version, so that no batch is decided by two rules.
    fn before_batch(&mut self) {}

    /// Decides for one event. Implementations validate the decision with [`validate`].
    fn decide(
        &mut self,
        current: Option<&State>,
        incoming: &Event,
    ) -> Result<Decision, DecideError>;

    /// Decides for many independent pairs; element `i` answers pair `i`. An error says the
    /// batch as a whole failed: callers decide the pairs one by one to find the culprit.
    fn decide_batch(
        &mut self,
        items: &[(Option<State>, Event)],
    ) -> Result<Vec<Decision>, DecideError> {
        items
            .iter()
            .map(|(current, incoming)| self.decide(current.as_ref(), incoming))
            .collect()
    }
}

impl<R: Rule + ?Sized> Rule for Box<R> {
    fn info(&self) -> &RuleInfo {
        (**self).info()
    }

    fn before_batch(&mut self) {
        (**self).before_batch();
    }

    fn decide(
        &mut self,
        current: Option<&State>,
        incoming: &Event,
    ) -> Result<Decision, DecideError> {
        (**self).decide(current, incoming)
    }

    fn decide_batch(
        &mut self,
        items: &[(Option<State>, Event)],
    ) -> Result<Vec<Decision>, DecideError> {
        (**self).decide_batch(items)
    }
}

/// Checks that a decision obeys the contract for the arguments it answers: `insert` only over
/// nothing, `update` only over a state, the stored state of the event's key and of a status the
/// rule declares. A violation is a bug in the rule, never the event's fault.
pub fn validate(
    info: &RuleInfo,
    current: Option<&State>,
    incoming: &Event,
    decision: &Decision,
) -> Result<(), DecideError> {
    let bug = |message: String| Err(DecideError::InvalidDecision(message));
    match (decision, current) {
        (Decision::Insert(_), Some(_)) => {
            return bug(format!(
                "answered insert for key {:?}, which already has a stored state",
                incoming.key
            ));
        }
        (Decision::Update(_), None) => {
            return bug(format!(
                "answered update for key {:?}, which has no stored state",
                incoming.key
            ));
        }
        _ => {}
    }
    if let Some(state) = decision.stored_state() {
        if state.key != incoming.key {
            return bug(format!(
                "answered a state of key {:?} for an event of key {:?}",
                state.key, incoming.key
            ));
        }
        if !info.statuses.contains(&state.status) {
            return bug(format!(
                "answered status {:?}, which is not among its declared statuses {:?}",
                state.status, info.statuses
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> RuleInfo {
        RuleInfo {
            name: "t".to_owned(),
            version: "1".to_owned(),
            statuses: vec!["a".to_owned(), "b".to_owned()],
        }
    }

    fn entity(key: &str, status: &str) -> State {
        State {
            key: key.to_owned(),
            status: status.to_owned(),
            version: 0,
            timestamp_ms: 0,
            payload: "null".to_owned(),
        }
    }

    #[test]
    fn insert_over_a_stored_state_is_a_rule_bug() {
        let stored = entity("k", "a");
        let incoming = entity("k", "b");
        let verdict = validate(
            &info(),
            Some(&stored),
            &incoming,
            &Decision::Insert(incoming.clone()),
        );
        assert!(matches!(verdict, Err(DecideError::InvalidDecision(m)) if m.contains("insert")));
    }

    #[test]
    fn update_over_nothing_is_a_rule_bug() {
        let incoming = entity("k", "b");
        let verdict = validate(
            &info(),
            None,
            &incoming,
            &Decision::Update(incoming.clone()),
        );
        assert!(matches!(verdict, Err(DecideError::InvalidDecision(_))));
    }

    #[test]
    fn a_state_of_another_key_or_unknown_status_is_a_rule_bug() {
        let incoming = entity("k", "b");
        let other_key = Decision::Insert(entity("x", "b"));
        assert!(validate(&info(), None, &incoming, &other_key).is_err());
        let unknown = Decision::Insert(entity("k", "zzz"));
        assert!(validate(&info(), None, &incoming, &unknown).is_err());
    }

    #[test]
    fn valid_decisions_pass() {
        let stored = entity("k", "a");
        let incoming = entity("k", "b");
        for decision in [
            Decision::Update(incoming.clone()),
            Decision::Ignore("stale".to_owned()),
            Decision::Reject("bad".to_owned()),
        ] {
            assert_eq!(
                validate(&info(), Some(&stored), &incoming, &decision),
                Ok(())
            );
        }
        assert_eq!(
            validate(
                &info(),
                None,
                &incoming,
                &Decision::Insert(incoming.clone())
            ),
            Ok(())
        );
    }
}
