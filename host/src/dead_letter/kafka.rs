//! Dead letters to a Kafka topic: the original bytes as the record value, the original key as
//! its key, and why in headers (`converge-kind`, `converge-reason`, `converge-position`,
//! `converge-rule`). A batch's dead letters are acknowledged only when the broker has them all.
//!
//! A body larger than `max_body_bytes` (a 10 MB message refused as too large, say) is cut to
//! that size and the record gets a `converge-truncated-from` header with the original size: a
//! record the broker refuses would otherwise stall the partition forever. The whole message is
//! still in the source topic, at `converge-position`.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::dead_letter::{DeadLetter, DeadLetterError, DeadLetterSink};

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

impl DeadLetterSink for KafkaDeadLetters {
    async fn send(&self, letters: &[DeadLetter]) -> Result<(), DeadLetterError> {
        let deliveries = letters.iter().map(|letter| {
            let position = letter.position.to_string();
            let size = letter.bytes.len();
            let body = &letter.bytes[..size.min(self.max_body_bytes)];
            let mut headers = OwnedHeaders::new()
                .insert(Header {
                    key: "converge-kind",
                    value: Some(letter.kind.as_str()),
                })
                .insert(Header {
                    key: "converge-reason",
                    value: Some(letter.reason.as_str()),
                })
                .insert(Header {
                    key: "converge-position",
                    value: Some(position.as_str()),
                })
                .insert(Header {
                    key: "converge-rule",
                    value: Some(letter.rule.as_str()),
                });
            if body.len() < size {
                headers = headers.insert(Header {
                    key: "converge-truncated-from",
                    value: Some(size.to_string().as_str()),
                });
            }
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&self.topic).payload(body).headers(headers);
            if let Some(key) = &letter.key {
                record = record.key(key.as_slice());
            }
            self.producer.send(record, Duration::from_secs(30))
        });
        for delivery in futures::future::join_all(deliveries).await {
            delivery.map_err(|(source, _)| DeadLetterError::Kafka {
                topic: self.topic.clone(),
                source,
            })?;
        }
        Ok(())
    }
}
