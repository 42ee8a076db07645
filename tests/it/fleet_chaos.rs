//! T3 (full): three `converge serve` processes in one consumer group over a six-partition topic
//! on a Kafka broker of the test's own, fed 10,000 orders (30% of events duplicated, shuffled)
//! over about a minute while faults hit mid-stream: a random process SIGKILLed and restarted
//! every 10–30 s, one process SIGSTOPped past its session timeout and woken again (a zombie,
//! whose late writes the compare-and-set must fence), and the broker killed and restarted once.
//! The zombie is stopped with writes on their way: its store goes through a proxy that holds its
//! writes back from the moment it stops, and lets them go only once the group has moved past
//! everything it held (the other processes wrote those keys); its own `/metrics` must then count
//! them refused (`converge_conflicts_total` up after it wakes).
//! A watcher samples every key every 50 ms throughout and fails the test if any key ever moves
//! backward. At the end every key holds its order's final state, the group's committed offsets
//! are at the end of every partition, and nothing was dead-lettered.
//!
//! The random choices (the orders, fault times and targets) come from a seed printed at the
//! start; `CONVERGE_T3_SEED=<seed>` runs the same choices again.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use converge::config::{AdminConfig, StoreConfig};
use converge::entity::State;
use converge::store::{Store, Write, WriteOutcome, new_writer_id};
use converge_tests::fault_proxy::FaultProxy;
use converge_tests::kafka::{PrivateKafka, TestTopic};
use converge_tests::process::Server;
use converge_tests::prometheus::{Exposition, scrape};
use converge_tests::served::{self, Served};
use converge_tests::services::{TestStore, free_loopback_addr, redis_address};
use converge_tests::watch::Watcher;
use converge_tests::{Convergence, config, orders};
use futures::FutureExt as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;

fn order(key: &str, status: &str, version: u64) -> State {
    State {
        key: key.to_owned(),
        status: status.to_owned(),
        version,
        timestamp_ms: 1_700_000_000_000 + version,
        payload: "{}".to_owned(),
    }
}

/// Writes `state` over revision `expected` (0: absent) and its writer, whatever the rule would
/// say: the compare-and-set checks revisions, not newness. Answers the new revision and writer.
async fn force(store: &impl Store, state: State, expected: (u64, u64)) -> (u64, u64) {
    let writer = new_writer_id();
    let outcome = store
        .write(&[Write {
            key: state.key.clone(),
            expected_revision: expected.0,
            expected_writer: expected.1,
            writer,
            state,
            rule: "test".to_owned(),
            position: "test".to_owned(),
        }])
        .await
        .expect("Redis answers");
    match outcome[..] {
        [WriteOutcome::Written { revision }] => (revision, writer),
        ref other => panic!("the write did not land: {other:?}"),
    }
}

/// The watcher itself: a key written back to an older state between two samples fails
/// `finish`, naming the key and both states; a key moving forward does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t3_full_watcher_catches_a_key_moving_backward() {
    let redis = TestStore::standalone("t3-full-watcher").await;
    let keys = vec!["order-back".to_owned(), "order-forward".to_owned()];
    let back = force(&redis.store, order("order-back", "paid", 2), (0, 0)).await;
    let forward = force(&redis.store, order("order-forward", "created", 1), (0, 0)).await;
    let watcher = Watcher::start(redis.store.clone(), keys, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_millis(300)).await;
    force(&redis.store, order("order-back", "created", 1), back).await;
    force(
        &redis.store,
        order("order-forward", "completed", 3),
        forward,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let failure = std::panic::AssertUnwindSafe(watcher.finish())
        .catch_unwind()
        .await
        .expect_err("the watcher must fail on a key that moved backward");
    let message = failure
        .downcast_ref::<String>()
        .expect("a formatted panic message");
    assert!(
        message.starts_with("1 time(s) a key moved backward")
            && message.contains("order-back moved backward")
            && message.contains("paid v2")
            && message.contains("-> created v1"),
        "{message}"
    );

    // Unchanged or forward only: it passes, and counts its samples.
    let keys = vec!["order-back".to_owned(), "order-forward".to_owned()];
    let watcher = Watcher::start(redis.store.clone(), keys, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let current = redis
        .store
        .load(&["order-back".to_owned()])
        .await
        .expect("Redis answers")
        .remove(0)
        .expect("stored");
    force(
        &redis.store,
        order("order-back", "refunded", 4),
        (current.revision, current.writer),
    )
    .await;
    let samples = watcher.finish().await;
    assert!(samples >= 5, "only {samples} samples in 300 ms");
}

const PROCESSES: usize = 3;
const ORDERS: usize = 10_000;
/// The stream is produced in this many chunks, one every [`CHUNK_EVERY`]: a fault always finds
/// messages arriving and batches in flight.
const CHUNKS: usize = 50;
const CHUNK_EVERY: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t3_full_kills_a_zombie_and_a_broker_bounce_converge_and_never_go_backward() {
    let test_started = Instant::now();
    let seed: u64 = match std::env::var("CONVERGE_T3_SEED") {
        Ok(seed) => seed.parse().expect("CONVERGE_T3_SEED is a u64"),
        Err(_) => rand::random(),
    };
    eprintln!("t3_full: seed {seed} (CONVERGE_T3_SEED={seed} repeats its random choices)");
    let mut logs = KeptOnFailure(tempfile::tempdir().expect("temp dir"));

    // The broker is bounced: the Kafka other tests share must not be.
    let kafka = tokio::task::block_in_place(PrivateKafka::start);
    eprintln!(
        "t3_full: private Kafka on {} after {:.1}s",
        kafka.brokers(),
        test_started.elapsed().as_secs_f64()
    );
    let Served {
        topic,
        dead_letters,
        redis,
        group,
        settings,
        ..
    } = Served::on(
        TestTopic::create_on(&kafka.brokers(), "t3-full", 6).await,
        TestTopic::create_on(&kafka.brokers(), "t3-full-dlq", 1).await,
        "t3-full",
    )
    .await;
    let config = config::write(logs.0.path(), &settings);
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(1));
    let zombie = Zombie::configure(
        rng.random_range(0..PROCESSES),
        settings,
        logs.0.path(),
        Arc::clone(&topic),
        group.clone(),
    )
    .await;

    let stream = orders::generate("order-", ORDERS, 30, seed);
    let keys: Vec<String> = stream.expected.keys().cloned().collect();
    let watcher = Watcher::start(redis.store.clone(), keys, Duration::from_millis(50));

    let mut configs = vec![config; PROCESSES];
    configs[zombie.n] = zombie.config.clone();
    let fleet = Fleet::start(configs, logs.0.path());
    let started = Instant::now();
    eprintln!(
        "t3_full: {:.1}s: {} processes started; times below are from here",
        test_started.elapsed().as_secs_f64(),
        PROCESSES
    );
    let produced = Arc::new(AtomicBool::new(false));
    let chaos = {
        let produced = Arc::clone(&produced);
        std::thread::spawn(move || chaos(fleet, kafka, zombie, rng, started, &produced))
    };
    let chunk = stream.events.len().div_ceil(CHUNKS);
    for (n, events) in stream.events.chunks(chunk).enumerate() {
        tokio::time::sleep_until((started + CHUNK_EVERY * n as u32).into()).await;
        // While the broker is down this waits for it (the producer retries), then catches up;
        // unless the faults ended before their time, which is a failure to report at once.
        let failed = async {
            while !chaos.is_finished() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::select! {
            () = topic.produce(events) => {}
            () = failed => break,
        }
    }
    eprintln!(
        "t3_full: {:.1}s: all {} events produced",
        started.elapsed().as_secs_f64(),
        stream.events.len()
    );
    produced.store(true, Ordering::Release);
    let chaos = tokio::task::spawn_blocking(move || chaos.join())
        .await
        .expect("joined");
    let (fleet, kafka, zombie) = chaos.unwrap_or_else(|panic| std::panic::resume_unwind(panic));

    let positions = Convergence::new(&redis.store, &stream.expected)
        .within(Duration::from_secs(120))
        .logs(&mut logs.0)
        .wait_with_offsets(async || topic.progress(&group))
        .await;
    assert_eq!(served::messages(&positions), stream.events.len());
    eprintln!(
        "t3_full: {:.1}s: converged",
        started.elapsed().as_secs_f64()
    );

    // Nothing in this stream is bad, and a zombie's refused writes are decided again, not
    // dead-lettered.
    dead_letters.assert_empty().await;

    fleet.terminate();
    // Its store's proxy served the zombie until it stopped.
    drop(zombie);
    eprintln!(
        "t3_full: {:.1}s: no dead letters, every process stopped cleanly",
        started.elapsed().as_secs_f64()
    );
    let samples = watcher.finish().await;
    // A sample of 10,000 keys takes a few tens of milliseconds: thousands over the run when
    // the machine is idle, hundreds on a loaded one; a watcher that stalled would have a few.
    assert!(samples >= 100, "the watcher took only {samples} samples");
    // The topics are deleted on the broker, so before it goes.
    drop((topic, dead_letters));
    drop(kafka);
    eprintln!(
        "t3_full: passed in {:.1}s with {samples} samples of every key (seed {seed})",
        test_started.elapsed().as_secs_f64()
    );
}

/// A temp dir of logs, kept (and named) when the test fails, whichever check fails.
struct KeptOnFailure(TempDir);

impl Drop for KeptOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.disable_cleanup(true);
            eprintln!("t3_full: logs kept in {}", self.0.path().display());
        }
    }
}

/// The `converge serve` processes, each restarted under the same name and configuration with a
/// log of its own per start (`serve-{n}.{start}.log`).
#[derive(Debug)]
struct Fleet {
    configs: Vec<PathBuf>,
    logs: PathBuf,
    processes: Vec<(Server, PathBuf)>,
    starts: Vec<u32>,
}

impl Fleet {
    /// Process `n` serves `configs[n]`.
    fn start(configs: Vec<PathBuf>, logs: &Path) -> Self {
        let mut fleet = Self {
            configs,
            logs: logs.to_owned(),
            processes: Vec::new(),
            starts: vec![0; PROCESSES],
        };
        for n in 0..PROCESSES {
            let process = fleet.spawn(n);
            fleet.processes.push(process);
        }
        fleet
    }

    fn spawn(&mut self, n: usize) -> (Server, PathBuf) {
        self.starts[n] += 1;
        let log = self.logs.join(format!("serve-{n}.{}.log", self.starts[n]));
        (Server::start(&self.configs[n], &log), log)
    }

    /// Panics if a process exited on its own (nothing here may stop one but the test), naming
    /// every process that did within a second of the first: one cause often stops them all.
    fn check_running(&mut self) {
        if self.exited().is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_secs(1));
        panic!("serve exited on its own: {}", self.exited().join("; "));
    }

    fn exited(&mut self) -> Vec<String> {
        let mut exited = Vec::new();
        for (n, (server, log)) in self.processes.iter_mut().enumerate() {
            if let Some(exit) = server.exited() {
                exited.push(format!(
                    "serve {n} (pid {}, {exit}), see {}",
                    server.id(),
                    log.display()
                ));
            }
        }
        exited
    }

    fn kill_and_restart(&mut self, n: usize) -> (u32, u32) {
        let (server, _) = &mut self.processes[n];
        let killed = server.id();
        server.kill();
        self.processes[n] = self.spawn(n);
        (killed, self.processes[n].0.id())
    }

    fn signal(&self, n: usize, signal: &str) -> u32 {
        let server = &self.processes[n].0;
        server.signal(signal);
        server.id()
    }

    /// SIGTERM to each: every one, the woken zombie included, must exit cleanly.
    fn terminate(self) {
        for (server, _) in self.processes {
            server.terminate();
        }
    }
}

/// The thread bouncing the broker, waited for if the faults fail meanwhile: the broker it
/// holds is then stopped and its data deleted, not left running.
struct Bounce(Option<std::thread::JoinHandle<PrivateKafka>>);

impl Drop for Bounce {
    fn drop(&mut self) {
        if let Some(thread) = self.0.take() {
            let _ = thread.join();
        }
    }
}

fn between(rng: &mut StdRng, seconds: std::ops::Range<f64>) -> Duration {
    Duration::from_secs_f64(rng.random_range(seconds))
}

/// The process that becomes a zombie: its store goes through a proxy that can hold its writes
/// on their way, and its admin endpoint tells how many of its writes were refused.
struct Zombie {
    n: usize,
    config: PathBuf,
    admin: SocketAddr,
    proxy: FaultProxy,
    topic: Arc<TestTopic>,
    group: String,
    /// The test's runtime, for the proxy's tasks and the admin requests of the faults' thread.
    runtime: tokio::runtime::Handle,
    /// `converge_conflicts_total` when it stopped, and each partition's end then.
    conflicts_before: f64,
    ends_at_stop: Vec<i64>,
}

impl Zombie {
    /// Process `n`'s configuration: `settings` with the store behind a proxy and an admin
    /// endpoint, written to `logs/zombie/`. Its store timeout outlasts the stop (two minutes):
    /// a write held back must come back answered — refused — not given up on.
    async fn configure(
        n: usize,
        mut settings: converge::config::Config,
        logs: &Path,
        topic: Arc<TestTopic>,
        group: String,
    ) -> Self {
        let proxy = FaultProxy::start(redis_address()).await;
        let StoreConfig::Redis(store) = &mut settings.store else {
            panic!("t3_full stores on the standalone Redis")
        };
        store.url = proxy.redis_url();
        store.common.timeout_ms = 120_000;
        let admin = free_loopback_addr();
        settings.admin = Some(AdminConfig {
            listen: admin,
            ..AdminConfig::default()
        });
        let dir = logs.join("zombie");
        std::fs::create_dir_all(&dir).expect("the zombie's config dir");
        Self {
            n,
            config: config::write(&dir, &settings),
            admin,
            proxy,
            topic,
            group,
            runtime: tokio::runtime::Handle::current(),
            conflicts_before: 0.0,
            ends_at_stop: Vec::new(),
        }
    }

    /// Its `/metrics`, or why not.
    fn metrics(&self) -> Result<Exposition, String> {
        self.runtime
            .block_on(scrape(self.admin))
            .map_err(|error| error.to_string())
    }

    /// Holds its writes back, waits until one is held (a batch of writes on its way, and
    /// `in_flight_batches` above 0) and nothing else it does moves its counts, then SIGSTOPs
    /// it and notes each partition's end: what it held is below them.
    fn stop_with_writes_in_flight(&mut self, fleet: &mut Fleet) -> u32 {
        self.proxy.hold_requests_from(b"EVALSHA");
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.proxy.stats().requests_held == 0 {
            fleet.check_running();
            assert!(
                Instant::now() < deadline,
                "serve {} wrote nothing for 60 s while its writes were to be held",
                self.n
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // Batches before the held one may still finish (and count): wait until two looks a
        // moment apart agree.
        let counts = |metrics: &Exposition| {
            (
                metrics.value("converge_conflicts_total"),
                metrics.value("converge_batches_total"),
                metrics.value("converge_in_flight_batches"),
            )
        };
        let mut last = None;
        let before = loop {
            fleet.check_running();
            assert!(
                Instant::now() < deadline,
                "serve {}'s counts did not settle while its writes were held",
                self.n
            );
            let now = self.metrics().map(|metrics| counts(&metrics)).ok();
            if let Some(settled) = now
                && now == last
            {
                break settled;
            }
            last = now;
            std::thread::sleep(Duration::from_millis(300));
        };
        let (conflicts, _, in_flight) = before;
        assert!(
            in_flight >= 1.0,
            "serve {} has a write held but no batch in flight",
            self.n
        );
        self.conflicts_before = conflicts;
        let pid = fleet.signal(self.n, "STOP");
        self.ends_at_stop = self
            .topic
            .progress(&self.group)
            .iter()
            .map(|p| p.1)
            .collect();
        pid
    }

    /// Whether the group's committed offsets passed every partition's end at the stop: the
    /// other processes took over its partitions and settled every message it held.
    fn group_moved_on(&self) -> bool {
        let progress = self.topic.progress(&self.group);
        progress
            .iter()
            .zip(&self.ends_at_stop)
            .all(|((committed, _), end)| committed >= end)
    }

    /// Lets its held writes go (to keys written since by the others) and SIGCONTs it; waits
    /// until it counts them refused. Answers its pid and how many refusals it counted.
    fn wake(&self, fleet: &mut Fleet) -> (u32, f64) {
        self.proxy.release_requests();
        let pid = fleet.signal(self.n, "CONT");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            fleet.check_running();
            let conflicts = self
                .metrics()
                .map(|metrics| metrics.value("converge_conflicts_total"));
            if let Ok(conflicts) = conflicts
                && conflicts > self.conflicts_before
            {
                return (pid, conflicts - self.conflicts_before);
            }
            assert!(
                Instant::now() < deadline,
                "the zombie's late writes were not counted refused: serve {}'s \
                 converge_conflicts_total stayed at {} for 60 s after it woke ({conflicts:?}), \
                 though its writes were held until the group had moved past them",
                self.n,
                self.conflicts_before
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The faults, on their own thread (signals, processes and the broker's restart all block),
/// until the stream is produced, with at least two kills, the zombie woken and the broker back.
/// Hands back the processes, the broker and the zombie's proxy, all running.
fn chaos(
    mut fleet: Fleet,
    kafka: PrivateKafka,
    mut zombie: Zombie,
    mut rng: StdRng,
    started: Instant,
    produced: &AtomicBool,
) -> (Fleet, PrivateKafka, Zombie) {
    let say =
        move |what: &str| eprintln!("t3_full: {:.1}s: {what}", started.elapsed().as_secs_f64());
    // Past the 6 s session timeout: the group moves its partitions on while it sleeps.
    let stop_at = between(&mut rng, 8.0..14.0);
    let wake_at = stop_at + between(&mut rng, 8.0..10.0);
    let bounce_at = between(&mut rng, 28.0..34.0);
    let down_for = between(&mut rng, 2.0..4.0);
    let mut next_kill = between(&mut rng, 10.0..30.0);
    let (mut kills, mut stopped, mut woken, mut bounced) = (0, false, false, false);
    // The broker, but for its bounce, which runs on a thread of its own: a restart takes a
    // while, and the processes are watched and killed meanwhile.
    let mut kafka = Some(kafka);
    let mut bounce = Bounce(None);
    loop {
        fleet.check_running();
        let now = started.elapsed();
        if !stopped && now >= stop_at {
            let pid = zombie.stop_with_writes_in_flight(&mut fleet);
            say(&format!(
                "SIGSTOP serve {} (pid {pid}) with its writes held on their way",
                zombie.n
            ));
            stopped = true;
        }
        if stopped && !woken && now >= wake_at {
            assert!(
                now < wake_at + Duration::from_secs(90),
                "the group's committed offsets did not pass the ends of {:?} at the zombie's \
                 stop within 90 s",
                zombie.ends_at_stop
            );
            if zombie.group_moved_on() {
                let (pid, refused) = zombie.wake(&mut fleet);
                say(&format!(
                    "SIGCONT serve {} (pid {pid}), a zombie now: {refused} of its late writes \
                     refused",
                    zombie.n
                ));
                woken = true;
            }
        }
        // Once the zombie is awake: its wake reads the committed offsets from the broker.
        if now >= bounce_at && !bounced && woken {
            let mut broker = kafka.take().expect("the broker, before its bounce");
            bounce.0 = Some(std::thread::spawn(move || {
                broker.kill();
                say("broker killed");
                std::thread::sleep(down_for);
                broker.restart();
                say("broker restarted");
                broker
            }));
            bounced = true;
        }
        if bounce.0.as_ref().is_some_and(|thread| thread.is_finished()) {
            kafka = bounce.0.take().map(|thread| {
                thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            });
        }
        if now >= next_kill {
            // Not the sleeping zombie: a kill would end the zombie's story.
            let candidates: Vec<usize> = (0..PROCESSES)
                .filter(|&n| !(n == zombie.n && stopped && !woken))
                .collect();
            let target = candidates[rng.random_range(0..candidates.len())];
            let (killed, restarted) = fleet.kill_and_restart(target);
            kills += 1;
            say(&format!(
                "SIGKILL serve {target} (pid {killed}), restarted as pid {restarted}"
            ));
            next_kill = started.elapsed() + between(&mut rng, 10.0..30.0);
        }
        let back = bounced && kafka.is_some();
        if produced.load(Ordering::Acquire) && kills >= 2 && woken && back {
            return (fleet, kafka.expect("the broker, back"), zombie);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
