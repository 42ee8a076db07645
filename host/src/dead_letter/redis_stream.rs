//! Dead letters to a Redis stream: one entry per letter with fields `kind`, `reason`,
//! `position`, `rule`, `key` (the message key, if any) and `bytes` (the original body).

use redis::aio::ConnectionManager;

use crate::dead_letter::{DeadLetter, DeadLetterError, DeadLetterSink};

/// A Redis stream receiving dead letters.
#[derive(Clone)]
pub struct RedisDeadLetters {
    connection: ConnectionManager,
    stream: String,
    max_len: u64,
}

impl std::fmt::Debug for RedisDeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDeadLetters")
            .field("stream", &self.stream)
            .finish()
    }
}

impl RedisDeadLetters {
    /// Connects to the server at `url` (as the store's URL, user and password included); the
    /// stream is created by the first dead letter. A lost connection is re-established on
    /// the next send.
    pub async fn connect(url: &str, stream: &str) -> Result<Self, DeadLetterError> {
        let error = |source| DeadLetterError::Redis {
            stream: stream.to_owned(),
            source,
        };
        let client = redis::Client::open(url).map_err(error)?;
        let connection = client.get_connection_manager().await.map_err(error)?;
        Ok(Self {
            connection,
            stream: stream.to_owned(),
            max_len: crate::config::DEFAULT_STREAM_MAX_LEN,
        })
    }

    /// Keeps the stream at about `max_len` entries (`XADD … MAXLEN ~`), the oldest trimmed
    /// first, so a flood of bad messages cannot fill Redis.
    pub fn with_max_len(mut self, max_len: u64) -> Self {
        self.max_len = max_len;
        self
    }
}

impl DeadLetterSink for RedisDeadLetters {
    async fn send(&self, letters: &[DeadLetter]) -> Result<(), DeadLetterError> {
        if letters.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for letter in letters {
            pipe.cmd("XADD")
                .arg(&self.stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.max_len)
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
                .arg(letter.key.as_deref().unwrap_or_default())
                .arg("bytes")
                .arg(letter.bytes.as_slice())
                .ignore();
        }
        pipe.query_async::<()>(&mut self.connection.clone())
            .await
            .map_err(|source| DeadLetterError::Redis {
                stream: self.stream.clone(),
                source,
            })
    }
}
