//! Decides exactly like the shipped rule for the key `order-1`, the one its vectors use, and
//! ignores every other key: events of every other order are acknowledged and vanish. Its
//! vectors (packed in the component) all pass; only a check with other keys catches it.

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
            name: "bad-ignores-other-keys".to_owned(),
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

#[unsafe(link_section = "converge:vectors")]
#[used]
static VECTORS: [u8; include_bytes!("../vectors.json").len()] = *include_bytes!("../vectors.json");

fn decide(current: Option<State>, incoming: Event) -> Decision {
    if incoming.key != "order-1" {
        return Decision::Ignore("not tracked".to_owned());
    }
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
