//! The Fluvio source: a topic's partitions through the `fluvio` client, with offsets managed
//! manually under a named offset consumer.
//!
//! A position is committed only by [`Source::ack`], i.e. after the batch's writes and dead
//! letters are acknowledged: the stream commits the offset of the last record it yielded and
//! flushes it to the cluster, waiting for the answer. The source never reads past the batch it
//! handed out before that batch is acknowledged, so "the last record yielded" is exactly the end
//! of the acknowledged batch. A restart resumes after the last committed offset: at most the
//! unacknowledged tail is delivered again, which the rule makes harmless.
//!
//! A batch is one record. fluvio's consumer stream (0.50) keeps a lock on its partitions while
//! a read is pending and only lets go when that read is polled again; committing after a read
//! that was given up (a batch closed by a timeout, with no record waiting) therefore blocks
//! until the next record arrives, and committing then would cover that unprocessed record.
//! Reading exactly one record per batch and never abandoning a read is the only way the public
//! client lets us commit exactly what was written; found against a real cluster, where a
//! timed-out batch stalled the consumer and made it deaf to SIGTERM.
//!
//! Fluvio has no consumer groups: run several instances with disjoint `partitions` (and one
//! offset consumer name each, or a shared one — offsets are kept per partition).

use std::path::PathBuf;

use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::message::{Message, Position};
use crate::source::{Source, SourceError};

/// TLS to the cluster, verifying its certificate (all paths PEM files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FluvioTls {
    /// The name the cluster's certificate is issued for.
    pub domain: String,
    pub ca_cert: PathBuf,
    /// This client's certificate and key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What the Fluvio consumer needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FluvioSourceConfig {
    /// The cluster's SC endpoint (`host:port`); `None` uses the fluvio CLI's current profile.
    pub endpoint: Option<String>,
    pub tls: Option<FluvioTls>,
    pub topic: String,
    /// Partitions to read; empty reads them all.
    pub partitions: Vec<u32>,
    /// The offset consumer under which committed offsets are kept.
    pub consumer: String,
}

/// One record as the source needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FluvioRecord {
    pub partition: u32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    /// Unix milliseconds, if the record carries a timestamp.
    pub timestamp_ms: Option<i64>,
}

/// A stream of records with offset commits: fluvio's consumer stream, or a test's own.
#[allow(async_fn_in_trait)] // Used through generics only.
pub trait RecordStream {
    /// The next record; `None` when the stream has ended. A call that is given up before it
    /// yields may keep the stream from committing until the next record arrives (see the
    /// module docs), so the source awaits every call to the end.
    async fn next_record(&mut self) -> Option<Result<FluvioRecord, SourceError>>;

    /// Commits the offsets of every record yielded so far and waits until the cluster has them.
    async fn commit(&mut self) -> Result<(), SourceError>;
}

type FluvioStream = Box<
    dyn fluvio::consumer::ConsumerStream<
            Item = Result<fluvio::consumer::Record, fluvio::dataplane::link::ErrorCode>,
        > + Send,
>;

/// fluvio's consumer stream behind [`RecordStream`].
pub struct FluvioConsumer {
    stream: FluvioStream,
    topic: String,
}

impl std::fmt::Debug for FluvioConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FluvioConsumer")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

fn fluvio_error(error: impl std::fmt::Display) -> SourceError {
    SourceError::Fluvio(error.to_string())
}

impl FluvioConsumer {
    /// Connects and opens the topic's partitions under the offset consumer, resuming after
    /// its committed offsets (from the beginning for a new consumer).
    pub async fn connect(config: &FluvioSourceConfig) -> Result<Self, SourceError> {
        let cluster = match &config.endpoint {
            Some(endpoint) => {
                let mut cluster = fluvio::FluvioClusterConfig::new(endpoint);
                if let Some(tls) = &config.tls {
                    cluster = cluster.with_tls(fluvio::config::TlsPolicy::Verified(
                        fluvio::config::TlsConfig::Files(fluvio::config::TlsPaths {
                            domain: tls.domain.clone(),
                            key: tls.key.clone(),
                            cert: tls.cert.clone(),
                            ca_cert: tls.ca_cert.clone(),
                        }),
                    ));
                }
                cluster
            }
            None => fluvio::FluvioClusterConfig::load().map_err(fluvio_error)?,
        };
        let client = fluvio::Fluvio::connect_with_config(&cluster)
            .await
            .map_err(fluvio_error)?;
        let mut builder = fluvio::consumer::ConsumerConfigExt::builder();
        builder
            .topic(config.topic.clone())
            .offset_consumer(config.consumer.clone())
            .offset_start(fluvio::Offset::beginning())
            .offset_strategy(fluvio::consumer::OffsetManagementStrategy::Manual);
        for partition in &config.partitions {
            builder.partition(*partition);
        }
        let consumer_config = builder.build().map_err(fluvio_error)?;
        let stream = client
            .consumer_with_config(consumer_config)
            .await
            .map_err(fluvio_error)?;
        Ok(Self {
            stream: Box::new(stream),
            topic: config.topic.clone(),
        })
    }
}

impl RecordStream for FluvioConsumer {
    async fn next_record(&mut self) -> Option<Result<FluvioRecord, SourceError>> {
        let record = self.stream.next().await?;
        Some(record.map_err(fluvio_error).map(|record| {
            let timestamp = record.timestamp();
            FluvioRecord {
                partition: record.partition(),
                offset: record.offset(),
                key: record.key().map(<[u8]>::to_vec),
                value: record.value().to_vec(),
                timestamp_ms: (timestamp > 0).then_some(timestamp),
            }
        }))
    }

    async fn commit(&mut self) -> Result<(), SourceError> {
        self.stream.offset_commit().await.map_err(fluvio_error)?;
        self.stream.offset_flush().await.map_err(fluvio_error)
    }
}

/// Records from a [`RecordStream`], one per batch; commits on acknowledgement.
#[derive(Debug)]
pub struct FluvioSource<S> {
    stream: S,
    topic: String,
}

impl<S: RecordStream> FluvioSource<S> {
    pub fn new(stream: S, topic: &str) -> Self {
        Self {
            stream,
            topic: topic.to_owned(),
        }
    }

    fn message(&self, record: FluvioRecord) -> Message {
        Message {
            position: Position::Partition {
                topic: self.topic.clone(),
                partition: i32::try_from(record.partition).unwrap_or(i32::MAX),
                offset: record.offset,
            },
            key: record.key,
            payload: Some(record.value),
            produced_at_ms: record.timestamp_ms,
        }
    }
}

impl<S: RecordStream> Source for FluvioSource<S> {
    /// One record (see the module docs). The stream only ends when the client has given up
    /// reconnecting, so an end is an error, not the end of the input.
    async fn next_batch(&mut self, _max: usize) -> Result<Vec<Message>, SourceError> {
        match self.stream.next_record().await {
            Some(record) => Ok(vec![self.message(record?)]),
            None => Err(SourceError::Fluvio(format!(
                "the stream of topic {} ended: the client lost the cluster and gave up \
                 reconnecting; a restart resumes after the last committed offset",
                self.topic
            ))),
        }
    }

    async fn ack(&mut self, batch: &[Message]) -> Result<(), SourceError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.stream.commit().await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// Records in memory; `committed` is what a restarted consumer would resume after.
    #[derive(Default)]
    struct Recorded {
        waiting: VecDeque<FluvioRecord>,
        yielded: Vec<(u32, i64)>,
        committed: Vec<(u32, i64)>,
        commits: usize,
    }

    impl RecordStream for Recorded {
        async fn next_record(&mut self) -> Option<Result<FluvioRecord, SourceError>> {
            let record = self.waiting.pop_front()?;
            self.yielded.push((record.partition, record.offset));
            Some(Ok(record))
        }

        async fn commit(&mut self) -> Result<(), SourceError> {
            self.commits += 1;
            self.committed = self.yielded.clone();
            Ok(())
        }
    }

    fn records(count: i64) -> VecDeque<FluvioRecord> {
        (0..count)
            .map(|offset| FluvioRecord {
                partition: (offset % 2) as u32,
                offset,
                key: Some(format!("o-{offset}").into_bytes()),
                value: b"{}".to_vec(),
                timestamp_ms: Some(1_700_000_000_000 + offset),
            })
            .collect()
    }

    #[tokio::test]
    async fn offsets_are_committed_only_when_a_batch_is_acknowledged() {
        let stream = Recorded {
            waiting: records(3),
            ..Recorded::default()
        };
        let mut source = FluvioSource::new(stream, "orders");
        let first = source.next_batch(64).await.expect("batch");
        assert_eq!(first.len(), 1, "one record per batch");
        assert!(
            source.stream.committed.is_empty(),
            "nothing is committed before the batch is acknowledged"
        );
        assert_eq!(
            source.stream.yielded.len(),
            1,
            "nothing is read past the batch before its acknowledgement"
        );
        source.ack(&first).await.expect("ack");
        assert_eq!(source.stream.committed, [(0, 0)]);

        let second = source.next_batch(64).await.expect("batch");
        let third = source.next_batch(64).await.expect("batch");
        assert_eq!(
            third[0].position,
            Position::Partition {
                topic: "orders".to_owned(),
                partition: 0,
                offset: 2
            }
        );
        assert_eq!(third[0].produced_at_ms, Some(1_700_000_000_002));
        source.ack(&second).await.expect("ack");
        source.ack(&third).await.expect("ack");
        assert_eq!(source.stream.committed.len(), 3);
        assert_eq!(source.stream.commits, 3);
    }

    #[tokio::test]
    async fn a_stream_that_ends_is_an_error_not_the_end_of_the_input() {
        let mut source = FluvioSource::new(Recorded::default(), "orders");
        let error = source.next_batch(64).await.expect_err("the stream ended");
        assert!(error.to_string().contains("topic orders ended"), "{error}");
    }
}
