//! `[pipeline]`: batches, the field mapping, retries and backoff, with their defaults and
//! validation.

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, Problem, invalid};
use converge_codec::FieldMapping;

/// `[pipeline]`: batches, field mapping, retries and backoff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// The most messages in one batch.
    pub batch_size: usize,
    /// How a message's fields map to an event.
    pub mapping: FieldMapping,
    /// How often a key is decided again at once after losing a compare-and-set race; past
    /// that, it is tried again after a growing backoff (`backoff_ms` to `max_backoff_ms`,
    /// counted as `unavailable{service="store",operation="contended"}`) until it lands.
    pub max_write_attempts: u32,
    /// How often a failed decision is retried on a fresh rule instance before the event is
    /// dead-lettered.
    pub rule_retries: u32,
    /// The first wait after the store or the dead-letter queue was unavailable, in
    /// milliseconds; each further wait doubles, up to `max_backoff_ms`. Retries go on until
    /// the step succeeds or shutdown is asked for: the batch is never skipped.
    pub backoff_ms: u64,
    /// The longest wait between two attempts, in milliseconds.
    pub max_backoff_ms: u64,
    /// The most batches decided whose writes are not acknowledged yet: while they are on
    /// their way, the next batch is decided. 1 runs batches one at a time.
    pub max_in_flight: usize,
    /// How many keys' acknowledged states the write-through cache keeps (least recently used
    /// evicted), so a key written or read recently needs no load. 0 turns it off; keys of
    /// batches in flight are kept regardless.
    pub state_cache_keys: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            batch_size: 512,
            mapping: FieldMapping::default(),
            max_write_attempts: 16,
            rule_retries: 1,
            backoff_ms: 50,
            max_backoff_ms: 5_000,
            max_in_flight: 4,
            state_cache_keys: 65_536,
        }
    }
}

impl PipelineConfig {
    /// Checks the sizes and counts that must be positive.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.batch_size == 0 {
            return invalid("pipeline.batch_size", Problem::NotPositive);
        }
        if self.max_in_flight == 0 {
            return invalid("pipeline.max_in_flight", Problem::NotPositive);
        }
        if self.max_write_attempts == 0 {
            return invalid("pipeline.max_write_attempts", Problem::NotPositive);
        }
        Ok(())
    }
}
