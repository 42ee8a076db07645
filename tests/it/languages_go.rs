//! The order-status rule written in Go (`plugin/go`, built by its `build.sh`) is held to what the
//! Rust rule is: the shipped conformance vectors, `converge check` (convergence, redelivery,
//! determinism on fresh and long-lived instances), and the Rust rule's own decisions.

use converge::entity::{Decision, Event, State};
use converge::rule::{EngineLimits, Rule, RuleEngine};
use converge_tests::build::{self, Language};
use converge_tests::process::converge;
use serde_json::Value;

#[test]
fn lang_go_rule_passes_the_vectors_and_check() {
    let rule = build::language_rule(Language::Go);
    let output = converge(&[
        "check",
        rule.to_str().expect("UTF-8 path"),
        "--vectors",
        "plugin/vectors/order-status.json",
        "--json",
    ]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(&text).expect("a JSON report");
    assert_eq!(report["rule"], "order-status@0.1.0", "{report}");
    assert_eq!(report["vectors_run"], 20, "{report}");
    assert_eq!(report["vector_failures"], Value::Array(vec![]), "{report}");
    assert_eq!(report["passed"], true, "{report}");
}

/// Every pair of a small lattice of states and events — each status and one unknown, boundary
/// versions and timestamps, payloads that tie, another key, an empty key — decided by both.
#[test]
fn lang_go_rule_decides_as_the_rust_rule() {
    let engine = RuleEngine::new(EngineLimits::default()).expect("engine starts");
    let mut go = engine
        .compile_file(&build::language_rule(Language::Go))
        .expect("Go rule loads")
        .instance();
    let mut rust = engine
        .compile_file(&build::rule("order-status"))
        .expect("Rust rule loads")
        .instance();
    assert_eq!(go.info(), rust.info());

    let mut entities = Vec::new();
    for key in ["o-1", "o-2", ""] {
        for status in ["created", "paid", "completed", "refunded", "shipped\n\"x\""] {
            for version in [0, 1, u64::MAX] {
                for timestamp_ms in [0, u64::MAX] {
                    for payload in ["null", r#"{"a":1}"#, r#"{"a":2}"#] {
                        entities.push(Event {
                            key: key.to_owned(),
                            status: status.to_owned(),
                            version,
                            timestamp_ms,
                            payload: payload.to_owned(),
                        });
                    }
                }
            }
        }
    }
    let currents: Vec<Option<State>> = std::iter::once(None)
        .chain(
            entities
                .iter()
                .filter(|e| e.key == "o-1")
                .cloned()
                .map(Some),
        )
        .collect();
    let mut compared = 0;
    for current in &currents {
        let items: Vec<(Option<State>, Event)> = entities
            .iter()
            .map(|incoming| (current.clone(), incoming.clone()))
            .collect();
        let by_go: Vec<Decision> = go.decide_batch(&items).expect("Go decides");
        let by_rust: Vec<Decision> = rust.decide_batch(&items).expect("Rust decides");
        for ((pair, go), rust) in items.iter().zip(by_go).zip(by_rust) {
            assert_eq!(go, rust, "on {pair:?}");
            compared += 1;
        }
        // One pair through `decide` as well.
        let (current, incoming) = &items[items.len() / 2];
        assert_eq!(
            go.decide(current.as_ref(), incoming),
            rust.decide(current.as_ref(), incoming)
        );
    }
    assert_eq!(compared, 91 * 270);
}
