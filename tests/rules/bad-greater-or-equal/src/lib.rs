//! Status first; within a status, an event whose version is at least the stored one wins, "so
//! that a correction re-sent with the same version gets through". Two observations with the same
//! status and version then replace each other: the last one delivered wins.

wit_bindgen::generate!({ world: "rule", path: "../../../wit" });

const STATUSES: [&str; 4] = ["created", "paid", "completed", "refunded"];

/// The position of `status` in the lifecycle, `None` for a status this rule does not know.
fn rank(status: &str) -> Option<usize> {
    STATUSES.iter().position(|known| *known == status)
}

struct Rule;

impl Guest for Rule {
    fn info() -> RuleInfo {
        RuleInfo {
            name: "bad-greater-or-equal".to_owned(),
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
    if incoming.version >= current.version {
        Decision::Update(incoming)
    } else {
        Decision::Ignore("stale".to_owned())
    }
}
