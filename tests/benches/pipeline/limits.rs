//! What the pipeline cannot beat on this machine: librdkafka reading the same topic with no
//! processing, and Redis running the same compare-and-set script at the same pipeline depth
//! and concurrency (`redis-benchmark`). And the Redis durability the runs are measured under.

use std::process::Command;
use std::time::{Duration, Instant};

use converge::store::{CAS_ARGS_PER_KEY, COMPARE_AND_SET};
use converge_tests::kafka::{self, TestTopic};
use converge_tests::services::{redis_cluster_urls, redis_url};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

/// AOF with `appendfsync everysec` on the standalone Redis and every cluster node while it
/// lives — what a deployment that must not lose more than a second of writes runs — and the
/// servers' own settings back afterwards (`deploy/scripts/redis.sh` starts them without
/// persistence, and other test runs share them).
pub struct Durable {
    restore: Vec<(String, String, String)>,
}

impl Durable {
    pub fn everysec() -> Self {
        let mut urls = vec![redis_url()];
        urls.extend(redis_cluster_urls());
        let mut restore = Vec::new();
        for url in urls {
            let mut connection = redis::Client::open(url.as_str())
                .and_then(|client| client.get_connection())
                .unwrap_or_else(|error| panic!("Redis at {url}: {error}"));
            let get = |connection: &mut redis::Connection, name: &str| -> String {
                let pair: Vec<String> = redis::cmd("CONFIG")
                    .arg("GET")
                    .arg(name)
                    .query(connection)
                    .expect("CONFIG GET");
                pair.get(1).cloned().unwrap_or_default()
            };
            let appendonly = get(&mut connection, "appendonly");
            let appendfsync = get(&mut connection, "appendfsync");
            for (name, value) in [("appendfsync", "everysec"), ("appendonly", "yes")] {
                redis::cmd("CONFIG")
                    .arg("SET")
                    .arg(name)
                    .arg(value)
                    .exec(&mut connection)
                    .expect("CONFIG SET");
            }
            restore.push((url.clone(), appendonly, appendfsync));
            wait_for_aof(&mut connection, &url);
        }
        Self { restore }
    }
}

/// Turning AOF on starts a rewrite of the whole dataset; the runs start after it.
fn wait_for_aof(connection: &mut redis::Connection, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query(connection)
            .expect("INFO");
        let done = info.contains("aof_enabled:1")
            && info.contains("aof_rewrite_in_progress:0")
            && info.contains("aof_rewrite_scheduled:0");
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Redis at {url} did not finish its AOF rewrite within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for Durable {
    fn drop(&mut self) {
        for (url, appendonly, appendfsync) in &self.restore {
            let Ok(mut connection) =
                redis::Client::open(url.as_str()).and_then(|client| client.get_connection())
            else {
                continue;
            };
            for (name, value) in [("appendonly", appendonly), ("appendfsync", appendfsync)] {
                let _ = redis::cmd("CONFIG")
                    .arg("SET")
                    .arg(name)
                    .arg(value)
                    .exec(&mut connection);
            }
        }
    }
}

/// librdkafka's bare consume rate: a plain consumer (default settings) reading `topic` from the
/// start of every partition to its end, doing nothing with the records; messages/s from the
/// first record to the last. Blocking: call it from `spawn_blocking`.
pub fn consume_rate(topic: &TestTopic) -> f64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka::brokers())
        .set("group.id", format!("{}-bare", topic.name))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut partitions = TopicPartitionList::new();
    let mut remaining = 0i64;
    for partition in 0..topic.partitions {
        let (low, high) = consumer
            .fetch_watermarks(&topic.name, partition, Duration::from_secs(10))
            .expect("watermarks");
        remaining += high - low;
        partitions
            .add_partition_offset(&topic.name, partition, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&partitions).expect("assigned");
    let total = remaining;
    let mut first = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while remaining > 0 {
        assert!(
            Instant::now() < deadline,
            "the bare consumer read {} of {total} records in 120 s",
            total - remaining
        );
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("a record");
            // Touch the payload, as any consumer would.
            std::hint::black_box(message.payload());
            first.get_or_insert_with(Instant::now);
            remaining -= 1;
        }
    }
    let took = first.map_or(Duration::ZERO, |first| first.elapsed());
    total as f64 / took.as_secs_f64()
}

/// The arguments converge passes to `COMPARE_AND_SET` per key for a new state (expected
/// revision 0): expected revision, expected writer, status, version, timestamp_ms, payload,
/// rule, position, the write's id — a state the size of a simulated order's.
const CAS_ARGS: [&str; CAS_ARGS_PER_KEY] = [
    "0",
    "0",
    "paid",
    "2",
    "1763971200000",
    r#"{"dishes":3,"paid_cents":4210,"table":12,"total_cents":4210}"#,
    "order-status@0.1.0",
    "converge-bench[0]@1",
    "9876543210987654321",
];

/// `redis-benchmark` running converge's own compare-and-set script (loaded from the crate's
/// constant) on fresh random keys under `prefix`, the way converge sends it on standalone
/// Redis: `keys_per_call` keys per call, `depth` keys per pipeline, `clients` connections.
/// Answers keys written per second.
pub fn cas_rate(
    prefix: &str,
    requests: usize,
    depth: usize,
    clients: usize,
    keys_per_call: usize,
) -> f64 {
    let url = redis_url();
    let mut connection = redis::Client::open(url.as_str())
        .and_then(|client| client.get_connection())
        .unwrap_or_else(|error| panic!("Redis at {url}: {error}"));
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(COMPARE_AND_SET)
        .query(&mut connection)
        .expect("the script loads");
    let port = url
        .rsplit(':')
        .next()
        .and_then(|port| port.trim_end_matches('/').parse::<u16>().ok())
        .unwrap_or(6379);
    let keys_per_call = keys_per_call.max(1);
    let calls = (requests / keys_per_call).max(1);
    let calls_per_pipeline = (depth / keys_per_call).max(1);
    // Every `__rand_int__` is replaced by its own random number: distinct keys per call.
    let keys = (0..keys_per_call).map(|_| format!("{prefix}__rand_int__"));
    let args = (0..keys_per_call).flat_map(|_| CAS_ARGS.iter().map(|arg| (*arg).to_owned()));
    let output = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-n", &calls.to_string(), "-c", &clients.to_string()])
        .args([
            "-P",
            &calls_per_pipeline.to_string(),
            "-r",
            "100000000",
            "--csv",
        ])
        .args(["EVALSHA", &sha, &keys_per_call.to_string()])
        .args(keys)
        .args(args)
        .output()
        .expect("redis-benchmark runs (Debian package redis-tools)");
    let text = String::from_utf8_lossy(&output.stdout);
    let calls_per_s = rps(&text).unwrap_or_else(|| {
        panic!(
            "no rate in redis-benchmark's output: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    calls_per_s * keys_per_call as f64
}

/// The `rps` column of `redis-benchmark --csv`. The test's name (the command line) may hold
/// commas and quotes of its own, so columns are counted from the end of the line.
fn rps(csv: &str) -> Option<f64> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next()?.split(',').collect();
    let from_end = header.len() - header.iter().position(|h| h.trim_matches('"') == "rps")?;
    let row: Vec<&str> = lines.next()?.split(',').collect();
    row.get(row.len().checked_sub(from_end)?)?
        .trim_matches('"')
        .parse()
        .ok()
}
