//! Rule events and source messages built by hand, for tests that drive a rule or a pipeline
//! directly.

use converge::entity::Event;
use converge::source::{Message, Position};

/// An event of `key` at `status` and `version`, with no timestamp and a `null` payload.
pub fn event(key: &str, status: &str, version: u64) -> Event {
    Event {
        key: key.to_owned(),
        status: status.to_owned(),
        version,
        timestamp_ms: 0,
        payload: "null".to_owned(),
    }
}

/// An id-only message (`{"key":…}`, for enrichment to complete) for `key` at line `line`.
pub fn id_only(key: &str, line: u64) -> Message {
    Message {
        position: Position::Line { line },
        key: None,
        payload: Some(format!(r#"{{"key":"{key}"}}"#).into_bytes()),
        produced_at_ms: None,
        lost: None,
    }
}

/// One message per body, positioned at lines 1, 2, ….
pub fn line_messages(bodies: &[Vec<u8>]) -> Vec<Message> {
    bodies
        .iter()
        .enumerate()
        .map(|(index, body)| Message {
            position: Position::Line {
                line: index as u64 + 1,
            },
            key: None,
            payload: Some(body.clone()),
            produced_at_ms: None,
            lost: None,
        })
        .collect()
}

/// Events as JSON-line messages.
pub fn event_messages(events: &[Event]) -> Vec<Message> {
    let bodies: Vec<Vec<u8>> = events
        .iter()
        .map(|event| serde_json::to_vec(event).expect("an event serialises"))
        .collect();
    line_messages(&bodies)
}
