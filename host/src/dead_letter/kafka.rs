//! Dead letters to a Kafka topic: the original bytes as the record value, the original key as
//! its key, and why in headers (`converge-kind`, `converge-reason`, `converge-position`,
//! `converge-rule`). A batch's dead letters are acknowledged only when the broker has them all.
//!
//! A body larger than `max_body_bytes` (a 10 MB message refused as too large, say) is cut to
//! that size and the record gets a `converge-truncated-from` header with the original size: a
//! record the broker refuses would otherwise stall the partition forever. Keys are cut to
//! [`MAX_KEY_BYTES`] (`converge-key-truncated-from`), reasons to
//! [`MAX_REASON_BYTES`](super::MAX_REASON_BYTES) and the rule stamp to 1 KiB, so a record stays
//! under the broker's default limit whatever the message held. The whole message is still in
//! the source topic, at `converge-position`.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::dead_letter::{DeadLetter, DeadLetterError, DeadLetterSink, MAX_KEY_BYTES};

/// A producer for the dead-letter topic.
pub struct KafkaDeadLetters {
    producer: FutureProducer,
    topic: String,
    max_body_bytes: usize,
}

impl std::fmt::Debug for KafkaDeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaDeadLetters")
            .field("topic", &self.topic)
            .finish()
    }
}

impl KafkaDeadLetters {
    /// `properties` are the source's librdkafka properties (security settings apply to both).
    pub fn new(
        brokers: &str,
        topic: &str,
        max_body_bytes: usize,
        properties: &BTreeMap<String, String>,
    ) -> Result<Self, DeadLetterError> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all");
        for (name, value) in properties {
            // Consumer-only properties would make the producer refuse to start.
            if !name.starts_with("group.")
                && !name.starts_with("auto.")
                && !name.starts_with("enable.auto")
            {
                client.set(name, value);
            }
        }
        let producer = client.create().map_err(|source| DeadLetterError::Kafka {
            topic: topic.to_owned(),
            source,
        })?;
        Ok(Self {
            producer,
            topic: topic.to_owned(),
            max_body_bytes,
        })
    }
}

/// The longest rule stamp sent in `converge-rule`.
const MAX_RULE_BYTES: usize = 1024;

/// What one dead letter becomes on the topic: key, value and headers, each within its cap, so
/// the record fits under `max_body_bytes` plus a fixed allowance (key, headers), whatever the
/// message's own sizes.
struct Record<'a> {
    key: Option<&'a [u8]>,
    body: &'a [u8],
    headers: Vec<(&'static str, String)>,
}

impl<'a> Record<'a> {
    fn of(letter: &'a DeadLetter, max_body_bytes: usize) -> Self {
        let size = letter.bytes.len();
        let body = &letter.bytes[..size.min(max_body_bytes)];
        let rule = &letter.rule[..floor_char_boundary(&letter.rule, MAX_RULE_BYTES)];
        let mut headers = vec![
            ("converge-kind", letter.kind.as_str().to_owned()),
            // Reasons are cut when the letter is made (`cut_reason`); cut again in case a
            // letter was built elsewhere.
            ("converge-reason", super::cut_reason(letter.reason.clone())),
            ("converge-position", letter.position.to_string()),
            ("converge-rule", rule.to_owned()),
        ];
        if body.len() < size {
            headers.push(("converge-truncated-from", size.to_string()));
        }
        let key = letter.key.as_deref().map(|key| {
            if key.len() > MAX_KEY_BYTES {
                headers.push(("converge-key-truncated-from", key.len().to_string()));
                &key[..MAX_KEY_BYTES]
            } else {
                key
            }
        });
        Self { key, body, headers }
    }

    /// Bytes of key, value and headers (names and values).
    #[cfg(test)]
    fn size(&self) -> usize {
        self.key.map_or(0, <[u8]>::len)
            + self.body.len()
            + self
                .headers
                .iter()
                .map(|(name, value)| name.len() + value.len())
                .sum::<usize>()
    }
}

/// The largest index `<= at` that is a character boundary of `text`.
fn floor_char_boundary(text: &str, at: usize) -> usize {
    let mut end = at.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

impl DeadLetterSink for KafkaDeadLetters {
    async fn send(&self, letters: &[DeadLetter]) -> Result<(), DeadLetterError> {
        let records: Vec<Record<'_>> = letters
            .iter()
            .map(|letter| Record::of(letter, self.max_body_bytes))
            .collect();
        let deliveries = records.iter().map(|record| {
            let headers =
                record
                    .headers
                    .iter()
                    .fold(OwnedHeaders::new(), |headers, (key, value)| {
                        headers.insert(Header {
                            key,
                            value: Some(value.as_str()),
                        })
                    });
            let mut future: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic)
                .payload(record.body)
                .headers(headers);
            if let Some(key) = record.key {
                future = future.key(key);
            }
            self.producer.send(future, Duration::from_secs(30))
        });
        for delivery in futures::future::join_all(deliveries).await {
            delivery.map_err(|(source, _)| {
                let topic = self.topic.clone();
                if refused_for_good(&source) {
                    DeadLetterError::KafkaRefused { topic, source }
                } else {
                    DeadLetterError::Kafka { topic, source }
                }
            })?;
        }
        Ok(())
    }
}

/// Whether the broker refused a dead letter for a reason a retry does not change: the topic
/// is unknown, converge is not authorised, the record is too large for the topic. Anything
/// else (brokers down, leaders moving, timeouts) is an outage to wait out.
fn refused_for_good(error: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        error.rdkafka_error_code(),
        Some(
            Code::UnknownTopic
                | Code::UnknownTopicOrPartition
                | Code::InvalidTopic
                | Code::TopicAuthorizationFailed
                | Code::ClusterAuthorizationFailed
                | Code::SaslAuthenticationFailed
                | Code::Authentication
                | Code::MessageSizeTooLarge
                | Code::InvalidMessageSize
                | Code::MessageBatchTooLarge
                | Code::InvalidRecord
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dead_letter::DeadLetterKind;
    use crate::source::Position;

    #[test]
    fn a_letter_with_a_huge_key_body_and_reason_still_fits_under_the_broker_limit() {
        let letter = DeadLetter {
            kind: DeadLetterKind::Undecodable,
            reason: "x".repeat(5 << 20),
            position: Position::Partition {
                topic: "orders".to_owned(),
                partition: 0,
                offset: 7,
            },
            key: Some(vec![b'k'; 2 << 20]),
            bytes: vec![b'{'; 10 << 20],
            rule: "r".repeat(10_000),
        };
        let record = Record::of(&letter, crate::dead_letter::DEFAULT_MAX_BODY_BYTES);
        // Kafka's default record limit is 1 MB (1,048,588 bytes with overhead).
        assert!(record.size() < 1_000_000, "{}", record.size());
        assert_eq!(record.key.map(<[u8]>::len), Some(MAX_KEY_BYTES));
        let header = |name: &str| {
            record
                .headers
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.clone())
        };
        assert_eq!(
            header("converge-key-truncated-from"),
            Some((2 << 20).to_string())
        );
        assert_eq!(
            header("converge-truncated-from"),
            Some((10 << 20).to_string())
        );
        assert!(header("converge-reason").is_some_and(|r| r.contains("cut from")));
        assert_eq!(
            header("converge-rule").map(|r| r.len()),
            Some(MAX_RULE_BYTES)
        );
    }
}
