//! `converge replay`: a rule that ranks differently (version-rank) folded over a Kafka topic
//! from its beginning finds exactly the keys whose stored state (decided by order-status)
//! it would have decided otherwise; `--rebuild` writes them, after which nothing differs.

use std::collections::BTreeSet;

use converge::dead_letter::MemoryDeadLetters;
use converge::entity::Event;
use converge::pipeline::{Pipeline, PipelineConfig};
use converge::rule::{EngineLimits, RuleEngine};
use converge::store::Store;
use converge_tests::kafka::TestTopic;
use converge_tests::process::Converge;
use converge_tests::services::TestStore;
use converge_tests::{build, config, event_messages, orders};

fn replay(args: &[&str]) -> (i32, serde_json::Value) {
    let output = Converge::new(&["replay"])
        .args(args)
        .args(["--json"])
        .output();
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "no JSON report ({error}): {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code().expect("an exit code"), report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_finds_the_keys_a_new_ranking_changes_and_rebuilds_them() {
    let stream = orders::generate("order-", 300, 20, 11);
    // Planted: a refund without a version, for five orders not refunded yet. order-status ranks
    // status first and stores the refund; version-rank ranks by version and keeps the order.
    let planted: Vec<Event> = stream
        .expected
        .values()
        .filter(|last| last.status != "refunded")
        .take(5)
        .map(|last| Event {
            status: "refunded".to_owned(),
            version: 0,
            ..last.clone()
        })
        .collect();
    let mut events = stream.events.clone();
    events.extend(planted.iter().cloned());

    let redis = TestStore::standalone("replay").await;
    let rule = RuleEngine::new(EngineLimits::default())
        .expect("engine")
        .compile_file(&build::rule("order-status"))
        .expect("order-status");
    let mut pipeline = Pipeline::new(
        rule.instance(),
        redis.store.clone(),
        MemoryDeadLetters::new(),
        PipelineConfig::default(),
    );
    pipeline
        .process(&event_messages(&events))
        .await
        .expect("stored");

    let topic = TestTopic::create("replay", 3).await;
    topic.produce(&events).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config::write(
        dir.path(),
        &config::kafka_serve(
            &topic.name,
            "unused-dlq",
            "unused-group",
            config::standalone_store(redis.store.prefix()),
        ),
    );
    let config = config.to_str().expect("utf-8 path");
    let version_rank = build::rule("version-rank");
    let version_rank = version_rank.to_str().expect("utf-8 path");

    let (code, report) = replay(&["--rule", version_rank, "--config", config]);
    assert_eq!(code, 1, "differences exit 1: {report:#}");
    assert_eq!(report["messages"], events.len());
    assert_eq!(report["keys"], stream.expected.len());
    let differing: BTreeSet<String> = report["differences"]
        .as_array()
        .expect("differences")
        .iter()
        .map(|d| d["key"].as_str().expect("key").to_owned())
        .collect();
    let expected: BTreeSet<String> = planted.iter().map(|e| e.key.clone()).collect();
    assert_eq!(differing, expected);
    for difference in report["differences"].as_array().expect("differences") {
        let key = difference["key"].as_str().expect("key");
        assert_eq!(difference["stored"]["status"], "refunded");
        assert_eq!(difference["stored_by"], "order-status@0.1.0");
        let replayed: Event =
            serde_json::from_value(difference["replayed"].clone()).expect("an entity");
        assert_eq!(&replayed, &stream.expected[key]);
    }

    let (code, report) = replay(&["--rule", version_rank, "--config", config, "--rebuild"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["rebuilt"], planted.len());
    let keys: Vec<String> = expected.iter().cloned().collect();
    for stored in redis.store.inspect(&keys).await.expect("inspected") {
        let stored = stored.expect("stored");
        assert_eq!(stored.rule, "version-rank@0.1.0");
        assert_eq!(stored.state, stream.expected[&stored.state.key]);
    }

    // The same events from a file: nothing differs any more.
    let lines = dir.path().join("events.jsonl");
    let text: String = events
        .iter()
        .map(|e| serde_json::to_string(e).expect("JSON") + "\n")
        .collect();
    std::fs::write(&lines, text).expect("written");
    let (code, report) = replay(&[
        "--rule",
        version_rank,
        "--config",
        config,
        "--input",
        lines.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["differences"].as_array().map(Vec::len), Some(0));
}
