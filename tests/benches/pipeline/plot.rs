//! `target/bench/pipeline.svg`: the latency distribution of the paced run and its latency over
//! the run (steady, or growing?), and throughput over time in each backlog run. Drawn with
//! plotters' SVG backend and no font rendering (labels are SVG text, laid out with plotters'
//! built-in estimate), so it needs no system fonts.

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

/// One line of the throughput panel.
pub struct Line<'a> {
    pub label: String,
    pub color: RGBColor,
    /// (seconds since the pipeline started, messages acknowledged so far).
    pub acked: &'a [(f64, usize)],
}

/// What the latency panel shows.
pub struct Latency<'a> {
    /// Sorted ascending, in ms.
    pub sorted_ms: &'a [i64],
    /// (intended send time in ms since the first batch, latency in ms), in acknowledgement
    /// order.
    pub by_send: &'a [(i64, i64)],
    pub rate: u32,
    /// (label, ms).
    pub marks: [(&'static str, i64); 3],
}

const BARS: RGBColor = RGBColor(70, 110, 180);
const MARKS: [RGBColor; 3] = [
    RGBColor(40, 140, 60),
    RGBColor(230, 140, 20),
    RGBColor(200, 40, 40),
];

pub fn draw(path: &Path, latency: &Latency<'_>, lines: &[Line<'_>]) -> Result<(), String> {
    let root = SVGBackend::new(path, (1200, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (top, bottom) = root.split_vertically(450);
    let (left, right) = top.split_horizontally(700);
    latency_panel(&left, latency)?;
    latency_over_time(&right, latency)?;
    throughput_panel(&bottom, lines)?;
    root.present().map_err(|e| e.to_string())
}

fn latency_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    latency: &Latency<'_>,
) -> Result<(), String> {
    let sorted = latency.sorted_ms;
    let p999 = latency.marks[2].1;
    // The bulk of the distribution: up to a little past p99.9; what lies beyond is counted.
    let upper = (p999 + p999 / 5).max(10);
    let width = (upper / 60).max(1);
    let mut bins = vec![0u64; (upper / width + 1) as usize];
    let mut beyond = 0usize;
    for &ms in sorted {
        match usize::try_from(ms / width)
            .ok()
            .filter(|bin| *bin < bins.len())
        {
            Some(bin) => bins[bin] += 1,
            None => beyond += 1,
        }
    }
    let tallest = bins.iter().copied().max().unwrap_or(1).max(1) as f64;
    let caption = format!(
        "Latency at {}/s: {} messages, {} beyond {} ms (max {} ms)",
        latency.rate,
        sorted.len(),
        beyond,
        upper,
        sorted.last().copied().unwrap_or(0)
    );
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            0f64..(bins.len() as i64 * width) as f64,
            0f64..tallest * 1.1,
        )
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("ms from intended send to acknowledged after the write")
        .y_desc("messages")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(bins.iter().enumerate().map(|(bin, count)| {
            let from = (bin as i64 * width) as f64;
            Rectangle::new(
                [(from, 0.0), (from + width as f64, *count as f64)],
                BARS.filled(),
            )
        }))
        .map_err(|e| e.to_string())?;
    for ((name, ms), color) in latency.marks.iter().zip(MARKS) {
        let x = *ms as f64 + width as f64 / 2.0;
        chart
            .draw_series(LineSeries::new(
                [(x, 0.0), (x, tallest * 1.05)],
                color.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?
            .label(format!("{name} {ms} ms"))
            .legend(move |point| marker(point, color));
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}

/// Median and highest latency per quarter second of intended send time.
fn latency_over_time<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    latency: &Latency<'_>,
) -> Result<(), String> {
    const BIN_MS: i64 = 250;
    let mut bins: std::collections::BTreeMap<i64, Vec<i64>> = std::collections::BTreeMap::new();
    for &(sent, ms) in latency.by_send {
        bins.entry(sent / BIN_MS).or_default().push(ms);
    }
    let mut p50 = Vec::new();
    let mut highest = Vec::new();
    for (bin, values) in &mut bins {
        values.sort_unstable();
        let t = (*bin * BIN_MS + BIN_MS / 2) as f64 / 1000.0;
        p50.push((t, values[values.len() / 2] as f64));
        highest.push((t, values[values.len() - 1] as f64));
    }
    let end = highest.last().map_or(1.0, |(t, _)| *t + 0.25);
    let top = highest.iter().map(|(_, ms)| *ms).fold(1.0f64, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption("Latency over the run", ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..end, 0f64..top * 1.1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("intended send time, s after the first batch")
        .y_desc("ms")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| e.to_string())?;
    for (name, points, color) in [("median", p50, MARKS[0]), ("max", highest, MARKS[2])] {
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(format!("{name} per 250 ms"))
            .legend(move |point| marker(point, color));
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)
}

/// A chart on seconds or milliseconds against a count or a rate.
type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Draws the chart's series labels at `position`.
fn legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart<'a, DB>,
    position: SeriesLabelPosition,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}

/// A series' mark in the legend: a short line in its colour.
fn marker((x, y): (i32, i32), color: RGBColor) -> PathElement<(i32, i32)> {
    PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
}

/// Acknowledged messages per second over each sampling interval, at the interval's end.
fn rates(acked: &[(f64, usize)]) -> Vec<(f64, f64)> {
    acked
        .windows(2)
        .filter(|pair| pair[1].0 > pair[0].0)
        .map(|pair| {
            let (t0, a0) = pair[0];
            let (t1, a1) = pair[1];
            (t1, a1.saturating_sub(a0) as f64 / (t1 - t0))
        })
        .collect()
}

fn throughput_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    lines: &[Line<'_>],
) -> Result<(), String> {
    let series: Vec<Vec<(f64, f64)>> = lines.iter().map(|line| rates(line.acked)).collect();
    let longest = series
        .iter()
        .flatten()
        .map(|(t, _)| *t)
        .fold(1.0f64, f64::max);
    let fastest = series
        .iter()
        .flatten()
        .map(|(_, rate)| *rate)
        .fold(1.0f64, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Throughput over time, draining the backlog (every 250 ms, from the pipeline's start)",
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..longest * 1.02, 0f64..fastest * 1.15)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("seconds since the pipeline started (the group join included)")
        .y_desc("messages acknowledged per second")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| e.to_string())?;
    for (line, points) in lines.iter().zip(series) {
        let color = line.color;
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(line.label.clone())
            .legend(move |point| marker(point, color));
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}
