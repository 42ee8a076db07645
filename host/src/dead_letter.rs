//! Dead letters: messages converge could not apply, kept with everything needed to replay them.

use std::sync::{Mutex, PoisonError};

use serde::Serialize;

use crate::message::Position;

/// Why a message was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterKind {
    /// The message could not be decoded into an event.
    Undecodable,
    /// The rule rejected the event.
    Rejected,
    /// The rule failed on the event (trap, deadline, memory cap, contract violation) even
    /// after a retry on a fresh instance.
    RuleFailed,
    /// An id-only message that could not be enriched.
    NotEnriched,
    /// Records the source could not read because they no longer exist (removed by retention
    /// before they were read); the position is the range's first offset, the reason names it.
    Lost,
}

impl DeadLetterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Undecodable => "undecodable",
            Self::Rejected => "rejected",
            Self::RuleFailed => "rule_failed",
            Self::NotEnriched => "not_enriched",
            Self::Lost => "lost",
        }
    }
}

/// A message that was not applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    pub kind: DeadLetterKind,
    pub reason: String,
    pub position: Position,
    /// The message key as received, if the transport has keys.
    #[serde(skip)]
    pub key: Option<Vec<u8>>,
    /// The message body as received (lossy UTF-8 in JSON output; the bytes are kept).
    #[serde(serialize_with = "lossy_text")]
    pub bytes: Vec<u8>,
    /// `name@version` of the rule that was active.
    pub rule: String,
}

fn lossy_text<S: serde::Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&String::from_utf8_lossy(bytes))
}

#[derive(Debug, thiserror::Error)]
#[error("dead-letter queue unavailable: {0}")]
pub struct DeadLetterError(pub String);

/// Where dead letters go. A batch's offsets are stored only after its dead letters are
/// acknowledged here.
#[allow(async_fn_in_trait)] // Used through generics only.
pub trait DeadLetterSink {
    async fn send(&self, letters: &[DeadLetter]) -> Result<(), DeadLetterError>;
}

/// The embedded default: dead letters kept in memory for the run's report.
#[derive(Debug, Default)]
pub struct MemoryDeadLetters {
    letters: Mutex<Vec<DeadLetter>>,
}

impl MemoryDeadLetters {
    pub fn new() -> Self {
        Self::default()
    }

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
