//! JSON lines from a file or stdin.

use std::path::Path;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

use super::{Message, Position, Source, SourceError};

/// Newline-delimited messages from a file or stdin; blank lines are skipped. Positions are line
/// numbers; there is nothing to acknowledge to.
pub struct JsonLinesSource<R> {
    reader: R,
    line: u64,
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
