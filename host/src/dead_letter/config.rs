//! `[dead_letter]`: where messages that cannot be stored go, each queue's settings and their
//! defaults. How a queue fits the source and store is checked with the whole configuration
//! (`Config::validate`).

use serde::{Deserialize, Serialize};

/// Where dead letters go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum DeadLetterConfig {
    /// A Kafka topic, through the source's brokers and properties (feature `kafka`).
    Kafka(KafkaDeadLetterConfig),
    /// A Redis stream on the store's server (feature `redis`).
    RedisStream(RedisStreamConfig),
}

/// `dead_letter.kind = "kafka"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaDeadLetterConfig {
    /// The dead-letter topic.
    pub topic: String,
    /// Bodies beyond this are cut (with a `converge-truncated-from` header); keep it under
    /// the topic's `max.message.bytes`.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
}

/// `dead_letter.kind = "redis-stream"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisStreamConfig {
    /// The stream's key.
    pub stream: String,
    /// About how many entries the stream keeps; older ones are trimmed (`MAXLEN ~`).
    #[serde(default = "default_stream_max_len")]
    pub max_len: u64,
    /// About how many bytes of entries the stream keeps: fewer entries are kept when they are
    /// large (`MAXLEN ~` of this over the largest entry sent), so a flood of large bad
    /// messages cannot fill Redis.
    #[serde(default = "default_stream_max_bytes")]
    pub max_bytes: u64,
    /// Bodies beyond this are cut (the entry's `truncated_from` field gives the size); the
    /// whole message stays in the source at the entry's `position`.
    #[serde(default = "default_stream_max_body_bytes")]
    pub max_body_bytes: usize,
}

impl RedisStreamConfig {
    /// The stream at key `stream`, every other setting at its default.
    pub fn named(stream: impl Into<String>) -> Self {
        Self {
            stream: stream.into(),
            max_len: DEFAULT_STREAM_MAX_LEN,
            max_bytes: DEFAULT_STREAM_MAX_BYTES,
            max_body_bytes: DEFAULT_STREAM_MAX_BODY_BYTES,
        }
    }
}

/// How many bytes of entries a Redis-stream dead-letter queue keeps by default.
pub const DEFAULT_STREAM_MAX_BYTES: u64 = 256 << 20;

fn default_stream_max_bytes() -> u64 {
    DEFAULT_STREAM_MAX_BYTES
}

/// The largest dead-letter body a Redis stream keeps by default.
pub const DEFAULT_STREAM_MAX_BODY_BYTES: usize = 64 << 10;

fn default_stream_max_body_bytes() -> usize {
    DEFAULT_STREAM_MAX_BODY_BYTES
}

/// How many entries a Redis-stream dead-letter queue keeps by default.
pub const DEFAULT_STREAM_MAX_LEN: u64 = 1_000_000;

fn default_stream_max_len() -> u64 {
    DEFAULT_STREAM_MAX_LEN
}

/// The largest dead-letter body sent to Kafka by default: under Kafka's default record limit
/// of 1 MB, with room for headers.
pub const DEFAULT_MAX_BODY_BYTES: usize = 900 * 1024;

fn default_max_body_bytes() -> usize {
    DEFAULT_MAX_BODY_BYTES
}
