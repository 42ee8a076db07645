//! A `serve`'s `/metrics`, read as Prometheus reads it: the families its `# TYPE` lines
//! declare and every sample with its labels (values unescaped) and value.
//!
//! An absent series is an error, never a zero: a test reading a metric that was renamed or
//! never registered must fail, not pass as `0 == 0`. [`Exposition::value`] and
//! [`Exposition::sum`] panic when nothing matches. A test for which "absent" rightly means
//! "none yet" (a labelled family before its first sample) says so with
//! [`Exposition::try_value`] or [`Exposition::try_sum`], which still panic when no `# TYPE`
//! line declares the metric at all: a name `serve` does not export is never "none yet".

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed `/metrics` text.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
    /// Family name -> type (`counter`, `gauge`, `histogram`, ...).
    families: BTreeMap<String, String>,
    samples: Vec<Sample>,
    /// Sample name -> label name -> values seen.
    label_values: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

impl Exposition {
    /// Parses an exposition; panics on a line that is not one (a `serve` writing malformed
    /// metrics fails the test that scrapes it).
    pub fn parse(text: &str) -> Self {
        let mut exposition = Self {
            text: text.to_owned(),
            ..Self::default()
        };
        for (number, line) in text.lines().enumerate() {
            let line = line.trim_end();
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.split_whitespace();
                if words.next() == Some("TYPE")
                    && let (Some(name), Some(kind)) = (words.next(), words.next())
                {
                    exposition.families.insert(name.to_owned(), kind.to_owned());
                }
                continue;
            }
            if line.is_empty() {
                continue;
            }
            let sample = parse_sample(line)
                .unwrap_or_else(|why| panic!("/metrics line {}: {why}: {line:?}", number + 1));
            let known = exposition
                .label_values
                .entry(sample.name.clone())
                .or_default();
            for (label, value) in &sample.labels {
                known
                    .entry(label.clone())
                    .or_default()
                    .insert(value.clone());
            }
            exposition.samples.push(sample);
        }
        exposition
    }

    /// The text as scraped.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Every sample, in the order of the text.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The sample names a family of type `kind` exports: what a query names.
    pub fn sample_names(family: &str, kind: &str) -> Vec<String> {
        match kind {
            "counter" => vec![format!("{family}_total")],
            "histogram" => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|suffix| format!("{family}{suffix}"))
                .collect(),
            "info" => vec![format!("{family}_info")],
            _ => vec![family.to_owned()],
        }
    }

    /// Sample names declared by a family but without any sample in this scrape.
    pub fn declared_without_samples(&self) -> BTreeSet<String> {
        self.families
            .iter()
            .flat_map(|(family, kind)| Self::sample_names(family, kind))
            .filter(|name| !self.label_values.contains_key(name))
            .collect()
    }

    /// The label names and values the samples named `metric` carry; `None` when it has no
    /// sample.
    pub fn labels(&self, metric: &str) -> Option<&BTreeMap<String, BTreeSet<String>>> {
        self.label_values.get(metric)
    }

    /// Whether a sample of `metric` carries `label="value"`.
    pub fn has(&self, metric: &str, label: &str, value: &str) -> bool {
        self.labels(metric)
            .and_then(|labels| labels.get(label))
            .is_some_and(|values| values.contains(value))
    }

    /// The value of the one series `series`, written as exported (`converge_batches_total`,
    /// `converge_admin_refusals_total{reason="origin"}`; labels in any order); `None` when
    /// it is absent.
    pub fn try_value(&self, series: &str) -> Option<f64> {
        let wanted = parse_sample(&format!("{series} 0"))
            .unwrap_or_else(|why| panic!("{series:?} is not a series: {why}"));
        self.assert_declared(&wanted.name);
        self.samples
            .iter()
            .find(|sample| sample.name == wanted.name && sample.labels == wanted.labels)
            .map(|sample| sample.value)
    }

    /// [`Exposition::try_value`]; panics when the series is absent.
    pub fn value(&self, series: &str) -> f64 {
        self.try_value(series)
            .unwrap_or_else(|| panic!("no series {series} in /metrics:\n{}", self.text))
    }

    /// The sum of the samples named `name` whose labels include `labels` (`&[]`: every
    /// sample of it); `None` when no sample matches.
    pub fn try_sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut matching = self
            .matching(name, labels)
            .map(|sample| sample.value)
            .peekable();
        matching.peek()?;
        Some(matching.sum())
    }

    /// The samples named `name` whose labels include `labels` (`&[]`: every sample of it).
    /// Panics when no family declares `name` (see [`Exposition::try_value`]).
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.assert_declared(name);
        self.samples.iter().filter(move |sample| {
            sample.name == name
                && labels
                    .iter()
                    .all(|(label, want)| sample.labels.get(*label).is_some_and(|v| v == want))
        })
    }

    /// Panics unless a family's `# TYPE` line declares the sample name `name`.
    fn assert_declared(&self, name: &str) {
        let declared = self.families.iter().any(|(family, kind)| {
            Self::sample_names(family, kind)
                .iter()
                .any(|sample| sample == name)
        });
        assert!(
            declared,
            "/metrics declares no metric {name}: serve does not export it (renamed?):\n{}",
            self.text
        );
    }

    /// [`Exposition::try_sum`]; panics when no sample matches.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.try_sum(name, labels).unwrap_or_else(|| {
            panic!(
                "no sample {name} with labels {labels:?} in /metrics:\n{}",
                self.text
            )
        })
    }
}

/// The text as scraped, for a failing assertion's message.
impl fmt::Display for Exposition {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.text)
    }
}

/// `name{label="value",...} value [timestamp]` -> its name, labels (values unescaped) and
/// value.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inside) = rest.strip_prefix('{') {
        let mut chars = inside.chars();
        loop {
            let label: String = chars.by_ref().take_while(|&c| c != '=').collect();
            let label = label.trim_start_matches(',').trim();
            if label.starts_with('}') {
                break;
            }
            if chars.next() != Some('"') {
                return Err(format!("label {label} has no quoted value"));
            }
            let mut value = String::new();
            loop {
                match chars.next().ok_or("unterminated label value")? {
                    '"' => break,
                    '\\' => match chars.next().ok_or("unterminated escape")? {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    c => value.push(c),
                }
            }
            labels.insert(label.to_owned(), value);
            match chars.clone().next() {
                Some(',') => {
                    chars.next();
                    if chars.clone().next() == Some('}') {
                        chars.next();
                        break;
                    }
                }
                Some('}') => {
                    chars.next();
                    break;
                }
                other => return Err(format!("unexpected {other:?} after a label value")),
            }
        }
        rest = chars.as_str();
    }
    let value = rest.split_whitespace().next().ok_or("no value")?;
    let value = value
        .parse()
        .map_err(|error| format!("value {value:?}: {error}"))?;
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// The `/metrics` of the `serve` whose admin endpoint listens on `admin`; an error when it
/// does not answer (not started yet, say) or answers otherwise than 200.
pub async fn scrape(admin: SocketAddr) -> reqwest::Result<Exposition> {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(Exposition::parse(&text))
}

/// Scrapes until `done` holds (up to 60 s) and answers that scrape; a scrape that fails (the
/// endpoint not open yet) is tried again. The failure names `what` and shows the last scrape
/// and `serve`'s `log`.
pub async fn scrape_until(
    admin: SocketAddr,
    log: &Path,
    what: &str,
    done: impl Fn(&Exposition) -> bool,
) -> Exposition {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let exposition = scrape(admin).await.unwrap_or_default();
        if done(&exposition) {
            return exposition;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; metrics:\n{exposition}\nlog:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = concat!(
        "# TYPE converge_decisions counter\n",
        "converge_decisions_total{decision=\"insert\"} 3\n",
        "converge_decisions_total{decision=\"ignore\"} 2\n",
        "# TYPE converge_batches counter\n",
        "converge_batches_total 7\n",
        "# TYPE converge_unavailable counter\n",
        "converge_unavailable_total{service=\"store\",operation=\"write\"} 1\n",
        "converge_unavailable_total{service=\"store\",operation=\"load\"} 4\n",
        "# TYPE converge_rule_swaps counter\n",
        "# TYPE converge_ignores counter\n",
        "converge_ignores_total{rule=\"r@1\",reason=\"say \\\"hi\\\", twice\"} 1\n",
        "# TYPE converge_store_duration_seconds histogram\n",
        "converge_store_duration_seconds_bucket{le=\"+Inf\",operation=\"load\"} 2\n",
        "# TYPE converge_rebalances counter\n",
        "# EOF\n",
    );

    #[test]
    fn values_are_read_by_series_and_summed_by_labels() {
        let exposition = Exposition::parse(TEXT);
        assert_eq!(exposition.value("converge_batches_total"), 7.0);
        assert_eq!(
            exposition.value("converge_unavailable_total{operation=\"load\",service=\"store\"}"),
            4.0
        );
        assert_eq!(
            exposition.sum("converge_unavailable_total", &[("service", "store")]),
            5.0
        );
        assert_eq!(exposition.sum("converge_decisions_total", &[]), 5.0);
        assert!(exposition.has("converge_ignores_total", "reason", "say \"hi\", twice"));
        assert_eq!(
            exposition
                .value("converge_store_duration_seconds_bucket{le=\"+Inf\",operation=\"load\"}"),
            2.0
        );
    }

    #[test]
    fn an_absent_series_is_not_a_zero() {
        let exposition = Exposition::parse(TEXT);
        assert_eq!(exposition.try_value("converge_rebalances_total"), None);
        assert_eq!(exposition.try_value("converge_decisions_total"), None);
        assert_eq!(
            exposition.try_sum("converge_unavailable_total", &[("service", "dead_letters")]),
            None
        );
        assert_eq!(exposition.try_sum("converge_rule_swaps_total", &[]), None);
        assert!(
            std::panic::catch_unwind(|| exposition.value("converge_rebalances_total")).is_err()
        );
        // Not declared at all: a rename, never "none yet".
        for undeclared in ["converge_rebalance_total", "converge_batches"] {
            assert!(std::panic::catch_unwind(|| exposition.try_value(undeclared)).is_err());
            assert!(std::panic::catch_unwind(|| exposition.try_sum(undeclared, &[])).is_err());
        }
        assert!(
            exposition
                .declared_without_samples()
                .contains("converge_rule_swaps_total")
        );
    }
}
