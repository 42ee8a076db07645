//! Status first; within a status, newer means "at least one version newer", computed as
//! `current.version + 1` (which wraps in a release build: written `wrapping_add` here so the
//! rule behaves the same in every profile); equal versions fall back to timestamp and payload.
//! Over a stored version of u64::MAX every event of the status looks newer.

wit_bindgen::generate!({ world: "rule", path: "../../../wit" });

use std::cmp::Ordering;

const STATUSES: [&str; 4] = ["created", "paid", "completed", "refunded"];

/// The position of `status` in the lifecycle, `None` for a status this rule does not know.
fn rank(status: &str) -> Option<usize> {
    STATUSES.iter().position(|known| *known == status)
}

struct Rule;

impl Guest for Rule {
    fn info() -> RuleInfo {
        RuleInfo {
            name: "bad-version-overflow".to_owned(),
            version: "0.1.0".to_owned(),
            statuses: STATUSES.map(String::from).to_vec(),
        }
    }

    fn decide(current: Option<State>, incoming: Event) -> Decision {
        decide(current, incoming)
    }

    fn decide_batch(items: Vec<(Option<State>, Event)>) -> Vec<Decision> {
        items.into_iter().map(|(c, i)| decide(c, i)).collect()
    }
}

export!(Rule);

fn decide(current: Option<State>, incoming: Event) -> Decision {
    let Some(incoming_rank) = rank(&incoming.status) else {
        return Decision::Reject(format!("unknown status {:?}", incoming.status));
    };
    if incoming.key.is_empty() {
        return Decision::Reject("empty key".to_owned());
    }
    let Some(current) = current else {
        return Decision::Insert(incoming);
    };
    let current_rank = rank(&current.status).unwrap_or(0);
    if incoming_rank != current_rank {
        return if incoming_rank > current_rank {
            Decision::Update(incoming)
        } else {
            Decision::Ignore("stale".to_owned())
        };
    }
    if incoming.version >= current.version.wrapping_add(1) {
        return Decision::Update(incoming);
    }
    if incoming.version != current.version {
        return Decision::Ignore("stale".to_owned());
    }
    match (incoming.timestamp_ms, incoming.payload.as_str())
        .cmp(&(current.timestamp_ms, current.payload.as_str()))
    {
        Ordering::Greater => Decision::Update(incoming),
        Ordering::Equal => Decision::Ignore("duplicate".to_owned()),
        Ordering::Less => Decision::Ignore("stale".to_owned()),
    }
}
