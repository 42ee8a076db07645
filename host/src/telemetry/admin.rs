//! The admin endpoint's series: requests refused, by reason.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::Metrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The series the admin endpoint reports to.
#[derive(Debug)]
pub(super) struct AdminMetrics {
    refusals: Family<ReasonLabel, Counter>,
}

impl AdminMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let refusals = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "admin_refusals",
            "Admin endpoint requests refused, by reason (disabled, origin, no_token, bad_token, content_type)",
            refusals.clone(),
        );
        Self { refusals }
    }
}

impl Metrics {
    pub(crate) fn record_admin_refusal(&self, reason: &'static str) {
        self.admin
            .refusals
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}
