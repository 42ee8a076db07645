//! The order-status SmartModule under `fluvio-smartengine`, the engine Fluvio's streaming
//! processor runs SmartModules with: over shuffled, duplicated order events the records it
//! passes strictly advance per order and end on each order's final state; look-back warms its
//! memory so that, after a restart, events older than what the topic already holds are dropped.

use std::collections::BTreeMap;

use converge::entity::Event;
use converge_order_rule::{Decision, Entity, decide};
use converge_tests::{build, orders};
use fluvio_smartengine::{
    DEFAULT_SMARTENGINE_VERSION, Lookback, SmartEngine, SmartModuleChainBuilder,
    SmartModuleChainInstance, SmartModuleConfig,
};
use fluvio_smartmodule::Record;
use fluvio_smartmodule::dataplane::smartmodule::SmartModuleInput;

fn chain(lookback: Option<Lookback>) -> SmartModuleChainInstance {
    let wasm = std::fs::read(build::smartmodule()).expect("the SmartModule is built");
    let mut builder = SmartModuleChainBuilder::default();
    builder.add_smart_module(
        SmartModuleConfig::builder()
            .smartmodule_names(&["converge-order-status".to_owned()])
            .lookback(lookback)
            .build()
            .expect("config"),
        wasm,
    );
    builder
        .initialize(&SmartEngine::new())
        .expect("the engine loads the SmartModule")
}

fn record(event: &Event) -> Record {
    Record::new_key_value(
        event.key.clone(),
        serde_json::to_vec(event).expect("an event serialises"),
    )
}

/// Feeds `events` through `chain` in batches, as a stream would; returns what passed.
fn run(chain: &mut SmartModuleChainInstance, events: &[Event]) -> Vec<Event> {
    let mut passed = Vec::new();
    for batch in events.chunks(100) {
        let input = SmartModuleInput::try_from_records(
            batch.iter().map(record).collect(),
            DEFAULT_SMARTENGINE_VERSION,
        )
        .expect("input");
        let output = chain.process(input).expect("the SmartModule runs");
        assert!(output.error.is_none(), "{:?}", output.error);
        passed.extend(output.successes.iter().map(|record| {
            serde_json::from_slice::<Event>(record.value().as_ref()).expect("an event passed")
        }));
    }
    passed
}

fn entity(event: &Event) -> Entity {
    Entity {
        key: event.key.clone(),
        status: event.status.clone(),
        version: event.version,
        timestamp_ms: event.timestamp_ms,
        payload: event.payload.clone(),
    }
}

/// Checks that, per order, every passed event is newer than the one before (by the rule
/// itself) and the last is the expected final state.
fn assert_advancing_to(passed: &[Event], expected: &BTreeMap<String, Event>) {
    let mut last: BTreeMap<&str, &Event> = BTreeMap::new();
    for event in passed {
        if let Some(previous) = last.get(event.key.as_str()) {
            assert!(
                matches!(
                    decide(Some(entity(previous)), entity(event)),
                    Decision::Update(_)
                ),
                "{} passed after {}: not newer",
                serde_json::to_string(event).unwrap_or_default(),
                serde_json::to_string(previous).unwrap_or_default()
            );
        }
        last.insert(&event.key, event);
    }
    let last: BTreeMap<String, Event> = last
        .into_iter()
        .map(|(key, event)| (key.to_owned(), event.clone()))
        .collect();
    assert_eq!(&last, expected, "the last passed state of every order");
}

#[test]
fn only_advancing_events_pass_and_each_order_ends_on_its_final_state() {
    let stream = orders::generate("order-", 600, 30, 17);
    let mut chain = chain(None);
    let passed = run(&mut chain, &stream.events);
    assert_advancing_to(&passed, &stream.expected);
    assert!(
        passed.len() < stream.events.len(),
        "duplicates and stale events must be dropped"
    );
}

#[test]
fn look_back_warms_the_memory_after_a_restart() {
    let stream = orders::generate("order-", 400, 30, 23);
    let (before, after) = stream.events.split_at(stream.events.len() / 2);

    // The first run passes part of the stream to the topic downstream, then stops.
    let mut first = chain(None);
    let passed_before = run(&mut first, before);

    // The restarted SmartModule is warmed with what the topic holds, then sees the rest.
    let mut restarted = chain(Some(Lookback::Last(passed_before.len() as u64)));
    let history: Vec<Record> = passed_before.iter().map(record).collect();
    let warmed = futures::executor::block_on(restarted.look_back(|lookback| {
        assert_eq!(lookback, Lookback::Last(passed_before.len() as u64));
        let history = history.clone();
        async move { Ok(history) }
    }));
    warmed.expect("look-back runs");
    let passed_after = run(&mut restarted, after);

    // Across the restart the topic still only ever advances, and ends on the final states.
    let all: Vec<Event> = passed_before.iter().chain(&passed_after).cloned().collect();
    assert_advancing_to(&all, &stream.expected);

    // Without look-back the restarted module would have passed stale events again.
    let mut cold = chain(None);
    let passed_cold = run(&mut cold, after);
    assert!(
        passed_after.len() < passed_cold.len(),
        "look-back dropped nothing: {} passed warm, {} cold",
        passed_after.len(),
        passed_cold.len()
    );
}
