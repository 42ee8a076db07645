//! T1: the convergence property check, against the compiled component and the native core,
//! and the conformance vectors through the component.

use converge::entity::{Decision, Event};
use converge::rule::Rule;
use converge::rule::check::{self, CheckConfig, Violation};
use converge::rule::vectors::{self, Expectation, VectorFile};
use converge::rule::{EngineLimits, RuleEngine, WasmRule};
use converge_tests::{NativeOrderRule, build};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn component(name: &str) -> WasmRule {
    RuleEngine::new(EngineLimits::default())
        .expect("engine starts")
        .compile_file(&build::rule(name))
        .expect("rule loads")
        .instance()
}

#[test]
fn the_native_core_converges() {
    let report = check::check(&mut NativeOrderRule::default(), &CheckConfig::default());
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
    let report = check::check(&mut component("order-status"), &config);
    assert!(report.passed(), "{:?}", report.violation);
}

#[test]
fn last_write_wins_fails_with_a_minimal_counterexample() {
    let report = check::check(&mut component("last-write-wins"), &CheckConfig::default());
    let Some(Violation::Diverges {
        events,
        first,
        second,
    }) = report.violation
    else {
        panic!("expected a divergence, got {:?}", report.violation);
    };
    // Shrunk: two different events already show it.
    assert_eq!(events.len(), 2, "{events:?}");
    assert_ne!(events[0], events[1]);
    assert_ne!(first.order, second.order);
    assert_ne!(first.final_state, second.final_state);
    // Each order really ends on what the counterexample claims: replay it natively.
    let mut rule = component("last-write-wins");
    for delivery in [&first, &second] {
        let mut state = None;
        for &index in &delivery.order {
            if let Some(next) = rule
                .decide(state.as_ref(), &events[index])
                .expect("decides")
                .stored_state()
            {
                state = Some(next.clone());
            }
        }
        assert_eq!(state, delivery.final_state);
    }
}

/// A rule that lets a stale event replace the stored state moves keys backward; the check must
/// fail it.
#[derive(Debug, Default)]
struct FlipFlop {
    native: NativeOrderRule,
}

impl Rule for FlipFlop {
    fn info(&self) -> &converge::entity::RuleInfo {
        self.native.info()
    }

    fn decide(
        &mut self,
        current: Option<&converge::entity::State>,
        incoming: &Event,
    ) -> Result<Decision, converge::rule::DecideError> {
        match self.native.decide(current, incoming)? {
            // An older event replaces the stored state: the key moves backward.
            Decision::Ignore(_) if current.is_some_and(|c| c != incoming) => {
                Ok(Decision::Update(incoming.clone()))
            }
            decision => Ok(decision),
        }
    }
}

#[test]
fn a_rule_that_moves_backward_is_caught() {
    let report = check::check(&mut FlipFlop::default(), &CheckConfig::default());
    assert!(!report.passed());
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
