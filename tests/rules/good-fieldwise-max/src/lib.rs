//! A merge rule: the stored state is the field-wise maximum of every event seen — the latest
//! status in the lifecycle, the highest version, the latest timestamp, the payload that sorts
//! highest — whichever events they came from. A join of independent maxima: convergent,
//! idempotent, and never moving backward, though the state may be no single event.

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
            name: "good-fieldwise-max".to_owned(),
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
    let merged = State {
        key: incoming.key.clone(),
        status: if incoming_rank > current_rank {
            incoming.status.clone()
        } else {
            current.status.clone()
        },
        version: incoming.version.max(current.version),
        timestamp_ms: incoming.timestamp_ms.max(current.timestamp_ms),
        payload: incoming.payload.clone().max(current.payload.clone()),
    };
    let unchanged = merged.status == current.status
        && merged.version == current.version
        && merged.timestamp_ms == current.timestamp_ms
        && merged.payload == current.payload;
    if unchanged {
        Decision::Ignore("nothing newer".to_owned())
    } else {
        Decision::Update(merged)
    }
}
