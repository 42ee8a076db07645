//! Where decided states live: a key -> state map with compare-and-set on a revision.
//!
//! Every stored state carries a revision that increases by one with each write of its key. A
//! write names the revision its decision was based on (0: the key was absent) and succeeds only
//! if that is still the stored revision; otherwise it reports a conflict, and the pipeline
//! reloads the key and decides again. This is what keeps a key from moving backward when two
//! consumers race on it.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use serde::Serialize;

use crate::entity::State;

/// A state as stored, with what the store keeps beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stored {
    pub state: State,
    /// 1 for the first write of the key, +1 for each later one.
    pub revision: u64,
    /// `name@version` of the rule that decided this state.
    pub rule: String,
    /// The source position of the last event folded into this state.
    pub position: String,
}

/// One compare-and-set write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub key: String,
    /// The revision the decision was based on; 0 if the key was absent.
    pub expected_revision: u64,
    pub state: State,
    pub rule: String,
    pub position: String,
}

/// The answer to one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Written {
        revision: u64,
    },
    /// The stored revision was not the expected one; nothing was written.
    Conflict,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store answered something unexpected: {0}")]
    Protocol(String),
}

/// A state store. Loads and writes take whole batches so that a networked store can pipeline
/// them in one round trip.
#[allow(async_fn_in_trait)] // Used through generics only; no `dyn Store`, so no Send bound needed.
pub trait Store {
    /// The stored states of `keys`, in the same order (`None`: absent).
    async fn load(&self, keys: &[String]) -> Result<Vec<Option<Stored>>, StoreError>;

    /// Applies each write atomically and independently; answers in the same order.
    async fn write(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StoreError>;
}

/// The embedded default: states in this process's memory, same semantics as the Redis store.
#[derive(Debug, Default)]
pub struct MemoryStore {
    states: Mutex<HashMap<String, Stored>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every stored state, sorted by key.
    pub fn snapshot(&self) -> Vec<Stored> {
        let states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<Stored> = states.values().cloned().collect();
        all.sort_by(|a, b| a.state.key.cmp(&b.state.key));
        all
    }
}

impl Store for MemoryStore {
    async fn load(&self, keys: &[String]) -> Result<Vec<Option<Stored>>, StoreError> {
        let states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(keys.iter().map(|key| states.get(key).cloned()).collect())
    }

    async fn write(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StoreError> {
        let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(writes
            .iter()
            .map(|write| {
                let stored_revision = states.get(&write.key).map_or(0, |s| s.revision);
                if stored_revision != write.expected_revision {
                    return WriteOutcome::Conflict;
                }
                let revision = stored_revision + 1;
                states.insert(
                    write.key.clone(),
                    Stored {
                        state: write.state.clone(),
                        revision,
                        rule: write.rule.clone(),
                        position: write.position.clone(),
                    },
                );
                WriteOutcome::Written { revision }
            })
            .collect())
    }
}
