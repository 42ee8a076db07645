//! Why a configuration was refused: [`ConfigError`], and for a setting with a value converge
//! cannot work with, the [`Problem`] each component's validation names.

use std::path::PathBuf;

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

/// Refuses `setting` for `problem`: what a section's validation answers.
pub(crate) fn invalid(setting: &'static str, problem: Problem) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid { setting, problem })
}

/// Refuses a choice of `setting` when `feature` is not compiled in.
pub(crate) fn needs(
    setting: &'static str,
    feature: &'static str,
    built: bool,
) -> Result<(), ConfigError> {
    if built {
        Ok(())
    } else {
        Err(ConfigError::NeedsFeature { setting, feature })
    }
}
