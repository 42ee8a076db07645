//! Enrichment's series: the order API's keys and how long a batch's fetch took.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::Metrics;

/// The series enrichment reports to.
#[derive(Debug)]
pub(super) struct EnrichMetrics {
    duration: Histogram,
    keys: Counter,
}

impl EnrichMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let duration = Histogram::new(exponential_buckets(0.0001, 2.0, 17));
        registry.register(
            "enrichment_duration_seconds",
            "Fetching the distinct id-only keys of one batch from the order API",
            duration.clone(),
        );
        let keys = Counter::default();
        registry.register(
            "enrichment_keys",
            "Keys fetched from the order API",
            keys.clone(),
        );
        Self { duration, keys }
    }
}

impl Metrics {
    pub(crate) fn record_enrichment(&self, keys: usize, took: Duration) {
        self.enrich.keys.inc_by(keys as u64);
        self.enrich.duration.observe(took.as_secs_f64());
    }
}
