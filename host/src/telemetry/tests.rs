use std::collections::HashMap;
use std::time::Duration;

use super::*;
use crate::entity::{Decision, DecisionKind, RuleInfo};

fn info(version: &str) -> RuleInfo {
    RuleInfo {
        name: "r".to_owned(),
        version: version.to_owned(),
        statuses: vec!["paid".to_owned()],
    }
}

/// What the pipeline does with a version serving in `role`: takes up its meter, counts a
/// decision and an ignore.
fn serve(metrics: &Metrics, rule: &str, role: Role) {
    let ignore = [Decision::Ignore("stale".to_owned())];
    metrics
        .rule_meter(rule, role)
        .record(&KindCounts::of(&ignore), 1.0);
    metrics.record_ignores(rule, &HashMap::from([("stale".to_owned(), 1)]));
}

fn versions_in(text: &str) -> Vec<String> {
    let mut versions: Vec<String> = text
        .lines()
        .filter_map(|line| line.split_once("rule=\"r@")?.1.split_once('"'))
        .map(|(version, _)| version.to_owned())
        .collect();
    versions.sort();
    versions.dedup();
    versions
}

#[test]
fn wedge_series_of_versions_no_longer_served_are_dropped() {
    let metrics = Metrics::new();
    metrics.set_rule(&info("1"));
    serve(&metrics, "r@1", Role::Active);
    for version in ["2", "3", "4"] {
        metrics.set_rule(&info(version));
        serve(&metrics, &format!("r@{version}"), Role::Active);
    }
    let text = metrics.render();
    assert_eq!(versions_in(&text), ["3", "4"], "{text}");
    assert!(
        text.contains("converge_rule_info{rule=\"r@4\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("converge_rule_info{rule=\"r@3\"} 0"),
        "{text}"
    );

    // A shadow is kept beside them; a new shadow replaces it.
    serve(&metrics, "r@4", Role::Active);
    serve(&metrics, "r@5", Role::Shadow);
    assert_eq!(versions_in(&metrics.render()), ["3", "4", "5"]);
    serve(&metrics, "r@4", Role::Active);
    serve(&metrics, "r@6", Role::Shadow);
    assert_eq!(versions_in(&metrics.render()), ["3", "4", "6"]);

    // Promoted: the shadow is active, the active one previous, the one before dropped.
    metrics.set_rule(&info("6"));
    serve(&metrics, "r@6", Role::Active);
    assert_eq!(versions_in(&metrics.render()), ["4", "6"]);
    // A rollback keeps both: the previous comes back, the active becomes the previous.
    metrics.set_rule(&info("4"));
    serve(&metrics, "r@4", Role::Active);
    let text = metrics.render();
    assert_eq!(versions_in(&text), ["4", "6"], "{text}");
    assert!(
        text.contains(
            "converge_rule_decisions_total{rule=\"r@4\",role=\"active\",decision=\"ignore\"} 4"
        ),
        "a version kept keeps its counts: {text}"
    );
}

/// Every series converge exports, as a fresh registry renders it once each is recorded with
/// fixed values: names, help texts, types, label names and values are API (the dashboard, the
/// alerts), so any change to one shows here as a diff against `exposition.txt`.
fn exposition_sample() -> String {
    let metrics = Metrics::new();
    let took = Duration::from_millis(3);
    metrics.set_rule(&info("1"));
    metrics.record_decisions(DecisionKind::Update, 2);
    metrics.record_dead_letter(crate::dead_letter::DeadLetterKind::Rejected.as_str());
    metrics.record_batch(10, 4, 1, took);
    metrics.record_stage(Stage::Fold, took);
    metrics.record_cache(3, 1);
    metrics.set_in_flight(2);
    metrics.record_unreadable_state();
    metrics.record_rebalance();
    metrics.record_store_call(Operation::Load, took);
    metrics.record_enrichment(5, took);
    metrics.record_stored_latency(40);
    metrics.record_unavailable(Service::Store, Operation::Write);
    metrics.set_consumer_lag("orders", 0, 7);
    metrics.record_source_gap("orders", 1);
    metrics.record_source_reconnect("orders", 1);
    metrics.record_swap(Role::Active, SwapResult::Applied, None);
    metrics.record_swap(Role::Shadow, SwapResult::Refused, Some("vectors"));
    metrics.record_shadow(6, 1);
    metrics.record_admin_refusal("no_token");
    serve(&metrics, "r@1", Role::Active);
    metrics.record_auto_rollback();
    metrics.render()
}

#[test]
fn the_exposition_is_unchanged() {
    let mut rendered: Vec<&str> = Vec::new();
    let text = exposition_sample();
    rendered.extend(text.lines());
    rendered.sort_unstable();
    let mut expected: Vec<&str> = include_str!("exposition.txt").lines().collect();
    expected.sort_unstable();
    assert_eq!(rendered, expected, "rendered:\n{text}");
}
