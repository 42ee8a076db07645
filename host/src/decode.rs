//! Message -> event: JSON decoding with a configurable field mapping.
//!
//! A message is a JSON object. Its fields are found by name ([`FieldMapping`]):
//! - `key` (string or integer, required, non-empty): the entity's identity; if the field is
//!   absent, the transport's message key is used;
//! - `status` (string): when absent, the message is *id-only* — it names the entity but not its
//!   state, and must be enriched (the latest state fetched by key) before a rule can decide;
//! - `version`, `timestamp` (non-negative integers, default 0);
//! - `payload` (any JSON, default null), passed to the rule as canonical JSON text.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::entity::{Event, NULL_PAYLOAD, canonical_json};
use crate::message::Message;

/// Names of the fields an event is read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FieldMapping {
    pub key: String,
    pub status: String,
    pub version: String,
    pub timestamp: String,
    pub payload: String,
    /// The largest message accepted, in bytes; a larger one is dead-lettered unread.
    pub max_message_bytes: usize,
}

impl Default for FieldMapping {
    fn default() -> Self {
        Self {
            key: "key".to_owned(),
            status: "status".to_owned(),
            version: "version".to_owned(),
            timestamp: "timestamp_ms".to_owned(),
            payload: "payload".to_owned(),
            max_message_bytes: 1 << 20,
        }
    }
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A full event: a rule can decide on it as it is.
    Event(Event),
    /// Only the key: the entity's latest state must be fetched before deciding.
    IdOnly { key: String },
}

impl Decoded {
    pub fn key(&self) -> &str {
        match self {
            Decoded::Event(event) => &event.key,
            Decoded::IdOnly { key } => key,
        }
    }
}

/// Why a message could not be decoded. Every variant dead-letters the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("tombstone: the message has no body")]
    Tombstone,
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("message is not valid UTF-8: {0}")]
    InvalidUtf8(String),
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("message is JSON but not an object")]
    NotAnObject,
    #[error("missing key: no field {0:?} and no message key")]
    MissingKey(String),
    #[error("empty key in field {0:?}")]
    EmptyKey(String),
    #[error("field {field:?} {problem}")]
    BadField { field: String, problem: String },
}

impl FieldMapping {
    /// Decodes one message.
    pub fn decode(&self, message: &Message) -> Result<Decoded, DecodeError> {
        let bytes = message.payload.as_deref().ok_or(DecodeError::Tombstone)?;
        if bytes.len() > self.max_message_bytes {
            return Err(DecodeError::TooLarge {
                size: bytes.len(),
                limit: self.max_message_bytes,
            });
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(DecodeError::Tombstone);
        }
        let text =
            std::str::from_utf8(bytes).map_err(|e| DecodeError::InvalidUtf8(e.to_string()))?;
        let value: Value =
            serde_json::from_str(text).map_err(|e| DecodeError::MalformedJson(e.to_string()))?;
        let Value::Object(object) = value else {
            return Err(DecodeError::NotAnObject);
        };
        let key = self.key(&object, message.key.as_deref())?;
        let Some(status) = object.get(&self.status) else {
            return Ok(Decoded::IdOnly { key });
        };
        let status = match status {
            Value::String(status) if !status.is_empty() => status.clone(),
            _ => return Err(self.bad(&self.status, "must be a non-empty string")),
        };
        Ok(Decoded::Event(Event {
            key,
            status,
            version: self.counter(&object, &self.version)?,
            timestamp_ms: self.counter(&object, &self.timestamp)?,
            payload: object
                .get(&self.payload)
                .map_or_else(|| NULL_PAYLOAD.to_owned(), canonical_json),
        }))
    }

    fn key(
        &self,
        object: &Map<String, Value>,
        message_key: Option<&[u8]>,
    ) -> Result<String, DecodeError> {
        let key = match object.get(&self.key) {
            Some(Value::String(key)) => key.clone(),
            Some(Value::Number(number)) if number.is_u64() || number.is_i64() => number.to_string(),
            Some(_) => return Err(self.bad(&self.key, "must be a string or an integer")),
            None => match message_key {
                Some(bytes) => String::from_utf8(bytes.to_vec())
                    .map_err(|_| self.bad("message key", "is not valid UTF-8"))?,
                None => return Err(DecodeError::MissingKey(self.key.clone())),
            },
        };
        if key.trim().is_empty() {
            return Err(DecodeError::EmptyKey(self.key.clone()));
        }
        Ok(key)
    }

    fn counter(&self, object: &Map<String, Value>, field: &str) -> Result<u64, DecodeError> {
        match object.get(field) {
            None | Some(Value::Null) => Ok(0),
            Some(Value::Number(number)) => number
                .as_u64()
                .ok_or_else(|| self.bad(field, "must be a non-negative integer")),
            Some(_) => Err(self.bad(field, "must be a non-negative integer")),
        }
    }

    fn bad(&self, field: &str, problem: &str) -> DecodeError {
        DecodeError::BadField {
            field: field.to_owned(),
            problem: problem.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Position;

    fn message(body: &[u8]) -> Message {
        Message {
            position: Position::Line { line: 1 },
            key: None,
            payload: Some(body.to_vec()),
            produced_at_ms: None,
            lost: None,
        }
    }

    fn decode(body: &[u8]) -> Result<Decoded, DecodeError> {
        FieldMapping::default().decode(&message(body))
    }

    #[test]
    fn full_event() {
        let decoded = decode(br#"{"key":"o-1","status":"paid","version":2,"timestamp_ms":7,"payload":{"b":1,"a":2}}"#);
        assert_eq!(
            decoded,
            Ok(Decoded::Event(Event {
                key: "o-1".to_owned(),
                status: "paid".to_owned(),
                version: 2,
                timestamp_ms: 7,
                payload: r#"{"a":2,"b":1}"#.to_owned(),
            }))
        );
    }

    #[test]
    fn integer_keys_and_id_only_messages() {
        assert_eq!(
            decode(br#"{"key":42}"#),
            Ok(Decoded::IdOnly {
                key: "42".to_owned()
            })
        );
    }

    #[test]
    fn custom_mapping_and_transport_key() {
        let mapping = FieldMapping {
            key: "order_id".to_owned(),
            status: "state".to_owned(),
            ..FieldMapping::default()
        };
        let mut keyed = message(br#"{"state":"created"}"#);
        keyed.key = Some(b"o-9".to_vec());
        let Ok(Decoded::Event(event)) = mapping.decode(&keyed) else {
            panic!("expected an event");
        };
        assert_eq!(
            (event.key.as_str(), event.status.as_str()),
            ("o-9", "created")
        );
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let cases: [(&[u8], &str); 9] = [
            (b"{not json", "malformed JSON"),
            (b"\xff\xfe{}", "UTF-8"),
            (b"[1,2]", "not an object"),
            (br#"{"status":"paid"}"#, "missing key"),
            (br#"{"key":"  ","status":"paid"}"#, "empty key"),
            (br#"{"key":"o","status":7}"#, "status"),
            (br#"{"key":"o","status":"paid","version":-1}"#, "version"),
            (
                br#"{"key":"o","status":"paid","timestamp_ms":"soon"}"#,
                "timestamp_ms",
            ),
            (b"   ", "tombstone"),
        ];
        for (body, expected) in cases {
            let error = decode(body).expect_err("must not decode");
            assert!(
                error.to_string().contains(expected),
                "{:?}: {error}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn deep_nesting_and_size_limits() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(
            decode(deep.as_bytes()),
            Err(DecodeError::MalformedJson(_))
        ));
        let big = vec![b' '; (1 << 20) + 1];
        assert!(matches!(decode(&big), Err(DecodeError::TooLarge { .. })));
        let tombstone = Message {
            payload: None,
            ..message(b"")
        };
        assert_eq!(
            FieldMapping::default().decode(&tombstone),
            Err(DecodeError::Tombstone)
        );
    }
}
