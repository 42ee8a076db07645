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
//!
//! [admin]                        # optional: health, metrics, rule swaps; 127.0.0.1:9898
//! token = "${CONVERGE_ADMIN_TOKEN}"   # required by rule swaps, and off loopback
//! ```
//!
//! Each section is its component's: its type, defaults and validation live beside the code it
//! configures, and are re-exported here.
//!
//! Its files, and what each holds: the module map in ARCHITECTURE.md.

mod checks;
mod env;
mod error;
mod load;
mod overrides;

pub use error::{ConfigError, OverrideProblem, Problem};
pub(crate) use error::{invalid, needs};

pub use crate::admin::{ADMIN_TOKEN_ENV, AdminConfig, DEFAULT_ADMIN_LISTEN, MIN_ADMIN_TOKEN_CHARS};
pub use crate::dead_letter::{
    DEFAULT_MAX_BODY_BYTES, DEFAULT_STREAM_MAX_BODY_BYTES, DEFAULT_STREAM_MAX_BYTES,
    DEFAULT_STREAM_MAX_LEN, DeadLetterConfig, KafkaDeadLetterConfig, RedisStreamConfig,
};
pub use crate::pipeline::{EnrichConfig, OnUnavailable, PipelineConfig};
pub use crate::source::{
    DEFAULT_FETCH_MAX_BYTES, FileSourceConfig, FluvioSourceConfig, FluvioTls, KafkaSourceConfig,
    SourceConfig,
};
pub use crate::store::config::DEFAULT_PREFIX;
pub use crate::store::{
    DEFAULT_STORE_TIMEOUT_MS, DEFAULT_WAIT_TIMEOUT_MS, RedisClusterConfig, RedisStoreCommon,
    RedisStoreConfig, StoreConfig,
};
pub use crate::swap::{AutoRollbackConfig, FleetConfig, RuleConfig};

use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[rule]`: which rule serves, its limits and how it may be swapped.
    pub rule: RuleConfig,
    /// `[source]`: where messages come from.
    pub source: SourceConfig,
    /// `[store]`: where states are stored.
    pub store: StoreConfig,
    /// `[dead_letter]`: where messages that cannot be stored go.
    pub dead_letter: DeadLetterConfig,
    /// The order-detail API that completes id-only messages; without it they are dead-lettered.
    #[serde(default)]
    pub enrich: Option<EnrichConfig>,
    /// The admin endpoint (health, readiness, Prometheus metrics); off when absent.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// `[pipeline]`: batching, decoding and retries.
    #[serde(default)]
    pub pipeline: PipelineConfig,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn parse(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// A configuration every section of which is valid (with the transports built in).
    pub(crate) const VALID: &str = r#"
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
    fn unknown_fields_are_refused() {
        let typo = VALID.replace("group_id", "groupid");
        assert!(parse(&typo).is_err());
        let extra = VALID.replace("[store]", "[store]\nttl = 5");
        assert!(parse(&extra).is_err());
        let section = VALID.replace("[store]", "[stores]\n[store]");
        assert!(parse(&section).is_err());
    }
}
