//! One test's own `converge serve` over Kafka into Redis: its topic, dead-letter topic, Redis
//! prefix, consumer group, log directory and configuration, set up the one way every such test
//! sets them up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use converge::config::{AdminConfig, Config, SourceConfig, StoreConfig};
use converge::entity::Event;
use converge::store::Store as _;
use tempfile::TempDir;

use crate::config;
use crate::convergence::Convergence;
use crate::kafka::TestTopic;
use crate::process::Server;
use crate::services::{TestStore, free_loopback_addr};

/// A `serve` setup: change [`Served::settings`] as the test needs, then [`Served::start`].
#[derive(Debug)]
pub struct Served {
    /// Shared, so that a task of the test can produce to it while the test waits.
    pub topic: Arc<TestTopic>,
    pub dead_letters: TestTopic,
    pub redis: TestStore,
    pub group: String,
    /// The configuration and every process's log; kept when a wait fails.
    pub dir: TempDir,
    /// [`config::kafka_serve`] for these: the order-status rule, batches of 64.
    pub settings: Config,
}

impl Served {
    /// Topics named after `test` on the tests' Kafka (`partitions` for the events, one for the
    /// dead letters), and keys under a prefix of its own in the standalone Redis.
    pub async fn new(test: &str, partitions: i32) -> Self {
        let topic = TestTopic::create(test, partitions).await;
        let dead_letters = TestTopic::create(&format!("{test}-dlq"), 1).await;
        Self::on(topic, dead_letters, test).await
    }

    /// The same over topics the test created (on a Kafka of its own, replicated, …): `serve`
    /// reads from, and dead-letters to, the brokers `topic` lives on.
    pub async fn on(topic: TestTopic, dead_letters: TestTopic, test: &str) -> Self {
        let redis = TestStore::standalone(test).await;
        let store = config::standalone_store(redis.store.prefix());
        Self::assemble(topic, dead_letters, redis, store)
    }

    /// Like [`Served::new`], with the keys on the tests' Redis Cluster.
    pub async fn on_cluster(test: &str, partitions: i32) -> Self {
        let topic = TestTopic::create(test, partitions).await;
        let dead_letters = TestTopic::create(&format!("{test}-dlq"), 1).await;
        let redis = TestStore::cluster(test).await;
        let store = config::cluster_store(redis.store.prefix());
        Self::assemble(topic, dead_letters, redis, store)
    }

    fn assemble(
        topic: TestTopic,
        dead_letters: TestTopic,
        redis: TestStore,
        store: StoreConfig,
    ) -> Self {
        let group = format!("{}-group", topic.name);
        let mut settings = config::kafka_serve(&topic.name, &dead_letters.name, &group, store);
        let SourceConfig::Kafka(source) = &mut settings.source else {
            unreachable!("kafka_serve reads from Kafka")
        };
        topic.brokers().clone_into(&mut source.brokers);
        Self {
            topic: Arc::new(topic),
            dead_letters,
            redis,
            group,
            dir: tempfile::tempdir().expect("temp dir"),
            settings,
        }
    }

    /// With an admin endpoint on a free loopback port (no token: health, readiness and
    /// metrics), where the test watches the process; see [`Served::admin`].
    pub fn with_admin(mut self) -> Self {
        self.settings.admin = Some(AdminConfig {
            listen: free_loopback_addr(),
            ..AdminConfig::default()
        });
        self
    }

    /// The admin endpoint's address.
    pub fn admin(&self) -> SocketAddr {
        self.settings
            .admin
            .as_ref()
            .expect("set up with_admin")
            .listen
    }

    /// The settings written as `converge.toml` in [`Served::dir`].
    pub fn config(&self) -> PathBuf {
        config::write(self.dir.path(), &self.settings)
    }

    /// The file `name` in [`Served::dir`], for a process's log.
    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `converge serve` on the settings, its log in `log` (a name in [`Served::dir`]).
    pub fn start(&self, log: &str) -> Server {
        Server::start(&self.config(), &self.log(log))
    }

    /// Waits (up to `within`) until every key of `expected` holds its state and the group's
    /// offsets are at the end of every partition; answers (committed, end) per partition.
    pub async fn converged(
        &mut self,
        expected: &BTreeMap<String, Event>,
        within: Duration,
    ) -> Vec<(i64, i64)> {
        let topic = &self.topic;
        let group = &self.group;
        Convergence::new(&self.redis.store, expected)
            .within(within)
            .logs(&mut self.dir)
            .wait_with_offsets(async || topic.progress(group))
            .await
    }

    /// Asserts that every key of `expected` the store holds was last written by the rule
    /// `stamp` (`name@version`).
    pub async fn assert_written_by(&self, expected: &BTreeMap<String, Event>, stamp: &str) {
        let keys: Vec<String> = expected.keys().cloned().collect();
        let stored = self.redis.store.inspect(&keys).await.expect("inspected");
        for stored in stored.iter().flatten() {
            assert_eq!(stored.rule, stamp, "{}", stored.state.key);
        }
    }
}

/// How many messages the partitions hold, from the positions [`Served::converged`] answers.
pub fn messages(positions: &[(i64, i64)]) -> usize {
    positions
        .iter()
        .map(|(_, end)| usize::try_from(*end).expect("an offset is not negative"))
        .sum()
}
