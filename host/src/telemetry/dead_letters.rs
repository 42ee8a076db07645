//! The dead-letter queue's series: messages dead-lettered, by kind.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::Metrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// The series dead letters report to.
#[derive(Debug)]
pub(super) struct DeadLetterMetrics {
    dead_letters: Family<KindLabel, Counter>,
}

impl DeadLetterMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let dead_letters = Family::<KindLabel, Counter>::default();
        registry.register(
            "dead_letters",
            "Messages dead-lettered, by kind",
            dead_letters.clone(),
        );
        Self { dead_letters }
    }
}

impl Metrics {
    pub(crate) fn record_dead_letter(&self, kind: &'static str) {
        self.dead_letters
            .dead_letters
            .get_or_create(&KindLabel { kind })
            .inc();
    }
}
