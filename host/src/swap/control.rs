//! The rule control: what serves (active, previous, shadow), and the one place it changes.
//!
//! Gates a candidate, applies it or records its refusal, promotes, rolls back (by hand or by
//! itself, `rule.auto_rollback`), and keeps the shadow's counts. The pipeline's side of it is
//! [`SwappableRule`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::Origin;
use super::ignore_share::{AutoRollback, Jump, Meter, Probation, VersionBook, Window, jumped};
use super::serving::{Deciding, SwappableRule};
use super::status::{
    Disagreement, Refusal, Refused, Role, RuleRef, RuleStatus, ShadowStatus, SwapRecord,
    SwapResult, sidecar_digest,
};
use crate::config::AutoRollbackConfig;
use crate::entity::RuleInfo;
use crate::rule::vectors::VectorFile;
use crate::rule::{Admitted, CompiledRule, Gate, GateError, Gates, WasmRule, content_hash};
use crate::telemetry::Metrics;
use crate::telemetry::events::{RuleAutoRolledBack, RuleOverride, RuleRefused, RuleSwapped};

/// How many shadow disagreements are kept for inspection (the most recent).
const KEPT_SAMPLES: usize = 20;

/// How many refused candidates are remembered (the most recently offered), so that memory stays
/// bounded however many bad candidates arrive; one forgotten is only gated again.
const REFUSED_KEPT: std::num::NonZeroUsize = std::num::NonZeroUsize::new(256).expect("not zero");

#[derive(Debug, Clone)]
struct Serving {
    compiled: CompiledRule,
    reference: RuleRef,
    /// Its decisions on this instance; kept while the version is active, previous or shadow.
    book: Arc<VersionBook>,
}

#[derive(Debug)]
struct ControlState {
    active: Serving,
    previous: Option<Serving>,
    shadow: Option<(Serving, ShadowCounts)>,
    last_swap: Option<SwapRecord>,
    /// Candidates already refused, by hash, so that a fleet pointer at a bad rule is not
    /// compiled again on every poll, and a version rolled back for its behaviour never comes
    /// back unjudged. Bounded: the least recently offered is forgotten.
    refused: lru::LruCache<String, Refused>,
    /// Instances of the versions just applied, created by whoever applied them (off the
    /// pipeline's task) for the pipeline to take up ready: instantiating a big component (an
    /// interpreter) takes milliseconds that would otherwise pause a batch. By hash; only the
    /// active and shadow versions' are kept.
    ready: Vec<(String, WasmRule)>,
}

#[derive(Debug, Default)]
struct ShadowCounts {
    decisions: u64,
    disagreements: u64,
    samples: VecDeque<Disagreement>,
    /// The active rule's decisions on the events the shadow decided.
    active: Window,
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
    /// `rule.auto_rollback`: when a swap's ignore share counts as a jump.
    auto_rollback: Option<AutoRollbackConfig>,
}

impl RuleControl {
    /// Starts with `initial` serving (it has passed the gates already).
    pub fn new(gates: Gates, initial: Admitted, origin: &Origin, metrics: Arc<Metrics>) -> Self {
        let active = Serving {
            reference: reference(&initial.compiled, &initial.hash, origin),
            compiled: initial.compiled,
            book: Arc::default(),
        };
        metrics.set_rule(active.compiled.info());
        Self {
            gates,
            state: Mutex::new(ControlState {
                active,
                previous: None,
                shadow: None,
                last_swap: None,
                refused: lru::LruCache::new(REFUSED_KEPT),
                ready: Vec::new(),
            }),
            generation: AtomicU64::new(0),
            metrics,
            auto_rollback: None,
        }
    }

    /// Rolls a swap back by itself when the new version's ignore share jumps, and refuses to
    /// promote a shadow whose share already has (`[rule.auto_rollback]`; `None`: off).
    pub fn with_auto_rollback(mut self, auto_rollback: Option<AutoRollbackConfig>) -> Self {
        self.auto_rollback = auto_rollback;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gates `bytes` and, if they pass, makes them the active or shadow rule from the next
    /// batch on. A refused candidate changes nothing that serves. A hash refused before stays
    /// refused (answered again, logged and counted like a new refusal) whatever the sidecar
    /// says — except a refusal the sidecar's vectors decided, which a changed sidecar re-gates
    /// — until an operator overrides it ([`RuleControl::offer_overriding`]). CPU-bound on a
    /// new candidate (compile and check): call it from a blocking thread in async code.
    pub fn offer(
        &self,
        bytes: &[u8],
        sidecar: Option<VectorFile>,
        origin: &Origin,
        role: Role,
    ) -> Result<RuleRef, Refusal> {
        self.offer_with(bytes, sidecar, origin, role, false)
    }

    /// [`RuleControl::offer`] by an operator who overrides an earlier refusal of the same
    /// hash (`--force`, `?force=true`): the override is logged and counted, the gates still
    /// run on bytes that never passed them, and a version made active this way is on
    /// probation against the one it replaces, even if it is the previous one.
    pub fn offer_overriding(
        &self,
        bytes: &[u8],
        sidecar: Option<VectorFile>,
        origin: &Origin,
        role: Role,
    ) -> Result<RuleRef, Refusal> {
        self.offer_with(bytes, sidecar, origin, role, true)
    }

    fn offer_with(
        &self,
        bytes: &[u8],
        sidecar: Option<VectorFile>,
        origin: &Origin,
        role: Role,
        overriding: bool,
    ) -> Result<RuleRef, Refusal> {
        let hash = content_hash(bytes);
        let digest = sidecar.as_ref().map(sidecar_digest);
        // Judged before and refused: whatever passes now is judged afresh (gates where the
        // bytes never passed them, probation in any case).
        let mut judged_again = false;
        let known = {
            let mut state = self.lock();
            if let Some(refused) = state.refused.get(&hash).cloned() {
                if overriding {
                    state.refused.pop(&hash);
                    drop(state);
                    self.metrics.emit(RuleOverride {
                        role,
                        hash: &hash,
                        origin: origin.as_str(),
                        gate: refused.refusal.gate.as_str(),
                    });
                    state = self.lock();
                } else if !refused.regated_by(digest.as_ref()) {
                    drop(state);
                    self.refuse(role, origin, &hash, refused.refusal.clone());
                    return Err(refused.refusal);
                }
                judged_again = true;
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
        if role == Role::Active
            && !overriding
            && let Some(refusal) = self.promotion_refusal(&hash)
        {
            self.refuse(role, origin, &hash, refusal.clone());
            self.lock()
                .refused
                .put(hash, Refused::new(refusal.clone(), digest));
            return Err(refusal);
        }
        let compiled = match known {
            Some(compiled) => compiled,
            None => match self.gates.admit(bytes, sidecar) {
                Ok(admitted) => admitted.compiled,
                Err(error) => {
                    let refusal = Refusal::by_gate(error);
                    self.refuse(role, origin, &hash, refusal.clone());
                    self.lock()
                        .refused
                        .put(hash, Refused::new(refusal.clone(), digest));
                    return Err(refusal);
                }
            },
        };
        Ok(self.apply(role, compiled, &hash, origin, judged_again))
    }

    /// Records a candidate refused before it reached the gates exactly like a gate's refusal
    /// (log line, metric, last swap): by the fleet (a pointer that is not a content hash, a
    /// blob that is not what its hash says, one over the size cap) or the file watch (a file
    /// over the size cap). `hash` names the candidate as it was offered: the fleet's pointer,
    /// or `-` for a file that was not read. Not remembered as refused: what is stored under
    /// that name may be put right.
    pub fn record_refusal(
        &self,
        role: Role,
        origin: &Origin,
        hash: &str,
        error: GateError,
    ) -> Refusal {
        let refusal = Refusal::by_gate(error);
        self.refuse(role, origin, hash, refusal.clone());
        refusal
    }

    /// The largest component this instance's gates accept, in bytes (`rule.max_component_bytes`).
    pub fn max_component_bytes(&self) -> usize {
        self.gates.engine().limits().max_component_bytes
    }

    fn refuse(&self, role: Role, origin: &Origin, hash: &str, refusal: Refusal) {
        self.metrics.emit(RuleRefused {
            role,
            hash,
            origin: origin.as_str(),
            gate: refusal.gate.as_str(),
            reason: &refusal.reason,
        });
        let mut state = self.lock();
        state.last_swap = Some(SwapRecord {
            at_ms: now_ms(),
            role,
            origin: origin.to_string(),
            hash: hash.to_owned(),
            rule: None,
            result: SwapResult::Refused,
            refusal: Some(refusal),
            auto_rollback: None,
        });
    }

    /// Makes `compiled` serve in `role`. `judged_again`: it was refused before (an override,
    /// or a re-gated sidecar), so it is on probation even when it is the previous version.
    fn apply(
        &self,
        role: Role,
        compiled: CompiledRule,
        hash: &str,
        origin: &Origin,
        judged_again: bool,
    ) -> RuleRef {
        // Instantiated here, on the caller's thread, before the lock: never on the pipeline's
        // task. One that fails to instantiate is left to fail its first call, as any would.
        let mut ready = compiled.instance();
        let instantiated = ready.instantiate().is_ok();
        let applied = {
            let mut state = self.lock();
            let applied = self.apply_locked(&mut state, role, compiled, hash, origin, judged_again);
            let serving = [
                Some(state.active.reference.hash.clone()),
                state.shadow.as_ref().map(|(s, _)| s.reference.hash.clone()),
            ];
            let stale: Vec<(String, WasmRule)>;
            (state.ready, stale) = std::mem::take(&mut state.ready)
                .into_iter()
                .filter(|(ready, _)| ready != hash)
                .partition(|(ready, _)| serving.contains(&Some(ready.clone())));
            if instantiated {
                state.ready.push((hash.to_owned(), ready));
            }
            drop(state);
            drop(stale);
            applied
        };
        self.metrics.emit(RuleSwapped {
            role,
            rule: &applied.rule,
            hash,
            origin: origin.as_str(),
        });
        applied
    }

    /// [`Self::apply`] under the caller's lock, short of the event.
    fn apply_locked(
        &self,
        state: &mut ControlState,
        role: Role,
        compiled: CompiledRule,
        hash: &str,
        origin: &Origin,
        judged_again: bool,
    ) -> RuleRef {
        let reference = reference(&compiled, hash, origin);
        let applied = reference.clone();
        match role {
            Role::Active => {
                // A version returning (rolled back to, or a promoted shadow) keeps its counts.
                let book = [
                    state.previous.as_ref(),
                    state.shadow.as_ref().map(|(shadow, _)| shadow),
                ]
                .into_iter()
                .flatten()
                .find(|serving| serving.reference.hash == hash)
                .map_or_else(Arc::default, |serving| Arc::clone(&serving.book));
                // A swap is judged against the version it replaces; a return to the version
                // before (a rollback, by whatever path) is not — unless that version was
                // refused since, and an operator brought it back over the refusal.
                let returning = !judged_again
                    && state
                        .previous
                        .as_ref()
                        .is_some_and(|previous| previous.reference.hash == hash);
                book.set_probation(self.auto_rollback.filter(|_| !returning).map(|limits| {
                    Probation {
                        baseline: Arc::clone(&state.active.book),
                        baseline_rule: state.active.reference.rule.clone(),
                        limits,
                    }
                }));
                state.active.book.set_probation(None);
                if state
                    .shadow
                    .as_ref()
                    .is_some_and(|(shadow, _)| shadow.reference.hash == hash)
                {
                    state.shadow = None;
                }
                let serving = Serving {
                    reference,
                    compiled,
                    book,
                };
                let previous = std::mem::replace(&mut state.active, serving);
                state.previous = Some(previous);
            }
            Role::Shadow => {
                // A shadow's counts start with it, on the same events as the active rule's
                // counts beside it.
                let serving = Serving {
                    reference,
                    compiled,
                    book: Arc::default(),
                };
                state.shadow = Some((serving, ShadowCounts::default()));
            }
        }
        state.last_swap = Some(SwapRecord {
            at_ms: now_ms(),
            role,
            origin: origin.to_string(),
            hash: hash.to_owned(),
            rule: Some(applied.rule.clone()),
            result: SwapResult::Applied,
            refusal: None,
            auto_rollback: None,
        });
        self.generation.fetch_add(1, Ordering::AcqRel);
        if role == Role::Active {
            self.metrics.set_rule(state.active.compiled.info());
        }
        applied
    }

    /// Rolls the active version `hash` back to the previous one, by itself: its ignore share
    /// jumped. The version is refused from then on (a fleet or file offering it again is
    /// refused, at the `ignore_share` gate), until this instance restarts.
    pub(super) fn auto_roll_back(&self, hash: &str, jump: &Jump) {
        let (record, applied, to_hash) = {
            let mut state = self.lock();
            // Swapped meanwhile: what was judged no longer serves.
            if state.active.reference.hash != hash {
                return;
            }
            let Some(previous) = state.previous.clone() else {
                return;
            };
            let rule = state.active.reference.rule.clone();
            let reason = jump.reason(&rule);
            let record = AutoRollback {
                rule,
                hash: hash.to_owned(),
                share: jump.share,
                previous_share: jump.baseline,
                reason: reason.clone(),
            };
            let to_hash = previous.reference.hash.clone();
            let applied = self.apply_locked(
                &mut state,
                Role::Active,
                previous.compiled,
                &to_hash,
                &Origin::AutoRollback,
                false,
            );
            state.refused.put(
                hash.to_owned(),
                Refused::new(Refusal::new(Gate::IgnoreShare, reason), None),
            );
            if let Some(last) = &mut state.last_swap {
                last.auto_rollback = Some(record.clone());
            }
            (record, applied, to_hash)
        };
        self.metrics.emit(RuleAutoRolledBack {
            rule: &record.rule,
            hash,
            to_rule: &applied.rule,
            to_hash: &to_hash,
            share: record.share.share,
            previous_share: record.previous_share.share,
            decisions: record.share.decisions,
            reason: &record.reason,
        });
        self.metrics.emit(RuleSwapped {
            role: Role::Active,
            rule: &applied.rule,
            hash: &to_hash,
            origin: Origin::AutoRollback.as_str(),
        });
    }

    /// Why promoting the shadow `hash` is refused, if it is: with `rule.auto_rollback` set,
    /// its ignore share, measured on the events the active rule decided, exceeds the active
    /// rule's share on them by more than allowed (each over at least `min_decisions`).
    fn promotion_refusal(&self, hash: &str) -> Option<Refusal> {
        let limits = self.auto_rollback?;
        let state = self.lock();
        let (shadow, counts) = state
            .shadow
            .as_ref()
            .filter(|(shadow, _)| shadow.reference.hash == hash)?;
        let share = shadow.book.snapshot();
        let active = counts.active.snapshot();
        if !jumped(&share, &active, &limits) {
            return None;
        }
        let jump = Jump {
            share,
            baseline: active,
            baseline_rule: state.active.reference.rule.clone(),
            limits,
        };
        Some(Refusal::new(
            Gate::IgnoreShare,
            format!(
                "measured as a shadow, on the events the active rule decided: {}",
                jump.reason(&shadow.reference.rule)
            ),
        ))
    }

    /// Makes the shadow the active rule.
    pub fn promote(&self, origin: &Origin) -> Result<RuleRef, Refusal> {
        let shadow = self
            .lock()
            .shadow
            .as_ref()
            .map(|(serving, _)| serving.clone());
        let Some(shadow) = shadow else {
            return Err(nothing_to("promote: no shadow rule is loaded"));
        };
        if let Some(refusal) = self.promotion_refusal(&shadow.reference.hash) {
            self.refuse(
                Role::Active,
                origin,
                &shadow.reference.hash,
                refusal.clone(),
            );
            self.lock().refused.put(
                shadow.reference.hash.clone(),
                Refused::new(refusal.clone(), None),
            );
            return Err(refusal);
        }
        Ok(self.apply(
            Role::Active,
            shadow.compiled,
            &shadow.reference.hash,
            origin,
            false,
        ))
    }

    /// Makes the previous rule active again (the active one becomes the previous). A
    /// previous version that was refused since (rolled back by itself for its ignore share)
    /// is refused again: it does not come back unjudged.
    pub fn rollback(&self, origin: &Origin) -> Result<RuleRef, Refusal> {
        self.rollback_with(origin, false)
    }

    /// [`RuleControl::rollback`] by an operator who overrides a refusal of the previous
    /// version (`?force=true`): logged and counted, and the version returns on probation.
    pub fn rollback_overriding(&self, origin: &Origin) -> Result<RuleRef, Refusal> {
        self.rollback_with(origin, true)
    }

    fn rollback_with(&self, origin: &Origin, overriding: bool) -> Result<RuleRef, Refusal> {
        let (previous, refused) = {
            let mut state = self.lock();
            let previous = state.previous.clone();
            let refused = previous
                .as_ref()
                .and_then(|previous| state.refused.get(&previous.reference.hash).cloned());
            (previous, refused)
        };
        let Some(previous) = previous else {
            return Err(nothing_to("roll back: no previous rule"));
        };
        let hash = &previous.reference.hash;
        let judged_again = refused.is_some();
        if let Some(refused) = refused {
            if !overriding {
                self.refuse(Role::Active, origin, hash, refused.refusal.clone());
                return Err(refused.refusal);
            }
            self.lock().refused.pop(hash);
            self.metrics.emit(RuleOverride {
                role: Role::Active,
                hash,
                origin: origin.as_str(),
                gate: refused.refusal.gate.as_str(),
            });
        }
        Ok(self.apply(Role::Active, previous.compiled, hash, origin, judged_again))
    }

    /// Stops the shadow, if any.
    pub fn clear_shadow(&self, origin: &Origin) {
        let cleared = self.lock().shadow.take();
        if let Some((shadow, _)) = cleared {
            self.generation.fetch_add(1, Ordering::AcqRel);
            tracing::info!(rule = %shadow.reference.rule, %origin, "shadow rule stopped");
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
            active: state.active.counted(),
            previous: state.previous.as_ref().map(Serving::counted),
            shadow: state.shadow.as_ref().map(|(serving, counts)| ShadowStatus {
                rule: serving.counted(),
                decisions: counts.decisions,
                disagreements: counts.disagreements,
                samples: counts.samples.iter().cloned().collect(),
                active_ignores: Some(counts.active.snapshot()),
            }),
            last_swap: state.last_swap.clone(),
        }
    }

    /// The rule a pipeline runs: follows this control between batches.
    pub fn rule(self: &Arc<Self>) -> SwappableRule {
        let (generation, active, shadow) = self.serving();
        SwappableRule::new(Arc::clone(self), generation, active, shadow)
    }

    /// Bumped on every change of what serves.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The generation, and the active rule and shadow as a pipeline runs them.
    pub(super) fn serving(&self) -> (u64, Deciding, Option<Deciding>) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let mut ready = |hash: &str| {
            let at = state.ready.iter().position(|(ready, _)| ready == hash)?;
            Some(state.ready.swap_remove(at).1)
        };
        let active_rule = ready(&state.active.reference.hash);
        let shadow_rule = state
            .shadow
            .as_ref()
            .and_then(|(serving, _)| ready(&serving.reference.hash));
        let deciding = |serving: &Serving, rule: Option<WasmRule>, role: Role| Deciding {
            rule: rule.unwrap_or_else(|| serving.compiled.instance()),
            hash: serving.reference.hash.clone(),
            meter: Meter {
                book: Arc::clone(&serving.book),
                metrics: self.metrics.rule_meter(&serving.reference.rule, role),
            },
        };
        (
            self.generation(),
            deciding(&state.active, active_rule, Role::Active),
            state
                .shadow
                .as_ref()
                .map(|(serving, _)| deciding(serving, shadow_rule, Role::Shadow)),
        )
    }

    /// `active_ignores`: how many of the active rule's decisions on the same events were
    /// `ignore`.
    pub(super) fn record_shadow(
        &self,
        shadow_hash: &str,
        decisions: u64,
        active_ignores: u64,
        disagreements: Vec<Disagreement>,
    ) {
        let mut state = self.lock();
        let Some((serving, counts)) = state.shadow.as_mut() else {
            return;
        };
        // The shadow may have changed since the batch began; its counts are not ours.
        if serving.reference.hash != shadow_hash {
            return;
        }
        counts.decisions += decisions;
        counts.active.add(decisions, active_ignores);
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
    Refusal::new(Gate::Swap, format!("nothing to {what}"))
}

fn reference(compiled: &CompiledRule, hash: &str, origin: &Origin) -> RuleRef {
    RuleRef {
        rule: compiled.info().stamp(),
        hash: hash.to_owned(),
        origin: origin.to_string(),
        since_ms: now_ms(),
        ignores: None,
    }
}

impl Serving {
    /// Its reference with its counts, as status shows it.
    fn counted(&self) -> RuleRef {
        RuleRef {
            ignores: Some(self.book.snapshot()),
            ..self.reference.clone()
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}
