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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::rule::GateConfig;
use converge_codec::FieldMapping;

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

/// `[pipeline]`: batches, field mapping, retries and backoff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// The most messages in one batch.
    pub batch_size: usize,
    /// How a message's fields map to an event.
    pub mapping: FieldMapping,
    /// How often a key is decided again at once after losing a compare-and-set race; past
    /// that, it is tried again after a growing backoff (`backoff_ms` to `max_backoff_ms`,
    /// counted as `unavailable{service="store",operation="contended"}`) until it lands.
    pub max_write_attempts: u32,
    /// How often a failed decision is retried on a fresh rule instance before the event is
    /// dead-lettered.
    pub rule_retries: u32,
    /// The first wait after the store or the dead-letter queue was unavailable, in
    /// milliseconds; each further wait doubles, up to `max_backoff_ms`. Retries go on until
    /// the step succeeds or shutdown is asked for: the batch is never skipped.
    pub backoff_ms: u64,
    /// The longest wait between two attempts, in milliseconds.
    pub max_backoff_ms: u64,
    /// The most batches decided whose writes are not acknowledged yet: while they are on
    /// their way, the next batch is decided. 1 runs batches one at a time.
    pub max_in_flight: usize,
    /// How many keys' acknowledged states the write-through cache keeps (least recently used
    /// evicted), so a key written or read recently needs no load. 0 turns it off; keys of
    /// batches in flight are kept regardless.
    pub state_cache_keys: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            batch_size: 512,
            mapping: FieldMapping::default(),
            max_write_attempts: 16,
            rule_retries: 1,
            backoff_ms: 50,
            max_backoff_ms: 5_000,
            max_in_flight: 4,
            state_cache_keys: 65_536,
        }
    }
}

/// Which rule serves, and its limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// The rule served at start (unless the fleet has an active rule).
    pub path: PathBuf,
    /// How long one rule call may run, in milliseconds.
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
    /// The most memory one rule instance may use, in MiB.
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
    /// Roll a swap back by itself when the new version's share of `ignore` decisions jumps
    /// above the previous version's (and refuse to promote such a shadow). Absent: off.
    #[serde(default)]
    pub auto_rollback: Option<AutoRollbackConfig>,
    /// Public keys (`ed25519:<base64>`, as `converge rule keygen` prints them) one of which
    /// must have signed every rule before it serves, on every path (start, file watch, fleet,
    /// admin). Empty: signatures are not required, but one a rule carries must verify.
    #[serde(default)]
    pub trusted_keys: Vec<crate::rule::PublicKey>,
    /// The largest rule component accepted on any path, in bytes; larger ones are refused
    /// before they are read in full or compiled.
    #[serde(default = "default_max_component_bytes")]
    pub max_component_bytes: usize,
}

fn default_max_component_bytes() -> usize {
    crate::rule::DEFAULT_MAX_COMPONENT_BYTES
}

/// `[rule.auto_rollback]`: when a swap's ignore share counts as a jump (see README, "Changing
/// the rule without a redeploy").
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoRollbackConfig {
    /// How far (a fraction: 0.2 is 20 percentage points) a new version's ignore share may
    /// exceed the previous version's before the swap is rolled back; between 0 and 1.
    #[serde(default = "default_max_ignore_share_increase")]
    pub max_ignore_share_increase: f64,
    /// Decisions a new version makes before it is judged, and that the previous version must
    /// have made on this instance for its share to count.
    #[serde(default = "default_min_decisions")]
    pub min_decisions: u64,
}

/// Equal when the same numbers (bit for bit: validation refuses NaN), so that the
/// configuration compares as a whole.
impl PartialEq for AutoRollbackConfig {
    fn eq(&self, other: &Self) -> bool {
        self.max_ignore_share_increase.to_bits() == other.max_ignore_share_increase.to_bits()
            && self.min_decisions == other.min_decisions
    }
}

impl Eq for AutoRollbackConfig {}

impl Default for AutoRollbackConfig {
    fn default() -> Self {
        Self {
            max_ignore_share_increase: default_max_ignore_share_increase(),
            min_decisions: default_min_decisions(),
        }
    }
}

fn default_max_ignore_share_increase() -> f64 {
    0.2
}

fn default_min_decisions() -> u64 {
    1_000
}

/// The fleet an instance follows: rules published with `converge rule publish`.
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
    /// Serve unsigned rules from the fleet when `rule.trusted_keys` is empty. Without trusted
    /// keys, whoever can write the fleet's Redis decides what every instance serves, so a
    /// fleet without them is refused unless this is set (and `serve` warns at start).
    #[serde(default)]
    pub allow_unsigned: bool,
}

fn default_deadline_ms() -> u64 {
    100
}

fn default_memory_mib() -> usize {
    64
}

/// `[admin]`: where the admin endpoint listens and who may use it. `[admin]` alone serves on
/// 127.0.0.1:9898 with rule swaps disabled (no token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// e.g. "127.0.0.1:9898" (the default). An address that is not loopback needs a token.
    #[serde(default = "default_admin_listen")]
    pub listen: std::net::SocketAddr,
    /// The bearer token the mutating endpoints (`POST /rule`, `/rule/promote`,
    /// `/rule/rollback`) require, at least [`MIN_ADMIN_TOKEN_CHARS`] characters; usually
    /// `"${CONVERGE_ADMIN_TOKEN}"`. When absent, the environment variable
    /// [`ADMIN_TOKEN_ENV`] is taken (by [`Config::load`]); when neither is set, those
    /// endpoints answer 403.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<crate::redact::Secret>,
    /// Require the token for `/metrics`, `/rule` and `/rule/status` too (never for `/healthz`
    /// and `/readyz`, which probes call).
    #[serde(default)]
    pub protect_reads: bool,
    /// Origins (`scheme://host[:port]`) whose browser pages may call the mutating endpoints;
    /// a request with any other `Origin` header is refused. Empty (the default): none.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

/// The environment variable the admin token is taken from when `admin.token` is not set.
pub const ADMIN_TOKEN_ENV: &str = "CONVERGE_ADMIN_TOKEN";

/// The shortest admin token accepted.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 16;

/// Where the admin endpoint listens by default: loopback only.
pub const DEFAULT_ADMIN_LISTEN: std::net::SocketAddr = std::net::SocketAddr::V4(
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 9898),
);

fn default_admin_listen() -> std::net::SocketAddr {
    DEFAULT_ADMIN_LISTEN
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_ADMIN_LISTEN,
            token: None,
            protect_reads: false,
            allowed_origins: Vec::new(),
        }
    }
}

impl AdminConfig {
    /// Takes the token from `from_env` (the value of [`ADMIN_TOKEN_ENV`], if set) when the file
    /// sets none; a file and an environment that set two different tokens are refused, since
    /// either could be the one an operator believes is in force.
    pub fn take_token_from_env(&mut self, from_env: Option<String>) -> Result<(), ConfigError> {
        let Some(from_env) = from_env.filter(|value| !value.is_empty()) else {
            return Ok(());
        };
        match &self.token {
            None => {
                self.token = Some(crate::redact::Secret::new(from_env));
                Ok(())
            }
            Some(token) if token.expose() == from_env => Ok(()),
            Some(_) => invalid("admin.token", Problem::TokenConflict),
        }
    }

    /// Checks the token, the origins, and that an address other than loopback has a token.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(token) = &self.token {
            let token = token.expose();
            if token.chars().count() < MIN_ADMIN_TOKEN_CHARS
                || !token.chars().all(|c| c.is_ascii_graphic())
            {
                return invalid("admin.token", Problem::WeakToken);
            }
        } else if !self.listen.ip().to_canonical().is_loopback() {
            return invalid("admin.listen", Problem::ExposedWithoutToken(self.listen));
        } else if self.protect_reads {
            return invalid("admin.protect_reads", Problem::ProtectedWithoutToken);
        }
        if let Some(origin) = self
            .allowed_origins
            .iter()
            .find(|origin| !is_origin(origin))
        {
            return invalid(
                "admin.allowed_origins",
                Problem::NotAnOrigin(origin.clone()),
            );
        }
        Ok(())
    }
}

/// `scheme://host[:port]`, as a browser sends it in `Origin`: no path, no trailing slash.
fn is_origin(origin: &str) -> bool {
    origin.split_once("://").is_some_and(|(scheme, host)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.')
            && !host.is_empty()
            && !host.contains(['/', '?', '#', '@'])
    })
}

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisStoreConfig {
    /// `redis://` or `rediss://`, user and password in the URL.
    pub url: String,
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

/// `store.kind = "redis-cluster"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisClusterConfig {
    /// Any of the cluster's nodes; the rest are discovered.
    pub urls: Vec<String>,
    /// Prepended to every key: a state lives at `{prefix}{key}`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// As for a standalone Redis.
    #[serde(default = "default_store_timeout_ms")]
    pub timeout_ms: u64,
    /// As for a standalone Redis: replicas of the key's node that must have each write.
    #[serde(default)]
    pub wait_replicas: u32,
    /// As for a standalone Redis.
    #[serde(default = "default_wait_timeout_ms")]
    pub wait_timeout_ms: u64,
}

/// The key prefix of stored states by default.
pub const DEFAULT_PREFIX: &str = "converge:state:";

/// How long a store connection attempt or answer may take by default, in milliseconds.
pub const DEFAULT_STORE_TIMEOUT_MS: u64 = 2_000;

fn default_prefix() -> String {
    DEFAULT_PREFIX.to_owned()
}

fn default_store_timeout_ms() -> u64 {
    DEFAULT_STORE_TIMEOUT_MS
}

/// How long a write waits for its replicas by default, in milliseconds.
pub const DEFAULT_WAIT_TIMEOUT_MS: u64 = 1_000;

fn default_wait_timeout_ms() -> u64 {
    DEFAULT_WAIT_TIMEOUT_MS
}

/// Where dead letters go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum DeadLetterConfig {
    /// A Kafka topic, through the source's brokers and properties (feature `kafka`).
    Kafka(KafkaDeadLetterConfig),
    /// A Redis stream on the store's server (feature `redis`).
    RedisStream(RedisStreamConfig),
}

/// `dead_letter.kind = "kafka"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaDeadLetterConfig {
    /// The dead-letter topic.
    pub topic: String,
    /// Bodies beyond this are cut (with a `converge-truncated-from` header); keep it under
    /// the topic's `max.message.bytes`.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
}

/// `dead_letter.kind = "redis-stream"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisStreamConfig {
    /// The stream's key.
    pub stream: String,
    /// About how many entries the stream keeps; older ones are trimmed (`MAXLEN ~`).
    #[serde(default = "default_stream_max_len")]
    pub max_len: u64,
    /// About how many bytes of entries the stream keeps: fewer entries are kept when they are
    /// large (`MAXLEN ~` of this over the largest entry sent), so a flood of large bad
    /// messages cannot fill Redis.
    #[serde(default = "default_stream_max_bytes")]
    pub max_bytes: u64,
    /// Bodies beyond this are cut (the entry's `truncated_from` field gives the size); the
    /// whole message stays in the source at the entry's `position`.
    #[serde(default = "default_stream_max_body_bytes")]
    pub max_body_bytes: usize,
}

impl RedisStreamConfig {
    /// The stream at key `stream`, every other setting at its default.
    pub fn named(stream: impl Into<String>) -> Self {
        Self {
            stream: stream.into(),
            max_len: DEFAULT_STREAM_MAX_LEN,
            max_bytes: DEFAULT_STREAM_MAX_BYTES,
            max_body_bytes: DEFAULT_STREAM_MAX_BODY_BYTES,
        }
    }
}

/// How many bytes of entries a Redis-stream dead-letter queue keeps by default.
pub const DEFAULT_STREAM_MAX_BYTES: u64 = 256 << 20;

fn default_stream_max_bytes() -> u64 {
    DEFAULT_STREAM_MAX_BYTES
}

/// The largest dead-letter body a Redis stream keeps by default.
pub const DEFAULT_STREAM_MAX_BODY_BYTES: usize = 64 << 10;

fn default_stream_max_body_bytes() -> usize {
    DEFAULT_STREAM_MAX_BODY_BYTES
}

/// How many entries a Redis-stream dead-letter queue keeps by default.
pub const DEFAULT_STREAM_MAX_LEN: u64 = 1_000_000;

fn default_stream_max_len() -> u64 {
    DEFAULT_STREAM_MAX_LEN
}

/// The largest dead-letter body sent to Kafka by default: under Kafka's default record limit
/// of 1 MB, with room for headers.
pub const DEFAULT_MAX_BODY_BYTES: usize = 900 * 1024;

fn default_max_body_bytes() -> usize {
    DEFAULT_MAX_BODY_BYTES
}

/// How to reach the order-detail API that completes id-only messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichConfig {
    /// The URL of one entity, `{key}` standing for its (percent-encoded) key,
    /// e.g. `http://orders.internal/orders/{key}`.
    pub url: String,
    /// The most requests in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// How long one request may take, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// What to do while the API cannot answer (unreachable, timing out, 5xx, 429, or refusing
    /// converge's credentials with 401/403): `wait` (the default) retries until it answers,
    /// holding the batch and its partition like a store outage; `dead-letter` gives up after
    /// `retries` retries and dead-letters the key's messages as `not_enriched`.
    #[serde(default)]
    pub on_unavailable: OnUnavailable,
    /// Retries after the first attempt before giving up, with `on_unavailable = "dead-letter"`.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// The first retry waits this long; each further one twice as long, up to
    /// `max_backoff_ms`.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    /// The longest wait between two retries.
    #[serde(default = "default_enrich_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// How long a 404 is retried before it is final: an order the API has not made visible
    /// yet (replication lag behind the event) is not dead-lettered at once. 0: a 404 is
    /// final at once.
    #[serde(default = "default_not_found_grace_ms")]
    pub not_found_grace_ms: u64,
    /// With `on_unavailable = "wait"`: how long one key may keep failing (as an outage does)
    /// while the API answers other keys, before its messages are dead-lettered as
    /// `not_enriched` with the last answer. A failure of every key is an outage and is waited
    /// out without limit; one broken order must not hold every partition.
    #[serde(default = "default_key_give_up_ms")]
    pub key_give_up_ms: u64,
}

/// What enrichment does while the order API cannot answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnUnavailable {
    /// Retry until the API answers; nothing is dead-lettered for an outage.
    #[default]
    Wait,
    /// Give up after `enrich.retries` retries and dead-letter the key's messages.
    DeadLetter,
}

fn default_concurrency() -> usize {
    16
}
fn default_timeout_ms() -> u64 {
    2_000
}
fn default_retries() -> u32 {
    3
}
fn default_backoff_ms() -> u64 {
    50
}
fn default_enrich_max_backoff_ms() -> u64 {
    5_000
}
fn default_not_found_grace_ms() -> u64 {
    5_000
}
fn default_key_give_up_ms() -> u64 {
    60_000
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// The file is not TOML, or not a configuration.
    #[error("{path}: {source}")]
    Parse {
        /// The configuration file.
        path: PathBuf,
        /// What the parser found.
        source: Box<toml::de::Error>,
    },
    /// A `${NAME}` names an environment variable that is not set.
    #[error("{path}: environment variable {name} is not set")]
    MissingVariable {
        /// The configuration file.
        path: PathBuf,
        /// The variable.
        name: String,
    },
    /// A setting has a value converge cannot work with.
    #[error("invalid configuration: {setting} {problem}")]
    Invalid {
        /// The setting, by its dotted path.
        setting: &'static str,
        /// What is wrong with it.
        #[source]
        problem: Problem,
    },
    /// A setting chooses something this build of converge was compiled without.
    #[error(
        "{setting} needs converge built with the `{feature}` feature (cargo build --features {feature})"
    )]
    NeedsFeature {
        /// The setting that chose it.
        setting: &'static str,
        /// The Cargo feature it needs.
        feature: &'static str,
    },
    /// A `--set PATH=VALUE` override cannot be applied.
    #[error("--set {assignment:?}: {problem}")]
    Override {
        /// The override as given.
        assignment: String,
        /// Why it cannot be applied.
        #[source]
        problem: OverrideProblem,
    },
}

/// What is wrong with a setting's value (in [`ConfigError::Invalid`], after the setting's name).
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// A count or duration is zero.
    #[error("must be positive")]
    NotPositive,
    /// A name, address or prefix is empty.
    #[error("must not be empty")]
    Empty,
    /// A share that must lie strictly between 0 and 1 (the value).
    #[error("must be a fraction between 0 and 1 (0.2 is 20 percentage points), not {0}")]
    NotAFraction(f64),
    /// The rule path names no file.
    #[error("{} is not a file", .0.display())]
    NotAFile(PathBuf),
    /// A fleet without trusted keys: anyone who can write its Redis would choose the rule.
    #[error(
        "needs rule.trusted_keys (every instance then serves only rules signed by one of \
         them), or rule.fleet.allow_unsigned = true to accept that whoever can write the \
         fleet's Redis chooses what every instance serves"
    )]
    UnsignedFleet,
    /// A trusted key (its id) is listed twice.
    #[error("lists the key {0} twice")]
    DuplicateKey(String),
    /// A Kafka source subscribes to no topic, or to an empty name.
    #[error("must name at least one topic, none empty")]
    NoTopics,
    /// A Redis Cluster store names no node.
    #[error("must name at least one cluster node")]
    NoClusterNode,
    /// A fleet name is empty or has braces (it becomes a Redis hash tag).
    #[error("must not be empty nor contain braces")]
    FleetName,
    /// The fleet's Redis URL does not parse.
    #[cfg(feature = "redis")]
    #[error("is not a Redis URL: {0}")]
    NotARedisUrl(#[source] redis::RedisError),
    /// A Fluvio fetch size outside 1 MiB ..= 2 GiB (the value).
    #[error("must be between 1 MiB and 2 GiB, not {0}")]
    FetchSize(u32),
    /// A non-loopback admin address (the value) with no token to protect it.
    #[error(
        "is {0}, which is not a loopback address, and no admin token is set: anyone who can \
         reach it could swap the rule. Set admin.token (e.g. token = \"${{CONVERGE_ADMIN_TOKEN}}\") \
         or the CONVERGE_ADMIN_TOKEN environment variable, or listen on 127.0.0.1"
    )]
    ExposedWithoutToken(std::net::SocketAddr),
    /// An admin token that is too short or has characters a bearer token cannot carry.
    #[error(
        "must be at least 16 visible ASCII characters, no spaces (e.g. `openssl rand -hex 32`)"
    )]
    WeakToken,
    /// `admin.token` and `CONVERGE_ADMIN_TOKEN` both set, to different values.
    #[error(
        "differs from the CONVERGE_ADMIN_TOKEN environment variable; set one or the other \
         (or token = \"${{CONVERGE_ADMIN_TOKEN}}\")"
    )]
    TokenConflict,
    /// `admin.protect_reads` with no token to protect them with.
    #[error("needs an admin token (admin.token or CONVERGE_ADMIN_TOKEN)")]
    ProtectedWithoutToken,
    /// An allowed origin (the value) that is not `scheme://host[:port]`.
    #[error("{0:?} is not an origin (scheme://host[:port], no path)")]
    NotAnOrigin(String),
    /// An enrichment URL (the value, its password redacted) without a `{key}` placeholder.
    #[error("{0:?} has no {{key}} placeholder")]
    NoKeyPlaceholder(String),
    /// Kafka dead letters without a Kafka source, whose brokers they use.
    #[error("needs a Kafka source (its brokers are used)")]
    NeedsKafkaSource,
    /// Redis-stream dead letters without a Redis store, whose server they use.
    #[error("needs a Redis store (its server is used)")]
    NeedsRedisStore,
    /// Redis-stream dead letters beside a Redis Cluster store: the stream's key lives on one
    /// node, and a send to another would be refused (`MOVED`) again and again.
    #[error(
        "is not supported with a Redis Cluster store (the stream lives on one node); use \
         dead_letter.kind = \"kafka\", or a standalone Redis store"
    )]
    NotOnCluster,
    /// A librdkafka property whose value would acknowledge a message, or count a dead letter
    /// as sent, before converge has stored its outcome.
    #[error("{property} = {value:?} breaks at-least-once: {why}")]
    BreaksAtLeastOnce {
        /// The property.
        property: String,
        /// Its value.
        value: String,
        /// What would be lost.
        why: &'static str,
    },
}

/// The first librdkafka property in `properties` whose value breaks at-least-once, with why.
/// `dead_letters_to_kafka`: the dead-letter producer shares these properties.
fn at_least_once_breaker(
    properties: &BTreeMap<String, String>,
    dead_letters_to_kafka: bool,
) -> Option<Problem> {
    let truthy = |value: &str| matches!(value.trim().to_ascii_lowercase().as_str(), "true" | "1");
    for (property, value) in properties {
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

/// Why a `--set PATH=VALUE` override cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverrideProblem {
    /// There is no `=`.
    #[error("expected PATH=VALUE")]
    NotAnAssignment,
    /// The path ends in an empty name.
    #[error("empty setting name")]
    EmptyName,
    /// A name on the path (the value) holds a value, not a table.
    #[error("{0:?} is not a table")]
    NotATable(String),
}

fn invalid(setting: &'static str, problem: Problem) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid { setting, problem })
}

/// Refuses a choice of `setting` when `feature` is not compiled in.
fn needs(setting: &'static str, feature: &'static str, built: bool) -> Result<(), ConfigError> {
    if built {
        Ok(())
    } else {
        Err(ConfigError::NeedsFeature { setting, feature })
    }
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
        expand_strings(&mut table, &|name| std::env::var(name).ok()).map_err(
            |UnsetVariable(name)| ConfigError::MissingVariable {
                path: path.to_owned(),
                name,
            },
        )?;
        let mut config = Config::deserialize(table).map_err(parse_error)?;
        if let Some(admin) = &mut config.admin {
            admin.take_token_from_env(std::env::var(ADMIN_TOKEN_ENV).ok())?;
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks what can be checked without connecting anywhere: values, the combination of
    /// source, store and dead-letter queue, and that every choice is compiled in.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_rule()?;
        if self.pipeline.batch_size == 0 {
            return invalid("pipeline.batch_size", Problem::NotPositive);
        }
        if self.pipeline.max_in_flight == 0 {
            return invalid("pipeline.max_in_flight", Problem::NotPositive);
        }
        if self.pipeline.max_write_attempts == 0 {
            return invalid("pipeline.max_write_attempts", Problem::NotPositive);
        }
        self.source.validate()?;
        if let SourceConfig::Kafka(kafka) = &self.source {
            let dead_letters_to_kafka = matches!(self.dead_letter, DeadLetterConfig::Kafka(_));
            if let Some(problem) = at_least_once_breaker(&kafka.properties, dead_letters_to_kafka) {
                return invalid("source.properties", problem);
            }
        }
        self.store.validate()?;
        if let Some(enrich) = &self.enrich {
            needs("enrich", "http", cfg!(feature = "http"))?;
            enrich.validate()?;
        }
        if let Some(admin) = &self.admin {
            needs("admin", "http", cfg!(feature = "http"))?;
            admin.validate()?;
        }
        match (&self.dead_letter, &self.source, &self.store) {
            (DeadLetterConfig::Kafka(_), SourceConfig::Kafka(_), _) => needs(
                "dead_letter.kind = \"kafka\"",
                "kafka",
                cfg!(feature = "kafka"),
            ),
            (DeadLetterConfig::Kafka(_), _, _) => {
                invalid("dead_letter.kind = \"kafka\"", Problem::NeedsKafkaSource)
            }
            (DeadLetterConfig::RedisStream(_), _, StoreConfig::Memory) => invalid(
                "dead_letter.kind = \"redis-stream\"",
                Problem::NeedsRedisStore,
            ),
            (DeadLetterConfig::RedisStream(_), _, StoreConfig::RedisCluster(_)) => {
                invalid("dead_letter.kind = \"redis-stream\"", Problem::NotOnCluster)
            }
            (DeadLetterConfig::RedisStream(_), _, _) => needs(
                "dead_letter.kind = \"redis-stream\"",
                "redis",
                cfg!(feature = "redis"),
            ),
        }
    }

    fn validate_rule(&self) -> Result<(), ConfigError> {
        let rule = &self.rule;
        if !rule.path.is_file() {
            return invalid("rule.path", Problem::NotAFile(rule.path.clone()));
        }
        if rule.deadline_ms == 0 {
            return invalid("rule.deadline_ms", Problem::NotPositive);
        }
        if rule.memory_mib == 0 {
            return invalid("rule.memory_mib", Problem::NotPositive);
        }
        if rule.gates.check_histories == 0 {
            return invalid("rule.gates.check_histories", Problem::NotPositive);
        }
        if rule.max_component_bytes == 0 {
            return invalid("rule.max_component_bytes", Problem::NotPositive);
        }
        let mut trusted = std::collections::HashSet::new();
        if let Some(twice) = rule.trusted_keys.iter().find(|key| !trusted.insert(**key)) {
            return invalid("rule.trusted_keys", Problem::DuplicateKey(twice.id()));
        }
        if let Some(fleet) = &rule.fleet
            && rule.trusted_keys.is_empty()
            && !fleet.allow_unsigned
        {
            return invalid("rule.fleet", Problem::UnsignedFleet);
        }
        if let Some(auto_rollback) = &rule.auto_rollback {
            let increase = auto_rollback.max_ignore_share_increase;
            // NaN fails both comparisons.
            if !(increase > 0.0 && increase < 1.0) {
                return invalid(
                    "rule.auto_rollback.max_ignore_share_increase",
                    Problem::NotAFraction(increase),
                );
            }
            if auto_rollback.min_decisions == 0 {
                return invalid("rule.auto_rollback.min_decisions", Problem::NotPositive);
            }
        }
        if let Some(fleet) = &rule.fleet {
            needs("rule.fleet", "redis", cfg!(feature = "redis"))?;
            if fleet.name.trim().is_empty() || fleet.name.contains(['{', '}']) {
                return invalid("rule.fleet.name", Problem::FleetName);
            }
            #[cfg(feature = "redis")]
            if let Err(error) = redis::Client::open(fleet.redis.as_str()) {
                return invalid("rule.fleet.redis", Problem::NotARedisUrl(error));
            }
        }
        Ok(())
    }
}

impl SourceConfig {
    fn validate(&self) -> Result<(), ConfigError> {
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

impl StoreConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let (prefix, timeout_ms) = match self {
            StoreConfig::Memory => return Ok(()),
            StoreConfig::Redis(redis) => (&redis.prefix, redis.timeout_ms),
            StoreConfig::RedisCluster(cluster) => {
                if cluster.urls.is_empty() {
                    return invalid("store.urls", Problem::NoClusterNode);
                }
                (&cluster.prefix, cluster.timeout_ms)
            }
        };
        needs("store.kind", "redis", cfg!(feature = "redis"))?;
        if prefix.is_empty() {
            return invalid("store.prefix", Problem::Empty);
        }
        if timeout_ms == 0 {
            return invalid("store.timeout_ms", Problem::NotPositive);
        }
        Ok(())
    }
}

impl EnrichConfig {
    /// Checks the URL template and limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.url.contains("{key}") {
            return invalid(
                "enrich.url",
                Problem::NoKeyPlaceholder(crate::redact::redact(&self.url).into_owned()),
            );
        }
        if self.concurrency == 0 {
            return invalid("enrich.concurrency", Problem::NotPositive);
        }
        Ok(())
    }
}

/// Sets `a.b.c=value` in `table`, creating tables on the way.
fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<(), ConfigError> {
    let refuse = |problem| ConfigError::Override {
        assignment: assignment.to_owned(),
        problem,
    };
    let (path, raw) = assignment
        .split_once('=')
        .ok_or_else(|| refuse(OverrideProblem::NotAnAssignment))?;
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut parsed| parsed.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    let mut names: Vec<&str> = path.trim().split('.').collect();
    let last = names.pop().filter(|name| !name.is_empty());
    let last = last.ok_or_else(|| refuse(OverrideProblem::EmptyName))?;
    let mut current = table;
    for name in names {
        let entry = current
            .entry(name.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| refuse(OverrideProblem::NotATable(name.to_owned())))?;
    }
    current.insert(last.to_owned(), value);
    Ok(())
}

/// Expands `${NAME}` in every string value of `table`, nested ones included.
fn expand_strings(
    table: &mut toml::Table,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<(), UnsetVariable> {
    fn expand_value(
        value: &mut toml::Value,
        lookup: &impl Fn(&str) -> Option<String>,
    ) -> Result<(), UnsetVariable> {
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

/// The name of an environment variable a `${NAME}` refers to that is not set.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UnsetVariable(String);

/// Replaces every `${NAME}` with `lookup(NAME)`; the first one missing is an error.
fn expand_variables(
    text: &str,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<String, UnsetVariable> {
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
        out.push_str(&lookup(name).ok_or_else(|| UnsetVariable(name.to_owned()))?);
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
        assert_eq!(
            expand_variables("${NOPE}", &lookup),
            Err(UnsetVariable("NOPE".to_owned()))
        );
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
            matches!(config.store, StoreConfig::Redis(ref redis) if redis.prefix == "converge:state:")
        );
        assert_eq!(config.pipeline, PipelineConfig::default());
        let validated = config.validate();
        if cfg!(all(feature = "kafka", feature = "redis")) {
            validated.expect("valid");
        } else {
            // A build without the transports refuses it, naming the feature.
            assert!(
                matches!(validated, Err(ConfigError::NeedsFeature { .. })),
                "{validated:?}"
            );
        }
    }

    #[test]
    fn the_shipped_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/converge.example.toml");
        // Loaded as `serve` loads it (variables expanded), short of validating the rule path.
        let error = Config::load(&path).expect_err("the example's rule is not built here");
        assert!(
            matches!(
                error,
                ConfigError::Invalid {
                    setting: "rule.path",
                    ..
                }
            ),
            "{error}"
        );
        let example = include_str!("../../deploy/converge.example.toml");
        let config = parse(example).expect("deploy/converge.example.toml parses");
        assert!(config.admin.is_some());
        assert!(matches!(config.source, SourceConfig::Kafka(_)));
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
            SourceConfig::Kafka(kafka) => {
                assert_eq!(kafka.brokers, "kafka-1:9092,kafka-2:9092");
                assert_eq!(kafka.topics, ["a", "b"]);
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
    fn properties_that_break_at_least_once_are_refused_by_name() {
        let with = |property: &str, value: &str| {
            let mut config = parse(VALID).expect("parses");
            if let SourceConfig::Kafka(kafka) = &mut config.source {
                kafka
                    .properties
                    .insert(property.to_owned(), value.to_owned());
            }
            config.validate()
        };
        if !cfg!(feature = "kafka") {
            // Without Kafka the source itself is refused, before its properties.
            assert!(matches!(
                with("acks", "1"),
                Err(ConfigError::NeedsFeature { .. })
            ));
            return;
        }
        for (property, value) in [
            ("enable.auto.offset.store", "true"),
            ("enable.auto.offset.store", "1"),
            ("acks", "1"),
            ("acks", "0"),
            ("request.required.acks", "1"),
            ("auto.offset.reset", "latest"),
            ("auto.offset.reset", "largest"),
            ("isolation.level", "read_uncommitted"),
        ] {
            let error = with(property, value).expect_err(property);
            let ConfigError::Invalid {
                setting: "source.properties",
                problem:
                    Problem::BreaksAtLeastOnce {
                        property: named, ..
                    },
            } = &error
            else {
                panic!("{property} = {value}: {error}");
            };
            assert_eq!(named, property);
            assert!(error.to_string().contains(property), "{error}");
        }
        // What keeps the guarantee passes (in a build with the transports).
        if cfg!(all(feature = "kafka", feature = "redis")) {
            with("enable.auto.offset.store", "false").expect("valid");
            with("acks", "all").expect("valid");
            with("acks", "-1").expect("valid");
            with("auto.offset.reset", "earliest").expect("valid");
            with("isolation.level", "read_committed").expect("valid");
            with("security.protocol", "SASL_SSL").expect("valid");
        }
    }

    #[test]
    fn wedge_a_fleet_without_trusted_keys_is_refused_unless_unsigned_rules_are_allowed() {
        if !cfg!(all(feature = "kafka", feature = "redis")) {
            // The configuration names transports this build refuses first.
            return;
        }
        let mut config = parse(VALID).expect("parses");
        config.rule.trusted_keys.clear();
        config.rule.fleet = Some(FleetConfig {
            redis: "redis://127.0.0.1:6379".to_owned(),
            name: "kitchen".to_owned(),
            instance: None,
            allow_unsigned: false,
        });
        let error = config.validate().expect_err("refused");
        assert!(
            matches!(
                error,
                ConfigError::Invalid {
                    setting: "rule.fleet",
                    problem: Problem::UnsignedFleet
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("allow_unsigned"), "{error}");
        if let Some(fleet) = &mut config.rule.fleet {
            fleet.allow_unsigned = true;
        }
        config.validate().expect("allowed explicitly");
    }

    #[test]
    fn redis_stream_dead_letters_are_refused_beside_a_cluster_store() {
        let mut config = parse(VALID).expect("parses");
        config.source = SourceConfig::File(FileSourceConfig { path: "-".into() });
        config.store = StoreConfig::RedisCluster(RedisClusterConfig {
            urls: vec!["redis://127.0.0.1:7000".to_owned()],
            prefix: DEFAULT_PREFIX.to_owned(),
            timeout_ms: DEFAULT_STORE_TIMEOUT_MS,
            wait_replicas: 0,
            wait_timeout_ms: DEFAULT_WAIT_TIMEOUT_MS,
        });
        config.dead_letter =
            DeadLetterConfig::RedisStream(RedisStreamConfig::named("converge:dead-letters"));
        let error = config.validate().expect_err("refused");
        if !cfg!(feature = "redis") {
            // Without Redis the store itself is refused first.
            assert!(matches!(error, ConfigError::NeedsFeature { .. }), "{error}");
            return;
        }
        assert!(
            matches!(
                error,
                ConfigError::Invalid {
                    problem: Problem::NotOnCluster,
                    ..
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("Redis Cluster"), "{error}");
    }

    #[test]
    fn an_admin_endpoint_off_loopback_needs_a_strong_token() {
        let admin: AdminConfig = toml::from_str("").expect("[admin] alone parses");
        assert_eq!(admin, AdminConfig::default());
        assert!(admin.listen.ip().is_loopback());
        admin
            .validate()
            .expect("loopback without a token is allowed");
        let exposed = AdminConfig {
            listen: "0.0.0.0:9898".parse().expect("address"),
            ..AdminConfig::default()
        };
        let error = exposed.validate().expect_err("refused");
        assert!(
            matches!(
                error,
                ConfigError::Invalid {
                    setting: "admin.listen",
                    problem: Problem::ExposedWithoutToken(_)
                }
            ),
            "{error}"
        );
        assert!(
            error.to_string().contains("CONVERGE_ADMIN_TOKEN"),
            "{error}"
        );
        for listen in ["[::]:9898", "[::ffff:10.0.0.1]:9898", "10.1.2.3:9898"] {
            let exposed = AdminConfig {
                listen: listen.parse().expect("address"),
                ..AdminConfig::default()
            };
            assert!(exposed.validate().is_err(), "{listen}");
        }
        for listen in ["127.0.0.2:9898", "[::1]:9898", "[::ffff:127.0.0.1]:9898"] {
            let loopback = AdminConfig {
                listen: listen.parse().expect("address"),
                ..AdminConfig::default()
            };
            loopback.validate().expect(listen);
        }
        let with_token = |token: &str| AdminConfig {
            listen: "0.0.0.0:9898".parse().expect("address"),
            token: Some(crate::redact::Secret::new(token)),
            ..AdminConfig::default()
        };
        with_token("0123456789abcdef")
            .validate()
            .expect("16 characters");
        for weak in ["short", "0123456789abcde", "0123456789 abcdef"] {
            let error = with_token(weak).validate().expect_err(weak);
            // The token itself is never quoted.
            assert!(!error.to_string().contains(weak), "{error}");
        }
        let protected = AdminConfig {
            protect_reads: true,
            ..AdminConfig::default()
        };
        assert!(protected.validate().is_err());
        let origins = |origins: &[&str]| AdminConfig {
            allowed_origins: origins.iter().map(|o| (*o).to_owned()).collect(),
            ..AdminConfig::default()
        };
        origins(&["https://ops.example.com", "http://localhost:3000"])
            .validate()
            .expect("origins");
        assert!(origins(&["https://ops.example.com/"]).validate().is_err());
        assert!(origins(&["ops.example.com"]).validate().is_err());
    }

    #[test]
    fn the_admin_token_comes_from_the_file_or_the_environment_not_two_of_them() {
        let token = "0123456789abcdef-from-env";
        let mut admin = AdminConfig::default();
        admin.take_token_from_env(None).expect("nothing to take");
        assert_eq!(admin.token, None);
        admin
            .take_token_from_env(Some(token.to_owned()))
            .expect("taken");
        assert_eq!(admin.token.as_ref().map(|t| t.expose()), Some(token));
        // The same value twice (`token = "${CONVERGE_ADMIN_TOKEN}"`) is fine.
        admin
            .take_token_from_env(Some(token.to_owned()))
            .expect("same");
        let error = admin
            .take_token_from_env(Some("another-token-0123456789".to_owned()))
            .expect_err("two tokens");
        assert!(
            matches!(
                error,
                ConfigError::Invalid {
                    setting: "admin.token",
                    problem: Problem::TokenConflict
                }
            ),
            "{error}"
        );
        // Debug never shows it.
        assert!(!format!("{admin:?}").contains(token));
    }

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

    #[test]
    fn a_url_quoted_in_an_error_has_no_password() {
        let enrich = EnrichConfig {
            url: "http://api:hunter2-enrich@orders.internal/orders".to_owned(),
            ..serde_json::from_value(serde_json::json!({"url": "{key}"})).expect("enrich")
        };
        let error = enrich.validate().expect_err("no placeholder");
        let text = error.to_string();
        assert!(!text.contains("hunter2-enrich"), "{text}");
        assert!(text.contains("api:***@orders.internal"), "{text}");
    }

    #[test]
    fn auto_rollback_is_off_by_default_and_its_settings_are_validated() {
        let config = parse(VALID).expect("parses");
        assert_eq!(config.rule.auto_rollback, None);
        let with = |section: &str| {
            let text = VALID.replace(
                "[source]",
                &format!("[rule.auto_rollback]\n{section}\n[source]"),
            );
            parse(&text).map(|config| (config.rule.auto_rollback, config.validate_rule()))
        };
        let (defaults, valid) = with("").expect("parses");
        assert_eq!(defaults, Some(AutoRollbackConfig::default()));
        valid.expect("the defaults are valid");
        for bad in [
            "max_ignore_share_increase = 0.0",
            "max_ignore_share_increase = 1.0",
            "max_ignore_share_increase = -0.1",
            "max_ignore_share_increase = nan",
            "min_decisions = 0",
        ] {
            let (_, validated) = with(bad).expect("parses");
            assert!(
                matches!(validated, Err(ConfigError::Invalid { setting, .. }) if setting.starts_with("rule.auto_rollback.")),
                "{bad}: {validated:?}"
            );
        }
        assert!(
            with("max_share = 0.2").is_err(),
            "unknown fields are refused"
        );
    }

    #[test]
    fn inconsistent_choices_are_refused_before_connecting() {
        let mut config = parse(VALID).expect("parses");
        config.source = SourceConfig::File(FileSourceConfig { path: "-".into() });
        assert!(config.validate().is_err());
        let mut config = parse(VALID).expect("parses");
        config.rule.path = "does/not/exist.wasm".into();
        assert!(config.validate().is_err());
    }
}
