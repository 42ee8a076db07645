//! `converge run`'s convergence audit: every event a source delivers is kept, and after the run
//! each key's stored state is checked to be the rule's fixed point.
//!
//! The audit wraps the source rather than living in the pipeline, so the data path carries no
//! bookkeeping that only a bounded run can afford (memory grows with the input).

use std::collections::HashMap;

use serde::Serialize;

use crate::entity::{Event, State};
use crate::pipeline::{Decoded, FieldMapping, decode};
use crate::rule::Rule;
use crate::source::{Message, Source, SourceError};
use crate::store::{Store, StoreError};

/// A key whose stored state a delivered event would still change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unconverged {
    /// The key.
    pub key: String,
    /// What the store holds for it.
    pub stored: Option<State>,
    /// A delivered event the rule would still apply over the stored state.
    pub superseded_by: Event,
}

/// A source whose every decodable event is kept, to be verified against the store afterwards.
#[derive(Debug)]
pub struct Audit<S> {
    source: S,
    mapping: FieldMapping,
    events: HashMap<String, Vec<Event>>,
}

impl<S: Source> Audit<S> {
    /// Audits what `source` delivers, decoded as the pipeline decodes it (`mapping`).
    pub fn new(source: S, mapping: FieldMapping) -> Self {
        Self {
            source,
            mapping,
            events: HashMap::new(),
        }
    }

    /// Checks, for every key delivered, that the stored state is the rule's fixed point: no
    /// event delivered for the key would change it any more. Returns the keys that are not,
    /// sorted by key.
    pub async fn verify(
        &self,
        rule: &mut impl Rule,
        store: &impl Store,
    ) -> Result<Vec<Unconverged>, StoreError> {
        let mut keys: Vec<String> = self.events.keys().cloned().collect();
        keys.sort();
        let stored = store.load(&keys).await?;
        let mut unconverged = Vec::new();
        for (key, stored) in keys.into_iter().zip(stored) {
            let state = stored.map(|s| s.state);
            let superseded_by = self.events[&key].iter().find(|event| {
                rule.decide(state.as_ref(), event).is_ok_and(|decision| {
                    decision
                        .stored_state()
                        .is_some_and(|s| Some(s) != state.as_ref())
                })
            });
            if let Some(event) = superseded_by {
                unconverged.push(Unconverged {
                    key,
                    stored: state,
                    superseded_by: event.clone(),
                });
            }
        }
        Ok(unconverged)
    }
}

impl<S: Source> Source for Audit<S> {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Message>, SourceError> {
        let batch = self.source.next_batch(max).await?;
        for message in &batch {
            if let Ok(Decoded::Event(event)) = decode(&self.mapping, message) {
                self.events
                    .entry(event.key.clone())
                    .or_default()
                    .push(event);
            }
        }
        Ok(batch)
    }

    async fn ack(&mut self, batch: &[Message]) -> Result<(), SourceError> {
        self.source.ack(batch).await
    }

    async fn hold(&mut self) {
        self.source.hold().await;
    }
}
