//! The rule control: what serves (active, previous, shadow), and the one place it changes.
//!
//! The pipeline runs a [`SwappableRule`], which takes up a new generation only in
//! [`Rule::before_batch`]: a batch is decided by exactly one rule, and every state it writes is
//! stamped with that rule's `name@version`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::entity::{Decision, Event, RuleInfo, State};
use crate::rule::vectors::VectorFile;
use crate::rule::{Admitted, Gate, GateError, Gates, content_hash};
use crate::rule::{CompiledRule, WasmRule};
use crate::rule::{DecideError, Rule};
use crate::telemetry::Metrics;
use crate::telemetry::events::{RuleRefused, RuleSwapped};

/// How many shadow disagreements are kept for inspection (the most recent).
const KEPT_SAMPLES: usize = 20;

/// Whether a candidate is to serve or to decide beside the serving rule without applying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Decides and applies: the serving rule.
    Active,
    /// Decides beside the active rule; its decisions are compared, never applied.
    Shadow,
}

impl Role {
    /// `active` or `shadow`, as metrics, logs and the fleet's keys name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Active => "active",
            Role::Shadow => "shadow",
        }
    }
}

/// A rule version as status reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRef {
    /// `name@version`, the stamp on the states it writes.
    pub rule: String,
    /// The component's content hash.
    pub hash: String,
    /// Where it came from: `file:PATH`, `fleet`, `admin`, `rollback`, `promote`.
    pub origin: String,
    /// When it took its role, in ms since the Unix epoch.
    pub since_ms: u64,
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
    fn by_gate(error: GateError) -> Self {
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

/// Whether a swap took place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SwapResult {
    /// The candidate took its role.
    Applied,
    /// A gate refused it; nothing that serves changed.
    Refused,
}

impl SwapResult {
    /// `applied` or `refused`, as metrics label it.
    pub fn as_str(self) -> &'static str {
        match self {
            SwapResult::Applied => "applied",
            SwapResult::Refused => "refused",
        }
    }
}

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

#[derive(Debug, Clone)]
struct Serving {
    compiled: CompiledRule,
    reference: RuleRef,
}

#[derive(Debug)]
struct ControlState {
    active: Serving,
    previous: Option<Serving>,
    shadow: Option<(Serving, ShadowCounts)>,
    last_swap: Option<SwapRecord>,
    /// Candidates already refused, by hash, so that a fleet pointer at a bad rule is not
    /// compiled again on every poll.
    refused: HashMap<String, Refusal>,
}

#[derive(Debug, Default)]
struct ShadowCounts {
    decisions: u64,
    disagreements: u64,
    samples: VecDeque<Disagreement>,
}

/// What serves, and the one place it changes.
#[derive(Debug)]
pub struct RuleControl {
    gates: Gates,
    state: Mutex<ControlState>,
    /// Bumped on every change of the active or shadow rule; pipelines compare it before each
    /// batch.
    generation: AtomicU64,
    metrics: Arc<Metrics>,
}

impl RuleControl {
    /// Starts with `initial` serving (it has passed the gates already).
    pub fn new(gates: Gates, initial: Admitted, origin: &str, metrics: Arc<Metrics>) -> Self {
        let active = Serving {
            reference: reference(&initial.compiled, &initial.hash, origin),
            compiled: initial.compiled,
        };
        metrics.set_rule(active.compiled.info());
        Self {
            gates,
            state: Mutex::new(ControlState {
                active,
                previous: None,
                shadow: None,
                last_swap: None,
                refused: HashMap::new(),
            }),
            generation: AtomicU64::new(0),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gates `bytes` and, if they pass, makes them the active or shadow rule from the next
    /// batch on. A refused candidate changes nothing that serves. CPU-bound on a new candidate
    /// (compile and check): call it from a blocking thread in async code.
    pub fn offer(
        &self,
        bytes: &[u8],
        sidecar: Option<VectorFile>,
        origin: &str,
        role: Role,
    ) -> Result<RuleRef, Refusal> {
        let hash = content_hash(bytes);
        let known = {
            let state = self.lock();
            // (A sidecar may have changed since: then the candidate is gated again.)
            if let Some(refusal) = state.refused.get(&hash).filter(|_| sidecar.is_none()) {
                return Err(refusal.clone());
            }
            let current = match role {
                Role::Active => Some(&state.active),
                Role::Shadow => state.shadow.as_ref().map(|(serving, _)| serving),
            };
            if let Some(current) = current.filter(|s| s.reference.hash == hash) {
                return Ok(current.reference.clone());
            }
            // A version this instance has already gated need not be gated again.
            [
                Some(&state.active),
                state.previous.as_ref(),
                state.shadow.as_ref().map(|(serving, _)| serving),
            ]
            .into_iter()
            .flatten()
            .find(|serving| serving.reference.hash == hash)
            .map(|serving| serving.compiled.clone())
        };
        let compiled = match known {
            Some(compiled) => compiled,
            None => match self.gates.admit(bytes, sidecar) {
                Ok(admitted) => admitted.compiled,
                Err(error) => {
                    let refusal = Refusal::by_gate(error);
                    self.refuse(role, origin, &hash, refusal.clone());
                    return Err(refusal);
                }
            },
        };
        Ok(self.apply(role, compiled, &hash, origin))
    }

    fn refuse(&self, role: Role, origin: &str, hash: &str, refusal: Refusal) {
        self.metrics.emit(RuleRefused {
            role: role.as_str(),
            hash,
            origin,
            gate: refusal.gate.as_str(),
            reason: &refusal.reason,
        });
        let mut state = self.lock();
        state.last_swap = Some(SwapRecord {
            at_ms: now_ms(),
            role,
            origin: origin.to_owned(),
            hash: hash.to_owned(),
            rule: None,
            result: SwapResult::Refused,
            refusal: Some(refusal.clone()),
        });
        state.refused.insert(hash.to_owned(), refusal);
    }

    fn apply(&self, role: Role, compiled: CompiledRule, hash: &str, origin: &str) -> RuleRef {
        let serving = Serving {
            reference: reference(&compiled, hash, origin),
            compiled,
        };
        let applied = serving.reference.clone();
        {
            let mut state = self.lock();
            match role {
                Role::Active => {
                    if state
                        .shadow
                        .as_ref()
                        .is_some_and(|(shadow, _)| shadow.reference.hash == hash)
                    {
                        state.shadow = None;
                    }
                    let previous = std::mem::replace(&mut state.active, serving);
                    state.previous = Some(previous);
                }
                Role::Shadow => state.shadow = Some((serving, ShadowCounts::default())),
            }
            state.last_swap = Some(SwapRecord {
                at_ms: now_ms(),
                role,
                origin: origin.to_owned(),
                hash: hash.to_owned(),
                rule: Some(applied.rule.clone()),
                result: SwapResult::Applied,
                refusal: None,
            });
            self.generation.fetch_add(1, Ordering::AcqRel);
            if role == Role::Active {
                self.metrics.set_rule(state.active.compiled.info());
            }
        }
        self.metrics.emit(RuleSwapped {
            role: role.as_str(),
            rule: &applied.rule,
            hash,
            origin,
        });
        applied
    }

    /// Makes the shadow the active rule.
    pub fn promote(&self, origin: &str) -> Result<RuleRef, Refusal> {
        let shadow = self
            .lock()
            .shadow
            .as_ref()
            .map(|(serving, _)| serving.clone());
        let Some(shadow) = shadow else {
            return Err(nothing_to("promote: no shadow rule is loaded"));
        };
        Ok(self.apply(
            Role::Active,
            shadow.compiled,
            &shadow.reference.hash,
            origin,
        ))
    }

    /// Makes the previous rule active again (the active one becomes the previous).
    pub fn rollback(&self, origin: &str) -> Result<RuleRef, Refusal> {
        let previous = self.lock().previous.clone();
        let Some(previous) = previous else {
            return Err(nothing_to("roll back: no previous rule"));
        };
        Ok(self.apply(
            Role::Active,
            previous.compiled,
            &previous.reference.hash,
            origin,
        ))
    }

    /// Stops the shadow, if any.
    pub fn clear_shadow(&self, origin: &str) {
        let cleared = self.lock().shadow.take();
        if let Some((shadow, _)) = cleared {
            self.generation.fetch_add(1, Ordering::AcqRel);
            tracing::info!(rule = %shadow.reference.rule, origin, "shadow rule stopped");
        }
    }

    /// The content hash of the active rule.
    pub fn active_hash(&self) -> String {
        self.lock().active.reference.hash.clone()
    }

    /// The content hash of the shadow rule, if one runs.
    pub fn shadow_hash(&self) -> Option<String> {
        self.lock()
            .shadow
            .as_ref()
            .map(|(serving, _)| serving.reference.hash.clone())
    }

    /// The active rule's name, version and statuses.
    pub fn active_info(&self) -> RuleInfo {
        self.lock().active.compiled.info().clone()
    }

    /// What this instance serves, its last swap and what the shadow has seen.
    pub fn status(&self) -> RuleStatus {
        let state = self.lock();
        RuleStatus {
            active: state.active.reference.clone(),
            previous: state.previous.as_ref().map(|s| s.reference.clone()),
            shadow: state.shadow.as_ref().map(|(serving, counts)| ShadowStatus {
                rule: serving.reference.clone(),
                decisions: counts.decisions,
                disagreements: counts.disagreements,
                samples: counts.samples.iter().cloned().collect(),
            }),
            last_swap: state.last_swap.clone(),
        }
    }

    /// The rule a pipeline runs: follows this control between batches.
    pub fn rule(self: &Arc<Self>) -> SwappableRule {
        let (generation, active, shadow) = self.serving();
        SwappableRule {
            control: Arc::clone(self),
            generation,
            active,
            shadow,
        }
    }

    fn serving(&self) -> (u64, WasmRule, Option<(WasmRule, String)>) {
        let state = self.lock();
        (
            self.generation.load(Ordering::Acquire),
            state.active.compiled.instance(),
            state
                .shadow
                .as_ref()
                .map(|(serving, _)| (serving.compiled.instance(), serving.reference.hash.clone())),
        )
    }

    fn record_shadow(&self, shadow_hash: &str, decisions: u64, disagreements: Vec<Disagreement>) {
        let mut state = self.lock();
        let Some((serving, counts)) = state.shadow.as_mut() else {
            return;
        };
        // The shadow may have changed since the batch began; its counts are not ours.
        if serving.reference.hash != shadow_hash {
            return;
        }
        counts.decisions += decisions;
        let found = disagreements.len() as u64;
        for disagreement in disagreements {
            counts.disagreements += 1;
            // Every disagreement is counted; the first ten and every hundredth are kept and
            // logged, so a systematic difference cannot flood the log.
            if counts.disagreements <= 10 || counts.disagreements % 100 == 0 {
                tracing::info!(
                    key = %disagreement.incoming.key,
                    active = disagreement.active.kind().as_str(),
                    shadow = ?disagreement.shadow.as_ref().map(|d| d.kind().as_str()),
                    "shadow disagreement"
                );
                if counts.samples.len() == KEPT_SAMPLES {
                    counts.samples.pop_front();
                }
                counts.samples.push_back(disagreement);
            }
        }
        self.metrics.record_shadow(decisions, found);
    }
}

fn nothing_to(what: &str) -> Refusal {
    Refusal {
        gate: Gate::Swap,
        reason: format!("nothing to {what}"),
        cause: None,
    }
}

fn reference(compiled: &CompiledRule, hash: &str, origin: &str) -> RuleRef {
    RuleRef {
        rule: compiled.info().stamp(),
        hash: hash.to_owned(),
        origin: origin.to_owned(),
        since_ms: now_ms(),
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

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
    active: WasmRule,
    /// The shadow and its hash, taken up with the active rule.
    shadow: Option<(WasmRule, String)>,
}

impl SwappableRule {
    fn shadow_compare(
        &mut self,
        items: &[(Option<State>, Event)],
        active: &[Decision],
    ) -> Option<()> {
        let (shadow, shadow_hash) = self.shadow.as_mut()?;
        let answers: Vec<Result<Decision, DecideError>> = match shadow.decide_batch(items) {
            Ok(decisions) => decisions.into_iter().map(Ok).collect(),
            Err(_) => items
                .iter()
                .map(|(current, incoming)| shadow.decide(current.as_ref(), incoming))
                .collect(),
        };
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
        self.control
            .record_shadow(shadow_hash, items.len() as u64, disagreements);
        Some(())
    }
}

impl Rule for SwappableRule {
    fn info(&self) -> &RuleInfo {
        self.active.info()
    }

    fn before_batch(&mut self) {
        if self.control.generation.load(Ordering::Acquire) != self.generation {
            let (generation, active, shadow) = self.control.serving();
            self.generation = generation;
            self.active = active;
            self.shadow = shadow;
        }
    }

    fn decide(
        &mut self,
        current: Option<&State>,
        incoming: &Event,
    ) -> Result<Decision, DecideError> {
        let decision = self.active.decide(current, incoming)?;
        if self.shadow.is_some() {
            let items = [(current.cloned(), incoming.clone())];
            self.shadow_compare(&items, std::slice::from_ref(&decision));
        }
        Ok(decision)
    }

    fn decide_batch(
        &mut self,
        items: &[(Option<State>, Event)],
    ) -> Result<Vec<Decision>, DecideError> {
        let decisions = self.active.decide_batch(items)?;
        if self.shadow.is_some() {
            self.shadow_compare(items, &decisions);
        }
        Ok(decisions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        for (result, name) in [
            (SwapResult::Applied, "applied"),
            (SwapResult::Refused, "refused"),
        ] {
            assert_eq!(result.as_str(), name);
            assert_eq!(
                serde_json::to_value(result).expect("serialises"),
                serde_json::json!(name)
            );
        }
    }
}
