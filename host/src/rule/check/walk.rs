//! The walk: every (or many random) delivery orders of a history folded through the rule,
//! each step checked for convergence, regression, idempotence, silence, determinism and
//! failures; and every pair of events on its own and crossed, under sibling keys too.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::keys::Siblings;
use super::report::{Answer, Delivery, Outcome, Violation};
use super::{CheckConfig, RuleFactory};
use crate::entity::{Decision, Event, RuleInfo, State};
use crate::progress::Progress;
use crate::rule::{ContractViolation, DecideError, Rule};

/// A found violation; boxed because it carries whole histories.
pub(super) type Found<T> = Result<T, Box<Violation>>;

/// Every answer the long-lived instance gave, by (current, incoming), with when it gave it.
///
/// Looked up by a hash of the borrowed pair, so a repeat (the common case) costs a hash and a
/// comparison, not a copy.
#[derive(Default)]
pub(super) struct Memo {
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
pub(super) const MAX_SUSPECTS: usize = 16;

/// Past this many pairs the memo starts over: it bounds the check's memory on long runs.
const MEMO_CAP: usize = 1 << 16;

impl Memo {
    pub(super) fn get(&self, current: Option<&State>, incoming: &Event) -> Option<&Answer> {
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

pub(super) struct Checker<'a> {
    pub(super) rules: &'a dyn RuleFactory,
    /// The long-lived instance most decisions are asked of.
    pub(super) warm: Box<dyn Rule>,
    info: RuleInfo,
    config: &'a CheckConfig,
    pub(super) orders: u64,
    pub(super) decisions: u64,
    /// Decisions asked of `warm`.
    pub(super) warm_decisions: u64,
    pub(super) memo: Memo,
    /// Fresh-instance comparisons left for the current history.
    fresh_left: usize,
    /// Picks the pairs compared with a fresh instance; its own stream, so that the histories
    /// drawn do not depend on it.
    sampler: StdRng,
    pub(super) progress: &'a dyn Progress,
    /// Siblings of keys.
    siblings: Siblings,
    /// Whether new pairs are asked under siblings of their key too: while a generated history
    /// is checked, not while re-checking or shrinking.
    pub(super) probing: bool,
    /// The shapes of pair already asked under every sibling of their key.
    swept: HashSet<Shape>,
    /// Keys the rule decided a pair otherwise under than under a sibling key: later histories
    /// are checked under them too.
    pub(super) suspects: Vec<String>,
    /// Such keys found during the current history, which is checked under each of them next.
    pub(super) new_suspects: Vec<String>,
}

impl<'a> Checker<'a> {
    pub(super) fn new(
        rules: &'a dyn RuleFactory,
        config: &'a CheckConfig,
        progress: &'a dyn Progress,
        warm: Box<dyn Rule>,
        info: RuleInfo,
        siblings: Siblings,
        seed: u64,
    ) -> Self {
        Checker {
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
        }
    }
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
    pub(super) fn check_history(&mut self, events: &[Event], rng: &mut StdRng) -> Found<()> {
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
    pub(super) fn check_pairs(&mut self, events: &[Event], rng: &mut StdRng) -> Found<()> {
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
    pub(super) fn non_deterministic(
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
pub(super) fn with_key(events: &[Event], key: &str) -> Vec<Event> {
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
pub(super) fn decide(rule: &mut dyn Rule, current: Option<&State>, incoming: &Event) -> Outcome {
    match rule.decide(current, incoming) {
        Err(DecideError::Deadline(_)) => rule.decide(current, incoming).into(),
        result => result.into(),
    }
}
