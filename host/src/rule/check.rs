//! The convergence property check: does a rule's stored state depend on delivery order, or on
//! anything but the events themselves?
//!
//! Each run draws a fresh random seed (printed, and given back with [`CheckConfig::seed`] to
//! repeat the run exactly). From it the check generates histories of events for one key each
//! (see `generate`: several keys per run, palettes small enough that ties and duplicates are
//! common, boundary numbers, undeclared statuses, values from the rule's vectors and from sample
//! messages — the [`Corpus`]). It folds every history through the rule in every delivery order
//! (histories of up to [`CheckConfig::exhaustive_up_to`] events) or in
//! [`CheckConfig::random_orders`] random orders (longer ones), and requires:
//!
//! - **convergence**: every order ends on the same stored state;
//! - **no regression**: whenever the stored state changes, re-delivering any event applied
//!   before leaves it unchanged, so no redelivery can move the key backward;
//! - **idempotence**: the same holds for an exact duplicate of the event that was just applied;
//! - **no silence**: an event for a key with nothing stored is inserted or rejected, never
//!   ignored (`ignore` means stale or duplicate of the stored state; with nothing stored it would
//!   make the event vanish without a trace);
//! - **determinism**: the same (current, incoming) gets the same decision every time it is
//!   asked, on the instance that has decided everything before (every answer is remembered and
//!   compared on every repeat) and on a fresh instance (asked for a sample of pairs);
//! - **no failures**: the rule never traps, times out or answers against the contract. An
//!   event of a status the rule does not declare may be accepted: the host refuses to store the
//!   state and dead-letters the event, so for convergence it counts as rejected.
//!
//! A failing history is shrunk (events dropped one at a time while it still fails), then
//! replayed on fresh instances: a counterexample that a fresh instance does not reproduce is
//! reported as non-determinism, with the two answers the rule gave to the same inputs.

mod generate;

pub use generate::Corpus;

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::BuildHasher;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::entity::{Decision, Event, RuleInfo, State};
use crate::progress::{HumanCount, Progress, Silent, Unit};
use crate::rule::{CompiledRule, ContractViolation, DecideError, Rule};

use generate::{Generator, Siblings};

/// A found violation; boxed because it carries whole histories.
type Found<T> = Result<T, Box<Violation>>;

/// Makes fresh instances of a rule: ones that have decided nothing yet. The check decides most
/// pairs on one long-lived instance and compares a sample with fresh ones, so a rule that keeps
/// state between calls is caught.
pub trait RuleFactory {
    /// A fresh instance.
    fn fresh(&self) -> Box<dyn Rule>;
}

impl RuleFactory for CompiledRule {
    fn fresh(&self) -> Box<dyn Rule> {
        Box::new(self.instance())
    }
}

/// Any closure making a rule, e.g. `|| MyRule::default()` for a native rule.
impl<F, R> RuleFactory for F
where
    F: Fn() -> R,
    R: Rule + 'static,
{
    fn fresh(&self) -> Box<dyn Rule> {
        Box::new(self())
    }
}

/// How hard to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckConfig {
    /// How many histories to generate.
    pub histories: usize,
    /// The longest history generated.
    pub max_events: usize,
    /// Histories up to this length are checked in every order (7 events: 5,040 orders).
    pub exhaustive_up_to: usize,
    /// How many random orders a longer history is checked in.
    pub random_orders: usize,
    /// At most how many of a history's (current, incoming) pairs are also asked of a fresh
    /// instance; every repeated pair is compared anyway, at no cost.
    pub fresh_per_history: usize,
    /// Seed of the generator: the same seed (with the same corpus) checks the same histories
    /// and finds the same counterexample. `None`: a fresh random seed, reported in
    /// [`CheckReport::seed`].
    pub seed: Option<u64>,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            histories: 200,
            max_events: 10,
            exhaustive_up_to: 7,
            random_orders: 1_000,
            fresh_per_history: 3,
            seed: None,
        }
    }
}

impl CheckConfig {
    /// The quick check the gates run before a rule may serve (`converge check --quick`): shorter
    /// histories, `histories` of them.
    pub fn quick(histories: usize) -> Self {
        Self {
            histories,
            max_events: 6,
            exhaustive_up_to: 5,
            random_orders: 100,
            ..Self::default()
        }
    }
}

/// A delivery order (indexes into the history's events) and the state it ended on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delivery {
    /// Indexes into the history's events, in delivery order.
    pub order: Vec<usize>,
    /// The stored state after the last of them (`None`: nothing stored).
    pub final_state: Option<State>,
}

/// What an instance answered for a pair, and how many decisions it had made before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Answer {
    /// Decisions the instance had made before this one: 0 for a fresh instance.
    pub after_decisions: u64,
    /// What it answered.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// A decision, or how the rule failed to give one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The rule decided.
    Decision(Decision),
    /// The rule failed.
    Error(DecideError),
}

impl From<Result<Decision, DecideError>> for Outcome {
    fn from(result: Result<Decision, DecideError>) -> Self {
        match result {
            Ok(decision) => Outcome::Decision(decision),
            Err(error) => Outcome::Error(error),
        }
    }
}

/// A property the rule broke, with the (shrunk) history that shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "property", rename_all = "snake_case")]
pub enum Violation {
    /// Two delivery orders of the same events end on different stored states.
    Diverges {
        /// The history, for one key.
        events: Vec<Event>,
        /// One order and where it ended.
        first: Delivery,
        /// Another order of the same events, ending elsewhere.
        second: Delivery,
    },
    /// After `order` had been delivered and stored `stored`, re-delivering the earlier event
    /// `redelivered` changed it to `moved_to`.
    MovesBackward {
        /// The history, for one key.
        events: Vec<Event>,
        /// The events delivered, in order.
        order: Vec<usize>,
        /// What they stored.
        stored: State,
        /// The earlier event delivered again.
        redelivered: usize,
        /// What the redelivery stored instead.
        moved_to: State,
    },
    /// Delivering the event that produced `stored` a second time changed it to `moved_to`.
    NotIdempotent {
        /// The history, for one key.
        events: Vec<Event>,
        /// The events delivered, in order.
        order: Vec<usize>,
        /// What they stored.
        stored: State,
        /// The last event of `order`, delivered again.
        redelivered: usize,
        /// What the duplicate stored instead.
        moved_to: State,
    },
    /// The last event of `order` arrived for a key with nothing stored (every event before it
    /// was rejected) and was ignored: in production it would vanish without a trace.
    SilentIgnore {
        /// The history, for one key.
        events: Vec<Event>,
        /// The events delivered, in order, the last being the one ignored.
        order: Vec<usize>,
        /// The reason the rule gave.
        reason: String,
    },
    /// The same (current, incoming) got different answers: the rule keeps state between calls
    /// or reads something other than its arguments.
    NonDeterministic {
        /// The stored state it was asked about (`None`: nothing stored).
        current: Option<State>,
        /// The event it was asked about.
        incoming: Event,
        /// Its answers, at least two of them different; the last from a fresh instance
        /// unless the difference was between a fresh instance and one that had decided before.
        answers: Vec<Answer>,
    },
    /// The rule failed while `order` was delivered.
    RuleFailed {
        /// The history, for one key.
        events: Vec<Event>,
        /// The events delivered, in order, the last being the one the rule failed on.
        order: Vec<usize>,
        /// How the rule failed.
        error: DecideError,
    },
}

impl Violation {
    /// The (shrunk) history that shows the violation; for non-determinism, the one event asked.
    pub fn events(&self) -> &[Event] {
        match self {
            Violation::Diverges { events, .. }
            | Violation::MovesBackward { events, .. }
            | Violation::NotIdempotent { events, .. }
            | Violation::SilentIgnore { events, .. }
            | Violation::RuleFailed { events, .. } => events,
            Violation::NonDeterministic { incoming, .. } => std::slice::from_ref(incoming),
        }
    }

    /// The property's name, as the JSON report spells it (`"property"`).
    pub fn property(&self) -> &'static str {
        match self {
            Violation::Diverges { .. } => "diverges",
            Violation::MovesBackward { .. } => "moves_backward",
            Violation::NotIdempotent { .. } => "not_idempotent",
            Violation::SilentIgnore { .. } => "silent_ignore",
            Violation::NonDeterministic { .. } => "non_deterministic",
            Violation::RuleFailed { .. } => "rule_failed",
        }
    }

    /// A one-line summary.
    pub fn headline(&self) -> &'static str {
        match self {
            Violation::Diverges { .. } => "the final state depends on delivery order",
            Violation::MovesBackward { .. } => {
                "re-delivering an earlier event moved the stored state backward"
            }
            Violation::NotIdempotent { .. } => "a duplicate event changed the stored state",
            Violation::SilentIgnore { .. } => {
                "ignored an event for a key with nothing stored; insert it or reject it"
            }
            Violation::NonDeterministic { .. } => {
                "the same inputs got different decisions: the rule is not deterministic \
                 (it keeps state between calls)"
            }
            Violation::RuleFailed { .. } => "the rule failed on a generated history",
        }
    }
}

/// What the check did and what it found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The seed the histories were drawn from: [`CheckConfig::seed`] repeats the run.
    pub seed: u64,
    /// Histories checked (up to and including the failing one).
    pub histories: usize,
    /// Complete delivery orders folded.
    pub orders: u64,
    /// Decisions asked of the rule (of every instance).
    pub decisions: u64,
    /// The first property broken, shrunk; `None` when the rule passed.
    pub violation: Option<Violation>,
}

impl CheckReport {
    /// Whether no violation was found.
    pub fn passed(&self) -> bool {
        self.violation.is_none()
    }
}

/// Runs the property check against instances of `rules`, drawing values from `corpus` beside
/// generated ones.
pub fn check(rules: &dyn RuleFactory, config: &CheckConfig, corpus: &Corpus) -> CheckReport {
    check_with_progress(rules, config, corpus, &Silent)
}

/// [`check`], reporting to `progress`: the stage `checking` counts histories (noting the
/// orders folded and decisions asked), then, when one fails, `shrinking` counts the smaller
/// histories tried (noting the property broken).
pub fn check_with_progress(
    rules: &dyn RuleFactory,
    config: &CheckConfig,
    corpus: &Corpus,
    progress: &dyn Progress,
) -> CheckReport {
    let seed = config.seed.unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed);
    let warm = rules.fresh();
    let info = warm.info().clone();
    let generator = Generator::new(&info, corpus, &mut rng);
    let siblings = Siblings::new(&mut rng);
    let mut checker = Checker {
        rules,
        warm,
        info,
        config,
        orders: 0,
        decisions: 0,
        warm_decisions: 0,
        memo: Memo::default(),
        fresh_left: 0,
        sampler: StdRng::seed_from_u64(seed.rotate_left(32) ^ 0x5eed),
        progress,
        siblings,
        probing: false,
        swept: HashSet::new(),
        suspects: Vec::new(),
        new_suspects: Vec::new(),
    };
    progress.stage(
        "checking",
        Unit::Items("histories"),
        Some(config.histories as u64),
    );
    // The first histories pair every two declared statuses (see `Generator::status_pairs`):
    // a deterministic sweep, at most half the budget, before the random histories.
    let mut sweep = generator
        .status_pairs(config.histories / 2, &mut rng)
        .into_iter();
    for done in 0..config.histories {
        let mut events = sweep
            .next()
            .unwrap_or_else(|| generator.history(config.max_events, &mut rng));
        // Once the rule has treated a key apart from its siblings, half the histories are
        // checked under such a key.
        if !checker.suspects.is_empty() && rng.random_bool(0.5) {
            let key = &checker.suspects[rng.random_range(0..checker.suspects.len())];
            events = with_key(&events, key);
        }
        checker.probing = true;
        let mut checked = checker.check_history(&events, &mut rng);
        // Every two distinct events on their own, and crossed: what the whole history masks.
        if checked.is_ok() {
            checked = checker.check_pairs(&events, &mut rng);
        }
        checker.probing = false;
        // Each sibling of the key the rule decided one of this history's pairs otherwise
        // under: the same history under that key.
        for key in std::mem::take(&mut checker.new_suspects) {
            if checked.is_err() {
                break;
            }
            checked = checker.check_history(&with_key(&events, &key), &mut rng);
            if checker.suspects.len() < MAX_SUSPECTS {
                checker.suspects.push(key);
            }
        }
        progress.advance(1);
        progress.note(format_args!(
            "{} orders, {} decisions",
            HumanCount(checker.orders),
            HumanCount(checker.decisions)
        ));
        if let Err(violation) = checked {
            progress.stage("shrinking", Unit::Items("histories"), None);
            progress.note(format_args!("{}", violation.property()));
            let violation = checker.shrink(violation, &mut rng);
            let violation = checker.confirm(violation);
            return CheckReport {
                seed,
                histories: done + 1,
                orders: checker.orders,
                decisions: checker.decisions,
                violation: Some(*violation),
            };
        }
    }
    CheckReport {
        seed,
        histories: config.histories,
        orders: checker.orders,
        decisions: checker.decisions,
        violation: None,
    }
}

/// Every answer the long-lived instance gave, by (current, incoming), with when it gave it.
///
/// Looked up by a hash of the borrowed pair, so a repeat (the common case) costs a hash and a
/// comparison, not a copy.
#[derive(Default)]
struct Memo {
    hasher: foldhash::fast::FixedState,
    answers: HashMap<u64, Vec<Remembered>>,
    len: usize,
}

struct Remembered {
    current: Option<State>,
    incoming: Event,
    answer: Answer,
}

/// At most how many pair shapes (see [`Shape`]) a run asks under every sibling of their key:
/// about a hundred exist.
const MAX_SWEEPS: usize = 192;

/// At most how many siblings the rule decided otherwise under are re-checked per history, and
/// kept for later histories.
const SUSPECTS_PER_HISTORY: usize = 2;
const MAX_SUSPECTS: usize = 16;

/// Keys a counterexample is shown with when it still holds under them.
const SHORT_KEYS: [&str; 2] = ["o-1", "O-1"];

/// Past this many pairs the memo starts over: it bounds the check's memory on long runs.
const MEMO_CAP: usize = 1 << 16;

impl Memo {
    fn get(&self, current: Option<&State>, incoming: &Event) -> Option<&Answer> {
        let hash = self.hasher.hash_one((current, incoming));
        self.answers
            .get(&hash)?
            .iter()
            .find(|r| r.current.as_ref() == current && r.incoming == *incoming)
            .map(|r| &r.answer)
    }

    fn insert(&mut self, current: Option<&State>, incoming: &Event, answer: Answer) {
        if self.len >= MEMO_CAP {
            self.answers.clear();
            self.len = 0;
        }
        let hash = self.hasher.hash_one((current, incoming));
        self.answers.entry(hash).or_default().push(Remembered {
            current: current.cloned(),
            incoming: incoming.clone(),
            answer,
        });
        self.len += 1;
    }
}

struct Checker<'a> {
    rules: &'a dyn RuleFactory,
    /// The long-lived instance most decisions are asked of.
    warm: Box<dyn Rule>,
    info: RuleInfo,
    config: &'a CheckConfig,
    orders: u64,
    decisions: u64,
    /// Decisions asked of `warm`.
    warm_decisions: u64,
    memo: Memo,
    /// Fresh-instance comparisons left for the current history.
    fresh_left: usize,
    /// Picks the pairs compared with a fresh instance; its own stream, so that the histories
    /// drawn do not depend on it.
    sampler: StdRng,
    progress: &'a dyn Progress,
    /// Siblings of keys.
    siblings: Siblings,
    /// Whether new pairs are asked under siblings of their key too: while a generated history
    /// is checked, not while re-checking or shrinking.
    probing: bool,
    /// The shapes of pair already asked under every sibling of their key.
    swept: HashSet<Shape>,
    /// Keys the rule decided a pair otherwise under than under a sibling key: later histories
    /// are checked under them too.
    suspects: Vec<String>,
    /// Such keys found during the current history, which is checked under each of them next.
    new_suspects: Vec<String>,
}

/// Where a depth-first walk over delivery orders stands.
struct Walk<'e> {
    events: &'e [Event],
    order: Vec<usize>,
    used: Vec<bool>,
    first: Option<Delivery>,
    /// Whether to re-deliver earlier events after each change of the stored state.
    redelivery: bool,
}

impl Checker<'_> {
    /// Checks convergence over every (or many random) delivery orders first — a divergence is
    /// the clearest counterexample — and then, over the same orders, redelivery.
    fn check_history(&mut self, events: &[Event], rng: &mut StdRng) -> Found<()> {
        self.fresh_left = self.config.fresh_per_history;
        let random_seed = rng.random();
        for redelivery in [false, true] {
            let mut walk = Walk {
                events,
                order: Vec::with_capacity(events.len()),
                used: vec![false; events.len()],
                first: None,
                redelivery,
            };
            if events.len() <= self.config.exhaustive_up_to {
                self.every_order(&mut walk, None)?;
                continue;
            }
            // The same random orders in both passes.
            let mut rng = StdRng::seed_from_u64(random_seed);
            let mut order: Vec<usize> = (0..events.len()).collect();
            for _ in 0..self.config.random_orders {
                walk.order.clear();
                let mut state = None;
                for &next in &order {
                    state = self.deliver(&mut walk, state, next)?;
                }
                self.finish(&mut walk, state)?;
                order.shuffle(&mut rng);
            }
        }
        Ok(())
    }

    /// Checks every two distinct events of `events` as a history of their own, and the pairs
    /// made of them by exchanging some of the fields they differ in (see [`crossings`]):
    /// cheap (two orders each), and what a longer history hides — the tie-break between two
    /// events that a third outranks, two fields whose priorities a rule gets wrong only when
    /// they disagree — decides them.
    fn check_pairs(&mut self, events: &[Event], rng: &mut StdRng) -> Found<()> {
        let mut checked: HashSet<[Event; 2]> = HashSet::new();
        for (index, first) in events.iter().enumerate() {
            for second in &events[index + 1..] {
                for pair in crossings(first, second) {
                    if checked.insert(pair.clone()) {
                        self.check_history(&pair, rng)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Delivers every remaining event in every order, sharing prefixes. Events equal to one
    /// already tried at this depth are skipped: they lead to the same orders.
    fn every_order(&mut self, walk: &mut Walk<'_>, state: Option<State>) -> Found<()> {
        if walk.order.len() == walk.events.len() {
            return self.finish(walk, state);
        }
        let mut tried: HashSet<&Event> = HashSet::new();
        for next in 0..walk.events.len() {
            if walk.used[next] || !tried.insert(&walk.events[next]) {
                continue;
            }
            walk.used[next] = true;
            let after = self.deliver(walk, state.clone(), next)?;
            self.every_order(walk, after)?;
            walk.order.pop();
            walk.used[next] = false;
        }
        Ok(())
    }

    /// Applies event `next` to `state`, pushes it on the order, and checks redelivery.
    fn deliver(
        &mut self,
        walk: &mut Walk<'_>,
        state: Option<State>,
        next: usize,
    ) -> Found<Option<State>> {
        walk.order.push(next);
        let after = self.apply(walk, state.as_ref(), next)?;
        let Some(stored) = after.filter(|new| Some(new) != state.as_ref()) else {
            return Ok(state);
        };
        if !walk.redelivery {
            return Ok(Some(stored));
        }
        for (position, &earlier) in walk.order.iter().enumerate() {
            let moved_to = match self.apply(walk, Some(&stored), earlier)? {
                Some(moved_to) if moved_to != stored => moved_to,
                _ => continue,
            };
            let duplicate = position + 1 == walk.order.len();
            let (events, order) = (walk.events.to_vec(), walk.order.clone());
            let stored = stored.clone();
            return Err(Box::new(if duplicate {
                Violation::NotIdempotent {
                    events,
                    order,
                    stored,
                    redelivered: earlier,
                    moved_to,
                }
            } else {
                Violation::MovesBackward {
                    events,
                    order,
                    stored,
                    redelivered: earlier,
                    moved_to,
                }
            }));
        }
        Ok(Some(stored))
    }

    /// The state after the rule decides `walk.events[event]` over `state`.
    fn apply(
        &mut self,
        walk: &Walk<'_>,
        state: Option<&State>,
        event: usize,
    ) -> Found<Option<State>> {
        let incoming = &walk.events[event];
        match self.ask(state, incoming)? {
            Outcome::Decision(Decision::Insert(new) | Decision::Update(new)) => Ok(Some(new)),
            Outcome::Decision(Decision::Ignore(reason)) if state.is_none() => {
                Err(Box::new(Violation::SilentIgnore {
                    events: walk.events.to_vec(),
                    order: walk.order.clone(),
                    reason,
                }))
            }
            Outcome::Decision(Decision::Ignore(_) | Decision::Reject(_)) => Ok(state.cloned()),
            Outcome::Error(error) if self.host_refuses(&error, incoming) => Ok(state.cloned()),
            Outcome::Error(error) => Err(Box::new(Violation::RuleFailed {
                events: walk.events.to_vec(),
                order: walk.order.clone(),
                error,
            })),
        }
    }

    /// Whether `error` is the host refusing to store an event of a status the rule does not
    /// declare, which the rule accepted: the event is dead-lettered and nothing is stored, as
    /// if the rule had rejected it.
    fn host_refuses(&self, error: &DecideError, incoming: &Event) -> bool {
        matches!(
            error,
            DecideError::InvalidDecision(ContractViolation::UndeclaredStatus { status, .. })
                if *status == incoming.status && !self.info.statuses.contains(status)
        )
    }

    /// Asks the long-lived instance, compares its answer with any it gave before for the same
    /// pair, and for a sample of new pairs with a fresh instance's.
    fn ask(&mut self, current: Option<&State>, incoming: &Event) -> Found<Outcome> {
        let answer = Answer {
            after_decisions: self.warm_decisions,
            outcome: decide(self.warm.as_mut(), current, incoming),
        };
        self.warm_decisions += 1;
        self.decisions += 1;
        if let Outcome::Error(error) = &answer.outcome {
            if !self.host_refuses(error, incoming) {
                // A failure is reported as such; the instance that failed is gone anyway.
                return Ok(answer.outcome);
            }
        }
        match self.memo.get(current, incoming) {
            Some(before) if before.outcome == answer.outcome => {}
            Some(before) => {
                let before = before.clone();
                return Err(self.non_deterministic(current, incoming, vec![before, answer]));
            }
            None => {
                self.memo.insert(current, incoming, answer.clone());
                if self.fresh_left > 0 && self.sampler.random_ratio(1, 8) {
                    self.fresh_left -= 1;
                    let fresh = self.ask_fresh(current, incoming);
                    if fresh.outcome != answer.outcome {
                        return Err(self.non_deterministic(current, incoming, vec![answer, fresh]));
                    }
                }
                if self.probing {
                    self.probing = false;
                    let asked = self.ask_siblings(current, incoming, &answer.outcome);
                    self.probing = true;
                    asked?;
                }
            }
        }
        Ok(answer.outcome)
    }

    /// Asks the first new pair of each [`Shape`] again under every sibling of its key (the
    /// same state and event, renamed), and notes a sibling the rule decides otherwise under: a
    /// rule may treat keys of one shape apart (ending in some character, past some length),
    /// and the history is then checked under that key too. So every kind of comparison is
    /// asked under every key shape, once per run: a few hundred decisions per shape of pair,
    /// none per repeat.
    fn ask_siblings(
        &mut self,
        current: Option<&State>,
        incoming: &Event,
        outcome: &Outcome,
    ) -> Found<()> {
        if self.new_suspects.len() >= SUSPECTS_PER_HISTORY
            || self.swept.len() >= MAX_SWEEPS
            || !self.swept.insert(Shape::of(&self.info, current, incoming))
        {
            return Ok(());
        }
        let key = incoming.key.as_str();
        let siblings: Vec<String> = self.siblings.of(key).collect();
        for sibling in siblings {
            let renamed_current = current.map(|state| renamed(state, key, &sibling));
            let renamed_incoming = renamed(incoming, key, &sibling);
            let answer = self.ask(renamed_current.as_ref(), &renamed_incoming)?;
            if !alike(outcome, &answer, key, &sibling)
                && !self.suspects.contains(&sibling)
                && !self.new_suspects.contains(&sibling)
            {
                self.new_suspects.push(sibling);
                if self.new_suspects.len() >= SUSPECTS_PER_HISTORY {
                    break;
                }
            }
        }
        Ok(())
    }

    /// A fresh instance's answer.
    fn ask_fresh(&mut self, current: Option<&State>, incoming: &Event) -> Answer {
        self.decisions += 1;
        Answer {
            after_decisions: 0,
            outcome: decide(self.rules.fresh().as_mut(), current, incoming),
        }
    }

    /// The violation for `answers` (of which two differ), with a fresh instance's answer added
    /// when none of them came from one.
    fn non_deterministic(
        &mut self,
        current: Option<&State>,
        incoming: &Event,
        mut answers: Vec<Answer>,
    ) -> Box<Violation> {
        if answers.iter().all(|answer| answer.after_decisions > 0) {
            let fresh = self.ask_fresh(current, incoming);
            answers.push(fresh);
        }
        Box::new(Violation::NonDeterministic {
            current: current.cloned(),
            incoming: incoming.clone(),
            answers,
        })
    }

    /// Compares a complete order's final state with the first order's.
    fn finish(&mut self, walk: &mut Walk<'_>, state: Option<State>) -> Found<()> {
        self.orders += 1;
        let delivery = Delivery {
            order: walk.order.clone(),
            final_state: state,
        };
        match &walk.first {
            None => {
                walk.first = Some(delivery);
                Ok(())
            }
            Some(first) if first.final_state == delivery.final_state => Ok(()),
            Some(first) => Err(Box::new(Violation::Diverges {
                events: walk.events.to_vec(),
                first: first.clone(),
                second: delivery,
            })),
        }
    }

    /// Drops events from the failing history while it still fails. Non-determinism is one
    /// pair already, and ends the shrinking wherever it shows.
    fn shrink(&mut self, mut violation: Box<Violation>, rng: &mut StdRng) -> Box<Violation> {
        if matches!(*violation, Violation::NonDeterministic { .. }) {
            return violation;
        }
        let mut events = violation.events().to_vec();
        let mut index = 0;
        while index < events.len() && events.len() > 1 {
            let mut smaller = events.clone();
            smaller.remove(index);
            let checked = self.check_history(&smaller, rng);
            self.progress.advance(1);
            match checked {
                Err(found) if matches!(*found, Violation::NonDeterministic { .. }) => {
                    return found;
                }
                Err(smaller_violation) => {
                    events = smaller;
                    violation = smaller_violation;
                    index = 0;
                }
                Ok(()) => index += 1,
            }
        }
        // A short key reads better than a generated one; kept only if the same property still
        // breaks (a rule may single out keys, or their case).
        for key in SHORT_KEYS {
            if events.iter().all(|event| event.key == key) {
                break;
            }
            let renamed: Vec<Event> = events
                .iter()
                .map(|event| Event {
                    key: key.to_owned(),
                    ..event.clone()
                })
                .collect();
            match self.check_history(&renamed, rng) {
                Err(found)
                    if found.property() == violation.property()
                        || matches!(*found, Violation::NonDeterministic { .. }) =>
                {
                    return found;
                }
                _ => {}
            }
        }
        violation
    }

    /// Replays a counterexample on fresh instances, comparing every answer with the one the
    /// long-lived instance gave: one that differs turns the counterexample into
    /// non-determinism, which is what it then shows.
    fn confirm(&mut self, violation: Box<Violation>) -> Box<Violation> {
        match self.replay(&violation) {
            Ok(()) => violation,
            Err(non_deterministic) => non_deterministic,
        }
    }

    fn replay(&mut self, violation: &Violation) -> Found<()> {
        match violation {
            Violation::Diverges {
                events,
                first,
                second,
            } => {
                for delivery in [first, second] {
                    let mut fresh = Replay::new(self.rules);
                    for &index in &delivery.order {
                        fresh.step(self, &events[index])?;
                    }
                }
            }
            Violation::MovesBackward {
                events,
                order,
                redelivered,
                ..
            }
            | Violation::NotIdempotent {
                events,
                order,
                redelivered,
                ..
            } => {
                let mut fresh = Replay::new(self.rules);
                for &index in order {
                    fresh.step(self, &events[index])?;
                }
                fresh.step(self, &events[*redelivered])?;
            }
            Violation::SilentIgnore { events, order, .. } => {
                let mut fresh = Replay::new(self.rules);
                for &index in order {
                    fresh.step(self, &events[index])?;
                }
            }
            Violation::NonDeterministic { .. } | Violation::RuleFailed { .. } => {}
        }
        Ok(())
    }
}

/// What kind of comparison a pair asks for, whatever its values: whether the event's status
/// is one the rule declares; whether something is stored, and if so how the event's status
/// compares with the stored one's (in text order: a rule's own order is unknown), and its
/// version, timestamp and payload (the payload's length first, then its bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Shape {
    declared: bool,
    stored: Option<[Ordering; 5]>,
}

impl Shape {
    fn of(info: &RuleInfo, current: Option<&State>, incoming: &Event) -> Self {
        Shape {
            declared: info.statuses.contains(&incoming.status),
            stored: current.map(|current| {
                [
                    incoming.status.cmp(&current.status),
                    incoming.version.cmp(&current.version),
                    incoming.timestamp_ms.cmp(&current.timestamp_ms),
                    incoming.payload.len().cmp(&current.payload.len()),
                    incoming.payload.cmp(&current.payload),
                ]
            }),
        }
    }
}

/// `first` and `second`, and the pairs made of them by exchanging some of the fields they
/// differ in: with status and version both different, also the pair where the event of the
/// one status has the other's version, so that the two fields disagree in one pair or the
/// other. None when they are equal.
fn crossings(first: &Event, second: &Event) -> Vec<[Event; 2]> {
    type Exchange = fn(&mut Event, &mut Event);
    let fields: [(bool, Exchange); 4] = [
        (first.status != second.status, |a, b| {
            std::mem::swap(&mut a.status, &mut b.status);
        }),
        (first.version != second.version, |a, b| {
            std::mem::swap(&mut a.version, &mut b.version);
        }),
        (first.timestamp_ms != second.timestamp_ms, |a, b| {
            std::mem::swap(&mut a.timestamp_ms, &mut b.timestamp_ms);
        }),
        (first.payload != second.payload, |a, b| {
            std::mem::swap(&mut a.payload, &mut b.payload);
        }),
    ];
    let differing: Vec<Exchange> = fields
        .into_iter()
        .filter_map(|(differs, exchange)| differs.then_some(exchange))
        .collect();
    // Exchanging a set of fields or all the others makes the same pair: the first differing
    // field always stays.
    let Some((_, others)) = differing.split_first() else {
        return Vec::new();
    };
    (0..1usize << others.len())
        .map(|exchanged| {
            let (mut a, mut b) = (first.clone(), second.clone());
            for (bit, exchange) in others.iter().enumerate() {
                if exchanged & (1 << bit) != 0 {
                    exchange(&mut a, &mut b);
                }
            }
            [a, b]
        })
        .collect()
}

/// `entity` under `sibling` if it is of `key`.
fn renamed(entity: &State, key: &str, sibling: &str) -> State {
    if entity.key == key {
        State {
            key: sibling.to_owned(),
            ..entity.clone()
        }
    } else {
        entity.clone()
    }
}

/// `events`, every one of them for `key`.
fn with_key(events: &[Event], key: &str) -> Vec<Event> {
    events
        .iter()
        .map(|event| Event {
            key: key.to_owned(),
            ..event.clone()
        })
        .collect()
}

/// Whether `theirs`, the answer under key `sibling`, is `ours`, the answer under `key`, with
/// the key renamed: the same kind of decision, storing the same state under the sibling.
/// Reasons are not compared (they may name the key), nor errors.
fn alike(ours: &Outcome, theirs: &Outcome, key: &str, sibling: &str) -> bool {
    match (ours, theirs) {
        (
            Outcome::Decision(Decision::Insert(ours)),
            Outcome::Decision(Decision::Insert(theirs)),
        )
        | (
            Outcome::Decision(Decision::Update(ours)),
            Outcome::Decision(Decision::Update(theirs)),
        ) => renamed(ours, key, sibling) == *theirs,
        (Outcome::Decision(Decision::Ignore(_)), Outcome::Decision(Decision::Ignore(_)))
        | (Outcome::Decision(Decision::Reject(_)), Outcome::Decision(Decision::Reject(_)))
        | (Outcome::Error(_), Outcome::Error(_)) => true,
        _ => false,
    }
}

/// `rule`'s answer, asked again once if the call ran past its deadline: a deadline depends on
/// the machine's load as much as on the rule (a gate may run beside a busy pipeline), and a rule
/// that really runs too long fails the second time too.
fn decide(rule: &mut dyn Rule, current: Option<&State>, incoming: &Event) -> Outcome {
    match rule.decide(current, incoming) {
        Err(DecideError::Deadline(_)) => rule.decide(current, incoming).into(),
        result => result.into(),
    }
}

/// A fold on a fresh instance, answer by answer compared with the long-lived instance's.
struct Replay {
    rule: Box<dyn Rule>,
    decisions: u64,
    state: Option<State>,
}

impl Replay {
    fn new(rules: &dyn RuleFactory) -> Self {
        Self {
            rule: rules.fresh(),
            decisions: 0,
            state: None,
        }
    }

    fn step(&mut self, checker: &mut Checker<'_>, incoming: &Event) -> Found<()> {
        let current = self.state.as_ref();
        let answer = Answer {
            after_decisions: self.decisions,
            outcome: decide(self.rule.as_mut(), current, incoming),
        };
        self.decisions += 1;
        checker.decisions += 1;
        let before = match checker.memo.get(current, incoming) {
            Some(before) => before.clone(),
            // Forgotten (the memo started over): ask the long-lived instance again.
            None => Answer {
                after_decisions: checker.warm_decisions,
                outcome: {
                    checker.warm_decisions += 1;
                    checker.decisions += 1;
                    decide(checker.warm.as_mut(), current, incoming)
                },
            },
        };
        if before.outcome != answer.outcome {
            let (current, answers) = (self.state.clone(), vec![before, answer]);
            return Err(checker.non_deterministic(current.as_ref(), incoming, answers));
        }
        if let Outcome::Decision(decision) = &answer.outcome {
            if let Some(next) = decision.stored_state() {
                self.state = Some(next.clone());
            }
        }
        Ok(())
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "counterexample: {}", self.headline())?;
        if let Violation::NonDeterministic {
            current,
            incoming,
            answers,
        } = self
        {
            match current {
                Some(current) => writeln!(f, "  current  {}", state_text(current))?,
                None => writeln!(f, "  current  none (nothing stored)")?,
            }
            writeln!(f, "  incoming {}", json(incoming))?;
            for answer in answers {
                let outcome = match &answer.outcome {
                    Outcome::Decision(decision) => json(decision),
                    Outcome::Error(error) => format!("error: {error}"),
                };
                match answer.after_decisions {
                    0 => writeln!(f, "  a fresh instance answered {outcome}")?,
                    n => writeln!(
                        f,
                        "  an instance that had decided {n} times answered {outcome}"
                    )?,
                }
            }
            return Ok(());
        }
        writeln!(f, "  events (for one key):")?;
        for (index, event) in self.events().iter().enumerate() {
            writeln!(f, "    #{index} {}", json(event))?;
        }
        match self {
            Violation::Diverges { first, second, .. } => {
                for delivery in [first, second] {
                    writeln!(
                        f,
                        "  delivered {} -> stored {}",
                        order_text(&delivery.order),
                        delivery
                            .final_state
                            .as_ref()
                            .map_or_else(|| "nothing".to_owned(), state_text)
                    )?;
                }
            }
            Violation::MovesBackward {
                order,
                stored,
                redelivered,
                moved_to,
                ..
            }
            | Violation::NotIdempotent {
                order,
                stored,
                redelivered,
                moved_to,
                ..
            } => {
                writeln!(
                    f,
                    "  delivered {} -> stored {}",
                    order_text(order),
                    state_text(stored)
                )?;
                writeln!(
                    f,
                    "  then #{redelivered} again -> stored {}",
                    state_text(moved_to)
                )?;
            }
            Violation::SilentIgnore { order, reason, .. } => {
                writeln!(
                    f,
                    "  delivered {} -> nothing stored, the last one ignored ({})",
                    order_text(order),
                    json(reason)
                )?;
            }
            Violation::RuleFailed { order, error, .. } => {
                writeln!(f, "  delivered {} -> {error}", order_text(order))?;
            }
            Violation::NonDeterministic { .. } => {}
        }
        Ok(())
    }
}

/// A state in its JSON form, which shows the payload as a JSON value; a payload that is not
/// canonical JSON text (which a rule may store, e.g. with a key twice) is shown as written
/// too, or two different states could print the same.
fn state_text(state: &State) -> String {
    let text = json(state);
    if crate::entity::canonical_json(&state.payload_value()) == state.payload {
        text
    } else {
        format!("{text} (payload text {})", json(&state.payload))
    }
}

fn order_text(order: &[usize]) -> String {
    let parts: Vec<String> = order.iter().map(|i| format!("#{i}")).collect();
    format!("[{}]", parts.join(", "))
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|error| format!("<unprintable: {error}>"))
}
