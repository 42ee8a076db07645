//! A failing history made smaller (events dropped one at a time while it still fails, then
//! shown under a short key), and replayed on fresh instances: a counterexample a fresh instance
//! does not reproduce is reported as non-determinism.

use rand::rngs::StdRng;

use super::RuleFactory;
use super::report::{Answer, Outcome, Violation};
use super::walk::{Checker, Found, decide};
use crate::entity::{Event, State};
use crate::rule::Rule;

/// Keys a counterexample is shown with when it still holds under them.
const SHORT_KEYS: [&str; 2] = ["o-1", "O-1"];

impl Checker<'_> {
    /// Drops events from the failing history while it still fails. Non-determinism is one
    /// pair already, and ends the shrinking wherever it shows.
    pub(super) fn shrink(
        &mut self,
        mut violation: Box<Violation>,
        rng: &mut StdRng,
    ) -> Box<Violation> {
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
    pub(super) fn confirm(&mut self, violation: Box<Violation>) -> Box<Violation> {
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
