//! T4 (outage and restart): Redis is killed while `converge serve` is writing and started again
//! a few seconds later, with its script cache empty. The process waits it out with backoff —
//! it neither exits nor skips a batch — and every key ends on its final state, with the
//! group's committed offsets at the end of every partition.

use std::time::{Duration, Instant};

use converge::store::RedisStore;
use converge::store::Store as _;
use converge_tests::kafka::TestTopic;
use converge_tests::services::{PrivateRedis, unique_prefix};
use converge_tests::{orders, stored_states};

use crate::kafka::{serve, terminate, write_config};

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
    let dir = tempfile::tempdir().expect("temp dir");
    let admin = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        probe.local_addr().expect("address")
    };
    let store = format!(
        "kind = \"redis\"\nurl = \"{}\"\nprefix = \"{prefix}\"\ntimeout_ms = 500",
        redis.url()
    );
    let config = write_config(
        dir.path(),
        &topic.name,
        &dead_letters.name,
        &group,
        &store,
        &format!("backoff_ms = 20\nmax_backoff_ms = 400\n[admin]\nlisten = \"{admin}\""),
    );

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

    let reader = connect(&redis, &prefix).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let states = match reader.load(&keys).await {
            // Redis may still be loading its append-only file.
            Err(_) => std::collections::BTreeMap::new(),
            Ok(_) => stored_states(&reader, &keys).await,
        };
        let progress = topic.progress(&group);
        if states == stream.expected && progress.iter().all(|(committed, high)| committed == high) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not converged after the outage: {} of {} keys right, progress {progress:?}; logs in {}",
            states
                .iter()
                .filter(|(k, v)| stream.expected.get(*k) == Some(v))
                .count(),
            keys.len(),
            dir.keep().display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

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
    assert!(
        dead_letters.read(1, Duration::from_millis(500)).is_empty(),
        "the outage dead-lettered messages"
    );
}
