//! Outages' series: failed calls to a service, each waited out and tried again.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::{Metrics, Operation, Service};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UnavailableLabel {
    service: &'static str,
    operation: &'static str,
}

/// The series every component that waits out an outage reports to.
#[derive(Debug)]
pub(super) struct UnavailableMetrics {
    unavailable: Family<UnavailableLabel, Counter>,
}

impl UnavailableMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let unavailable = Family::<UnavailableLabel, Counter>::default();
        registry.register(
            "unavailable",
            "Failed calls to the store or dead-letter queue, each retried after a backoff",
            unavailable.clone(),
        );
        Self { unavailable }
    }
}

impl Metrics {
    pub(crate) fn record_unavailable(&self, service: Service, operation: Operation) {
        self.unavailable
            .unavailable
            .get_or_create(&UnavailableLabel {
                service: service.as_str(),
                operation: operation.as_str(),
            })
            .inc();
    }
}
