//! Enrichment end to end: id-only messages are completed from a real HTTP order API; each
//! distinct key is fetched once per batch; 404, garbage and a persistently failing API are
//! dead-lettered with their reason; transient 500s are retried.

use std::collections::BTreeMap;

use converge::config::EnrichConfig;
use converge::dead_letter::{DeadLetterKind, MemoryDeadLetters};
use converge::pipeline::Enricher;
use converge::pipeline::{Pipeline, PipelineConfig};
use converge::rule::{EngineLimits, RuleEngine};
use converge::source::{Message, Position};
use converge::store::MemoryStore;
use converge_tests::order_api::OrderApi;
use converge_tests::{build, orders};

fn id_only(key: &str, line: u64) -> Message {
    Message {
        position: Position::Line { line },
        key: None,
        payload: Some(format!(r#"{{"key":"{key}"}}"#).into_bytes()),
        produced_at_ms: None,
        lost: None,
    }
}

fn enricher(api: &OrderApi, retries: u32) -> Enricher {
    Enricher::new(EnrichConfig {
        url: format!("{}/orders/{{key}}", api.url),
        concurrency: 4,
        timeout_ms: 2_000,
        retries,
        backoff_ms: 5,
    })
    .expect("valid enrichment")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_only_messages_store_the_latest_order_fetching_each_key_once_per_batch() {
    let api = OrderApi::start().await;
    let stream = orders::generate("order-", 120, 0, 8);
    api.state
        .orders
        .lock()
        .expect("lock")
        .extend(stream.expected.clone());
    // Every order is mentioned three times, shuffled: the seed's id-only messages.
    let mut messages = Vec::new();
    for round in 0..3 {
        for (n, key) in stream.expected.keys().enumerate() {
            messages.push(id_only(key, (round * 1000 + n) as u64));
        }
    }
    let rule = RuleEngine::new(EngineLimits::default())
        .expect("engine")
        .compile_file(&build::rule("order-status"))
        .expect("rule");
    let mut pipeline = Pipeline::new(
        rule.instance(),
        MemoryStore::new(),
        MemoryDeadLetters::new(),
        PipelineConfig::default(),
    )
    .with_enricher(enricher(&api, 0));
    pipeline.process(&messages).await.expect("processed");

    let stored: BTreeMap<_, _> = pipeline
        .store()
        .snapshot()
        .into_iter()
        .map(|s| (s.state.key.clone(), s.state))
        .collect();
    assert_eq!(stored, stream.expected);
    assert_eq!(
        api.requests(),
        120,
        "each distinct key fetched once in the batch"
    );
    assert!(pipeline.dead_letters().letters().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfetchable_orders_are_dead_lettered_with_the_reason() {
    let api = OrderApi::start().await;
    let stream = orders::generate("order-", 3, 0, 1);
    api.state
        .orders
        .lock()
        .expect("lock")
        .extend(stream.expected.clone());
    api.state
        .garbled
        .lock()
        .expect("lock")
        .push("order-1".to_owned());
    api.state
        .huge
        .lock()
        .expect("lock")
        .insert("order-huge".to_owned(), 4 << 20);
    {
        let mut failing = api.state.failing.lock().expect("lock");
        failing.insert("order-2".to_owned(), 2); // recovers on the third attempt
        failing.insert("order-0".to_owned(), 100); // never recovers
    }
    let messages = vec![
        id_only("order-0", 1),
        id_only("order-1", 2),
        id_only("order-2", 3),
        id_only("order-404", 4),
        id_only("order-huge", 5),
    ];
    let rule = RuleEngine::new(EngineLimits::default())
        .expect("engine")
        .compile_file(&build::rule("order-status"))
        .expect("rule");
    let mut pipeline = Pipeline::new(
        rule.instance(),
        MemoryStore::new(),
        MemoryDeadLetters::new(),
        PipelineConfig::default(),
    )
    .with_enricher(enricher(&api, 3));
    pipeline.process(&messages).await.expect("processed");

    let stored: Vec<String> = pipeline
        .store()
        .snapshot()
        .into_iter()
        .map(|s| s.state.key)
        .collect();
    assert_eq!(stored, ["order-2"]);
    let reasons: BTreeMap<u64, String> = pipeline
        .dead_letters()
        .letters()
        .into_iter()
        .map(|letter| {
            assert_eq!(letter.kind, DeadLetterKind::NotEnriched);
            match letter.position {
                Position::Line { line } => (line, letter.reason),
                other => panic!("unexpected position {other}"),
            }
        })
        .collect();
    assert!(
        reasons[&1].contains("unavailable") && reasons[&1].contains("4 attempts"),
        "{reasons:?}"
    );
    assert!(reasons[&2].contains("not an event"), "{reasons:?}");
    assert!(reasons[&4].contains("404"), "{reasons:?}");
    // A body over the message limit (1 MiB by default) is not read to its end.
    assert!(
        reasons[&5].contains("body over 1048576 bytes"),
        "{reasons:?}"
    );
    assert_eq!(reasons.len(), 4);
}
