//! The sources' series: consumer-group rebalances, and each partition's lag, gaps and
//! reconnects.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Metrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabel {
    topic: String,
    partition: i32,
}

impl PartitionLabel {
    fn new(topic: &str, partition: i32) -> Self {
        Self {
            topic: topic.to_owned(),
            partition,
        }
    }
}

/// The series the sources report to.
#[derive(Debug)]
pub(super) struct SourceMetrics {
    rebalances: Counter,
    consumer_lag: Family<PartitionLabel, Gauge>,
    gaps: Family<PartitionLabel, Counter>,
    reconnects: Family<PartitionLabel, Counter>,
}

impl SourceMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let rebalances = Counter::default();
        registry.register(
            "rebalances",
            "Consumer-group assignments and revocations this member went through",
            rebalances.clone(),
        );
        let consumer_lag = Family::<PartitionLabel, Gauge>::default();
        registry.register(
            "consumer_lag",
            "Messages between the last acknowledged offset and the partition's end",
            consumer_lag.clone(),
        );
        let gaps = Family::<PartitionLabel, Counter>::default();
        registry.register(
            "source_gaps",
            "Ranges of offsets a partition's stream skipped; each is read again, or dead-lettered as lost when the records no longer exist",
            gaps.clone(),
        );
        let reconnects = Family::<PartitionLabel, Counter>::default();
        registry.register(
            "source_reconnects",
            "Partition streams opened again after they failed, ended or skipped offsets",
            reconnects.clone(),
        );
        Self {
            rebalances,
            consumer_lag,
            gaps,
            reconnects,
        }
    }
}

impl Metrics {
    pub(crate) fn record_rebalance(&self) {
        self.source.rebalances.inc();
    }

    /// Records how far behind its partition's end this consumer is.
    pub(crate) fn set_consumer_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.source
            .consumer_lag
            .get_or_create(&PartitionLabel::new(topic, partition))
            .set(lag.max(0));
    }

    /// Forgets a partition's lag when this consumer gives the partition up: its last value
    /// would otherwise stay exported for good, and be added to its new owner's by the lag alerts.
    pub(crate) fn forget_consumer_lag(&self, topic: &str, partition: i32) {
        self.source
            .consumer_lag
            .remove(&PartitionLabel::new(topic, partition));
    }

    /// Records a range of offsets a partition's stream skipped.
    pub(crate) fn record_source_gap(&self, topic: &str, partition: i32) {
        self.source
            .gaps
            .get_or_create(&PartitionLabel::new(topic, partition))
            .inc();
    }

    /// Records a partition stream opened again.
    pub(crate) fn record_source_reconnect(&self, topic: &str, partition: i32) {
        self.source
            .reconnects
            .get_or_create(&PartitionLabel::new(topic, partition))
            .inc();
    }
}
