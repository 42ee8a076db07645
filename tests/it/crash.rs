//! T9: crash points. `converge serve` (built with the `fault-injection` feature) aborts at a
//! named point of its third batch — after decode, after load, after write, after dead-letter,
//! before ack, after ack — and is started again. Every key must end on its expected state,
//! the group's committed offsets must reach the end of every partition, every bad message must
//! be dead-lettered, and a watcher sampling every key meanwhile must never see one move
//! backward (a batch redone after the crash writes nothing older than what is stored).
//!
//! And durability: with `store.wait_replicas = 1`, a failover after acknowledgements loses
//! nothing, because no batch is acknowledged before its writes are on the replica.

use std::os::unix::process::ExitStatusExt as _;
use std::time::{Duration, Instant};

use converge::config::{RedisStoreConfig, StoreConfig};
use converge::store::RedisStore;
use converge_tests::kafka::TestTopic;
use converge_tests::process::Server;
use converge_tests::served::Served;
use converge_tests::services::{PrivateRedis, unique_prefix};
use converge_tests::watch::Watcher;
use converge_tests::{Convergence, config, orders, stored_states};

/// The batch that crashes: the third, so that batches before it were acknowledged and batches
/// after it were in flight or not yet read.
const CRASHING_BATCH: u64 = 3;

/// Messages no rule can decide, spread through the stream so that batches carry dead letters.
fn bad_messages(count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|n| format!("{{\"key\":\"bad-{n}\",\"status\":").into_bytes())
        .collect()
}

/// Waits for `server` to end; panics unless it aborted (SIGABRT) within `within`.
fn wait_for_abort(server: &mut Server, within: Duration, log: &std::path::Path) {
    let status = server.exit_within(within).unwrap_or_else(|| {
        panic!(
            "serve did not reach its crash point within {within:?}; log in {}",
            log.display()
        )
    });
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert_eq!(
        status.signal(),
        Some(6),
        "serve should have aborted at its crash point, ended {status}; log:\n{text}"
    );
    assert!(
        text.contains("crash point"),
        "no crash point in the log:\n{text}"
    );
}

async fn crash_at(point: &str) {
    let mut served = Served::new(&format!("t9-{point}"), 3).await;
    let config = served.config();
    let stream = orders::generate("order-", 400, 30, 9);
    let keys: Vec<String> = stream.expected.keys().cloned().collect();
    let bad = bad_messages(6);
    // Everything is on the topic before serve starts, so every batch is full (64 messages)
    // and the third one exists; bad messages sit among the orders.
    for (chunk, bad) in stream.events.chunks(stream.events.len() / 6 + 1).zip(&bad) {
        served.topic.produce(chunk).await;
        served
            .topic
            .produce_raw("", std::slice::from_ref(bad))
            .await;
    }
    let watcher = Watcher::start(served.redis.store.clone(), keys, Duration::from_millis(20));

    let crash_log = served.log("crashing.log");
    let at = format!("{point}:{CRASHING_BATCH}");
    let mut crashing = Server::start_with_env(&config, &crash_log, &[("CONVERGE_CRASH_AT", &at)]);
    wait_for_abort(&mut crashing, Duration::from_secs(60), &crash_log);

    let restarted = served.start("restarted.log");
    served
        .converged(&stream.expected, Duration::from_secs(90))
        .await;
    restarted.terminate();
    let samples = watcher.finish().await;
    assert!(samples > 10, "the watcher sampled only {samples} times");

    // At least once: a bad message of a batch redone after the crash may be dead-lettered
    // twice, but none may be missing.
    let letters = served.dead_letters.read_all(Duration::from_secs(30));
    for body in &bad {
        assert!(
            letters.iter().any(|(letter, _)| letter == body),
            "{} was not dead-lettered",
            String::from_utf8_lossy(body)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t9_crash_after_decode() {
    crash_at("after_decode").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t9_crash_after_load() {
    crash_at("after_load").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t9_crash_after_write() {
    crash_at("after_write").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t9_crash_after_dead_letter() {
    crash_at("after_dead_letter").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t9_crash_before_ack() {
    crash_at("before_ack").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t9_crash_after_ack() {
    crash_at("after_ack").await;
}

/// Redis on a primary and a replica; `serve` writes to the primary with `wait_replicas = 1`.
/// The first half of the stream is acknowledged while the replica keeps up. Then the replica
/// stalls (SIGSTOP) while the second half arrives: writes land on the primary only, so no
/// batch may be acknowledged. The primary dies (SIGKILL, with whatever it alone had), the replica is
/// promoted, and `serve` starts again on it: every key ends on its expected state. Without the
/// wait, the second half's offsets would be committed on the primary's word alone and its
/// states lost with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t9_failover_after_acks_with_wait_replicas_loses_nothing() {
    let mut primary = PrivateRedis::start();
    let replica = PrivateRedis::start_replica_of(&primary);
    let prefix = unique_prefix("t9-failover");
    let topic = TestTopic::create("t9-failover", 3).await;
    let dead_letters = TestTopic::create("t9-failover-dlq", 1).await;
    let group = format!("{}-group", topic.name);
    let mut dir = tempfile::tempdir().expect("temp dir");
    let store_on = |url: String, wait_replicas: u32| {
        StoreConfig::Redis(RedisStoreConfig {
            url,
            common: converge::config::RedisStoreCommon {
                prefix: prefix.clone(),
                timeout_ms: 1_000,
                wait_replicas,
                wait_timeout_ms: 200,
            },
        })
    };
    let mut settings = config::kafka_serve(
        &topic.name,
        &dead_letters.name,
        &group,
        store_on(primary.url(), 1),
    );
    settings.pipeline.backoff_ms = 20;
    settings.pipeline.max_backoff_ms = 200;
    let on_primary = config::write(dir.path(), &settings);

    let stream = orders::generate("order-", 600, 30, 90);
    let (first_half, second_half) = stream.events.split_at(stream.events.len() / 2);
    let mut first_keys: Vec<String> = first_half.iter().map(|e| e.key.clone()).collect();
    first_keys.sort();
    first_keys.dedup();

    let primary_store = RedisStore::connect(&primary.url(), &prefix)
        .await
        .expect("primary answers");
    let replica_store = RedisStore::connect(&replica.url(), &prefix)
        .await
        .expect("replica answers");
    topic.produce(first_half).await;
    let mut server = Server::start(&on_primary, &dir.path().join("primary.log"));
    // The first half is acknowledged while the replica keeps up.
    let started = Instant::now();
    loop {
        let progress = topic.progress(&group);
        let committed: i64 = progress.iter().map(|(committed, _)| committed).sum();
        if committed == first_half.len() as i64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the first half was not acknowledged: {progress:?}; logs in {}",
            dir.keep().display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        stored_states(&replica_store, &first_keys).await.len(),
        first_keys.len(),
        "every acknowledged key is on the replica"
    );

    // The replica stalls; the second half arrives, and its first writes land on the primary
    // only (then the batch waits for the replica, and the partition with it).
    let keys: Vec<String> = stream.expected.keys().cloned().collect();
    let before = stored_states(&primary_store, &keys).await;
    replica.signal("STOP");
    topic.produce(second_half).await;
    let started = Instant::now();
    while stored_states(&primary_store, &keys).await == before {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "nothing of the second half reached the primary; logs in {}",
            dir.keep().display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Time for any acknowledgement to be committed (the client commits every second).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let committed: i64 = topic.progress(&group).iter().map(|(c, _)| c).sum();
    assert_eq!(
        committed,
        first_half.len() as i64,
        "batches were acknowledged while their writes were on the primary only"
    );

    // Failover: the primary dies with what only it had; the replica takes over.
    server.kill();
    primary.kill();
    replica.signal("CONT");
    let mut promote = redis::Client::open(replica.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("the replica answers");
    redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .exec_async(&mut promote)
        .await
        .expect("promoted");

    settings.store = store_on(replica.url(), 0);
    let on_replica = config::write(dir.path(), &settings);
    let server = Server::start(&on_replica, &dir.path().join("replica.log"));
    Convergence::new(&replica_store, &stream.expected)
        .logs(&mut dir)
        .wait_with_offsets(async || topic.progress(&group))
        .await;
    server.terminate();
    // Waiting for the replica is an outage, not a reason to dead-letter anything.
    dead_letters.assert_empty().await;
}
