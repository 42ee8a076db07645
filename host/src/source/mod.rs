//! Where messages come from: the [`Source`] trait and its implementations.
//!
//! # Layout
//! - this module: the [`Source`] trait and [`SourceError`];
//! - `message`: a message as a source delivers it ([`Message`]), and its [`Position`];
//! - `lines`: JSON lines from a file or stdin ([`JsonLinesSource`]);
//! - `kafka` (feature `kafka`): a Kafka consumer-group member ([`KafkaSource`]);
//! - `fluvio` (feature `fluvio`): a Fluvio topic read partition by partition
//!   ([`FluvioSource`]).

#[cfg(feature = "fluvio")]
mod fluvio;
#[cfg(feature = "kafka")]
mod kafka;
mod lines;
mod message;

#[cfg(feature = "fluvio")]
pub use fluvio::{FluvioRecord, FluvioSource};
#[cfg(feature = "kafka")]
pub use kafka::{KafkaRange, KafkaSource};
pub use lines::{JsonLinesSource, LinesReader, open_lines};
pub use message::{Lost, Message, Position};

use std::sync::Arc;

use crate::config::SourceConfig;
use crate::pipeline::PipelineConfig;
use crate::telemetry::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read input: {0}")]
    Io(#[from] std::io::Error),
    #[error("kafka: {0}")]
    Kafka(String),
    #[error("fluvio: {0}")]
    Fluvio(String),
    /// The configured source needs a Cargo feature this build lacks.
    #[error("this converge was built without the `{0}` feature, which the source needs")]
    NotBuiltIn(&'static str),
}

/// A stream of messages, read in batches and acknowledged by position.
#[allow(async_fn_in_trait)] // Used through generics only.
pub trait Source {
    /// Up to `max` messages; an empty batch means the stream has ended.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Message>, SourceError>;

    /// Marks every message of a processed batch as done: its state (or dead letter) is
    /// acknowledged by the store, so it is never delivered again after a restart.
    async fn ack(&mut self, batch: &[Message]) -> Result<(), SourceError>;
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
    pub fn feature(&self) -> &'static str {
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
}
