//! Just enough of the Prometheus text format to read converge's own histograms, counters and
//! gauges back out of `Metrics::render()`: the bench reports what an operator's dashboard would
//! show, from the same registry.

use std::collections::BTreeMap;

/// One sample line: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of `text`; comments and lines that do not parse are skipped.
pub fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(sample)
        .collect()
}

fn sample(line: &str) -> Option<Sample> {
    let (series, value) = line.trim().rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, labels(rest.strip_suffix('}')?)?),
        None => (series, BTreeMap::new()),
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `a="x",b="y"` (values may hold escaped quotes and backslashes).
fn labels(mut text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    while !text.is_empty() {
        let (name, rest) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => {
                    let (_, escaped) = chars.next()?;
                    value.push(if escaped == 'n' { '\n' } else { escaped });
                }
                (index, '"') => break index,
                (_, other) => value.push(other),
            }
        };
        labels.insert(name.trim_start_matches(',').to_owned(), value);
        text = &rest[end + 1..];
    }
    Some(labels)
}

/// A histogram as rendered: cumulative buckets by upper bound, sum and count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// (upper bound, observations at or under it), ascending; the last bound is +Inf.
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    /// Observations per bucket (not cumulative): (upper bound, count), up to the last
    /// non-empty bucket.
    pub fn per_bucket(&self) -> Vec<(f64, u64)> {
        let mut previous = 0;
        let mut counts: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .map(|&(bound, cumulative)| {
                let count = cumulative.saturating_sub(previous);
                previous = cumulative;
                (bound, count)
            })
            .collect();
        while counts.last().is_some_and(|(_, count)| *count == 0) {
            counts.pop();
        }
        counts
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

/// The histograms named `name` (without `_bucket`/`_sum`/`_count`), keyed by the value of
/// `label` (empty for an unlabelled histogram).
pub fn histograms(samples: &[Sample], name: &str, label: &str) -> BTreeMap<String, Histogram> {
    let mut histograms: BTreeMap<String, Histogram> = BTreeMap::new();
    for sample in samples {
        let Some(part) = sample.name.strip_prefix(name) else {
            continue;
        };
        let key = sample.labels.get(label).cloned().unwrap_or_default();
        match part {
            "_bucket" => {
                let Some(bound) = sample.labels.get("le").and_then(|le| match le.as_str() {
                    "+Inf" => Some(f64::INFINITY),
                    other => other.parse().ok(),
                }) else {
                    continue;
                };
                histograms
                    .entry(key)
                    .or_default()
                    .buckets
                    .push((bound, sample.value as u64));
            }
            "_sum" => histograms.entry(key).or_default().sum = sample.value,
            "_count" => histograms.entry(key).or_default().count = sample.value as u64,
            _ => {}
        }
    }
    for histogram in histograms.values_mut() {
        histogram.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    histograms
}

/// The unlabelled histogram `name`, empty when absent.
pub fn histogram(samples: &[Sample], name: &str) -> Histogram {
    histograms(samples, name, "").remove("").unwrap_or_default()
}

/// The sum of every sample named exactly `name` (all label sets): a counter's or a gauge's
/// total.
pub fn total(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|sample| sample.name == name)
        .map(|sample| sample.value)
        .sum()
}
