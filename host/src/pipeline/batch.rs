//! One batch as it moves through the stages: its messages, the stamp of the rule deciding it,
//! the dead letters it has produced so far and its tally. Every stage takes it and adds to it.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use crate::dead_letter::{DeadLetter, DeadLetterKind, cut_reason};
use crate::entity::DecisionKind;
use crate::source::Message;

/// A batch as it moves through the stages.
pub(super) struct Batch {
    /// Numbers the batches this pipeline started (1, 2, …).
    pub seq: u64,
    pub messages: Vec<Message>,
    /// `name@version` of the rule deciding this batch (one rule per batch).
    pub stamp: String,
    /// Every dead letter of the batch; the first `letters_sent` went out with its writes.
    pub letters: Vec<DeadLetter>,
    pub letters_sent: usize,
    pub tally: Tally,
    /// When the batch arrived.
    pub started: Instant,
}

/// What a batch did, counted once per batch into the stats and the metrics.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub decisions: BTreeMap<DecisionKind, u64>,
    /// The `ignore`s by the rule's reason (the reasons as given; the metrics bound them).
    pub ignores: HashMap<String, u64>,
    pub writes: u64,
    pub conflicts: u64,
}

impl Batch {
    pub fn new(seq: u64, messages: Vec<Message>, stamp: String) -> Self {
        Self {
            seq,
            messages,
            stamp,
            letters: Vec::new(),
            letters_sent: 0,
            tally: Tally::default(),
            started: Instant::now(),
        }
    }

    /// Dead-letters the message at `index` with its original key and bytes.
    pub fn dead_letter(&mut self, index: usize, kind: DeadLetterKind, reason: String) {
        let message = &self.messages[index];
        self.letters.push(DeadLetter {
            kind,
            reason: cut_reason(reason),
            position: message.position.clone(),
            key: message.key.clone(),
            bytes: message.payload.clone().unwrap_or_default(),
            rule: self.stamp.clone(),
        });
    }

    /// The dead letters not sent yet.
    pub fn unsent_letters(&self) -> &[DeadLetter] {
        &self.letters[self.letters_sent..]
    }
}
