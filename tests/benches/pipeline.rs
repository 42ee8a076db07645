//! End to end, Kafka -> rule -> Redis, against the real broker and Redis on this machine, with
//! `converge serve`'s default configuration.
//!
//! Every run builds the pipeline as `serve` does, from a `Config` loaded from a minimal TOML
//! file (rule path, Kafka brokers, topic and group, Redis URL and key prefix, a Kafka
//! dead-letter topic, `[admin]`): `store.open()`, `dead_letter.build(..)`, `source.build(..)`,
//! `Pipeline::new(..).with_metrics(..)`, one `Metrics` registry shared by the rule control, the
//! source and the pipeline. No batch size, batch timeout or consumer property is set: the
//! figures are the defaults'. The bench only wraps the source to time the run and each
//! message's latency at its acknowledgement (after its write). Redis runs with AOF, `appendfsync
//! everysec`, on the standalone server and every cluster node (set at the start, restored at
//! the end).
//!
//! 1. **throughput**: a backlog of order changes (shuffled, 20% duplicated) is published, then
//!    drained; three times with the compiled component on the standalone Redis (each time a
//!    fresh topic, consumer group and key prefix: min, median, max), three times with the same
//!    rule compiled natively (the only change; alternating with the component's runs, median
//!    reported), once into the Redis Cluster. Events/s run from the
//!    first batch to the last acknowledgement (the group join is left out); every order must
//!    end on its final state. The acknowledged count is sampled every 250 ms (the lag series).
//! 2. **limits**, on the same machine: librdkafka's bare consume rate of a backlog topic (a
//!    plain consumer, start to end, no processing), and `redis-benchmark` running converge's
//!    own compare-and-set script at the pipeline depth and concurrency converge uses (the
//!    default `pipeline.batch_size`; as many clients as batches in flight — one until the
//!    pipeline has a `max_in_flight` setting).
//! 3. **latency**: `converge simulate --rate R --seconds S` in a process of its own publishes
//!    open-loop, stamping each record with its intended send time, while the pipeline runs.
//!    A message's latency is the acknowledgement of its batch minus that time, so a producer
//!    or consumer stall counts in full (no coordinated omission). Messages meant to be sent
//!    before the first batch plus 1 s are left out: joining the group is start-up.
//! 4. **swap**: the latency run again, while the rule is swapped between two equivalent
//!    versions every 200 ms; reports the pause each swap adds and the longest gap between
//!    acknowledgements, beside the same gap without swaps.
//! 5. **fluvio** (when `CONVERGE_BENCH_FLUVIO=host:port` names a Fluvio cluster's SC): the
//!    throughput backlog through a Fluvio topic and the Fluvio source.
//!
//! The report is printed and written to `target/bench/pipeline.json` (under the workspace
//! root), with the latency distribution and throughput over time drawn in
//! `target/bench/pipeline.svg`.
//!
//! `bash deploy/scripts/bench.sh` starts the services and runs this; or, with them running,
//! `cargo bench -p converge-tests --bench pipeline`. Sizes: `BENCH_ORDERS` (orders in each
//! backlog, default 40000; each yields ~2.9 changes, 20% of messages are duplicates),
//! `BENCH_RATE` (changes/s of the latency runs, default 10000), `BENCH_LATENCY_SECONDS`
//! (default 10), `BENCH_CAS_REQUESTS` (redis-benchmark calls, default 200000).

#[path = "pipeline/fluvio.rs"]
mod fluvio;
#[path = "pipeline/limits.rs"]
mod limits;
#[path = "pipeline/machine.rs"]
mod machine;
#[path = "pipeline/plot.rs"]
mod plot;
#[path = "pipeline/producer.rs"]
mod producer;
#[path = "pipeline/prom.rs"]
mod prom;
#[path = "pipeline/run.rs"]
mod run;
#[path = "pipeline/scenario.rs"]
mod scenario;

// The allocator `converge serve` runs with, so the bench measures the same data path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::Path;
use std::time::Duration;

use converge::config::KafkaSourceConfig;
use converge::pipeline::PipelineConfig;
use converge::store::KEYS_PER_CALL;
use converge_tests::build;
use converge_tests::services::unique_prefix;
use serde_json::{Value, json};

use machine::{load_average, report_dir};
use producer::Paced;
use run::{RuleFile, Run, StoreKind};
use scenario::{PacedRun, RuleKind, Swaps, backlog_run, paced_run};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Nearest-rank percentile of ascending `sorted`.
fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A run's latencies in ms, ascending.
fn sorted_latencies(run: &Run) -> Vec<i64> {
    let mut sorted: Vec<i64> = run.latencies_ms.iter().map(|(_, ms)| *ms).collect();
    sorted.sort_unstable();
    sorted
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

/// The batch-size histogram, time per stage and state-cache figures of one run, from its
/// metrics as the admin endpoint would serve them.
fn telemetry(run: &Run) -> (Value, Value, Value) {
    let samples = prom::samples(&run.metrics);
    let batches = prom::histogram(&samples, "converge_batch_messages");
    let batch_sizes = json!({
        "source": "converge_batch_messages",
        "batches": batches.count,
        "mean": batches.mean().map(|mean| round(mean, 1)),
        "buckets": batches.per_bucket().iter().map(|(le, count)| json!({
            "le": if le.is_finite() { json!(le) } else { json!("+Inf") },
            "batches": count,
        })).collect::<Vec<_>>(),
    });
    let stages = prom::histograms(&samples, "converge_stage_duration_seconds", "stage");
    let total: f64 = stages.values().map(|stage| stage.sum).sum();
    let stage_ms: serde_json::Map<String, Value> = stages
        .iter()
        .filter(|(_, stage)| stage.count > 0)
        .map(|(name, stage)| {
            (
                name.clone(),
                json!({
                    "mean_ms": round(stage.sum / stage.count as f64 * 1000.0, 3),
                    "batches": stage.count,
                    "share": if total > 0.0 { round(stage.sum / total, 3) } else { 0.0 },
                }),
            )
        })
        .collect();
    let hits = prom::total(&samples, "converge_cache_hits_total");
    let misses = prom::total(&samples, "converge_cache_misses_total");
    let cache = json!({
        "hits": hits,
        "misses": misses,
        "hit_ratio": (hits + misses > 0.0).then(|| round(hits / (hits + misses), 3)),
    });
    (batch_sizes, Value::Object(stage_ms), cache)
}

/// The sizes of the runs (environment overrides).
#[derive(Debug, Clone, Copy)]
struct Sizes {
    orders: usize,
    rate: u32,
    latency_seconds: u32,
    cas_requests: usize,
}

/// The defaults the runs use, read from the host's own types.
#[derive(Debug, Clone, Copy)]
struct Defaults {
    batch_size: usize,
    /// `pipeline.max_in_flight`, once the pipeline has it.
    max_in_flight: Option<u64>,
    batch_timeout_ms: u64,
}

impl Defaults {
    /// Read through serde, so that a setting added later (the batches in flight) is picked up
    /// without changing this file.
    fn read() -> Self {
        let pipeline = serde_json::to_value(PipelineConfig::default()).expect("defaults serialise");
        let kafka = serde_json::from_value::<KafkaSourceConfig>(json!({
            "brokers": "", "group_id": "", "topics": [],
        }))
        .expect("a Kafka source section with only its required settings");
        Self {
            batch_size: pipeline["batch_size"].as_u64().expect("a batch size") as usize,
            max_in_flight: pipeline.get("max_in_flight").and_then(Value::as_u64),
            batch_timeout_ms: kafka.batch_timeout_ms,
        }
    }

    /// redis-benchmark's connections: as many as batches converge has in flight.
    fn clients(&self) -> usize {
        self.max_in_flight.unwrap_or(1).max(1) as usize
    }
}

/// Everything measured, for the report and the plots.
struct Results {
    /// The three component runs on the standalone Redis, in run order.
    standalone: Vec<Run>,
    native: Run,
    cluster: Run,
    backlog_events: usize,
    consume_limit: f64,
    cas_limit: f64,
    paced: Run,
    producer: Paced,
    swapped: Run,
    swaps_offered: usize,
    /// Ascending.
    pauses: Vec<Duration>,
    fluvio: Option<f64>,
    load_at_start: Option<f64>,
}

impl Results {
    /// The standalone component runs' indexes, slowest first.
    fn by_rate(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.standalone.len()).collect();
        order.sort_by(|a, b| {
            self.standalone[*a]
                .events_per_s
                .total_cmp(&self.standalone[*b].events_per_s)
        });
        order
    }

    fn median(&self) -> &Run {
        let order = self.by_rate();
        &self.standalone[order[order.len() / 2]]
    }
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is a filter we do not support.
    let sizes = Sizes {
        orders: env_or("BENCH_ORDERS", 40_000),
        rate: env_or("BENCH_RATE", 10_000),
        latency_seconds: env_or("BENCH_LATENCY_SECONDS", 10),
        cas_requests: env_or("BENCH_CAS_REQUESTS", 200_000),
    };
    let defaults = Defaults::read();
    // As `converge serve` builds its runtime: a worker per core.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let results = runtime.block_on(measure(sizes, defaults));
    let (report, notes) = report(&results, sizes, defaults);
    for note in &notes {
        println!("note: {note}");
    }
    let text = serde_json::to_string_pretty(&report).expect("JSON");
    println!("{text}");
    let out = report_dir();
    std::fs::write(out.join("pipeline.json"), text + "\n").expect("report written");
    let svg = out.join("pipeline.svg");
    draw(&results, sizes, &svg);
    println!(
        "written to {} and {}",
        out.join("pipeline.json").display(),
        svg.display()
    );
    let median = results.median().events_per_s;
    let lower_limit = results.consume_limit.min(results.cas_limit);
    println!(
        "end to end: {median:.0} events/s with the component (median of 3), {:.0} natively, \
         {:.0} into the cluster; {:.0}% of the lower limit ({lower_limit:.0}/s); p99 {} ms at \
         {}/s",
        results.native.events_per_s,
        results.cluster.events_per_s,
        100.0 * median / lower_limit,
        report["p99_ms"],
        sizes.rate,
    );
}

/// Runs everything, in order, with Redis durable for the duration.
async fn measure(sizes: Sizes, defaults: Defaults) -> Results {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    // Built before anything is timed.
    let rule = build::rule("order-status");
    build::converge_binary();
    let v1 = std::fs::read(&rule).expect("rule");
    let v2 = std::fs::read(build::order_status_version("0.2.0-next")).expect("rule");
    let rule_file = RuleFile::new(rule.clone(), dir);
    let component = (&rule_file, RuleKind::Component);
    let native = (&rule_file, RuleKind::Native);
    let load_at_start = load_average();
    let durable = tokio::task::spawn_blocking(limits::Durable::everysec)
        .await
        .expect("AOF on");
    println!("redis: appendonly yes, appendfsync everysec (restored at the end)");

    // 1. Throughput over a backlog.
    let orders = sizes.orders;
    let mut standalone = Vec::new();
    let mut kept_topic = None;
    let mut backlog_events = 0;
    // Component and native runs alternate, so a drift of the machine's load hits both alike;
    // each figure is the median of its three runs.
    let mut natives = Vec::new();
    for index in 1..=3 {
        let name = format!("bench-{index}");
        let (run, events, topic) =
            backlog_run(dir, orders, component, StoreKind::Standalone, &name).await;
        backlog_events = events;
        standalone.push(run);
        kept_topic.get_or_insert(topic);
        let native_name = format!("bench-native-{index}");
        natives.push(
            backlog_run(dir, orders, native, StoreKind::Standalone, &native_name)
                .await
                .0,
        );
    }
    natives.sort_by(|a, b| a.events_per_s.total_cmp(&b.events_per_s));
    let native = natives.swap_remove(natives.len() / 2);
    let cluster = backlog_run(dir, orders, component, StoreKind::Cluster, "bench-cluster")
        .await
        .0;

    // 2. The limits.
    let topic = kept_topic.expect("a backlog topic");
    let consume_limit = tokio::task::spawn_blocking(move || limits::consume_rate(&topic))
        .await
        .expect("the bare consumer ran");
    println!("limit: librdkafka alone consumes {consume_limit:.0} messages/s");
    let cas_prefix = unique_prefix("bench-cas");
    let cas_keys = run::check_store(StoreKind::Standalone, &cas_prefix).await;
    let (depth, clients) = (defaults.batch_size, defaults.clients());
    let cas_limit = tokio::task::spawn_blocking(move || {
        limits::cas_rate(
            &cas_prefix,
            sizes.cas_requests,
            depth,
            clients,
            KEYS_PER_CALL,
        )
    })
    .await
    .expect("redis-benchmark ran");
    drop(cas_keys);
    println!(
        "limit: redis-benchmark runs the CAS script on {cas_limit:.0} keys/s \
         ({KEYS_PER_CALL} keys per call, {depth} keys per pipeline, {clients} clients)"
    );

    // 3. Latency at a fixed rate.
    let (rate, seconds) = (sizes.rate, sizes.latency_seconds);
    let PacedRun {
        run: paced,
        producer,
        ..
    } = paced_run(dir, &rule_file, (rate, seconds, 2), "bench-latency", None).await;
    let latencies = sorted_latencies(&paced);
    println!(
        "latency at {rate}/s (producer achieved {:.0}/s, at worst {:.1} ms behind schedule): \
         p50 {} ms, p99 {} ms, p99.9 {} ms over {} messages ({} left out as warm-up)",
        producer.achieved_rate(),
        producer.max_behind_schedule_ms,
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        percentile(&latencies, 99.9),
        latencies.len(),
        paced.warm_up,
    );

    // 4. Swaps under the same load.
    let swaps = Swaps {
        v1,
        v2,
        sidecar: None,
    };
    let PacedRun {
        run: swapped,
        offered: swaps_offered,
        pauses,
        ..
    } = paced_run(
        dir,
        &rule_file,
        (rate, seconds, 3),
        "bench-swap",
        Some(swaps),
    )
    .await;
    println!(
        "swaps: {} taken up of {swaps_offered} offered, pause p50 {:.3} ms, max {:.3} ms; \
         longest gap between acknowledgements {:.1} ms with swaps, {:.1} ms without",
        pauses.len(),
        ms(percentile(&pauses, 50.0)),
        ms(percentile(&pauses, 100.0)),
        ms(swapped.max_gap),
        ms(paced.max_gap),
    );

    // 5. The backlog through Fluvio, when a cluster is given.
    let fluvio = match std::env::var("CONVERGE_BENCH_FLUVIO") {
        Ok(endpoint) => {
            let run = fluvio::throughput(dir, &rule, &endpoint, orders).await;
            println!("fluvio: {:.0} events/s", run.events_per_s);
            Some(run.events_per_s)
        }
        Err(_) => None,
    };
    drop(durable);
    Results {
        standalone,
        native,
        cluster,
        backlog_events,
        consume_limit,
        cas_limit,
        paced,
        producer,
        swapped,
        swaps_offered,
        pauses,
        fluvio,
        load_at_start,
    }
}

/// The report (`target/bench/pipeline.json`), and notes on reading it.
fn report(results: &Results, sizes: Sizes, defaults: Defaults) -> (Value, Vec<String>) {
    let median = results.median();
    let events_per_s = median.events_per_s;
    let order = results.by_rate();
    let (min, max) = (
        results.standalone[order[0]].events_per_s,
        results.standalone[order[order.len() - 1]].events_per_s,
    );
    let (native, cluster) = (&results.native, &results.cluster);
    let lower_limit = results.consume_limit.min(results.cas_limit);
    let latencies = sorted_latencies(&results.paced);
    let pause_ms = |p: f64| round(ms(percentile(&results.pauses, p)), 3);
    let (batch_sizes, stage_ms, cache) = telemetry(median);
    let stored = prom::histogram(
        &prom::samples(&results.paced.metrics),
        "converge_event_to_stored_seconds",
    );
    let lag_series: Vec<Value> = median
        .series
        .iter()
        .map(|tick| {
            json!({
                "t_s": round(tick.t_s, 3),
                "acked": tick.acked,
                "lag": results.backlog_events.saturating_sub(tick.acked),
                "in_flight": tick.in_flight,
            })
        })
        .collect();
    let clients = defaults.clients();
    let batch_size = defaults.batch_size;
    let settings = json!({
        "config": "serve's defaults: only rule, source, store, dead_letter and admin set",
        "batch_size": batch_size,
        "batch_timeout_ms": defaults.batch_timeout_ms,
        "max_in_flight": defaults.max_in_flight,
        "cas_benchmark": format!(
            "redis-benchmark EVALSHA of {KEYS_PER_CALL} keys, -P {} -c {clients}",
            (batch_size / KEYS_PER_CALL).max(1)
        ),
        "redis": "appendonly yes, appendfsync everysec",
        "latency_warm_up_ms": run::WARM_UP_MS,
        "lag_sample_ms": run::SAMPLE_EVERY.as_millis() as u64,
        "cores": std::thread::available_parallelism().map_or(0, usize::from),
        "load_average": { "at_start": results.load_at_start, "at_end": load_average() },
    });
    let run_sizes = json!({
        "orders": sizes.orders,
        "backlog_events": results.backlog_events,
        "latency_seconds": sizes.latency_seconds,
        "latency_events": results.paced.acked,
        "latency_measured": latencies.len(),
        "latency_warm_up_left_out": results.paced.warm_up,
        "cas_requests": sizes.cas_requests,
    });
    let latency = json!({
        "metrics_event_to_stored_mean_ms": stored.mean().map(|mean| round(mean * 1000.0, 1)),
        "group_joined_after_s": round(results.paced.first_batch_s, 2),
        "longest_ack_gap_ms": round(ms(results.paced.max_gap), 1),
        "producer_max_behind_schedule_ms": round(results.producer.max_behind_schedule_ms, 1),
    });
    let swap = json!({
        "swaps_offered": results.swaps_offered,
        "swaps_taken_up": results.pauses.len(),
        "pause_p50_ms": pause_ms(50.0),
        "pause_max_ms": pause_ms(100.0),
        "p99_ms_with_swaps": percentile(&sorted_latencies(&results.swapped), 99.0),
        "longest_ack_gap_with_swaps_ms": round(ms(results.swapped.max_gap), 1),
        "longest_ack_gap_without_swaps_ms": round(ms(results.paced.max_gap), 1),
    });
    let runs: Vec<f64> = results
        .standalone
        .iter()
        .map(|run| run.events_per_s.round())
        .collect();
    let report = json!({
        "events_per_s": events_per_s.round(),
        "events_per_s_min": min.round(),
        "events_per_s_max": max.round(),
        "events_per_s_runs": runs,
        "native_events_per_s": native.events_per_s.round(),
        "cluster_events_per_s": cluster.events_per_s.round(),
        "fluvio_events_per_s": results.fluvio.map(f64::round),
        "component_vs_native": round(events_per_s / native.events_per_s, 3),
        "cluster_vs_standalone": round(cluster.events_per_s / events_per_s, 3),
        "consume_limit_per_s": results.consume_limit.round(),
        "cas_limit_per_s": results.cas_limit.round(),
        "vs_lower_limit": round(events_per_s / lower_limit, 3),
        "p50_ms": percentile(&latencies, 50.0),
        "p99_ms": percentile(&latencies, 99.0),
        "p999_ms": percentile(&latencies, 99.9),
        "latency_max_ms": latencies.last().copied().unwrap_or(0),
        "latency_rate_per_s": sizes.rate,
        "producer_rate_per_s": results.producer.achieved_rate().round(),
        "swap_pause_max_ms": pause_ms(100.0),
        "lag_series": lag_series,
        "batch_size_histogram": batch_sizes,
        "stage_ms": stage_ms,
        "cache": cache,
        "pipeline_stats": median.stats,
        "sizes": run_sizes,
        "latency": latency,
        "swap": swap,
        "settings": settings,
    });
    let mut notes = vec![
        "events/s run from the first batch to the last acknowledgement: joining the group is \
         left out"
            .to_owned(),
        format!(
            "latency: messages meant to be sent before the first batch plus {} ms are left out \
             as warm-up",
            run::WARM_UP_MS
        ),
        "the machine's cores are shared by the broker, Redis, the producer, converge and \
         whatever else runs: see settings.load_average"
            .to_owned(),
    ];
    if stage_ms.as_object().is_some_and(serde_json::Map::is_empty) {
        notes.push(
            "stage_ms is empty: this pipeline records no converge_stage_duration_seconds"
                .to_owned(),
        );
    }
    if defaults.max_in_flight.is_none() {
        notes.push(
            "pipeline.max_in_flight does not exist (one batch at a time): redis-benchmark runs \
             with 1 client"
                .to_owned(),
        );
    }
    let mut report = report;
    report["notes"] = json!(notes);
    (report, notes)
}

/// `target/bench/pipeline.svg`.
fn draw(results: &Results, sizes: Sizes, svg: &Path) {
    use plotters::style::RGBColor;
    let shades = [
        RGBColor(70, 110, 180),
        RGBColor(110, 150, 215),
        RGBColor(150, 185, 240),
    ];
    let acked: Vec<Vec<(f64, usize)>> = results
        .standalone
        .iter()
        .chain([&results.native, &results.cluster])
        .map(|run| {
            run.series
                .iter()
                .map(|tick| (tick.t_s, tick.acked))
                .collect()
        })
        .collect();
    let mut lines: Vec<plot::Line<'_>> = results
        .standalone
        .iter()
        .zip(shades)
        .enumerate()
        .map(|(index, (run, color))| plot::Line {
            label: format!(
                "component, standalone, run {} ({:.0}/s)",
                index + 1,
                run.events_per_s
            ),
            color,
            acked: &acked[index],
        })
        .collect();
    lines.push(plot::Line {
        label: format!("native, standalone ({:.0}/s)", results.native.events_per_s),
        color: RGBColor(40, 140, 60),
        acked: &acked[3],
    });
    lines.push(plot::Line {
        label: format!("component, cluster ({:.0}/s)", results.cluster.events_per_s),
        color: RGBColor(230, 140, 20),
        acked: &acked[4],
    });
    let latencies = sorted_latencies(&results.paced);
    let marks = [
        ("p50", percentile(&latencies, 50.0)),
        ("p99", percentile(&latencies, 99.0)),
        ("p99.9", percentile(&latencies, 99.9)),
    ];
    plot::draw(
        svg,
        &plot::Latency {
            sorted_ms: &latencies,
            by_send: &results.paced.latencies_ms,
            rate: sizes.rate,
            marks,
        },
        &lines,
    )
    .expect("the plot is drawn");
}
