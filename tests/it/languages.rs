//! Issue 26: the order-status rule written in Python (`plugin/python`, componentize-py) and in
//! JavaScript (`plugin/js`, componentize-js), each built by its own `build.sh`, loads under the
//! engine's default limits (the JavaScript rule with the 128 MiB its README asks for), passes
//! the shipped vectors and `converge check`, decides the sample as the Rust rule does, keeps
//! `u64` versions exact above 2^53; and held-back bad rules ported to Python fail `check` as
//! their Rust originals do.

use std::path::Path;

use converge::entity::Decision;
use converge::rule::{DEFAULT_MEMORY_MIB, EngineLimits, Rule, RuleEngine};
use converge_tests::build::{self, Language};
use converge_tests::events::event;
use converge_tests::process::converge;
use serde_json::Value;

/// What the JavaScript rule's instance needs (`plugin/js/README.md`): SpiderMonkey's heap on a
/// long-lived instance outgrows the default 64 MiB.
const JS_MEMORY_MIB: usize = 128;

/// The per-call deadline the JavaScript rule is given (`plugin/js/README.md`).
const JS_DEADLINE_MS: u64 = 1000;

/// The memory a language's rule runs with: the default, but for JavaScript.
fn engine_memory_mib(language: Language) -> usize {
    match language {
        Language::Python | Language::Go => DEFAULT_MEMORY_MIB,
        Language::JavaScript => JS_MEMORY_MIB,
    }
}

fn path(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// The engine flags a language's rule runs with: the defaults, but for JavaScript's memory and
/// deadline (`plugin/js/README.md`: at ~70 µs an event and a garbage collector that can pause
/// a call, the default 100 ms per call leaves it too little room on a busy machine).
fn engine_args(language: Language) -> Vec<String> {
    let mut args = vec![
        "--memory-mib".to_owned(),
        engine_memory_mib(language).to_string(),
    ];
    if language == Language::JavaScript {
        args.extend(["--deadline-ms".to_owned(), JS_DEADLINE_MS.to_string()]);
    }
    args
}

/// `converge <command> ... --json` on the rule: the exit code and the report.
fn converge_json(args: &[&str]) -> (Option<i32>, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let output = converge(&all);
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "converge {args:?}: {error}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code(), report)
}

fn passes_vectors_and_check(language: Language) {
    let rule = build::language_rule(language);
    let engine = engine_args(language);
    let mut args = vec!["check", path(&rule)];
    args.extend(engine.iter().map(String::as_str));
    let (code, report) = converge_json(&args);
    assert_eq!(code, Some(0), "{language:?}: {report:#}");
    assert_eq!(report["rule"], "order-status@0.1.0", "{report:#}");
    // The vectors found beside the component, all of them.
    let shipped: Value = serde_json::from_slice(
        &std::fs::read(build::workspace_root().join("plugin/vectors/order-status.json"))
            .expect("the shipped vectors"),
    )
    .expect("JSON");
    let shipped = shipped["vectors"].as_array().expect("vectors").len();
    assert_eq!(report["vectors_run"], shipped, "{report:#}");
    assert_eq!(report["vector_failures"], Value::Array(Vec::new()));
    assert!(report["property"]["violation"].is_null(), "{report:#}");
    assert_eq!(report["property"]["histories"], 200, "{report:#}");
}

#[test]
fn lang_python_order_status_passes_its_vectors_and_check() {
    passes_vectors_and_check(Language::Python);
}

#[test]
fn lang_js_order_status_passes_its_vectors_and_check() {
    passes_vectors_and_check(Language::JavaScript);
}

/// `converge run` over the sample: the final states, every key's, with the revision and the
/// position that wrote it, but not the writer id (random per process).
fn sample_states(rule: &Path, engine: &[String]) -> Vec<Value> {
    let mut args = vec![
        "run",
        "--rule",
        path(rule),
        "--input",
        "deploy/sample/orders.jsonl",
    ];
    args.extend(engine.iter().map(String::as_str));
    let (code, report) = converge_json(&args);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["converged"], true, "{report:#}");
    let mut states = report["states"].as_array().expect("states").clone();
    for state in &mut states {
        state.as_object_mut().expect("a state").remove("writer");
    }
    states
}

#[test]
fn lang_rules_decide_the_sample_as_the_rust_rule_does() {
    let rust = sample_states(&build::rule("order-status"), &[]);
    assert_eq!(rust.len(), 800, "the sample's orders");
    for language in [Language::Python, Language::JavaScript] {
        let states = sample_states(&build::language_rule(language), &engine_args(language));
        assert_eq!(states, rust, "{language:?} stored other states than Rust");
    }
}

#[test]
fn lang_rules_compare_u64_versions_exactly_above_2_pow_53() {
    // 2^53 and 2^53 + 1 are one JavaScript Number; and the top of the u64 range.
    let pairs = [(1_u64 << 53, (1_u64 << 53) + 1), (u64::MAX - 1, u64::MAX)];
    for language in [Language::Python, Language::JavaScript] {
        let limits = EngineLimits {
            memory_cap_bytes: engine_memory_mib(language) << 20,
            ..EngineLimits::default()
        };
        let mut rule = RuleEngine::new(limits)
            .expect("engine")
            .compile_file(&build::language_rule(language))
            .expect("the rule loads")
            .instance();
        for (older, newer) in pairs {
            let (older, newer) = (
                event("order-1", "paid", older),
                event("order-1", "paid", newer),
            );
            // One at a time and in one batch: both lift and lower the same way.
            assert_eq!(
                rule.decide(Some(&older), &newer),
                Ok(Decision::Update(newer.clone())),
                "{language:?}"
            );
            let batch = rule
                .decide_batch(&[(Some(older.clone()), newer.clone()), (Some(newer), older)])
                .expect("a batch");
            assert!(
                matches!(&batch[..], [Decision::Update(_), Decision::Ignore(reason)] if reason == "stale"),
                "{language:?}: {batch:?}"
            );
        }
    }
}

/// Held-back bad rules (`tests/rules/bad-*`, see `check_bad_rules.rs`) ported to Python, and
/// the violation `check` must find in each, as in the Rust original.
const PYTHON_PORTS: &[(&str, &str)] = &[
    ("bad-u32-version", "diverges"),
    ("bad-stateful", "non_deterministic"),
];

#[test]
fn lang_python_ports_of_bad_rules_fail_check() {
    for (rule, expected) in PYTHON_PORTS {
        let component = build::language_test_rule(Language::Python, rule);
        let (code, report) = converge_json(&["check", path(&component)]);
        let violation = &report["property"]["violation"];
        assert_eq!(code, Some(1), "{rule} passed: {report:#}");
        assert_eq!(violation["property"], *expected, "{rule}: {violation:#}");
    }
}
