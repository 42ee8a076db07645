//! The shipped order on a fresh instance; but it counts its calls in linear memory, and after
//! 500 of them takes a "fast path" that skips the payload tie-break. The same (current,
//! incoming) then gets another answer than it got before: `converge check` must call it
//! non-deterministic, not blame delivery order.

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
            name: "bad-stateful".to_owned(),
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

static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn decide(current: Option<State>, incoming: Event) -> Decision {
    let calls = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
    let newness = (incoming_rank, incoming.version, incoming.timestamp_ms).cmp(&(
        current_rank,
        current.version,
        current.timestamp_ms,
    ));
    let newness = if calls < 500 {
        newness.then_with(|| incoming.payload.cmp(&current.payload))
    } else {
        newness
    };
    match newness {
        Ordering::Greater => Decision::Update(incoming),
        Ordering::Equal => Decision::Ignore("duplicate".to_owned()),
        Ordering::Less => Decision::Ignore("stale".to_owned()),
    }
}
