//! `[source]`: where messages come from, each transport's settings, their defaults and
//! validation.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, Problem, invalid, needs};

/// Where messages come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum SourceConfig {
    /// JSON lines from a file, or stdin with path `-`.
    File(FileSourceConfig),
    /// A Kafka consumer group (feature `kafka`).
    Kafka(KafkaSourceConfig),
    /// A Fluvio topic, offsets kept under a named offset consumer (feature `fluvio`).
    Fluvio(FluvioSourceConfig),
}

/// `source.kind = "file"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// The JSON-lines file; `-` reads stdin.
    pub path: PathBuf,
}

/// `source.kind = "kafka"`: a consumer-group member that stores offsets after acknowledgement.
/// Its `Debug` hides the values of secret properties (`sasl.password`, ...).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap servers, `host:port,...`.
    pub brokers: String,
    /// The consumer group; instances sharing it share the topics' partitions.
    pub group_id: String,
    /// Topics to subscribe to.
    pub topics: Vec<String>,
    /// How long a batch waits for more messages after its first one. 0 (the default): a
    /// batch takes what has arrived and closes at once; the pipeline asks for the next one as
    /// soon as its write window has room, so batches grow under a backlog and stay small (and
    /// quick) at low rates.
    #[serde(default = "default_batch_timeout_ms")]
    pub batch_timeout_ms: u64,
    /// librdkafka properties, applied last (they may override converge's defaults).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

impl std::fmt::Debug for KafkaSourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(name, value)| {
                let shown = if crate::redact::is_secret_name(name) {
                    crate::redact::REDACTED
                } else {
                    value.as_str()
                };
                (name.as_str(), shown)
            })
            .collect();
        f.debug_struct("KafkaSourceConfig")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("topics", &self.topics)
            .field("batch_timeout_ms", &self.batch_timeout_ms)
            .field("properties", &properties)
            .finish()
    }
}

/// `source.kind = "fluvio"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FluvioSourceConfig {
    /// The cluster's SC endpoint (`host:port`); absent: the fluvio CLI's current profile.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The topic to read.
    pub topic: String,
    /// Partitions to read; empty (the default) reads them all. Instances sharing a topic
    /// take disjoint partitions: Fluvio has no consumer groups.
    #[serde(default)]
    pub partitions: Vec<u32>,
    /// The offset consumer under which committed offsets are kept.
    pub consumer: String,
    /// Verified TLS to the cluster.
    #[serde(default)]
    pub tls: Option<FluvioTls>,
    /// How long a batch waits for more records after its first one; 0 (the default): it
    /// takes what has arrived (see the Kafka source's `batch_timeout_ms`).
    #[serde(default = "default_batch_timeout_ms")]
    pub batch_timeout_ms: u64,
    /// The most bytes one response of a partition's stream may carry: at least the largest
    /// record batch the producers write (1 MiB to 2 GiB; default 32 MiB).
    #[serde(default = "default_fetch_max_bytes")]
    pub fetch_max_bytes: u32,
}

/// TLS to a Fluvio cluster, verifying its certificate (all paths PEM files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FluvioTls {
    /// The name the cluster's certificate is issued for.
    pub domain: String,
    /// The CA that issued the cluster's certificate.
    pub ca_cert: PathBuf,
    /// This client's certificate.
    pub cert: PathBuf,
    /// This client's private key.
    pub key: PathBuf,
}

/// The largest fetch the SPU is asked for by default: the SPU's own preferred read size
/// (`FileReplica::PREFER_MAX_LEN`, 32 MiB). A fetch must hold the largest record batch, and a
/// large one makes the client's cut-batch gaps rare (they are caught either way).
pub const DEFAULT_FETCH_MAX_BYTES: u32 = 32 << 20;

fn default_batch_timeout_ms() -> u64 {
    0
}

fn default_fetch_max_bytes() -> u32 {
    DEFAULT_FETCH_MAX_BYTES
}

impl SourceConfig {
    /// Checks the transport's settings, and that it is compiled in.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        match self {
            SourceConfig::File(_) => Ok(()),
            SourceConfig::Kafka(kafka) => {
                needs("source.kind = \"kafka\"", "kafka", cfg!(feature = "kafka"))?;
                if kafka.brokers.trim().is_empty() {
                    return invalid("source.brokers", Problem::Empty);
                }
                if kafka.group_id.trim().is_empty() {
                    return invalid("source.group_id", Problem::Empty);
                }
                if kafka.topics.is_empty() || kafka.topics.iter().any(|t| t.trim().is_empty()) {
                    return invalid("source.topics", Problem::NoTopics);
                }
                Ok(())
            }
            SourceConfig::Fluvio(fluvio) => {
                needs(
                    "source.kind = \"fluvio\"",
                    "fluvio",
                    cfg!(feature = "fluvio"),
                )?;
                if fluvio.topic.trim().is_empty() {
                    return invalid("source.topic", Problem::Empty);
                }
                if fluvio.consumer.trim().is_empty() {
                    return invalid("source.consumer", Problem::Empty);
                }
                if !(1 << 20..=i32::MAX as u32).contains(&fluvio.fetch_max_bytes) {
                    return invalid(
                        "source.fetch_max_bytes",
                        Problem::FetchSize(fluvio.fetch_max_bytes),
                    );
                }
                Ok(())
            }
        }
    }
}

impl KafkaSourceConfig {
    /// The first librdkafka property whose value breaks at-least-once, with why.
    /// `dead_letters_to_kafka`: the dead-letter producer shares these properties, so its
    /// `acks` count too.
    pub(crate) fn at_least_once_breaker(&self, dead_letters_to_kafka: bool) -> Option<Problem> {
        let truthy =
            |value: &str| matches!(value.trim().to_ascii_lowercase().as_str(), "true" | "1");
        for (property, value) in &self.properties {
            let why = match property.as_str() {
                "enable.auto.offset.store" if truthy(value) => Some(
                    "offsets would be stored as messages are delivered, before their states are \
                     written; a crash would skip them",
                ),
                "auto.offset.reset" | "topic.auto.offset.reset"
                    if matches!(
                        value.trim().to_ascii_lowercase().as_str(),
                        "latest" | "largest" | "end"
                    ) =>
                {
                    Some(
                        "a group without a committed offset (new, or whose offsets expired) would \
                         start at the end of each partition and never see what came before; only \
                         earliest keeps every message",
                    )
                }
                "isolation.level" if value.trim().eq_ignore_ascii_case("read_uncommitted") => Some(
                    "messages of aborted transactions would be applied as if they had been \
                     produced; read_committed (the default) delivers only committed ones",
                ),
                "acks" | "request.required.acks"
                    if dead_letters_to_kafka
                        && !matches!(value.trim().to_ascii_lowercase().as_str(), "all" | "-1") =>
                {
                    Some(
                        "the dead-letter producer would count a letter as sent before every in-sync \
                         replica has it; only all (-1) keeps it",
                    )
                }
                _ => None,
            };
            if let Some(why) = why {
                return Some(Problem::BreaksAtLeastOnce {
                    property: property.clone(),
                    value: value.clone(),
                    why,
                });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use crate::config::SourceConfig;
    use crate::config::tests::{VALID, parse};

    #[test]
    fn secret_kafka_properties_do_not_show_in_debug() {
        let mut config = parse(VALID).expect("parses");
        if let SourceConfig::Kafka(kafka) = &mut config.source {
            kafka
                .properties
                .insert("sasl.password".to_owned(), "hunter2-kafka".to_owned());
            kafka
                .properties
                .insert("sasl.username".to_owned(), "converge".to_owned());
        }
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2-kafka"), "{debug}");
        assert!(debug.contains("converge"), "{debug}");
    }
}
