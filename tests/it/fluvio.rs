//! The Fluvio source against a real cluster, when one is given: `CONVERGE_TEST_FLUVIO=host:port`
//! (the cluster's SC endpoint). CI has no Fluvio cluster (its binaries are not on crates.io),
//! so there the test says so and returns; the source's offset logic is tested without a
//! cluster in `host/src/fluvio_source.rs`.
//!
//! Shuffled, duplicated order events go to a fresh two-partition topic; `converge serve` reads
//! them through the Fluvio source into Redis, is stopped halfway (SIGKILL) and restarted, and
//! every order must end on its final state, every record's position must be committed, and
//! `serve` must stop on SIGTERM.

use std::time::{Duration, Instant};

use converge_tests::services::TestStore;
use converge_tests::{build, orders, stored_states};
use fluvio::metadata::topic::TopicSpec;

use crate::kafka::{serve, terminate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fluvio_source_converges_across_a_restart() {
    let Ok(endpoint) = std::env::var("CONVERGE_TEST_FLUVIO") else {
        eprintln!("no Fluvio cluster given (CONVERGE_TEST_FLUVIO=host:port); not run");
        return;
    };
    let fluvio = fluvio::Fluvio::connect_with_config(&fluvio::FluvioClusterConfig::new(&endpoint))
        .await
        .expect("the Fluvio cluster answers");
    let topic = format!("converge-test-{:016x}", rand::random::<u64>());
    let admin = fluvio.admin().await;
    admin
        .create(topic.clone(), false, TopicSpec::new_computed(2, 1, None))
        .await
        .expect("topic created");
    tokio::time::sleep(Duration::from_secs(2)).await;

    let redis = TestStore::standalone("fluvio").await;
    let stream = orders::generate("order-", 500, 30, 31);
    let producer = fluvio.topic_producer(&topic).await.expect("producer");
    for event in &stream.events {
        producer
            .send(
                event.key.clone(),
                serde_json::to_vec(event).expect("serialises"),
            )
            .await
            .expect("sent");
    }
    producer.flush().await.expect("flushed");

    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("converge.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[rule]
path = "{rule}"
[source]
kind = "fluvio"
endpoint = "{endpoint}"
topic = "{topic}"
consumer = "{topic}-consumer"
[store]
kind = "redis"
url = "{redis}"
prefix = "{prefix}"
[dead_letter]
kind = "redis-stream"
stream = "{prefix}dead-letters"
[pipeline]
batch_size = 64
"#,
            rule = build::rule("order-status").display(),
            redis = converge_tests::services::redis_url(),
            prefix = redis.store.prefix(),
        ),
    )
    .expect("config written");

    let keys: Vec<String> = stream.expected.keys().cloned().collect();
    let mut first = serve(&config, &dir.path().join("first.log"));
    let started = Instant::now();
    while stored_states(&redis.store, &keys).await.len() < 50 {
        assert!(started.elapsed() < Duration::from_secs(60), "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().expect("SIGKILL");
    first.wait().expect("reaped");
    let restarted = serve(&config, &dir.path().join("restarted.log"));
    let deadline = Instant::now() + Duration::from_secs(90);
    while stored_states(&redis.store, &keys).await != stream.expected {
        assert!(
            Instant::now() < deadline,
            "not converged; logs in {}",
            dir.keep().display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every record's position is committed once its write is acknowledged, the last ones too:
    // a commit that waits for a record that never comes would leave the tail uncommitted.
    let consumer = format!("{topic}-consumer");
    let committed = |offsets: &[fluvio::consumer::ConsumerOffset]| -> i64 {
        offsets
            .iter()
            .filter(|o| o.consumer_id == consumer && o.topic == topic)
            .map(|o| o.offset + 1)
            .sum()
    };
    let total = stream.events.len() as i64;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let offsets = fluvio.consumer_offsets().await.expect("consumer offsets");
        if committed(&offsets) == total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "committed offsets cover {} of {total} records",
            committed(&offsets)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    terminate(restarted);
    let _ = admin.delete::<TopicSpec>(topic).await;
}
