//! Reading what Redis answers: a state's fields, the compare-and-set's outcome, and an
//! excerpt of what could not be read.

use crate::entity::State;
use crate::store::{
    Current, StoreError, UNREADABLE_EXCERPT_BYTES, Unreadable, Write, WriteOutcome,
};

/// What a load reads: the fields a decision and its compare-and-set need.
pub(super) const FIELDS: [&str; 6] = ["rev", "wid", "status", "version", "timestamp_ms", "payload"];

/// Turns one HMGET answer of [`FIELDS`] into a current state (`None`: the key is absent).
pub(super) fn parse_current(
    key: &str,
    fields: Vec<Option<String>>,
) -> Result<Option<Current>, StoreError> {
    let bad = |field: &'static str| StoreError::MalformedState {
        key: key.to_owned(),
        field,
    };
    let mut fields = fields.into_iter();
    let mut next = |name: &'static str| fields.next().flatten().ok_or_else(|| bad(name));
    // The fence is read here as numbers and compared by the script as text (`wid`) and as a
    // Lua number (`rev`): only the canonical decimal form reads the same both ways. Any other
    // form ("05", "+5", " 5", a writer without a revision) would make every compare-and-set
    // on the key conflict forever, so it is unreadable, and the key is set aside.
    let (revision, writer) = match (next("rev").ok(), next("wid").ok()) {
        (None, None) => return Ok(None),
        (Some(revision), Some(writer)) => (
            canonical_u64(&revision).ok_or_else(|| bad("rev"))?,
            canonical_u64(&writer).ok_or_else(|| bad("wid"))?,
        ),
        // States written before writers were recorded have none: 0, as the script reads it.
        (Some(revision), None) => (canonical_u64(&revision).ok_or_else(|| bad("rev"))?, 0),
        (None, Some(_)) => return Err(bad("rev")),
    };
    let status = next("status")?;
    let version = next("version")?
        .parse::<u64>()
        .map_err(|_| bad("version"))?;
    let timestamp_ms = next("timestamp_ms")?
        .parse::<u64>()
        .map_err(|_| bad("timestamp_ms"))?;
    let payload = next("payload")?;
    Ok(Some(Current {
        state: State {
            key: key.to_owned(),
            status,
            version,
            timestamp_ms,
            payload,
        },
        revision,
        writer,
    }))
}

/// The bytes a write sends: what dominates a pipeline's size.
pub(super) fn write_bytes(write: &Write) -> usize {
    write.key.len()
        + write.state.status.len()
        + write.state.payload.len()
        + write.rule.len()
        + write.position.len()
        + 64
}

/// The length of a bulk string answer (0 for anything else).
pub(super) fn bulk_len(value: &redis::Value) -> usize {
    match value {
        redis::Value::BulkString(bytes) => bytes.len(),
        _ => 0,
    }
}

/// `text` as a u64 if it is written the one way converge writes numbers: decimal digits, no
/// sign, no spaces, no leading zero.
pub(super) fn canonical_u64(text: &str) -> Option<u64> {
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = text.len() > 1 && text.starts_with('0');
    if digits_only && !leading_zero {
        text.parse().ok()
    } else {
        None
    }
}

/// What `inspect` reads: [`FIELDS`], then the rule and the position.
pub(super) const INSPECTED: [&str; 8] = [
    "rev",
    "wid",
    "status",
    "version",
    "timestamp_ms",
    "payload",
    "rule",
    "position",
];

/// The fields of one HMGET answer as text; a field that is not UTF-8 is malformed.
pub(super) fn text_fields(
    key: &str,
    names: &[&'static str],
    raw: &[Option<Vec<u8>>],
) -> Result<Vec<Option<String>>, StoreError> {
    raw.iter()
        .zip(names)
        .map(|(value, &field)| match value {
            None => Ok(None),
            Some(bytes) => {
                String::from_utf8(bytes.clone())
                    .map(Some)
                    .map_err(|_| StoreError::MalformedState {
                        key: key.to_owned(),
                        field,
                    })
            }
        })
        .collect()
}

/// `name=value` for each field present, for an unreadable state's dead letters.
pub(super) fn excerpt_of_fields(names: &[&'static str], raw: &[Option<Vec<u8>>]) -> String {
    let mut text = String::new();
    for (name, value) in names.iter().zip(raw) {
        if let Some(value) = value {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(&format!("{name}={:?}", String::from_utf8_lossy(value)));
        }
    }
    cut_excerpt(text)
}

/// At most [`UNREADABLE_EXCERPT_BYTES`] of `text`, cut on a character boundary.
pub(super) fn cut_excerpt(mut text: String) -> String {
    if text.len() > UNREADABLE_EXCERPT_BYTES {
        let mut end = UNREADABLE_EXCERPT_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// Whether a command's answer is Redis refusing it for the key's type.
pub(super) fn is_wrong_type(value: &redis::Value) -> bool {
    matches!(value, redis::Value::ServerError(error) if error.code() == "WRONGTYPE")
}

/// Turns the compare-and-set's answer into an outcome.
pub(super) fn parse_outcome(key: &str, answer: redis::Value) -> Result<WriteOutcome, StoreError> {
    match answer {
        redis::Value::Int(revision) if revision > 0 => Ok(WriteOutcome::Written {
            revision: revision as u64,
        }),
        redis::Value::Array(items) if items.first() == Some(&redis::Value::Int(-1)) => {
            let raw: Vec<Option<Vec<u8>>> = items
                .into_iter()
                .skip(1)
                .map(|item| redis::from_redis_value(item).map_err(StoreError::Parse))
                .collect::<Result<_, _>>()?;
            match text_fields(key, &FIELDS, &raw).and_then(|fields| parse_current(key, fields)) {
                Ok(current) => Ok(WriteOutcome::Conflict { current }),
                Err(StoreError::MalformedState { field, .. }) => {
                    Err(StoreError::Unreadable(vec![Unreadable {
                        key: key.to_owned(),
                        why: format!("field {field:?} does not parse"),
                        stored: excerpt_of_fields(&FIELDS, &raw),
                    }]))
                }
                Err(error) => Err(error),
            }
        }
        redis::Value::Int(answer) => Err(StoreError::UnexpectedAnswer {
            answer: answer.to_string(),
        }),
        other => Err(StoreError::UnexpectedAnswer {
            answer: format!("{other:?}"),
        }),
    }
}

/// A per-command error inside a pipeline's answer (e.g. `MOVED` during a resharding, `WRONGTYPE`).
pub(super) fn command_error(value: redis::Value) -> Result<redis::Value, StoreError> {
    match value {
        redis::Value::ServerError(error) => Err(StoreError::Redis(error.into())),
        value => Ok(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_canonical_decimal_reads_as_a_fence_number() {
        assert_eq!(canonical_u64("0"), Some(0));
        assert_eq!(canonical_u64("5"), Some(5));
        assert_eq!(canonical_u64("18446744073709551615"), Some(u64::MAX));
        for text in [
            "",
            "05",
            "+5",
            " 5",
            "5 ",
            "-1",
            "0x5",
            "1e3",
            "18446744073709551616",
        ] {
            assert_eq!(canonical_u64(text), None, "{text:?}");
        }
    }
}
