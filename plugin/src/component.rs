//! The component glue: exports [`crate::core`] as the `converge:rule` world.

wit_bindgen::generate!({ world: "rule", path: "../wit" });

use crate::core;

/// The rule's conformance vectors travel inside the component, as the custom section converge's
/// gates read before the rule may serve (see converge's ARCHITECTURE.md, "Rule gates").
const VECTORS: &[u8] = include_bytes!("../vectors/order-status.json");

#[unsafe(link_section = "converge:vectors")]
#[used]
static EMBEDDED_VECTORS: [u8; VECTORS.len()] = *include_bytes!("../vectors/order-status.json");

struct OrderStatusRule;

impl Guest for OrderStatusRule {
    fn info() -> RuleInfo {
        RuleInfo {
            name: core::NAME.to_owned(),
            version: core::VERSION.to_owned(),
            statuses: core::STATUSES.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn decide(current: Option<State>, incoming: Event) -> Decision {
        core::decide(current.map(from_wit), from_wit(incoming)).into()
    }

    fn decide_batch(items: Vec<(Option<State>, Event)>) -> Vec<Decision> {
        items
            .into_iter()
            .map(|(current, incoming)| Self::decide(current, incoming))
            .collect()
    }
}

fn from_wit(entity: State) -> core::Entity {
    core::Entity {
        key: entity.key,
        status: entity.status,
        version: entity.version,
        timestamp_ms: entity.timestamp_ms,
        payload: entity.payload,
    }
}

fn to_wit(entity: core::Entity) -> State {
    State {
        key: entity.key,
        status: entity.status,
        version: entity.version,
        timestamp_ms: entity.timestamp_ms,
        payload: entity.payload,
    }
}

impl From<core::Decision> for Decision {
    fn from(decision: core::Decision) -> Self {
        match decision {
            core::Decision::Insert(state) => Decision::Insert(to_wit(state)),
            core::Decision::Update(state) => Decision::Update(to_wit(state)),
            core::Decision::Ignore(reason) => Decision::Ignore(reason),
            core::Decision::Reject(reason) => Decision::Reject(reason),
        }
    }
}

export!(OrderStatusRule);
