//! What each rule language costs: the order-status rule written in Rust (`plugin/`), Go
//! (`plugin/go`), Python (`plugin/python`) and JavaScript (`plugin/js`), each built by its own
//! project, measured the same way.
//!
//! `bash deploy/scripts/bench.sh rules` (starts Redis and Kafka, then runs this), or with them
//! running `cargo bench -p converge-tests --bench rules`. The report goes to
//! `target/bench/rules.json` (under the workspace root), the bars to `target/bench/rules.svg`.
//!
//! Per language:
//! 1. **size** of the component, and **load**: compiling it into a fresh engine with no
//!    compile cache (cold: `RuleEngine::compile`, which also links it and asks its info, as
//!    every load does), filling an empty compile cache, then loading it from that cache in
//!    another engine (a restart, or a second instance);
//! 2. **instantiate**: a fresh instance of the compiled rule (`WasmRule::instantiate`), the
//!    drop of one, and the first `decide` on a fresh instance;
//! 3. **decide**: ns per `decide` call and events/s through `decide-batch` on a long-lived
//!    instance, at batch sizes 1 to 512 (the pipeline's default batch is 512 messages); with
//!    an empty and a 4 KiB payload; and with a fresh instance per batch. These say where an
//!    interpreter's time goes (see `notes` per language in the report);
//! 4. **pipeline**: a backlog of `BENCH_RULES_ORDERS` orders (default 20000, ~2.9 changes
//!    each, 20% duplicated) drained Kafka -> rule -> Redis by the pipeline `serve` builds
//!    (`pipeline/scenario.rs`, shared with `pipeline.rs`), every order checked at the end;
//! 5. **swap pause**: `converge simulate` publishes `BENCH_RULES_RATE` changes/s (default
//!    2000) for `BENCH_RULES_SECONDS` (default 8) while the rule is swapped every 200 ms
//!    between two versions of the same component (the second carries one more custom
//!    section: other bytes, other hash, same behaviour), both gated beforehand; the pause is
//!    the time the pipeline's task spends taking the new version up and on its first call, as
//!    `pipeline.json`'s `swap_pause_max_ms`.
//!
//! Ratios to Rust are per decision, from one run. The machine's cores are shared by the
//! broker, Redis, the producer and whatever else runs: compare the ratios, not the absolutes.

#[path = "pipeline/machine.rs"]
mod machine;
#[path = "pipeline/producer.rs"]
#[allow(
    dead_code,
    reason = "shared with pipeline.rs, which uses what this bench does not"
)]
mod producer;
#[path = "pipeline/prom.rs"]
#[allow(
    dead_code,
    reason = "shared with pipeline.rs, which uses what this bench does not"
)]
mod prom;
#[path = "rules/report.rs"]
mod report;
#[path = "pipeline/run.rs"]
#[allow(
    dead_code,
    reason = "shared with pipeline.rs, which uses what this bench does not"
)]
mod run;
#[path = "pipeline/scenario.rs"]
#[allow(
    dead_code,
    reason = "shared with pipeline.rs, which uses what this bench does not"
)]
mod scenario;

// The allocator `converge serve` runs with, so the bench measures the same data path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::borrow::Cow;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use converge::entity::{Event, State};
use converge::rule::vectors::VectorFile;
use converge::rule::{
    CompileCache, CompiledRule, DEFAULT_MAX_COMPONENT_BYTES, DEFAULT_MEMORY_MIB, DecideError,
    EngineLimits, Rule, RuleEngine, WasmRule,
};
use converge::swap::read_rule_file;
use converge_tests::build::{self, Language};
use wasm_encoder::ComponentSection as _;

use report::{Figures, Load, Micro, Served};
use run::{RuleFile, StoreKind};
use scenario::{PacedRun, RuleKind, Swaps};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// One language's order-status rule.
#[derive(Debug, Clone)]
struct Subject {
    language: &'static str,
    path: PathBuf,
    /// `rule.memory_mib` it is served with.
    memory_mib: usize,
}

/// The four components, each built by its project (built before anything is timed).
fn subjects() -> Vec<Subject> {
    let subject = |language, path, memory_mib| Subject {
        language,
        path,
        memory_mib,
    };
    vec![
        subject("rust", build::rule("order-status"), DEFAULT_MEMORY_MIB),
        subject("go", build::language_rule(Language::Go), DEFAULT_MEMORY_MIB),
        subject(
            "python",
            build::language_rule(Language::Python),
            DEFAULT_MEMORY_MIB,
        ),
        // SpiderMonkey's heap grows past 64 MiB on a long-lived instance (plugin/js/README.md).
        subject(
            "javascript",
            build::language_rule(Language::JavaScript),
            128,
        ),
    ]
}

/// The batch sizes `decide-batch` is measured at.
const BATCH_SIZES: [usize; 5] = [1, 8, 64, 256, 512];
/// The batch size the headline figure (and the payload and fresh-instance figures) use: the
/// pipeline's default `batch_size`.
const BATCH: usize = 512;
/// `rule.deadline_ms` of the end-to-end runs: a batch of 512 takes an interpreter tens of
/// milliseconds, and a shared machine may stall it past the default 100 ms.
const SERVED_DEADLINE_MS: u64 = 1_000;
/// How long each rate is measured for.
const BUDGET: Duration = Duration::from_millis(1500);
/// Fresh instances timed.
const INSTANCES: usize = 15;

/// The payload of the big-payload case: 4 KiB of JSON, a large order.
fn big_payload() -> String {
    let dishes: Vec<String> = (0..200).map(|n| format!("\"dish-{n:04}\"")).collect();
    let payload = format!("{{\"table\":12,\"dishes\":[{}]}}", dishes.join(","));
    format!("{payload:<4096}")
}

/// Order `n` going from paid to completed (an update), carrying `payload`.
fn pair(n: usize, payload: &str) -> (Option<State>, Event) {
    let entity = |status: &str, version: u64| State {
        key: format!("order-{n}"),
        status: status.to_owned(),
        version,
        timestamp_ms: 1_763_971_200_000 + version,
        payload: payload.to_owned(),
    };
    (Some(entity("paid", 2)), entity("completed", 3))
}

const PAYLOAD: &str = r#"{"dishes":["dumplings","fried rice"],"table":12}"#;

fn items(count: usize, payload: &str) -> Vec<(Option<State>, Event)> {
    (0..count).map(|n| pair(n, payload)).collect()
}

/// The first failed calls of the language being measured (a failed call decides nothing and
/// its instance is replaced; the figures count only decisions had).
static FAILED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// The events a call decided: all of them, or none when it failed (recorded).
fn decided<T>(events: usize, answer: Result<T, DecideError>) -> usize {
    match answer {
        Ok(answer) => {
            black_box(answer);
            events
        }
        Err(error) => {
            let mut failed = FAILED.lock().unwrap_or_else(PoisonError::into_inner);
            if failed.len() < 3 {
                failed.push(error.to_string());
            }
            0
        }
    }
}

/// Runs `round` (which answers how many events it decided) until `BUDGET` is spent; events/s.
fn rate(mut round: impl FnMut() -> usize) -> f64 {
    round();
    let started = Instant::now();
    let mut events = 0usize;
    while started.elapsed() < BUDGET {
        events += round();
    }
    events as f64 / started.elapsed().as_secs_f64()
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort_unstable();
    values[values.len() / 2]
}

/// The rule's memory cap, and a deadline far from the time of a call: these figures are costs,
/// and a machine whose cores are shared may stall a call past the default 100 ms.
fn limits(subject: &Subject) -> EngineLimits {
    EngineLimits {
        memory_cap_bytes: subject.memory_mib << 20,
        deadline: Duration::from_secs(10),
        ..EngineLimits::default()
    }
}

/// Loading: cold, into an empty cache, from the cache.
fn load(subject: &Subject, bytes: &[u8], cache_dir: &Path) -> (Load, CompiledRule) {
    let limits = limits(subject);
    let started = Instant::now();
    let cold = RuleEngine::new(limits)
        .expect("engine")
        .compile(bytes)
        .expect("the rule loads");
    let cold_total = started.elapsed();
    let cache = || Some(CompileCache::open(cache_dir).expect("the compile cache opens"));
    let started = Instant::now();
    let filled = RuleEngine::with_compile_cache(limits, cache())
        .expect("engine")
        .compile(bytes)
        .expect("the rule loads");
    let fill_total = started.elapsed();
    assert!(!filled.compiled().from_cache, "the cache was empty");
    let started = Instant::now();
    let cached = RuleEngine::with_compile_cache(limits, cache())
        .expect("engine")
        .compile(bytes)
        .expect("the rule loads");
    let cached_total = started.elapsed();
    assert!(
        cached.compiled().from_cache,
        "{} is cached",
        subject.language
    );
    let load = Load {
        load_compile_ms: ms(cold_total),
        compile_ms: ms(cold.compiled().took),
        compile_and_cache_ms: ms(fill_total),
        cache_load_ms: ms(cached_total),
        cache_deserialize_ms: ms(cached.compiled().took),
    };
    (load, cached)
}

/// Instantiation, decisions and batches of one compiled rule.
fn micro(compiled: &CompiledRule) -> Micro {
    let one = items(1, PAYLOAD);
    let (current, incoming) = &one[0];
    let mut instantiate = Vec::new();
    let mut drop_times = Vec::new();
    let mut first_call = Vec::new();
    for _ in 0..INSTANCES {
        let mut rule = compiled.instance();
        let started = Instant::now();
        rule.instantiate().expect("instantiates");
        instantiate.push(started.elapsed());
        let started = Instant::now();
        black_box(rule.decide(current.as_ref(), incoming).expect("decides"));
        first_call.push(started.elapsed());
        let started = Instant::now();
        drop(rule);
        drop_times.push(started.elapsed());
    }

    let mut rule = compiled.instance();
    let decide_per_s = rate(|| decided(1, rule.decide(current.as_ref(), incoming)));
    let mut batches = Vec::new();
    for size in BATCH_SIZES {
        let batch = items(size, PAYLOAD);
        batches.push((size, batch_rate(&mut rule, &batch)));
    }
    let empty = batch_rate(&mut rule, &items(BATCH, ""));
    let big = batch_rate(&mut rule, &items(BATCH, &big_payload()));
    let batch = items(BATCH, PAYLOAD);
    let fresh = rate(|| decided(BATCH, compiled.instance().decide_batch(&batch)));
    // A long-lived instance after all of the above: does it slow down as its heap ages?
    let long_lived_after = batch_rate(&mut rule, &batch);
    Micro {
        instantiate_ms: ms(median(instantiate)),
        drop_ms: ms(median(drop_times)),
        first_decide_ms: ms(median(first_call)),
        decide_ns: 1e9 / decide_per_s,
        batch_events_per_s: batches,
        empty_payload_events_per_s: empty,
        big_payload_events_per_s: big,
        fresh_instance_events_per_s: fresh,
        long_lived_after_events_per_s: long_lived_after,
        failed: std::mem::take(&mut *FAILED.lock().unwrap_or_else(PoisonError::into_inner)),
    }
}

fn batch_rate(rule: &mut WasmRule, batch: &[(Option<State>, Event)]) -> f64 {
    rate(|| decided(batch.len(), rule.decide_batch(batch)))
}

/// The component with one more custom section: other bytes and hash, the same rule.
fn variant(bytes: &[u8]) -> Vec<u8> {
    let mut other = bytes.to_vec();
    wasm_encoder::CustomSection {
        name: Cow::Borrowed("converge-bench"),
        data: Cow::Borrowed(b"v2"),
    }
    .append_to_component(&mut other);
    other
}

/// The end-to-end figures of one language: a backlog drained, and swaps under a paced load.
async fn served(subject: &Subject, dir: &Path, sizes: Sizes) -> Served {
    let rule = RuleFile {
        memory_mib: Some(subject.memory_mib),
        deadline_ms: Some(SERVED_DEADLINE_MS),
        ..RuleFile::new(subject.path.clone(), &dir.join(subject.language))
    };
    let name = format!("bench-rules-{}", subject.language);
    let (backlog, events, _topic) = scenario::backlog_run(
        dir,
        sizes.orders,
        (&rule, RuleKind::Component),
        StoreKind::Standalone,
        &name,
    )
    .await;
    let (v1, sidecar): (Vec<u8>, Option<VectorFile>) =
        read_rule_file(&subject.path, DEFAULT_MAX_COMPONENT_BYTES).expect("the rule file reads");
    let swaps = Swaps {
        v2: variant(&v1),
        v1,
        sidecar,
    };
    let PacedRun {
        run,
        offered,
        pauses,
        ..
    } = scenario::paced_run(
        dir,
        &rule,
        (sizes.rate, sizes.seconds, 3),
        &format!("{name}-swap"),
        Some(swaps),
    )
    .await;
    let pause_max = pauses.last().copied().unwrap_or_default();
    println!(
        "{}: {:.0} events/s end to end; {} swaps of {offered} offered, pause max {:.2} ms",
        subject.language,
        backlog.events_per_s,
        pauses.len(),
        ms(pause_max)
    );
    Served {
        events_per_s: backlog.events_per_s,
        backlog_events: events,
        swaps_offered: offered,
        swaps_taken_up: pauses.len(),
        swap_pause_p50_ms: pauses.get(pauses.len() / 2).map_or(0.0, |p| ms(*p)),
        swap_pause_max_ms: ms(pause_max),
        longest_ack_gap_with_swaps_ms: ms(run.max_gap),
    }
}

/// The run's sizes (environment).
#[derive(Debug, Clone, Copy)]
struct Sizes {
    orders: usize,
    rate: u32,
    seconds: u32,
}

fn main() {
    let sizes = Sizes {
        orders: env_or("BENCH_RULES_ORDERS", 20_000),
        rate: env_or("BENCH_RULES_RATE", 2_000),
        seconds: env_or("BENCH_RULES_SECONDS", 8),
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let subjects = subjects();
    build::converge_binary();
    let load_at_start = machine::load_average();

    // The micro-benchmarks first, all languages, while nothing else of the bench runs.
    let mut figures = Vec::new();
    for subject in &subjects {
        let (bytes, _) = read_rule_file(&subject.path, DEFAULT_MAX_COMPONENT_BYTES)
            .expect("the rule file reads");
        let (load, compiled) = load(
            subject,
            &bytes,
            &dir.path().join("cache-micro").join(subject.language),
        );
        println!(
            "{}: {} bytes, load+compile {:.0} ms, from the cache {:.1} ms",
            subject.language,
            bytes.len(),
            load.load_compile_ms,
            load.cache_load_ms
        );
        let micro = micro(&compiled);
        println!(
            "{}: instantiate {:.2} ms, decide {:.0} ns, decide-batch {:.0} events/s",
            subject.language,
            micro.instantiate_ms,
            micro.decide_ns,
            micro.batch_at(BATCH)
        );
        figures.push(Figures {
            language: subject.language,
            size_bytes: bytes.len(),
            memory_mib: subject.memory_mib,
            load,
            micro,
            served: None,
        });
    }

    for (subject, figures) in subjects.iter().zip(&mut figures) {
        // A run that fails (a rule that traps) is reported, and the others still run: each in
        // a thread of its own, with a runtime built as `converge serve` builds its own.
        let run = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    tokio::runtime::Builder::new_multi_thread()
                        .enable_all()
                        .build()
                        .expect("runtime")
                        .block_on(served(subject, dir.path(), sizes))
                })
                .join()
        });
        match run {
            Ok(served) => figures.served = Some(served),
            Err(_) => figures
                .micro
                .failed
                .push("end to end: the run failed (its panic is above)".to_owned()),
        }
    }

    let report = report::json(&figures, BATCH, sizes.orders, load_at_start);
    let text = serde_json::to_string_pretty(&report).expect("JSON");
    println!("{text}");
    let out = machine::report_dir();
    std::fs::write(out.join("rules.json"), text + "\n").expect("report written");
    let svg = out.join("rules.svg");
    report::draw(&figures, BATCH, &svg).expect("the plot is drawn");
    println!(
        "written to {} and {}",
        out.join("rules.json").display(),
        svg.display()
    );
}
