//! Support for converge's integration tests and benchmarks.
//!
//! # Layout
//! - [`build`]: builds the rule components and the `converge` binary the tests run; finds the
//!   rule crates by their `[package.metadata.converge] rule` name.
//! - [`NativeOrderRule`]: the order-status rule's pure core behind the host's `Rule` trait, to
//!   compare the compiled component against.
//! - [`orders`]: generated order histories with a known final state per order.
//! - [`convergence`]: [`Convergence`], the one wait for every key on its expected state and a
//!   consumer's offsets at the end of every partition.
//! - [`events`]: rule events and source messages built by hand.
//! - [`config`]: `converge serve` configurations built from the host's config types, written
//!   as TOML.
//! - [`process`]: `converge serve` as a process: started with its log, stopped with SIGTERM.
//! - [`served`]: [`served::Served`], one test's own `serve` over Kafka into Redis: topics,
//!   Redis prefix, group, log directory and settings.
//! - [`prometheus`]: a `serve`'s `/metrics`, parsed; an absent series is an error, not a zero.
//! - [`services`]: the real Redis the tests use, under unique key prefixes; private Redis
//!   servers; free loopback ports.
//! - [`fleet`]: [`fleet::TestFleet`], a rule fleet of one test's own (its keys, the `converge
//!   rule` commands against it), and `serve` configurations that join it.
//! - [`fault_proxy`]: [`fault_proxy::FaultProxy`], a TCP proxy in front of a service that
//!   delays or cuts replies, resets connections and refuses or black-holes them on command.
//! - [`order_api`]: a real HTTP order-detail API on loopback, for enrichment.
//! - [`kafka`]: the real Kafka the tests use: unique topics, producing, reading a topic to its
//!   end, committed offsets.
//! - [`watch`]: [`watch::Watcher`], sampling every key while a test runs and failing it if
//!   any key is ever seen moving backward (in the order-status rule's order).

use std::collections::BTreeMap;

use converge::entity::{Decision, Event, RuleInfo, State};
use converge::rule::{self, DecideError, Rule};
use converge::store::Store;
use converge_order_rule::core;

pub mod build;
pub mod config;
pub mod convergence;
pub mod events;
pub mod fault_proxy;
pub mod fleet;
pub mod kafka;
pub mod order_api;
pub mod orders;
pub mod process;
pub mod prometheus;
pub mod served;
pub mod services;
pub mod watch;

pub use convergence::Convergence;
pub use events::{event_messages, line_messages};

/// The order-status rule called natively, validated like a component's decisions.
#[derive(Debug)]
pub struct NativeOrderRule {
    info: RuleInfo,
}

impl Default for NativeOrderRule {
    fn default() -> Self {
        Self {
            info: RuleInfo {
                name: core::NAME.to_owned(),
                version: core::VERSION.to_owned(),
                statuses: core::STATUSES.iter().map(|s| (*s).to_owned()).collect(),
            },
        }
    }
}

fn to_core(entity: &Event) -> core::Entity {
    core::Entity {
        key: entity.key.clone(),
        status: entity.status.clone(),
        version: entity.version,
        timestamp_ms: entity.timestamp_ms,
        payload: entity.payload.clone(),
    }
}

fn from_core(entity: core::Entity) -> State {
    State {
        key: entity.key,
        status: entity.status,
        version: entity.version,
        timestamp_ms: entity.timestamp_ms,
        payload: entity.payload,
    }
}

impl Rule for NativeOrderRule {
    fn info(&self) -> &RuleInfo {
        &self.info
    }

    fn decide(
        &mut self,
        current: Option<&State>,
        incoming: &Event,
    ) -> Result<Decision, DecideError> {
        let decision = match core::decide(current.map(to_core), to_core(incoming)) {
            core::Decision::Insert(state) => Decision::Insert(from_core(state)),
            core::Decision::Update(state) => Decision::Update(from_core(state)),
            core::Decision::Ignore(reason) => Decision::Ignore(reason),
            core::Decision::Reject(reason) => Decision::Reject(reason),
        };
        rule::validate(&self.info, current, incoming, &decision)?;
        Ok(decision)
    }
}

/// The stored states of `keys`, by key (absent keys left out).
pub async fn stored_states<S: Store>(store: &S, keys: &[String]) -> BTreeMap<String, State> {
    store
        .load(keys)
        .await
        .expect("the store answers")
        .into_iter()
        .flatten()
        .map(|stored| (stored.state.key.clone(), stored.state))
        .collect()
}
