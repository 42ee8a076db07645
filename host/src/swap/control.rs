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
use crate::rule::{Admitted, Gates, content_hash};
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
    Active,
    Shadow,
}

impl Role {
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("refused by the {gate} gate: {reason}")]
pub struct Refusal {
    /// `compile`, `imports`, `vectors`, `convergence`, or `swap` (nothing to promote or roll
    /// back to).
    pub gate: String,
    pub reason: String,
}

/// The last swap attempted, applied or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwapRecord {
    pub at_ms: u64,
    pub role: Role,
    pub origin: String,
    pub hash: String,
    /// The candidate's stamp, when it compiled far enough to say.
    pub rule: Option<String>,
    /// `applied` or `refused`.
    pub result: String,
    pub refusal: Option<Refusal>,
}

/// One event the shadow decided otherwise than the active rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disagreement {
    pub at_ms: u64,
    pub current: Option<State>,
    pub incoming: Event,
    pub active: Decision,
    /// The shadow's decision, or the error it failed with.
    pub shadow: Result<Decision, String>,
}

/// The shadow and what it has seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowStatus {
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
    pub active: RuleRef,
    /// What a rollback returns to.
    pub previous: Option<RuleRef>,
    pub shadow: Option<ShadowStatus>,
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
                    let refusal = Refusal {
                        gate: error.gate().to_owned(),
                        reason: format!("{error}"),
                    };
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
            gate: &refusal.gate,
            reason: &refusal.reason,
        });
        let mut state = self.lock();
        state.last_swap = Some(SwapRecord {
            at_ms: now_ms(),
            role,
            origin: origin.to_owned(),
            hash: hash.to_owned(),
            rule: None,
            result: "refused".to_owned(),
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
                result: "applied".to_owned(),
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

    pub fn active_hash(&self) -> String {
        self.lock().active.reference.hash.clone()
    }

    pub fn shadow_hash(&self) -> Option<String> {
        self.lock()
            .shadow
            .as_ref()
            .map(|(serving, _)| serving.reference.hash.clone())
    }

    pub fn active_info(&self) -> RuleInfo {
        self.lock().active.compiled.info().clone()
    }

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
        gate: "swap".to_owned(),
        reason: format!("nothing to {what}"),
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
        let answers: Vec<Result<Decision, String>> = match shadow.decide_batch(items) {
            Ok(decisions) => decisions.into_iter().map(Ok).collect(),
            Err(_) => items
                .iter()
                .map(|(current, incoming)| {
                    shadow
                        .decide(current.as_ref(), incoming)
                        .map_err(|error| error.to_string())
                })
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
