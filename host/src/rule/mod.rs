//! Rules: what decides, per key, whether an incoming state is newer than the stored one.
//!
//! Its files, and what each holds: the module map in ARCHITECTURE.md.

pub mod check;
mod compile_cache;
mod engine;
mod gate;
mod imports;
mod limiter;
mod signature;
mod stand_ins;
pub mod vectors;

pub use compile_cache::{CompileCache, CompileCacheError};
pub use engine::{
    Compiled, CompiledRule, DEFAULT_MAX_COMPONENT_BYTES, DEFAULT_MEMORY_MIB, EngineLimits,
    InvalidInfo, LoadError, RuleEngine, WasmRule, read_component,
};
pub use gate::{
    Admitted, Gate, GateConfig, GateError, Gates, VECTORS_SECTION, content_hash, embedded_vectors,
    pack,
};
pub use imports::{ALLOWED_INTERFACES, ALLOWED_WASI_VERSION_PREFIX, Linked};
pub use signature::{
    FoundSignature, IntegrityError, KeyError, MalformedSignature, PublicKey, RELEASE_SECTION,
    SIGNATURE_SECTION, SignatureError, Signed, SigningKey, TrustedKeys, excerpt, is_content_hash,
    release, sign, signatures, with_release,
};
pub use stand_ins::{MONOTONIC_CLOCK_NS, RANDOM_SEED, WALL_CLOCK};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::entity::{Decision, DecisionKind, Event, RuleInfo, State};

/// Why one decision could not be had from a rule. The rule instance that failed is discarded;
/// the next call starts from a fresh one.
///
/// Its JSON form (in vector failures, counterexamples and shadow samples) names the variant in
/// snake case; a deadline is in milliseconds and a wasmtime error is its message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum DecideError {
    /// The call ran past the engine's deadline (the value) and was interrupted.
    #[error("rule ran past its deadline of {0:?} and was interrupted")]
    Deadline(#[serde(with = "millis")] Duration),
    /// The rule tried to grow its memory past the engine's cap.
    #[error("rule tried to grow its memory to {requested} bytes, past its cap of {cap} bytes")]
    MemoryCap {
        /// The memory size the rule asked for, in bytes.
        requested: usize,
        /// The cap, in bytes.
        cap: usize,
    },
    /// The call trapped (a panic, an unreachable, a call to an import that traps...).
    #[error("rule trapped: {0}")]
    Trap(#[source] WasmError),
    /// The rule answered a decision that breaks the contract: a bug in the rule.
    #[error("rule bug: {0}")]
    InvalidDecision(#[source] ContractViolation),
    /// A fresh instance of the rule could not be created.
    #[error("rule instance could not be created: {0}")]
    Instantiate(#[source] WasmError),
}

/// The error wasmtime reported for a rule call or instantiation, cheap to clone.
///
/// It displays its whole chain of causes (where wasmtime puts the trap and the wasm
/// backtrace), and two are equal when they report the same: wasmtime errors have no equality of
/// their own. Its JSON form is that text; read back, it is an error holding only the text.
#[derive(Debug, Clone)]
pub struct WasmError(Arc<wasmtime::Error>);

impl WasmError {
    /// The error as wasmtime reported it, e.g. to find the [`wasmtime::Trap`] in it.
    pub fn wasmtime(&self) -> &wasmtime::Error {
        &self.0
    }
}

impl From<wasmtime::Error> for WasmError {
    fn from(error: wasmtime::Error) -> Self {
        Self(Arc::new(error))
    }
}

impl std::fmt::Display for WasmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for WasmError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for WasmError {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.to_string() == other.to_string()
    }
}

impl Eq for WasmError {}

impl Serialize for WasmError {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for WasmError {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(|message| wasmtime::Error::msg(message).into())
    }
}

/// How a decision breaks the contract of `wit/rule.wit` (see [`validate`]). Always a bug in
/// the rule, never the event's fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum ContractViolation {
    /// `insert` over a key that already has a stored state.
    #[error("answered insert for key {key:?}, which already has a stored state")]
    InsertOverState {
        /// The event's key.
        key: String,
    },
    /// `update` over a key that has no stored state.
    #[error("answered update for key {key:?}, which has no stored state")]
    UpdateOverNothing {
        /// The event's key.
        key: String,
    },
    /// A state to store whose key is not the event's.
    #[error("answered a state of key {answered:?} for an event of key {incoming:?}")]
    OtherKey {
        /// The key of the state answered.
        answered: String,
        /// The event's key.
        incoming: String,
    },
    /// A state to store whose status the rule does not declare in its info.
    #[error("answered status {status:?}, which is not among its declared statuses {declared:?}")]
    UndeclaredStatus {
        /// The status answered.
        status: String,
        /// The statuses the rule declares.
        declared: Vec<String>,
    },
    /// A batch call answered another number of decisions than it was asked for.
    #[error("answered {answered} decisions for a batch of {asked}")]
    BatchLength {
        /// Decisions answered.
        answered: usize,
        /// Pairs asked.
        asked: usize,
    },
}

/// A [`Duration`] as whole milliseconds, in JSON.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        duration: &Duration,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

/// A business rule: decides, per key, what to store (see `wit/rule.wit`).
pub trait Rule {
    /// The rule's name, version and statuses.
    fn info(&self) -> &RuleInfo;

    /// Called by the pipeline before each batch, and only then: the one point where a rule that
    /// can be swapped takes up a new version, so that no batch is decided by two rules.
    fn before_batch(&mut self) {}

    /// Whether [`Rule::before_batch`] would take up a new version: the pipeline then finishes
    /// the batches in flight first, so that each is decided — and repaired — by the rule that
    /// stamped it.
    fn swap_pending(&self) -> bool {
        false
    }

    /// The decisions of a finished batch that were applied (one per event, whatever was
    /// decided again after a lost race): what a rule's share of `ignore`s is judged on.
    fn applied(&mut self, _decisions: &BTreeMap<DecisionKind, u64>) {}

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

    fn swap_pending(&self) -> bool {
        (**self).swap_pending()
    }

    fn applied(&mut self, decisions: &BTreeMap<DecisionKind, u64>) {
        (**self).applied(decisions);
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
    let bug = |violation| Err(DecideError::InvalidDecision(violation));
    let key = || incoming.key.clone();
    match (decision, current) {
        (Decision::Insert(_), Some(_)) => {
            return bug(ContractViolation::InsertOverState { key: key() });
        }
        (Decision::Update(_), None) => {
            return bug(ContractViolation::UpdateOverNothing { key: key() });
        }
        _ => {}
    }
    if let Some(state) = decision.stored_state() {
        if state.key != incoming.key {
            return bug(ContractViolation::OtherKey {
                answered: state.key.clone(),
                incoming: key(),
            });
        }
        if !info.statuses.contains(&state.status) {
            return bug(ContractViolation::UndeclaredStatus {
                status: state.status.clone(),
                declared: info.statuses.clone(),
            });
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
        assert!(matches!(
            verdict,
            Err(DecideError::InvalidDecision(ContractViolation::InsertOverState { key })) if key == "k"
        ));
        let message = validate(
            &info(),
            Some(&stored),
            &incoming,
            &Decision::Insert(incoming.clone()),
        )
        .expect_err("a rule bug")
        .to_string();
        assert_eq!(
            message,
            "rule bug: answered insert for key \"k\", which already has a stored state"
        );
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
        assert!(matches!(
            verdict,
            Err(DecideError::InvalidDecision(
                ContractViolation::UpdateOverNothing { .. }
            ))
        ));
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

    #[test]
    fn a_decide_error_keeps_its_cause_and_its_json_round_trips() {
        let trap = DecideError::Trap(wasmtime::Error::msg("wasm trap: unreachable").into());
        assert_eq!(trap.to_string(), "rule trapped: wasm trap: unreachable");
        let DecideError::Trap(cause) = &trap else {
            unreachable!()
        };
        assert_eq!(cause.wasmtime().to_string(), "wasm trap: unreachable");
        for error in [
            trap,
            DecideError::Deadline(Duration::from_millis(100)),
            DecideError::InvalidDecision(ContractViolation::BatchLength {
                answered: 1,
                asked: 2,
            }),
        ] {
            let json = serde_json::to_string(&error).expect("serialises");
            let back: DecideError = serde_json::from_str(&json).expect("deserialises");
            assert_eq!(back, error, "{json}");
        }
        assert_eq!(
            serde_json::to_string(&DecideError::Deadline(Duration::from_millis(100)))
                .expect("serialises"),
            r#"{"deadline":100}"#
        );
    }
}
