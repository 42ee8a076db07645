//! Dead letters: messages converge could not apply, kept with everything needed to replay them.
//!
//! # Layout
//! - this module: [`DeadLetter`], its [`DeadLetterKind`], and the [`DeadLetterSink`] trait;
//! - `memory`: dead letters kept in memory ([`MemoryDeadLetters`]), for `converge run`;
//! - `kafka` (feature `kafka`): dead letters to a Kafka topic ([`KafkaDeadLetters`]);
//! - `redis_stream` (feature `redis`): dead letters to a Redis stream ([`RedisDeadLetters`]).

#[cfg(feature = "kafka")]
mod kafka;
mod memory;
#[cfg(feature = "redis")]
mod redis_stream;

#[cfg(feature = "kafka")]
pub use kafka::KafkaDeadLetters;
pub use memory::MemoryDeadLetters;
#[cfg(feature = "redis")]
pub use redis_stream::RedisDeadLetters;

use serde::Serialize;

use crate::config::{DeadLetterConfig, SourceConfig, StoreConfig};

use crate::source::Position;

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

/// A dead-letter queue built from its configuration ([`DeadLetterConfig::build`]).
#[derive(Debug)]
pub enum AnyDeadLetters {
    /// Kept in memory.
    Memory(MemoryDeadLetters),
    /// A Kafka topic.
    #[cfg(feature = "kafka")]
    Kafka(KafkaDeadLetters),
    /// A Redis stream.
    #[cfg(feature = "redis")]
    Redis(RedisDeadLetters),
}

impl DeadLetterConfig {
    /// Connects the configured dead-letter queue, through the source's brokers (Kafka) or the
    /// store's server (Redis stream), as validation requires.
    pub async fn build(
        &self,
        source: &SourceConfig,
        store: &StoreConfig,
    ) -> Result<AnyDeadLetters, DeadLetterError> {
        match (self, source, store) {
            #[cfg(feature = "kafka")]
            (DeadLetterConfig::Kafka(dead_letters), SourceConfig::Kafka(kafka), _) => {
                Ok(AnyDeadLetters::Kafka(KafkaDeadLetters::new(
                    &kafka.brokers,
                    &dead_letters.topic,
                    dead_letters.max_body_bytes,
                    &kafka.properties,
                )?))
            }
            #[cfg(feature = "redis")]
            (DeadLetterConfig::RedisStream(stream), _, StoreConfig::Redis(redis)) => Ok(
                AnyDeadLetters::Redis(RedisDeadLetters::connect(&redis.url, &stream.stream).await?),
            ),
            #[cfg(feature = "redis")]
            (DeadLetterConfig::RedisStream(stream), _, StoreConfig::RedisCluster(cluster)) => {
                let url = cluster.urls.first().map(String::as_str).unwrap_or_default();
                Ok(AnyDeadLetters::Redis(
                    RedisDeadLetters::connect(url, &stream.stream).await?,
                ))
            }
            _ => Err(DeadLetterError(
                "the dead-letter queue does not fit the source and store, or is not built in \
                 (see Config::validate)"
                    .to_owned(),
            )),
        }
    }
}

impl DeadLetterSink for AnyDeadLetters {
    async fn send(&self, letters: &[DeadLetter]) -> Result<(), DeadLetterError> {
        match self {
            AnyDeadLetters::Memory(sink) => sink.send(letters).await,
            #[cfg(feature = "kafka")]
            AnyDeadLetters::Kafka(sink) => sink.send(letters).await,
            #[cfg(feature = "redis")]
            AnyDeadLetters::Redis(sink) => sink.send(letters).await,
        }
    }
}
