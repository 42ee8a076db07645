//! Label values that dashboards and alerts select on, as types: a label value is API, and a
//! typo in a free string would silently start a new series nobody watches.

use std::fmt;

use serde::{Deserialize, Serialize};

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

/// What was asked of a service: the `operation` label of `converge_unavailable_total` (a call
/// that failed and is tried again) and of `converge_store_duration_seconds` (a store round
/// trip, [`Operation::Load`] or [`Operation::Write`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Current states read from the store.
    Load,
    /// A batch's compare-and-sets sent to the store.
    Write,
    /// The store asked to make what it acknowledged durable (the sequential fallback).
    Sync,
    /// Keys that lost every compare-and-set to another writer, waited out and tried again.
    Contended,
    /// Dead letters sent to their queue.
    Send,
    /// Messages read from Kafka.
    Consume,
    /// Order details fetched from the order API.
    Fetch,
    /// A connection opened at start-up.
    Start,
}

impl Operation {
    /// The label value (and how logs name it).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Load => "load",
            Self::Write => "write",
            Self::Sync => "sync",
            Self::Contended => "contended",
            Self::Send => "send",
            Self::Consume => "consume",
            Self::Fetch => "fetch",
            Self::Start => "start",
        }
    }
}

/// Whether a rule version serves or decides beside the serving one without applying: the
/// `role` label of `converge_rule_swaps_total`, `converge_rule_decisions_total` and
/// `converge_ignore_share`, and how logs, status and the fleet's keys name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Decides and applies: the serving rule.
    Active,
    /// Decides beside the active rule; its decisions are compared, never applied.
    Shadow,
}

impl Role {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Shadow => "shadow",
        }
    }
}

/// What came of a rule candidate: the `result` label of `converge_rule_swaps_total`, and what
/// status reports of the last swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SwapResult {
    /// The candidate took its role.
    Applied,
    /// A gate refused it; nothing that serves changed.
    Refused,
    /// An operator brought back a refused version over its refusal (`--force`,
    /// `?force=true`); counted beside what came of it then, which is what a swap record holds.
    Overridden,
}

impl SwapResult {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Refused => "refused",
            Self::Overridden => "overridden",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Label values are API: each is pinned here, so a rename fails a test before it reaches a
    // dashboard.

    #[test]
    fn stage_values_are_pinned() {
        for (stage, value) in [
            (Stage::Decode, "decode"),
            (Stage::Enrich, "enrich"),
            (Stage::Load, "load"),
            (Stage::Fold, "fold"),
            (Stage::Write, "write"),
            (Stage::DeadLetter, "dead_letter"),
            (Stage::Ack, "ack"),
        ] {
            assert_eq!(stage.as_str(), value);
        }
    }

    #[test]
    fn service_values_are_pinned() {
        for (service, value) in [
            (Service::Store, "store"),
            (Service::DeadLetterQueue, "dead-letter queue"),
            (Service::Kafka, "kafka"),
            (Service::OrderApi, "order API"),
            (Service::Fleet, "fleet"),
        ] {
            assert_eq!(service.as_str(), value);
            assert_eq!(service.to_string(), value);
        }
    }

    #[test]
    fn operation_values_are_pinned() {
        for (operation, value) in [
            (Operation::Load, "load"),
            (Operation::Write, "write"),
            (Operation::Sync, "sync"),
            (Operation::Contended, "contended"),
            (Operation::Send, "send"),
            (Operation::Consume, "consume"),
            (Operation::Fetch, "fetch"),
            (Operation::Start, "start"),
        ] {
            assert_eq!(operation.as_str(), value);
        }
    }

    #[test]
    fn role_values_are_pinned_and_serialised_alike() {
        for (role, value) in [(Role::Active, "active"), (Role::Shadow, "shadow")] {
            assert_eq!(role.as_str(), value);
            assert_eq!(serde_json::to_value(role).ok(), Some(value.into()));
        }
    }

    #[test]
    fn swap_result_values_are_pinned_and_serialised_alike() {
        for (result, value) in [
            (SwapResult::Applied, "applied"),
            (SwapResult::Refused, "refused"),
            (SwapResult::Overridden, "overridden"),
        ] {
            assert_eq!(result.as_str(), value);
            assert_eq!(serde_json::to_value(result).ok(), Some(value.into()));
        }
    }
}
