//! Where messages come from: the [`Source`] trait and the JSON-lines source.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use crate::message::{Message, Position};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read input: {0}")]
    Io(#[from] std::io::Error),
    #[error("kafka: {0}")]
    Kafka(String),
    #[error("fluvio: {0}")]
    Fluvio(String),
}

/// A stream of messages, read in batches and acknowledged by position.
#[allow(async_fn_in_trait)] // Used through generics only.
pub trait Source {
    /// Up to `max` messages; an empty batch means the stream has ended.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Message>, SourceError>;

    /// Marks every message of a processed batch as done: its state (or dead letter) is
    /// acknowledged by the store, so it is never delivered again after a restart.
    async fn ack(&mut self, batch: &[Message]) -> Result<(), SourceError>;
}

/// Newline-delimited messages from a file or stdin; blank lines are skipped. Positions are line
/// numbers; there is nothing to acknowledge to.
#[derive(Debug)]
pub struct JsonLinesSource<R> {
    reader: R,
    line: u64,
}

impl<R: AsyncBufRead + Unpin> JsonLinesSource<R> {
    pub fn new(reader: R) -> Self {
        Self { reader, line: 0 }
    }
}

impl<R: AsyncBufRead + Unpin> Source for JsonLinesSource<R> {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Message>, SourceError> {
        let mut batch = Vec::with_capacity(max);
        while batch.len() < max {
            // Bytes, not a String: a line of invalid UTF-8 is the message's problem (it is
            // dead-lettered), not the source's.
            let mut bytes = Vec::new();
            if self.reader.read_until(b'\n', &mut bytes).await? == 0 {
                break;
            }
            self.line += 1;
            while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                bytes.pop();
            }
            if bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            batch.push(Message {
                position: Position::Line { line: self.line },
                key: None,
                payload: Some(bytes),
                produced_at_ms: None,
                lost: None,
            });
        }
        Ok(batch)
    }

    async fn ack(&mut self, _batch: &[Message]) -> Result<(), SourceError> {
        Ok(())
    }
}
