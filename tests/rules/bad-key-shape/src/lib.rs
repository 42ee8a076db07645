//! The shipped order, except for keys ending in '9': "those orders come from the legacy
//! system, whose status lags behind, so there a newer version wins whatever its status". An
//! event of a lower status but a higher version replaces the stored state, and the stored
//! state's higher status replaces it back: for those keys the final state depends on delivery
//! order. Every other key converges, so only a check that draws such keys sees it.

wit_bindgen::generate!({ world: "rule", path: "../../../wit" });

use std::cmp::Ordering;

const STATUSES: [&str; 4] = ["created", "paid", "completed", "refunded"];

/// The position of `status` in the lifecycle, `None` for a status this rule does not know.
fn rank(status: &str) -> Option<usize> {
    STATUSES.iter().position(|known| *known == status)
}

/// Keys of the legacy system.
fn legacy(key: &str) -> bool {
    key.ends_with('9')
}

struct Rule;

impl Guest for Rule {
    fn info() -> RuleInfo {
        RuleInfo {
            name: "bad-key-shape".to_owned(),
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
    if legacy(&incoming.key) && incoming.version > current.version {
        return Decision::Update(incoming);
    }
    let newness = (incoming_rank, incoming.version, incoming.timestamp_ms)
        .cmp(&(current_rank, current.version, current.timestamp_ms))
        .then_with(|| incoming.payload.as_bytes().cmp(current.payload.as_bytes()));
    match newness {
        Ordering::Greater => Decision::Update(incoming),
        Ordering::Equal => Decision::Ignore("duplicate".to_owned()),
        Ordering::Less => Decision::Ignore("stale".to_owned()),
    }
}
