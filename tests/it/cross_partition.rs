//! One key on several partitions, two instances: every event goes to a random partition (as a
//! producer without keys, or partitioning by event id, would send it), so each key's events are
//! decided by both `converge serve` processes of the group, each on what its own state cache
//! says — often stale: the other process wrote the key since. Half the orders arrive as a burst
//! (their events close together in the stream, in random order), so both processes decide them
//! at nearly the same time, with batches in flight; the others' events are spread over the
//! whole stream. One process is SIGKILLed mid-stream and restarted. A watcher samples every key throughout: no key may ever move
//! backward, and at the end every key holds its order's final state, the group's committed
//! offsets are at the end of every partition, and nothing was dead-lettered.
//!
//! Every other Kafka test keys events by order, so one key is only ever decided by the one
//! process owning its partition, and cross-instance cache staleness is not exercised.
//! The orders and partitions come from a seed printed at the start;
//! `CONVERGE_CROSS_PARTITION_SEED=<seed>` repeats them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use converge::entity::Event;
use converge_tests::served::{self, Served};
use converge_tests::watch::Watcher;
use converge_tests::{orders, stored_states};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PARTITIONS: i32 = 6;
const ORDERS: usize = 6_000;
/// After the first half of the stream (a backlog: large batches, the write window full), the
/// rest arrives in this many chunks, one every [`CHUNK_EVERY`].
const CHUNKS: usize = 20;
const CHUNK_EVERY: Duration = Duration::from_millis(500);
/// How far a burst's events lie from its centre, as a share of the stream: about ±60 events.
const BURST: f64 = 0.003;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_partition_keys_on_random_partitions_converge_across_two_instances_and_a_kill() {
    let test_started = Instant::now();
    let seed = match std::env::var("CONVERGE_CROSS_PARTITION_SEED") {
        Ok(seed) => seed
            .parse()
            .expect("CONVERGE_CROSS_PARTITION_SEED is a u64"),
        Err(_) => rand::random(),
    };
    eprintln!(
        "cross_partition: seed {seed} (CONVERGE_CROSS_PARTITION_SEED={seed} repeats its choices)"
    );
    let mut served = Served::new("cross-partition", PARTITIONS).await;
    let stream = orders::generate("order-", ORDERS, 30, seed);
    let keys: Vec<String> = stream.expected.keys().cloned().collect();
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(1));
    let events = half_in_bursts(&stream.events, &mut rng);
    let mut random_partition = move |_: &Event| Some(rng.random_range(0..PARTITIONS));
    let (backlog, rest) = events.split_at(events.len() / 2);
    served
        .topic
        .produce_acked(backlog, &mut random_partition)
        .await;

    let watcher = Watcher::start(
        served.redis.store.clone(),
        keys.clone(),
        Duration::from_millis(50),
    );
    let first = served.start("first.log");
    let second = served.start("second.log");
    let started = Instant::now();
    // Both members deciding (a key stored), then the rest arrives while one is killed.
    while stored_states(&served.redis.store, &keys[..100])
        .await
        .is_empty()
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "nothing stored within 60 s; see {}",
            served.dir.path().display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let chunk = rest.len().div_ceil(CHUNKS);
    let mut first = Some(first);
    let mut restarted = None;
    for (n, events) in rest.chunks(chunk).enumerate() {
        if n == CHUNKS / 3 {
            // Dropping the guard is SIGKILL: no goodbye to the group, batches left in flight.
            drop(first.take());
            eprintln!(
                "cross_partition: {:.1}s: SIGKILL the first serve",
                started.elapsed().as_secs_f64()
            );
        }
        if n == CHUNKS * 2 / 3 {
            restarted = Some(served.start("restarted.log"));
            eprintln!(
                "cross_partition: {:.1}s: restarted it",
                started.elapsed().as_secs_f64()
            );
        }
        served
            .topic
            .produce_acked(events, &mut random_partition)
            .await;
        tokio::time::sleep(CHUNK_EVERY).await;
    }

    let positions = served
        .converged(&stream.expected, Duration::from_secs(120))
        .await;
    assert_eq!(served::messages(&positions), stream.events.len());
    eprintln!(
        "cross_partition: {:.1}s: converged, offsets at the end of every partition",
        started.elapsed().as_secs_f64()
    );
    served.dead_letters.assert_empty().await;
    second.terminate();
    restarted.expect("restarted").terminate();
    let samples = watcher.finish().await;
    assert!(samples >= 20, "the watcher took only {samples} samples");
    eprintln!(
        "cross_partition: passed in {:.1}s with {samples} samples of every key (seed {seed})",
        test_started.elapsed().as_secs_f64()
    );
}

/// `events` reordered: each order's events placed around a moment of the stream drawn for it,
/// within [`BURST`] of it for half the orders, anywhere for the others.
fn half_in_bursts(events: &[Event], rng: &mut StdRng) -> Vec<Event> {
    let mut placed: HashMap<&str, (f64, f64)> = HashMap::new();
    let mut timed: Vec<(f64, &Event)> = events
        .iter()
        .map(|event| {
            let (centre, spread) = *placed.entry(event.key.as_str()).or_insert_with(|| {
                let spread = if rng.random_bool(0.5) { BURST } else { 1.0 };
                (rng.random::<f64>(), spread)
            });
            (centre + rng.random_range(-spread..spread), event)
        })
        .collect();
    timed.sort_by(|a, b| a.0.total_cmp(&b.0));
    timed.into_iter().map(|(_, event)| event.clone()).collect()
}
