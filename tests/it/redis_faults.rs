//! T4: Redis failing under `converge serve` — an outage and a restart with the script cache
//! empty, replies delayed past `store.timeout_ms` (the write landed, its answer was lost),
//! connections reset mid-pipeline, and an outage longer than `max.poll.interval.ms`. The process
//! waits each out with backoff — it neither exits nor skips a batch nor leaves its consumer
//! group — and every key ends on its final state, with the group's committed offsets at the end
//! of every partition and nothing dead-lettered. A watcher reading Redis directly meanwhile never
//! sees a key move backward.
//!
//! The faults other than the plain kill are injected by a [`FaultProxy`] between `serve` and a
//! private Redis: `serve` knows only the proxy's address.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use converge::config::{AdminConfig, FleetConfig, RedisStoreConfig, SourceConfig, StoreConfig};
use converge::entity::Event;
use converge::store::{RedisStore, Store, Write, WriteOutcome};
use converge_tests::fault_proxy::{FaultProxy, Outage};
use converge_tests::kafka::TestTopic;
use converge_tests::orders::OrderStream;
use converge_tests::process::{Converge, Server};
use converge_tests::prometheus::{Exposition, scrape};
use converge_tests::services::{
    PrivateRedis, TestStore, free_loopback_addr, redis_url, unique_prefix,
};
use converge_tests::watch::Watcher;
use converge_tests::{Convergence, config, orders, stored_states};
use tempfile::TempDir;

async fn connect(redis: &PrivateRedis, prefix: &str) -> RedisStore {
    RedisStore::connect(&redis.url(), prefix)
        .await
        .expect("the private Redis answers")
}

/// Redis is killed while `serve` is writing and started again a few seconds later, with its
/// script cache empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t4_redis_outage_is_waited_out_and_nothing_is_lost() {
    let mut redis = PrivateRedis::start();
    let prefix = unique_prefix("t4");
    let topic = TestTopic::create("t4", 3).await;
    let dead_letters = TestTopic::create("t4-dlq", 1).await;
    let group = format!("{}-group", topic.name);
    let mut dir = tempfile::tempdir().expect("temp dir");
    let admin = free_loopback_addr();
    // A short store timeout: calls to the dead server fail fast and are retried.
    let store = StoreConfig::Redis(RedisStoreConfig {
        url: redis.url(),
        common: converge::config::RedisStoreCommon {
            prefix: prefix.clone(),
            timeout_ms: 500,
            wait_replicas: 0,
            wait_timeout_ms: converge::config::DEFAULT_WAIT_TIMEOUT_MS,
        },
    });
    let mut settings = config::kafka_serve(&topic.name, &dead_letters.name, &group, store);
    settings.pipeline.backoff_ms = 20;
    settings.pipeline.max_backoff_ms = 400;
    settings.admin = Some(AdminConfig {
        listen: admin,
        ..AdminConfig::default()
    });
    let config = config::write(dir.path(), &settings);

    let stream = orders::generate("order-", 800, 30, 44);
    let keys: Vec<String> = stream.expected.keys().cloned().collect();
    let (first_half, second_half) = stream.events.split_at(stream.events.len() / 2);
    topic.produce(first_half).await;
    let mut server = Server::start(&config, &dir.path().join("serve.log"));

    let reader = connect(&redis, &prefix).await;
    let started = Instant::now();
    while stored_states(&reader, &keys).await.len() < 50 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no progress; see {}",
            dir.keep().display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis.kill();
    topic.produce(second_half).await;
    // Down for a while: long enough for several failed batches and backoffs.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        server.exited().is_none(),
        "converge exited during the outage; see {}",
        dir.keep().display()
    );
    redis.restart();

    // Redis may still be loading its append-only file: the wait takes a failed load as not
    // converged yet.
    let reader = connect(&redis, &prefix).await;
    Convergence::new(&reader, &stream.expected)
        .logs(&mut dir)
        .wait_with_offsets(async || topic.progress(&group))
        .await;

    let metrics = scrape(admin).await.expect("admin answers");
    // Absent until the first failed call: absent is "not counted".
    let failed_calls = metrics
        .try_sum("converge_unavailable_total", &[])
        .unwrap_or(0.0);
    assert!(failed_calls > 0.0, "the outage was not counted:\n{metrics}");
    server.terminate();
    // Nothing may have been dead-lettered.
    dead_letters.assert_empty().await;
}

fn address(redis: &PrivateRedis) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], redis.port))
}

/// Waits up to 10 s for `holds`: the proxy applies a fault on its own tasks.
async fn eventually(what: &str, mut holds: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !holds() {
        assert!(Instant::now() < deadline, "{what} did not happen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The proxy itself, in front of a real Redis: each fault does to a client what it says, and is
/// counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t4_fault_proxy_delays_cuts_resets_and_fails_on_command() {
    use redis::AsyncCommands as _;

    let mut redis = PrivateRedis::start();
    let proxy = FaultProxy::start(address(&redis)).await;
    let mut direct = redis::Client::open(redis.url())
        .expect("a Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("the private Redis answers");
    let through = redis::Client::open(proxy.redis_url()).expect("a Redis URL");
    let quick = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(200)));
    let connect = async || {
        through
            .get_multiplexed_async_connection_with_config(&quick)
            .await
    };
    let key = format!("fault-proxy-{:016x}", rand::random::<u64>());
    let stored = async |direct: &mut redis::aio::MultiplexedConnection| -> u64 {
        direct.get(&key).await.expect("a direct read")
    };

    let mut client = connect().await.expect("through the proxy");
    let () = client.set(&key, 1).await.expect("a plain write");
    assert_eq!(client.get::<_, u64>(&key).await.expect("a plain read"), 1);

    // A reply held past the client's timeout: the write landed, its answer was lost.
    proxy.delay_replies(1.0, Duration::from_millis(600));
    let error = client
        .set::<_, _, ()>(&key, 2)
        .await
        .expect_err("the reply comes after the timeout");
    assert!(error.is_timeout(), "{error}");
    proxy.delay_replies(0.0, Duration::ZERO);
    assert_eq!(stored(&mut direct).await, 2);
    eventually("a delayed reply", || proxy.stats().replies_delayed == 1).await;

    // A reply cut in half and reset: landed, answer lost.
    let mut client = connect().await.expect("through the proxy");
    proxy.cut_replies(1.0);
    client
        .set::<_, _, ()>(&key, 3)
        .await
        .expect_err("the reply was cut");
    proxy.cut_replies(0.0);
    assert_eq!(stored(&mut direct).await, 3);
    assert_eq!(proxy.stats().replies_cut, 1);

    // Every open connection reset.
    let mut client = connect().await.expect("through the proxy");
    let () = client.set(&key, 4).await.expect("a plain write");
    let before = proxy.stats().reset;
    proxy.reset_all();
    eventually("a reset", || proxy.stats().reset > before).await;
    client
        .get::<_, u64>(&key)
        .await
        .expect_err("the connection was reset");

    // A refusing outage: open connections reset, new ones refused.
    let mut client = connect().await.expect("through the proxy");
    let () = client.set(&key, 5).await.expect("a plain write");
    let before = proxy.stats();
    proxy.outage(Outage::Refuse);
    eventually("a reset by the outage", || {
        proxy.stats().reset > before.reset
    })
    .await;
    client
        .get::<_, u64>(&key)
        .await
        .expect_err("the connection was reset");
    connect().await.expect_err("refused during the outage");
    assert!(proxy.stats().refused > before.refused);
    proxy.restore();

    // A black hole: nothing answers, on open connections or new ones, until it ends.
    let mut client = connect().await.expect("through the proxy after the outage");
    let before = proxy.stats().black_holed;
    proxy.outage(Outage::BlackHole);
    let error = client
        .set::<_, _, ()>(&key, 6)
        .await
        .expect_err("black-holed");
    assert!(error.is_timeout(), "{error}");
    connect()
        .await
        .expect_err("a new connection is not answered");
    assert!(proxy.stats().black_holed >= before + 2);
    // Held, not dropped: the write goes through when the partition heals.
    assert_eq!(stored(&mut direct).await, 5);
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(10);
    while stored(&mut direct).await != 6 {
        assert!(Instant::now() < deadline, "the held write never landed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut client = connect().await.expect("through the proxy after the outage");
    assert_eq!(client.get::<_, u64>(&key).await.expect("a plain read"), 6);

    // The upstream down: connections are reset at once.
    let before = proxy.stats().upstream_refused;
    redis.kill();
    connect().await.expect_err("no upstream");
    assert!(proxy.stats().upstream_refused > before);
    eprintln!("fault proxy: {:?}", proxy.stats());
}

/// What a proxied run changes from the common setting.
struct Setup {
    test: &'static str,
    orders: usize,
    seed: u64,
    /// `store.timeout_ms`.
    timeout_ms: u64,
    /// librdkafka properties beside the tests' own.
    properties: &'static [(&'static str, &'static str)],
}

/// `converge serve` over a 3-partition topic into a private Redis that it reaches only through
/// a [`FaultProxy`]. When [`Proxied::start`] returns, a third of the stream is produced and
/// being written, and a watcher samples every key, from Redis directly, every 50 ms.
struct Proxied {
    test: &'static str,
    redis: PrivateRedis,
    proxy: FaultProxy,
    topic: TestTopic,
    dead_letters: TestTopic,
    group: String,
    dir: TempDir,
    admin: SocketAddr,
    server: Server,
    stream: OrderStream,
    /// The events not produced yet.
    rest: Vec<Event>,
    /// Redis itself, not through the proxy: what is really stored.
    direct: RedisStore,
    watcher: Watcher,
    started: Instant,
    /// `serve`'s configuration, for a second member of the same group.
    settings: converge::config::Config,
}

impl Proxied {
    async fn start(setup: Setup) -> Self {
        // Built before the clock starts: the run's time is the faults', not the build's.
        converge_tests::build::converge_binary();
        let started = Instant::now();
        let redis = PrivateRedis::start();
        let proxy = FaultProxy::start(address(&redis)).await;
        let prefix = unique_prefix(setup.test);
        let topic = TestTopic::create(setup.test, 3).await;
        let dead_letters = TestTopic::create(&format!("{}-dlq", setup.test), 1).await;
        let group = format!("{}-group", topic.name);
        let dir = tempfile::tempdir().expect("temp dir");
        let admin = free_loopback_addr();
        let store = StoreConfig::Redis(RedisStoreConfig {
            url: proxy.redis_url(),
            common: converge::config::RedisStoreCommon {
                prefix: prefix.clone(),
                timeout_ms: setup.timeout_ms,
                wait_replicas: 0,
                wait_timeout_ms: converge::config::DEFAULT_WAIT_TIMEOUT_MS,
            },
        });
        let mut settings = config::kafka_serve(&topic.name, &dead_letters.name, &group, store);
        settings.pipeline.backoff_ms = 20;
        settings.pipeline.max_backoff_ms = 400;
        settings.admin = Some(AdminConfig {
            listen: admin,
            ..AdminConfig::default()
        });
        let SourceConfig::Kafka(kafka) = &mut settings.source else {
            unreachable!("kafka_serve reads Kafka")
        };
        kafka.properties.extend(
            setup
                .properties
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned())),
        );
        let config = config::write(dir.path(), &settings);

        let stream = orders::generate("order-", setup.orders, 30, setup.seed);
        let keys: Vec<String> = stream.expected.keys().cloned().collect();
        let (first, rest) = stream.events.split_at(stream.events.len() / 3);
        topic.produce(first).await;
        let direct = connect(&redis, &prefix).await;
        let watcher = Watcher::start(direct.clone(), keys.clone(), Duration::from_millis(50));
        let server = Server::start(&config, &dir.path().join("serve.log"));
        let run = Self {
            test: setup.test,
            rest: rest.to_vec(),
            redis,
            proxy,
            topic,
            dead_letters,
            group,
            dir,
            admin,
            server,
            stream,
            direct,
            watcher,
            started,
            settings,
        };
        // Faults must strike a pipeline that is writing, not one still starting.
        let deadline = Instant::now() + Duration::from_secs(60);
        while stored_states(&run.direct, &keys).await.len() < 50 {
            assert!(
                Instant::now() < deadline,
                "no progress; see {}",
                run.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        run
    }

    /// The events not produced yet (once).
    /// `converge_rebalances_total` as `serve` reports it now.
    async fn rebalances(&self) -> f64 {
        scrape(self.admin)
            .await
            .expect("admin answers")
            .value("converge_rebalances_total")
    }

    /// A second `serve` in the same group, with an admin endpoint of its own, that reaches
    /// Redis directly (the proxy's faults are the first member's alone); its log is
    /// `serve-2.log` beside the first's.
    fn start_second(&self) -> Server {
        let mut settings = self.settings.clone();
        if let Some(admin) = &mut settings.admin {
            admin.listen = free_loopback_addr();
        }
        if let StoreConfig::Redis(store) = &mut settings.store {
            store.url = self.redis.url();
        }
        let dir = self.dir.path().join("second");
        std::fs::create_dir_all(&dir).expect("second's dir");
        let config = config::write(&dir, &settings);
        Server::start(&config, &self.dir.path().join("serve-2.log"))
    }

    fn take_rest(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.rest)
    }

    /// Panics, keeping the logs, if `serve` has exited or left its consumer group.
    fn assert_serving(&mut self, when: &str) {
        assert_serving(&mut self.server, &mut self.dir, when);
    }

    /// With every fault healed: every key on its final state and every offset committed to
    /// the end, no key ever seen moving backward, `serve` running and still in its group,
    /// nothing dead-lettered. Answers `/metrics` as it was before `serve` stopped.
    async fn finish(self) -> Exposition {
        self.proxy.heal();
        let Self {
            test,
            redis,
            proxy,
            topic,
            dead_letters,
            group,
            mut dir,
            admin,
            mut server,
            stream,
            direct,
            watcher,
            started,
            ..
        } = self;
        assert_serving(&mut server, &mut dir, "once the faults were healed");
        let log = dir.path().join("serve.log");
        let waited = {
            let converging = Convergence::new(&direct, &stream.expected)
                .logs(&mut dir)
                .wait_with_offsets(async || topic.progress(&group));
            // A member dropped from its group exits on its next poll, and would never converge:
            // say so at once rather than after the whole wait.
            let failing = async {
                while server.exited().is_none() && ejection(&log).is_none() {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            };
            tokio::select! {
                _ = converging => true,
                () = failing => false,
            }
        };
        assert_serving(&mut server, &mut dir, "while converging");
        assert!(waited, "serve failed while converging");
        let converged = started.elapsed();
        let samples = watcher.finish().await;
        assert!(samples > 20, "the watcher barely ran: {samples} samples");

        let metrics = scrape(admin).await.expect("admin answers");
        server.terminate();
        dead_letters.assert_empty().await;
        eprintln!(
            "{test}: converged {converged:?} after the start; {samples} watcher samples; \
             store failures seen by serve {:?}; proxy {:?}",
            store_failures(&metrics, None),
            proxy.stats()
        );
        drop(redis);
        metrics
    }
}

/// The line of `serve`'s log saying it was dropped from its consumer group, if any.
///
/// librdkafka's words when a member does not poll in time: "MAXPOLL … Application maximum poll
/// interval (7000ms) exceeded by …: leaving group", then the error PollExceeded on the next poll
/// (on which `serve` exits). Either means the group rebalanced under it.
fn ejection(log: &std::path::Path) -> Option<String> {
    let log = std::fs::read_to_string(log).expect("serve's log");
    log.lines()
        .find(|line| {
            let line = line.to_ascii_lowercase();
            ["maximum poll interval", "pollexceeded", "max_poll_exceeded"]
                .iter()
                .any(|needle| line.contains(needle))
        })
        .map(without_colours)
}

/// A log line without its terminal colour codes (`ESC [ … m`).
fn without_colours(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(start) = rest.find('\x1b') {
        plain.push_str(&rest[..start]);
        rest = &rest[start..];
        rest = rest.find('m').map_or("", |end| &rest[end + 1..]);
    }
    plain.push_str(rest);
    plain
}

/// Panics, keeping the logs, if `serve` has exited or its log says it left its consumer group.
fn assert_serving(server: &mut Server, dir: &mut TempDir, when: &str) {
    let ejected = ejection(&dir.path().join("serve.log"));
    if let Some(line) = ejected {
        dir.disable_cleanup(true);
        panic!(
            "{when}: serve left its consumer group: {line}\nlogs in {}",
            dir.path().display()
        );
    }
    if let Some(exit) = server.exited() {
        dir.disable_cleanup(true);
        panic!(
            "{when}: serve exited ({exit}); logs in {}",
            dir.path().display()
        );
    }
}

/// Failed store calls `serve` counted (`converge_unavailable_total{service="store",…}`), of
/// every operation or of `operation` only; absent until the first one fails.
fn store_failures(metrics: &Exposition, operation: Option<&str>) -> Option<f64> {
    match operation {
        Some(operation) => metrics.try_sum(
            "converge_unavailable_total",
            &[("service", "store"), ("operation", operation)],
        ),
        None => metrics.try_sum("converge_unavailable_total", &[("service", "store")]),
    }
}

/// Produces `events` in eight slices spread over `over`, so that they arrive while faults
/// strike rather than in one burst before or after.
async fn produce_spread(topic: &TestTopic, events: &[Event], over: Duration) {
    const SLICES: usize = 8;
    for slice in events.chunks(events.len().div_ceil(SLICES).max(1)) {
        topic.produce(slice).await;
        tokio::time::sleep(over / SLICES as u32).await;
    }
}

/// Replies delayed beyond `store.timeout_ms` on a quarter of the reply chunks: the write landed,
/// its answer was lost, and `serve` must redo it from a fresh load, which sees it landed. A
/// restart under the delays empties the script cache, so NOSCRIPT answers come late too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t4_replies_delayed_past_the_store_timeout_lose_no_write() {
    let mut run = Proxied::start(Setup {
        test: "t4-delay",
        orders: 1_500,
        seed: 41,
        timeout_ms: 300,
        properties: &[],
    })
    .await;
    let rest = run.take_rest();
    let (before_restart, after_restart) = rest.split_at(rest.len() / 2);
    // Over twice the timeout: the answer comes after the client gave up on it.
    run.proxy.delay_replies(0.25, Duration::from_millis(700));
    produce_spread(&run.topic, before_restart, Duration::from_secs(3)).await;
    run.redis.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    run.redis.restart();
    produce_spread(&run.topic, after_restart, Duration::from_secs(3)).await;
    run.assert_serving("under delayed replies");
    let stats = run.proxy.stats();
    assert!(
        stats.replies_delayed >= 10,
        "too few replies were delayed: {stats:?}"
    );
    let metrics = run.finish().await;
    let lost_answers = store_failures(&metrics, Some("write")).unwrap_or(0.0);
    eprintln!("t4-delay: {lost_answers} write calls failed");
    assert!(
        lost_answers > 0.0,
        "no write's answer was lost to the timeout:\n{metrics}"
    );
}

/// Resets every connection every 100–300 ms until `until`.
async fn reset_repeatedly(proxy: &FaultProxy, until: Instant) {
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rand::random_range(100..300))).await;
        proxy.reset_all();
    }
}

/// Every connection reset (RST) every 100–300 ms while batches are in flight, and a tenth of the
/// reply chunks cut in half and reset — a pipeline's answers lost part way — with a restart
/// in the middle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t4_connections_reset_mid_pipeline_lose_nothing() {
    let mut run = Proxied::start(Setup {
        test: "t4-reset",
        orders: 1_500,
        seed: 42,
        timeout_ms: 500,
        properties: &[],
    })
    .await;
    let rest = run.take_rest();
    let (before_restart, after_restart) = rest.split_at(rest.len() / 2);
    run.proxy.cut_replies(0.1);
    let window = Duration::from_secs(3);
    tokio::join!(
        produce_spread(&run.topic, before_restart, window),
        reset_repeatedly(&run.proxy, Instant::now() + window),
    );
    run.redis.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    run.redis.restart();
    tokio::join!(
        produce_spread(&run.topic, after_restart, window),
        reset_repeatedly(&run.proxy, Instant::now() + window),
    );
    run.assert_serving("under resets");
    let stats = run.proxy.stats();
    assert!(
        stats.reset >= 5,
        "too few connections were reset: {stats:?}"
    );
    assert!(
        stats.replies_cut >= 3,
        "too few replies were cut: {stats:?}"
    );
    let metrics = run.finish().await;
    assert!(
        store_failures(&metrics, None).is_some_and(|failures| failures > 0.0),
        "serve never saw the store fail:\n{metrics}"
    );
}

/// The store unreachable for about 15 s, twice `max.poll.interval.ms` (7 s): first a black hole
/// (calls time out), then Redis dies behind it and connections are refused, then it comes back
/// with its script cache empty. Batches wait out the outage in the write window; the consumer
/// must keep polling meanwhile, so that it stays in its group (no rebalance) and `serve` keeps
/// running, and then converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t4_outage_past_max_poll_interval_keeps_the_group_and_converges() {
    let mut run = Proxied::start(Setup {
        test: "t4-poll",
        orders: 1_000,
        seed: 43,
        timeout_ms: 500,
        // librdkafka requires it at least session.timeout.ms (6 s in the tests' source).
        properties: &[("max.poll.interval.ms", "7000")],
    })
    .await;
    let rest = run.take_rest();
    let rebalances = run.rebalances().await;
    assert!(rebalances > 0.0, "serve has not joined its group yet");
    run.proxy.outage(Outage::BlackHole);
    // The rest arrives during the outage: batches of it fill the write window and wait.
    run.topic.produce(&rest).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    run.assert_serving("seven seconds into the outage");
    run.redis.kill();
    run.proxy.outage(Outage::Refuse);
    // Refused for longer than max.poll.interval.ms by itself as well: a member that stopped
    // polling is caught however the switch from timeouts to refusals affects it.
    tokio::time::sleep(Duration::from_secs(6)).await;
    run.redis.restart();
    tokio::time::sleep(Duration::from_secs(2)).await;
    run.assert_serving("past max.poll.interval.ms");
    run.proxy.restore();
    let stats = run.proxy.stats();
    assert!(
        stats.black_holed > 0 && stats.refused + stats.reset > 0,
        "the outage met no traffic: {stats:?}"
    );
    let metrics = run.finish().await;
    assert_eq!(
        metrics.value("converge_rebalances_total"),
        rebalances,
        "the member went through a rebalance during the outage:\n{metrics}"
    );
    assert!(
        store_failures(&metrics, None).is_some_and(|failures| failures > 0.0),
        "serve never saw the store fail:\n{metrics}"
    );
}

/// Issue 24, item 4: a rebalance during an outage hold. While the store is out of the first
/// member's reach it holds (pauses its partitions, polls on); a second member (which reaches
/// Redis) joins then, and takes some of them; after the outage it leaves, and they come back. librdkafka keeps a partition's pause
/// across a revoke and a later assignment, so a member that forgot what it had paused left the
/// returning partitions paused for good, and one that did not pause partitions assigned during
/// the hold fetched them into memory. Every key must converge with the offsets at the end of
/// every partition, and the first member's memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wedge_a_rebalance_during_an_outage_hold_leaves_no_partition_paused() {
    let mut run = Proxied::start(Setup {
        test: "wedge-hold",
        orders: 3_000,
        seed: 47,
        timeout_ms: 500,
        properties: &[],
    })
    .await;
    let rest = run.take_rest();
    let (during, after) = rest.split_at(rest.len() / 2);
    let joined = run.rebalances().await;
    assert!(joined > 0.0, "serve has not joined its group yet");
    run.proxy.outage(Outage::Refuse);
    run.topic.produce(during).await;
    // Past the pipeline's second of patience: the first member holds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut second = run.start_second();
    // The group gives the newcomer some of the held partitions.
    let deadline = Instant::now() + Duration::from_secs(60);
    while run.rebalances().await <= joined {
        assert!(
            Instant::now() < deadline,
            "the second member never took a partition"
        );
        assert!(second.exited().is_none(), "the second member exited");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    run.assert_serving("with the second member in the group, during the outage");
    let moved = run.rebalances().await;
    run.proxy.restore();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The second member leaves: its partitions go back to the first.
    second.terminate();
    let deadline = Instant::now() + Duration::from_secs(60);
    while run.rebalances().await <= moved {
        assert!(
            Instant::now() < deadline,
            "the partitions never came back to the first member"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Events for every partition, the returned ones included, after they returned.
    run.topic.produce(after).await;
    let peak = run.server.memory_bytes("VmHWM") >> 20;
    run.finish().await;
    eprintln!("wedge-hold: the first member's peak RSS {peak} MiB");
    assert!(peak < 512, "the first member's peak RSS grew to {peak} MiB");
}

/// Issue 24, item 8: a batch of large states went to Redis as one pipeline, whatever its
/// size; on a link where that pipeline outlasts `store.timeout_ms`, every attempt timed out
/// and the partition waited forever. Writes now go in pipelines of at most a few MiB, and a
/// load that timed out is retried in smaller ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wedge_large_states_are_written_and_loaded_within_the_store_timeout() {
    let redis = PrivateRedis::start();
    let proxy = FaultProxy::start(address(&redis)).await;
    let prefix = unique_prefix("wedge-large");
    let timeout = Duration::from_secs(1);
    // 32 states of 1 MiB take 1.6 s through the link; 4 MiB of them, 0.2 s.
    proxy.throttle(20 << 20);
    let payload = format!("\"{}\"", "x".repeat(1 << 20));
    let writes: Vec<Write> = (0..32)
        .map(|n| Write {
            key: format!("large-{n}"),
            expected_revision: 0,
            expected_writer: 0,
            writer: converge::store::new_writer_id(),
            state: Event {
                key: format!("large-{n}"),
                status: "created".to_owned(),
                version: 1,
                timestamp_ms: 0,
                payload: payload.clone(),
            },
            rule: "test@1".to_owned(),
            position: format!("line {n}"),
        })
        .collect();
    let store = RedisStore::connect_with_timeout(&proxy.redis_url(), &prefix, timeout)
        .await
        .expect("connects through the proxy");
    let outcomes = store
        .write(&writes)
        .await
        .expect("the writes fit the timeout");
    assert!(
        outcomes
            .iter()
            .all(|outcome| matches!(outcome, WriteOutcome::Written { revision: 1 })),
        "{outcomes:?}"
    );

    // A store that has seen no state yet: its first load may time out, the retries must not.
    let keys: Vec<String> = writes.iter().map(|write| write.key.clone()).collect();
    let fresh = RedisStore::connect_with_timeout(&proxy.redis_url(), &prefix, timeout)
        .await
        .expect("connects through the proxy");
    let mut failures = Vec::new();
    let loaded = loop {
        match fresh.load(&keys).await {
            Ok(loaded) => break loaded,
            Err(error) => {
                assert!(error.is_transient(), "{error}");
                failures.push(error.to_string());
                assert!(
                    failures.len() < 12,
                    "the load never fits the timeout: {failures:?}"
                );
            }
        }
    };
    assert!(
        loaded
            .iter()
            .all(|current| current.as_ref().is_some_and(|c| c.state.payload == payload)),
        "every state loads whole"
    );
    eprintln!(
        "wedge-large: the load timed out {} times first",
        failures.len()
    );
}

/// Issue 24, item 12: `serve` started while its store is unreachable exited at once, which a
/// supervisor turns into a crash loop. It now waits for the store, then converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wedge_serve_started_while_the_store_is_down_waits_for_it() {
    converge_tests::build::converge_binary();
    let redis = PrivateRedis::start();
    let proxy = FaultProxy::start(address(&redis)).await;
    proxy.outage(Outage::Refuse);
    let prefix = unique_prefix("wedge-start");
    let topic = TestTopic::create("wedge-start", 2).await;
    let dead_letters = TestTopic::create("wedge-start-dlq", 1).await;
    let group = format!("{}-group", topic.name);
    let store = StoreConfig::Redis(RedisStoreConfig {
        url: proxy.redis_url(),
        common: converge::config::RedisStoreCommon {
            prefix: prefix.clone(),
            timeout_ms: 500,
            wait_replicas: 0,
            wait_timeout_ms: converge::config::DEFAULT_WAIT_TIMEOUT_MS,
        },
    });
    let mut settings = config::kafka_serve(&topic.name, &dead_letters.name, &group, store);
    settings.pipeline.backoff_ms = 20;
    settings.pipeline.max_backoff_ms = 400;
    let mut dir = tempfile::tempdir().expect("temp dir");
    let stream = orders::generate("order-", 200, 30, 53);
    topic.produce(&stream.events).await;
    let mut server = Server::start(
        &config::write(dir.path(), &settings),
        &dir.path().join("serve.log"),
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_serving(
        &mut server,
        &mut dir,
        "four seconds into an outage that began first",
    );
    assert!(proxy.stats().refused > 0, "serve never tried the store");
    proxy.restore();
    let direct = connect(&redis, &prefix).await;
    Convergence::new(&direct, &stream.expected)
        .logs(&mut dir)
        .wait_with_offsets(async || topic.progress(&group))
        .await;
    server.terminate();
    dead_letters.assert_empty().await;
}

/// Issue 24, item 12, the fleet's Redis: a `serve` of a fleet whose Redis is unreachable at
/// start exited at once. It now waits for it (`unavailable{service="fleet",operation="start"}`),
/// consuming nothing meanwhile, then converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wedge_serve_started_while_the_fleet_redis_is_down_waits_for_it() {
    converge_tests::build::converge_binary();
    let fleet_redis = PrivateRedis::start();
    let proxy = FaultProxy::start(address(&fleet_redis)).await;
    proxy.outage(Outage::Refuse);
    let store = TestStore::standalone("wedge-start-fleet").await;
    let topic = TestTopic::create("wedge-start-fleet", 2).await;
    let dead_letters = TestTopic::create("wedge-start-fleet-dlq", 1).await;
    let group = format!("{}-group", topic.name);
    let mut settings = config::kafka_serve(
        &topic.name,
        &dead_letters.name,
        &group,
        config::redis_store(&redis_url(), store.store.prefix()),
    );
    settings.pipeline.backoff_ms = 20;
    settings.pipeline.max_backoff_ms = 400;
    settings.rule.fleet = Some(FleetConfig {
        redis: proxy.redis_url(),
        name: unique_prefix("wedge-start-fleet"),
        instance: None,
        allow_unsigned: true,
    });
    let mut dir = tempfile::tempdir().expect("temp dir");
    let stream = orders::generate("order-", 200, 30, 59);
    let keys: Vec<String> = stream.expected.keys().cloned().collect();
    topic.produce(&stream.events).await;
    let log = dir.path().join("serve.log");
    let mut server = Server::start(&config::write(dir.path(), &settings), &log);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_serving(
        &mut server,
        &mut dir,
        "four seconds into a fleet outage that began first",
    );
    assert!(proxy.stats().refused > 0, "serve never tried the fleet");
    let logged = std::fs::read_to_string(&log).expect("serve's log");
    assert!(
        logged.contains("unavailable; retrying") && logged.contains("fleet"),
        "the wait is logged, naming the fleet:\n{logged}"
    );
    assert!(
        stored_states(&store.store, &keys).await.is_empty(),
        "nothing is consumed before the fleet answers"
    );
    proxy.restore();
    Convergence::new(&store.store, &stream.expected)
        .logs(&mut dir)
        .wait_with_offsets(async || topic.progress(&group))
        .await;
    server.terminate();
    dead_letters.assert_empty().await;
}

/// Issue 24, item 8: a store whose Redis may evict keys loses state silently (an evicted key's
/// history starts over), so `serve` names the setting at start; a `noeviction` store is not
/// warned about.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wedge_a_store_that_may_evict_keys_is_warned_about_at_start() {
    converge_tests::build::converge_binary();
    let redis = PrivateRedis::start();
    let topic = TestTopic::create("wedge-evict", 1).await;
    let dead_letters = TestTopic::create("wedge-evict-dlq", 1).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let client = redis::Client::open(redis.url()).expect("URL");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("the private Redis answers");
    let mut logged_with = async |policy: &str| {
        let _: () = redis::cmd("CONFIG")
            .arg(&["SET", "maxmemory-policy", policy])
            .query_async(&mut connection)
            .await
            .expect("policy set");
        let prefix = unique_prefix("wedge-evict");
        let settings = config::kafka_serve(
            &topic.name,
            &dead_letters.name,
            &format!("{}-{policy}", topic.name),
            config::redis_store(&redis.url(), &prefix),
        );
        let path = dir.path().join(format!("{policy}.toml"));
        std::fs::write(&path, toml::to_string(&settings).expect("TOML")).expect("written");
        let output = Converge::new(&["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .within(Duration::from_secs(60))
            .output_once_logged("serving");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let evicting = logged_with("allkeys-lru").await;
    assert!(
        evicting.contains("maxmemory-policy is not noeviction"),
        "{evicting}"
    );
    let kept = logged_with("noeviction").await;
    assert!(!kept.contains("maxmemory-policy"), "{kept}");
}
