//! Version rank: the newest observation is the one with the highest (version, timestamp,
//! status, payload) — status no longer outranks version. Convergent (a maximum over a total
//! order), so it passes every gate, yet it decides otherwise than order-status whenever a later
//! status comes with a lower version: the shadow-mode tests plant exactly that.

wit_bindgen::generate!({ world: "rule", path: "../../../wit" });

const STATUSES: [&str; 4] = ["created", "paid", "completed", "refunded"];

#[unsafe(link_section = "converge:vectors")]
#[used]
static VECTORS: [u8; include_bytes!("../vectors.json").len()] = *include_bytes!("../vectors.json");

struct VersionRank;

fn rank(entity: &State) -> (u64, u64, &str, &str) {
    (
        entity.version,
        entity.timestamp_ms,
        entity.status.as_str(),
        entity.payload.as_str(),
    )
}

impl Guest for VersionRank {
    fn info() -> RuleInfo {
        RuleInfo {
            name: "version-rank".to_owned(),
            version: "0.1.0".to_owned(),
            statuses: STATUSES.map(String::from).to_vec(),
        }
    }

    fn decide(current: Option<State>, incoming: Event) -> Decision {
        if incoming.key.is_empty() || !STATUSES.contains(&incoming.status.as_str()) {
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

export!(VersionRank);
