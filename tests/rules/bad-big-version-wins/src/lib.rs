//! The shipped order, except that versions of 2^32 and more "come from the new ledger, which is
//! always right": such an event replaces whatever is stored. Among them the last one delivered
//! wins. Only large versions show it.

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
            name: "bad-big-version-wins".to_owned(),
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
    if incoming.version >= 1 << 32 {
        return Decision::Update(incoming);
    }
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
        Ordering::Greater => Decision::Update(incoming),
        Ordering::Equal => Decision::Ignore("duplicate".to_owned()),
        Ordering::Less => Decision::Ignore("stale".to_owned()),
    }
}
