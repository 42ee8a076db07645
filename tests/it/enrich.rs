//! Enrichment end to end: id-only messages are completed from a real HTTP order API; each
//! distinct key is fetched once per batch; 404, garbage and a persistently failing API are
//! dead-lettered with their reason; transient 500s are retried. By default an outage (5xx,
//! 401/403, unreachable) is waited out rather than dead-lettered, and a 404 is asked again for
//! a grace period.

use std::collections::BTreeMap;

use converge::config::{EnrichConfig, OnUnavailable};
use converge::dead_letter::{DeadLetterKind, MemoryDeadLetters};
use converge::pipeline::Enricher;
use converge::pipeline::{Pipeline, PipelineConfig};
use converge::rule::{EngineLimits, RuleEngine};
use converge::source::Position;
use converge::store::MemoryStore;
use converge_tests::events::id_only;
use converge_tests::order_api::OrderApi;
use converge_tests::{build, config, orders};

/// An enricher that gives up after `retries` retries and takes a 404 as final at once.
fn enricher(api: &OrderApi, retries: u32) -> Enricher {
    Enricher::new(EnrichConfig {
        concurrency: 4,
        on_unavailable: OnUnavailable::DeadLetter,
        retries,
        backoff_ms: 5,
        not_found_grace_ms: 0,
        ..config::enrich(&format!("{}/orders/{{key}}", api.url))
    })
    .expect("valid enrichment")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_only_messages_store_the_latest_order_fetching_each_key_once_per_batch() {
    let api = OrderApi::start().await;
    let stream = orders::generate("order-", 120, 0, 8);
    api.serve_orders(&stream.expected);
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
    api.serve_orders(&stream.expected);
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

/// The default policy: an API that fails with 500 and refuses converge's credentials (401) for
/// longer than any retry count is waited out, the outage counted, and nothing is dead-lettered;
/// an order the API shows only after a few 404s is fetched within the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_an_api_outage_is_waited_out_and_a_404_gets_a_grace_period() {
    let api = OrderApi::start().await;
    let stream = orders::generate("order-", 3, 0, 2);
    api.serve_orders(&stream.expected);
    api.state
        .failing
        .lock()
        .expect("lock")
        .insert("order-0".to_owned(), 12);
    api.state
        .unauthorized
        .lock()
        .expect("lock")
        .insert("order-1".to_owned(), 12);
    api.state
        .not_yet_visible
        .lock()
        .expect("lock")
        .insert("order-2".to_owned(), 4);
    let messages = vec![
        id_only("order-0", 1),
        id_only("order-1", 2),
        id_only("order-2", 3),
    ];
    let rule = RuleEngine::new(EngineLimits::default())
        .expect("engine")
        .compile_file(&build::rule("order-status"))
        .expect("rule");
    let enrich = EnrichConfig {
        backoff_ms: 2,
        max_backoff_ms: 20,
        ..config::enrich(&format!("{}/orders/{{key}}", api.url))
    };
    assert_eq!(enrich.on_unavailable, OnUnavailable::Wait, "the default");
    assert!(enrich.retries < 12, "the outage outlasts the retry count");
    let metrics = std::sync::Arc::new(converge::telemetry::Metrics::new());
    let mut pipeline = Pipeline::new(
        rule.instance(),
        MemoryStore::new(),
        MemoryDeadLetters::new(),
        PipelineConfig::default(),
    )
    .with_metrics(std::sync::Arc::clone(&metrics))
    .with_enricher(Enricher::new(enrich).expect("valid enrichment"));
    pipeline.process(&messages).await.expect("processed");

    let stored: BTreeMap<_, _> = pipeline
        .store()
        .snapshot()
        .into_iter()
        .map(|s| (s.state.key.clone(), s.state))
        .collect();
    assert_eq!(stored, stream.expected);
    assert!(pipeline.dead_letters().letters().is_empty());
    let rendered = metrics.render();
    assert!(
        rendered.lines().any(|line| line
            == "converge_unavailable_total{service=\"order API\",operation=\"fetch\"} 24"),
        "every failed attempt of the outage is counted:\n{rendered}"
    );
}
