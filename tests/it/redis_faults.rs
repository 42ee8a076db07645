//! T4 (outage and restart): Redis is killed while `converge serve` is writing and started again
//! a few seconds later, with its script cache empty. The process waits it out with backoff —
//! it neither exits nor skips a batch — and every key ends on its final state, with the
//! group's committed offsets at the end of every partition.

use std::time::{Duration, Instant};

use converge::config::{AdminConfig, RedisStoreConfig, StoreConfig};
use converge::store::RedisStore;
use converge_tests::kafka::TestTopic;
use converge_tests::process::{serve, terminate};
use converge_tests::services::{PrivateRedis, free_loopback_addr, unique_prefix};
use converge_tests::{Convergence, config, orders, stored_states};

async fn connect(redis: &PrivateRedis, prefix: &str) -> RedisStore {
    RedisStore::connect(&redis.url(), prefix)
        .await
        .expect("the private Redis answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t4_redis_outage_is_waited_out_and_nothing_is_lost() {
    let mut redis = PrivateRedis::start();
    let prefix = unique_prefix("t4");
    let topic = TestTopic::create("t4", 3).await;
    let dead_letters = TestTopic::create("t4-dlq", 1).await;
    let group = format!("{}-group", topic.name);
    let mut dir = tempfile::tempdir().expect("temp dir");
    let admin = free_loopback_addr();
    // A short store timeout: calls to the dead server fail fast and are retried.
    let store = StoreConfig::Redis(RedisStoreConfig {
        url: redis.url(),
        prefix: prefix.clone(),
        timeout_ms: 500,
    });
    let mut settings = config::kafka_serve(&topic.name, &dead_letters.name, &group, store);
    settings.pipeline.backoff_ms = 20;
    settings.pipeline.max_backoff_ms = 400;
    settings.admin = Some(AdminConfig { listen: admin });
    let config = config::write(dir.path(), &settings);

    let stream = orders::generate("order-", 800, 30, 44);
    let keys: Vec<String> = stream.expected.keys().cloned().collect();
    let (first_half, second_half) = stream.events.split_at(stream.events.len() / 2);
    topic.produce(first_half).await;
    let mut server = serve(&config, &dir.path().join("serve.log"));

    let reader = connect(&redis, &prefix).await;
    let started = Instant::now();
    while stored_states(&reader, &keys).await.len() < 50 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no progress; see {}",
            dir.keep().display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis.kill();
    topic.produce(second_half).await;
    // Down for a while: long enough for several failed batches and backoffs.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        server.try_wait().expect("status").is_none(),
        "converge exited during the outage; see {}",
        dir.keep().display()
    );
    redis.restart();

    // Redis may still be loading its append-only file: the wait takes a failed load as not
    // converged yet.
    let reader = connect(&redis, &prefix).await;
    Convergence::new(&reader, &stream.expected)
        .logs(&mut dir)
        .wait_with_offsets(async || topic.progress(&group))
        .await;

    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("admin answers")
        .text()
        .await
        .expect("body");
    let failed_calls: f64 = metrics
        .lines()
        .filter(|line| line.starts_with("converge_unavailable_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(failed_calls > 0.0, "the outage was not counted:\n{metrics}");
    terminate(server);
    // Nothing may have been dead-lettered. A marker produced now must be all there is: a read
    // that saw nothing would not have read the topic at all.
    let marker = format!("end of t4 {:016x}", rand::random::<u64>());
    dead_letters
        .produce_raw("marker", &[marker.clone().into_bytes()])
        .await;
    let letters: Vec<String> = dead_letters
        .read_all(Duration::from_secs(30))
        .into_iter()
        .map(|(body, _)| String::from_utf8_lossy(&body).into_owned())
        .collect();
    assert_eq!(
        letters,
        [marker],
        "the outage dead-lettered messages (or the dead-letter topic was not read)"
    );
}
