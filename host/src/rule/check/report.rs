//! What the check found, and how a violation reads: the property, the shrunk history, the
//! orders and states that show it.

use std::fmt;

use serde::Serialize;

use crate::entity::{Decision, Event, State};
use crate::rule::DecideError;

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
