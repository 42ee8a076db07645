//! One run of the pipeline built the way `converge serve` builds it, from a configuration parsed
//! from a minimal TOML file: `Config::load`, then `store.open()`, `dead_letter.build(..)`,
//! `source.build(..)`, `Pipeline::new(..).with_metrics(..)`, `run(..)`, every setting at its
//! default. The bench adds only a [`Measured`] wrapper around the source, which times the run
//! and each message's latency at its acknowledgement.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use converge::config::{Config, RuleConfig};
use converge::entity::{Decision, DecisionKind, Event, RuleInfo, State};
use converge::pipeline::{Pipeline, Stats};
use converge::rule::{CompileCache, DecideError, Gates, Rule, RuleEngine};
use converge::source::{Message, Source, SourceError};
use converge::store::RedisStore;
use converge::swap::{Origin, RuleControl, read_rule_file};
use converge::telemetry::Metrics;
use converge_tests::kafka;
use converge_tests::services::{TestStore, free_loopback_addr, redis_cluster_urls, redis_url};
use tokio::sync::watch;

use crate::prom;

/// Messages whose intended send time is this soon after the first batch still carry the
/// group join's delay: start-up, not latency.
pub const WARM_UP_MS: i64 = 1_000;

/// How often the acknowledged count (and the in-flight gauge) is sampled during a run.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// Which Redis the run stores into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Standalone,
    Cluster,
}

/// A second connection to the store a run writes under `prefix`: to check what it stored, and
/// to delete it when dropped.
pub async fn check_store(kind: StoreKind, prefix: &str) -> TestStore {
    let store = match kind {
        StoreKind::Standalone => RedisStore::connect(&redis_url(), prefix).await,
        StoreKind::Cluster => RedisStore::connect_cluster(&redis_cluster_urls(), prefix).await,
    };
    TestStore {
        store: store.expect("the store answers"),
    }
}

/// A TOML string, quoted and escaped.
fn quoted(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// The `[store]` section a deployment would write for `kind`, under `prefix`.
fn store_section(kind: StoreKind, prefix: &str) -> String {
    match kind {
        StoreKind::Standalone => format!(
            "kind = \"redis\"\nurl = {}\nprefix = {}",
            quoted(&redis_url()),
            quoted(prefix)
        ),
        StoreKind::Cluster => {
            let urls: Vec<String> = redis_cluster_urls().iter().map(|u| quoted(u)).collect();
            format!(
                "kind = \"redis-cluster\"\nurls = [{}]\nprefix = {}",
                urls.join(", "),
                quoted(prefix)
            )
        }
    }
}

/// Writes `sections` under `dir` and loads them as `serve --config` does (variables expanded,
/// validated).
fn load(dir: &Path, name: &str, sections: &str) -> Config {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, sections).expect("config written");
    Config::load(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The rule a run's configuration names (`[rule]`), and the settings it needs beyond the
/// defaults.
#[derive(Debug, Clone)]
pub struct RuleFile {
    pub path: PathBuf,
    /// `rule.memory_mib`, when the default is too small for the rule.
    pub memory_mib: Option<usize>,
    /// `rule.deadline_ms`, when the default is too short for the rule.
    pub deadline_ms: Option<u64>,
    /// `rule.compile_cache_dir`: the bench's own, so that it neither reads nor fills the
    /// user's.
    pub compile_cache_dir: PathBuf,
}

impl RuleFile {
    /// `path` with the default settings, its compiled artifacts kept under `dir`.
    pub fn new(path: PathBuf, dir: &Path) -> Self {
        Self {
            path,
            memory_mib: None,
            deadline_ms: None,
            compile_cache_dir: dir.join("compile-cache"),
        }
    }

    /// The `[rule]` section.
    fn section(&self) -> String {
        let mut section = format!(
            "[rule]\npath = {}\ncompile_cache_dir = {}\n",
            quoted(&self.path.display().to_string()),
            quoted(&self.compile_cache_dir.display().to_string()),
        );
        if let Some(memory_mib) = self.memory_mib {
            section += &format!("memory_mib = {memory_mib}\n");
        }
        if let Some(deadline_ms) = self.deadline_ms {
            section += &format!("deadline_ms = {deadline_ms}\n");
        }
        section
    }
}

/// `serve`'s configuration for a Kafka `topic` read by `group`, storing under `prefix`, dead
/// letters to `{topic}.dlq`, with the admin endpoint configured: only what must be set, so that
/// batch size, batch timeout, consumer properties, timeouts and retries are the defaults.
pub fn kafka_config(
    dir: &Path,
    rule: &RuleFile,
    topic: &str,
    group: &str,
    store: StoreKind,
    prefix: &str,
) -> Config {
    let sections = format!(
        "{rule}\n\
         [source]\nkind = \"kafka\"\nbrokers = {brokers}\ngroup_id = {group}\n\
         topics = [{topic}]\n\n\
         [store]\n{store}\n\n\
         [dead_letter]\nkind = \"kafka\"\ntopic = {dead_letters}\n\n\
         [admin]\nlisten = {admin}\n",
        brokers = quoted(&kafka::brokers()),
        group = quoted(group),
        topic = quoted(topic),
        store = store_section(store, prefix),
        dead_letters = quoted(&format!("{topic}.dlq")),
        admin = quoted(&free_loopback_addr().to_string()),
        rule = rule.section(),
    );
    load(dir, group, &sections)
}

/// `serve`'s configuration for a Fluvio `topic` read as `consumer`, storing under `prefix` on
/// the standalone Redis, dead letters to a Redis stream beside the states.
pub fn fluvio_config(
    dir: &Path,
    rule: &Path,
    endpoint: &str,
    topic: &str,
    consumer: &str,
    prefix: &str,
) -> Config {
    let sections = format!(
        "[rule]\npath = {rule}\n\n\
         [source]\nkind = \"fluvio\"\nendpoint = {endpoint}\ntopic = {topic}\n\
         consumer = {consumer}\n\n\
         [store]\n{store}\n\n\
         [dead_letter]\nkind = \"redis-stream\"\nstream = {stream}\n\n\
         [admin]\nlisten = {admin}\n",
        rule = quoted(&rule.display().to_string()),
        endpoint = quoted(endpoint),
        topic = quoted(topic),
        consumer = quoted(consumer),
        store = store_section(StoreKind::Standalone, prefix),
        stream = quoted(&format!("{prefix}dead-letters")),
        admin = quoted(&free_loopback_addr().to_string()),
    );
    load(dir, consumer, &sections)
}

/// The configured rule, compiled (or loaded from the configured compile cache) and admitted
/// through the gates, as `serve` loads it.
pub fn load_rule(config: &RuleConfig, metrics: &Arc<Metrics>) -> Arc<RuleControl> {
    let cache = CompileCache::configured(config.compile_cache, config.compile_cache_dir.as_deref())
        .expect("the compile cache opens");
    let engine = RuleEngine::with_compile_cache(config.engine_limits(), cache)
        .expect("the rule engine starts");
    let gates = Gates::new(engine, config.gates.clone());
    let (bytes, sidecar) =
        read_rule_file(&config.path, config.max_component_bytes).expect("the rule file reads");
    let admitted = gates
        .admit(&bytes, sidecar)
        .expect("the rule passes the gates");
    Arc::new(RuleControl::new(
        gates,
        admitted,
        &Origin::file(&config.path),
        Arc::clone(metrics),
    ))
}

/// One acknowledged-count sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tick {
    /// Seconds since the pipeline started (the group join included).
    pub t_s: f64,
    pub acked: usize,
    /// `converge_in_flight_batches` at that moment.
    pub in_flight: f64,
}

/// What one run measured.
#[derive(Debug)]
pub struct Run {
    pub acked: usize,
    /// Acknowledged messages over the time from the first batch to the last acknowledgement:
    /// the group join is not in it.
    pub events_per_s: f64,
    /// Per message, warm-up excluded: (intended send time, in ms since the first batch;
    /// latency: acknowledgement time minus intended send time, in ms).
    pub latencies_ms: Vec<(i64, i64)>,
    /// Messages left out of `latencies_ms` as warm-up.
    pub warm_up: usize,
    /// The longest time between two acknowledgements.
    pub max_gap: Duration,
    /// Seconds from the pipeline's start to its first batch (joining the group).
    pub first_batch_s: f64,
    pub series: Vec<Tick>,
    /// `metrics.render()` at the end.
    pub metrics: String,
    pub stats: Stats,
}

/// Runs the pipeline of `config` with `rule` (and `metrics`, shared with the source and the
/// rule control) until `target` messages are acknowledged. Panics if anything was
/// dead-lettered: nothing in a simulated stream is bad.
pub async fn run<R: Rule>(
    config: &Config,
    rule: R,
    metrics: Arc<Metrics>,
    target: watch::Receiver<usize>,
) -> Run {
    let store = config.store.open().await.expect("the store opens");
    let dead_letters = config
        .dead_letter
        .build(&config.source, &config.store)
        .await
        .expect("the dead-letter queue opens");
    let source = config
        .source
        .build(&config.pipeline, &metrics)
        .await
        .expect("the source opens");
    let mut source = Measured::new(source, target);
    let mut pipeline = Pipeline::new(rule, store, dead_letters, config.pipeline.clone())
        .with_metrics(Arc::clone(&metrics));

    let (stop, stopped) = watch::channel(false);
    let sampler = tokio::spawn(sample(
        Arc::clone(&source.acked_shared),
        Arc::clone(&metrics),
        stopped,
    ));
    metrics.set_ready(true);
    let started = Instant::now();
    pipeline
        .run(&mut source, converge::shutdown::Shutdown::never())
        .await
        .expect("the pipeline runs");
    metrics.set_ready(false);
    stop.send_replace(true);
    let series = sampler.await.expect("the sampler ran");
    let stats = pipeline.stats().clone();
    assert!(
        stats.dead_letters.is_empty(),
        "nothing in a simulated stream is bad, yet: {:?}",
        stats.dead_letters
    );
    let run = Run {
        acked: source.acked,
        events_per_s: source.events_per_second(),
        latencies_ms: std::mem::take(&mut source.latencies_ms),
        warm_up: source.warm_up,
        max_gap: source.max_gap,
        first_batch_s: source
            .first
            .map_or(0.0, |first| (first - started).as_secs_f64()),
        series,
        metrics: metrics.render(),
        stats,
    };
    source.inner.close().await;
    run
}

async fn sample(
    acked: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    mut stopped: watch::Receiver<bool>,
) -> Vec<Tick> {
    let started = Instant::now();
    let mut ticks = Vec::new();
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stopped.wait_for(|stopped| *stopped) => break,
        }
        let samples = prom::samples(&metrics.render());
        ticks.push(Tick {
            t_s: started.elapsed().as_secs_f64(),
            acked: acked.load(Ordering::Relaxed),
            in_flight: prom::total(&samples, "converge_in_flight_batches"),
        });
    }
    ticks.push(Tick {
        t_s: started.elapsed().as_secs_f64(),
        acked: acked.load(Ordering::Relaxed),
        in_flight: 0.0,
    });
    ticks
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

/// A source that ends once `target` messages are acknowledged, timing the run and recording
/// each message's latency at its acknowledgement: the batch is acknowledged after its writes,
/// so this is "stored", and it is measured from the record's timestamp, which the simulator
/// sets to the message's intended send time.
///
/// The target is a watch: under a paced producer it is only known once the producer is done,
/// and by then the consumer may have taken everything and be waiting for a message that will
/// never come, so the wait has to wake up when the target arrives.
pub struct Measured<S> {
    inner: S,
    target: watch::Receiver<usize>,
    acked: usize,
    /// `acked`, for the sampler.
    acked_shared: Arc<AtomicUsize>,
    first: Option<Instant>,
    /// Unix ms when the first batch arrived.
    first_ms: Option<i64>,
    last: Option<Instant>,
    latencies_ms: Vec<(i64, i64)>,
    warm_up: usize,
    max_gap: Duration,
}

impl<S> Measured<S> {
    fn new(inner: S, target: watch::Receiver<usize>) -> Self {
        Self {
            inner,
            target,
            acked: 0,
            acked_shared: Arc::new(AtomicUsize::new(0)),
            first: None,
            first_ms: None,
            last: None,
            latencies_ms: Vec::new(),
            warm_up: 0,
            max_gap: Duration::ZERO,
        }
    }

    fn events_per_second(&self) -> f64 {
        match (self.first, self.last) {
            (Some(first), Some(last)) => self.acked as f64 / (last - first).as_secs_f64(),
            _ => 0.0,
        }
    }
}

impl<S: Source> Source for Measured<S> {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Message>, SourceError> {
        let acked = self.acked;
        let mut target = self.target.clone();
        let reached = async move {
            // A sender dropped before the target is reached means the producer failed; its
            // task's panic ends the run, so keep waiting for messages here.
            if target.wait_for(|target| acked >= *target).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        // Abandoning a half-collected batch is safe only because the target is reached: every
        // published message is acknowledged, so there is nothing left to collect.
        let batch = tokio::select! {
            biased;
            () = reached => return Ok(Vec::new()),
            batch = self.inner.next_batch(max) => batch?,
        };
        self.first.get_or_insert_with(Instant::now);
        self.first_ms.get_or_insert_with(unix_ms);
        Ok(batch)
    }

    async fn ack(&mut self, batch: &[Message]) -> Result<(), SourceError> {
        self.inner.ack(batch).await?;
        let now_ms = unix_ms();
        let first_ms = self.first_ms.unwrap_or(now_ms);
        for produced in batch.iter().filter_map(|m| m.produced_at_ms) {
            if produced >= first_ms + WARM_UP_MS {
                self.latencies_ms
                    .push((produced - first_ms, now_ms - produced));
            } else {
                self.warm_up += 1;
            }
        }
        self.acked += batch.len();
        self.acked_shared.store(self.acked, Ordering::Relaxed);
        let now = Instant::now();
        if let Some(last) = self.last {
            self.max_gap = self.max_gap.max(now - last);
        }
        self.last = Some(now);
        Ok(())
    }
}

/// A swappable rule that times each swap's pause: taking up the new rule in `before_batch`
/// (dropping the old one with it) and the first call on it (which instantiates it, unless it
/// was prepared beforehand).
pub struct TimedSwaps<R> {
    pub inner: R,
    pending: Option<Duration>,
    pub pauses: Arc<Mutex<Vec<Duration>>>,
}

impl<R> TimedSwaps<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            pending: None,
            pauses: Arc::default(),
        }
    }
}

impl<R: Rule> Rule for TimedSwaps<R> {
    fn info(&self) -> &RuleInfo {
        self.inner.info()
    }

    fn swap_pending(&self) -> bool {
        self.inner.swap_pending()
    }

    fn applied(&mut self, decisions: &std::collections::BTreeMap<DecisionKind, u64>) {
        self.inner.applied(decisions);
    }

    fn before_batch(&mut self) {
        // Two versions of a swap may carry the same stamp (the same rule, other bytes).
        let swapping = self.inner.swap_pending();
        let started = Instant::now();
        self.inner.before_batch();
        if swapping {
            self.pending = Some(started.elapsed());
        }
    }

    fn decide(
        &mut self,
        current: Option<&State>,
        incoming: &Event,
    ) -> Result<Decision, DecideError> {
        self.inner.decide(current, incoming)
    }

    fn decide_batch(
        &mut self,
        items: &[(Option<State>, Event)],
    ) -> Result<Vec<Decision>, DecideError> {
        let Some(taken_up) = self.pending.take() else {
            return self.inner.decide_batch(items);
        };
        if items.is_empty() {
            self.pending = Some(taken_up);
            return self.inner.decide_batch(items);
        }
        // The first call on a new rule instantiates it: that is part of the swap's pause.
        let started = Instant::now();
        let first = self.inner.decide_batch(&items[..1]);
        self.pauses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(taken_up + started.elapsed());
        let mut decisions = first?;
        decisions.extend(self.inner.decide_batch(&items[1..])?);
        Ok(decisions)
    }
}
