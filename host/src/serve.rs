//! `converge serve`: the pipeline built from a [`Config`], running until the source ends or
//! `shutdown` resolves; then the batches in flight are finished, their offsets stored and
//! committed, and the consumer leaves its group.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::config::{Config, RuleConfig};
use crate::dead_letter::DeadLetterError;
use crate::pipeline::{Pipeline, PipelineError, Stats};
use crate::rule::{
    CompileCache, CompileCacheError, GateError, Gates, LoadError, RuleEngine, TrustedKeys,
};
use crate::shutdown::Shutdown;
use crate::source::SourceError;
use crate::store::StoreError;
use crate::swap::{
    Origin, RuleControl, RuleFileError, WatchError, read_rule_file, watch_rule_file,
};
use crate::telemetry::events::Unavailable;
use crate::telemetry::{Metrics, Operation, Service};

/// Why serving stopped with an error. Unacknowledged messages are delivered again on restart.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The rule engine cannot start.
    #[error(transparent)]
    Rule(#[from] LoadError),
    /// The configured compile cache directory cannot be used.
    #[error(transparent)]
    CompileCache(#[from] CompileCacheError),
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
pub async fn serve(config: &Config, mut shutdown: Shutdown) -> Result<Stats, ServeError> {
    // An exposed admin endpoint without a token is refused before anything is opened, even
    // for a configuration that did not come through `Config::load`.
    if let Some(admin) = &config.admin {
        admin.validate()?;
    }
    let metrics = Arc::new(Metrics::new());
    let control = Arc::new(load_rule(&config.rule, &metrics)?);
    tracing::info!(rule = %control.active_info().stamp(), "rule loaded");
    let starting = Starting {
        metrics: &metrics,
        config: &config.pipeline,
    };

    // Background tasks (admin, file watch, fleet) stop when the pipeline has.
    let (stopped, stop) = Shutdown::new();
    let Some(background) =
        start_background(config, &control, &metrics, &stop, &starting, &mut shutdown).await?
    else {
        return Ok(Stats::default());
    };
    let stop_background = async |background: Vec<JoinHandle<()>>| {
        stopped.trigger();
        for task in background {
            let _ = task.await;
        }
    };

    // A store or dead-letter queue down at start is an outage like any other: waited out,
    // rather than an exit that a supervisor would turn into a crash loop.
    let opened = starting
        .wait(
            Service::Store,
            &mut shutdown,
            store_unreachable,
            async || config.store.open().await,
        )
        .await?;
    let Some(store) = opened else {
        stop_background(background).await;
        return Ok(Stats::default());
    };
    warn_of_eviction(&store).await;
    let opened = starting
        .wait(
            Service::DeadLetterQueue,
            &mut shutdown,
            dead_letters_unreachable,
            async || {
                config
                    .dead_letter
                    .build(&config.source, &config.store)
                    .await
            },
        )
        .await?;
    let Some(dead_letters) = opened else {
        stop_background(background).await;
        return Ok(Stats::default());
    };
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
    // The source first: its offsets are committed and the group left before any background
    // task is awaited (a client of the admin endpoint gets a short grace, then is dropped),
    // so nothing beside the pipeline can hold a shutdown ahead of the commit.
    source.close().await;
    stop_background(background).await;
    result?;
    let stats = pipeline.stats().clone();
    tracing::info!(messages = stats.messages, writes = stats.writes, "stopped");
    Ok(stats)
}

/// Compiles the configured rule and admits it through the gates.
fn load_rule(config: &RuleConfig, metrics: &Arc<Metrics>) -> Result<RuleControl, ServeError> {
    let cache =
        CompileCache::configured(config.compile_cache, config.compile_cache_dir.as_deref())?;
    let engine = RuleEngine::with_compile_cache(config.engine_limits(), cache)?;
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
    let compiled = admitted.compiled.compiled();
    tracing::info!(
        rule = %admitted.compiled.info().stamp(),
        compile_ms = compiled.took.as_millis() as u64,
        from_cache = compiled.from_cache,
        "rule compiled"
    );
    Ok(
        RuleControl::new(gates, admitted, &Origin::file(path), Arc::clone(metrics))
            .with_auto_rollback(config.auto_rollback),
    )
}

/// Warns when the store's Redis may evict keys: a state evicted is a key whose history starts
/// over, which no rule can make converge.
async fn warn_of_eviction(store: &crate::store::AnyStore) {
    #[cfg(feature = "redis")]
    if let crate::store::AnyStore::Redis(redis) = store
        && let Some(policy) = redis.eviction_policy().await
        && policy != "noeviction"
    {
        tracing::warn!(
            policy,
            "the store's Redis may evict keys (maxmemory-policy is not noeviction): an evicted \
             state starts over from the next event; set maxmemory-policy noeviction"
        );
    }
    #[cfg(not(feature = "redis"))]
    let _ = store;
}

/// Waits out what `serve` needs at start while it is unreachable.
struct Starting<'a> {
    metrics: &'a Metrics,
    /// Its `backoff_ms` and `max_backoff_ms` pace the attempts.
    config: &'a crate::config::PipelineConfig,
}

impl Starting<'_> {
    /// `open`s `service`, retrying with backoff (each failure one log line and one count of
    /// `unavailable_total{service,operation="start"}`) while `unreachable` says it is down;
    /// `None` when shutdown is asked for meanwhile. Other errors end the start.
    async fn wait<T, E: std::fmt::Display>(
        &self,
        service: Service,
        shutdown: &mut Shutdown,
        unreachable: impl Fn(&E) -> bool,
        mut open: impl AsyncFnMut() -> Result<T, E>,
    ) -> Result<Option<T>, E> {
        let mut backoff = crate::backoff::Backoff::new(
            Duration::from_millis(self.config.backoff_ms),
            Duration::from_millis(self.config.max_backoff_ms),
        );
        loop {
            let error = tokio::select! {
                opened = open() => match opened {
                    Ok(opened) => return Ok(Some(opened)),
                    Err(error) if unreachable(&error) => error,
                    Err(error) => return Err(error),
                },
                () = shutdown.requested() => return Ok(None),
            };
            let wait = backoff.next_wait();
            self.metrics.emit(Unavailable {
                service,
                operation: Operation::Start,
                reason: &error,
                retry_in: wait,
            });
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.requested() => return Ok(None),
            }
        }
    }
}

/// Whether a Redis error is the server being unreachable (refused, reset, timed out), as
/// opposed to an answer (wrong password, unknown command) that waiting would not change.
#[cfg(feature = "redis")]
fn redis_unreachable(error: &::redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.is_connection_dropped()
}

fn store_unreachable(error: &StoreError) -> bool {
    match error {
        #[cfg(feature = "redis")]
        StoreError::Redis(error) => redis_unreachable(error),
        StoreError::Unavailable(_) => true,
        _ => false,
    }
}

fn dead_letters_unreachable(error: &DeadLetterError) -> bool {
    match error {
        #[cfg(feature = "redis")]
        DeadLetterError::Redis { source, .. } => redis_unreachable(source),
        DeadLetterError::Unavailable(_) => true,
        _ => false,
    }
}

/// Starts what runs beside the pipeline until `stop` is requested: the fleet follower, the rule
/// file watch and the admin endpoint. `None`: shutdown was asked for while the fleet's Redis
/// was waited for.
async fn start_background(
    config: &Config,
    control: &Arc<RuleControl>,
    metrics: &Arc<Metrics>,
    stop: &Shutdown,
    starting: &Starting<'_>,
    shutdown: &mut Shutdown,
) -> Result<Option<Vec<JoinHandle<()>>>, ServeError> {
    let mut background = Vec::new();
    #[cfg(feature = "redis")]
    if let Some(fleet_config) = &config.rule.fleet {
        if config.rule.trusted_keys.is_empty() {
            tracing::warn!(
                fleet = %fleet_config.name,
                "rule.fleet.allow_unsigned: this instance serves unsigned rules from the fleet; \
                 whoever can write the fleet's Redis chooses what it serves"
            );
        }
        // The fleet's rule, if it has one, serves from the first batch.
        let fleet_unreachable = |error: &crate::swap::FleetError| matches!(error, crate::swap::FleetError::Redis(error) if redis_unreachable(error));
        let opened = starting
            .wait(Service::Fleet, shutdown, fleet_unreachable, async || {
                let fleet =
                    crate::swap::Fleet::connect(&fleet_config.redis, &fleet_config.name).await?;
                let mut seen = (None, None);
                fleet.sync(control, &mut seen).await?;
                Ok((fleet, seen))
            })
            .await?;
        let Some((fleet, seen)) = opened else {
            return Ok(None);
        };
        let instance = fleet_config
            .instance
            .clone()
            .unwrap_or_else(default_instance_name);
        tracing::info!(fleet = %fleet.name(), %instance, "following the fleet's rule");
        background.push(tokio::spawn(fleet.follow(
            Arc::clone(control),
            instance,
            seen,
            stop.clone(),
        )));
    }
    // With a fleet, the fleet's pointers decide what serves; a watched file beside them would
    // fight them (each change of either undoing the other), so the file is the start-up rule
    // only.
    let fleet = cfg!(feature = "redis") && config.rule.fleet.is_some();
    if config.rule.watch && fleet {
        tracing::warn!(
            path = %config.rule.path.display(),
            "rule.watch is ignored: with rule.fleet, the file is the start-up rule only; \
             publish new versions with `converge rule publish`"
        );
    }
    if config.rule.watch && !fleet {
        background.push(watch_rule_file(
            config.rule.path.clone(),
            Arc::clone(control),
            stop.clone(),
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
            stop.clone(),
        );
        background.push(tokio::spawn(async move {
            if let Err(error) = server.await {
                tracing::error!(%error, "admin endpoint failed");
            }
        }));
    }
    // Unused without the transports.
    let _ = (metrics, starting, shutdown);
    Ok(Some(background))
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
