//! `[store]`: where states are stored, each store's settings, their defaults and validation.

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, Problem, invalid, needs};

/// Where states are stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum StoreConfig {
    /// In this process's memory: for trials; lost at exit.
    Memory,
    /// A standalone Redis (feature `redis`).
    Redis(RedisStoreConfig),
    /// A Redis Cluster (feature `redis`).
    RedisCluster(RedisClusterConfig),
}

/// `store.kind = "redis"`.
///
/// Unknown keys are refused by this struct's `deny_unknown_fields`: serde hands the keys of
/// the flattened [`RedisStoreCommon`] to it and leaves the rest here, where an unknown one is an
/// error (`common` itself must not deny them: it sees only its own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisStoreConfig {
    /// `redis://` or `rediss://`, user and password in the URL.
    pub url: String,
    /// What a standalone Redis and a cluster share: key prefix, timeouts, replicas.
    #[serde(flatten)]
    pub common: RedisStoreCommon,
}

/// `store.kind = "redis-cluster"` (unknown keys refused as for [`RedisStoreConfig`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisClusterConfig {
    /// Any of the cluster's nodes; the rest are discovered.
    pub urls: Vec<String>,
    /// As for a standalone Redis; `wait_replicas` counts replicas of the key's node.
    #[serde(flatten)]
    pub common: RedisStoreCommon,
}

/// The settings of a Redis store, standalone or cluster, besides where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedisStoreCommon {
    /// Prepended to every key: a state lives at `{prefix}{key}`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// A connection attempt or an answer taking longer fails, and is retried after a
    /// backoff (`pipeline.backoff_ms`).
    #[serde(default = "default_store_timeout_ms")]
    pub timeout_ms: u64,
    /// Replicas that must have each write (Redis `WAIT`) before its batch is acknowledged;
    /// 0 (the default): the primary's answer is enough. See the README's "Durability".
    #[serde(default)]
    pub wait_replicas: u32,
    /// How long a write waits for `wait_replicas`; fewer in time is an outage, retried.
    #[serde(default = "default_wait_timeout_ms")]
    pub wait_timeout_ms: u64,
}

impl Default for RedisStoreCommon {
    fn default() -> Self {
        Self {
            prefix: default_prefix(),
            timeout_ms: DEFAULT_STORE_TIMEOUT_MS,
            wait_replicas: 0,
            wait_timeout_ms: DEFAULT_WAIT_TIMEOUT_MS,
        }
    }
}

impl RedisStoreCommon {
    /// States under `prefix`, every other setting at its default.
    pub fn prefixed(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            ..Self::default()
        }
    }
}

/// The key prefix of stored states by default.
pub const DEFAULT_PREFIX: &str = "converge:state:";

/// How long a store connection attempt or answer may take by default, in milliseconds.
pub const DEFAULT_STORE_TIMEOUT_MS: u64 = 2_000;

/// How long a write waits for its replicas by default, in milliseconds.
pub const DEFAULT_WAIT_TIMEOUT_MS: u64 = 1_000;

fn default_prefix() -> String {
    DEFAULT_PREFIX.to_owned()
}

fn default_store_timeout_ms() -> u64 {
    DEFAULT_STORE_TIMEOUT_MS
}

fn default_wait_timeout_ms() -> u64 {
    DEFAULT_WAIT_TIMEOUT_MS
}

impl StoreConfig {
    /// Checks the store's settings, and that it is compiled in.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let common = match self {
            StoreConfig::Memory => return Ok(()),
            StoreConfig::Redis(redis) => &redis.common,
            StoreConfig::RedisCluster(cluster) => {
                if cluster.urls.is_empty() {
                    return invalid("store.urls", Problem::NoClusterNode);
                }
                &cluster.common
            }
        };
        needs("store.kind", "redis", cfg!(feature = "redis"))?;
        if common.prefix.is_empty() {
            return invalid("store.prefix", Problem::Empty);
        }
        if common.timeout_ms == 0 {
            return invalid("store.timeout_ms", Problem::NotPositive);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<StoreConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn both_redis_stores_take_the_common_settings_at_the_top_level() {
        let standalone = parse(
            "kind = \"redis\"\nurl = \"redis://h\"\nprefix = \"p:\"\ntimeout_ms = 5\n\
             wait_replicas = 1\nwait_timeout_ms = 7",
        )
        .expect("parses");
        let common = RedisStoreCommon {
            prefix: "p:".to_owned(),
            timeout_ms: 5,
            wait_replicas: 1,
            wait_timeout_ms: 7,
        };
        assert_eq!(
            standalone,
            StoreConfig::Redis(RedisStoreConfig {
                url: "redis://h".to_owned(),
                common: common.clone(),
            })
        );
        let cluster = parse(
            "kind = \"redis-cluster\"\nurls = [\"redis://h\"]\nprefix = \"p:\"\ntimeout_ms = 5\n\
             wait_replicas = 1\nwait_timeout_ms = 7",
        )
        .expect("parses");
        assert_eq!(
            cluster,
            StoreConfig::RedisCluster(RedisClusterConfig {
                urls: vec!["redis://h".to_owned()],
                common,
            })
        );
        // Absent settings take their defaults.
        let bare = parse("kind = \"redis\"\nurl = \"redis://h\"").expect("parses");
        assert!(
            matches!(&bare, StoreConfig::Redis(redis) if redis.common == RedisStoreCommon::default()),
            "{bare:?}"
        );
        assert_eq!(RedisStoreCommon::default().prefix, DEFAULT_PREFIX);
    }

    #[test]
    fn an_unknown_key_beside_the_flattened_settings_is_refused() {
        for text in [
            "kind = \"redis\"\nurl = \"redis://h\"\nttl = 5",
            "kind = \"redis\"\nurl = \"redis://h\"\nprefix = \"p:\"\ntimeoutms = 5",
            "kind = \"redis\"\nurl = \"redis://h\"\nurls = [\"redis://h\"]",
            "kind = \"redis-cluster\"\nurls = [\"redis://h\"]\nttl = 5",
            "kind = \"redis-cluster\"\nurls = [\"redis://h\"]\nurl = \"redis://h\"",
        ] {
            let error = parse(text).expect_err(text);
            assert!(
                error.to_string().contains("unknown field"),
                "{text}: {error}"
            );
        }
    }

    #[test]
    fn the_common_settings_serialize_back_at_the_top_level() {
        let store = StoreConfig::Redis(RedisStoreConfig {
            url: "redis://h".to_owned(),
            common: RedisStoreCommon::prefixed("p:"),
        });
        let text = toml::to_string(&store).expect("serializes");
        assert!(text.contains("prefix = \"p:\""), "{text}");
        assert!(!text.contains("common"), "{text}");
        assert_eq!(parse(&text).expect("parses back"), store);
    }
}
