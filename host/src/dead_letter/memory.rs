//! Dead letters kept in memory: the embedded default, for `converge run`'s report.

use std::sync::{Mutex, PoisonError};

use super::{DeadLetter, DeadLetterError, DeadLetterSink};

/// The embedded default: dead letters kept in memory for the run's report.
#[derive(Debug, Default)]
pub struct MemoryDeadLetters {
    letters: Mutex<Vec<DeadLetter>>,
}

impl MemoryDeadLetters {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every dead letter sent so far, in the order sent.
    pub fn letters(&self) -> Vec<DeadLetter> {
        self.letters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl DeadLetterSink for MemoryDeadLetters {
    async fn send(&self, letters: &[DeadLetter]) -> Result<(), DeadLetterError> {
        self.letters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(letters);
        Ok(())
    }
}
