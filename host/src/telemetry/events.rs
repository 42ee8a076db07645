//! Named events: one log line and one metric each, emitted together so they cannot drift apart.
//!
//! A component builds the event where it happens and hands it to [`Metrics::emit`]; the event
//! decides its level, its fields and what it counts.

use std::fmt::Display;
use std::time::Duration;

use super::{Metrics, Operation, Role, Service, SwapResult};

/// Something worth a log line and a count.
pub(crate) trait InternalEvent {
    /// Logs the event and counts it in `metrics`.
    fn emit(self, metrics: &Metrics);
}

/// A call to the store or the dead-letter queue failed; it is tried again after `retry_in`.
pub(crate) struct Unavailable<'a> {
    pub service: Service,
    pub operation: Operation,
    pub reason: &'a dyn Display,
    pub retry_in: Duration,
}

impl InternalEvent for Unavailable<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::warn!(
            what = self.service.as_str(),
            operation = self.operation.as_str(),
            reason = %self.reason,
            retry_in = ?self.retry_in,
            "unavailable; retrying"
        );
        metrics.record_unavailable(self.service, self.operation);
    }
}

/// Keys of a batch lost every one of their `attempts` compare-and-sets (another writer is busy
/// on them): from now on they are tried again after a growing backoff, each wait counted as
/// `unavailable{service="store",operation="contended"}`, until they land.
pub(crate) struct KeysContended<'a> {
    pub keys: &'a [&'a str],
    pub attempts: u32,
}

impl InternalEvent for KeysContended<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::warn!(
            keys = ?self.keys,
            attempts = self.attempts,
            "keys still conflicting after every attempt; backing off until they land"
        );
        metrics.record_unavailable(Service::Store, Operation::Contended);
    }
}

/// A key's stored state could not be read: its events are dead-lettered, the value is left
/// for an operator to repair.
pub(crate) struct UnreadableState<'a> {
    pub key: &'a str,
    pub why: &'a str,
    /// How many of the batch's events were set aside with it.
    pub events: usize,
}

impl InternalEvent for UnreadableState<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::error!(
            key = self.key,
            why = self.why,
            events = self.events,
            "stored state unreadable; dead-lettering the key's events and leaving the value as it is"
        );
        metrics.record_unreadable_state();
    }
}

/// A message was dead-lettered (and the dead-letter queue acknowledged it).
pub(crate) struct DeadLettered<'a> {
    /// The dead letter's kind, as metrics label it.
    pub kind: &'static str,
    pub position: &'a dyn Display,
    pub reason: &'a str,
}

impl InternalEvent for DeadLettered<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::info!(
            kind = self.kind,
            position = %self.position,
            reason = %self.reason,
            "dead-lettered"
        );
        metrics.record_dead_letter(self.kind);
    }
}

/// A partition's stream skipped offsets `first_missing..=last_missing`.
pub(crate) struct SourceGap<'a> {
    pub topic: &'a str,
    pub partition: u32,
    pub first_missing: i64,
    pub last_missing: i64,
    /// How many times in a row this gap has shown.
    pub rereads: u32,
    /// Whether the records are read again (else they are reported as lost).
    pub reread: bool,
}

impl InternalEvent for SourceGap<'_> {
    fn emit(self, metrics: &Metrics) {
        if self.reread {
            tracing::warn!(
                topic = %self.topic,
                partition = self.partition,
                first_missing = self.first_missing,
                last_missing = self.last_missing,
                rereads = self.rereads,
                "the stream skipped records; reading them again"
            );
        } else {
            tracing::error!(
                topic = %self.topic,
                partition = self.partition,
                first_missing = self.first_missing,
                last_missing = self.last_missing,
                rereads = self.rereads,
                "the stream keeps skipping these records; dead-lettering the range as lost"
            );
        }
        metrics.record_source_gap(self.topic, partition_label(self.partition));
    }
}

/// A partition's stream is opened again after it failed, ended or skipped offsets.
pub(crate) struct SourceReconnect<'a> {
    pub topic: &'a str,
    pub partition: u32,
    pub from_offset: Option<i64>,
}

impl InternalEvent for SourceReconnect<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::debug!(
            topic = %self.topic,
            partition = self.partition,
            from_offset = ?self.from_offset,
            "reopening the partition's stream"
        );
        metrics.record_source_reconnect(self.topic, partition_label(self.partition));
    }
}

/// A candidate rule took its role.
pub(crate) struct RuleSwapped<'a> {
    pub role: Role,
    pub rule: &'a str,
    pub hash: &'a str,
    pub origin: &'a str,
}

impl InternalEvent for RuleSwapped<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::info!(
            role = self.role.as_str(),
            rule = %self.rule,
            hash = self.hash,
            origin = self.origin,
            "rule swapped"
        );
        metrics.record_swap(self.role, SwapResult::Applied, None);
    }
}

/// A candidate rule was refused by a gate; the serving rule keeps serving.
pub(crate) struct RuleRefused<'a> {
    pub role: Role,
    pub hash: &'a str,
    pub origin: &'a str,
    /// The gate that refused, as metrics label it.
    pub gate: &'static str,
    pub reason: &'a dyn Display,
}

impl InternalEvent for RuleRefused<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::warn!(
            role = self.role.as_str(),
            origin = self.origin,
            hash = self.hash,
            gate = self.gate,
            reason = %self.reason,
            "rule refused"
        );
        metrics.record_swap(self.role, SwapResult::Refused, Some(self.gate));
    }
}

/// An operator brought back a refused rule version over its refusal (`--force`,
/// `?force=true`); counted as `rule_swaps_total{result="overridden",gate=<the refusal's>}`.
pub(crate) struct RuleOverride<'a> {
    pub role: Role,
    pub hash: &'a str,
    pub origin: &'a str,
    /// The gate of the refusal overridden, as metrics label it.
    pub gate: &'static str,
}

impl InternalEvent for RuleOverride<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::warn!(
            role = self.role.as_str(),
            origin = self.origin,
            hash = self.hash,
            gate = self.gate,
            "refusal overridden by an operator; the version is judged again"
        );
        metrics.record_swap(self.role, SwapResult::Overridden, Some(self.gate));
    }
}

/// A request to the admin endpoint was refused before it reached its handler.
pub(crate) struct AdminRefused<'a> {
    /// Why, as metrics label it: `disabled`, `origin`, `no_token`, `bad_token`,
    /// `content_type`.
    pub reason: &'static str,
    pub method: &'a str,
    /// The path, without its query.
    pub path: &'a str,
    /// The caller's address, when the server knows it.
    pub peer: Option<std::net::SocketAddr>,
    /// The request's `Origin` header, when it sent one (the caller chose it: logged quoted).
    pub origin: Option<&'a str>,
}

impl InternalEvent for AdminRefused<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::warn!(
            reason = self.reason,
            method = self.method,
            path = ?self.path,
            peer = ?self.peer,
            origin = ?self.origin,
            "admin request refused"
        );
        metrics.record_admin_refusal(self.reason);
    }
}

/// The control rolled a swap back by itself: the new version's share of `ignore` decisions
/// jumped above the previous version's (`rule.auto_rollback`).
pub(crate) struct RuleAutoRolledBack<'a> {
    /// The version rolled back, refused from now on.
    pub rule: &'a str,
    pub hash: &'a str,
    /// The version serving again.
    pub to_rule: &'a str,
    pub to_hash: &'a str,
    pub share: f64,
    pub previous_share: f64,
    /// Decisions the rolled-back version made.
    pub decisions: u64,
    pub reason: &'a str,
}

impl InternalEvent for RuleAutoRolledBack<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::error!(
            rule = %self.rule,
            hash = self.hash,
            to_rule = %self.to_rule,
            to_hash = self.to_hash,
            share = self.share,
            previous_share = self.previous_share,
            decisions = self.decisions,
            reason = %self.reason,
            "rule rolled back by itself: its ignore share jumped; events it ignored were acknowledged (replay to repair them)"
        );
        metrics.record_auto_rollback();
    }
}

/// Partitions are `u32` to Fluvio and `i32` to Kafka; the label takes Kafka's.
fn partition_label(partition: u32) -> i32 {
    i32::try_from(partition).unwrap_or(i32::MAX)
}
