//! Huge reason: rejects an event whose status is "poison" with a reason of exactly
//! [`REASON_BYTES`] bytes, and otherwise keeps the observation ranked highest by (version,
//! timestamp, status, payload), which converges. The poison tests serve it to prove that a
//! rule's oversized refusal is cut before it reaches a dead-letter header, and that the
//! partition moves on.

wit_bindgen::generate!({ world: "rule", path: "../../../wit" });

const STATUSES: [&str; 4] = ["created", "paid", "completed", "refunded"];

/// 10 MiB: ten times Kafka's default record limit, so an uncut reason could never be sent.
const REASON_BYTES: usize = 10 << 20;

#[unsafe(link_section = "converge:vectors")]
#[used]
static VECTORS: [u8; include_bytes!("../vectors.json").len()] = *include_bytes!("../vectors.json");

struct HugeReason;

fn rank(entity: &State) -> (u64, u64, &str, &str) {
    (
        entity.version,
        entity.timestamp_ms,
        entity.status.as_str(),
        entity.payload.as_str(),
    )
}

fn huge_reason() -> String {
    const HEAD: &str = "poison: ";
    // One allocation and one fill: the reason must be made well within the call's deadline.
    let mut reason = "x".repeat(REASON_BYTES);
    reason.replace_range(..HEAD.len(), HEAD);
    reason
}

impl Guest for HugeReason {
    fn info() -> RuleInfo {
        RuleInfo {
            name: "huge-reason".to_owned(),
            version: "0.1.0".to_owned(),
            statuses: STATUSES.map(String::from).to_vec(),
        }
    }

    fn decide(current: Option<State>, incoming: Event) -> Decision {
        if incoming.status == "poison" {
            return Decision::Reject(huge_reason());
        }
        if !STATUSES.contains(&incoming.status.as_str()) {
            return Decision::Reject(format!("unknown status {:?}", incoming.status));
        }
        match current {
            None => Decision::Insert(incoming),
            Some(current) if rank(&incoming) > rank(&current) => Decision::Update(incoming),
            Some(_) => Decision::Ignore("stale or duplicate".to_owned()),
        }
    }

    fn decide_batch(items: Vec<(Option<State>, Event)>) -> Vec<Decision> {
        items.into_iter().map(|(c, i)| Self::decide(c, i)).collect()
    }
}

export!(HugeReason);
