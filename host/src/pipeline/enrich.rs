//! Enrichment, the seed's final design: a message that carries only an order id is completed
//! by fetching the latest order from the order-detail HTTP API.
//!
//! Each distinct key of a batch is fetched once, at most `concurrency` at a time, each request
//! bounded by `timeout`. Timeouts, connection errors and 5xx answers are retried with
//! exponential backoff; a 404, another 4xx, or a body that does not decode into an event of the
//! requested key is final and dead-letters the messages of that key with the reason.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt as _;

use crate::config::{ConfigError, EnrichConfig};
use crate::entity::Event;
use crate::pipeline::{Decoded, FieldMapping, decode_bytes};

/// Why an entity could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrichError {
    #[error("order API has no entity {0:?} (404)")]
    NotFound(String),
    #[error("order API refused the request for {key:?}: HTTP {status}")]
    Refused { key: String, status: u16 },
    #[error("order API answered for {key:?} with a body that is not an event: {reason}")]
    Malformed { key: String, reason: String },
    #[error("order API unavailable for {key:?} after {attempts} attempts: {reason}")]
    Unavailable {
        key: String,
        attempts: u32,
        reason: String,
    },
}

/// Fetches latest states from the order-detail API.
#[derive(Debug, Clone)]
pub struct Enricher {
    client: reqwest::Client,
    config: EnrichConfig,
}

/// One attempt's failure: worth retrying or not.
enum Attempt {
    Transient(String),
    Final(EnrichError),
}

/// Why an [`Enricher`] cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum EnrichSetupError {
    /// The configuration is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The HTTP client cannot be built (e.g. no TLS backend).
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

impl Enricher {
    /// Checks `config` and builds the HTTP client.
    pub fn new(config: EnrichConfig) -> Result<Self, EnrichSetupError> {
        config.validate()?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .build()?;
        Ok(Self { client, config })
    }

    /// Fetches every distinct key once; answers per key.
    pub async fn fetch_all(
        &self,
        keys: impl IntoIterator<Item = String>,
        mapping: &FieldMapping,
    ) -> HashMap<String, Result<Event, EnrichError>> {
        let mut distinct: Vec<String> = keys.into_iter().collect();
        distinct.sort();
        distinct.dedup();
        futures::stream::iter(distinct)
            .map(|key| async move {
                let result = self.fetch(&key, mapping).await;
                (key, result)
            })
            .buffer_unordered(self.config.concurrency)
            .collect()
            .await
    }

    async fn fetch(&self, key: &str, mapping: &FieldMapping) -> Result<Event, EnrichError> {
        let mut backoff = Duration::from_millis(self.config.backoff_ms);
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.attempt(key, mapping).await {
                Ok(event) => return Ok(event),
                Err(Attempt::Final(error)) => return Err(error),
                Err(Attempt::Transient(reason)) if attempts > self.config.retries => {
                    return Err(EnrichError::Unavailable {
                        key: key.to_owned(),
                        attempts,
                        reason,
                    });
                }
                Err(Attempt::Transient(reason)) => {
                    tracing::debug!(key, %reason, attempts, "order API attempt failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                }
            }
        }
    }

    async fn attempt(&self, key: &str, mapping: &FieldMapping) -> Result<Event, Attempt> {
        let url = self.config.url.replace("{key}", &percent_encode(key));
        let response = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|error| Attempt::Transient(error.to_string()))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(Attempt::Final(EnrichError::NotFound(key.to_owned())));
        }
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(Attempt::Transient(format!("HTTP {}", status.as_u16())));
        }
        if !status.is_success() {
            return Err(Attempt::Final(EnrichError::Refused {
                key: key.to_owned(),
                status: status.as_u16(),
            }));
        }
        let body = response
            .bytes()
            .await
            .map_err(|error| Attempt::Transient(error.to_string()))?;
        let malformed = |reason: String| {
            Attempt::Final(EnrichError::Malformed {
                key: key.to_owned(),
                reason,
            })
        };
        match decode_bytes(mapping, Some(&body), Some(key.as_bytes())) {
            Ok(Decoded::Event(event)) if event.key == key => Ok(event),
            Ok(Decoded::Event(event)) => {
                Err(malformed(format!("it describes key {:?}", event.key)))
            }
            Ok(Decoded::IdOnly { .. }) => Err(malformed("it has no status".to_owned())),
            Err(error) => Err(malformed(error.to_string())),
        }
    }
}

/// Percent-encodes all but ASCII letters and digits, so any key is one path segment.
fn percent_encode(key: &str) -> String {
    percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_one_path_segment() {
        assert_eq!(percent_encode("order1"), "order1");
        assert_eq!(percent_encode("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn a_url_without_placeholder_is_refused() {
        let config = EnrichConfig {
            url: "http://orders/".to_owned(),
            concurrency: 1,
            timeout_ms: 1,
            retries: 0,
            backoff_ms: 1,
        };
        assert!(Enricher::new(config).is_err());
    }
}
