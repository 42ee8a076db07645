//! Dead letters to a Redis stream: one entry per letter with fields `kind`, `reason`,
//! `position`, `rule`, `key` (the message key, if any) and `bytes` (the original body), cut
//! as the Kafka sink cuts them: a body over `max_body_bytes` (then `truncated_from` gives its
//! size), a key over 16 KiB (`key_truncated_from`); the reason was cut when the letter was
//! made. The stream keeps about `max_len` entries and about `max_bytes` of them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::dead_letter::{DeadLetter, DeadLetterError, DeadLetterSink, MAX_KEY_BYTES};

/// A Redis stream receiving dead letters.
#[derive(Clone)]
pub struct RedisDeadLetters {
    connection: ConnectionManager,
    stream: String,
    max_len: u64,
    max_bytes: u64,
    max_body_bytes: usize,
    /// The largest entry this process has added, in bytes: the stream keeps about
    /// `max_bytes` of entries that large.
    largest_entry: Arc<AtomicU64>,
}

impl std::fmt::Debug for RedisDeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDeadLetters")
            .field("stream", &self.stream)
            .finish()
    }
}

impl RedisDeadLetters {
    /// Connects to the server at `url` (as the store's URL, user and password included) with
    /// the store's default timeout; the stream is created by the first dead letter. A lost
    /// connection is re-established on the next send.
    pub async fn connect(url: &str, stream: &str) -> Result<Self, DeadLetterError> {
        Self::connect_with_timeout(url, stream, crate::store::DEFAULT_TIMEOUT).await
    }

    /// Connects as [`RedisDeadLetters::connect`]; a connection attempt or an answer taking
    /// longer than `timeout` (the store's) fails the send as an outage, waited out.
    pub async fn connect_with_timeout(
        url: &str,
        stream: &str,
        timeout: Duration,
    ) -> Result<Self, DeadLetterError> {
        let error = |source| DeadLetterError::Redis {
            stream: stream.to_owned(),
            source,
        };
        let client = redis::Client::open(url).map_err(error)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        let connection = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(error)?;
        Ok(Self {
            connection,
            stream: stream.to_owned(),
            max_len: super::DEFAULT_STREAM_MAX_LEN,
            max_bytes: super::DEFAULT_STREAM_MAX_BYTES,
            max_body_bytes: super::DEFAULT_STREAM_MAX_BODY_BYTES,
            largest_entry: Arc::default(),
        })
    }

    /// Keeps the stream at about `max_len` entries (`XADD … MAXLEN ~`), the oldest trimmed
    /// first, so a flood of bad messages cannot fill Redis.
    pub fn with_max_len(mut self, max_len: u64) -> Self {
        self.max_len = max_len;
        self
    }

    /// Keeps about `max_bytes` of entries: at most `max_bytes` over the largest entry added
    /// (and `max_len`) are kept.
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Cuts bodies beyond `max_body_bytes` (the entry's `truncated_from` field gives the
    /// size; the whole message stays in the source).
    pub fn with_max_body_bytes(mut self, max_body_bytes: usize) -> Self {
        self.max_body_bytes = max_body_bytes;
        self
    }

    /// The `MAXLEN` that keeps the stream within both bounds.
    fn trim_to(&self) -> u64 {
        let largest = self.largest_entry.load(Ordering::Relaxed).max(1);
        self.max_len.min(self.max_bytes / largest).max(1)
    }
}

impl DeadLetterSink for RedisDeadLetters {
    async fn send(&self, letters: &[DeadLetter]) -> Result<(), DeadLetterError> {
        if letters.is_empty() {
            return Ok(());
        }
        let entries: Vec<Entry<'_>> = letters
            .iter()
            .map(|letter| Entry::of(letter, self.max_body_bytes))
            .collect();
        for entry in &entries {
            self.largest_entry
                .fetch_max(entry.bytes() as u64, Ordering::Relaxed);
        }
        let trim_to = self.trim_to();
        let mut pipe = redis::pipe();
        for (letter, entry) in letters.iter().zip(&entries) {
            let command = pipe
                .cmd("XADD")
                .arg(&self.stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(trim_to)
                .arg("*")
                .arg("kind")
                .arg(letter.kind.as_str())
                .arg("reason")
                .arg(&letter.reason)
                .arg("position")
                .arg(letter.position.to_string())
                .arg("rule")
                .arg(&letter.rule)
                .arg("key")
                .arg(entry.key)
                .arg("bytes")
                .arg(entry.body);
            if let Some(size) = entry.body_cut_from {
                command.arg("truncated_from").arg(size);
            }
            if let Some(size) = entry.key_cut_from {
                command.arg("key_truncated_from").arg(size);
            }
            command.ignore();
        }
        pipe.query_async::<()>(&mut self.connection.clone())
            .await
            .map_err(|source| DeadLetterError::Redis {
                stream: self.stream.clone(),
                source,
            })
    }
}

/// A letter as a stream entry: its key and body cut to the limits.
struct Entry<'a> {
    key: &'a [u8],
    key_cut_from: Option<usize>,
    body: &'a [u8],
    body_cut_from: Option<usize>,
    fixed: usize,
}

impl<'a> Entry<'a> {
    fn of(letter: &'a DeadLetter, max_body_bytes: usize) -> Self {
        let key = letter.key.as_deref().unwrap_or_default();
        let cut = |bytes: &'a [u8], limit: usize| {
            (
                &bytes[..bytes.len().min(limit)],
                (bytes.len() > limit).then_some(bytes.len()),
            )
        };
        let (key, key_cut_from) = cut(key, MAX_KEY_BYTES);
        let (body, body_cut_from) = cut(&letter.bytes, max_body_bytes);
        Self {
            key,
            key_cut_from,
            body,
            body_cut_from,
            fixed: letter.reason.len() + letter.rule.len() + 128,
        }
    }

    fn bytes(&self) -> usize {
        self.key.len() + self.body.len() + self.fixed
    }
}
