//! What status reports about the rules: the versions serving, the last swap, a refusal, the
//! shadow's disagreements, and their redacted forms; and what the control remembers of a refusal.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::ignore_share::{AutoRollback, IgnoreShare};
use crate::entity::{Decision, Event, State};
use crate::rule::vectors::VectorFile;
use crate::rule::{DecideError, Gate, GateError, content_hash};
pub use crate::telemetry::{Role, SwapResult};

/// A rule version as status reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRef {
    /// `name@version`, the stamp on the states it writes.
    pub rule: String,
    /// The component's content hash.
    pub hash: String,
    /// Where it came from: `file:PATH`, `fleet`, `admin` or `auto-rollback` ([`Origin`](super::Origin)).
    pub origin: String,
    /// When it took its role, in ms since the Unix epoch.
    pub since_ms: u64,
    /// Its decisions and share of `ignore`s on this instance, in a status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignores: Option<IgnoreShare>,
}

/// Why a candidate was not taken.
///
/// Status reports it (across instances, through the fleet) as its gate and reason; the
/// gate's error itself is kept as its source where the refusal was made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refusal {
    /// The gate that refused; [`Gate::Swap`] when there was nothing to promote or roll back
    /// to.
    pub gate: Gate,
    /// Why, as the gate's error says it.
    pub reason: String,
    /// The gate's error, in the instance that refused (absent once read back from a status).
    #[serde(skip)]
    cause: Option<Arc<GateError>>,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused by the {} gate: {}", self.gate, self.reason)
    }
}

impl std::error::Error for Refusal {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|cause| cause as &(dyn std::error::Error + 'static))
    }
}

impl Refusal {
    /// A refusal the control makes itself, with no gate's error behind it.
    pub(super) fn new(gate: Gate, reason: String) -> Self {
        Self {
            gate,
            reason,
            cause: None,
        }
    }

    pub(super) fn by_gate(error: GateError) -> Self {
        Self {
            gate: error.gate(),
            reason: error.to_string(),
            cause: Some(Arc::new(error)),
        }
    }
}

/// Refusals are equal when they name the same gate and reason, wherever they were made.
impl PartialEq for Refusal {
    fn eq(&self, other: &Self) -> bool {
        self.gate == other.gate && self.reason == other.reason
    }
}

impl Eq for Refusal {}

/// The last swap attempted, applied or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwapRecord {
    /// When, in ms since the Unix epoch.
    pub at_ms: u64,
    /// The role the candidate was offered for.
    pub role: Role,
    /// Where it came from (as [`RuleRef::origin`]).
    pub origin: String,
    /// Its content hash.
    pub hash: String,
    /// The candidate's stamp, when it compiled far enough to say.
    pub rule: Option<String>,
    /// Whether it took its role.
    pub result: SwapResult,
    /// Why not, when refused.
    pub refusal: Option<Refusal>,
    /// When the control made this swap by itself: the version it rolled back, why, and both
    /// ignore shares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_rollback: Option<AutoRollback>,
}

/// One event the shadow decided otherwise than the active rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disagreement {
    /// When, in ms since the Unix epoch.
    pub at_ms: u64,
    /// The stored state both rules decided over.
    pub current: Option<State>,
    /// The event they decided for.
    pub incoming: Event,
    /// The active rule's decision (the one applied).
    pub active: Decision,
    /// The shadow's decision, or the error it failed with.
    pub shadow: Result<Decision, DecideError>,
}

/// The shadow and what it has seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowStatus {
    /// The shadow rule.
    pub rule: RuleRef,
    /// Events both rules decided.
    pub decisions: u64,
    /// Events they decided differently.
    pub disagreements: u64,
    /// The most recent disagreements, oldest first.
    pub samples: Vec<Disagreement>,
    /// The active rule's decisions and share of `ignore`s on the events the shadow decided:
    /// what the shadow's own share (in `rule.ignores`) is compared with before a promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_ignores: Option<IgnoreShare>,
}

/// What one instance serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleStatus {
    /// The rule deciding and applying.
    pub active: RuleRef,
    /// What a rollback returns to.
    pub previous: Option<RuleRef>,
    /// The rule deciding beside it, if any, and what it has seen.
    pub shadow: Option<ShadowStatus>,
    /// The last swap attempted, applied or not.
    pub last_swap: Option<SwapRecord>,
}

/// What stands for a key, a payload, a reason or an error text in a redacted status.
pub const REDACTED_DATA: &str = "<redacted>";

impl Disagreement {
    /// This disagreement without the data it was about: keys, payloads, `ignore`/`reject`
    /// reasons and the texts of traps replaced by [`REDACTED_DATA`]; statuses, versions,
    /// timestamps, the decisions' kinds and the kind of a failure kept. What status shows to
    /// anyone but a holder of the admin token.
    pub fn redacted(&self) -> Disagreement {
        Disagreement {
            at_ms: self.at_ms,
            current: self.current.as_ref().map(redact_entity),
            incoming: redact_entity(&self.incoming),
            active: redact_decision(&self.active),
            shadow: match &self.shadow {
                Ok(decision) => Ok(redact_decision(decision)),
                Err(error) => Err(redact_error(error)),
            },
        }
    }
}

impl RuleStatus {
    /// This status with every shadow sample [redacted](Disagreement::redacted); counts kept.
    pub fn redacted(mut self) -> RuleStatus {
        if let Some(shadow) = &mut self.shadow {
            for sample in &mut shadow.samples {
                *sample = sample.redacted();
            }
        }
        self
    }
}

fn redact_entity(entity: &crate::entity::Entity) -> crate::entity::Entity {
    crate::entity::Entity {
        key: REDACTED_DATA.to_owned(),
        status: entity.status.clone(),
        version: entity.version,
        timestamp_ms: entity.timestamp_ms,
        // Still canonical JSON, so the redacted form reads back like any status.
        payload: crate::entity::canonical_json(&serde_json::Value::from(REDACTED_DATA)),
    }
}

fn redact_decision(decision: &Decision) -> Decision {
    match decision {
        Decision::Insert(state) => Decision::Insert(redact_entity(state)),
        Decision::Update(state) => Decision::Update(redact_entity(state)),
        Decision::Ignore(_) => Decision::Ignore(REDACTED_DATA.to_owned()),
        Decision::Reject(_) => Decision::Reject(REDACTED_DATA.to_owned()),
    }
}

fn redact_error(error: &DecideError) -> DecideError {
    use crate::rule::ContractViolation as Violation;
    let redacted_text = || crate::rule::WasmError::from(wasmtime::Error::msg(REDACTED_DATA));
    match error {
        DecideError::Deadline(_) | DecideError::MemoryCap { .. } => error.clone(),
        // A panic message may quote the event.
        DecideError::Trap(_) => DecideError::Trap(redacted_text()),
        DecideError::Instantiate(_) => DecideError::Instantiate(redacted_text()),
        // Exhaustive on purpose: a new violation must decide what of it may show.
        DecideError::InvalidDecision(violation) => DecideError::InvalidDecision(match violation {
            Violation::InsertOverState { .. } => Violation::InsertOverState {
                key: REDACTED_DATA.to_owned(),
            },
            Violation::UpdateOverNothing { .. } => Violation::UpdateOverNothing {
                key: REDACTED_DATA.to_owned(),
            },
            Violation::OtherKey { .. } => Violation::OtherKey {
                answered: REDACTED_DATA.to_owned(),
                incoming: REDACTED_DATA.to_owned(),
            },
            Violation::UndeclaredStatus { .. } | Violation::BatchLength { .. } => violation.clone(),
        }),
    }
}

/// A refused candidate: why, and the digest of the sidecar vectors it was judged with.
#[derive(Debug, Clone)]
pub(super) struct Refused {
    pub(super) refusal: Refusal,
    sidecar: Option<String>,
}

impl Refused {
    pub(super) fn new(refusal: Refusal, sidecar: Option<String>) -> Self {
        Self { refusal, sidecar }
    }

    /// Whether offering the same bytes with `sidecar` deserves another judgement: only a
    /// refusal the sidecar's vectors decided (its own gate, or the convergence check, which
    /// draws values from them), and only when those vectors changed. A refusal for the
    /// bytes themselves or for the version's behaviour on live events stands.
    pub(super) fn regated_by(&self, sidecar: Option<&String>) -> bool {
        matches!(self.refusal.gate, Gate::Vectors | Gate::Convergence)
            && sidecar.is_some()
            && sidecar != self.sidecar.as_ref()
    }
}

/// The digest of a sidecar vector file, as refusals remember it.
pub(super) fn sidecar_digest(vectors: &VectorFile) -> String {
    content_hash(&serde_json::to_vec(vectors).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redacted_sample_keeps_its_shape_and_hides_its_data() {
        let entity = |status: &str, version| crate::entity::Entity {
            key: "alice@example.com".to_owned(),
            status: status.to_owned(),
            version,
            timestamp_ms: 7,
            payload: r#"{"card":"4111"}"#.to_owned(),
        };
        let sample = Disagreement {
            at_ms: 1,
            current: Some(entity("paid", 5)),
            incoming: entity("refunded", 1),
            active: Decision::Update(entity("refunded", 1)),
            shadow: Ok(Decision::Ignore("alice@example.com is stale".to_owned())),
        };
        let redacted = sample.redacted();
        let text = serde_json::to_string(&redacted).expect("serialises");
        assert!(!text.contains("alice") && !text.contains("4111"), "{text}");
        assert_eq!(redacted.incoming.status, "refunded");
        assert_eq!(redacted.incoming.version, 1);
        assert_eq!(redacted.active.kind(), sample.active.kind());
        assert!(
            matches!(&redacted.shadow, Ok(Decision::Ignore(reason)) if reason == REDACTED_DATA)
        );
        // It reads back as it was written, as the fleet's instance reports are.
        let back: Disagreement = serde_json::from_str(&text).expect("reads back");
        assert_eq!(back, redacted);
        let failed = Disagreement {
            shadow: Err(DecideError::InvalidDecision(
                crate::rule::ContractViolation::OtherKey {
                    answered: "bob".to_owned(),
                    incoming: "alice@example.com".to_owned(),
                },
            )),
            ..sample
        };
        let text = serde_json::to_string(&failed.redacted()).expect("serialises");
        assert!(!text.contains("alice") && !text.contains("bob"), "{text}");
    }

    #[test]
    fn a_refusal_reads_back_as_its_gate_and_reason_and_keeps_its_cause_where_made() {
        let refusal = Refusal::by_gate(GateError::NoVectors);
        assert_eq!(refusal.gate, Gate::Vectors);
        assert!(
            std::error::Error::source(&refusal)
                .is_some_and(|cause| cause.downcast_ref::<GateError>().is_some())
        );
        let json = serde_json::to_value(&refusal).expect("serialises");
        assert_eq!(json["gate"], "vectors");
        assert_eq!(json.as_object().map(|object| object.len()), Some(2));
        let back: Refusal = serde_json::from_value(json).expect("deserialises");
        assert_eq!(back, refusal);
        assert!(std::error::Error::source(&back).is_none());
    }
}
