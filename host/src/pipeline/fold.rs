//! The fold stage: each key's events through the rule, starting from its current state, so a
//! key is written at most once per batch (coalescing). Decisions are asked in rounds — the first
//! event of every key in one `decide-batch` call, then the second, … — so the per-call cost of
//! the rule is paid once per round rather than once per event. A round whose batch call fails
//! is decided pair by pair, so only the culprit fails.
//!
//! Once a key's outcomes are final (its write landed, or it had nothing to write), the batch
//! tallies them ([`Batch::tally`]): rejections and rule failures become dead letters.

use super::batch::Batch;
use super::group::KeyEvents;
use crate::dead_letter::DeadLetterKind;
use crate::entity::{Decision, Event, State};
use crate::rule::{DecideError, Rule};
use crate::store::{Current, Write, new_writer_id};

/// Each event's decision, by the index of its message.
pub(super) type Outcomes = Vec<(usize, Result<Decision, DecideError>)>;

/// What folding one key's events produced.
pub(super) struct Folded {
    /// The revision the fold started from: the compare-and-set's expectation.
    pub base_revision: u64,
    /// The writer of that revision.
    pub base_writer: u64,
    /// The state to write, if any event changed it.
    pub changed: Option<State>,
    pub outcomes: Outcomes,
}

impl Folded {
    /// The write of the folded state, if it changed.
    pub fn write(&self, key: &str, batch: &Batch, last_index: usize) -> Option<Write> {
        Some(Write {
            key: key.to_owned(),
            expected_revision: self.base_revision,
            expected_writer: self.base_writer,
            writer: new_writer_id(),
            state: self.changed.clone()?,
            rule: batch.stamp.clone(),
            position: batch.messages[last_index].position.to_string(),
        })
    }
}

/// Folds each group's events over its current state, in rounds of one event per key. States
/// and events move into the rule's call and back out of it, so nothing is copied to ask.
pub(super) fn fold(
    rule: &mut impl Rule,
    groups: &mut [KeyEvents],
    currents: Vec<Option<Current>>,
    retries: u32,
) -> Vec<Folded> {
    let mut states: Vec<Option<State>> = Vec::with_capacity(groups.len());
    let mut folded: Vec<Folded> = Vec::with_capacity(groups.len());
    for current in currents {
        folded.push(Folded {
            base_revision: current.as_ref().map_or(0, |c| c.revision),
            base_writer: current.as_ref().map_or(0, |c| c.writer),
            changed: None,
            outcomes: Vec::new(),
        });
        states.push(current.map(|c| c.state));
    }
    let rounds = groups.iter().map(|g| g.events.len()).max().unwrap_or(0);
    let mut changed = vec![false; groups.len()];
    let mut members: Vec<usize> = Vec::with_capacity(groups.len());
    for round in 0..rounds {
        members.clear();
        members.extend((0..groups.len()).filter(|&slot| round < groups[slot].events.len()));
        let items: Vec<(Option<State>, Event)> = members
            .iter()
            .map(|&slot| {
                let event = std::mem::replace(&mut groups[slot].events[round].1, vacant());
                (states[slot].take(), event)
            })
            .collect();
        let (decisions, items) = decide_all(rule, items, retries);
        for ((&slot, decision), (current, event)) in members.iter().zip(decisions).zip(items) {
            groups[slot].events[round].1 = event;
            states[slot] = match decision.as_ref().ok().and_then(Decision::stored_state) {
                Some(state) => {
                    changed[slot] = true;
                    Some(state.clone())
                }
                None => current,
            };
            folded[slot]
                .outcomes
                .push((groups[slot].events[round].0, decision));
        }
    }
    for ((fold, state), changed) in folded.iter_mut().zip(states).zip(changed) {
        if changed {
            fold.changed = state;
        }
    }
    folded
}

/// What stands in for an event while it is with the rule (empty strings do not allocate).
fn vacant() -> Event {
    Event {
        key: String::new(),
        status: String::new(),
        version: 0,
        timestamp_ms: 0,
        payload: String::new(),
    }
}

/// Decides a round in one batch call; if the batch fails, decides each pair alone (with
/// retries on a fresh instance) so that only the culprit fails. Gives the items back.
#[allow(clippy::type_complexity)]
fn decide_all(
    rule: &mut impl Rule,
    items: Vec<(Option<State>, Event)>,
    retries: u32,
) -> (
    Vec<Result<Decision, DecideError>>,
    Vec<(Option<State>, Event)>,
) {
    match rule.decide_batch(&items) {
        Ok(decisions) => (decisions.into_iter().map(Ok).collect(), items),
        Err(_) => {
            let decisions = items
                .iter()
                .map(|(current, incoming)| {
                    let mut result = rule.decide(current.as_ref(), incoming);
                    for _ in 0..retries {
                        if result.is_ok() {
                            break;
                        }
                        result = rule.decide(current.as_ref(), incoming);
                    }
                    result
                })
                .collect();
            (decisions, items)
        }
    }
}

impl Batch {
    /// Tallies the final outcomes of a key's events; rejections and rule failures become dead
    /// letters.
    pub(super) fn tally(&mut self, outcomes: Outcomes) {
        for (index, outcome) in outcomes {
            match outcome {
                Ok(decision) => {
                    *self.tally.decisions.entry(decision.kind()).or_default() += 1;
                    match decision {
                        Decision::Reject(reason) => {
                            self.dead_letter(index, DeadLetterKind::Rejected, reason);
                        }
                        // The reason moves into the tally: no copy per event.
                        Decision::Ignore(reason) => {
                            *self.tally.ignores.entry(reason).or_default() += 1;
                        }
                        Decision::Insert(_) | Decision::Update(_) => {}
                    }
                }
                Err(error) => {
                    tracing::warn!(
                        position = %self.messages[index].position,
                        %error,
                        "rule failed; dead-lettering the event"
                    );
                    self.dead_letter(index, DeadLetterKind::RuleFailed, error.to_string());
                }
            }
        }
    }
}
