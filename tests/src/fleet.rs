//! A rule fleet of one test's own in the standalone Redis: the fleet client, its raw keys (what
//! an attacker who can write Redis changes), the `converge rule …` commands against it, and
//! `serve` configurations that join it. Its keys are deleted when it is dropped, passed or
//! failed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use converge::config::{AdminConfig, Config, FleetConfig};
use converge::redact::Secret;
use converge::rule::PublicKey;
use converge::swap::{Fleet, FleetStatus};
use redis::AsyncCommands as _;

use crate::process::Converge;
use crate::prometheus;
use crate::services::{RedisKeys, free_loopback_addr, redis_url};

/// A fleet named after its test, with a random suffix.
#[derive(Debug)]
pub struct TestFleet {
    pub fleet: Fleet,
    pub name: String,
    redis: redis::aio::MultiplexedConnection,
    _keys: RedisKeys,
}

impl TestFleet {
    pub async fn new(test: &str) -> Self {
        let name = format!("{test}-{:016x}", rand::random::<u64>());
        let fleet = Fleet::connect(&redis_url(), &name).await.expect("fleet");
        let redis = redis::Client::open(redis_url())
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("connection");
        Self {
            fleet,
            _keys: RedisKeys::of_fleet(&name),
            name,
            redis,
        }
    }

    /// A connection to the fleet's Redis, for what the helpers here do not do.
    pub fn redis(&self) -> redis::aio::MultiplexedConnection {
        self.redis.clone()
    }

    /// The fleet's Redis key `suffix` (`rule:active`, `rule:floor`, …).
    pub fn key(&self, suffix: &str) -> String {
        format!("converge:fleet:{{{}}}:{suffix}", self.name)
    }

    /// Writes key `suffix` directly, with no announcement.
    pub async fn set(&self, suffix: &str, value: impl redis::ToSingleRedisArg + Send + Sync) {
        let _: () = self
            .redis
            .clone()
            .set(self.key(suffix), value)
            .await
            .expect("written");
    }

    pub async fn get(&self, suffix: &str) -> Option<String> {
        self.redis
            .clone()
            .get(self.key(suffix))
            .await
            .expect("read")
    }

    pub async fn del(&self, suffix: &str) {
        let _: () = self
            .redis
            .clone()
            .del(self.key(suffix))
            .await
            .expect("deleted");
    }

    /// Writes `bytes` as the blob of `hash` (its own or not).
    pub async fn plant_blob(&self, hash: &str, bytes: &[u8]) {
        self.set(&format!("rule:blob:{hash}"), bytes).await;
    }

    /// Points the active rule at `value`, with no announcement.
    pub async fn point_at(&self, value: &str) {
        self.set("rule:active", value).await;
    }

    pub async fn active(&self) -> Option<String> {
        self.get("rule:active").await
    }

    /// Replaces the swap history with `entries`.
    pub async fn set_history(&self, entries: &[&str]) {
        let key = self.key("rule:history");
        let mut redis = self.redis.clone();
        let _: () = redis.del(&key).await.expect("deleted");
        let _: () = redis.rpush(&key, entries).await.expect("history");
    }

    pub async fn history(&self) -> Vec<String> {
        self.redis
            .clone()
            .lrange(self.key("rule:history"), 0, -1)
            .await
            .expect("history")
    }

    /// How many refusals the fleet keeps.
    pub async fn refused_count(&self) -> usize {
        self.redis
            .clone()
            .zcard(self.key("rule:refused"))
            .await
            .expect("refused")
    }

    /// The fleet's status as its client reads it.
    pub async fn status(&self) -> FleetStatus {
        self.fleet.status().await.expect("status")
    }

    /// Waits (up to 60 s) until `count` live instances satisfy `check`.
    pub async fn until(&self, what: &str, count: usize, check: impl Fn(&FleetStatus) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = self.status().await;
            if status.instances.len() == count && check(&status) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {status:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `converge ARGS --redis URL --fleet NAME`, to be run.
    pub fn command(&self, args: &[&str]) -> Converge {
        Converge::new(args).args(["--redis", &redis_url(), "--fleet", &self.name])
    }

    /// `converge ARGS --redis URL --fleet NAME`, run to its end.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command(args).output()
    }

    /// `converge ARGS --redis URL --fleet NAME --trusted-key KEY`, run to its end.
    pub fn cli_trusting(&self, args: &[&str], key: &PublicKey) -> Output {
        self.command(args)
            .args(["--trusted-key", &key.to_string()])
            .output()
    }

    /// `converge rule status --json`, which must succeed.
    pub fn cli_status(&self) -> FleetStatus {
        let output = self.cli(&["rule", "status", "--json"]);
        assert!(
            output.status.success(),
            "exit {:?}\nstdout: {}\nstderr: {}",
            output.status.code(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("status JSON")
    }
}

/// `settings` as instance `name` of the fleet `fleet` (unsigned rules allowed), with an admin
/// endpoint of its own (with `token`, if any): its configuration, written under `dir/name`,
/// and the endpoint's address.
pub fn instance_config(
    dir: &Path,
    name: &str,
    mut settings: Config,
    fleet: &str,
    token: Option<&str>,
) -> (PathBuf, SocketAddr) {
    let admin = free_loopback_addr();
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).expect("dir");
    settings.admin = Some(AdminConfig {
        listen: admin,
        token: token.map(Secret::new),
        ..AdminConfig::default()
    });
    settings.rule.fleet = Some(FleetConfig {
        redis: redis_url(),
        name: fleet.to_owned(),
        instance: Some(name.to_owned()),
        allow_unsigned: true,
    });
    (crate::config::write(&dir, &settings), admin)
}

/// How many candidates the instance whose admin endpoint is `admin` refused at `gate`
/// (`converge_rule_swaps_total{result="refused",gate=GATE}`, summed).
pub async fn refused_swaps(admin: SocketAddr, gate: &str) -> u64 {
    prometheus::scrape(admin)
        .await
        .expect("metrics answer")
        .sum(
            "converge_rule_swaps_total",
            &[("result", "refused"), ("gate", gate)],
        ) as u64
}
