//! The in-memory store: the embedded default, with the same compare-and-set semantics as Redis.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use super::{Current, Store, StoreError, Stored, Write, WriteOutcome, fence_holds};

/// The embedded default: states in this process's memory, same semantics as the Redis store.
#[derive(Debug, Default)]
pub struct MemoryStore {
    states: Mutex<HashMap<String, Stored>>,
}

impl MemoryStore {
    /// An empty store.
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
    async fn load(&self, keys: &[String]) -> Result<Vec<Option<Current>>, StoreError> {
        let states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(keys
            .iter()
            .map(|key| states.get(key).map(current))
            .collect())
    }

    async fn inspect(&self, keys: &[String]) -> Result<Vec<Option<Stored>>, StoreError> {
        let states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(keys.iter().map(|key| states.get(key).cloned()).collect())
    }

    async fn write(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StoreError> {
        let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(writes
            .iter()
            .map(|write| {
                let stored = states.get(&write.key).map(current);
                if !fence_holds(stored.as_ref(), write) {
                    return WriteOutcome::Conflict { current: stored };
                }
                let revision = write.expected_revision + 1;
                states.insert(
                    write.key.clone(),
                    Stored {
                        state: write.state.clone(),
                        revision,
                        writer: write.writer,
                        rule: write.rule.clone(),
                        position: write.position.clone(),
                    },
                );
                WriteOutcome::Written { revision }
            })
            .collect())
    }
}

fn current(stored: &Stored) -> Current {
    Current {
        state: stored.state.clone(),
        revision: stored.revision,
        writer: stored.writer,
    }
}
