//! The convergence property check: does a rule's stored state depend on delivery order?
//!
//! For generated histories of events for one key (over the statuses the rule declares, with
//! small version, timestamp and payload domains so that ties and duplicates are common), the
//! check folds the events through the rule in every delivery order (histories of up to
//! [`CheckConfig::exhaustive_up_to`] events) or in [`CheckConfig::random_orders`] random orders
//! (longer ones), and requires:
//!
//! - **convergence**: every order ends on the same stored state;
//! - **no regression**: whenever the stored state changes, re-delivering any event applied
//!   before leaves it unchanged, so no redelivery can move the key backward;
//! - **idempotence**: the same holds for an exact duplicate of the event that was just applied;
//! - **no failures**: the rule never traps, times out or answers against the contract.
//!
//! A failing history is shrunk (events dropped one at a time while it still fails) before it is
//! reported, so the counterexample is minimal.

use std::collections::HashSet;
use std::fmt;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::entity::{Decision, Event, RuleInfo, State};
use crate::rule::{DecideError, Rule};

/// A found violation; boxed because it carries whole histories.
type Found<T> = Result<T, Box<Violation>>;

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
    /// Seed of the generator: the same seed checks the same histories.
    pub seed: u64,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            histories: 200,
            max_events: 10,
            exhaustive_up_to: 7,
            random_orders: 1_000,
            seed: 0x5eed,
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
    /// The (shrunk) history that shows the violation.
    pub fn events(&self) -> &[Event] {
        match self {
            Violation::Diverges { events, .. }
            | Violation::MovesBackward { events, .. }
            | Violation::NotIdempotent { events, .. }
            | Violation::RuleFailed { events, .. } => events,
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
            Violation::RuleFailed { .. } => "the rule failed on a generated history",
        }
    }
}

/// What the check did and what it found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// Histories checked (up to and including the failing one).
    pub histories: usize,
    /// Complete delivery orders folded.
    pub orders: u64,
    /// Decisions asked of the rule.
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

/// Runs the property check against `rule`.
pub fn check(rule: &mut dyn Rule, config: &CheckConfig) -> CheckReport {
    let info = rule.info().clone();
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut checker = Checker {
        rule,
        config,
        orders: 0,
        decisions: 0,
    };
    for done in 0..config.histories {
        let events = generate_history(&info, config.max_events, &mut rng);
        if let Err(violation) = checker.check_history(&events, &mut rng) {
            let violation = checker.shrink(violation, &mut rng);
            return CheckReport {
                histories: done + 1,
                orders: checker.orders,
                decisions: checker.decisions,
                violation: Some(*violation),
            };
        }
    }
    CheckReport {
        histories: config.histories,
        orders: checker.orders,
        decisions: checker.decisions,
        violation: None,
    }
}

/// Events for one key over the rule's statuses; about a quarter are duplicates of earlier ones.
fn generate_history(info: &RuleInfo, max_events: usize, rng: &mut StdRng) -> Vec<Event> {
    const PAYLOADS: [&str; 3] = ["null", r#"{"note":"a"}"#, r#"{"note":"b"}"#];
    let len = rng.random_range(2..=max_events.max(2));
    let mut events: Vec<Event> = Vec::with_capacity(len);
    while events.len() < len {
        if !events.is_empty() && rng.random_bool(0.25) {
            let earlier = events[rng.random_range(0..events.len())].clone();
            events.push(earlier);
            continue;
        }
        events.push(Event {
            key: "order-1".to_owned(),
            status: info.statuses[rng.random_range(0..info.statuses.len())].clone(),
            version: rng.random_range(0..=2),
            timestamp_ms: rng.random_range(0..=2),
            payload: PAYLOADS[rng.random_range(0..PAYLOADS.len())].to_owned(),
        });
    }
    events
}

struct Checker<'a> {
    rule: &'a mut dyn Rule,
    config: &'a CheckConfig,
    orders: u64,
    decisions: u64,
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
        self.decisions += 1;
        match self.rule.decide(state, &walk.events[event]) {
            Ok(Decision::Insert(new) | Decision::Update(new)) => Ok(Some(new)),
            Ok(Decision::Ignore(_) | Decision::Reject(_)) => Ok(state.cloned()),
            Err(error) => Err(Box::new(Violation::RuleFailed {
                events: walk.events.to_vec(),
                order: walk.order.clone(),
                error,
            })),
        }
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

    /// Drops events from the failing history while it still fails.
    fn shrink(&mut self, mut violation: Box<Violation>, rng: &mut StdRng) -> Box<Violation> {
        let mut events = violation.events().to_vec();
        let mut index = 0;
        while index < events.len() && events.len() > 1 {
            let mut smaller = events.clone();
            smaller.remove(index);
            match self.check_history(&smaller, rng) {
                Err(smaller_violation) => {
                    events = smaller;
                    violation = smaller_violation;
                    index = 0;
                }
                Ok(()) => index += 1,
            }
        }
        violation
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "counterexample: {}", self.headline())?;
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
                        json(&delivery.final_state)
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
                    json(stored)
                )?;
                writeln!(
                    f,
                    "  then #{redelivered} again -> stored {}",
                    json(moved_to)
                )?;
            }
            Violation::RuleFailed { order, error, .. } => {
                writeln!(f, "  delivered {} -> {error}", order_text(order))?;
            }
        }
        Ok(())
    }
}

fn order_text(order: &[usize]) -> String {
    let parts: Vec<String> = order.iter().map(|i| format!("#{i}")).collect();
    format!("[{}]", parts.join(", "))
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|error| format!("<unprintable: {error}>"))
}
