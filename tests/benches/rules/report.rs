//! `target/bench/rules.json` and `target/bench/rules.svg`: the figures per language, the
//! ratios to Rust, and where an interpreter's time goes, read off the figures of the same run.

use std::path::Path;

use plotters::prelude::*;
use serde_json::{Value, json};

use crate::machine::load_average;

/// Loading one component.
#[derive(Debug)]
pub struct Load {
    /// `RuleEngine::compile` into a fresh engine without a compile cache: compile, link, info.
    pub load_compile_ms: f64,
    /// The part of it that is Cranelift (`Compiled::took`).
    pub compile_ms: f64,
    /// The same into an empty compile cache (compiling and writing the artifact).
    pub compile_and_cache_ms: f64,
    /// `RuleEngine::compile` in another engine, from the cache: what a restart sees.
    pub cache_load_ms: f64,
    /// The part of it that is reading and deserializing the artifact.
    pub cache_deserialize_ms: f64,
}

/// Instantiating and calling one compiled rule.
#[derive(Debug)]
pub struct Micro {
    pub instantiate_ms: f64,
    pub drop_ms: f64,
    /// The first `decide` on a fresh instance (its memory is touched for the first time).
    pub first_decide_ms: f64,
    /// One `decide` call on a long-lived instance.
    pub decide_ns: f64,
    /// (batch size, events/s through `decide-batch` on a long-lived instance).
    pub batch_events_per_s: Vec<(usize, f64)>,
    pub empty_payload_events_per_s: f64,
    pub big_payload_events_per_s: f64,
    /// A fresh instance per batch.
    pub fresh_instance_events_per_s: f64,
    /// The long-lived instance again, after every measurement above.
    pub long_lived_after_events_per_s: f64,
    /// The first calls that failed, if any.
    pub failed: Vec<String>,
}

impl Micro {
    /// Events/s through `decide-batch` at batch size `size`.
    pub fn batch_at(&self, size: usize) -> f64 {
        self.batch_events_per_s
            .iter()
            .find(|(at, _)| *at == size)
            .map_or(0.0, |(_, rate)| *rate)
    }

    /// The cost of one `decide-batch` call split as a fixed part per call and a part per
    /// event (a straight line through batch sizes 1 and `batch`), in µs.
    fn per_call_and_event_us(&self, batch: usize) -> (f64, f64) {
        let one = 1e6 / self.batch_at(1);
        let many = 1e6 * batch as f64 / self.batch_at(batch);
        let per_event = (many - one) / (batch - 1) as f64;
        (one - per_event, per_event)
    }
}

/// One language end to end.
#[derive(Debug)]
pub struct Served {
    pub events_per_s: f64,
    pub backlog_events: usize,
    pub swaps_offered: usize,
    pub swaps_taken_up: usize,
    pub swap_pause_p50_ms: f64,
    pub swap_pause_max_ms: f64,
    pub longest_ack_gap_with_swaps_ms: f64,
}

/// Everything measured of one language.
#[derive(Debug)]
pub struct Figures {
    pub language: &'static str,
    pub size_bytes: usize,
    pub memory_mib: usize,
    pub load: Load,
    pub micro: Micro,
    pub served: Option<Served>,
}

fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

/// Where the time of one decision goes, read off this run's figures.
fn notes(figures: &Figures, batch: usize) -> Vec<String> {
    let micro = &figures.micro;
    let (per_call, per_event) = micro.per_call_and_event_us(batch);
    let at_batch = micro.batch_at(batch);
    let payload_us = 1e6 / micro.big_payload_events_per_s - 1e6 / micro.empty_payload_events_per_s;
    let fresh_us = 1e6 / micro.fresh_instance_events_per_s - 1e6 / at_batch;
    let aged = micro.long_lived_after_events_per_s / at_batch;
    let mut notes = vec![
        format!(
            "decide-batch costs {per_call:.1} µs per call plus {per_event:.2} µs per event \
             (a line through batch sizes 1 and {batch}): batching pays when the per-call part \
             dominates"
        ),
        format!(
            "a 4 KiB payload instead of an empty one adds {payload_us:.2} µs per event (the \
             payload is lifted into the rule and lowered back out with the stored state)"
        ),
        format!(
            "a fresh instance per batch of {batch} adds {fresh_us:.2} µs per event \
             ({:.2} ms per batch: instantiating {:.2} ms, its first decision {:.2} ms, dropping \
             it {:.2} ms), so instances are kept",
            fresh_us * batch as f64 / 1000.0,
            micro.instantiate_ms,
            micro.first_decide_ms,
            micro.drop_ms
        ),
        format!(
            "the long-lived instance after every other measurement runs at {:.0}% of its \
             first rate (a heap that ages or collects shows here)",
            aged * 100.0
        ),
    ];
    for failure in &micro.failed {
        notes.push(format!(
            "a call failed, and its events were not counted: {failure}"
        ));
    }
    if figures.language == "python" || figures.language == "javascript" {
        notes.push(if at_batch >= 10_000.0 {
            format!(
                "{at_batch:.0} decisions/s on one core through decide-batch: at or above the \
                 10,000 target"
            )
        } else {
            format!(
                "{at_batch:.0} decisions/s on one core through decide-batch, under the 10,000 \
                 target: the per-event part ({per_event:.1} µs) bounds it, not the call \
                 crossing ({per_call:.1} µs per call) nor the payload"
            )
        });
    }
    notes
}

/// The report.
pub fn json(figures: &[Figures], batch: usize, orders: usize, load_at_start: Option<f64>) -> Value {
    let rust = &figures[0];
    let languages: Vec<Value> = figures
        .iter()
        .map(|figures| {
            let micro = &figures.micro;
            let load = &figures.load;
            let served = figures.served.as_ref();
            let batches: serde_json::Map<String, Value> = micro
                .batch_events_per_s
                .iter()
                .map(|(size, rate)| (size.to_string(), json!(rate.round())))
                .collect();
            let per_event = |figures: &Figures| 1.0 / figures.micro.batch_at(batch);
            json!({
                "language": figures.language,
                "size_bytes": figures.size_bytes,
                "memory_mib": figures.memory_mib,
                "load_compile_ms": round(load.load_compile_ms, 1),
                "compile_ms": round(load.compile_ms, 1),
                "compile_and_cache_ms": round(load.compile_and_cache_ms, 1),
                "cache_load_ms": round(load.cache_load_ms, 2),
                "cache_deserialize_ms": round(load.cache_deserialize_ms, 2),
                "instantiate_ms": round(micro.instantiate_ms, 3),
                "drop_ms": round(micro.drop_ms, 3),
                "first_decide_ms": round(micro.first_decide_ms, 3),
                "decide_ns": micro.decide_ns.round(),
                "decide_batch_events_per_s": micro.batch_at(batch).round(),
                "decide_batch_by_size": batches,
                "empty_payload_events_per_s": micro.empty_payload_events_per_s.round(),
                "big_payload_events_per_s": micro.big_payload_events_per_s.round(),
                "fresh_instance_events_per_s": micro.fresh_instance_events_per_s.round(),
                "long_lived_after_events_per_s": micro.long_lived_after_events_per_s.round(),
                "vs_rust_decide": round(micro.decide_ns / rust.micro.decide_ns, 2),
                "vs_rust_decide_batch": round(per_event(figures) / per_event(rust), 2),
                "pipeline_events_per_s": served.map(|s| s.events_per_s.round()),
                "pipeline_vs_rust": served
                    .zip(rust.served.as_ref())
                    .map(|(s, r)| round(s.events_per_s / r.events_per_s, 3)),
                "swap_pause_p50_ms": served.map(|s| round(s.swap_pause_p50_ms, 3)),
                "swap_pause_max_ms": served.map(|s| round(s.swap_pause_max_ms, 3)),
                "swaps_taken_up": served.map(|s| s.swaps_taken_up),
                "swaps_offered": served.map(|s| s.swaps_offered),
                "longest_ack_gap_with_swaps_ms": served
                    .map(|s| round(s.longest_ack_gap_with_swaps_ms, 1)),
                "notes": notes(figures, batch),
            })
        })
        .collect();
    json!({
        "languages": languages,
        "settings": {
            "decide_batch_size": batch,
            "pipeline_orders": orders,
            "pipeline_backlog_events": figures
                .first()
                .and_then(|f| f.served.as_ref())
                .map(|s| s.backlog_events),
            "cores": std::thread::available_parallelism().map_or(0, usize::from),
            "load_average": { "at_start": load_at_start, "at_end": load_average() },
        },
        "notes": [
            "one run on a shared machine: compare the ratios, not the absolutes",
            "vs_rust_*: time per decision over Rust's (decide: one call; decide_batch: per \
             event at the batch size)",
            "cache_load_ms: RuleEngine::compile from the compile cache in a fresh engine, \
             linking and the info call included (a restart, or a second instance)",
            "swap_pause_*: the pipeline task's time taking a swapped-in version up and on its \
             first call, versions swapped every 200 ms under a paced producer",
        ],
    })
}

const COLORS: [RGBColor; 4] = [
    RGBColor(200, 90, 40),
    RGBColor(40, 150, 200),
    RGBColor(60, 110, 170),
    RGBColor(220, 180, 30),
];

/// One bar chart: a value per language, on a log scale.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    unit: &str,
    bars: &[(&str, f64)],
) -> Result<(), String> {
    let highest = bars.iter().map(|(_, v)| *v).fold(1.0f64, f64::max);
    let lowest = bars
        .iter()
        .map(|(_, v)| *v)
        .filter(|v| *v > 0.0)
        .fold(highest, f64::min);
    let floor = 10f64.powf((lowest / 2.0).log10().floor());
    let names: Vec<String> = bars.iter().map(|(name, _)| (*name).to_owned()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..bars.len() as f64, (floor..highest * 3.0).log_scale())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let index = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.01 {
                names.get(index).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(unit)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(
            bars.iter()
                .zip(COLORS)
                .enumerate()
                .map(|(index, ((_, value), color))| {
                    let x = index as f64;
                    Rectangle::new(
                        [(x + 0.2, floor), (x + 0.8, value.max(floor))],
                        color.filled(),
                    )
                }),
        )
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(bars.iter().enumerate().map(|(index, (_, value))| {
            Text::new(
                format!("{value:.1}"),
                (index as f64 + 0.3, value.max(floor) * 1.3),
                ("sans-serif", 14),
            )
        }))
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// `target/bench/rules.svg`: six panels, a bar per language each.
pub fn draw(figures: &[Figures], batch: usize, path: &Path) -> Result<(), String> {
    let root = SVGBackend::new(path, (1200, 1050)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let areas = root.split_evenly((3, 2));
    let bars = |value: &dyn Fn(&Figures) -> f64| -> Vec<(&str, f64)> {
        figures.iter().map(|f| (f.language, value(f))).collect()
    };
    let served = |f: &Figures, value: fn(&Served) -> f64| f.served.as_ref().map_or(0.0, value);
    panel(
        &areas[0],
        &format!("decide-batch ({batch} per call), one core"),
        "events/s",
        &bars(&|f| f.micro.batch_at(batch)),
    )?;
    panel(
        &areas[1],
        "End to end, Kafka -> rule -> Redis",
        "events/s",
        &bars(&|f| served(f, |s| s.events_per_s)),
    )?;
    panel(
        &areas[2],
        "Load + compile, cold",
        "ms",
        &bars(&|f| f.load.load_compile_ms),
    )?;
    panel(
        &areas[3],
        "Load from the compile cache",
        "ms",
        &bars(&|f| f.load.cache_load_ms),
    )?;
    panel(
        &areas[4],
        "Swap pause under load, max",
        "ms",
        &bars(&|f| served(f, |s| s.swap_pause_max_ms)),
    )?;
    panel(
        &areas[5],
        "Component size",
        "KB",
        &bars(&|f| f.size_bytes as f64 / 1000.0),
    )?;
    root.present().map_err(|e| e.to_string())
}
