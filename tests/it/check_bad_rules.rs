//! Issue 15, "gates that cannot be gamed": `converge check` and the gates' quick check draw a
//! fresh seed per run, generate several keys and boundary values, draw from the rule's vectors
//! and a sample, and check determinism and silence besides convergence. Proven on rules written
//! against `wit/rule.wit` by someone trying to get plausible-but-wrong rules past them
//! (`tests/rules/bad-*`), and on convergent rules that are not the shipped one (`good-*`).

use std::path::Path;

use converge::rule::{EngineLimits, Gate, GateConfig, Gates, RuleEngine};
use converge_tests::build;
use converge_tests::process::converge;
use serde_json::Value;

fn path(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// `converge check RULE --json ARGS…`: the exit code and the report.
fn check_json(rule: &str, args: &[&str]) -> (Option<i32>, Value) {
    let rule = build::rule(rule);
    let mut all = vec!["check", path(&rule), "--json"];
    all.extend(args);
    let output = converge(&all);
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "{error}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code(), report)
}

/// How many events a reported counterexample shows (the one event asked, for non-determinism).
fn counterexample_events(violation: &Value) -> usize {
    match violation["events"].as_array() {
        Some(events) => events.len(),
        None => {
            assert!(violation["incoming"].is_object(), "{violation:#}");
            1
        }
    }
}

/// Each subtly wrong rule and the violations its counterexample may show. Most have exactly one
/// way to show their bug; a rule whose bug shows as a redelivery as well as a divergence lists
/// both.
const NON_CONVERGENT: &[(&str, &[&str])] = &[
    ("bad-forgets-timestamp", &["diverges"]),
    ("bad-no-payload-tiebreak", &["diverges"]),
    ("bad-greater-or-equal", &["diverges"]),
    ("bad-version-overflow", &["diverges", "moves_backward"]),
    ("bad-u32-version", &["diverges"]),
    ("bad-big-version-wins", &["diverges", "moves_backward"]),
    ("bad-timestamp-zero-newest", &["diverges", "moves_backward"]),
    ("bad-terminal-reopens", &["diverges", "moves_backward"]),
    ("bad-lowercases-keys", &["rule_failed"]),
    (
        "bad-payload-merge",
        &["diverges", "moves_backward", "not_idempotent"],
    ),
    ("bad-stateful", &["non_deterministic"]),
    ("bad-ignores-other-keys", &["silent_ignore"]),
    ("bad-waits-for-created", &["silent_ignore"]),
];

/// Convergent rules other than the shipped one.
const CONVERGENT: &[&str] = &[
    "version-rank",
    "good-fieldwise-max",
    "good-timestamp-first",
    "good-lowest-payload-wins",
];

#[test]
fn supply_check_fails_every_subtly_non_convergent_rule() {
    for (rule, expected) in NON_CONVERGENT {
        let (code, report) = check_json(rule, &[]);
        let seed = &report["property"]["seed"];
        let violation = &report["property"]["violation"];
        assert_eq!(code, Some(1), "{rule} (seed {seed}) passed: {report:#}");
        let property = violation["property"].as_str().unwrap_or_default();
        assert!(
            expected.contains(&property),
            "{rule} (seed {seed}): expected {expected:?}, got {violation:#}"
        );
        let events = counterexample_events(violation);
        assert!(
            (1..=4).contains(&events),
            "{rule} (seed {seed}): {events} events: {violation:#}"
        );
    }
}

#[test]
fn supply_check_passes_convergent_rules() {
    for rule in CONVERGENT {
        // A few fresh seeds each: every run checks other keys and values.
        for _ in 0..2 {
            let (code, report) = check_json(rule, &[]);
            assert_eq!(code, Some(0), "{rule}: {report:#}");
            assert!(report["property"]["seed"].is_u64(), "{report:#}");
        }
    }
}

#[test]
fn supply_check_reports_a_stateful_rule_as_non_deterministic() {
    let (code, report) = check_json("bad-stateful", &[]);
    assert_eq!(code, Some(1), "{report:#}");
    let violation = &report["property"]["violation"];
    assert_eq!(violation["property"], "non_deterministic", "{violation:#}");
    let answers = violation["answers"].as_array().expect("answers");
    let outcome = |answer: &Value| {
        let mut answer = answer.clone();
        answer
            .as_object_mut()
            .expect("an answer")
            .remove("after_decisions");
        answer
    };
    assert!(
        answers.iter().any(|a| outcome(a) != outcome(&answers[0])),
        "two different answers to the same inputs: {violation:#}"
    );

    // A fresh instance, asked through `converge decide`, answers what the report says one did.
    let fresh = answers
        .iter()
        .find(|answer| answer["after_decisions"] == 0)
        .expect("a fresh instance's answer");
    let rule = build::rule("bad-stateful");
    let current = match &violation["current"] {
        Value::Null => "none".to_owned(),
        state => state.to_string(),
    };
    let decided = converge(&[
        "decide",
        "--rule",
        path(&rule),
        "--current",
        &current,
        "--incoming",
        &violation["incoming"].to_string(),
    ]);
    let decision: Value = serde_json::from_slice(&decided.stdout).expect("a decision");
    assert_eq!(decision, fresh["decision"], "{violation:#}");

    // The printed seed finds the same two answers again.
    let seed = report["property"]["seed"].to_string();
    let (code, again) = check_json("bad-stateful", &["--seed", &seed]);
    assert_eq!(code, Some(1));
    assert_eq!(&again["property"]["violation"], violation);
}

#[test]
fn supply_check_catches_a_rule_that_ignores_all_keys_but_one() {
    // converge check: its own vectors (packed, all on key order-1) pass; the check does not.
    let rule = build::rule("bad-ignores-other-keys");
    let output = converge(&["check", path(&rule)]);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("vectors: ok"), "{text}");
    assert!(
        text.contains(
            "counterexample: ignored an event for a key with nothing stored; insert it or reject it"
        ),
        "{text}"
    );

    // The gates: refused at the convergence gate, with the seed that repeats the refusal.
    let gates = Gates::new(
        RuleEngine::new(EngineLimits::default()).expect("engine"),
        GateConfig::default(),
    );
    let bytes = std::fs::read(&rule).expect("the component");
    for _ in 0..3 {
        let refusal = gates
            .admit(&bytes, None)
            .expect_err("a rule that ignores all keys but one is refused");
        assert_eq!(refusal.gate(), Gate::Convergence, "{refusal}");
        let reason = refusal.to_string();
        assert!(reason.contains("check seed "), "{reason}");
        assert!(reason.contains("ignored an event for a key"), "{reason}");
    }
}

#[test]
fn supply_check_counterexample_reproduces_with_the_printed_seed() {
    for rule in ["last-write-wins", "bad-u32-version", "bad-stateful"] {
        let component = build::rule(rule);
        let first = converge(&["check", path(&component)]);
        let text = String::from_utf8_lossy(&first.stdout).into_owned();
        assert_eq!(first.status.code(), Some(1), "{text}");
        let seed = text
            .lines()
            .find_map(|line| line.strip_prefix("seed "))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no seed printed: {text}"))
            .to_owned();
        let counterexample = |text: &str| {
            text.lines()
                .skip_while(|line| !line.starts_with("counterexample:"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert!(!counterexample(&text).is_empty(), "{text}");
        for _ in 0..2 {
            let again = converge(&["check", path(&component), "--seed", &seed]);
            let again = String::from_utf8_lossy(&again.stdout).into_owned();
            assert!(again.contains(&format!("seed {seed} ")), "{again}");
            assert_eq!(counterexample(&again), counterexample(&text), "{rule}");
        }
    }
}

#[test]
fn supply_check_draws_from_a_sample_file_and_refuses_one_that_does_not_decode() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rule = build::rule("order-status");
    let good = dir.path().join("good.jsonl");
    std::fs::write(
        &good,
        concat!(
            r#"{"key":"Zürich/order:42","status":"paid","version":18446744073709551615,"timestamp_ms":1,"payload":{"b":1,"a":2}}"#,
            "\n\n",
            r#"{"key":"only-an-id"}"#,
            "\n",
            r#"{"key":"o-9","status":"refunded","version":256,"payload":null}"#,
            "\n",
        ),
    )
    .expect("sample written");
    let output = converge(&[
        "check",
        path(&rule),
        "--sample",
        path(&good),
        "--histories",
        "20",
    ]);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("sample: 2 events"), "{text}");

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        concat!(
            r#"{"key":"o-1","status":"paid"}"#,
            "\n",
            r#"{"key":"","status":"paid"}"#,
            "\n"
        ),
    )
    .expect("sample written");
    let output = converge(&["check", path(&rule), "--sample", path(&bad)]);
    let message = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{message}");
    assert!(message.contains("line 2"), "{message}");
}
