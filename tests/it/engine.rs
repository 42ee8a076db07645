//! The engine contains faulty rules: deadline, memory cap, traps, contract violations and
//! forbidden imports each end in a typed error, and the same rule keeps serving other keys. The
//! WASI a rule may import answers fixed values.

use std::sync::mpsc;
use std::time::Duration;

use converge::entity::{Decision, Event, State};
use converge::rule::{DecideError, Rule};
use converge::rule::{EngineLimits, LoadError, RuleEngine, WasmRule};
use converge_tests::build;
use converge_tests::events::event;

fn limits() -> EngineLimits {
    EngineLimits {
        memory_cap_bytes: 16 << 20,
        deadline: Duration::from_millis(50),
        ..EngineLimits::default()
    }
}

fn faulty_rule() -> WasmRule {
    let engine = RuleEngine::new(limits()).expect("engine starts");
    engine
        .compile_file(&build::rule("faulty"))
        .expect("the faulty rule loads")
        .instance()
}

/// Runs one decision on its own thread, so that a rule the engine failed to stop shows up as a
/// failed test instead of a hung one.
fn decide_guarded(
    mut rule: WasmRule,
    current: Option<State>,
    incoming: Event,
) -> (WasmRule, Result<Decision, DecideError>) {
    let (done, outcome) = mpsc::channel();
    std::thread::spawn(move || {
        let result = rule.decide(current.as_ref(), &incoming);
        let _ = done.send((rule, result));
    });
    outcome
        .recv_timeout(Duration::from_secs(60))
        .expect("the engine must stop a runaway rule")
}

/// After a fault, the same `WasmRule` must still decide correctly for another key.
fn assert_still_serving(rule: WasmRule) {
    let (_, healthy) = decide_guarded(rule, None, event("order-ok", "paid", 1));
    assert_eq!(healthy, Ok(Decision::Insert(event("order-ok", "paid", 1))));
}

#[test]
fn an_endless_loop_hits_the_deadline() {
    let (rule, outcome) = decide_guarded(faulty_rule(), None, event("loop-1", "paid", 1));
    assert_eq!(outcome, Err(DecideError::Deadline(limits().deadline)));
    assert_still_serving(rule);
}

#[test]
fn a_memory_bomb_hits_the_cap() {
    let (rule, outcome) = decide_guarded(faulty_rule(), None, event("bomb-1", "paid", 1));
    match outcome {
        Err(DecideError::MemoryCap { requested, cap }) => {
            assert_eq!(cap, limits().memory_cap_bytes);
            assert!(requested > cap);
        }
        other => panic!("expected the memory cap, got {other:?}"),
    }
    assert_still_serving(rule);
}

#[test]
fn a_trap_is_a_typed_error_and_the_instance_is_replaced() {
    let (rule, outcome) = decide_guarded(faulty_rule(), None, event("trap-1", "paid", 1));
    assert!(
        matches!(&outcome, Err(DecideError::Trap(message)) if !message.to_string().is_empty()),
        "{outcome:?}"
    );
    assert_still_serving(rule);
}

#[test]
fn decisions_that_break_the_contract_are_rule_bugs() {
    let stored = event("bad-insert-1", "created", 1);
    let (rule, outcome) = decide_guarded(
        faulty_rule(),
        Some(stored),
        event("bad-insert-1", "paid", 2),
    );
    assert!(
        matches!(&outcome, Err(DecideError::InvalidDecision(m)) if m.to_string().contains("insert")),
        "{outcome:?}"
    );
    let (rule, outcome) = decide_guarded(rule, None, event("wrong-key-1", "paid", 2));
    assert!(
        matches!(&outcome, Err(DecideError::InvalidDecision(m)) if m.to_string().contains("wrong-key-1-elsewhere")),
        "{outcome:?}"
    );
    assert_still_serving(rule);
}

#[test]
fn a_failing_batch_call_is_reported() {
    let mut rule = faulty_rule();
    let items = vec![
        (None, event("order-1", "paid", 1)),
        (None, event("trap-2", "paid", 1)),
    ];
    assert!(matches!(
        rule.decide_batch(&items),
        Err(DecideError::Trap(_))
    ));
    let healthy = vec![
        (None, event("order-1", "paid", 1)),
        (None, event("order-2", "created", 1)),
    ];
    let decisions = rule.decide_batch(&healthy).expect("healthy batch decides");
    assert_eq!(decisions.len(), 2);
}

#[test]
fn a_rule_importing_sockets_is_refused_at_load() {
    let engine = RuleEngine::new(limits()).expect("engine starts");
    match engine.compile_file(&build::rule("forbidden-import")) {
        Err(error @ LoadError::ForbiddenImports(_)) => {
            let message = error.to_string();
            let LoadError::ForbiddenImports(imports) = error else {
                unreachable!()
            };
            // Only the network is named: the WASI the standard library links in beside it
            // (clocks, random, streams, environment) has stand-ins.
            assert!(
                !imports.is_empty() && imports.iter().all(|i| i.starts_with("wasi:sockets/")),
                "{imports:?}"
            );
            assert!(
                message.contains("wasi:sockets/tcp@") && message.contains("outside the allowlist"),
                "{message}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// What the `wasi-reader` rule read, as its decision's payload.
fn wasi_reading(rule: &mut WasmRule) -> serde_json::Value {
    match rule.decide(None, &event("order-1", "created", 1)) {
        Ok(Decision::Insert(state)) => serde_json::from_str(&state.payload).expect("JSON payload"),
        other => panic!("expected an insert, got {other:?}"),
    }
}

#[test]
fn a_rule_reading_the_clocks_random_and_environment_gets_fixed_values() {
    let engine = RuleEngine::new(limits()).expect("engine starts");
    let compiled = engine
        .compile_file(&build::rule("wasi-reader"))
        .expect("a rule reading clocks, random bytes, environment and files loads");
    let mut first = compiled.instance();
    let once = wasi_reading(&mut first);
    let again = wasi_reading(&mut first);
    // The wall clock stands still at its fixed value, the monotonic clock does not move within a
    // call, the environment is empty and there is no directory to read.
    let wall_ms = u64::try_from(converge::rule::WALL_CLOCK.as_millis()).expect("fits");
    for reading in [&once, &again] {
        assert_eq!(reading["wall_ms"], wall_ms, "{reading}");
        assert_eq!(reading["elapsed_ns"], 0, "{reading}");
        assert_eq!(reading["environment"], 0, "{reading}");
        assert_eq!(reading["directories"], serde_json::Value::Null, "{reading}");
    }
    // Random bytes: the same sequence in every instance, so a fresh instance reads what the
    // first read first (and the first instance's next read goes on in the sequence).
    assert_eq!(once["random"].as_str().map(str::len), Some(32), "{once}");
    let mut second = compiled.instance();
    assert_eq!(wasi_reading(&mut second), once);
    assert_ne!(again["random"], once["random"]);
    let other_engine = RuleEngine::new(limits()).expect("engine starts");
    let mut elsewhere = other_engine
        .compile_file(&build::rule("wasi-reader"))
        .expect("loads")
        .instance();
    assert_eq!(wasi_reading(&mut elsewhere), once);
}

#[test]
fn bytes_that_are_not_a_component_are_refused() {
    let engine = RuleEngine::new(limits()).expect("engine starts");
    // Not WebAssembly at all: said in one line, naming what the file begins with.
    match engine.compile(b"definitely not wasm") {
        Err(error @ LoadError::NotWebAssembly { .. }) => {
            let message = error.to_string();
            assert!(
                message.starts_with("not a WebAssembly component") && !message.contains('\n'),
                "{message}"
            );
        }
        other => panic!("expected NotWebAssembly, got {:?}", other.err()),
    }
    // A core module is WebAssembly, but not a component.
    assert!(matches!(
        engine.compile(b"\0asm\x01\0\0\0"),
        Err(LoadError::Compile(_))
    ));
}

#[test]
fn the_shipped_rule_loads_with_its_info() {
    let engine = RuleEngine::new(EngineLimits::default()).expect("engine starts");
    let compiled = engine
        .compile_file(&build::rule("order-status"))
        .expect("the shipped rule loads");
    assert_eq!(compiled.info().stamp(), "order-status@0.1.0");
    assert_eq!(
        compiled.info().statuses,
        ["created", "paid", "completed", "refunded"]
    );
}
