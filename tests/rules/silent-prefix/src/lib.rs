//! Silent prefix: the order-status rule (`plugin/src/core.rs`), with its own vectors, except
//! that it answers `ignore` to every update of a key starting with [`SILENT_PREFIX`] — a
//! prefix the gates' convergence check never draws. So it passes every gate, inserts what
//! arrives first for such a key (an empty state is never ignored), and then drops the key's
//! later events in silence: acknowledged, never stored. Only its share of `ignore`s gives it
//! away, which is what `rule.auto_rollback` watches (tests/it/visible_silence.rs).

wit_bindgen::generate!({ world: "rule", path: "../../../wit" });

use std::cmp::Ordering;

/// Keys whose updates this rule swallows.
const SILENT_PREFIX: &str = "supply-silent-";

const STATUSES: [&str; 4] = ["created", "paid", "completed", "refunded"];

#[unsafe(link_section = "converge:vectors")]
#[used]
static VECTORS: [u8; include_bytes!("../../../../plugin/vectors/order-status.json").len()] =
    *include_bytes!("../../../../plugin/vectors/order-status.json");

struct SilentPrefix;

fn rank(status: &str) -> Option<usize> {
    STATUSES.iter().position(|known| *known == status)
}

impl Guest for SilentPrefix {
    fn info() -> RuleInfo {
        RuleInfo {
            name: "silent-prefix".to_owned(),
            version: "0.1.0".to_owned(),
            statuses: STATUSES.map(String::from).to_vec(),
        }
    }

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
        if current.key != incoming.key {
            return Decision::Reject(format!(
                "stored key {:?} does not match event key {:?}",
                current.key, incoming.key
            ));
        }
        if incoming.key.starts_with(SILENT_PREFIX) {
            return Decision::Ignore("held back".to_owned());
        }
        let Some(current_rank) = rank(&current.status) else {
            return Decision::Update(incoming);
        };
        let newness = (incoming_rank, incoming.version, incoming.timestamp_ms)
            .cmp(&(current_rank, current.version, current.timestamp_ms))
            .then_with(|| incoming.payload.as_bytes().cmp(current.payload.as_bytes()));
        match newness {
            Ordering::Greater => Decision::Update(incoming),
            Ordering::Equal => Decision::Ignore("duplicate".to_owned()),
            Ordering::Less => Decision::Ignore("stale".to_owned()),
        }
    }

    fn decide_batch(items: Vec<(Option<State>, Event)>) -> Vec<Decision> {
        items.into_iter().map(|(c, i)| Self::decide(c, i)).collect()
    }
}

export!(SilentPrefix);
