//! The values a check draws from beside generated ones: a rule's conformance vectors and
//! sample messages.

use std::collections::BTreeSet;

use crate::entity::Entity;
use crate::rule::vectors::{Expectation, Vector};

/// Values to draw from beside generated ones: a rule's conformance vectors and sample messages.
/// Kept in sorted sets so that a run is the same for the same seed whatever order they came in.
#[derive(Debug, Clone, Default)]
pub struct Corpus {
    pub(super) keys: BTreeSet<String>,
    pub(super) statuses: BTreeSet<String>,
    pub(super) numbers: BTreeSet<u64>,
    pub(super) payloads: BTreeSet<String>,
}

/// How many distinct values of each kind a corpus keeps: a large sample must not make every
/// history a sample history, nor hold the whole file in memory.
const CORPUS_CAP: usize = 4_096;

impl Corpus {
    /// An empty corpus: only generated values.
    pub fn new() -> Self {
        Self::default()
    }

    /// The values of every entity in `vectors` (their stored states, events and expected
    /// states).
    pub fn from_vectors(vectors: &[Vector]) -> Self {
        let mut corpus = Self::new();
        corpus.add_vectors(vectors);
        corpus
    }

    /// Adds the values of every entity in `vectors`.
    pub fn add_vectors(&mut self, vectors: &[Vector]) {
        for vector in vectors {
            if let Some(current) = &vector.current {
                self.add(current);
            }
            self.add(&vector.incoming);
            if let Expectation::Insert(state) | Expectation::Update(state) = &vector.expect {
                self.add(state);
            }
        }
    }

    /// Adds the values of one entity (an empty key, which no event has, is left out).
    pub fn add(&mut self, entity: &Entity) {
        fn put<T: Ord>(set: &mut BTreeSet<T>, value: T) {
            if set.len() < CORPUS_CAP {
                set.insert(value);
            }
        }
        if !entity.key.trim().is_empty() {
            put(&mut self.keys, entity.key.clone());
        }
        if !entity.status.is_empty() {
            put(&mut self.statuses, entity.status.clone());
        }
        put(&mut self.numbers, entity.version);
        put(&mut self.numbers, entity.timestamp_ms);
        put(&mut self.payloads, entity.payload.clone());
    }

    /// Adds a key alone (an id-only message names no more).
    pub fn add_key(&mut self, key: &str) {
        if !key.trim().is_empty() && self.keys.len() < CORPUS_CAP {
            self.keys.insert(key.to_owned());
        }
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
            && self.statuses.is_empty()
            && self.numbers.is_empty()
            && self.payloads.is_empty()
    }
}
