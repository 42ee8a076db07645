//! Dead letters: messages converge could not apply, kept with everything needed to replay them.
//!
//! Its files, and what each holds: the module map in ARCHITECTURE.md.

mod config;
#[cfg(feature = "kafka")]
mod kafka;
mod memory;
#[cfg(feature = "redis")]
mod redis_stream;

pub use config::{
    DEFAULT_MAX_BODY_BYTES, DEFAULT_STREAM_MAX_BODY_BYTES, DEFAULT_STREAM_MAX_BYTES,
    DEFAULT_STREAM_MAX_LEN, DeadLetterConfig, KafkaDeadLetterConfig, RedisStreamConfig,
};
#[cfg(feature = "kafka")]
pub use kafka::KafkaDeadLetters;
pub use memory::MemoryDeadLetters;
#[cfg(feature = "redis")]
pub use redis_stream::RedisDeadLetters;

use serde::Serialize;

use crate::source::{Position, SourceConfig};
use crate::store::StoreConfig;

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
    /// The stored state of the event's key is not one converge can read (a field that does not
    /// parse, a value of another type): the event was not applied and the value was left as
    /// it is; the reason quotes it.
    UnreadableState,
}

impl DeadLetterKind {
    /// The kind's name in dead letters (the `converge-kind` header, the stream's `kind`
    /// field), in logs and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Undecodable => "undecodable",
            Self::Rejected => "rejected",
            Self::RuleFailed => "rule_failed",
            Self::NotEnriched => "not_enriched",
            Self::Lost => "lost",
            Self::UnreadableState => "unreadable_state",
        }
    }
}

/// A message that was not applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// Why, in one word.
    pub kind: DeadLetterKind,
    /// Why, for a person: the decode error, the rule's refusal, the failure.
    pub reason: String,
    /// Where the message is in its source, to find or replay it.
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

/// The longest message key a dead letter carries: a longer original key is cut (Kafka:
/// `converge-key-truncated-from`, Redis stream: `key_truncated_from`, giving its size).
pub const MAX_KEY_BYTES: usize = 16 * 1024;

/// The longest reason a dead letter keeps, in bytes: a rule's refusal or an error text longer
/// than this is cut (and says so), so that one letter cannot bloat the queue, a log line or a
/// record past the broker's limit.
pub const MAX_REASON_BYTES: usize = 4096;

/// `reason`, cut to [`MAX_REASON_BYTES`] on a character boundary with a note of its size.
pub fn cut_reason(reason: String) -> String {
    if reason.len() <= MAX_REASON_BYTES {
        return reason;
    }
    let note = format!("… (cut from {} bytes)", reason.len());
    let mut end = MAX_REASON_BYTES - note.len();
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{note}", &reason[..end])
}

fn lossy_text<S: serde::Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&String::from_utf8_lossy(bytes))
}

/// Why dead letters could not be sent, or the queue could not be opened.
/// [`DeadLetterError::is_transient`] tells an outage, which the pipeline waits out, from a
/// configuration that retrying would not change.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// The Kafka producer could not be created, or the broker did not acknowledge a dead
    /// letter (unreachable, timed out, refused).
    #[cfg(feature = "kafka")]
    #[error("dead-letter queue unavailable: topic {topic}: {source}")]
    Kafka {
        /// The dead-letter topic.
        topic: String,
        /// The client's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The broker refused the dead letter for a reason waiting does not change: the topic
    /// does not exist, converge is not authorised to write it, or the record is larger than
    /// the topic takes. `serve` stops rather than skip the dead letter.
    #[cfg(feature = "kafka")]
    #[error(
        "the dead-letter topic {topic} refuses dead letters: {source}; converge stops rather \
         than skip them (check that the topic exists, converge's ACLs on it, and its \
         max.message.bytes against dead_letter.max_body_bytes)"
    )]
    KafkaRefused {
        /// The dead-letter topic.
        topic: String,
        /// The client's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// Redis failed: unreachable, connection lost, or the entries refused.
    #[cfg(feature = "redis")]
    #[error("dead-letter queue unavailable: stream {stream}: {source}")]
    Redis {
        /// The dead-letter stream.
        stream: String,
        /// The client's error.
        #[source]
        source: ::redis::RedisError,
    },
    /// Another [`DeadLetterSink`] could not take the dead letters. Transient.
    #[error("dead-letter queue unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The configured queue needs a Cargo feature this build lacks.
    #[error("this converge was built without the `{0}` feature, which the dead-letter queue needs")]
    NotBuiltIn(&'static str),
    /// The configured queue does not fit the source and store: a Kafka topic is reached
    /// through the Kafka source's brokers, a Redis stream through the Redis store's server.
    /// `Config::validate` refuses such a configuration first.
    #[error("dead_letter.kind = \"{kind}\" needs {needs}")]
    Unfit {
        /// The configured `dead_letter.kind`.
        kind: &'static str,
        /// What it needs: "a Kafka source" or "a Redis store".
        needs: &'static str,
    },
}

impl DeadLetterError {
    /// Whether the failure is an outage to wait out and retry (the broker or server down, a
    /// connection lost, a timeout, a refusal), rather than a configuration retrying would not
    /// change (a missing feature, a queue that does not fit, a Kafka client that cannot be
    /// created, a topic that refuses dead letters for good). The pipeline never skips dead
    /// letters: it waits, or stops.
    pub fn is_transient(&self) -> bool {
        match self {
            #[cfg(feature = "kafka")]
            DeadLetterError::Kafka { source, .. } => {
                !matches!(source, rdkafka::error::KafkaError::ClientCreation(_))
            }
            #[cfg(feature = "kafka")]
            DeadLetterError::KafkaRefused { .. } => false,
            #[cfg(feature = "redis")]
            DeadLetterError::Redis { .. } => true,
            DeadLetterError::Unavailable(_) => true,
            DeadLetterError::NotBuiltIn(_) | DeadLetterError::Unfit { .. } => false,
        }
    }
}

/// Where dead letters go. A batch's offsets are stored only after its dead letters are
/// acknowledged here.
#[allow(async_fn_in_trait)] // Used through generics only.
pub trait DeadLetterSink {
    /// Sends `letters` and returns once the queue has them all; an error means some may not
    /// have arrived, and the whole batch is sent again.
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
            (DeadLetterConfig::RedisStream(stream), _, StoreConfig::Redis(redis)) => {
                Ok(AnyDeadLetters::Redis(
                    RedisDeadLetters::connect_with_timeout(
                        &redis.url,
                        &stream.stream,
                        std::time::Duration::from_millis(redis.common.timeout_ms),
                    )
                    .await?
                    .with_max_len(stream.max_len)
                    .with_max_bytes(stream.max_bytes)
                    .with_max_body_bytes(stream.max_body_bytes),
                ))
            }
            // The stream would live on one node; a send routed to another would be refused
            // (MOVED) again and again. Validation refuses this too.
            (DeadLetterConfig::RedisStream(_), _, StoreConfig::RedisCluster(_)) => {
                Err(DeadLetterError::Unfit {
                    kind: "redis-stream",
                    needs: "a standalone Redis store",
                })
            }
            #[cfg(not(feature = "kafka"))]
            (DeadLetterConfig::Kafka(_), SourceConfig::Kafka(_), _) => {
                Err(DeadLetterError::NotBuiltIn("kafka"))
            }
            #[cfg(not(feature = "redis"))]
            (DeadLetterConfig::RedisStream(_), _, StoreConfig::Redis(_)) => {
                Err(DeadLetterError::NotBuiltIn("redis"))
            }
            (DeadLetterConfig::Kafka(_), _, _) => Err(DeadLetterError::Unfit {
                kind: "kafka",
                needs: "a Kafka source",
            }),
            (DeadLetterConfig::RedisStream(_), _, _) => Err(DeadLetterError::Unfit {
                kind: "redis-stream",
                needs: "a Redis store",
            }),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_reason_is_cut_on_a_character_boundary_and_says_so() {
        let short = "unknown status \"lost\"".to_owned();
        assert_eq!(cut_reason(short.clone()), short);
        let long = "é".repeat(10_000);
        let cut = cut_reason(long);
        assert!(cut.len() <= MAX_REASON_BYTES, "{}", cut.len());
        assert!(cut.ends_with("(cut from 20000 bytes)"), "{cut}");
        assert!(cut.starts_with("éé"));
    }

    #[test]
    fn outages_are_transient_and_configurations_are_not() {
        assert!(DeadLetterError::Unavailable("broker down".into()).is_transient());
        assert!(!DeadLetterError::NotBuiltIn("kafka").is_transient());
        let unfit = DeadLetterError::Unfit {
            kind: "redis-stream",
            needs: "a Redis store",
        };
        assert!(!unfit.is_transient());
        assert_eq!(
            unfit.to_string(),
            "dead_letter.kind = \"redis-stream\" needs a Redis store"
        );
    }

    #[cfg(feature = "kafka")]
    #[test]
    fn a_failed_delivery_is_transient_a_client_that_cannot_be_created_is_not() {
        use rdkafka::error::KafkaError;
        use rdkafka::types::RDKafkaErrorCode;
        let delivery = DeadLetterError::Kafka {
            topic: "dead-letters".to_owned(),
            source: KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
        };
        assert!(delivery.is_transient());
        assert!(delivery.to_string().contains("dead-letters"), "{delivery}");
        let creation = DeadLetterError::Kafka {
            topic: "dead-letters".to_owned(),
            source: KafkaError::ClientCreation("bad property".to_owned()),
        };
        assert!(!creation.is_transient());
    }
}
