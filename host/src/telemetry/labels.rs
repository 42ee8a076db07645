//! Label values that dashboards and alerts select on, as types: a label value is API, and a
//! typo in a free string would silently start a new series nobody watches.

use std::fmt;

/// A pipeline stage: the `stage` label of `converge_stage_duration_seconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Messages decoded into events.
    Decode,
    /// Id-only messages fetched from the order API.
    Enrich,
    /// Current states loaded from the store (the keys the cache does not hold).
    Load,
    /// Each key's events folded through the rule.
    Fold,
    /// A batch's compare-and-sets, from take-off to answer.
    Write,
    /// A batch's dead letters sent and answered.
    DeadLetter,
    /// A finished batch acknowledged to its source.
    Ack,
}

impl Stage {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Decode => "decode",
            Self::Enrich => "enrich",
            Self::Load => "load",
            Self::Fold => "fold",
            Self::Write => "write",
            Self::DeadLetter => "dead_letter",
            Self::Ack => "ack",
        }
    }
}

/// What converge waits for when it is unavailable: the `service` label of
/// `converge_unavailable_total`, and the service an interrupted wait names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Service {
    /// The store (Redis or Redis Cluster).
    Store,
    /// The dead-letter queue (Kafka topic or Redis stream).
    DeadLetterQueue,
    /// The Kafka cluster the source reads.
    Kafka,
    /// The order-detail API enrichment asks.
    OrderApi,
    /// The fleet's Redis.
    Fleet,
}

impl Service {
    /// The label value (and how logs name it).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Store => "store",
            Self::DeadLetterQueue => "dead-letter queue",
            Self::Kafka => "kafka",
            Self::OrderApi => "order API",
            Self::Fleet => "fleet",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
