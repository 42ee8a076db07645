//! `[enrich]`: how to reach the order-detail API that completes id-only messages, what to do
//! while it cannot answer, with the defaults and validation. Compiled with or without the
//! `http` feature, so that a configuration naming it is refused by name rather than unparsed.

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, Problem, invalid};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
