//! The Wasm tax: the order-status rule through the compiled component vs called natively —
//! one decision per call, a batch per call, and the whole embedded pipeline.
//!
//! `cargo bench -p converge-tests --bench rule`

use std::hint::black_box;

use converge::dead_letter::MemoryDeadLetters;
use converge::entity::{Event, State};
use converge::pipeline::{Pipeline, PipelineConfig};
use converge::rule::Rule;
use converge::rule::{EngineLimits, RuleEngine};
use converge::store::MemoryStore;
use converge_tests::{NativeOrderRule, build, orders};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const BATCH: usize = 256;
const PIPELINE_EVENTS: usize = 20_000;

fn pair(n: usize) -> (Option<State>, Event) {
    let entity = |status: &str, version: u64| State {
        key: format!("order-{n}"),
        status: status.to_owned(),
        version,
        timestamp_ms: 1_763_971_200_000 + version,
        payload: r#"{"dishes":["dumplings","fried rice"],"table":12}"#.to_owned(),
    };
    (Some(entity("paid", 2)), entity("completed", 3))
}

fn rules() -> (Box<dyn Rule>, Box<dyn Rule>) {
    let compiled = RuleEngine::new(EngineLimits::default())
        .expect("engine starts")
        .compile_file(&build::rule("order-status"))
        .expect("rule loads");
    (
        Box::new(compiled.instance()),
        Box::new(NativeOrderRule::default()),
    )
}

fn decide(c: &mut Criterion) {
    let (mut wasm, mut native) = rules();
    let (current, incoming) = pair(1);
    let mut group = c.benchmark_group("decide");
    group.throughput(Throughput::Elements(1));
    for (name, rule) in [("component", &mut wasm), ("native", &mut native)] {
        group.bench_function(name, |b| {
            b.iter(|| rule.decide(black_box(current.as_ref()), black_box(&incoming)))
        });
    }
    group.finish();

    let items: Vec<(Option<State>, Event)> = (0..BATCH).map(pair).collect();
    let mut group = c.benchmark_group(format!("decide_batch_{BATCH}"));
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, rule) in [("component", &mut wasm), ("native", &mut native)] {
        group.bench_function(name, |b| b.iter(|| rule.decide_batch(black_box(&items))));
    }
    group.bench_function("component_one_call_each", |b| {
        b.iter(|| {
            for (current, incoming) in &items {
                black_box(wasm.decide(current.as_ref(), incoming).ok());
            }
        })
    });
    group.finish();
}

fn pipeline(c: &mut Criterion) {
    let stream = orders::generate("bench-", PIPELINE_EVENTS / 3, 20, 1);
    let messages = converge_tests::event_messages(&stream.events);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("pipeline_memory_store");
    group.throughput(Throughput::Elements(messages.len() as u64));
    group.sample_size(20);
    let make = [("component", true), ("native", false)];
    for (name, wasm) in make {
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let (component, native) = rules();
                    let rule = if wasm { component } else { native };
                    Pipeline::new(
                        rule,
                        MemoryStore::new(),
                        MemoryDeadLetters::new(),
                        PipelineConfig::default(),
                    )
                },
                |mut pipeline| {
                    runtime.block_on(async {
                        for batch in messages.chunks(PipelineConfig::default().batch_size) {
                            pipeline.process(batch).await.expect("processed");
                        }
                    });
                    pipeline
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, decide, pipeline);
criterion_main!(benches);
