//! The store's series: how long its pipelined round trips take.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::{Metrics, Operation};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: &'static str,
}

/// The series store calls report to.
#[derive(Debug)]
pub(super) struct StoreMetrics {
    duration: Family<OperationLabel, Histogram, fn() -> Histogram>,
}

impl StoreMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        // 50 µs .. ~3.3 s: a pipelined round trip on loopback is well under a millisecond.
        let duration =
            Family::<OperationLabel, Histogram, fn() -> Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.00005, 2.0, 17))
            });
        registry.register(
            "store_duration_seconds",
            "One pipelined store round trip for a batch, by operation (load, write)",
            duration.clone(),
        );
        Self { duration }
    }
}

impl Metrics {
    pub(crate) fn record_store_call(&self, operation: Operation, took: Duration) {
        self.store
            .duration
            .get_or_create(&OperationLabel {
                operation: operation.as_str(),
            })
            .observe(took.as_secs_f64());
    }
}
