//! The decode stage: message -> event, the shared codec ([`converge_codec`]) applied to a
//! source's message, its fields made the rule's [`Event`]. What cannot become an event (a
//! range the source lost, a message that does not decode) is dead-lettered with its reason.
//!
//! The field mapping, key validation and canonical JSON live in the codec so the host and the
//! Fluvio SmartModule refuse the same messages with the same reasons.

pub use converge_codec::{DecodeError, FieldMapping};

use super::batch::Batch;
use crate::dead_letter::DeadLetterKind;
use crate::entity::Event;
use crate::source::Message;

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A full event: a rule can decide on it as it is.
    Event(Event),
    /// Only the key: the entity's latest state must be fetched before deciding.
    IdOnly {
        /// The entity's key.
        key: String,
    },
}

/// Decodes one message by `mapping`; the transport's key stands in for a missing key field.
pub fn decode(mapping: &FieldMapping, message: &Message) -> Result<Decoded, DecodeError> {
    decode_bytes(mapping, message.payload.as_deref(), message.key.as_deref())
}

/// Decodes a body and its transport key (e.g. an order API's answer for a key).
pub fn decode_bytes(
    mapping: &FieldMapping,
    payload: Option<&[u8]>,
    transport_key: Option<&[u8]>,
) -> Result<Decoded, DecodeError> {
    Ok(match mapping.decode(payload, transport_key)? {
        converge_codec::Decoded::Event(fields) => Decoded::Event(Event {
            key: fields.key,
            status: fields.status,
            version: fields.version,
            timestamp_ms: fields.timestamp_ms,
            payload: fields.payload,
        }),
        converge_codec::Decoded::IdOnly { key } => Decoded::IdOnly { key },
    })
}

/// Decodes every message of the batch, each with the index of its message; lost ranges and
/// undecodable messages are dead-lettered.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Position;

    #[test]
    fn a_message_becomes_the_rules_event_and_its_transport_key_counts() {
        let message = Message {
            position: Position::Line { line: 1 },
            key: Some(b"o-9".to_vec()),
            payload: Some(br#"{"status":"paid","version":2,"payload":{"b":1,"a":2}}"#.to_vec()),
            produced_at_ms: None,
            lost: None,
        };
        assert_eq!(
            decode(&FieldMapping::default(), &message),
            Ok(Decoded::Event(Event {
                key: "o-9".to_owned(),
                status: "paid".to_owned(),
                version: 2,
                timestamp_ms: 0,
                payload: r#"{"a":2,"b":1}"#.to_owned(),
            }))
        );
        let tombstone = Message {
            payload: None,
            ..message
        };
        assert_eq!(
            decode(&FieldMapping::default(), &tombstone),
            Err(DecodeError::Tombstone)
        );
    }
}
