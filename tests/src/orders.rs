//! Generated order histories whose final state is known without asking any rule.
//!
//! Each order walks `created -> paid -> completed -> refunded` (stopping at a random step); each
//! step has a higher version and a later timestamp than the one before. The stream holds every
//! step of every order, some of them twice, shuffled. Whatever the delivery order, each order's
//! stored state must end on its last step.

use std::collections::BTreeMap;

use converge::entity::{Event, canonical_json};
use converge_order_rule::core::STATUSES;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// A shuffled, duplicated stream of order events and each order's expected final state.
#[derive(Debug, Clone)]
pub struct OrderStream {
    pub events: Vec<Event>,
    pub expected: BTreeMap<String, Event>,
}

/// `orders` orders with keys `{prefix}{n}`; about `duplicate_percent`% of events appear twice.
pub fn generate(prefix: &str, orders: usize, duplicate_percent: u64, seed: u64) -> OrderStream {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut events = Vec::new();
    let mut expected = BTreeMap::new();
    for n in 0..orders {
        let key = format!("{prefix}{n}");
        let steps = rng.random_range(1..=STATUSES.len());
        let mut timestamp_ms = 1_700_000_000_000 + rng.random_range(0..1_000_000);
        for (step, status) in STATUSES.iter().take(steps).enumerate() {
            timestamp_ms += rng.random_range(1..=60_000);
            let payload = serde_json::json!({"table": n % 40, "step": step, "dishes": n % 7 + 1});
            let event = Event {
                key: key.clone(),
                status: (*status).to_owned(),
                version: step as u64 + 1,
                timestamp_ms,
                payload: canonical_json(&payload),
            };
            if rng.random_range(0..100) < duplicate_percent {
                events.push(event.clone());
            }
            events.push(event.clone());
            expected.insert(key.clone(), event);
        }
    }
    events.shuffle(&mut rng);
    OrderStream { events, expected }
}

impl OrderStream {
    /// The stream as JSON lines, the format `converge run` reads.
    pub fn to_json_lines(&self) -> String {
        self.events
            .iter()
            .map(|event| serde_json::to_string(event).expect("an event serialises") + "\n")
            .collect()
    }
}
