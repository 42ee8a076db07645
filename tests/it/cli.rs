//! The `converge` binary as a user runs it: exit codes, reports, the shipped sample stream.

use std::path::Path;
use std::process::Output;

use converge_tests::build;
use converge_tests::process::{Converge, converge};
use serde_json::Value;

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn path(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

#[test]
fn check_passes_the_shipped_rule_with_its_vectors() {
    let rule = build::rule("order-status");
    let output = converge(&[
        "check",
        path(&rule),
        "--vectors",
        "plugin/vectors/order-status.json",
        "--histories",
        "40",
    ]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("vectors: ok"), "{text}");
    assert!(text.contains("convergence: ok"), "{text}");
}

#[test]
fn check_fails_last_write_wins_with_two_orders_and_their_states() {
    let rule = build::rule("last-write-wins");
    let output = converge(&["check", path(&rule)]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("the final state depends on delivery order"),
        "{text}"
    );
    assert_eq!(text.matches("  delivered [").count(), 2, "{text}");
    assert!(text.contains("#0 {\"key\""), "{text}");

    let json = converge(&["check", path(&rule), "--json"]);
    let report: Value = serde_json::from_slice(&json.stdout).expect("JSON report");
    assert_eq!(report["passed"], Value::Bool(false));
    assert_eq!(report["property"]["violation"]["property"], "diverges");
}

#[test]
fn check_exits_2_when_the_rule_cannot_load() {
    let missing = converge(&["check", "no/such/rule.wasm"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no/such/rule.wasm"));

    let forbidden = build::rule("forbidden-import");
    let refused = converge(&["check", path(&forbidden)]);
    assert_eq!(refused.status.code(), Some(2));
    let message = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(message.contains("wasi:sockets/tcp"), "{message}");

    let usage = converge(&["check"]);
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn decide_prints_the_decision_as_json() {
    let rule = build::rule("order-status");
    let output = converge(&[
        "decide",
        "--rule",
        path(&rule),
        "--current",
        r#"{"key":"o-1","status":"refunded","version":4}"#,
        "--incoming",
        r#"{"key":"o-1","status":"completed","version":3}"#,
    ]);
    assert_eq!(output.status.code(), Some(0));
    let decision: Value = serde_json::from_slice(&output.stdout).expect("JSON decision");
    assert_eq!(decision, serde_json::json!({"ignore": "stale"}));

    let inserted = converge(&[
        "decide",
        "--rule",
        path(&rule),
        "--incoming",
        r#"{"key":"o-1","status":"paid","payload":{"table":3}}"#,
    ]);
    let decision: Value = serde_json::from_slice(&inserted.stdout).expect("JSON decision");
    assert_eq!(decision["insert"]["payload"]["table"], 3);

    let bad = converge(&["decide", "--rule", path(&rule), "--incoming", "{oops"]);
    assert_eq!(bad.status.code(), Some(2));
}

/// The README's first command runs this: every order of the shipped sample must end on the
/// final state its generator recorded, and every planted bad line must be reported.
#[test]
fn run_converges_the_shipped_sample_stream() {
    let rule = build::rule("order-status");
    let sample = "deploy/sample/orders.jsonl";
    let output = converge(&["run", "--rule", path(&rule), "--input", sample, "--json"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(
            build::workspace_root().join("deploy/sample/orders.expected.json"),
        )
        .expect("expected file"),
    )
    .expect("expected JSON");

    let states: Vec<&Value> = report["states"]
        .as_array()
        .expect("states")
        .iter()
        .map(|stored| &stored["state"])
        .collect();
    let expected_states: Vec<&Value> = expected["final_states"]
        .as_array()
        .expect("final states")
        .iter()
        .collect();
    assert_eq!(states, expected_states);
    assert_eq!(report["stats"]["messages"], expected["events"]);

    let letters = report["dead_letters"].as_array().expect("dead letters");
    let bad_lines = expected["bad_lines"].as_array().expect("bad lines");
    assert_eq!(letters.len(), bad_lines.len());
    for (letter, bad) in letters.iter().zip(bad_lines) {
        assert_eq!(letter["position"]["line"]["line"], bad["line"], "{letter}");
        assert_eq!(letter["kind"], bad["kind"], "{letter}");
        let reason = letter["reason"].as_str().expect("reason");
        assert!(
            reason.contains(bad["reason_contains"].as_str().expect("text")),
            "{letter}"
        );
    }
    assert_eq!(report["converged"], Value::Bool(true));

    let text = converge(&["run", "--rule", path(&rule), "--input", sample]);
    let text = stdout(&text);
    assert!(text.contains("converged: every one of 800 keys"), "{text}");
}

/// `converge run < events.jsonl`: no `--rule`, the shipped order-status rule built into the
/// binary, named on the report's first line; it decides as the rule crate's own component does.
#[test]
fn run_without_a_rule_runs_the_shipped_rule_built_in() {
    let sample = build::workspace_root().join("deploy/sample/orders.jsonl");
    let output = Converge::new(&["run"]).stdin(&sample).output();
    let text = stdout(&output);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        text.lines().next(),
        Some("rule order-status@0.1.0 (built in)"),
        "{text}"
    );
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(
            build::workspace_root().join("deploy/sample/orders.expected.json"),
        )
        .expect("expected file"),
    )
    .expect("expected JSON");
    let keys = expected["final_states"]
        .as_array()
        .expect("final states")
        .len();
    assert!(
        text.contains(&format!("converged: every one of {keys} keys")),
        "{text}"
    );

    // The same report, state for state and count for count, as the component built from
    // plugin/ by the tests.
    let built_in = run_json(&["run", "--input", "deploy/sample/orders.jsonl", "--json"]);
    let rule = build::rule("order-status");
    let from_file = run_json(&[
        "run",
        "--rule",
        path(&rule),
        "--input",
        "deploy/sample/orders.jsonl",
        "--json",
    ]);
    assert_eq!(built_in["rule_file"], Value::Null);
    assert_eq!(from_file["rule_file"], path(&rule));
    for field in ["rule", "stats", "dead_letters", "converged"] {
        assert_eq!(built_in[field], from_file[field], "{field}");
    }
    // Each state as stored, but for its writer (a random id per run).
    let states = |report: &Value| -> Vec<(Value, Value)> {
        report["states"]
            .as_array()
            .expect("states")
            .iter()
            .map(|stored| (stored["state"].clone(), stored["rule"].clone()))
            .collect()
    };
    assert!(states(&built_in) == states(&from_file), "the states differ");
    assert_eq!(built_in["stats"]["messages"], expected["events"]);

    let decided = converge(&[
        "decide",
        "--incoming",
        r#"{"key":"o-1","status":"paid","version":2}"#,
    ]);
    assert_eq!(decided.status.code(), Some(0));
    let decision: Value = serde_json::from_slice(&decided.stdout).expect("JSON decision");
    assert_eq!(decision["insert"]["status"], "paid");
}

/// `--rule` overrides the built-in rule, for `run` and `decide`.
#[test]
fn run_with_a_rule_runs_that_rule_not_the_built_in_one() {
    let rule = build::rule("last-write-wins");
    let output = converge(&[
        "run",
        "--rule",
        path(&rule),
        "--input",
        "deploy/sample/orders.jsonl",
    ]);
    let text = stdout(&output);
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("rule last-write-wins@")
            && first.ends_with(&format!("({})", path(&rule))),
        "{text}"
    );
    let report = run_json(&[
        "run",
        "--rule",
        path(&rule),
        "--input",
        "deploy/sample/orders.jsonl",
        "--json",
    ]);
    let rule_stamp = report["rule"].as_str().expect("the rule's stamp");
    assert!(rule_stamp.starts_with("last-write-wins@"), "{rule_stamp}");

    // Last write wins: a stale event replaces what the order-status rule keeps.
    let current = r#"{"key":"o-1","status":"refunded","version":4}"#;
    let incoming = r#"{"key":"o-1","status":"completed","version":3}"#;
    let built_in = converge(&["decide", "--current", current, "--incoming", incoming]);
    let overridden = converge(&[
        "decide",
        "--rule",
        path(&rule),
        "--current",
        current,
        "--incoming",
        incoming,
    ]);
    let built_in: Value = serde_json::from_slice(&built_in.stdout).expect("JSON decision");
    let overridden: Value = serde_json::from_slice(&overridden.stdout).expect("JSON decision");
    assert_eq!(built_in, serde_json::json!({"ignore": "stale"}));
    assert_ne!(overridden, built_in, "{overridden}");
}

/// The JSON report of a `converge run` (whatever its exit code).
fn run_json(args: &[&str]) -> Value {
    let output = converge(args);
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "{args:?}: {error}: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[test]
fn run_reports_a_rule_that_does_not_converge() {
    let stream = converge_tests::orders::generate("order-", 50, 20, 9);
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("orders.jsonl");
    std::fs::write(&input, stream.to_json_lines()).expect("write input");
    let rule = build::rule("last-write-wins");
    let output = converge(&["run", "--rule", path(&rule), "--input", path(&input)]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("NOT converged"), "{text}");
}
