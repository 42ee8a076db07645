//! The decode, enrich-join and group stages: messages become events, id-only messages take
//! their fetched entity, and events are grouped by key in delivery order. What cannot become
//! an event is dead-lettered with its reason.

use std::collections::HashMap;
use std::fmt::Display;

use super::batch::Batch;
use super::decode::{Decoded, FieldMapping, decode};
use crate::dead_letter::DeadLetterKind;
use crate::entity::Event;

/// The events of one key in a batch, in delivery order, with the index of their message.
pub(super) struct KeyEvents {
    pub key: String,
    pub events: Vec<(usize, Event)>,
}

impl KeyEvents {
    /// The index of the key's last message in the batch: the position its state is written
    /// with.
    pub fn last_index(&self) -> usize {
        self.events.last().map_or(0, |(index, _)| *index)
    }
}

/// Decodes every message of the batch; lost ranges and undecodable messages are dead-lettered.
pub(super) fn decode_all(batch: &mut Batch, mapping: &FieldMapping) -> Vec<(usize, Decoded)> {
    let mut decoded = Vec::with_capacity(batch.messages.len());
    let mut refused = Vec::new();
    for (index, message) in batch.messages.iter().enumerate() {
        if let Some(lost) = &message.lost {
            refused.push((index, DeadLetterKind::Lost, lost.reason.clone()));
            continue;
        }
        match decode(mapping, message) {
            Ok(event) => decoded.push((index, event)),
            Err(error) => refused.push((index, DeadLetterKind::Undecodable, error.to_string())),
        }
    }
    for (index, kind, reason) in refused {
        batch.dead_letter(index, kind, reason);
    }
    decoded
}

/// Groups the decoded events by key, taking each id-only message's entity from `fetched`;
/// one that was not fetched (or with no enrichment configured) is dead-lettered.
pub(super) fn by_key<E: Display>(
    batch: &mut Batch,
    decoded: Vec<(usize, Decoded)>,
    fetched: &HashMap<String, Result<Event, E>>,
) -> Vec<KeyEvents> {
    let mut groups: Vec<KeyEvents> = Vec::new();
    let mut group_of: HashMap<String, usize> = HashMap::new();
    for (index, decoded) in decoded {
        let event = match decoded {
            Decoded::Event(event) => event,
            Decoded::IdOnly { key } => match fetched.get(&key) {
                Some(Ok(event)) => event.clone(),
                Some(Err(error)) => {
                    batch.dead_letter(index, DeadLetterKind::NotEnriched, error.to_string());
                    continue;
                }
                None => {
                    batch.dead_letter(
                        index,
                        DeadLetterKind::NotEnriched,
                        format!("id-only message for key {key:?} and no enrichment configured"),
                    );
                    continue;
                }
            },
        };
        let group = *group_of.entry(event.key.clone()).or_insert_with(|| {
            groups.push(KeyEvents {
                key: event.key.clone(),
                events: Vec::new(),
            });
            groups.len() - 1
        });
        groups[group].events.push((index, event));
    }
    groups
}
