//! The order-status rule as a pure function.

use std::cmp::Ordering;

/// The rule's name, stamped on every state it writes.
pub const NAME: &str = "order-status";

/// The rule's version, stamped with [`NAME`] on every state it writes: the crate's version, or
/// `CONVERGE_RULE_VERSION` when set at build time (to publish a rebuilt rule as a new version
/// without touching its code).
pub const VERSION: &str = match option_env!("CONVERGE_RULE_VERSION") {
    Some(version) => version,
    None => env!("CARGO_PKG_VERSION"),
};

/// The order lifecycle, oldest first. An order never moves to an earlier status.
pub const STATUSES: [&str; 4] = ["created", "paid", "completed", "refunded"];

/// One observation of an order: a stored state or an incoming event (see `wit/rule.wit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entity {
    pub key: String,
    pub status: String,
    pub version: u64,
    pub timestamp_ms: u64,
    pub payload: String,
}

/// The rule's answer, mirroring the WIT `decision` variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Insert(Entity),
    Update(Entity),
    Ignore(String),
    Reject(String),
}

/// Decides whether `incoming` should replace `current` (see the crate docs for the order).
pub fn decide(current: Option<Entity>, incoming: Entity) -> Decision {
    if incoming.key.is_empty() {
        return Decision::Reject("empty key".to_owned());
    }
    let Some(incoming_rank) = rank(&incoming.status) else {
        return Decision::Reject(format!("unknown status {:?}", incoming.status));
    };
    let Some(current) = current else {
        return Decision::Insert(incoming);
    };
    if current.key != incoming.key {
        return Decision::Reject(format!(
            "stored key {:?} does not match event key {:?}",
            current.key, incoming.key
        ));
    }
    // A stored status this rule does not know was written by another rule: any known status
    // is considered newer, so the key moves back under this rule's lifecycle.
    let Some(current_rank) = rank(&current.status) else {
        return Decision::Update(incoming);
    };
    let newness = (incoming_rank, incoming.version, incoming.timestamp_ms)
        .cmp(&(current_rank, current.version, current.timestamp_ms))
        .then_with(|| incoming.payload.as_bytes().cmp(current.payload.as_bytes()));
    match newness {
        Ordering::Greater => Decision::Update(incoming),
        Ordering::Equal => Decision::Ignore("duplicate".to_owned()),
        Ordering::Less => Decision::Ignore("stale".to_owned()),
    }
}

/// The position of `status` in [`STATUSES`], or `None` for an unknown status.
fn rank(status: &str) -> Option<usize> {
    STATUSES.iter().position(|known| *known == status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(status: &str, version: u64, timestamp_ms: u64, payload: &str) -> Entity {
        Entity {
            key: "order-1".to_owned(),
            status: status.to_owned(),
            version,
            timestamp_ms,
            payload: payload.to_owned(),
        }
    }

    #[test]
    fn first_event_of_a_key_is_inserted() {
        let event = order("paid", 1, 10, "{}");
        assert_eq!(decide(None, event.clone()), Decision::Insert(event));
    }

    #[test]
    fn seed_examples() {
        // Stored "paid", incoming "completed": update.
        let completed = order("completed", 0, 0, "{}");
        assert_eq!(
            decide(Some(order("paid", 0, 0, "{}")), completed.clone()),
            Decision::Update(completed)
        );
        // Stored "refunded", incoming "completed": ignore.
        assert_eq!(
            decide(
                Some(order("refunded", 0, 0, "{}")),
                order("completed", 0, 0, "{}")
            ),
            Decision::Ignore("stale".to_owned())
        );
    }

    #[test]
    fn status_outranks_version_and_timestamp() {
        assert_eq!(
            decide(
                Some(order("paid", 1, 1, "{}")),
                order("created", 9, 9, "{}")
            ),
            Decision::Ignore("stale".to_owned())
        );
    }

    #[test]
    fn equal_status_compares_version_then_timestamp() {
        let newer_version = order("paid", 2, 1, "{}");
        assert_eq!(
            decide(Some(order("paid", 1, 5, "{}")), newer_version.clone()),
            Decision::Update(newer_version)
        );
        let later = order("paid", 1, 6, "{}");
        assert_eq!(
            decide(Some(order("paid", 1, 5, "{}")), later.clone()),
            Decision::Update(later)
        );
        assert_eq!(
            decide(Some(order("paid", 1, 6, "{}")), order("paid", 1, 5, "{}")),
            Decision::Ignore("stale".to_owned())
        );
    }

    #[test]
    fn payload_breaks_full_ties_the_same_way_in_both_orders() {
        let a = order("paid", 1, 5, r#"{"table":1}"#);
        let b = order("paid", 1, 5, r#"{"table":2}"#);
        let a_then_b = decide(Some(a.clone()), b.clone());
        let b_then_a = decide(Some(b.clone()), a.clone());
        assert_eq!(a_then_b, Decision::Update(b));
        assert_eq!(b_then_a, Decision::Ignore("stale".to_owned()));
    }

    #[test]
    fn exact_duplicate_is_ignored() {
        let event = order("completed", 3, 7, "{}");
        assert_eq!(
            decide(Some(event.clone()), event),
            Decision::Ignore("duplicate".to_owned())
        );
    }

    #[test]
    fn unknown_status_and_empty_key_are_rejected() {
        assert!(matches!(
            decide(None, order("shipped", 0, 0, "{}")),
            Decision::Reject(reason) if reason.contains("shipped")
        ));
        let mut keyless = order("paid", 0, 0, "{}");
        keyless.key.clear();
        assert!(matches!(decide(None, keyless), Decision::Reject(_)));
    }

    #[test]
    fn mismatched_keys_are_rejected() {
        let mut other = order("paid", 0, 0, "{}");
        other.key = "order-2".to_owned();
        assert!(matches!(
            decide(Some(order("created", 0, 0, "{}")), other),
            Decision::Reject(_)
        ));
    }

    #[test]
    fn a_state_of_an_unknown_status_is_replaced() {
        let paid = order("paid", 0, 0, "{}");
        assert_eq!(
            decide(Some(order("legacy", 9, 9, "{}")), paid.clone()),
            Decision::Update(paid)
        );
    }
}

/// The conformance vectors shipped beside the rule (`vectors/order-status.json`), run against
/// the pure core. The host runs the same file through the compiled component.
#[cfg(test)]
mod conformance {
    use super::*;
    use serde::Deserialize;
    use serde_json::Value;

    #[derive(Deserialize)]
    struct VectorFile {
        vectors: Vec<Vector>,
    }

    #[derive(Deserialize)]
    struct Vector {
        name: String,
        current: Option<Value>,
        incoming: Value,
        expect: Value,
    }

    /// The JSON form of an entity (see the host's `entity` module): payload as a JSON value,
    /// passed to the rule as canonical text.
    fn entity(value: &Value) -> Entity {
        let text = |field: &str| value[field].as_str().unwrap_or_default().to_owned();
        let number = |field: &str| value[field].as_u64().unwrap_or(0);
        Entity {
            key: text("key"),
            status: text("status"),
            version: number("version"),
            timestamp_ms: number("timestamp_ms"),
            payload: value.get("payload").unwrap_or(&Value::Null).to_string(),
        }
    }

    fn expected(expect: &Value) -> Decision {
        match expect {
            Value::String(kind) if kind == "ignore" => Decision::Ignore(String::new()),
            Value::String(kind) if kind == "reject" => Decision::Reject(String::new()),
            Value::Object(map) if map.contains_key("insert") => {
                Decision::Insert(entity(&map["insert"]))
            }
            Value::Object(map) if map.contains_key("update") => {
                Decision::Update(entity(&map["update"]))
            }
            other => panic!("unknown expectation {other}"),
        }
    }

    #[test]
    fn shipped_vectors_pass_natively() {
        let text = include_str!("../vectors/order-status.json");
        let file: VectorFile = serde_json::from_str(text).expect("vectors parse");
        assert!(file.vectors.len() >= 15, "the vector file lost cases");
        for vector in file.vectors {
            let got = decide(
                vector.current.as_ref().map(entity),
                entity(&vector.incoming),
            );
            let ok = match (expected(&vector.expect), &got) {
                (Decision::Ignore(_), Decision::Ignore(_))
                | (Decision::Reject(_), Decision::Reject(_)) => true,
                (want, got) => want == *got,
            };
            assert!(
                ok,
                "{}: expected {}, got {got:?}",
                vector.name, vector.expect
            );
        }
    }
}
