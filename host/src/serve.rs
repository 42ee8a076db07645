//! `converge serve`: the pipeline built from a [`Config`], running until the source ends or
//! `shutdown` resolves; then the batch in flight is finished, its offsets stored and committed,
//! and the consumer leaves its group.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufRead, BufReader};

use crate::admin::Metrics;
use crate::config::{Config, DeadLetterConfig, SourceConfig, StoreConfig};
use crate::dead_letter::{DeadLetter, DeadLetterError, DeadLetterSink};
use crate::engine::{EngineLimits, LoadError, RuleEngine};
use crate::enrich::Enricher;
use crate::fleet::{Fleet, FleetError};
use crate::fluvio_source::{FluvioSource, FluvioSourceConfig};
use crate::gate::{GateError, Gates};
use crate::kafka_dead_letters::KafkaDeadLetters;
use crate::kafka_source::{KafkaSource, KafkaSourceConfig};
use crate::message::Message;
use crate::pipeline::{Pipeline, PipelineError, Stats};
use crate::redis_dead_letters::RedisDeadLetters;
use crate::redis_store::RedisStore;
use crate::rule_file::{self, WatchError};
use crate::source::{JsonLinesSource, Source, SourceError};
use crate::store::{MemoryStore, Store, StoreError, Stored, Write, WriteOutcome};
use crate::swap::RuleControl;

/// Why serving stopped with an error. Unacknowledged messages are delivered again on restart.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Rule(#[from] LoadError),
    #[error("cannot open the source: {0}")]
    Source(#[from] SourceError),
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot open the dead-letter queue: {0}")]
    DeadLetter(#[from] DeadLetterError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("cannot set up enrichment: {0}")]
    Enrich(String),
    #[error("cannot listen on {0} for the admin endpoint: {1}")]
    Admin(std::net::SocketAddr, std::io::Error),
    #[error("rule {path} refused: {source}")]
    Refused { path: PathBuf, source: GateError },
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error(transparent)]
    Watch(#[from] WatchError),
}

/// Builds the pipeline from `config` and runs it until the source ends or `shutdown` resolves.
pub async fn serve(
    config: &Config,
    shutdown: impl Future<Output = ()>,
) -> Result<Stats, ServeError> {
    let metrics = Arc::new(Metrics::new());
    let engine = RuleEngine::new(EngineLimits {
        memory_cap_bytes: config.rule.memory_mib.saturating_mul(1 << 20),
        deadline: Duration::from_millis(config.rule.deadline_ms),
    })?;
    let gates = Gates::new(engine, config.rule.gates.clone());
    let path = &config.rule.path;
    let (bytes, sidecar) = rule_file::read(path).map_err(|source| LoadError::Read {
        path: path.clone(),
        source,
    })?;
    let admitted = gates
        .admit(&bytes, sidecar)
        .map_err(|source| ServeError::Refused {
            path: path.clone(),
            source,
        })?;
    let control = Arc::new(RuleControl::new(
        gates,
        admitted,
        &format!("file:{}", path.display()),
        Some(Arc::clone(&metrics)),
    ));
    tracing::info!(rule = %control.active_info().stamp(), "rule loaded");

    // Background tasks (admin, file watch, fleet) stop when the pipeline has.
    let (stopped, stop) = tokio::sync::watch::channel(false);
    let stop_signal = move || {
        let mut stop = stop.clone();
        async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        }
    };
    let mut background = Vec::new();
    if let Some(fleet_config) = &config.rule.fleet {
        let fleet = Fleet::connect(&fleet_config.redis, &fleet_config.name).await?;
        // The fleet's rule, if it has one, serves from the first batch.
        let mut seen = (None, None);
        fleet.sync(&control, &mut seen).await?;
        let instance = fleet_config
            .instance
            .clone()
            .unwrap_or_else(default_instance_name);
        tracing::info!(fleet = %fleet.name(), %instance, "following the fleet's rule");
        background.push(tokio::spawn(fleet.follow(
            Arc::clone(&control),
            instance,
            seen,
            stop_signal(),
        )));
    }
    if config.rule.watch {
        background.push(rule_file::watch(
            path.clone(),
            Arc::clone(&control),
            stop_signal(),
        )?);
    }
    let admin = match &config.admin {
        Some(admin) => {
            let listener = crate::admin::bind(admin.listen)
                .await
                .map_err(|error| ServeError::Admin(admin.listen, error))?;
            let server = crate::admin::serve_admin(
                listener,
                Arc::clone(&metrics),
                Some(Arc::clone(&control)),
                stop_signal(),
            );
            Some(tokio::spawn(server))
        }
        None => None,
    };

    let store = open_store(&config.store).await?;
    let dead_letters = match (&config.dead_letter, &config.source, &config.store) {
        (
            DeadLetterConfig::Kafka {
                topic,
                max_body_bytes,
            },
            SourceConfig::Kafka {
                brokers,
                properties,
                ..
            },
            _,
        ) => AnyDeadLetters::Kafka(KafkaDeadLetters::new(
            brokers,
            topic,
            *max_body_bytes,
            properties,
        )?),
        (DeadLetterConfig::RedisStream { stream }, _, StoreConfig::Redis { url, .. }) => {
            AnyDeadLetters::Redis(RedisDeadLetters::connect(url, stream).await?)
        }
        (DeadLetterConfig::RedisStream { stream }, _, StoreConfig::RedisCluster { urls, .. }) => {
            let url = urls.first().map(String::as_str).unwrap_or_default();
            AnyDeadLetters::Redis(RedisDeadLetters::connect(url, stream).await?)
        }
        _ => {
            return Err(ServeError::DeadLetter(DeadLetterError(
                "the dead-letter queue does not fit the source and store (see Config::validate)"
                    .to_owned(),
            )));
        }
    };
    let mut source = match &config.source {
        SourceConfig::File { path } => {
            let reader: Box<dyn AsyncBufRead + Unpin + Send> = if path.as_os_str() == "-" {
                Box::new(BufReader::new(tokio::io::stdin()))
            } else {
                Box::new(BufReader::new(
                    tokio::fs::File::open(path).await.map_err(SourceError::Io)?,
                ))
            };
            AnySource::File(JsonLinesSource::new(reader))
        }
        SourceConfig::Kafka {
            brokers,
            group_id,
            topics,
            batch_timeout_ms,
            properties,
        } => AnySource::Kafka(KafkaSource::subscribe(
            &KafkaSourceConfig {
                brokers: brokers.clone(),
                group_id: group_id.clone(),
                topics: topics.clone(),
                batch_timeout: Duration::from_millis(*batch_timeout_ms),
                properties: properties.clone(),
            },
            Some(Arc::clone(&metrics)),
        )?),
        SourceConfig::Fluvio {
            endpoint,
            topic,
            partitions,
            consumer,
            tls,
            batch_timeout_ms,
            fetch_max_bytes,
        } => AnySource::Fluvio(
            FluvioSource::connect(
                &FluvioSourceConfig {
                    endpoint: endpoint.clone(),
                    tls: tls.clone(),
                    topic: topic.clone(),
                    partitions: partitions.clone(),
                    consumer: consumer.clone(),
                    fetch_max_bytes: i32::try_from(*fetch_max_bytes).unwrap_or(i32::MAX),
                    batch_timeout: Duration::from_millis(*batch_timeout_ms),
                    read_ahead: config.pipeline.batch_size.saturating_mul(2),
                    backoff: Duration::from_millis(config.pipeline.backoff_ms),
                    max_backoff: Duration::from_millis(config.pipeline.max_backoff_ms),
                },
                Some(Arc::clone(&metrics)),
            )
            .await?,
        ),
    };

    let mut pipeline = Pipeline::new(control.rule(), store, dead_letters, config.pipeline.clone());
    if let Some(enrich) = &config.enrich {
        pipeline =
            pipeline.with_enricher(Enricher::new(enrich.clone()).map_err(ServeError::Enrich)?);
    }
    pipeline = pipeline.with_metrics(Arc::clone(&metrics));
    metrics.set_ready(true);
    tracing::info!("serving");
    let result = pipeline.run(&mut source, shutdown).await;
    metrics.set_ready(false);
    let _ = stopped.send(true);
    for task in background {
        let _ = task.await;
    }
    if let Some(admin) = admin {
        match admin.await {
            Ok(Err(error)) => tracing::error!(%error, "admin endpoint failed"),
            Err(error) => tracing::error!(%error, "admin endpoint panicked"),
            Ok(Ok(())) => {}
        }
    }
    match source {
        AnySource::Kafka(kafka) => kafka.close(),
        AnySource::Fluvio(fluvio) => fluvio.close().await,
        AnySource::File(_) => {}
    }
    result?;
    let stats = pipeline.stats().clone();
    tracing::info!(messages = stats.messages, writes = stats.writes, "stopped");
    Ok(stats)
}

/// Connects to the configured store.
pub(crate) async fn open_store(config: &StoreConfig) -> Result<AnyStore, StoreError> {
    Ok(match config {
        StoreConfig::Memory => AnyStore::Memory(MemoryStore::new()),
        StoreConfig::Redis {
            url,
            prefix,
            timeout_ms,
        } => AnyStore::Redis(
            RedisStore::connect_with_timeout(url, prefix, Duration::from_millis(*timeout_ms))
                .await?,
        ),
        StoreConfig::RedisCluster {
            urls,
            prefix,
            timeout_ms,
        } => AnyStore::Redis(
            RedisStore::connect_cluster_with_timeout(
                urls,
                prefix,
                Duration::from_millis(*timeout_ms),
            )
            .await?,
        ),
    })
}

/// The sources `serve` can read.
enum AnySource {
    File(JsonLinesSource<Box<dyn AsyncBufRead + Unpin + Send>>),
    Kafka(KafkaSource),
    Fluvio(FluvioSource),
}

impl Source for AnySource {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Message>, SourceError> {
        match self {
            AnySource::File(source) => source.next_batch(max).await,
            AnySource::Kafka(source) => source.next_batch(max).await,
            AnySource::Fluvio(source) => source.next_batch(max).await,
        }
    }

    async fn ack(&mut self, batch: &[Message]) -> Result<(), SourceError> {
        match self {
            AnySource::File(source) => source.ack(batch).await,
            AnySource::Kafka(source) => source.ack(batch).await,
            AnySource::Fluvio(source) => source.ack(batch).await,
        }
    }
}

/// The stores `serve` can write.
pub(crate) enum AnyStore {
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl Store for AnyStore {
    async fn load(&self, keys: &[String]) -> Result<Vec<Option<Stored>>, StoreError> {
        match self {
            AnyStore::Memory(store) => store.load(keys).await,
            AnyStore::Redis(store) => store.load(keys).await,
        }
    }

    async fn write(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StoreError> {
        match self {
            AnyStore::Memory(store) => store.write(writes).await,
            AnyStore::Redis(store) => store.write(writes).await,
        }
    }
}

/// The dead-letter queues `serve` can feed.
enum AnyDeadLetters {
    Kafka(KafkaDeadLetters),
    Redis(RedisDeadLetters),
}

impl DeadLetterSink for AnyDeadLetters {
    async fn send(&self, letters: &[DeadLetter]) -> Result<(), DeadLetterError> {
        match self {
            AnyDeadLetters::Kafka(sink) => sink.send(letters).await,
            AnyDeadLetters::Redis(sink) => sink.send(letters).await,
        }
    }
}

/// `host-pid`: unique among instances on one host, recognisable in `converge rule status`.
fn default_instance_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "converge".to_owned());
    format!("{host}-{}", std::process::id())
}
