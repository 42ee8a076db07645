//! The shipped order, but an update keeps the stored payload's fields beside the event's ("so
//! that no field is lost"): the stored payload depends on which older events happened to be
//! stored first.

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
            name: "bad-payload-merge".to_owned(),
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

/// The two JSON objects' members in one object (the event's last), or the event's payload.
fn merge(stored: &str, incoming: &str) -> String {
    let inner = |text: &str| {
        text.strip_prefix('{')
            .and_then(|rest| rest.strip_suffix('}'))
            .map(str::to_owned)
    };
    match (inner(stored), inner(incoming)) {
        (Some(stored), Some(incoming)) if !stored.is_empty() && !incoming.is_empty() => {
            format!("{{{stored},{incoming}}}")
        }
        _ => incoming.to_owned(),
    }
}

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
    let newness = (incoming_rank, incoming.version, incoming.timestamp_ms)
        .cmp(&(current_rank, current.version, current.timestamp_ms))
        .then_with(|| incoming.payload.cmp(&current.payload));
    match newness {
        Ordering::Greater => Decision::Update(State {
            payload: merge(&current.payload, &incoming.payload),
            ..incoming
        }),
        Ordering::Equal => Decision::Ignore("duplicate".to_owned()),
        Ordering::Less => Decision::Ignore("stale".to_owned()),
    }
}
