//! The real Kafka broker the tests use (started by `deploy/scripts/kafka.sh`): topics under
//! unique names, producing, reading a topic to its end, and a group's committed offsets.

use std::collections::BTreeMap;
use std::time::Duration;

use converge::entity::Event;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// The broker; `CONVERGE_TEST_KAFKA` overrides.
pub fn brokers() -> String {
    std::env::var("CONVERGE_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

fn client() -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers());
    config
}

/// One record as read back: key, body and headers (values as lossy UTF-8).
#[derive(Debug, Clone)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub body: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

/// A topic with a unique name, deleted when dropped.
#[derive(Debug)]
pub struct TestTopic {
    pub name: String,
    pub partitions: i32,
}

impl TestTopic {
    pub async fn create(test: &str, partitions: i32) -> Self {
        let name = format!("converge-test-{test}-{:016x}", rand::random::<u64>());
        let admin: AdminClient<DefaultClientContext> = client().create().expect("admin client");
        let topic = NewTopic::new(&name, partitions, TopicReplication::Fixed(1));
        let results = admin
            .create_topics(
                [&topic],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "Kafka at {} (start it with deploy/scripts/kafka.sh): {error}",
                    brokers()
                )
            });
        for result in results {
            result.unwrap_or_else(|(topic, error)| panic!("creating topic {topic}: {error}"));
        }
        Self { name, partitions }
    }

    /// Produces each event keyed by its key (so one key stays in one partition), in order.
    pub async fn produce(&self, events: &[Event]) {
        let producer: FutureProducer = client()
            .set("linger.ms", "5")
            .set("enable.idempotence", "true")
            .create()
            .expect("producer");
        let sends = events.iter().map(|event| {
            let body = serde_json::to_vec(event).expect("serialises");
            let producer = &producer;
            let topic = self.name.as_str();
            let key = event.key.clone();
            async move {
                producer
                    .send(
                        FutureRecord::to(topic).key(&key).payload(&body),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(error, _)| error)
            }
        });
        for delivery in futures::future::join_all(sends).await {
            delivery.expect("delivered");
        }
    }

    /// Produces raw bodies (for bad input), keyed by `key`.
    pub async fn produce_raw(&self, key: &str, bodies: &[Vec<u8>]) {
        // Room for the 10 MB message of the bad-input test (the broker allows 16 MiB).
        let producer: FutureProducer = client()
            .set("message.max.bytes", "16777216")
            .create()
            .expect("producer");
        for body in bodies {
            producer
                .send(
                    FutureRecord::to(&self.name).key(key).payload(body),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(error, _)| error)
                .expect("delivered");
        }
    }

    /// Produces raw (key, body) records, each under its own key (a key too large for a dead
    /// letter, say).
    pub async fn produce_keyed(&self, records: &[(Vec<u8>, Vec<u8>)]) {
        let producer: FutureProducer = client()
            .set("message.max.bytes", "16777216")
            .create()
            .expect("producer");
        for (key, body) in records {
            producer
                .send(
                    FutureRecord::to(&self.name).key(key).payload(body),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(error, _)| error)
                .expect("delivered");
        }
    }

    /// Reads every record of the topic, from the start of each partition to its end as it is
    /// now: (body, headers) each. Panics unless it reaches the end of every partition within
    /// `timeout`, so an empty answer means the topic is empty, not that nothing was read.
    pub fn read_all(&self, timeout: Duration) -> Vec<(Vec<u8>, BTreeMap<String, String>)> {
        self.read_records(timeout)
            .into_iter()
            .map(|record| (record.body, record.headers))
            .collect()
    }

    /// [`TestTopic::read_all`] with each record's key.
    pub fn read_records(&self, timeout: Duration) -> Vec<Record> {
        let consumer: BaseConsumer = client()
            .set("group.id", format!("{}-reader", self.name))
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut partitions = TopicPartitionList::new();
        // The next offset to read and the end, per partition.
        let mut progress: Vec<(i64, i64)> = Vec::new();
        for partition in 0..self.partitions {
            let (low, high) = consumer
                .fetch_watermarks(&self.name, partition, Duration::from_secs(10))
                .expect("watermarks");
            partitions
                .add_partition_offset(&self.name, partition, Offset::Beginning)
                .expect("partition");
            progress.push((low, high));
        }
        consumer.assign(&partitions).expect("assigned");
        let deadline = std::time::Instant::now() + timeout;
        let mut records = Vec::new();
        while progress.iter().any(|(next, end)| next < end) {
            assert!(
                std::time::Instant::now() < deadline,
                "read {} records of {} but not to the end of every partition within {timeout:?}: \
                 (next, end) {progress:?}",
                records.len(),
                self.name
            );
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = message.expect("record");
            let partition = usize::try_from(message.partition()).expect("a partition index");
            progress[partition].0 = message.offset() + 1;
            let headers = message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            records.push(Record {
                key: message.key().map(<[u8]>::to_vec),
                body: message.payload().unwrap_or_default().to_vec(),
                headers,
            });
        }
        records
    }

    /// (committed offset of `group`, high watermark) per partition.
    pub fn progress(&self, group: &str) -> Vec<(i64, i64)> {
        let consumer: BaseConsumer = client().set("group.id", group).create().expect("consumer");
        let mut partitions = TopicPartitionList::new();
        for partition in 0..self.partitions {
            partitions.add_partition(&self.name, partition);
        }
        let committed = consumer
            .committed_offsets(partitions, Duration::from_secs(10))
            .expect("committed offsets");
        (0..self.partitions)
            .map(|partition| {
                let offset = match committed
                    .find_partition(&self.name, partition)
                    .map(|p| p.offset())
                {
                    Some(Offset::Offset(offset)) => offset,
                    _ => 0,
                };
                let (_, high) = consumer
                    .fetch_watermarks(&self.name, partition, Duration::from_secs(10))
                    .expect("watermarks");
                (offset, high)
            })
            .collect()
    }
}

impl Drop for TestTopic {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let admin: AdminClient<DefaultClientContext> =
                    client().create().map_err(std::io::Error::other)?;
                let _ = admin.delete_topics(&[&name], &AdminOptions::new()).await;
                Ok::<(), std::io::Error>(())
            })
        })
        .join();
    }
}
