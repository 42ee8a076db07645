//! Where messages come from: the [`Source`] trait and its implementations.
//!
//! Its files, and what each holds: the module map in ARCHITECTURE.md.

mod config;
#[cfg(feature = "fluvio")]
mod fluvio;
#[cfg(feature = "kafka")]
mod kafka;
mod lines;
mod message;

pub use config::{
    DEFAULT_FETCH_MAX_BYTES, FileSourceConfig, FluvioSourceConfig, FluvioTls, KafkaSourceConfig,
    SourceConfig,
};
#[cfg(feature = "fluvio")]
pub use fluvio::{FluvioError, FluvioSource};
#[cfg(feature = "kafka")]
pub use kafka::{KafkaRange, KafkaSource};
pub use lines::{JsonLinesSource, LinesReader, open_lines};
pub use message::{Lost, Message, Position};

use std::sync::Arc;

use crate::config::PipelineConfig;
use crate::telemetry::Metrics;

/// Why a source could not read or acknowledge. The pipeline stops on it: positions are kept by
/// the transport, so a restart reads again from the last acknowledged message.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The JSON lines (a file or stdin) could not be opened or read.
    #[error("cannot read input: {0}")]
    Io(#[from] std::io::Error),
    /// The Kafka client failed: creating the consumer, subscribing, asking the brokers for
    /// metadata or watermarks, receiving, or naming an offset.
    #[cfg(feature = "kafka")]
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The Kafka client's message stream ended, which it never does while the consumer lives.
    #[cfg(feature = "kafka")]
    #[error("kafka: the consumer's message stream ended")]
    StreamEnded,
    /// A topic to replay has no partitions: it does not exist, or the brokers did not say.
    #[cfg(feature = "kafka")]
    #[error("kafka: topic {topic} has no partitions")]
    NoPartitions {
        /// The topic asked for.
        topic: String,
    },
    /// The Fluvio source failed: the client, a topic or partition that is not there, or an
    /// acknowledgement or commit that does not match what was read.
    #[cfg(feature = "fluvio")]
    #[error("fluvio: {0}")]
    Fluvio(#[from] FluvioError),
    /// The configured source needs a Cargo feature this build lacks.
    #[error("this converge was built without the `{0}` feature, which the source needs")]
    NotBuiltIn(&'static str),
}

/// A stream of messages, read in batches and acknowledged by position.
///
/// Several batches may be in flight: they are acknowledged in the order they were delivered,
/// each once its writes and dead letters are.
#[allow(async_fn_in_trait)] // Used through generics only.
pub trait Source {
    /// Up to `max` messages; an empty batch means the stream has ended.
    ///
    /// Cancel-safe: the pipeline drops this future when a batch in flight completes first,
    /// so messages it had taken must be kept and delivered by the next call.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Message>, SourceError>;

    /// A number that changes whenever the set of partitions this source reads changes (a
    /// rebalance): the pipeline then forgets what it cached about keys, since another
    /// instance may have written them meanwhile.
    fn generation(&self) -> u64 {
        0
    }

    /// Marks every message of a processed batch as done: its state (or dead letter) is
    /// acknowledged by the store, so it is never delivered again after a restart.
    async fn ack(&mut self, batch: &[Message]) -> Result<(), SourceError>;

    /// Keeps the source's place while the pipeline is busy without asking for a batch —
    /// above all while it waits out an outage of the store, the dead-letter queue or the
    /// enrichment API, which may last minutes. Never completes: the pipeline drops it when
    /// its work is done, so it must be cancel-safe, and messages it takes are kept for the
    /// next batch.
    ///
    /// A Kafka member must keep polling or be ejected from its group after
    /// `max.poll.interval.ms`; it pauses its partitions first, so polling fetches nothing
    /// more. By default there is nothing to keep.
    async fn hold(&mut self) {
        std::future::pending::<()>().await;
    }
}

/// A source built from its configuration ([`SourceConfig::build`]).
#[derive(Debug)]
pub enum AnySource {
    /// JSON lines from a file or stdin.
    Lines(JsonLinesSource<LinesReader>),
    /// A Kafka consumer-group member.
    #[cfg(feature = "kafka")]
    Kafka(KafkaSource),
    /// A Fluvio topic.
    #[cfg(feature = "fluvio")]
    Fluvio(FluvioSource),
}

impl SourceConfig {
    /// Opens the configured source. The pipeline's settings size Fluvio's read-ahead and
    /// backoff; `metrics` receives consumer lag, gaps and reconnects.
    pub async fn build(
        &self,
        pipeline: &PipelineConfig,
        metrics: &Arc<Metrics>,
    ) -> Result<AnySource, SourceError> {
        // Unused without the transports.
        let _ = (pipeline, metrics);
        match self {
            SourceConfig::File(file) => Ok(AnySource::Lines(open_lines(&file.path).await?)),
            #[cfg(feature = "kafka")]
            SourceConfig::Kafka(kafka) => Ok(AnySource::Kafka(KafkaSource::subscribe(
                kafka,
                Arc::clone(metrics),
            )?)),
            #[cfg(feature = "fluvio")]
            SourceConfig::Fluvio(fluvio) => Ok(AnySource::Fluvio(
                FluvioSource::connect(fluvio, pipeline, Arc::clone(metrics)).await?,
            )),
            #[cfg(not(all(feature = "kafka", feature = "fluvio")))]
            other => Err(SourceError::NotBuiltIn(other.feature())),
        }
    }

    /// The Cargo feature the source needs, if any.
    #[cfg(not(all(feature = "kafka", feature = "fluvio")))]
    fn feature(&self) -> &'static str {
        match self {
            SourceConfig::File(_) => "",
            SourceConfig::Kafka(_) => "kafka",
            SourceConfig::Fluvio(_) => "fluvio",
        }
    }
}

impl AnySource {
    /// Stops reading and hands the last acknowledged positions to the transport (Kafka: commit
    /// and leave the group; Fluvio: commit, waiting up to 10 s).
    pub async fn close(self) {
        match self {
            AnySource::Lines(_) => {}
            #[cfg(feature = "kafka")]
            AnySource::Kafka(kafka) => kafka.close(),
            #[cfg(feature = "fluvio")]
            AnySource::Fluvio(fluvio) => fluvio.close().await,
        }
    }
}

impl Source for AnySource {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Message>, SourceError> {
        match self {
            AnySource::Lines(source) => source.next_batch(max).await,
            #[cfg(feature = "kafka")]
            AnySource::Kafka(source) => source.next_batch(max).await,
            #[cfg(feature = "fluvio")]
            AnySource::Fluvio(source) => source.next_batch(max).await,
        }
    }

    async fn ack(&mut self, batch: &[Message]) -> Result<(), SourceError> {
        match self {
            AnySource::Lines(source) => source.ack(batch).await,
            #[cfg(feature = "kafka")]
            AnySource::Kafka(source) => source.ack(batch).await,
            #[cfg(feature = "fluvio")]
            AnySource::Fluvio(source) => source.ack(batch).await,
        }
    }

    async fn hold(&mut self) {
        match self {
            AnySource::Lines(source) => source.hold().await,
            #[cfg(feature = "kafka")]
            AnySource::Kafka(source) => source.hold().await,
            #[cfg(feature = "fluvio")]
            AnySource::Fluvio(source) => source.hold().await,
        }
    }

    fn generation(&self) -> u64 {
        match self {
            AnySource::Lines(source) => source.generation(),
            #[cfg(feature = "kafka")]
            AnySource::Kafka(source) => source.generation(),
            #[cfg(feature = "fluvio")]
            AnySource::Fluvio(source) => source.generation(),
        }
    }
}
