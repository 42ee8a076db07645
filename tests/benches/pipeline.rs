//! End to end, Kafka -> rule -> Redis, against the real broker and Redis on this machine, in one
//! run:
//!
//! 1. **throughput**: the simulator publishes a backlog of order changes (shuffled, 20%
//!    duplicated); the pipeline drains it once with the compiled component and once with the
//!    same rule compiled natively (separate consumer groups and key prefixes). Reports events/s
//!    and the ratio, and checks that every order ended on its final state.
//! 2. **latency**: the simulator publishes at a fixed rate while the pipeline (component) runs;
//!    reports event-to-stored latency percentiles — from the producer's timestamp to the
//!    acknowledgement after the write.
//! 4. **swap**: the latency run again, while the rule is swapped between two equivalent versions
//!    every 200 ms; reports the pause each swap adds (taking up the new rule between batches
//!    plus the first call on it) and the longest gap between acknowledgements, against the
//!    same gap in run 2 without swaps.
//! 5. **fluvio** (when `CONVERGE_BENCH_FLUVIO=host:port` names a cluster): the throughput
//!    run's backlog again, through a Fluvio topic and the Fluvio source; reports events/s
//!    beside run 1's Kafka figure.
//! 3. **store**: converge's pipelined compare-and-set writes (batches as the pipeline sends them)
//!    against `redis-benchmark` running the same Lua script, pipelined, on the same server.
//!
//! The report is printed and written to `target/bench/pipeline.json`
//! (`kafka_events_per_s`, `fluvio_events_per_s` at the top).
//!
//! `bash deploy/scripts/bench.sh` starts the services and runs this; or, with them running,
//! `cargo bench -p converge-tests --bench pipeline`. Sizes: `BENCH_ORDERS` (default 40000),
//! `BENCH_RATE` (changes/s for the latency run, default 10000), `BENCH_LATENCY_SECONDS`
//! (default 6).

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use converge::config::KafkaSourceConfig;
use converge::dead_letter::MemoryDeadLetters;
use converge::entity::Decision;
use converge::entity::{Event, State};
use converge::pipeline::{Pipeline, PipelineConfig};
use converge::rule::DecideError;
use converge::rule::Rule;
use converge::rule::{EngineLimits, RuleEngine};
use converge::rule::{GateConfig, Gates};
use converge::simulator::{Publisher, Simulator, SimulatorConfig};
use converge::source::KafkaSource;
use converge::source::Message;
use converge::source::{Source, SourceError};
use converge::store::{COMPARE_AND_SET, RedisStore};
use converge::store::{Store, Write, WriteOutcome};
use converge::swap::{Role, RuleControl};
use converge::telemetry::Metrics;
use converge_tests::kafka::{self, TestTopic};
use converge_tests::services::{TestStore, redis_url};
use converge_tests::{Convergence, NativeOrderRule, build};
use tokio::sync::watch;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// A source that ends once `target` messages are acknowledged, timing the run and recording
/// each message's event-to-stored latency at its acknowledgement.
///
/// The target is a watch: under a paced producer it is only known once the producer is done,
/// and by then the consumer may have taken everything and be waiting for a message that will
/// never come, so the wait has to wake up when the target arrives.
struct Measured<S> {
    inner: S,
    target: watch::Receiver<usize>,
    acked: usize,
    first: Option<Instant>,
    /// Unix ms when the first batch arrived: messages produced before it waited for the
    /// consumer to join its group, which is start-up, not latency.
    first_ms: Option<i64>,
    last: Option<Instant>,
    latencies_ms: Vec<i64>,
    /// The longest time between two acknowledgements: the longest processing gap.
    max_gap: Duration,
}

/// Messages produced this soon after the first batch still carry the group join's delay.
const WARM_UP_MS: i64 = 1_000;

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

impl<S> Measured<S> {
    fn new(inner: S, target: watch::Receiver<usize>) -> Self {
        Self {
            inner,
            target,
            acked: 0,
            first: None,
            first_ms: None,
            last: None,
            latencies_ms: Vec::new(),
            max_gap: Duration::ZERO,
        }
    }

    fn events_per_second(&self) -> f64 {
        match (self.first, self.last) {
            (Some(first), Some(last)) => self.acked as f64 / (last - first).as_secs_f64(),
            _ => 0.0,
        }
    }
}

impl<S: Source> Source for Measured<S> {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Message>, SourceError> {
        let acked = self.acked;
        let mut target = self.target.clone();
        let reached = async move {
            // A sender dropped before the target is reached means the producer failed; its
            // task's panic ends the run, so keep waiting for messages here.
            if target.wait_for(|target| acked >= *target).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        // Abandoning a half-collected batch is safe only because the target is reached: every
        // published message is acknowledged, so there is nothing left to collect.
        let batch = tokio::select! {
            biased;
            () = reached => return Ok(Vec::new()),
            batch = self.inner.next_batch(max) => batch?,
        };
        self.first.get_or_insert_with(Instant::now);
        self.first_ms.get_or_insert_with(unix_ms);
        Ok(batch)
    }

    async fn ack(&mut self, batch: &[Message]) -> Result<(), SourceError> {
        self.inner.ack(batch).await?;
        let now_ms = unix_ms();
        let warm_from = self.first_ms.unwrap_or(now_ms) + WARM_UP_MS;
        self.latencies_ms.extend(
            batch
                .iter()
                .filter_map(|m| m.produced_at_ms)
                .filter(|produced| *produced >= warm_from)
                .map(|produced| now_ms - produced),
        );
        self.acked += batch.len();
        let now = Instant::now();
        if let Some(last) = self.last {
            self.max_gap = self.max_gap.max(now - last);
        }
        self.last = Some(now);
        Ok(())
    }
}

fn kafka_source(topic: &str, group: &str) -> KafkaSource {
    KafkaSource::subscribe(
        &KafkaSourceConfig {
            brokers: kafka::brokers(),
            group_id: group.to_owned(),
            topics: vec![topic.to_owned()],
            batch_timeout_ms: 5,
            properties: std::env::var("BENCH_CONSUMER")
                .ok()
                .map(|list| {
                    list.split(',')
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect()
                })
                .unwrap_or_default(),
        },
        Arc::new(Metrics::new()),
    )
    .expect("consumer")
}

/// A swappable rule that times each swap's pause: taking up the new rule in `before_batch`
/// and the first call on it (which instantiates it).
struct TimedSwaps<R> {
    inner: R,
    pending: Option<Duration>,
    pauses: Vec<Duration>,
}

impl<R: Rule> Rule for TimedSwaps<R> {
    fn info(&self) -> &converge::entity::RuleInfo {
        self.inner.info()
    }

    fn before_batch(&mut self) {
        let before = self.inner.info().stamp();
        let started = Instant::now();
        self.inner.before_batch();
        if self.inner.info().stamp() != before {
            self.pending = Some(started.elapsed());
        }
    }

    fn decide(
        &mut self,
        current: Option<&State>,
        incoming: &Event,
    ) -> Result<Decision, DecideError> {
        self.inner.decide(current, incoming)
    }

    fn decide_batch(
        &mut self,
        items: &[(Option<State>, Event)],
    ) -> Result<Vec<Decision>, DecideError> {
        let Some(taken_up) = self.pending.take() else {
            return self.inner.decide_batch(items);
        };
        // The first call on a new rule instantiates it: that is part of the swap's pause.
        let started = Instant::now();
        let first = self.inner.decide_batch(&items[..1]);
        self.pauses.push(taken_up + started.elapsed());
        let mut decisions = first?;
        decisions.extend(self.inner.decide_batch(&items[1..])?);
        Ok(decisions)
    }
}

fn pipeline_config() -> PipelineConfig {
    PipelineConfig {
        batch_size: 1024,
        ..PipelineConfig::default()
    }
}

/// Drains `target` messages of `topic` through `rule` into `store`.
async fn drain<R: Rule>(
    rule: R,
    store: &RedisStore,
    topic: &str,
    group: &str,
    target: watch::Receiver<usize>,
) -> Measured<KafkaSource> {
    drain_source(rule, store, kafka_source(topic, group), target).await
}

/// Drains `target` messages of `source` through `rule` into `store`.
async fn drain_source<R: Rule, S: Source>(
    rule: R,
    store: &RedisStore,
    source: S,
    target: watch::Receiver<usize>,
) -> Measured<S> {
    let mut source = Measured::new(source, target);
    let mut pipeline = Pipeline::new(
        rule,
        store.clone(),
        MemoryDeadLetters::new(),
        pipeline_config(),
    );
    pipeline
        .run(&mut source, std::future::pending())
        .await
        .expect("the pipeline runs");
    assert!(
        pipeline.dead_letters().letters().is_empty(),
        "nothing in a simulated stream is bad"
    );
    source
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

async fn simulate_into(topic: &str, config: SimulatorConfig) -> converge::simulator::Summary {
    let publisher = Publisher::kafka(&kafka::brokers(), topic, &BTreeMap::new()).expect("producer");
    Simulator::new(config, publisher)
        .run()
        .await
        .expect("simulated")
}

/// A `Write` into a buffer the caller keeps: the simulator's JSON lines, collected.
#[derive(Clone, Default)]
struct Collected(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Collected {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The throughput run's backlog again, through a Fluvio topic of as many partitions and the
/// Fluvio source (`serve`'s settings); returns events/s. The simulator run again with the same
/// seed publishes the same messages as lines, which are produced to Fluvio keyed by order
/// before the clock starts.
async fn fluvio_throughput(
    endpoint: &str,
    orders: usize,
    backlog: &converge::simulator::Summary,
    compiled: &converge::rule::CompiledRule,
) -> f64 {
    use fluvio::metadata::topic::TopicSpec;

    let lines = Collected::default();
    let again = Simulator::new(
        SimulatorConfig {
            orders,
            duplicate_percent: 20,
            shuffle_window: 1024,
            ..SimulatorConfig::default()
        },
        Publisher::Lines(Box::new(lines.clone())),
    )
    .run()
    .await
    .expect("simulated");
    // Same seed, same orders and messages in the same order; only the timestamps, taken as
    // the simulator runs, differ, so this run is checked against its own final states.
    assert_eq!(
        again.published, backlog.published,
        "the simulator is deterministic"
    );
    let lines = std::mem::take(
        &mut *lines
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );

    let cluster = fluvio::FluvioClusterConfig::new(endpoint);
    let client = fluvio::Fluvio::connect_with_config(&cluster)
        .await
        .expect("the Fluvio cluster answers");
    let topic = format!("converge-bench-{:016x}", rand::random::<u64>());
    let admin = client.admin().await;
    admin
        .create(topic.clone(), false, TopicSpec::new_computed(6, 1, None))
        .await
        .expect("topic created");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let producer = client.topic_producer(&topic).await.expect("producer");
    for line in lines.split(|b| *b == b'\n').filter(|line| !line.is_empty()) {
        let key = serde_json::from_slice::<serde_json::Value>(line)
            .ok()
            .and_then(|body| body.get("key")?.as_str().map(str::to_owned))
            .expect("every simulated message has a key");
        producer.send(key, line.to_vec()).await.expect("sent");
    }
    producer.flush().await.expect("flushed");

    let store = TestStore::standalone("bench-fluvio").await;
    let (_fixed_target, target) = watch::channel(backlog.published as usize);
    let source = converge::source::FluvioSource::connect(
        &converge::config::FluvioSourceConfig {
            endpoint: Some(endpoint.to_owned()),
            tls: None,
            topic: topic.clone(),
            partitions: Vec::new(),
            consumer: format!("{topic}-bench"),
            fetch_max_bytes: converge::config::DEFAULT_FETCH_MAX_BYTES,
            batch_timeout_ms: 20,
        },
        &pipeline_config(),
        Arc::new(Metrics::new()),
    )
    .await
    .expect("the Fluvio source starts");
    let measured = drain_source(compiled.instance(), &store.store, source, target).await;
    let rate = measured.events_per_second();
    measured.inner.close().await;
    Convergence::new(&store.store, &again.expected)
        .assert_now()
        .await;
    let _ = admin.delete::<TopicSpec>(topic).await;
    rate
}

/// converge's own pipelined CAS writes: `count` fresh keys in batches of `batch`.
async fn store_write_rate(store: &RedisStore, count: usize, batch: usize) -> f64 {
    let state = |n: usize| State {
        key: format!("w{n}"),
        status: "paid".to_owned(),
        version: 2,
        timestamp_ms: 1_763_971_200_000,
        payload: r#"{"table":12}"#.to_owned(),
    };
    let started = Instant::now();
    for start in (0..count).step_by(batch) {
        let writes: Vec<Write> = (start..(start + batch).min(count))
            .map(|n| Write {
                key: state(n).key.clone(),
                expected_revision: 0,
                expected_writer: 0,
                writer: converge::store::new_writer_id(),
                state: state(n),
                rule: "order-status@0.1.0".to_owned(),
                position: format!("bench[0]@{n}"),
            })
            .collect();
        let outcomes = store.write(&writes).await.expect("writes");
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, WriteOutcome::Written { .. }))
        );
    }
    count as f64 / started.elapsed().as_secs_f64()
}

/// `redis-benchmark` running the same script on fresh random keys, pipelined.
fn redis_benchmark_rate(sha: &str, prefix: &str, count: usize, pipeline: usize) -> f64 {
    let port = redis_url()
        .rsplit(':')
        .next()
        .and_then(|port| port.trim_end_matches('/').parse::<u16>().ok())
        .unwrap_or(6379);
    let output = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-n", &count.to_string(), "-c", "50", "-r", "100000000"])
        .args(["-P", &pipeline.to_string(), "--csv"])
        .args(["EVALSHA", sha, "1", &format!("{prefix}rb:__rand_int__")])
        .args(["0", "paid", "2", "1763971200000", r#"{"table":12}"#])
        .args(["order-status@0.1.0", "bench[0]@1"])
        .output()
        .expect("redis-benchmark runs (Debian package redis-tools)");
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(',');
            let _test = fields.next()?;
            fields.next()?.trim_matches('"').parse::<f64>().ok()
        })
        .next()
        .unwrap_or_else(|| panic!("no rate in redis-benchmark's output: {text}"))
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is a filter we do not support.
    let orders: usize = env_or("BENCH_ORDERS", 40_000);
    let rate: u32 = env_or("BENCH_RATE", 10_000);
    let latency_seconds: u32 = env_or("BENCH_LATENCY_SECONDS", 6);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let compiled = RuleEngine::new(EngineLimits::default())
            .expect("engine")
            .compile_file(&build::rule("order-status"))
            .expect("rule loads");

        // 1. Throughput over a backlog.
        let topic = TestTopic::create("bench", 6).await;
        let backlog = simulate_into(
            &topic.name,
            SimulatorConfig {
                orders,
                duplicate_percent: 20,
                shuffle_window: 1024,
                ..SimulatorConfig::default()
            },
        )
        .await;
        let (_fixed_target, target) = watch::channel(backlog.published as usize);
        let wasm_store = TestStore::standalone("bench-wasm").await;
        let wasm = drain(
            compiled.instance(),
            &wasm_store.store,
            &topic.name,
            &format!("{}-wasm", topic.name),
            target.clone(),
        )
        .await;
        Convergence::new(&wasm_store.store, &backlog.expected)
            .assert_now()
            .await;
        let native_store = TestStore::standalone("bench-native").await;
        let native = drain(
            NativeOrderRule::default(),
            &native_store.store,
            &topic.name,
            &format!("{}-native", topic.name),
            target.clone(),
        )
        .await;
        Convergence::new(&native_store.store, &backlog.expected)
            .assert_now()
            .await;
        drop(wasm_store);
        drop(native_store);

        // 5. The same backlog through the Fluvio source, when a cluster is given.
        let fluvio = match std::env::var("CONVERGE_BENCH_FLUVIO") {
            Ok(endpoint) => {
                let run = fluvio_throughput(&endpoint, orders, &backlog, &compiled).await;
                println!(
                    "fluvio: {:.0} events/s against {:.0} through Kafka ({:.1}%)",
                    run,
                    wasm.events_per_second(),
                    100.0 * run / wasm.events_per_second()
                );
                Some(run)
            }
            Err(_) => None,
        };

        // 2. Latency at a fixed rate.
        let paced = TestTopic::create("bench-latency", 6).await;
        let latency_store = TestStore::standalone("bench-latency").await;
        let (report_target, target) = watch::channel(usize::MAX);
        let producer = {
            let topic = paced.name.clone();
            let target = report_target;
            let orders = (rate as usize * latency_seconds as usize) / 3;
            tokio::spawn(async move {
                let summary = simulate_into(
                    &topic,
                    SimulatorConfig {
                        orders,
                        rate,
                        duplicate_percent: 0,
                        shuffle_window: 1,
                        seed: 2,
                        ..SimulatorConfig::default()
                    },
                )
                .await;
                target.send_replace(summary.published as usize);
                summary
            })
        };
        let paced_run = drain(
            compiled.instance(),
            &latency_store.store,
            &paced.name,
            &format!("{}-group", paced.name),
            target.clone(),
        )
        .await;
        let paced_summary = producer.await.expect("the simulator ran");
        Convergence::new(&latency_store.store, &paced_summary.expected)
            .assert_now()
            .await;
        drop(latency_store);
        let mut latencies = paced_run.latencies_ms.clone();
        latencies.sort_unstable();

        // 4. Swaps under the same load: two equivalent versions, alternating every 200 ms. Both
        // are gated once beforehand, as a fleet instance gates a version once.
        let v1 = std::fs::read(build::rule("order-status")).expect("rule");
        let v2 = std::fs::read(build::order_status_version("0.2.0-next")).expect("rule");
        let gates = Gates::new(
            RuleEngine::new(EngineLimits::default()).expect("engine"),
            GateConfig::default(),
        );
        let initial = gates.admit(&v1, None).expect("gates");
        let control = Arc::new(RuleControl::new(
            gates,
            initial,
            "bench",
            Arc::new(Metrics::new()),
        ));
        control.offer(&v2, None, "bench", Role::Active).expect("v2");
        control.offer(&v1, None, "bench", Role::Active).expect("v1");
        let swapped = TestTopic::create("bench-swap", 6).await;
        let swap_store = TestStore::standalone("bench-swap").await;
        let (report_target, target) = watch::channel(usize::MAX);
        let producer = {
            let topic = swapped.name.clone();
            let target = report_target;
            let orders = (rate as usize * latency_seconds as usize) / 3;
            tokio::spawn(async move {
                let summary = simulate_into(
                    &topic,
                    SimulatorConfig {
                        orders,
                        rate,
                        duplicate_percent: 0,
                        shuffle_window: 1,
                        seed: 3,
                        ..SimulatorConfig::default()
                    },
                )
                .await;
                target.send_replace(summary.published as usize);
                summary
            })
        };
        let swapper = {
            let control = Arc::clone(&control);
            // The producer is done once it has reported its count.
            let producing = target.clone();
            tokio::spawn(async move {
                let mut swaps = 0usize;
                while *producing.borrow() == usize::MAX {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let next = if swaps.is_multiple_of(2) { &v2 } else { &v1 };
                    control
                        .offer(next, None, "bench", Role::Active)
                        .expect("swap");
                    swaps += 1;
                }
                swaps
            })
        };
        let timed = TimedSwaps {
            inner: control.rule(),
            pending: None,
            pauses: Vec::new(),
        };
        let mut swap_source = Measured::new(
            kafka_source(&swapped.name, &format!("{}-group", swapped.name)),
            target.clone(),
        );
        let mut pipeline = Pipeline::new(
            timed,
            swap_store.store.clone(),
            MemoryDeadLetters::new(),
            pipeline_config(),
        );
        pipeline
            .run(&mut swap_source, std::future::pending())
            .await
            .expect("the pipeline runs");
        let swap_summary = producer.await.expect("the simulator ran");
        let swaps = swapper.await.expect("the swapper ran");
        Convergence::new(&swap_store.store, &swap_summary.expected)
            .assert_now()
            .await;
        drop(swap_store);
        let mut pauses = pipeline.rule().pauses.clone();
        pauses.sort_unstable();
        let pause_ms = |p: f64| {
            pauses
                .get(((pauses.len() as f64 - 1.0) * p / 100.0).round() as usize)
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };

        // Printed now as well: the store run below can take a while.
        println!(
            "swaps: {} taken up under load, pause p50 {:.3} ms, max {:.3} ms; longest gap between \
             batches {:.1} ms with swaps, {:.1} ms without",
            pauses.len(),
            pause_ms(50.0),
            pause_ms(100.0),
            swap_source.max_gap.as_secs_f64() * 1000.0,
            paced_run.max_gap.as_secs_f64() * 1000.0,
        );

        // 3. The store against redis-benchmark, same script.
        let store_bench = TestStore::standalone("bench-store").await;
        let writes = 100_000;
        let converge_rate = store_write_rate(&store_bench.store, writes, 1024).await;
        let client = redis::Client::open(redis_url()).expect("redis url");
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis connects");
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(COMPARE_AND_SET)
            .query_async(&mut connection)
            .await
            .expect("script loads");
        let prefix = store_bench.store.prefix().to_owned();
        let benchmark_16 = redis_benchmark_rate(&sha, &prefix, writes, 16);
        let benchmark_64 = redis_benchmark_rate(&sha, &prefix, writes, 64);
        drop(store_bench);

        let report = serde_json::json!({
            "kafka_events_per_s": wasm.events_per_second().round(),
            "fluvio_events_per_s": fluvio.map(f64::round),
            "fluvio_over_kafka": fluvio.map(|fluvio| fluvio / wasm.events_per_second()),
            "throughput": {
                "events": backlog.published,
                "orders": backlog.orders,
                "component_events_per_s": wasm.events_per_second().round(),
                "native_events_per_s": native.events_per_second().round(),
                "component_over_native": wasm.events_per_second() / native.events_per_second(),
            },
            "latency": {
                "rate_changes_per_s": rate,
                "events": paced_run.acked,
                "achieved_events_per_s": paced_run.events_per_second().round(),
                "p50_ms": percentile(&latencies, 50.0),
                "p99_ms": percentile(&latencies, 99.0),
                "max_ms": latencies.last().copied().unwrap_or(0),
            },
            "swap": {
                "swaps_offered": swaps,
                "swaps_taken_up": pauses.len(),
                "pause_p50_ms": pause_ms(50.0),
                "pause_max_ms": pause_ms(100.0),
                "longest_ack_gap_with_swaps_ms": swap_source.max_gap.as_secs_f64() * 1000.0,
                "longest_ack_gap_without_swaps_ms": paced_run.max_gap.as_secs_f64() * 1000.0,
            },
            "store": {
                "converge_cas_writes_per_s": converge_rate.round(),
                "redis_benchmark_cas_p16_per_s": benchmark_16.round(),
                "redis_benchmark_cas_p64_per_s": benchmark_64.round(),
                "converge_over_redis_benchmark_p16": converge_rate / benchmark_16,
            },
        });
        let report_text = serde_json::to_string_pretty(&report).expect("JSON");
        println!("{report_text}");
        let dir = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(
                || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
                std::path::PathBuf::from,
            )
            .join("bench");
        std::fs::create_dir_all(&dir).expect("target/bench");
        std::fs::write(dir.join("pipeline.json"), report_text + "\n").expect("report written");
        println!("written to {}", dir.join("pipeline.json").display());
        println!(
            "end to end: {:.0} events/s with the component, {:.0} natively ({:.1}%); \
             p99 event-to-stored {} ms at {} changes/s; \
             CAS writes {:.0}/s = {:.1}% of redis-benchmark -P 16 ({:.0}/s)",
            wasm.events_per_second(),
            native.events_per_second(),
            100.0 * wasm.events_per_second() / native.events_per_second(),
            percentile(&latencies, 99.0),
            rate,
            converge_rate,
            100.0 * converge_rate / benchmark_16,
            benchmark_16,
        );
    });
}
