//! `converge serve` configurations for the tests, built from the host's configuration types and
//! written as TOML by `toml::to_string`: a test states what it changes as Rust values, and the
//! file is whatever `serve` reads back into the same types.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use converge::config::{
    AdminConfig, Config, DeadLetterConfig, EnrichConfig, FileSourceConfig, FluvioSourceConfig,
    KafkaDeadLetterConfig, KafkaSourceConfig, RedisClusterConfig, RedisStoreConfig,
    RedisStreamConfig, RuleConfig, SourceConfig, StoreConfig,
};
use converge::pipeline::PipelineConfig;

use crate::build;
use crate::kafka;
use crate::services::{redis_cluster_urls, redis_url};

/// The `[rule]` section serving the component at `path`, every limit at `serve`'s default.
///
/// The section has no `Default` (its path is required); its defaults are serde's, so a section
/// holding only the path, read back, has them.
pub fn rule(path: &Path) -> RuleConfig {
    serde_json::from_value(serde_json::json!({ "path": path }))
        .expect("a rule section with only its path")
}

/// `[enrich]` from the order-detail API at `url` (`{key}` standing for the key), every other
/// setting at `serve`'s default (serde's, as for [`rule`]).
pub fn enrich(url: &str) -> EnrichConfig {
    serde_json::from_value(serde_json::json!({ "url": url }))
        .expect("an enrich section with only its URL")
}

/// `[store]` on the standalone Redis, under `prefix`.
pub fn standalone_store(prefix: &str) -> StoreConfig {
    redis_store(&redis_url(), prefix)
}

/// `[store]` on the Redis at `url`, under `prefix`, with the default timeout.
pub fn redis_store(url: &str, prefix: &str) -> StoreConfig {
    StoreConfig::Redis(RedisStoreConfig {
        url: url.to_owned(),
        common: converge::config::RedisStoreCommon {
            prefix: prefix.to_owned(),
            timeout_ms: converge::config::DEFAULT_STORE_TIMEOUT_MS,
            wait_replicas: 0,
            wait_timeout_ms: converge::config::DEFAULT_WAIT_TIMEOUT_MS,
        },
    })
}

/// `[store]` on the Redis Cluster, under `prefix`.
pub fn cluster_store(prefix: &str) -> StoreConfig {
    StoreConfig::RedisCluster(RedisClusterConfig {
        urls: redis_cluster_urls(),
        common: converge::config::RedisStoreCommon {
            prefix: prefix.to_owned(),
            timeout_ms: converge::config::DEFAULT_STORE_TIMEOUT_MS,
            wait_replicas: 0,
            wait_timeout_ms: converge::config::DEFAULT_WAIT_TIMEOUT_MS,
        },
    })
}

/// `[source]`: the test Kafka's `topic` in consumer group `group`, polled every 10 ms, with a
/// short session so that a killed member's partitions move on within seconds.
pub fn kafka_source(topic: &str, group: &str) -> SourceConfig {
    SourceConfig::Kafka(KafkaSourceConfig {
        brokers: kafka::brokers(),
        group_id: group.to_owned(),
        topics: vec![topic.to_owned()],
        batch_timeout_ms: 10,
        properties: [
            ("session.timeout.ms", "6000"),
            ("heartbeat.interval.ms", "500"),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect(),
    })
}

/// `[source]` for the Fluvio cluster at `endpoint`: `topic`'s every partition, read as
/// `consumer`, the rest at `serve`'s defaults (serde's, as for [`rule`]).
pub fn fluvio_source(endpoint: &str, topic: &str, consumer: &str) -> FluvioSourceConfig {
    serde_json::from_value(serde_json::json!({
        "endpoint": endpoint,
        "topic": topic,
        "consumer": consumer,
    }))
    .expect("a Fluvio source section with its endpoint, topic and consumer")
}

/// The order-status rule served over `topic` in `group` into `store`, dead letters to the Kafka
/// topic `dead_letters`, in batches of 64. Tests change what they need before [`write`].
pub fn kafka_serve(topic: &str, dead_letters: &str, group: &str, store: StoreConfig) -> Config {
    Config {
        rule: rule(&build::rule("order-status")),
        source: kafka_source(topic, group),
        store,
        dead_letter: DeadLetterConfig::Kafka(KafkaDeadLetterConfig {
            topic: dead_letters.to_owned(),
            max_body_bytes: converge::config::DEFAULT_MAX_BODY_BYTES,
        }),
        enrich: None,
        admin: None,
        pipeline: PipelineConfig {
            batch_size: 64,
            ..PipelineConfig::default()
        },
    }
}

/// [`kafka_serve`] into the standalone Redis under `prefix`, with an admin endpoint on `admin`
/// (no token: health, readiness and metrics only), where the tests watch the process.
pub fn kafka_serve_with_admin(
    topic: &str,
    dead_letters: &str,
    group: &str,
    prefix: &str,
    admin: SocketAddr,
) -> Config {
    Config {
        admin: Some(AdminConfig {
            listen: admin,
            ..AdminConfig::default()
        }),
        ..kafka_serve(topic, dead_letters, group, standalone_store(prefix))
    }
}

/// A configuration reading JSON lines from stdin, one batch per line, into `store`, dead
/// letters to a stream under `prefix` on the store's server, with `admin` as its `[admin]`.
pub fn stdin_serve(store: StoreConfig, prefix: &str, admin: Option<AdminConfig>) -> Config {
    let mut settings = kafka_serve("unused", "unused", "unused", store);
    settings.source = SourceConfig::File(FileSourceConfig { path: "-".into() });
    settings.dead_letter =
        DeadLetterConfig::RedisStream(RedisStreamConfig::named(format!("{prefix}dead-letters")));
    settings.admin = admin;
    // The lines source fills a batch before handing it on: one line, one batch.
    settings.pipeline.batch_size = 1;
    settings
}

/// Writes `config` as TOML to `dir/converge.toml`.
pub fn write(dir: &Path, config: &Config) -> PathBuf {
    let text = toml::to_string(config).expect("the configuration serialises as TOML");
    let path = dir.join("converge.toml");
    std::fs::write(&path, text).expect("config written");
    path
}
