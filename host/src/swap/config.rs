//! `[rule]`: which rule serves, its limits, and how it may be swapped (file watch, fleet,
//! automatic rollback), with their defaults and validation.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, Problem, invalid, needs};
use crate::rule::{EngineLimits, GateConfig};

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
    /// Keep compiled rules on disk, so a restart or a second instance loads a big rule in
    /// milliseconds rather than compiling it again (see `rule::CompileCache` for what is
    /// trusted).
    #[serde(default = "default_compile_cache")]
    pub compile_cache: bool,
    /// Where compiled rules are kept: a directory of converge's alone (created 0700, refused
    /// when another user owns it or others may write to it). Default:
    /// `$XDG_CACHE_HOME/converge/rules`, else `$HOME/.cache/converge/rules`.
    #[serde(default)]
    pub compile_cache_dir: Option<PathBuf>,
}

fn default_compile_cache() -> bool {
    true
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
    crate::rule::DEFAULT_MEMORY_MIB
}

impl RuleConfig {
    /// The engine's limits this section sets (the rest at their defaults).
    pub fn engine_limits(&self) -> EngineLimits {
        EngineLimits {
            memory_cap_bytes: self.memory_mib.saturating_mul(1 << 20),
            deadline: std::time::Duration::from_millis(self.deadline_ms),
            max_component_bytes: self.max_component_bytes,
            ..EngineLimits::default()
        }
    }

    /// Checks the limits, the trusted keys, the fleet and automatic rollback.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !self.path.is_file() {
            return invalid("rule.path", Problem::NotAFile(self.path.clone()));
        }
        if self.deadline_ms == 0 {
            return invalid("rule.deadline_ms", Problem::NotPositive);
        }
        if self.memory_mib == 0 {
            return invalid("rule.memory_mib", Problem::NotPositive);
        }
        if self.gates.check_histories == 0 {
            return invalid("rule.gates.check_histories", Problem::NotPositive);
        }
        if self.max_component_bytes == 0 {
            return invalid("rule.max_component_bytes", Problem::NotPositive);
        }
        let mut trusted = std::collections::HashSet::new();
        if let Some(twice) = self.trusted_keys.iter().find(|key| !trusted.insert(**key)) {
            return invalid("rule.trusted_keys", Problem::DuplicateKey(twice.id()));
        }
        if let Some(fleet) = &self.fleet
            && self.trusted_keys.is_empty()
            && !fleet.allow_unsigned
        {
            return invalid("rule.fleet", Problem::UnsignedFleet);
        }
        if let Some(auto_rollback) = &self.auto_rollback {
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
        if let Some(fleet) = &self.fleet {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{VALID, parse};

    #[test]
    fn auto_rollback_is_off_by_default_and_its_settings_are_validated() {
        let config = parse(VALID).expect("parses");
        assert_eq!(config.rule.auto_rollback, None);
        let with = |section: &str| {
            let text = VALID.replace(
                "[source]",
                &format!("[rule.auto_rollback]\n{section}\n[source]"),
            );
            parse(&text).map(|config| (config.rule.auto_rollback, config.rule.validate()))
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
}
