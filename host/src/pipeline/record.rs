//! The record stage: a finished batch's tally goes into the pipeline's stats and, aggregated
//! once per batch, into the metrics; its dead letters are counted and logged.

use std::time::{SystemTime, UNIX_EPOCH};

use super::Stats;
use super::batch::Batch;
use crate::telemetry::Metrics;
use crate::telemetry::events::DeadLettered;

/// Records a batch whose writes and dead letters are acknowledged.
pub(super) fn record(stats: &mut Stats, metrics: &Metrics, batch: &Batch) {
    let started = batch.started;
    for letter in &batch.letters {
        *stats.dead_letters.entry(letter.kind).or_default() += 1;
        metrics.emit(DeadLettered {
            kind: letter.kind.as_str(),
            position: &letter.position,
            reason: &letter.reason,
        });
    }
    for (kind, count) in &batch.tally.decisions {
        *stats.decisions.entry(*kind).or_default() += count;
        metrics.record_decisions(*kind, *count);
    }
    metrics.record_ignores(&batch.stamp, &batch.tally.ignores);
    stats.writes += batch.tally.writes;
    stats.conflicts += batch.tally.conflicts;
    stats.batches += 1;
    stats.messages += batch.messages.len() as u64;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        });
    for produced_at_ms in batch.messages.iter().filter_map(|m| m.produced_at_ms) {
        metrics.record_stored_latency(now_ms.saturating_sub(produced_at_ms));
    }
    metrics.record_batch(
        batch.messages.len(),
        batch.tally.writes,
        batch.tally.conflicts,
        started.elapsed(),
    );
    tracing::debug!(
        messages = batch.messages.len(),
        dead_letters = batch.letters.len(),
        took = ?started.elapsed(),
        "batch done"
    );
}
