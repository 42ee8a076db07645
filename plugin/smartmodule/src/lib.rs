//! The order-status rule inside Fluvio, as a SmartModule filter: a record passes only if it
//! moves its order forward, so a consumer reading through it sees, per order, a strictly
//! advancing sequence of states — the stream itself becomes order-insensitive.
//!
//! The decision is the one the component makes (`converge_order_rule::decide`, the same pure
//! core); the SmartModule keeps each order's latest passed state in memory. On start Fluvio
//! feeds it the topic's last records (look-back, as the consumer configures it), which warm that
//! memory without passing anything.
//!
//! A record is read by converge's own codec (`converge_codec`, with the default field mapping
//! and the record key as the transport key), so the SmartModule refuses exactly the records
//! converge dead-letters, for the same reason: a blank (empty or whitespace-only) or mistyped
//! key, malformed JSON, a bad status, version or timestamp, an oversized or empty body.
//!
//! Records the rule cannot judge — those the codec refuses, id-only ones (no status), a status
//! the rule rejects — pass through unchanged with the reason ([`Verdict::Unjudged`]): a filter
//! has no dead-letter queue, so they are left to the consumer downstream (converge dead-letters
//! them with the reason, or enriches an id-only one) rather than dropped silently. They are never
//! remembered.
//!
//! The memory holds one state per order seen; look-back only reaches as far back as configured,
//! so an order whose last event is older than that may let one stale event pass. That never
//! breaks convergence downstream, where converge decides against the stored state.
//!
//! # Layout
//! - [`Latest`]: the per-order memory and the pass/drop verdict, plain Rust (tested natively).
//! - [`entity_of`]: a record -> the rule's entity, through `converge_codec` with converge's
//!   default field mapping; [`Unjudgeable`] says why a record is not one.
//! - `smartmodule` (wasm32 only): the `filter` and `look_back` entry points.

use std::collections::HashMap;
use std::sync::LazyLock;

use converge_codec::{DecodeError, Decoded, FieldMapping};
use converge_order_rule::{Decision, Entity, decide};

/// What the filter does with a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The event moves its order forward: it passes, and is now the order's latest state.
    Advance,
    /// The event is a duplicate or older than the order's latest state: it is dropped.
    Stale,
    /// The rule cannot judge the record (the reason says why): it passes unchanged.
    Unjudged(String),
}

impl Verdict {
    pub fn passes(&self) -> bool {
        !matches!(self, Verdict::Stale)
    }
}

/// Each order's latest state that passed (or was seen during look-back).
#[derive(Debug, Default)]
pub struct Latest {
    orders: HashMap<String, Entity>,
}

impl Latest {
    pub fn new() -> Self {
        Self::default()
    }

    /// Judges one record and remembers the order's new state if it advances.
    pub fn judge(&mut self, key: Option<&[u8]>, value: &[u8]) -> Verdict {
        let incoming = match entity_of(key, value) {
            Ok(entity) => entity,
            Err(unjudgeable) => return Verdict::Unjudged(unjudgeable.to_string()),
        };
        let current = self.orders.get(&incoming.key).cloned();
        match decide(current, incoming) {
            Decision::Insert(state) | Decision::Update(state) => {
                self.orders.insert(state.key.clone(), state);
                Verdict::Advance
            }
            Decision::Ignore(_) => Verdict::Stale,
            Decision::Reject(reason) => Verdict::Unjudged(reason),
        }
    }

    /// Look-back: takes the record's state into memory if it advances; passes nothing.
    pub fn warm(&mut self, key: Option<&[u8]>, value: &[u8]) {
        let _ = self.judge(key, value);
    }

    /// Orders remembered.
    pub fn len(&self) -> usize {
        self.orders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.orders.is_empty()
    }
}

/// Why a record is not an entity the rule can judge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unjudgeable {
    /// converge would dead-letter it: the codec's reason, word for word.
    Undecodable(DecodeError),
    /// It names its order but not its state; converge enriches it downstream.
    IdOnly {
        /// The order's key.
        key: String,
    },
}

impl std::fmt::Display for Unjudgeable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unjudgeable::Undecodable(error) => error.fmt(f),
            Unjudgeable::IdOnly { .. } => {
                f.write_str("id-only message (no status): enrich it downstream")
            }
        }
    }
}

impl std::error::Error for Unjudgeable {}

/// Reads an event the way converge's default field mapping does ([`FieldMapping::decode`]):
/// `key` (string or integer, not blank; else the record key), `status` (non-empty string,
/// required here), `version` and `timestamp_ms` (non-negative integers, default 0), `payload`
/// (any JSON, compared in canonical form).
pub fn entity_of(record_key: Option<&[u8]>, value: &[u8]) -> Result<Entity, Unjudgeable> {
    static MAPPING: LazyLock<FieldMapping> = LazyLock::new(FieldMapping::default);
    match MAPPING.decode(Some(value), record_key) {
        Ok(Decoded::Event(fields)) => Ok(Entity {
            key: fields.key,
            status: fields.status,
            version: fields.version,
            timestamp_ms: fields.timestamp_ms,
            payload: fields.payload,
        }),
        Ok(Decoded::IdOnly { key }) => Err(Unjudgeable::IdOnly { key }),
        Err(error) => Err(Unjudgeable::Undecodable(error)),
    }
}

#[cfg(target_arch = "wasm32")]
mod smartmodule {
    use std::cell::RefCell;

    use fluvio_smartmodule::{Result, SmartModuleRecord, smartmodule};

    use crate::Latest;

    thread_local! {
        // A SmartModule instance runs on one thread; its memory lives as long as the stream.
        static LATEST: RefCell<Latest> = RefCell::new(Latest::new());
    }

    #[smartmodule(filter)]
    pub fn filter(record: &SmartModuleRecord) -> Result<bool> {
        let key = record.key().map(|key| key.as_ref());
        let value = record.value().as_ref();
        Ok(LATEST.with(|latest| latest.borrow_mut().judge(key, value).passes()))
    }

    #[smartmodule(look_back)]
    pub fn look_back(record: &SmartModuleRecord) -> Result<()> {
        let key = record.key().map(|key| key.as_ref());
        let value = record.value().as_ref();
        LATEST.with(|latest| latest.borrow_mut().warm(key, value));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(key: &str, status: &str, version: u64) -> Vec<u8> {
        format!(
            r#"{{"key":"{key}","status":"{status}","version":{version},"timestamp_ms":{version},"payload":{{"b":1,"a":2}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn only_events_that_move_an_order_forward_pass() {
        let mut latest = Latest::new();
        assert_eq!(
            latest.judge(None, &event("o-1", "paid", 2)),
            Verdict::Advance
        );
        assert_eq!(
            latest.judge(None, &event("o-1", "created", 1)),
            Verdict::Stale
        );
        assert_eq!(latest.judge(None, &event("o-1", "paid", 2)), Verdict::Stale);
        assert_eq!(
            latest.judge(None, &event("o-1", "completed", 3)),
            Verdict::Advance
        );
        assert_eq!(
            latest.judge(None, &event("o-2", "created", 1)),
            Verdict::Advance
        );
        assert_eq!(latest.len(), 2);
    }

    #[test]
    fn records_the_rule_cannot_judge_pass_unchanged_with_a_reason() {
        let mut latest = Latest::new();
        for (record, reason) in [
            (&b"{not json"[..], "malformed JSON"),
            (br#"[1,2]"#, "not an object"),
            (br#"{"key":"o-1"}"#, "id-only"),
            (br#"{"status":"paid"}"#, "missing key"),
            (br#"{"key":" \t","status":"paid"}"#, "empty key"),
            (br#"{"key":"\u3000","status":"paid"}"#, "empty key"),
            (br#"{"key":true,"status":"paid"}"#, "string or an integer"),
            (br#"{"key":"o-1","status":""}"#, "non-empty string"),
            (br#"{"key":"o-1","status":"shipped"}"#, "unknown status"),
            (
                br#"{"key":"o-1","status":"paid","version":-1}"#,
                "non-negative",
            ),
        ] {
            match latest.judge(None, record) {
                Verdict::Unjudged(why) => assert!(why.contains(reason), "{why}"),
                other => panic!("{record:?} judged {other:?}"),
            }
        }
        assert!(latest.is_empty());
    }

    #[test]
    fn bad_keys_are_refused_as_converge_refuses_them() {
        let mut latest = Latest::new();
        for case in converge_codec::BAD_KEY_CORPUS {
            assert_eq!(
                latest.judge(case.transport_key, case.record.as_bytes()),
                Verdict::Unjudged(case.refusal.to_owned()),
                "{}",
                case.case
            );
        }
        assert!(latest.is_empty());
    }

    #[test]
    fn the_record_key_stands_in_for_a_missing_key_field() {
        let mut latest = Latest::new();
        let body = br#"{"status":"paid","version":2}"#;
        assert_eq!(latest.judge(Some(b"o-9"), body), Verdict::Advance);
        assert_eq!(latest.judge(Some(b"o-9"), body), Verdict::Stale);
    }

    #[test]
    fn look_back_warms_memory_so_older_events_are_dropped() {
        let mut latest = Latest::new();
        latest.warm(None, &event("o-1", "completed", 3));
        assert_eq!(latest.judge(None, &event("o-1", "paid", 2)), Verdict::Stale);
        assert_eq!(
            latest.judge(None, &event("o-1", "refunded", 4)),
            Verdict::Advance
        );
    }

    #[test]
    fn payloads_compare_in_canonical_form() {
        let entity = entity_of(None, &event("o-1", "paid", 2)).expect("decodes");
        assert_eq!(entity.payload, r#"{"a":2,"b":1}"#);
    }
}
