//! JSON lines from a file or stdin.

use std::path::Path;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

use super::{Message, Position, Source, SourceError};

/// Newline-delimited messages from a file or stdin; blank lines are skipped. Positions are line
/// numbers; there is nothing to acknowledge to.
pub struct JsonLinesSource<R> {
    reader: R,
    line: u64,
    /// A line read in part by a batch that was dropped (reading resumes into it).
    partial: Vec<u8>,
    /// Messages taken by a batch that was dropped before it was returned.
    collected: Vec<Message>,
}

impl<R> std::fmt::Debug for JsonLinesSource<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonLinesSource")
            .field("line", &self.line)
            .finish_non_exhaustive()
    }
}

impl<R: AsyncBufRead + Unpin> JsonLinesSource<R> {
    /// Reads messages from `reader`, counting lines from 1.
    pub fn new(reader: R) -> Self {
        Self {
            reader,
            line: 0,
            partial: Vec::new(),
            collected: Vec::new(),
        }
    }
}

impl<R: AsyncBufRead + Unpin> Source for JsonLinesSource<R> {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Message>, SourceError> {
        while self.collected.len() < max {
            // Bytes, not a String: a line of invalid UTF-8 is the message's problem (it is
            // dead-lettered), not the source's. `read_until` appends what it read before a
            // cancellation, so a dropped batch loses no part of a line.
            if self.reader.read_until(b'\n', &mut self.partial).await? == 0
                && self.partial.is_empty()
            {
                break;
            }
            let mut bytes = std::mem::take(&mut self.partial);
            self.line += 1;
            while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                bytes.pop();
            }
            if bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            self.collected.push(Message {
                position: Position::Line { line: self.line },
                key: None,
                payload: Some(bytes),
                produced_at_ms: None,
                lost: None,
            });
        }
        Ok(std::mem::take(&mut self.collected))
    }

    async fn ack(&mut self, _batch: &[Message]) -> Result<(), SourceError> {
        Ok(())
    }
}

/// A reader of JSON lines: the file at `path`, or stdin when `path` is `-`.
pub type LinesReader = Box<dyn AsyncBufRead + Unpin + Send>;

/// Opens the JSON lines at `path` (`-`: stdin) as a source.
pub async fn open_lines(path: &Path) -> std::io::Result<JsonLinesSource<LinesReader>> {
    let reader: LinesReader = if path.as_os_str() == "-" {
        Box::new(BufReader::new(tokio::io::stdin()))
    } else {
        Box::new(BufReader::new(tokio::fs::File::open(path).await?))
    };
    Ok(JsonLinesSource::new(reader))
}
