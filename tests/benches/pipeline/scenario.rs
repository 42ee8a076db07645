//! The two kinds of run both end-to-end benches make (`pipeline.rs`, `rules.rs`): a backlog
//! drained as fast as it goes, and an open-loop producer at a fixed rate, with or without rule
//! swaps under it.

use std::path::Path;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use converge::rule::vectors::VectorFile;
use converge::swap::{Origin, Role};
use converge::telemetry::Metrics;
use converge_tests::kafka::TestTopic;
use converge_tests::services::unique_prefix;
use converge_tests::{Convergence, NativeOrderRule};
use tokio::sync::watch;

use crate::producer::{self, Paced};
use crate::run::{self, RuleFile, Run, StoreKind, TimedSwaps};

/// Which rule a backlog run decides with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    /// The component of the run's [`RuleFile`], loaded as `serve` loads it.
    Component,
    /// The Rust order rule compiled natively (the [`RuleFile`] only names the configuration's
    /// rule).
    Native,
}

/// A backlog run: publishes the backlog to a fresh topic, drains it with a fresh group into a
/// fresh key prefix, and checks every order's final state. Returns the run, the backlog's size
/// and its topic (deleted when dropped).
pub async fn backlog_run(
    dir: &Path,
    orders: usize,
    rule: (&RuleFile, RuleKind),
    store: StoreKind,
    name: &str,
) -> (Run, usize, TestTopic) {
    let topic = TestTopic::create(name, 6).await;
    let backlog = producer::backlog(&topic.name, orders).await;
    let prefix = unique_prefix(name);
    let group = format!("{}-group", topic.name);
    let config = run::kafka_config(dir, rule.0, &topic.name, &group, store, &prefix);
    let metrics = Arc::new(Metrics::new());
    let (_fixed, target) = watch::channel(backlog.published as usize);
    let measured = match rule.1 {
        RuleKind::Component => {
            let control = run::load_rule(&config.rule, &metrics);
            run::run(&config, control.rule(), metrics, target).await
        }
        RuleKind::Native => run::run(&config, NativeOrderRule::default(), metrics, target).await,
    };
    let check = run::check_store(store, &prefix).await;
    Convergence::new(&check.store, &backlog.expected)
        .assert_now()
        .await;
    println!(
        "{name}: {} messages at {:.0} events/s (group joined after {:.1} s)",
        measured.acked, measured.events_per_s, measured.first_batch_s
    );
    (measured, backlog.published as usize, topic)
}

/// Starts the paced producer process on `topic`; the receiver turns from `usize::MAX` to the
/// count it published once it is done.
fn start_producer(
    dir: &Path,
    topic: &str,
    rate: u32,
    seconds: u32,
    seed: u64,
) -> (watch::Receiver<usize>, tokio::task::JoinHandle<Paced>) {
    let (done, target) = watch::channel(usize::MAX);
    let (dir, topic) = (dir.to_owned(), topic.to_owned());
    let producer = tokio::task::spawn_blocking(move || {
        let paced = producer::paced(&dir, &topic, rate, seconds, seed);
        done.send_replace(paced.published as usize);
        paced
    });
    (target, producer)
}

/// Two equivalent versions of a rule to swap between under load, and the vectors that go with
/// them when they carry none of their own (an embedded section wins over these).
pub struct Swaps {
    pub v1: Vec<u8>,
    pub v2: Vec<u8>,
    pub sidecar: Option<VectorFile>,
}

/// What a paced run measured.
pub struct PacedRun {
    pub run: Run,
    pub producer: Paced,
    /// Swaps offered (0 without swaps).
    pub offered: usize,
    /// The pause of each swap taken up, ascending.
    pub pauses: Vec<Duration>,
}

/// The latency run of `rule` at `rate` changes/s for `seconds`, or with `swaps` the swap run:
/// the rule swapped between the two versions every 200 ms while the producer runs.
pub async fn paced_run(
    dir: &Path,
    rule: &RuleFile,
    (rate, seconds, seed): (u32, u32, u64),
    name: &str,
    swaps: Option<Swaps>,
) -> PacedRun {
    let topic = TestTopic::create(name, 6).await;
    let prefix = unique_prefix(name);
    let config = run::kafka_config(
        dir,
        rule,
        &topic.name,
        &format!("{}-group", topic.name),
        StoreKind::Standalone,
        &prefix,
    );
    let metrics = Arc::new(Metrics::new());
    let control = run::load_rule(&config.rule, &metrics);
    let measured = match swaps {
        None => {
            let (target, producer) = start_producer(dir, &topic.name, rate, seconds, seed);
            let run = run::run(&config, control.rule(), metrics, target).await;
            let producer = producer.await.expect("the producer ran");
            PacedRun {
                run,
                producer,
                offered: 0,
                pauses: Vec::new(),
            }
        }
        Some(Swaps { v1, v2, sidecar }) => {
            // Both versions are gated once beforehand, as a fleet instance gates a version
            // once; the swaps under load then only take up an admitted rule. Gating (and so
            // compiling) runs on a blocking thread, as `offer` asks.
            let control_ = Arc::clone(&control);
            let (v1, v2, sidecar) = tokio::task::spawn_blocking(move || {
                for version in [&v2, &v1] {
                    control_
                        .offer(version, sidecar.clone(), &Origin::Admin, Role::Active)
                        .expect("the version is admitted");
                }
                (v1, v2, sidecar)
            })
            .await
            .expect("gated");
            let (target, producer) = start_producer(dir, &topic.name, rate, seconds, seed);
            let swapper = {
                let control = Arc::clone(&control);
                let producing = target.clone();
                tokio::spawn(async move {
                    let mut swaps = 0usize;
                    while *producing.borrow() == usize::MAX {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        let next = if swaps.is_multiple_of(2) { &v2 } else { &v1 };
                        let (control, next, sidecar) =
                            (Arc::clone(&control), next.clone(), sidecar.clone());
                        // Off the runtime's workers, as the admin endpoint and the fleet
                        // offer: taking a version up may prepare its instance.
                        tokio::task::spawn_blocking(move || {
                            control
                                .offer(&next, sidecar, &Origin::Admin, Role::Active)
                                .expect("swap")
                        })
                        .await
                        .expect("the swap ran");
                        swaps += 1;
                    }
                    swaps
                })
            };
            let timed = TimedSwaps::new(control.rule());
            let pauses = Arc::clone(&timed.pauses);
            let run = run::run(&config, timed, metrics, target).await;
            let producer = producer.await.expect("the producer ran");
            let offered = swapper.await.expect("the swapper ran");
            let mut pauses = pauses
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            pauses.sort_unstable();
            PacedRun {
                run,
                producer,
                offered,
                pauses,
            }
        }
    };
    let check = run::check_store(StoreKind::Standalone, &prefix).await;
    Convergence::new(&check.store, &measured.producer.expected)
        .assert_now()
        .await;
    measured
}
