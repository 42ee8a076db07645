//! The rule `{{name}}`: for each key, the newest state wins.
//!
//! converge calls `decide` with what is stored for a key (if anything) and one incoming event;
//! the answer must depend on nothing else. It converges because "newer" is a total order on
//! states: whatever order events arrive in, every key ends on the newest one. Change
//! `STATUSES` and `newness` to your domain, and keep that property: `converge check` tests it.

use std::cmp::Ordering;

wit_bindgen::generate!({ world: "rule", path: "wit" });

/// The statuses this rule stores, oldest first: a later status is newer at equal versions.
const STATUSES: [&str; 3] = ["created", "updated", "deleted"];

struct Rule;

impl Guest for Rule {
    fn info() -> RuleInfo {
        RuleInfo {
            name: "{{name}}".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            statuses: STATUSES.iter().map(|status| (*status).to_owned()).collect(),
        }
    }

    fn decide(current: Option<State>, incoming: Event) -> Decision {
        if incoming.key.is_empty() {
            return Decision::Reject("empty key".to_owned());
        }
        if rank(&incoming.status).is_none() {
            return Decision::Reject(format!("unknown status {:?}", incoming.status));
        }
        let Some(current) = current else {
            return Decision::Insert(incoming);
        };
        if current.key != incoming.key {
            return Decision::Reject("stored key does not match the event's key".to_owned());
        }
        match newness(&incoming, &current) {
            Ordering::Greater => Decision::Update(incoming),
            Ordering::Equal => Decision::Ignore("duplicate".to_owned()),
            Ordering::Less => Decision::Ignore("stale".to_owned()),
        }
    }

    fn decide_batch(items: Vec<(Option<State>, Event)>) -> Vec<Decision> {
        items
            .into_iter()
            .map(|(current, incoming)| Self::decide(current, incoming))
            .collect()
    }
}

/// How `incoming` compares with `current`: by version, then time, then status, then payload,
/// so that two different states are never equal (a tie would let delivery order decide). A
/// stored status this rule does not know (written by another rule) is older than any other.
fn newness(incoming: &Event, current: &State) -> Ordering {
    let key = |entity: &Entity| {
        (
            entity.version,
            entity.timestamp_ms,
            rank(&entity.status),
            entity.payload.as_bytes().to_vec(),
        )
    };
    key(incoming).cmp(&key(current))
}

/// The position of `status` in [`STATUSES`].
fn rank(status: &str) -> Option<usize> {
    STATUSES.iter().position(|known| *known == status)
}

export!(Rule);
