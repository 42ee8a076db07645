//! T1: the convergence property check, against the compiled component and the native core,
//! and the conformance vectors through the component. Each property the check enforces is
//! shown broken on its own, by a rule that breaks only it, and reported as that violation with
//! a minimal counterexample that replays.

use std::collections::BTreeSet;

use converge::entity::{Decision, Event, RuleInfo, State};
use converge::rule::check::{self, CheckConfig, CheckReport, Corpus, Violation};
use converge::rule::vectors::{self, Expectation, VectorFile};
use converge::rule::{CompiledRule, EngineLimits, RuleEngine, WasmRule};
use converge::rule::{DecideError, Rule};
use converge_tests::{NativeOrderRule, build};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn compiled(name: &str) -> CompiledRule {
    RuleEngine::new(EngineLimits::default())
        .expect("engine starts")
        .compile_file(&build::rule(name))
        .expect("rule loads")
}

fn component(name: &str) -> WasmRule {
    compiled(name).instance()
}

/// The check with a fresh seed and no corpus, as `converge check` runs it by default.
fn check(rules: &dyn check::RuleFactory, config: &CheckConfig) -> CheckReport {
    check::check(rules, config, &Corpus::new())
}

#[test]
fn the_native_core_converges() {
    let report = check(&NativeOrderRule::default, &CheckConfig::default());
    assert!(report.passed(), "{:?}", report.violation);
    assert_eq!(report.histories, CheckConfig::default().histories);
    // Histories of up to 7 events are checked in every order: far more orders than histories.
    assert!(report.orders > 10 * report.histories as u64, "{report:?}");
}

#[test]
fn the_compiled_component_converges() {
    let config = CheckConfig {
        histories: 60,
        ..CheckConfig::default()
    };
    let report = check(&compiled("order-status"), &config);
    assert!(report.passed(), "{:?}", report.violation);
}

#[test]
fn last_write_wins_fails_with_a_minimal_counterexample() {
    let report = check(&compiled("last-write-wins"), &CheckConfig::default());
    assert_diverges(&report, &mut component("last-write-wins"));
}

/// The state `order` of `events` stores through `rule`, from nothing.
fn fold(rule: &mut dyn Rule, events: &[Event], order: &[usize]) -> Option<State> {
    let mut state = None;
    for &index in order {
        if let Some(next) = rule
            .decide(state.as_ref(), &events[index])
            .expect("decides")
            .stored_state()
        {
            state = Some(next.clone());
        }
    }
    state
}

/// `state` after `rule` decides `incoming` over it.
fn apply(rule: &mut dyn Rule, state: &State, incoming: &Event) -> State {
    rule.decide(Some(state), incoming)
        .expect("decides")
        .stored_state()
        .cloned()
        .unwrap_or_else(|| state.clone())
}

fn info(name: &str) -> RuleInfo {
    RuleInfo {
        name: name.to_owned(),
        version: "0.1.0".to_owned(),
        statuses: ["created", "paid", "completed", "refunded"]
            .map(String::from)
            .to_vec(),
    }
}

/// A total order over one key's events: version, then timestamp, status and payload.
fn rank(event: &Event) -> (u64, u64, &str, &str) {
    (
        event.version,
        event.timestamp_ms,
        &event.status,
        &event.payload,
    )
}

/// `event` stored with what a rule remembers beside it, in the payload.
fn remembering(event: &Event, memory: serde_json::Value) -> State {
    State {
        payload: serde_json::json!({ "payload": event.payload, "memory": memory }).to_string(),
        ..event.clone()
    }
}

/// The event a [`remembering`] state holds, and the memory.
fn recall(state: &State) -> (Event, serde_json::Value) {
    let payload: serde_json::Value =
        serde_json::from_str(&state.payload).expect("a remembering payload");
    let event = Event {
        payload: payload["payload"]
            .as_str()
            .expect("the event's payload")
            .to_owned(),
        ..state.clone()
    };
    (event, payload["memory"].clone())
}

/// What a test rule decides, given the event stored and the incoming one.
type Decide = Box<dyn FnMut(Option<&State>, &Event) -> Result<Decision, DecideError>>;

/// A rule written for a test: its info and how it decides. Whatever the decision captures is
/// this instance's alone, as a component's linear memory would be.
struct TestRule {
    info: RuleInfo,
    decide: Decide,
}

impl Rule for TestRule {
    fn info(&self) -> &RuleInfo {
        &self.info
    }

    fn decide(
        &mut self,
        current: Option<&State>,
        incoming: &Event,
    ) -> Result<Decision, DecideError> {
        (self.decide)(current, incoming)
    }
}

/// A test rule under [`info`]`(name)`.
fn test_rule(
    name: &str,
    decide: impl FnMut(Option<&State>, &Event) -> Result<Decision, DecideError> + 'static,
) -> TestRule {
    TestRule {
        info: info(name),
        decide: Box::new(decide),
    }
}

/// A test rule under the shipped rule's info, deciding with a fresh shipped rule at hand.
fn over_shipped(
    mut decide: impl FnMut(
        &mut NativeOrderRule,
        Option<&State>,
        &Event,
    ) -> Result<Decision, DecideError>
    + 'static,
) -> TestRule {
    let mut shipped = NativeOrderRule::default();
    TestRule {
        info: shipped.info().clone(),
        decide: Box::new(move |current, incoming| decide(&mut shipped, current, incoming)),
    }
}

/// Breaks convergence only: the first event stored stays, whatever comes after. Every
/// redelivery is ignored, so it neither moves backward nor minds a duplicate; only the order of
/// delivery decides what is stored.
fn first_write_wins() -> TestRule {
    test_rule("first-write-wins", |current, incoming| {
        Ok(match current {
            None => Decision::Insert(incoming.clone()),
            Some(_) => Decision::Ignore("first write wins".to_owned()),
        })
    })
}

/// Breaks idempotence only: the highest-ranked event wins, and the stored state counts how
/// often it was delivered. Over any set of distinct events every order stores the same state,
/// and an earlier (lower) event delivered again is ignored, but the duplicate of the event just
/// stored changes the count.
fn counts_deliveries() -> TestRule {
    test_rule("counts-deliveries", |current, incoming| {
        let Some(current) = current else {
            return Ok(Decision::Insert(remembering(incoming, 1.into())));
        };
        let (stored, deliveries) = recall(current);
        let deliveries = deliveries.as_u64().expect("a count");
        Ok(if *incoming == stored {
            Decision::Update(remembering(incoming, (deliveries + 1).into()))
        } else if rank(incoming) > rank(&stored) {
            Decision::Update(remembering(incoming, 1.into()))
        } else {
            Decision::Ignore("lower".to_owned())
        })
    })
}

/// Breaks "no regression" only: the highest-ranked event wins and the rule remembers every
/// event it has seen; once it has seen two, an event seen before is taken as a correction and
/// restored (marked so). Over distinct events every order stores the same state; the event just
/// stored, delivered again, changes nothing (it is the one stored, or the only one seen); but an
/// earlier event delivered again moves the key back to it.
fn takes_redelivery_as_correction() -> TestRule {
    test_rule("takes-redelivery-as-correction", |current, incoming| {
        let text = serde_json::to_string(incoming).expect("an event serialises");
        let Some(current) = current else {
            let memory = serde_json::json!({ "seen": [text], "corrected": false });
            return Ok(Decision::Insert(remembering(incoming, memory)));
        };
        let (stored, memory) = recall(current);
        let mut seen: BTreeSet<String> =
            serde_json::from_value(memory["seen"].clone()).expect("the events seen");
        if seen.insert(text) {
            let top = if rank(incoming) > rank(&stored) {
                incoming
            } else {
                &stored
            };
            let memory = serde_json::json!({ "seen": seen, "corrected": false });
            return Ok(Decision::Update(remembering(top, memory)));
        }
        if seen.len() < 2 {
            return Ok(Decision::Ignore("the only event seen".to_owned()));
        }
        let memory = serde_json::json!({ "seen": seen, "corrected": true });
        Ok(Decision::Update(remembering(incoming, memory)))
    })
}

/// Binds the fields of the violation `report` found, `Kind(field, …)` for
/// `Violation::Kind { field, … }`, failing the test if it found none or another kind (`what`
/// names the kind expected).
macro_rules! expect_violation {
    ($report:expr, $kind:ident($($field:ident),*), $what:literal) => {
        let Some(Violation::$kind { $($field),* }) = &$report.violation else {
            panic!(concat!("expected ", $what, ", got {:?}"), $report.violation);
        };
    };
}

/// `report` found a divergence of two events that `rule` folds, in the two orders reported,
/// to the two different states reported.
pub(crate) fn assert_diverges(report: &CheckReport, rule: &mut dyn Rule) {
    expect_violation!(report, Diverges(events, first, second), "a divergence");
    // Shrunk: two different events already show it.
    assert_eq!(events.len(), 2, "{events:?}");
    assert_ne!(events[0], events[1]);
    assert_ne!(first.order, second.order);
    assert_ne!(first.final_state, second.final_state);
    // Each order really ends on what the counterexample claims: replay it.
    for delivery in [first, second] {
        assert_eq!(fold(rule, events, &delivery.order), delivery.final_state);
    }
}

/// A redelivery counterexample replays through `rule`: `order` stores `stored`, and event
/// `redelivered` delivered again over it moves it to the different `moved_to`.
fn assert_redelivery_replays(
    rule: &mut dyn Rule,
    events: &[Event],
    order: &[usize],
    stored: &State,
    redelivered: usize,
    moved_to: &State,
) {
    assert_ne!(stored, moved_to);
    assert_eq!(fold(rule, events, order).as_ref(), Some(stored));
    assert_eq!(&apply(rule, stored, &events[redelivered]), moved_to);
}

/// `report` found an earlier event (not the one just stored) that, delivered again, moved the
/// stored state; replayed through `rule`.
pub(crate) fn assert_moves_backward(report: &CheckReport, rule: &mut dyn Rule) {
    expect_violation!(
        report,
        MovesBackward(events, order, stored, redelivered, moved_to),
        "a move backward"
    );
    // Shrunk: two events, the first delivered again after the second.
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(order.len(), 2, "{order:?}");
    let position = order
        .iter()
        .position(|index| index == redelivered)
        .expect("the redelivered event was delivered");
    assert!(
        position + 1 < order.len(),
        "an earlier event, not the duplicate of the last: {order:?}, #{redelivered}"
    );
    assert_redelivery_replays(rule, events, order, stored, *redelivered, moved_to);
}

/// `report` found that the duplicate of the event just stored changed the state; replayed
/// through `rule`.
pub(crate) fn assert_not_idempotent(report: &CheckReport, rule: &mut dyn Rule) {
    expect_violation!(
        report,
        NotIdempotent(events, order, stored, redelivered, moved_to),
        "a non-idempotent duplicate"
    );
    // Shrunk: one event, delivered twice.
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        order.last(),
        Some(redelivered),
        "the duplicate of the last event"
    );
    assert_redelivery_replays(rule, events, order, stored, *redelivered, moved_to);
}

#[test]
fn a_rule_that_only_depends_on_delivery_order_diverges() {
    let report = check(&first_write_wins, &CheckConfig::default());
    assert_diverges(&report, &mut first_write_wins());
}

/// A rule that lets a stale event replace the stored state moves keys backward; the check must
/// fail it as such — here a rule that converges over distinct events and ignores the duplicate
/// of what it just stored, so only the redelivery of an earlier event can show it.
#[test]
fn a_rule_that_moves_backward_is_caught() {
    let report = check(&takes_redelivery_as_correction, &CheckConfig::default());
    assert!(!report.passed());
    assert_moves_backward(&report, &mut takes_redelivery_as_correction());
}

#[test]
fn a_rule_that_counts_duplicates_is_not_idempotent() {
    let report = check(&counts_deliveries, &CheckConfig::default());
    assert_not_idempotent(&report, &mut counts_deliveries());
}

/// Decides like the shipped rule for one key and ignores every other: events of other keys
/// would vanish. Every divergence, redelivery and duplicate check passes on its key.
fn only_one_key() -> TestRule {
    over_shipped(|shipped, current, incoming| {
        if incoming.key != "order-1" {
            return Ok(Decision::Ignore("not tracked".to_owned()));
        }
        shipped.decide(current, incoming)
    })
}

#[test]
fn a_rule_that_ignores_events_with_nothing_stored_is_caught() {
    let report = check(&only_one_key, &CheckConfig::default());
    expect_violation!(
        report,
        SilentIgnore(events, order, reason),
        "a silent ignore"
    );
    assert_eq!(events.len(), 1, "shrunk to the one event: {events:?}");
    assert_eq!(order, &[0]);
    assert_eq!(reason, "not tracked");
    assert_ne!(events[0].key, "order-1");
    assert!(matches!(
        only_one_key().decide(None, &events[0]),
        Ok(Decision::Ignore(_))
    ));
}

/// The shipped rule until it has decided 300 times; from then on it skips the payload
/// tie-break. Each instance counts for itself, as a component's linear memory would.
fn warms_up() -> TestRule {
    let mut calls: u64 = 0;
    over_shipped(move |shipped, current, incoming| {
        calls += 1;
        let decision = shipped.decide(current, incoming)?;
        match (current, &decision) {
            (Some(current), Decision::Update(new))
                if calls > 300
                    && (&current.status, current.version, current.timestamp_ms)
                        == (&new.status, new.version, new.timestamp_ms) =>
            {
                Ok(Decision::Ignore("duplicate".to_owned()))
            }
            _ => Ok(decision),
        }
    })
}

#[test]
fn a_rule_that_keeps_state_is_reported_as_non_deterministic() {
    let report = check(&warms_up, &CheckConfig::default());
    expect_violation!(
        report,
        NonDeterministic(current, incoming, answers),
        "non-determinism"
    );
    assert!(answers.len() >= 2, "{answers:?}");
    assert!(
        answers.iter().any(|a| a.outcome != answers[0].outcome),
        "two different answers: {answers:?}"
    );
    // The answer claimed of a fresh instance is what a fresh instance answers.
    let fresh = answers
        .iter()
        .find(|answer| answer.after_decisions == 0)
        .expect("a fresh instance's answer");
    let replayed: check::Outcome = warms_up().decide(current.as_ref(), incoming).into();
    assert_eq!(replayed, fresh.outcome);
    // And the same seed finds the same.
    let again = check(
        &warms_up,
        &CheckConfig {
            seed: Some(report.seed),
            ..CheckConfig::default()
        },
    );
    assert_eq!(again.violation, report.violation);
}

#[test]
fn each_run_draws_a_fresh_seed_and_a_seed_repeats_its_run() {
    let first = check(&first_write_wins, &CheckConfig::default());
    let second = check(&first_write_wins, &CheckConfig::default());
    assert_ne!(first.seed, second.seed);
    let repeated = check(
        &first_write_wins,
        &CheckConfig {
            seed: Some(first.seed),
            ..CheckConfig::default()
        },
    );
    assert_eq!(repeated.seed, first.seed);
    assert_eq!(repeated.violation, first.violation);
    assert_eq!(repeated.decisions, first.decisions);
}

const RARE_PAYLOAD: &str = r#"{"only":"in the sample"}"#;

/// Diverges only on one payload, which the generator never makes up: only a corpus (the rule's
/// vectors, a sample of real messages) can bring it.
fn wrong_on_one_payload() -> TestRule {
    over_shipped(|shipped, current, incoming| match current {
        Some(_) if incoming.payload == RARE_PAYLOAD => Ok(Decision::Update(incoming.clone())),
        _ => shipped.decide(current, incoming),
    })
}

#[test]
fn values_from_the_corpus_reach_the_rule() {
    let config = CheckConfig {
        histories: 100,
        ..CheckConfig::default()
    };
    let without = check::check(&wrong_on_one_payload, &config, &Corpus::new());
    assert!(without.passed(), "{:?}", without.violation);
    let mut corpus = Corpus::new();
    corpus.add(&Event {
        key: "o-1".to_owned(),
        status: "paid".to_owned(),
        version: 1,
        timestamp_ms: 1,
        payload: RARE_PAYLOAD.to_owned(),
    });
    let with = check::check(&wrong_on_one_payload, &config, &corpus);
    let violation = with.violation.expect("the sample's payload shows the bug");
    assert!(violation.events().len() <= 4, "{violation}");
    assert!(
        violation.events().iter().any(|e| e.payload == RARE_PAYLOAD),
        "{violation}"
    );
}

#[test]
fn component_and_native_core_decide_alike() {
    let mut wasm = component("order-status");
    let mut native = NativeOrderRule::default();
    let statuses = ["created", "paid", "completed", "refunded", "shipped", ""];
    let mut rng = StdRng::seed_from_u64(7);
    let random_event = |rng: &mut StdRng| Event {
        key: ["order-1", "order-2", ""][rng.random_range(0..3)].to_owned(),
        status: statuses[rng.random_range(0..statuses.len())].to_owned(),
        version: rng.random_range(0..3),
        timestamp_ms: rng.random_range(0..3),
        payload: ["null", "{\"a\":1}", "{\"a\":2}"][rng.random_range(0..3)].to_owned(),
    };
    for _ in 0..5_000 {
        let current = rng.random_bool(0.8).then(|| random_event(&mut rng));
        let incoming = random_event(&mut rng);
        assert_eq!(
            wasm.decide(current.as_ref(), &incoming),
            native.decide(current.as_ref(), &incoming),
            "current {current:?}, incoming {incoming:?}"
        );
    }
}

#[test]
fn shipped_vectors_pass_through_the_component() {
    let path = build::workspace_root().join("plugin/vectors/order-status.json");
    let file = VectorFile::load(&path).expect("vectors load");
    assert!(file.vectors.len() >= 15);
    let failures = vectors::run(&mut component("order-status"), &file.vectors);
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn a_wrong_vector_fails() {
    let path = build::workspace_root().join("plugin/vectors/order-status.json");
    let mut file = VectorFile::load(&path).expect("vectors load");
    let vector = file
        .vectors
        .iter_mut()
        .find(|v| v.expect == Expectation::Ignore)
        .expect("an ignore vector");
    vector.expect = Expectation::Update(vector.incoming.clone());
    let name = vector.name.clone();
    let failures = vectors::run(&mut component("order-status"), &file.vectors);
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].name, name);
}
