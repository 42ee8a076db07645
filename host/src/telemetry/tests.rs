use std::collections::HashMap;

use super::*;
use crate::entity::Decision;

fn info(version: &str) -> RuleInfo {
    RuleInfo {
        name: "r".to_owned(),
        version: version.to_owned(),
        statuses: vec!["paid".to_owned()],
    }
}

/// What the pipeline does with a version serving in `role`: takes up its meter, counts a
/// decision and an ignore.
fn serve(metrics: &Metrics, rule: &str, role: &'static str) {
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
    serve(&metrics, "r@1", "active");
    for version in ["2", "3", "4"] {
        metrics.set_rule(&info(version));
        serve(&metrics, &format!("r@{version}"), "active");
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
    serve(&metrics, "r@4", "active");
    serve(&metrics, "r@5", "shadow");
    assert_eq!(versions_in(&metrics.render()), ["3", "4", "5"]);
    serve(&metrics, "r@4", "active");
    serve(&metrics, "r@6", "shadow");
    assert_eq!(versions_in(&metrics.render()), ["3", "4", "6"]);

    // Promoted: the shadow is active, the active one previous, the one before dropped.
    metrics.set_rule(&info("6"));
    serve(&metrics, "r@6", "active");
    assert_eq!(versions_in(&metrics.render()), ["4", "6"]);
    // A rollback keeps both: the previous comes back, the active becomes the previous.
    metrics.set_rule(&info("4"));
    serve(&metrics, "r@4", "active");
    let text = metrics.render();
    assert_eq!(versions_in(&text), ["4", "6"], "{text}");
    assert!(
        text.contains(
            "converge_rule_decisions_total{rule=\"r@4\",role=\"active\",decision=\"ignore\"} 4"
        ),
        "a version kept keeps its counts: {text}"
    );
}
