//! Configuration of `converge serve`: plain serde data, read from TOML, validated before any
//! connection opens.
//!
//! Secrets stay out of the file: any string may contain `${NAME}`, replaced by the environment
//! variable `NAME` when the file is loaded (a missing variable is an error).
//!
//! ```toml
//! [rule]
//! path = "order_status.wasm"
//!
//! [source]
//! kind = "kafka"
//! brokers = "127.0.0.1:9092"
//! group_id = "kitchen"
//! topics = ["orders"]
//! [source.properties]            # passed to librdkafka as they are
//! "security.protocol" = "SASL_SSL"
//! "sasl.password" = "${KAFKA_PASSWORD}"
//!
//! [store]
//! kind = "redis"                 # or "redis-cluster" with `urls`, or "memory"
//! url = "rediss://converge:${REDIS_PASSWORD}@redis.internal:6380"
//!
//! [dead_letter]
//! kind = "kafka"                 # or "redis-stream" with `stream`
//! topic = "orders.dlq"
//!
//! [enrich]                       # optional: fetch id-only messages' latest state
//! url = "http://orders.internal/orders/{key}"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::gate::GateConfig;
use crate::pipeline::PipelineConfig;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub rule: RuleConfig,
    pub source: SourceConfig,
    pub store: StoreConfig,
    pub dead_letter: DeadLetterConfig,
    /// The order-detail API that completes id-only messages; without it they are dead-lettered.
    #[serde(default)]
    pub enrich: Option<crate::enrich::EnrichConfig>,
    /// The admin endpoint (health, readiness, Prometheus metrics); off when absent.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    #[serde(default)]
    pub pipeline: PipelineConfig,
}

/// Which rule serves, and its limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// The rule served at start (unless the fleet has an active rule).
    pub path: PathBuf,
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
    #[serde(default = "default_memory_mib")]
    pub memory_mib: usize,
    /// Swap in the rule file whenever it changes (after the gates).
    #[serde(default)]
    pub watch: bool,
    /// What a rule must pass before it serves, at start and on every swap.
    #[serde(default)]
    pub gates: GateConfig,
    /// Follow a fleet's rule, published with `converge rule publish`.
    #[serde(default)]
    pub fleet: Option<FleetConfig>,
}

/// The fleet an instance follows (see [`crate::fleet`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// The Redis holding the fleet's rules, e.g. "redis://127.0.0.1:6379" or "rediss://...".
    pub redis: String,
    /// Instances with the same name serve the same rule.
    pub name: String,
    /// This instance's name in `converge rule status`; default: host name and process id.
    #[serde(default)]
    pub instance: Option<String>,
}

fn default_deadline_ms() -> u64 {
    100
}

fn default_memory_mib() -> usize {
    64
}

/// Where the admin endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// e.g. "127.0.0.1:9898"
    pub listen: std::net::SocketAddr,
}

/// Where messages come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SourceConfig {
    /// JSON lines from a file, or stdin with path `-`.
    File { path: PathBuf },
    /// A Kafka consumer group.
    Kafka {
        brokers: String,
        group_id: String,
        topics: Vec<String>,
        #[serde(default = "default_batch_timeout_ms")]
        batch_timeout_ms: u64,
        #[serde(default)]
        properties: BTreeMap<String, String>,
    },
    /// A Fluvio topic, offsets kept under the offset consumer `consumer`.
    Fluvio {
        /// The cluster's SC endpoint (`host:port`); absent: the fluvio CLI's current profile.
        #[serde(default)]
        endpoint: Option<String>,
        topic: String,
        /// Partitions to read; empty (the default) reads them all. Instances sharing a topic
        /// take disjoint partitions: Fluvio has no consumer groups.
        #[serde(default)]
        partitions: Vec<u32>,
        consumer: String,
        /// Verified TLS to the cluster.
        #[serde(default)]
        tls: Option<crate::fluvio_source::FluvioTls>,
        /// How long a batch waits for more records after its first one.
        #[serde(default = "default_batch_timeout_ms")]
        batch_timeout_ms: u64,
        /// The most bytes one response of a partition's stream may carry: at least the largest
        /// record batch the producers write (1 MiB to 2 GiB; default 32 MiB).
        #[serde(default = "default_fetch_max_bytes")]
        fetch_max_bytes: u32,
    },
}

fn default_batch_timeout_ms() -> u64 {
    20
}

fn default_fetch_max_bytes() -> u32 {
    crate::fluvio_source::DEFAULT_FETCH_MAX_BYTES
}

/// Where states are stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum StoreConfig {
    /// In this process's memory: for trials; lost at exit.
    Memory,
    /// A standalone Redis (`redis://` or `rediss://`, user and password in the URL).
    Redis {
        url: String,
        #[serde(default = "default_prefix")]
        prefix: String,
        /// A connection attempt or an answer taking longer fails, and is retried after a
        /// backoff (`pipeline.backoff_ms`).
        #[serde(default = "default_store_timeout_ms")]
        timeout_ms: u64,
    },
    /// A Redis Cluster, reached through any of `urls`.
    RedisCluster {
        urls: Vec<String>,
        #[serde(default = "default_prefix")]
        prefix: String,
        #[serde(default = "default_store_timeout_ms")]
        timeout_ms: u64,
    },
}

fn default_prefix() -> String {
    crate::redis_store::DEFAULT_PREFIX.to_owned()
}

fn default_max_body_bytes() -> usize {
    crate::kafka_dead_letters::DEFAULT_MAX_BODY_BYTES
}

fn default_store_timeout_ms() -> u64 {
    crate::redis_store::DEFAULT_TIMEOUT.as_millis() as u64
}

/// Where dead letters go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DeadLetterConfig {
    /// A Kafka topic, through the source's brokers and properties.
    Kafka {
        topic: String,
        /// Bodies beyond this are cut (with a `converge-truncated-from` header); keep it under
        /// the topic's `max.message.bytes`.
        #[serde(default = "default_max_body_bytes")]
        max_body_bytes: usize,
    },
    /// A Redis stream on the store's server.
    RedisStream { stream: String },
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{path}: environment variable {name} is not set")]
    MissingVariable { path: PathBuf, name: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("--set {0:?}: {1}")]
    Override(String, String),
}

impl Config {
    /// Reads, expands `${NAME}` references and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_overrides(path, &[] as &[&str])
    }

    /// As [`Config::load`], with settings replaced by `PATH=VALUE` overrides (from flags) before
    /// the result is validated. A VALUE that parses as TOML is taken as such (`1024`, `true`,
    /// `["a","b"]`), anything else as a string.
    pub fn load_with_overrides(
        path: &Path,
        overrides: &[impl AsRef<str>],
    ) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let parse_error = |source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        };
        let mut table: toml::Table = toml::from_str(&text).map_err(parse_error)?;
        for assignment in overrides {
            apply_override(&mut table, assignment.as_ref())?;
        }
        // In string values only: a comment may mention ${NAME}, and a secret's characters
        // cannot change the file's structure.
        expand_strings(&mut table, &|name| std::env::var(name).ok()).map_err(|name| {
            ConfigError::MissingVariable {
                path: path.to_owned(),
                name,
            }
        })?;
        let config = Config::deserialize(table).map_err(parse_error)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what can be checked without connecting anywhere.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        if !self.rule.path.is_file() {
            return invalid(format!(
                "rule.path {} is not a file",
                self.rule.path.display()
            ));
        }
        if self.rule.deadline_ms == 0 || self.rule.memory_mib == 0 {
            return invalid("rule.deadline_ms and rule.memory_mib must be positive".to_owned());
        }
        if self.pipeline.batch_size == 0 || self.pipeline.max_write_attempts == 0 {
            return invalid(
                "pipeline.batch_size and pipeline.max_write_attempts must be positive".to_owned(),
            );
        }
        if let SourceConfig::Kafka {
            brokers,
            group_id,
            topics,
            ..
        } = &self.source
        {
            if brokers.trim().is_empty() || group_id.trim().is_empty() {
                return invalid("source.brokers and source.group_id must not be empty".to_owned());
            }
            if topics.is_empty() || topics.iter().any(|t| t.trim().is_empty()) {
                return invalid("source.topics must name at least one topic".to_owned());
            }
        }
        if let SourceConfig::Fluvio {
            topic,
            consumer,
            fetch_max_bytes,
            ..
        } = &self.source
        {
            if topic.trim().is_empty() || consumer.trim().is_empty() {
                return invalid("source.topic and source.consumer must not be empty".to_owned());
            }
            if !(1 << 20..=i32::MAX as u32).contains(fetch_max_bytes) {
                return invalid(format!(
                    "source.fetch_max_bytes must be between 1 MiB and 2 GiB, not {fetch_max_bytes}"
                ));
            }
        }
        match &self.store {
            StoreConfig::Redis { prefix, .. } | StoreConfig::RedisCluster { prefix, .. }
                if prefix.is_empty() =>
            {
                return invalid("store.prefix must not be empty".to_owned());
            }
            StoreConfig::RedisCluster { urls, .. } if urls.is_empty() => {
                return invalid("store.urls must name at least one cluster node".to_owned());
            }
            StoreConfig::Redis { timeout_ms: 0, .. }
            | StoreConfig::RedisCluster { timeout_ms: 0, .. } => {
                return invalid("store.timeout_ms must be positive".to_owned());
            }
            _ => {}
        }
        if let Some(fleet) = &self.rule.fleet {
            if fleet.name.trim().is_empty() || fleet.name.contains(['{', '}']) {
                return invalid("rule.fleet.name must not be empty nor contain braces".to_owned());
            }
            if let Err(error) = redis::Client::open(fleet.redis.as_str()) {
                return invalid(format!("rule.fleet.redis is not a Redis URL: {error}"));
            }
        }
        if self.rule.gates.check_histories == 0 {
            return invalid("rule.gates.check_histories must be positive".to_owned());
        }
        if let Some(enrich) = &self.enrich {
            crate::enrich::Enricher::new(enrich.clone()).map_err(ConfigError::Invalid)?;
        }
        match (&self.dead_letter, &self.source, &self.store) {
            (
                DeadLetterConfig::Kafka { .. },
                SourceConfig::File { .. } | SourceConfig::Fluvio { .. },
                _,
            ) => invalid(
                "dead_letter.kind = \"kafka\" needs a Kafka source (its brokers are used)"
                    .to_owned(),
            ),
            (DeadLetterConfig::RedisStream { .. }, _, StoreConfig::Memory) => invalid(
                "dead_letter.kind = \"redis-stream\" needs a Redis store (its server is used)"
                    .to_owned(),
            ),
            _ => Ok(()),
        }
    }
}

/// Sets `a.b.c=value` in `table`, creating tables on the way.
fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<(), ConfigError> {
    let refuse = |why: &str| ConfigError::Override(assignment.to_owned(), why.to_owned());
    let (path, raw) = assignment
        .split_once('=')
        .ok_or_else(|| refuse("expected PATH=VALUE"))?;
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut parsed| parsed.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    let mut names: Vec<&str> = path.trim().split('.').collect();
    let last = names.pop().filter(|name| !name.is_empty());
    let last = last.ok_or_else(|| refuse("empty setting name"))?;
    let mut current = table;
    for name in names {
        let entry = current
            .entry(name.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| refuse(&format!("{name:?} is not a table")))?;
    }
    current.insert(last.to_owned(), value);
    Ok(())
}

/// Expands `${NAME}` in every string value of `table`, nested ones included.
fn expand_strings(
    table: &mut toml::Table,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<(), String> {
    fn expand_value(
        value: &mut toml::Value,
        lookup: &impl Fn(&str) -> Option<String>,
    ) -> Result<(), String> {
        match value {
            toml::Value::String(text) => *text = expand_variables(text, lookup)?,
            toml::Value::Array(items) => {
                for item in items {
                    expand_value(item, lookup)?;
                }
            }
            toml::Value::Table(table) => expand_strings(table, lookup)?,
            _ => {}
        }
        Ok(())
    }
    for (_, value) in table.iter_mut() {
        expand_value(value, lookup)?;
    }
    Ok(())
}

/// Replaces every `${NAME}` with `lookup(NAME)`; `Err(NAME)` for the first one missing.
fn expand_variables(
    text: &str,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = &after[..end];
        out.push_str(&lookup(name).ok_or_else(|| name.to_owned())?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_are_expanded_and_missing_ones_named() {
        let lookup = |name: &str| (name == "PASSWORD").then(|| "s3cret".to_owned());
        assert_eq!(
            expand_variables("redis://:${PASSWORD}@h", &lookup),
            Ok("redis://:s3cret@h".to_owned())
        );
        assert_eq!(expand_variables("${NOPE}", &lookup), Err("NOPE".to_owned()));
        // Only values are expanded: comments may mention ${ANYTHING}.
        let mut table: toml::Table =
            toml::from_str("# uses ${NOPE}\n[store]\nurls = [\"redis://:${PASSWORD}@h\"]")
                .expect("parses");
        expand_strings(&mut table, &lookup).expect("expands");
        assert_eq!(
            table["store"]["urls"][0].as_str(),
            Some("redis://:s3cret@h")
        );
    }

    fn parse(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    const VALID: &str = r#"
        [rule]
        path = "Cargo.toml"
        [source]
        kind = "kafka"
        brokers = "127.0.0.1:9092"
        group_id = "g"
        topics = ["orders"]
        [store]
        kind = "redis"
        url = "redis://127.0.0.1"
        [dead_letter]
        kind = "kafka"
        topic = "orders.dlq"
    "#;

    #[test]
    fn a_full_configuration_parses_and_validates() {
        let config = parse(VALID).expect("parses");
        assert!(
            matches!(config.store, StoreConfig::Redis { ref prefix, .. } if prefix == "converge:state:")
        );
        assert_eq!(config.pipeline, PipelineConfig::default());
        config.validate().expect("valid");
    }

    #[test]
    fn the_shipped_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/converge.example.toml");
        // Loaded as `serve` loads it (variables expanded), short of validating the rule path.
        let error = Config::load(&path).expect_err("the example's rule is not built here");
        assert!(
            matches!(error, ConfigError::Invalid(ref why) if why.contains("rule.path")),
            "{error}"
        );
        let example = include_str!("../../deploy/converge.example.toml");
        let config = parse(example).expect("deploy/converge.example.toml parses");
        assert!(config.admin.is_some());
        assert!(matches!(config.source, SourceConfig::Kafka { .. }));
    }

    #[test]
    fn overrides_replace_settings_and_keep_types() {
        let mut table: toml::Table = toml::from_str(VALID).expect("parses");
        apply_override(&mut table, "source.brokers=kafka-1:9092,kafka-2:9092").expect("set");
        apply_override(&mut table, "pipeline.batch_size=1024").expect("set");
        apply_override(&mut table, "source.topics=[\"a\", \"b\"]").expect("set");
        let config = Config::deserialize(table).expect("still a configuration");
        assert_eq!(config.pipeline.batch_size, 1024);
        match config.source {
            SourceConfig::Kafka {
                brokers, topics, ..
            } => {
                assert_eq!(brokers, "kafka-1:9092,kafka-2:9092");
                assert_eq!(topics, ["a", "b"]);
            }
            other => panic!("source changed kind: {other:?}"),
        }
        let mut table: toml::Table = toml::from_str(VALID).expect("parses");
        assert!(apply_override(&mut table, "no-equals-sign").is_err());
        assert!(apply_override(&mut table, "rule.path.deeper=1").is_err());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let typo = VALID.replace("group_id", "groupid");
        assert!(parse(&typo).is_err());
        let extra = VALID.replace("[store]", "[store]\nttl = 5");
        assert!(parse(&extra).is_err());
    }

    #[test]
    fn inconsistent_choices_are_refused_before_connecting() {
        let mut config = parse(VALID).expect("parses");
        config.source = SourceConfig::File { path: "-".into() };
        assert!(config.validate().is_err());
        let mut config = parse(VALID).expect("parses");
        config.rule.path = "does/not/exist.wasm".into();
        assert!(config.validate().is_err());
    }
}
