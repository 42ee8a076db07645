//! The last stage: a finished batch is acknowledged to its source, then recorded: its tally
//! into the pipeline's stats and, aggregated once per batch, into the metrics; its dead letters
//! counted and logged; its applied decisions told to the rule (its ignore share, its
//! probation).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::batch::Batch;
use super::{Pipeline, PipelineError};
use crate::fault::{self, CrashPoint};
use crate::rule::Rule;
use crate::source::Source;
use crate::telemetry::Stage;
use crate::telemetry::events::DeadLettered;

impl<R: Rule, S, D> Pipeline<R, S, D> {
    /// Acknowledges finished batches to the source and records them, in order.
    pub(super) async fn finish(
        &mut self,
        done: Vec<Batch>,
        source: &mut impl Source,
    ) -> Result<(), PipelineError> {
        for batch in done {
            let acking = Instant::now();
            fault::point(CrashPoint::BeforeAck, batch.seq);
            source.ack(&batch.messages).await?;
            fault::point(CrashPoint::AfterAck, batch.seq);
            self.context
                .metrics
                .record_stage(Stage::Ack, acking.elapsed());
            self.record(&batch);
        }
        Ok(())
    }

    /// Records a batch whose writes and dead letters are acknowledged.
    pub(super) fn record(&mut self, batch: &Batch) {
        let (stats, metrics) = (&mut self.stats, &self.context.metrics);
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
        self.rule.applied(&batch.tally.decisions);
    }
}
