//! The cluster as the Fluvio source needs it ([`Link`]), and its implementation over the
//! `fluvio` client ([`FluvioLink`]).
//!
//! Reading and committing are separate on purpose: a reader's stream never commits (so a read
//! it gives up is harmless), and a commit opens its own short-lived stream at the exact offset
//! to commit, reads that one record and commits it. That is the only way the public client
//! (0.50) commits an offset of our choosing: a stream always commits the highest offset it has
//! handed out.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::BoxStream;

use super::FluvioError;
use super::{FluvioRecord, Settings};
use crate::source::SourceError;

/// A partition's offsets as the cluster last reported them: records `start..end` exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Bounds {
    /// The first offset retention has left (the log start).
    pub start: i64,
    /// One past the last record written (the high watermark).
    pub end: i64,
}

/// What a commit's stream found at the offset to commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CommitRead {
    /// The record was there, and its offset is committed and flushed.
    Committed,
    /// The stream began at `found`, past the offset (the fetch cut the record's batch);
    /// nothing was committed.
    Mismatch { found: i64 },
    /// No record arrived within [`COMMIT_READ_TIMEOUT`] (a fetch smaller than the record's
    /// batch yields none); nothing was committed.
    Nothing,
    /// The offset was removed by retention; `next_available` is the first one left.
    /// Nothing was committed.
    Evicted { next_available: i64 },
}

/// Why a partition's stream stopped yielding records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ReadError {
    /// The offset asked for was removed by retention.
    Evicted {
        /// The first offset that still exists.
        next_available: i64,
    },
    /// The connection or the cluster failed; the stream yields nothing more.
    Failed(fluvio::dataplane::link::ErrorCode),
}

/// A stream of one partition's records.
pub(super) type Records = BoxStream<'static, Result<FluvioRecord, ReadError>>;

/// A connection to the cluster for one reader or committer. Calls after a failure reconnect
/// once [`Link::reset`] has dropped the failed connection.
pub(super) trait Link: Send + 'static {
    /// The topic's partitions; `None` when the topic does not exist.
    fn partitions(&mut self) -> impl Future<Output = Result<Option<Vec<u32>>, SourceError>> + Send;

    /// The offset last committed for each partition under the offset consumer; partitions
    /// never committed are absent.
    fn committed(&mut self) -> impl Future<Output = Result<HashMap<u32, i64>, SourceError>> + Send;

    /// The partition's log start and end.
    fn offsets(
        &mut self,
        partition: u32,
    ) -> impl Future<Output = Result<Bounds, SourceError>> + Send;

    /// Opens a stream of one partition at offset `at` that never commits, fetching at most
    /// `max_bytes` per response.
    fn open(
        &mut self,
        partition: u32,
        at: i64,
        max_bytes: i32,
    ) -> impl Future<Output = Result<Records, SourceError>> + Send;

    /// Commits exactly `offset` of `partition` under the offset consumer (a restart resumes at
    /// `offset + 1`) if a stream opened there with a fetch of `max_bytes` yields that record
    /// first, and returns once the cluster has it; says what it found otherwise.
    fn commit(
        &mut self,
        partition: u32,
        offset: i64,
        max_bytes: i32,
    ) -> impl Future<Output = Result<CommitRead, SourceError>> + Send;

    /// Drops the connection after a failure, so that the next call connects anew.
    fn reset(&mut self);
}

/// The client failed while converge was `doing` something.
fn fluvio_error<E>(doing: &'static str) -> impl FnOnce(E) -> SourceError
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    move |error| {
        SourceError::Fluvio(FluvioError::Client {
            doing,
            source: error.into(),
        })
    }
}

/// How long a commit waits for the record it commits before it is asked again with a larger
/// fetch (a fetch smaller than the record's batch never yields it).
pub(super) const COMMIT_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// [`Link`] over the `fluvio` client.
pub(super) struct FluvioLink {
    cluster: fluvio::FluvioClusterConfig,
    topic: String,
    consumer: String,
    client: Option<fluvio::Fluvio>,
}

impl std::fmt::Debug for FluvioLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FluvioLink")
            .field("endpoint", &self.cluster.endpoint)
            .field("topic", &self.topic)
            .field("consumer", &self.consumer)
            .field("connected", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

impl FluvioLink {
    /// A link that connects on first use.
    pub(super) fn new(config: &Settings) -> Result<Self, SourceError> {
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
            None => fluvio::FluvioClusterConfig::load()
                .map_err(fluvio_error("loading the fluvio CLI's current profile"))?,
        };
        Ok(Self {
            cluster,
            topic: config.topic.clone(),
            consumer: config.consumer.clone(),
            client: None,
        })
    }

    /// Another link to the same cluster with a connection of its own.
    pub(super) fn another(&self) -> Self {
        Self {
            cluster: self.cluster.clone(),
            topic: self.topic.clone(),
            consumer: self.consumer.clone(),
            client: None,
        }
    }

    async fn client(&mut self) -> Result<&fluvio::Fluvio, SourceError> {
        let client = match self.client.take() {
            Some(client) => client,
            None => fluvio::Fluvio::connect_with_config(&self.cluster)
                .await
                .map_err(fluvio_error("connecting to the cluster"))?,
        };
        Ok(self.client.insert(client))
    }

    fn stream_config(
        &self,
        partition: u32,
        start: fluvio::Offset,
        max_bytes: i32,
    ) -> fluvio::consumer::ConsumerConfigExtBuilder {
        let mut builder = fluvio::consumer::ConsumerConfigExt::builder();
        builder
            .topic(self.topic.clone())
            .partition(partition)
            .offset_start(start)
            .max_bytes(max_bytes)
            // Reconnecting is ours to do: the client's retry keeps one position for all
            // partitions and jumps over evicted records without a word.
            .retry_mode(fluvio::consumer::RetryMode::Disabled);
        builder
    }
}

fn offset(offset: i64) -> Result<fluvio::Offset, SourceError> {
    fluvio::Offset::absolute(offset).map_err(fluvio_error("naming an offset"))
}

fn record(record: fluvio::consumer::Record) -> FluvioRecord {
    let timestamp = record.timestamp();
    FluvioRecord {
        partition: record.partition(),
        offset: record.offset(),
        key: record.key().map(<[u8]>::to_vec),
        value: record.value().to_vec(),
        timestamp_ms: (timestamp > 0).then_some(timestamp),
    }
}

impl Link for FluvioLink {
    async fn partitions(&mut self) -> Result<Option<Vec<u32>>, SourceError> {
        let topic = self.topic.clone();
        let admin = self.client().await?.admin().await;
        let topics = admin
            .list::<fluvio::metadata::topic::TopicSpec, String>(vec![topic.clone()])
            .await
            .map_err(fluvio_error("listing topics"))?;
        // The cluster filters by substring: pick the topic by its exact name.
        Ok(topics
            .into_iter()
            .find(|metadata| metadata.name == topic)
            .map(|metadata| (0..metadata.spec.partitions()).collect()))
    }

    async fn committed(&mut self) -> Result<HashMap<u32, i64>, SourceError> {
        let (topic, consumer) = (self.topic.clone(), self.consumer.clone());
        let offsets = self
            .client()
            .await?
            .consumer_offsets()
            .await
            .map_err(fluvio_error("reading committed offsets"))?;
        Ok(offsets
            .into_iter()
            .filter(|o| o.consumer_id == consumer && o.topic == topic)
            .map(|o| (o.partition, o.offset))
            .collect())
    }

    async fn offsets(&mut self, partition: u32) -> Result<Bounds, SourceError> {
        use fluvio::metadata::partition::PartitionSpec;
        // A partition is named `topic-partition` in the cluster's metadata; the cluster may
        // filter by substring or not at all, so pick it by its exact name.
        let name = format!("{}-{partition}", self.topic);
        let admin = self.client().await?.admin().await;
        let partitions = admin
            .list::<PartitionSpec, String>(vec![name.clone()])
            .await
            .map_err(fluvio_error("reading a partition's offsets"))?;
        let status = partitions
            .into_iter()
            .find(|metadata| metadata.name == name)
            .map(|metadata| metadata.status)
            .ok_or_else(|| {
                SourceError::Fluvio(FluvioError::PartitionUnlisted { name: name.clone() })
            })?;
        // The SPU reports both to the SC after each write (within about 400 ms): they may lag,
        // never lead. `-1` is "not reported yet".
        Ok(Bounds {
            start: status.base_offset.max(0),
            end: status.leader.hw.max(0),
        })
    }

    async fn open(
        &mut self,
        partition: u32,
        at: i64,
        max_bytes: i32,
    ) -> Result<Records, SourceError> {
        let config = self
            .stream_config(partition, offset(at)?, max_bytes)
            .build()
            .map_err(fluvio_error("configuring a stream"))?;
        let stream = self
            .client()
            .await?
            .consumer_with_config(config)
            .await
            .map_err(fluvio_error("opening a stream"))?;
        Ok(stream
            .map(|item| match item {
                Ok(found) => Ok(record(found)),
                Err(fluvio::dataplane::link::ErrorCode::OffsetEvicted {
                    next_available, ..
                }) => Err(ReadError::Evicted { next_available }),
                Err(error) => Err(ReadError::Failed(error)),
            })
            .boxed())
    }

    async fn commit(
        &mut self,
        partition: u32,
        at: i64,
        max_bytes: i32,
    ) -> Result<CommitRead, SourceError> {
        let mut config = self.stream_config(partition, offset(at)?, max_bytes);
        config
            .offset_consumer(self.consumer.clone())
            .offset_strategy(fluvio::consumer::OffsetManagementStrategy::Manual);
        let config = config
            .build()
            .map_err(fluvio_error("configuring a commit stream"))?;
        let mut stream = self
            .client()
            .await?
            .consumer_with_config(config)
            .await
            .map_err(fluvio_error("opening a commit stream"))?;
        let Ok(first) = tokio::time::timeout(COMMIT_READ_TIMEOUT, stream.next()).await else {
            return Ok(CommitRead::Nothing);
        };
        match first {
            Some(Ok(found)) if found.offset() == at => {
                use fluvio::consumer::ConsumerStream as _;
                stream
                    .offset_commit()
                    .await
                    .map_err(fluvio_error("committing an offset"))?;
                stream
                    .offset_flush()
                    .await
                    .map_err(fluvio_error("flushing a commit"))?;
                Ok(CommitRead::Committed)
            }
            Some(Ok(found)) => Ok(CommitRead::Mismatch {
                found: found.offset(),
            }),
            Some(Err(fluvio::dataplane::link::ErrorCode::OffsetEvicted {
                next_available, ..
            })) => Ok(CommitRead::Evicted { next_available }),
            Some(Err(error)) => Err(fluvio_error("reading the record to commit")(error)),
            None => Err(SourceError::Fluvio(FluvioError::CommitStreamEnded {
                partition,
                offset: at,
            })),
        }
    }

    fn reset(&mut self) {
        self.client = None;
    }
}
