//! The shipped order, but keys are "case-insensitive": the state is stored under the key
//! lowercased, so that `Order-7` and `order-7` are one order. The host refuses a state of
//! another key than the event's, so every event of a key with a capital letter fails.

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
            name: "bad-lowercases-keys".to_owned(),
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
    let normalised = State {
        key: incoming.key.to_lowercase(),
        ..incoming.clone()
    };
    let Some(current) = current else {
        return Decision::Insert(normalised);
    };
    let current_rank = rank(&current.status).unwrap_or(0);
    match (
        incoming_rank,
        incoming.version,
        incoming.timestamp_ms,
        incoming.payload.as_str(),
    )
        .cmp(&(
            current_rank,
            current.version,
            current.timestamp_ms,
            current.payload.as_str(),
        )) {
        Ordering::Greater => Decision::Update(normalised),
        Ordering::Equal => Decision::Ignore("duplicate".to_owned()),
        Ordering::Less => Decision::Ignore("stale".to_owned()),
    }
}
