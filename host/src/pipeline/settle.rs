//! The settle stage: each key's events are folded through the rule over its current state and
//! the result is written with one compare-and-set; a key that lost a race is decided again on
//! the state the refusal answered.
//!
//! Folding a key's events locally (coalescing) writes a key at most once per batch. Decisions
//! are asked in rounds — the first event of every key in one `decide-batch` call, then the
//! second, … — so the per-call cost of the rule is paid once per round rather than once per
//! event. A key's current state comes from the [`StateCache`] when it is known there, else
//! from one pipelined load of the batch's unknown keys.
//!
//! [`settle`] is the complete, sequential path: it returns once every key is written or
//! decided against the latest state, and is what a batch falls back to after a refused or
//! failed write (see `flight`). A store that fails is waited out ([`Outage`]); a write whose
//! answer was lost is harmless to redo, because the compare-and-set makes a write that did land
//! a newer revision to decide against.

use std::time::Instant;

use super::PipelineError;
use super::batch::Batch;
use super::cache::StateCache;
use super::group::KeyEvents;
use super::outage::Outage;
use crate::backoff::Backoff;
use crate::config::PipelineConfig;
use crate::dead_letter::DeadLetterKind;
use crate::entity::{Decision, Event, State};
use crate::rule::{DecideError, Rule};
use crate::store::{Current, Store, StoreError, Unreadable, Write, WriteOutcome, new_writer_id};
use crate::telemetry::events::{KeysContended, UnreadableState};

/// What folding one key's events produced.
pub(super) struct Folded {
    /// The revision the fold started from: the compare-and-set's expectation.
    pub base_revision: u64,
    /// The writer of that revision.
    pub base_writer: u64,
    /// The state to write, if any event changed it.
    pub changed: Option<State>,
    /// Each event's decision, by the index of its message.
    pub outcomes: Vec<(usize, Result<Decision, DecideError>)>,
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

/// The current state of every group's key: from the cache where it is known, else loaded (one
/// pipelined round trip for all unknown keys, outages waited out). Loaded states are cached.
///
/// A key whose stored state cannot be read is set aside: its group leaves `groups` and its
/// events are dead-lettered, quoting the stored value, which is left as it is. Retrying would
/// not make it readable, and the other keys of the batch must not wait on it.
pub(super) async fn current_states(
    batch: &mut Batch,
    groups: &mut Vec<KeyEvents>,
    cache: &mut StateCache,
    store: &impl Store,
    outage: &Outage<'_>,
) -> Result<Vec<Option<Current>>, PipelineError> {
    let mut currents = Vec::with_capacity(groups.len());
    let mut unknown = Vec::new();
    for (slot, group) in groups.iter().enumerate() {
        match cache.get(&group.key) {
            Some(known) => currents.push(known),
            None => {
                currents.push(None);
                unknown.push(slot);
            }
        }
    }
    outage
        .metrics
        .record_cache((groups.len() - unknown.len()) as u64, unknown.len() as u64);
    if unknown.is_empty() {
        return Ok(currents);
    }
    let keys: Vec<String> = unknown
        .iter()
        .map(|&slot| groups[slot].key.clone())
        .collect();
    let loaded = load(store, &keys, outage).await?;
    let mut set_aside = vec![false; groups.len()];
    for ((slot, key), current) in unknown.into_iter().zip(keys).zip(loaded) {
        match current {
            Ok(current) => {
                cache.remember(key, current.clone());
                currents[slot] = current;
            }
            Err(unreadable) => {
                set_aside[slot] = true;
                set_aside_unreadable(batch, &groups[slot], &unreadable, outage);
            }
        }
    }
    if set_aside.contains(&true) {
        let mut kept_groups = Vec::with_capacity(groups.len());
        let mut kept_currents = Vec::with_capacity(groups.len());
        for ((group, current), aside) in groups.drain(..).zip(currents).zip(set_aside) {
            if !aside {
                kept_groups.push(group);
                kept_currents.push(current);
            }
        }
        *groups = kept_groups;
        currents = kept_currents;
    }
    Ok(currents)
}

/// Dead-letters the events of a key whose stored state is unreadable.
fn set_aside_unreadable(
    batch: &mut Batch,
    group: &KeyEvents,
    unreadable: &Unreadable,
    outage: &Outage<'_>,
) {
    outage.metrics.emit(UnreadableState {
        key: &group.key,
        why: &unreadable.why,
        events: group.events.len(),
    });
    for (index, _) in &group.events {
        batch.dead_letter(
            *index,
            DeadLetterKind::UnreadableState,
            format!(
                "the stored state of key {:?} is unreadable ({}); the event was not applied and \
                 the stored value was left as it is: {}",
                group.key, unreadable.why, unreadable.stored
            ),
        );
    }
}

/// Settles every key of `groups` completely: decided, written, the outcome of each event
/// tallied (rejections and rule failures dead-lettered), and the cache told what was stored.
///
/// `unsure`: a write of the batch failed before this, so it may have landed unconfirmed (not
/// yet on the replicas `store.wait_replicas` asks for); deciding again finds it stored and
/// writes nothing, so the store is synced before the batch can be acknowledged.
#[allow(clippy::too_many_arguments)] // The pipeline's parts, borrowed apart.
pub(super) async fn settle(
    batch: &mut Batch,
    groups: Vec<KeyEvents>,
    rule: &mut impl Rule,
    store: &impl Store,
    cache: &mut StateCache,
    outage: &Outage<'_>,
    config: &PipelineConfig,
    mut unsure: bool,
) -> Result<(), PipelineError> {
    let mut pending = groups;
    let mut attempt = 0;
    // Keys still conflicting after `max_write_attempts` are waited out rather than failed: a
    // failure would leave the batch unacknowledged and the restart would meet the same keys.
    // Backing off lets the other writer's batch land; what conflicts is decided again on the
    // state it stored, so nothing is lost and nothing moves backward.
    let mut contended: Option<Backoff> = None;
    while !pending.is_empty() {
        attempt += 1;
        if attempt > config.max_write_attempts {
            match contended.as_mut() {
                Some(backoff) => outage.wait_quietly("store", "contended", backoff).await?,
                None => {
                    let keys: Vec<&str> = pending.iter().map(|group| group.key.as_str()).collect();
                    outage.metrics.emit(KeysContended {
                        keys: &keys,
                        attempts: config.max_write_attempts,
                    });
                    let mut backoff = outage.backoff();
                    outage.sleep("store", backoff.next_wait()).await?;
                    contended = Some(backoff);
                }
            }
        }
        let currents = current_states(batch, &mut pending, cache, store, outage).await?;
        let folded = fold(rule, &mut pending, currents, config.rule_retries);
        let mut writes = Vec::new();
        let mut written = Vec::new();
        for (slot, fold) in folded.iter().enumerate() {
            if let Some(write) = fold.write(&pending[slot].key, batch, pending[slot].last_index()) {
                writes.push(write);
                written.push(slot);
            }
        }
        let Some(outcomes) = write(store, &writes, outage).await? else {
            // The store failed mid-write: some writes may have landed. Forget what is cached,
            // reload and decide again; the compare-and-set keeps a landed write from being
            // applied twice.
            cache.clear();
            attempt -= 1;
            unsure = true;
            continue;
        };
        let mut conflicted = vec![false; pending.len()];
        for ((slot, write), outcome) in written.into_iter().zip(writes).zip(outcomes) {
            match outcome {
                WriteOutcome::Written { revision } => {
                    batch.tally.writes += 1;
                    cache.remember(write.key.clone(), Some(write.landed(revision)));
                }
                WriteOutcome::Conflict { current } => {
                    batch.tally.conflicts += 1;
                    conflicted[slot] = true;
                    // Decided again on what the refusal answered, without a load.
                    cache.remember(write.key, current);
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
    if unsure {
        sync(store, outage).await?;
    }
    Ok(())
}

/// Syncs the store ([`Store::sync`]), waiting out outages.
async fn sync(store: &impl Store, outage: &Outage<'_>) -> Result<(), PipelineError> {
    let mut backoff = outage.backoff();
    loop {
        match store.sync().await {
            Ok(()) => return Ok(()),
            Err(error) if error.is_transient() => {
                outage.wait("store", "sync", &error, &mut backoff).await?;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Loads `keys`, waiting out store outages. A key whose stored state is unreadable answers
/// why, and the others are loaded without it.
pub(super) async fn load(
    store: &impl Store,
    keys: &[String],
    outage: &Outage<'_>,
) -> Result<Vec<Result<Option<Current>, Unreadable>>, PipelineError> {
    let mut backoff = outage.backoff();
    let mut answers: Vec<Option<Result<Option<Current>, Unreadable>>> = vec![None; keys.len()];
    // Indexes of the keys still to load.
    let mut asking: Vec<usize> = (0..keys.len()).collect();
    let mut subset: Option<Vec<String>> = None;
    loop {
        let asked = Instant::now();
        let result = store.load(subset.as_deref().unwrap_or(keys)).await;
        match result {
            Ok(loaded) => {
                outage.metrics.record_store_call("load", asked.elapsed());
                outage.metrics.record_stage("load", asked.elapsed());
                for (&index, current) in asking.iter().zip(loaded) {
                    answers[index] = Some(Ok(current));
                }
                return Ok(answers
                    .into_iter()
                    .map(|answer| answer.unwrap_or(Ok(None)))
                    .collect());
            }
            Err(StoreError::Unreadable(found)) => {
                let before = asking.len();
                for unreadable in found {
                    if let Some(at) = asking.iter().position(|&i| keys[i] == unreadable.key) {
                        answers[asking.remove(at)] = Some(Err(unreadable));
                    }
                }
                if asking.len() == before {
                    // The store named keys it was not asked for: nothing to set aside.
                    return Err(StoreError::UnexpectedAnswer {
                        answer: "unreadable states of keys not asked for".to_owned(),
                    }
                    .into());
                }
                subset = Some(asking.iter().map(|&i| keys[i].clone()).collect());
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
    if writes.is_empty() {
        return Ok(Some(Vec::new()));
    }
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
        // A key's value turned unreadable after it was loaded: the reload sets it aside.
        Err(StoreError::Unreadable(_)) => Ok(None),
        Err(error) => Err(error.into()),
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

/// Tallies one applied event's outcome; rejections and failures become dead letters.
pub(super) fn tally(batch: &mut Batch, index: usize, outcome: Result<Decision, DecideError>) {
    match outcome {
        Ok(decision) => {
            *batch.tally.decisions.entry(decision.kind()).or_default() += 1;
            match decision {
                Decision::Reject(reason) => {
                    batch.dead_letter(index, DeadLetterKind::Rejected, reason);
                }
                // The reason moves into the tally: no copy per event.
                Decision::Ignore(reason) => *batch.tally.ignores.entry(reason).or_default() += 1,
                Decision::Insert(_) | Decision::Update(_) => {}
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
