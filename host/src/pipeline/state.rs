//! The current-state stage: each key's stored state, from the write-through [`StateCache`]
//! when this instance knows it, else from one pipelined load of the batch's unknown keys
//! (outages waited out). A key whose stored state cannot be read is set aside: its events are
//! dead-lettered, quoting the stored value, which is left as it is.
//!
//! The cache knows what this instance knows each key's stored state to be, so a
//! key it wrote (or loaded) recently is decided without a load.
//!
//! Two tiers:
//! - **in flight**: the state a batch whose writes are not acknowledged yet will store. A later
//!   batch decides on it at once, and its compare-and-set expects that write's revision and
//!   writer ([`Write`](crate::store::Write)), so if the earlier write is refused the later one is
//!   too, and both are decided again. Every key of the write window is here, unbounded by the
//!   capacity (the window bounds it), so a key in flight never falls back to a load that could
//!   overtake its own write.
//! - **settled**: states acknowledged by the store (written, loaded, or answered by a refused
//!   compare-and-set), least recently used evicted beyond the capacity. A state known to be
//!   absent is cached too.
//!
//! A cached state may be stale: another instance may have written the key since. That is
//! safe: a write based on it is refused by the compare-and-set (which answers the newer
//! state), and an `ignore` decided from it is one the newer state would also decide, for a
//! rule that converges (see ARCHITECTURE.md, invariant 6). The pipeline clears the cache when
//! its partitions may have changed hands, when the rule changes, and when it repairs after a
//! refused or failed write.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::time::Instant;

use lru::LruCache;

use super::PipelineError;
use super::batch::Batch;
use super::context::Context;
use super::group::KeyEvents;
use crate::dead_letter::DeadLetterKind;
use crate::store::{Current, Store, StoreError, Unreadable};
use crate::telemetry::events::UnreadableState;
use crate::telemetry::{Operation, Service, Stage};

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
    context: &Context,
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
    context
        .metrics
        .record_cache((groups.len() - unknown.len()) as u64, unknown.len() as u64);
    if unknown.is_empty() {
        return Ok(currents);
    }
    let keys: Vec<String> = unknown
        .iter()
        .map(|&slot| groups[slot].key.clone())
        .collect();
    let loaded = load(store, &keys, context).await?;
    let mut set_aside = vec![false; groups.len()];
    for ((slot, key), current) in unknown.into_iter().zip(keys).zip(loaded) {
        match current {
            Ok(current) => {
                cache.remember(key, current.clone());
                currents[slot] = current;
            }
            Err(unreadable) => {
                set_aside[slot] = true;
                set_aside_unreadable(batch, &groups[slot], &unreadable, context);
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
    context: &Context,
) {
    context.metrics.emit(UnreadableState {
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

/// Loads `keys`, waiting out store outages. A key whose stored state is unreadable answers
/// why, and the others are loaded without it.
pub(super) async fn load(
    store: &impl Store,
    keys: &[String],
    context: &Context,
) -> Result<Vec<Result<Option<Current>, Unreadable>>, PipelineError> {
    let mut answers: Vec<Option<Result<Option<Current>, Unreadable>>> = vec![None; keys.len()];
    // Indexes of the keys still to load.
    let mut asking: Vec<usize> = (0..keys.len()).collect();
    let mut subset: Option<Vec<String>> = None;
    loop {
        let loading = subset.as_deref().unwrap_or(keys);
        let loaded = context
            .retry(Service::Store, Operation::Load, async || {
                let asked = Instant::now();
                let loaded = store.load(loading).await?;
                context
                    .metrics
                    .record_store_call(Operation::Load, asked.elapsed());
                context.metrics.record_stage(Stage::Load, asked.elapsed());
                Ok::<_, StoreError>(loaded)
            })
            .await;
        match loaded {
            Ok(loaded) => {
                for (&index, current) in asking.iter().zip(loaded) {
                    answers[index] = Some(Ok(current));
                }
                return Ok(answers
                    .into_iter()
                    .map(|answer| answer.unwrap_or(Ok(None)))
                    .collect());
            }
            Err(PipelineError::Store(StoreError::Unreadable(found))) => {
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
            Err(error) => return Err(error),
        }
    }
}

/// Known states by key (`None`: known to be absent).
#[derive(Debug)]
pub(super) struct StateCache {
    in_flight: HashMap<String, InFlight>,
    settled: Option<LruCache<String, Option<Current>>>,
}

#[derive(Debug)]
struct InFlight {
    current: Current,
    /// The batch whose write will store it.
    flight: u64,
}

impl StateCache {
    /// A cache keeping up to `capacity` settled states (0: none; keys in flight are always
    /// kept).
    pub fn new(capacity: usize) -> Self {
        Self {
            in_flight: HashMap::new(),
            settled: NonZeroUsize::new(capacity).map(LruCache::new),
        }
    }

    /// The known state of `key`: `None` if unknown (it must be loaded), `Some(None)` if known
    /// to be absent.
    pub fn get(&mut self, key: &str) -> Option<Option<Current>> {
        if let Some(in_flight) = self.in_flight.get(key) {
            return Some(Some(in_flight.current.clone()));
        }
        self.settled.as_mut()?.get(key).cloned()
    }

    /// `current` will be stored by the write of batch `flight`, not acknowledged yet.
    pub fn write_in_flight(&mut self, key: String, current: Current, flight: u64) {
        self.in_flight.insert(key, InFlight { current, flight });
    }

    /// The write of batch `flight` to `key` was acknowledged: unless a later batch has written
    /// the key since, its state is settled.
    pub fn landed(&mut self, key: &str, flight: u64) {
        if self
            .in_flight
            .get(key)
            .is_some_and(|entry| entry.flight == flight)
            && let Some(entry) = self.in_flight.remove(key)
        {
            self.remember(key.to_owned(), Some(entry.current));
        }
    }

    /// `current` is what the store holds (or held) for `key`. A state known from a newer
    /// revision is kept: revisions only grow, so the higher one is the later truth.
    pub fn remember(&mut self, key: String, current: Option<Current>) {
        if self.in_flight.contains_key(&key) {
            return;
        }
        let Some(settled) = self.settled.as_mut() else {
            return;
        };
        let revision = |c: &Option<Current>| c.as_ref().map_or(0, |c| c.revision);
        match settled.get_mut(&key) {
            Some(known) if revision(known) > revision(&current) => {}
            Some(known) => *known = current,
            None => {
                settled.put(key, current);
            }
        }
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.in_flight.clear();
        if let Some(settled) = self.settled.as_mut() {
            settled.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entity::State;

    fn current(revision: u64, writer: u64) -> Current {
        Current {
            state: State {
                key: "k".to_owned(),
                status: "paid".to_owned(),
                version: revision,
                timestamp_ms: 0,
                payload: "{}".to_owned(),
            },
            revision,
            writer,
        }
    }

    #[test]
    fn a_key_in_flight_is_kept_beyond_the_capacity_until_its_own_write_lands() {
        let mut cache = StateCache::new(1);
        cache.write_in_flight("a".to_owned(), current(1, 7), 1);
        cache.write_in_flight("b".to_owned(), current(1, 8), 1);
        cache.remember("c".to_owned(), None);
        assert_eq!(cache.get("a"), Some(Some(current(1, 7))));
        assert_eq!(cache.get("b"), Some(Some(current(1, 8))));
        // A later batch wrote `a` on top: batch 1 landing does not settle the older state.
        cache.write_in_flight("a".to_owned(), current(2, 9), 2);
        cache.landed("a", 1);
        assert_eq!(cache.get("a"), Some(Some(current(2, 9))));
        cache.landed("a", 2);
        assert_eq!(cache.get("a"), Some(Some(current(2, 9))));
        // Settled entries are bounded: `a` (most recent) evicted `c`.
        assert_eq!(cache.get("c"), None);
    }

    #[test]
    fn an_older_revision_never_replaces_a_newer_one() {
        let mut cache = StateCache::new(8);
        cache.remember("k".to_owned(), Some(current(5, 1)));
        cache.remember("k".to_owned(), Some(current(3, 2)));
        assert_eq!(cache.get("k"), Some(Some(current(5, 1))));
        cache.remember("k".to_owned(), Some(current(6, 3)));
        assert_eq!(cache.get("k"), Some(Some(current(6, 3))));
        cache.clear();
        assert_eq!(cache.get("k"), None);
    }

    #[test]
    fn without_capacity_only_keys_in_flight_are_known() {
        let mut cache = StateCache::new(0);
        cache.remember("k".to_owned(), Some(current(1, 1)));
        assert_eq!(cache.get("k"), None);
        cache.write_in_flight("k".to_owned(), current(2, 2), 1);
        assert_eq!(cache.get("k"), Some(Some(current(2, 2))));
        cache.landed("k", 1);
        assert_eq!(cache.get("k"), None);
    }
}
