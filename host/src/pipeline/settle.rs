//! The settle stage: each key's events are folded through the rule over its stored state and
//! the result is written with one compare-and-set; a key that lost a race is reloaded and
//! folded again.
//!
//! Folding a key's events locally (coalescing) writes a key at most once per batch. Decisions
//! are asked in rounds — the first event of every key in one `decide-batch` call, then the
//! second, … — so the per-call cost of the rule is paid once per round rather than once per
//! event. A store that fails is waited out ([`Outage`]); a write whose answer was lost is
//! harmless to redo, because it is redone from a fresh load and the compare-and-set makes a
//! write that did land a newer revision to decide against.

use std::time::Instant;

use super::batch::Batch;
use super::group::KeyEvents;
use super::outage::Outage;
use super::{PipelineConfig, PipelineError};
use crate::dead_letter::DeadLetterKind;
use crate::entity::{Decision, Event, State};
use crate::rule::{DecideError, Rule};
use crate::store::{Store, Stored, Write, WriteOutcome};

/// What folding one key's events produced.
struct Folded {
    /// The revision the fold started from: the compare-and-set's expectation.
    start_revision: u64,
    /// The state to write, if any event changed it.
    changed: Option<State>,
    /// Each event's decision, by the index of its message.
    outcomes: Vec<(usize, Result<Decision, DecideError>)>,
}

/// Settles every key of the batch: decided, written, and the outcome of each event tallied
/// (rejections and rule failures dead-lettered).
pub(super) async fn settle(
    batch: &mut Batch<'_>,
    groups: Vec<KeyEvents>,
    rule: &mut impl Rule,
    store: &impl Store,
    outage: &Outage<'_>,
    config: &PipelineConfig,
) -> Result<(), PipelineError> {
    let mut pending = groups;
    let mut attempt = 0;
    while !pending.is_empty() {
        attempt += 1;
        if attempt > config.max_write_attempts {
            return Err(PipelineError::Contended {
                attempts: config.max_write_attempts,
                keys: pending.into_iter().map(|group| group.key).collect(),
            });
        }
        let keys: Vec<String> = pending.iter().map(|group| group.key.clone()).collect();
        let loaded = load(store, &keys, outage).await?;
        let folded = fold(rule, &pending, loaded, config.rule_retries);
        let mut writes = Vec::new();
        let mut written = Vec::new();
        for (slot, fold) in folded.iter().enumerate() {
            if let Some(state) = &fold.changed {
                let group = &pending[slot];
                let last = group.events.last().map_or(0, |(index, _)| *index);
                writes.push(Write {
                    key: group.key.clone(),
                    expected_revision: fold.start_revision,
                    state: state.clone(),
                    rule: batch.stamp.clone(),
                    position: batch.messages[last].position.to_string(),
                });
                written.push(slot);
            }
        }
        let Some(outcomes) = write(store, &writes, outage).await? else {
            // The store failed mid-write: some writes may have landed. Reload and decide
            // again; the compare-and-set keeps a landed write from being applied twice.
            attempt -= 1;
            continue;
        };
        let mut conflicted = vec![false; pending.len()];
        for (slot, outcome) in written.into_iter().zip(outcomes) {
            match outcome {
                WriteOutcome::Written { .. } => batch.tally.writes += 1,
                WriteOutcome::Conflict => {
                    batch.tally.conflicts += 1;
                    conflicted[slot] = true;
                }
            }
        }
        let mut retry = Vec::new();
        for ((group, fold), conflicted) in pending.into_iter().zip(folded).zip(conflicted) {
            if conflicted {
                retry.push(group);
                continue;
            }
            for (index, outcome) in fold.outcomes {
                tally(batch, index, outcome);
            }
        }
        pending = retry;
    }
    Ok(())
}

/// Loads `keys`, waiting out store outages.
async fn load(
    store: &impl Store,
    keys: &[String],
    outage: &Outage<'_>,
) -> Result<Vec<Option<Stored>>, PipelineError> {
    let mut backoff = outage.backoff();
    loop {
        let asked = Instant::now();
        match store.load(keys).await {
            Ok(loaded) => {
                outage.metrics.record_store_call("load", asked.elapsed());
                return Ok(loaded);
            }
            Err(error) if error.is_transient() => {
                outage.wait("store", "load", &error, &mut backoff).await?;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Writes, or `None` when the store failed and the caller must reload before trying again
/// (after the backoff has been waited).
async fn write(
    store: &impl Store,
    writes: &[Write],
    outage: &Outage<'_>,
) -> Result<Option<Vec<WriteOutcome>>, PipelineError> {
    let asked = Instant::now();
    match store.write(writes).await {
        Ok(outcomes) => {
            outage.metrics.record_store_call("write", asked.elapsed());
            Ok(Some(outcomes))
        }
        Err(error) if error.is_transient() => {
            let mut backoff = outage.backoff();
            outage.wait("store", "write", &error, &mut backoff).await?;
            Ok(None)
        }
        Err(error) => Err(error.into()),
    }
}

/// Folds each group's events over its loaded state, in rounds of one event per key.
fn fold(
    rule: &mut impl Rule,
    groups: &[KeyEvents],
    loaded: Vec<Option<Stored>>,
    retries: u32,
) -> Vec<Folded> {
    let mut states: Vec<Option<State>> = Vec::with_capacity(groups.len());
    let mut folded: Vec<Folded> = Vec::with_capacity(groups.len());
    for stored in loaded {
        folded.push(Folded {
            start_revision: stored.as_ref().map_or(0, |s| s.revision),
            changed: None,
            outcomes: Vec::new(),
        });
        states.push(stored.map(|s| s.state));
    }
    let rounds = groups.iter().map(|g| g.events.len()).max().unwrap_or(0);
    for round in 0..rounds {
        let members: Vec<usize> = (0..groups.len())
            .filter(|&slot| round < groups[slot].events.len())
            .collect();
        let items: Vec<(Option<State>, Event)> = members
            .iter()
            .map(|&slot| (states[slot].clone(), groups[slot].events[round].1.clone()))
            .collect();
        let decisions = decide_all(rule, &items, retries);
        for (slot, decision) in members.into_iter().zip(decisions) {
            if let Ok(decision) = &decision
                && let Some(state) = decision.stored_state()
            {
                states[slot] = Some(state.clone());
                folded[slot].changed = Some(state.clone());
            }
            folded[slot]
                .outcomes
                .push((groups[slot].events[round].0, decision));
        }
    }
    folded
}

/// Decides a round in one batch call; if the batch fails, decides each pair alone (with
/// retries on a fresh instance) so that only the culprit fails.
fn decide_all(
    rule: &mut impl Rule,
    items: &[(Option<State>, Event)],
    retries: u32,
) -> Vec<Result<Decision, DecideError>> {
    match rule.decide_batch(items) {
        Ok(decisions) => decisions.into_iter().map(Ok).collect(),
        Err(_) => items
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
            .collect(),
    }
}

/// Tallies one applied event's outcome; rejections and failures become dead letters.
fn tally(batch: &mut Batch<'_>, index: usize, outcome: Result<Decision, DecideError>) {
    match outcome {
        Ok(decision) => {
            *batch.tally.decisions.entry(decision.kind()).or_default() += 1;
            if let Decision::Reject(reason) = decision {
                batch.dead_letter(index, DeadLetterKind::Rejected, reason);
            }
        }
        Err(error) => {
            tracing::warn!(
                position = %batch.messages[index].position,
                %error,
                "rule failed; dead-lettering the event"
            );
            batch.dead_letter(index, DeadLetterKind::RuleFailed, error.to_string());
        }
    }
}
