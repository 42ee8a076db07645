//! The group stage: decoded events by key, in delivery order, each id-only message joined with
//! the entity the enrich stage fetched for its key. An id-only message whose entity was not
//! fetched is dead-lettered with the reason.

use std::collections::HashMap;

use super::batch::Batch;
use super::decode::Decoded;
use super::enrich::Fetched;
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

/// Groups the decoded events by key, taking each id-only message's entity from `fetched`;
/// one that was not fetched (or with no enrichment configured) is dead-lettered.
pub(super) fn by_key(
    batch: &mut Batch,
    decoded: Vec<(usize, Decoded)>,
    fetched: &Fetched,
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
