//! Publishing the simulated orders to a Kafka topic.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::types::RDKafkaErrorCode;

use super::SimulatorError;

/// Deliveries awaited at once before the publisher waits for the oldest.
const MAX_IN_FLIGHT: usize = 50_000;

/// A Kafka producer for one topic, with its deliveries in flight.
pub struct KafkaPublisher {
    producer: FutureProducer,
    topic: String,
    in_flight: FuturesUnordered<DeliveryFuture>,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.topic)
    }
}

impl KafkaPublisher {
    /// A producer for `topic`; `properties` pass through to librdkafka.
    pub fn new(
        brokers: &str,
        topic: &str,
        properties: &BTreeMap<String, String>,
    ) -> Result<Self, SimulatorError> {
        let mut config = rdkafka::ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "1000000");
        for (name, value) in properties {
            config.set(name, value);
        }
        let producer = config.create().map_err(SimulatorError::Producer)?;
        Ok(Self {
            producer,
            topic: topic.to_owned(),
            in_flight: FuturesUnordered::new(),
        })
    }

    /// Queues one record; `timestamp_ms` (Unix ms) is its timestamp, librdkafka's clock when
    /// `None`.
    pub(super) async fn publish(
        &mut self,
        key: &str,
        body: &[u8],
        timestamp_ms: Option<i64>,
    ) -> Result<(), SimulatorError> {
        loop {
            let mut record = FutureRecord::to(&self.topic).key(key).payload(body);
            if let Some(timestamp_ms) = timestamp_ms {
                record = record.timestamp(timestamp_ms);
            }
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    self.in_flight.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    // The local queue is full: wait for a delivery to make room.
                    if !self.settle_one().await? {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                Err((error, _)) => return Err(SimulatorError::Publish(error)),
            }
        }
        while self.in_flight.len() > MAX_IN_FLIGHT {
            self.settle_one().await?;
        }
        Ok(())
    }

    /// Waits for one delivery report; false when none is outstanding.
    async fn settle_one(&mut self) -> Result<bool, SimulatorError> {
        match self.in_flight.next().await {
            None => Ok(false),
            Some(Ok(Ok(_))) => Ok(true),
            Some(Ok(Err((error, _)))) => Err(SimulatorError::Publish(error)),
            Some(Err(_canceled)) => Err(SimulatorError::Dropped),
        }
    }

    /// Waits until everything published so far is delivered.
    pub(super) async fn flush(&mut self) -> Result<(), SimulatorError> {
        while self.settle_one().await? {}
        self.producer
            .flush(Duration::from_secs(30))
            .map_err(SimulatorError::Publish)
    }
}
