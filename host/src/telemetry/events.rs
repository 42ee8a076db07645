//! Named events: one log line and one metric each, emitted together so they cannot drift apart.
//!
//! A component builds the event where it happens and hands it to [`Metrics::emit`]; the event
//! decides its level, its fields and what it counts.

use std::fmt::Display;
use std::time::Duration;

use super::Metrics;

/// Something worth a log line and a count.
pub(crate) trait InternalEvent {
    /// Logs the event and counts it in `metrics`.
    fn emit(self, metrics: &Metrics);
}

/// A call to the store or the dead-letter queue failed; it is tried again after `retry_in`.
pub(crate) struct Unavailable<'a> {
    pub service: &'static str,
    pub operation: &'static str,
    pub reason: &'a dyn Display,
    pub retry_in: Duration,
}

impl InternalEvent for Unavailable<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::warn!(
            what = self.service,
            operation = self.operation,
            reason = %self.reason,
            retry_in = ?self.retry_in,
            "unavailable; retrying"
        );
        metrics.record_unavailable(self.service, self.operation);
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
    pub role: &'static str,
    pub rule: &'a str,
    pub hash: &'a str,
    pub origin: &'a str,
}

impl InternalEvent for RuleSwapped<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::info!(
            role = self.role,
            rule = %self.rule,
            hash = self.hash,
            origin = self.origin,
            "rule swapped"
        );
        metrics.record_swap(self.role, "applied", None);
    }
}

/// A candidate rule was refused by a gate; the serving rule keeps serving.
pub(crate) struct RuleRefused<'a> {
    pub role: &'static str,
    pub hash: &'a str,
    pub origin: &'a str,
    /// The gate that refused, as metrics label it.
    pub gate: &'static str,
    pub reason: &'a dyn Display,
}

impl InternalEvent for RuleRefused<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::warn!(
            role = self.role,
            origin = self.origin,
            hash = self.hash,
            gate = self.gate,
            reason = %self.reason,
            "rule refused"
        );
        metrics.record_swap(self.role, "refused", Some(self.gate));
    }
}

/// Partitions are `u32` to Fluvio and `i32` to Kafka; the label takes Kafka's.
fn partition_label(partition: u32) -> i32 {
    i32::try_from(partition).unwrap_or(i32::MAX)
}
