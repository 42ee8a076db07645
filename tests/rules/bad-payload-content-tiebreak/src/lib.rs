//! The shipped order (status, version, timestamp), with full ties broken by the payload's
//! length — "the longer payload carries more detail" — and a payload of the same length taken
//! for a duplicate. Two observations that agree on status, version, timestamp and payload
//! length but not on the payload's content tie, and the first one stored stays.

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
            name: "bad-payload-content-tiebreak".to_owned(),
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
    if incoming.key.is_empty() {
        return Decision::Reject("empty key".to_owned());
    }
    let Some(incoming_rank) = rank(&incoming.status) else {
        return Decision::Reject(format!("unknown status {:?}", incoming.status));
    };
    let Some(current) = current else {
        return Decision::Insert(incoming);
    };
    let Some(current_rank) = rank(&current.status) else {
        return Decision::Update(incoming);
    };
    match (
        incoming_rank,
        incoming.version,
        incoming.timestamp_ms,
        incoming.payload.len(),
    )
        .cmp(&(
            current_rank,
            current.version,
            current.timestamp_ms,
            current.payload.len(),
        )) {
        Ordering::Greater => Decision::Update(incoming),
        Ordering::Equal => Decision::Ignore("duplicate".to_owned()),
        Ordering::Less => Decision::Ignore("stale".to_owned()),
    }
}
