//! One batch in flight: its messages, the stamp of the rule deciding it, the dead letters it
//! has produced so far and its tally. Every stage takes it and adds to it.

use std::collections::BTreeMap;

use crate::dead_letter::{DeadLetter, DeadLetterKind};
use crate::entity::DecisionKind;
use crate::source::Message;

/// A batch as it moves through the stages.
pub(super) struct Batch<'a> {
    pub messages: &'a [Message],
    /// `name@version` of the rule deciding this batch (one rule per batch).
    pub stamp: String,
    pub letters: Vec<DeadLetter>,
    pub tally: Tally,
}

/// What a batch did, counted once per batch into the stats and the metrics.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub decisions: BTreeMap<DecisionKind, u64>,
    pub writes: u64,
    pub conflicts: u64,
}

impl<'a> Batch<'a> {
    pub fn new(messages: &'a [Message], stamp: String) -> Self {
        Self {
            messages,
            stamp,
            letters: Vec::new(),
            tally: Tally::default(),
        }
    }

    /// Dead-letters the message at `index` with its original key and bytes.
    pub fn dead_letter(&mut self, index: usize, kind: DeadLetterKind, reason: String) {
        let message = &self.messages[index];
        self.letters.push(DeadLetter {
            kind,
            reason,
            position: message.position.clone(),
            key: message.key.clone(),
            bytes: message.payload.clone().unwrap_or_default(),
            rule: self.stamp.clone(),
        });
    }
}
