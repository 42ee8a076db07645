//! Message -> event by field mapping.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::Arc;

use crate::json::{NULL_PAYLOAD, canonical_json};

/// Names of the fields an event is read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FieldMapping {
    /// The entity's identity (default `key`); the transport key stands in when it is absent.
    pub key: String,
    /// The entity's state (default `status`); a message without it is id-only.
    pub status: String,
    /// The entity's version (default `version`).
    pub version: String,
    /// The source's timestamp in milliseconds (default `timestamp_ms`).
    pub timestamp: String,
    /// The entity's payload (default `payload`).
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

/// An event's fields as a rule receives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields {
    /// The entity's identity: not empty, not only whitespace.
    pub key: String,
    /// The entity's state: a non-empty string.
    pub status: String,
    /// The entity's version (0 when absent).
    pub version: u64,
    /// The source's timestamp in milliseconds (0 when absent).
    pub timestamp_ms: u64,
    /// The payload as canonical JSON text ([`NULL_PAYLOAD`] when absent).
    pub payload: String,
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A full event: a rule can decide on it as it is.
    Event(Fields),
    /// Only the key: the entity's latest state must be fetched before deciding.
    IdOnly {
        /// The entity's identity.
        key: String,
    },
}

impl Decoded {
    /// The entity's identity.
    pub fn key(&self) -> &str {
        match self {
            Decoded::Event(fields) => &fields.key,
            Decoded::IdOnly { key } => key,
        }
    }
}

/// Why a message could not be decoded. Every variant dead-letters the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The message has no body (or only ASCII whitespace).
    #[error("tombstone: the message has no body")]
    Tombstone,
    /// The message is larger than [`FieldMapping::max_message_bytes`].
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The message's size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The body is not UTF-8.
    #[error("message is not valid UTF-8: {0}")]
    InvalidUtf8(#[source] core::str::Utf8Error),
    /// The body is not JSON.
    #[error("malformed JSON: {0}")]
    MalformedJson(#[source] JsonError),
    /// The body is JSON but not an object.
    #[error("message is JSON but not an object")]
    NotAnObject,
    /// Neither the key field (named here) nor a transport key.
    #[error("missing key: no field {0:?} and no message key")]
    MissingKey(String),
    /// The key (from the field named here, or the transport key standing in for it) is empty
    /// or only whitespace.
    #[error("empty key in field {0:?}")]
    EmptyKey(String),
    /// A field is present but not of the form it must have.
    #[error("field {field:?} {problem}")]
    BadField {
        /// The field's name (`message key` for the transport key).
        field: String,
        /// What is wrong with it, e.g. `must be a non-negative integer`.
        problem: &'static str,
    },
}

/// The JSON parser's error, shared so a [`DecodeError`] stays cheap to clone; two are equal when
/// they say the same (same category, line and column).
#[derive(Debug, Clone)]
pub struct JsonError(Arc<serde_json::Error>);

impl JsonError {
    /// The parser's error.
    pub fn get(&self) -> &serde_json::Error {
        &self.0
    }
}

impl PartialEq for JsonError {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_string() == other.0.to_string()
    }
}

impl Eq for JsonError {}

impl core::fmt::Display for JsonError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for JsonError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// The key rule: a key that is empty or only whitespace — as [`char::is_whitespace`] has it,
/// Unicode spaces such as U+00A0 and U+3000 included — is refused as [`DecodeError::EmptyKey`]
/// naming `field`. Characters that are invisible but not whitespace (U+200B, U+FEFF) are not
/// refused.
pub fn validate_key(key: &str, field: &str) -> Result<(), DecodeError> {
    if key.trim().is_empty() {
        return Err(DecodeError::EmptyKey(field.to_owned()));
    }
    Ok(())
}

impl FieldMapping {
    /// Decodes one message: its body (`None` for a tombstone) and its transport key, which
    /// stands in for an absent key field.
    pub fn decode(
        &self,
        payload: Option<&[u8]>,
        transport_key: Option<&[u8]>,
    ) -> Result<Decoded, DecodeError> {
        let bytes = payload.ok_or(DecodeError::Tombstone)?;
        if bytes.len() > self.max_message_bytes {
            return Err(DecodeError::TooLarge {
                size: bytes.len(),
                limit: self.max_message_bytes,
            });
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(DecodeError::Tombstone);
        }
        let text = core::str::from_utf8(bytes).map_err(DecodeError::InvalidUtf8)?;
        let value: Value = serde_json::from_str(text)
            .map_err(|e| DecodeError::MalformedJson(JsonError(Arc::new(e))))?;
        let Value::Object(object) = value else {
            return Err(DecodeError::NotAnObject);
        };
        let key = self.key(&object, transport_key)?;
        let Some(status) = object.get(&self.status) else {
            return Ok(Decoded::IdOnly { key });
        };
        let status = match status {
            Value::String(status) if !status.is_empty() => status.clone(),
            _ => return Err(self.bad(&self.status, "must be a non-empty string")),
        };
        Ok(Decoded::Event(Fields {
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
        transport_key: Option<&[u8]>,
    ) -> Result<String, DecodeError> {
        let key = match object.get(&self.key) {
            Some(Value::String(key)) => key.clone(),
            Some(Value::Number(number)) if number.is_u64() || number.is_i64() => number.to_string(),
            Some(_) => return Err(self.bad(&self.key, "must be a string or an integer")),
            None => match transport_key {
                Some(bytes) => String::from_utf8(bytes.to_vec())
                    .map_err(|_| self.bad("message key", "is not valid UTF-8"))?,
                None => return Err(DecodeError::MissingKey(self.key.clone())),
            },
        };
        validate_key(&key, &self.key)?;
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

    fn bad(&self, field: &str, problem: &'static str) -> DecodeError {
        DecodeError::BadField {
            field: field.to_owned(),
            problem,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::BAD_KEY_CORPUS;

    fn decode(body: &[u8]) -> Result<Decoded, DecodeError> {
        FieldMapping::default().decode(Some(body), None)
    }

    #[test]
    fn full_event() {
        let decoded = decode(br#"{"key":"o-1","status":"paid","version":2,"timestamp_ms":7,"payload":{"b":1,"a":2}}"#);
        assert_eq!(
            decoded,
            Ok(Decoded::Event(Fields {
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
        assert_eq!(
            decode(br#"{"key":-7,"status":"paid"}"#).map(|decoded| decoded.key().to_owned()),
            Ok("-7".to_owned())
        );
    }

    #[test]
    fn custom_mapping_and_transport_key() {
        let mapping = FieldMapping {
            key: "order_id".to_owned(),
            status: "state".to_owned(),
            ..FieldMapping::default()
        };
        let Ok(Decoded::Event(fields)) =
            mapping.decode(Some(br#"{"state":"created"}"#), Some(b"o-9"))
        else {
            panic!("expected an event");
        };
        assert_eq!(
            (fields.key.as_str(), fields.status.as_str()),
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
        assert_eq!(
            FieldMapping::default().decode(None, Some(b"o-1")),
            Err(DecodeError::Tombstone)
        );
    }

    #[test]
    fn every_bad_key_is_refused_with_its_reason() {
        for case in BAD_KEY_CORPUS {
            let error = FieldMapping::default()
                .decode(Some(case.record.as_bytes()), case.transport_key)
                .expect_err(case.case);
            assert_eq!(error.to_string(), case.refusal, "{}", case.case);
        }
    }

    #[test]
    fn the_key_rule_is_unicode_whitespace() {
        for blank in [
            "", " ", "\t\r\n", "\u{a0}", "\u{3000}", "\u{2028}", "\u{85}",
        ] {
            assert_eq!(
                validate_key(blank, "id"),
                Err(DecodeError::EmptyKey("id".to_owned())),
                "{blank:?}"
            );
        }
        // Invisible is not blank: these are not whitespace to `char::is_whitespace`.
        for key in ["o-1", " o-1 ", "\u{200b}", "\u{feff}"] {
            assert_eq!(validate_key(key, "id"), Ok(()), "{key:?}");
        }
    }
}
