//! Kafka with replicas: the three-node cluster of `deploy/scripts/kafka.sh --cluster 3` (KRaft,
//! every node broker and controller), started by the test when it is not running. A topic of six
//! partitions, each replicated three times with `min.insync.replicas=2`, is fed a shuffled,
//! duplicated order stream by a producer waiting for every in-sync replica (`acks=all`), and
//! consumed by two `converge serve` processes. Mid-stream the node leading the partitions that
//! hold the most messages is SIGKILLed; once its partitions have new leaders, the node leading
//! the most then is SIGKILLed too and restarted a few seconds later (meanwhile one node is left:
//! no controller quorum, fewer in-sync replicas than the topic requires, so the producer and
//! the consumers wait); then the first comes back. A watcher samples every key throughout.
//! At the end: every key holds its order's final state (nothing lost), no key ever moved
//! backward, the partitions hold exactly the events produced, the group's committed offsets
//! are at the end of every partition, and nothing was dead-lettered.
//!
//! The cluster is shared like the single broker (left running); the test's topics are deleted.
//! The orders come from a seed printed at the start; `CONVERGE_KAFKA3_SEED=<seed>` repeats them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use converge_tests::kafka::{KafkaCluster, TestTopic};
use converge_tests::served::{self, Served};
use converge_tests::watch::Watcher;
use converge_tests::{orders, stored_states};

const NODES: i32 = 3;
const ORDERS: usize = 6_000;
/// The stream is produced in this many chunks, one every [`CHUNK_EVERY`], so that the broker
/// failures meet messages arriving and batches in flight.
const CHUNKS: usize = 30;
const CHUNK_EVERY: Duration = Duration::from_secs(1);
/// How long the second node stays down.
const SECOND_DOWN_FOR: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka3_leader_killed_then_a_second_broker_lose_nothing_and_never_go_backward() {
    let test_started = Instant::now();
    let seed = match std::env::var("CONVERGE_KAFKA3_SEED") {
        Ok(seed) => seed.parse().expect("CONVERGE_KAFKA3_SEED is a u64"),
        Err(_) => rand::random(),
    };
    eprintln!("kafka3: seed {seed} (CONVERGE_KAFKA3_SEED={seed} repeats the orders)");
    let cluster = tokio::task::block_in_place(|| KafkaCluster::ensure(NODES));
    let brokers = cluster.brokers();
    eprintln!(
        "kafka3: {NODES} nodes on {brokers} after {:.1}s",
        test_started.elapsed().as_secs_f64()
    );
    let replicated = [("min.insync.replicas", "2")];
    let topic = TestTopic::create_replicated(&brokers, "kafka3", 6, 3, &replicated).await;
    let dead_letters =
        TestTopic::create_replicated(&brokers, "kafka3-dlq", 1, 3, &replicated).await;
    // On every node (the topic's brokers), so that a member finds the cluster whichever is
    // down; the dead-letter producer uses the same brokers.
    let mut served = Served::on(topic, dead_letters, "kafka3").await;
    let topic = Arc::clone(&served.topic);

    let stream = orders::generate("order-", ORDERS, 30, seed);
    let keys: Vec<String> = stream.expected.keys().cloned().collect();
    let watcher = Watcher::start(
        served.redis.store.clone(),
        keys.clone(),
        Duration::from_millis(50),
    );
    let first = served.start("serve-1.log");
    let second = served.start("serve-2.log");

    let started = Instant::now();
    let produced = Arc::new(AtomicBool::new(false));
    // Each partition's end as the producer's acknowledgements tell it.
    let delivered = Arc::new(Mutex::new(vec![0_i64; 6]));
    let faults = {
        let topic = Arc::clone(&topic);
        let produced = Arc::clone(&produced);
        let delivered = Arc::clone(&delivered);
        let events = stream.events.len() as i64;
        std::thread::spawn(move || {
            broker_faults(&cluster, &topic, &delivered, events, started, &produced);
        })
    };
    let chunk = stream.events.len().div_ceil(CHUNKS);
    for (n, events) in stream.events.chunks(chunk).enumerate() {
        tokio::time::sleep_until((started + CHUNK_EVERY * n as u32).into()).await;
        // Waits out the brokers' failures (the producer retries); a fault thread that failed
        // meanwhile is reported at once.
        let failed = async {
            while !faults.is_finished() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let stored = tokio::select! {
            stored = topic.produce_acked(events, |_| None) => stored,
            () = failed => break,
        };
        let mut ends = delivered.lock().expect("never poisoned");
        for (partition, offset) in stored {
            let end = &mut ends[usize::try_from(partition).expect("a partition")];
            *end = (*end).max(offset + 1);
        }
    }
    if !faults.is_finished() {
        eprintln!(
            "kafka3: {:.1}s: all {} events produced and acknowledged by the in-sync replicas",
            started.elapsed().as_secs_f64(),
            stream.events.len()
        );
    }
    produced.store(true, Ordering::Release);
    tokio::task::spawn_blocking(move || faults.join())
        .await
        .expect("joined")
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    assert!(
        !stored_states(&served.redis.store, &keys).await.is_empty(),
        "nothing stored"
    );

    let positions = served
        .converged(&stream.expected, Duration::from_secs(120))
        .await;
    // Nothing lost by the brokers, nothing doubled by the producer's retries.
    assert_eq!(
        served::messages(&positions),
        stream.events.len(),
        "the partitions do not hold exactly the events produced: {positions:?}"
    );
    eprintln!(
        "kafka3: {:.1}s: converged, offsets at the end of every partition",
        started.elapsed().as_secs_f64()
    );
    served.dead_letters.assert_empty().await;
    first.terminate();
    second.terminate();
    let samples = watcher.finish().await;
    assert!(samples >= 20, "the watcher took only {samples} samples");
    eprintln!(
        "kafka3: passed in {:.1}s with {samples} samples of every key (seed {seed})",
        test_started.elapsed().as_secs_f64()
    );
}

/// The node leading the partitions that hold the most messages (`ends`), of the nodes `alive`.
fn busiest_leader(topic: &TestTopic, ends: &[i64], alive: &[i32]) -> i32 {
    let leaders = topic.leaders();
    let held = |node: i32| -> i64 {
        leaders
            .iter()
            .zip(ends)
            .filter(|(leader, _)| **leader == node)
            .map(|(_, end)| end)
            .sum()
    };
    *alive
        .iter()
        .max_by_key(|node| held(**node))
        .expect("a node alive")
}

/// Waits until every partition has a leader among `alive` (the controllers elected them).
fn wait_for_leaders(topic: &TestTopic, alive: &[i32], say: &impl Fn(&str)) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let leaders = topic.leaders();
        if leaders.iter().all(|leader| alive.contains(leader)) {
            say(&format!("leaders by partition {leaders:?}"));
            return;
        }
        assert!(
            Instant::now() < deadline,
            "partitions still led by {leaders:?} 90 s later, not by nodes {alive:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The faults, on their own thread (the script and the kills block): once a quarter of the
/// stream is in the topic, the busiest leader is killed, then a second node briefly, then the
/// first comes back. Returns with every node running, once the stream is produced.
fn broker_faults(
    cluster: &KafkaCluster,
    topic: &TestTopic,
    delivered: &Mutex<Vec<i64>>,
    events: i64,
    started: Instant,
    produced: &AtomicBool,
) {
    let say = |what: &str| eprintln!("kafka3: {:.1}s: {what}", started.elapsed().as_secs_f64());
    let ends = || delivered.lock().expect("never poisoned").clone();
    let nodes: Vec<i32> = (1..=NODES).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ends().iter().sum::<i64>() < events / 4 {
        assert!(
            Instant::now() < deadline,
            "a quarter of the stream was not produced within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let first = busiest_leader(topic, &ends(), &nodes);
    cluster.kill(first);
    say(&format!(
        "SIGKILL node {first}, leading the partitions holding the most messages (ends {:?})",
        ends()
    ));
    let alive: Vec<i32> = nodes.iter().copied().filter(|&n| n != first).collect();
    wait_for_leaders(topic, &alive, &say);

    let second = busiest_leader(topic, &ends(), &alive);
    cluster.kill(second);
    say(&format!(
        "SIGKILL node {second} too: one node left, no quorum, fewer in-sync replicas than \
         required"
    ));
    std::thread::sleep(SECOND_DOWN_FOR);
    cluster.restart(second);
    say(&format!("node {second} restarted"));
    wait_for_leaders(topic, &alive, &say);
    cluster.restart(first);
    say(&format!("node {first} restarted"));

    while !produced.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(100));
    }
}
