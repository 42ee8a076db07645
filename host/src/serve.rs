//! `converge serve`: the pipeline built from a [`Config`], running until the source ends or
//! `shutdown` resolves; then the batch in flight is finished, its offsets stored and committed,
//! and the consumer leaves its group.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, RuleConfig};
use crate::dead_letter::DeadLetterError;
use crate::pipeline::{Pipeline, PipelineError, Stats};
use crate::rule::{EngineLimits, GateError, Gates, LoadError, RuleEngine, TrustedKeys};
use crate::source::SourceError;
use crate::store::StoreError;
use crate::swap::{RuleControl, RuleFileError, WatchError, read_rule_file, watch_rule_file};
use crate::telemetry::Metrics;

/// Why serving stopped with an error. Unacknowledged messages are delivered again on restart.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The rule engine cannot start.
    #[error(transparent)]
    Rule(#[from] LoadError),
    /// The rule file, or the vectors beside it, cannot be read.
    #[error(transparent)]
    RuleFile(#[from] RuleFileError),
    /// The rule was refused by a gate.
    #[error("rule {path} refused by the {} gate: {source}", .source.gate())]
    Refused {
        /// The rule file.
        path: PathBuf,
        /// The gate's refusal.
        source: GateError,
    },
    /// The source cannot be opened.
    #[error("cannot open the source: {0}")]
    Source(#[from] SourceError),
    /// The store cannot be opened.
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    /// The dead-letter queue cannot be opened.
    #[error("cannot open the dead-letter queue: {0}")]
    DeadLetter(#[from] DeadLetterError),
    /// The pipeline stopped on an error.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// The enrichment client cannot be set up.
    #[cfg(feature = "http")]
    #[error("cannot set up enrichment: {0}")]
    Enrich(#[source] crate::pipeline::EnrichSetupError),
    /// The admin endpoint's address cannot be bound.
    #[cfg(feature = "http")]
    #[error("cannot listen on {addr} for the admin endpoint: {source}")]
    Admin {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// Why it cannot be bound.
        source: std::io::Error,
    },
    /// The fleet cannot be reached or read.
    #[cfg(feature = "redis")]
    #[error(transparent)]
    Fleet(#[from] crate::swap::FleetError),
    /// The rule file cannot be watched.
    #[error(transparent)]
    Watch(#[from] WatchError),
    /// The configuration is refused (checked again at start for what guards the instance).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// Builds the pipeline from `config` and runs it until the source ends or `shutdown` resolves.
pub async fn serve(
    config: &Config,
    shutdown: impl Future<Output = ()>,
) -> Result<Stats, ServeError> {
    // An exposed admin endpoint without a token is refused before anything is opened, even
    // for a configuration that did not come through `Config::load`.
    if let Some(admin) = &config.admin {
        admin.validate()?;
    }
    let metrics = Arc::new(Metrics::new());
    let control = Arc::new(load_rule(&config.rule, &metrics)?);
    tracing::info!(rule = %control.active_info().stamp(), "rule loaded");

    // Background tasks (admin, file watch, fleet) stop when the pipeline has.
    let (stopped, stop) = watch::channel(false);
    let background = start_background(config, &control, &metrics, &stop).await?;

    let store = config.store.open().await?;
    let dead_letters = config
        .dead_letter
        .build(&config.source, &config.store)
        .await?;
    let mut source = config.source.build(&config.pipeline, &metrics).await?;
    let pipeline = Pipeline::new(control.rule(), store, dead_letters, config.pipeline.clone());
    #[cfg(feature = "http")]
    let pipeline = match &config.enrich {
        Some(enrich) => pipeline.with_enricher(
            crate::pipeline::Enricher::new(enrich.clone()).map_err(ServeError::Enrich)?,
        ),
        None => pipeline,
    };
    let mut pipeline = pipeline.with_metrics(Arc::clone(&metrics));

    metrics.set_ready(true);
    tracing::info!("serving");
    let result = pipeline.run(&mut source, shutdown).await;
    metrics.set_ready(false);
    let _ = stopped.send(true);
    for task in background {
        let _ = task.await;
    }
    source.close().await;
    result?;
    let stats = pipeline.stats().clone();
    tracing::info!(messages = stats.messages, writes = stats.writes, "stopped");
    Ok(stats)
}

/// Compiles the configured rule and admits it through the gates.
fn load_rule(config: &RuleConfig, metrics: &Arc<Metrics>) -> Result<RuleControl, ServeError> {
    let engine = RuleEngine::new(EngineLimits {
        memory_cap_bytes: config.memory_mib.saturating_mul(1 << 20),
        deadline: Duration::from_millis(config.deadline_ms),
        max_component_bytes: config.max_component_bytes,
        ..EngineLimits::default()
    })?;
    let gates = Gates::new(engine, config.gates.clone())
        .with_trusted_keys(TrustedKeys::new(config.trusted_keys.iter().copied()));
    let path = &config.path;
    let refused = |source| ServeError::Refused {
        path: path.clone(),
        source,
    };
    let (bytes, sidecar) = match read_rule_file(path, config.max_component_bytes) {
        Ok(read) => read,
        Err(RuleFileError::Rule(error @ LoadError::TooLarge { .. })) => {
            return Err(refused(GateError::Load(error)));
        }
        Err(error) => return Err(error.into()),
    };
    let admitted = gates.admit(&bytes, sidecar).map_err(refused)?;
    Ok(RuleControl::new(
        gates,
        admitted,
        &format!("file:{}", path.display()),
        Arc::clone(metrics),
    )
    .with_auto_rollback(config.auto_rollback))
}

/// Starts what runs beside the pipeline until `stop` turns true: the fleet follower, the rule
/// file watch and the admin endpoint.
async fn start_background(
    config: &Config,
    control: &Arc<RuleControl>,
    metrics: &Arc<Metrics>,
    stop: &watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<()>>, ServeError> {
    let stop_signal = || {
        let mut stop = stop.clone();
        async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        }
    };
    let mut background = Vec::new();
    #[cfg(feature = "redis")]
    if let Some(fleet_config) = &config.rule.fleet {
        let fleet = crate::swap::Fleet::connect(&fleet_config.redis, &fleet_config.name).await?;
        // The fleet's rule, if it has one, serves from the first batch.
        let mut seen = (None, None);
        fleet.sync(control, &mut seen).await?;
        let instance = fleet_config
            .instance
            .clone()
            .unwrap_or_else(default_instance_name);
        tracing::info!(fleet = %fleet.name(), %instance, "following the fleet's rule");
        background.push(tokio::spawn(fleet.follow(
            Arc::clone(control),
            instance,
            seen,
            stop_signal(),
        )));
    }
    if config.rule.watch {
        background.push(watch_rule_file(
            config.rule.path.clone(),
            Arc::clone(control),
            stop_signal(),
        )?);
    }
    #[cfg(feature = "http")]
    if let Some(admin) = &config.admin {
        let listener =
            crate::admin::bind(admin.listen)
                .await
                .map_err(|source| ServeError::Admin {
                    addr: admin.listen,
                    source,
                })?;
        let server = crate::admin::serve_admin(
            listener,
            admin,
            Arc::clone(metrics),
            Arc::clone(control),
            stop_signal(),
        );
        background.push(tokio::spawn(async move {
            if let Err(error) = server.await {
                tracing::error!(%error, "admin endpoint failed");
            }
        }));
    }
    // Unused without the transports.
    let _ = metrics;
    Ok(background)
}

/// `host-pid`: unique among instances on one host, recognisable in `converge rule status`.
#[cfg(feature = "redis")]
fn default_instance_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "converge".to_owned());
    format!("{host}-{}", std::process::id())
}
