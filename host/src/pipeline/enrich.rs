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
use crate::pipeline::{DecodeError, Decoded, FieldMapping, decode_bytes};

/// Why an entity could not be fetched. Each is final for the batch: the messages of the key
/// are dead-lettered as `not_enriched` with this as the reason.
#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    /// The API has no entity of the key (HTTP 404).
    #[error("order API has no entity {key:?} (404)")]
    NotFound {
        /// The key asked for.
        key: String,
    },
    /// The API refused the request with a 4xx other than 404 and 429, which a retry would
    /// not change.
    #[error("order API refused the request for {key:?}: HTTP {status}")]
    Refused {
        /// The key asked for.
        key: String,
        /// The HTTP status.
        status: u16,
    },
    /// The body is larger than a message may be (`pipeline.mapping.max_message_bytes`); it
    /// is not read further.
    #[error("order API answered for {key:?} with a body over {limit} bytes")]
    TooLarge {
        /// The key asked for.
        key: String,
        /// The limit.
        limit: usize,
    },
    /// The body does not decode into an event.
    #[error("order API answered for {key:?} with a body that is not an event: {source}")]
    Undecodable {
        /// The key asked for.
        key: String,
        /// Why the body does not decode.
        #[source]
        source: DecodeError,
    },
    /// The body is an event of another key.
    #[error(
        "order API answered for {key:?} with a body that is not an event: it describes key \
         {found:?}"
    )]
    OtherKey {
        /// The key asked for.
        key: String,
        /// The key of the event the body describes.
        found: String,
    },
    /// The body decodes to an id only (no status), so it cannot stand for the entity.
    #[error("order API answered for {key:?} with a body that is not an event: it has no status")]
    NoStatus {
        /// The key asked for.
        key: String,
    },
    /// Every attempt failed to reach the API or to read its answer (connection refused, reset,
    /// timed out); the last failure is kept.
    #[error("order API unavailable for {key:?} after {attempts} attempts: {source}")]
    Unreachable {
        /// The key asked for.
        key: String,
        /// How many requests were made.
        attempts: u32,
        /// The last request's failure.
        #[source]
        source: reqwest::Error,
    },
    /// Every attempt was answered with a 5xx or 429; the last status is kept.
    #[error("order API unavailable for {key:?} after {attempts} attempts: HTTP {status}")]
    Unavailable {
        /// The key asked for.
        key: String,
        /// How many requests were made.
        attempts: u32,
        /// The last answer's HTTP status.
        status: u16,
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
    /// Worth another attempt after a backoff.
    Transient(Transient),
    /// The answer for the key.
    Final(EnrichError),
}

/// A failure a later attempt may not meet.
#[derive(Debug)]
enum Transient {
    /// The request or the body's transfer failed.
    Request(reqwest::Error),
    /// The API answered 5xx or 429.
    Status(u16),
}

impl Transient {
    /// The failure as the key's final answer, after `attempts` attempts.
    fn into_error(self, key: &str, attempts: u32) -> EnrichError {
        let key = key.to_owned();
        match self {
            Transient::Request(source) => EnrichError::Unreachable {
                key,
                attempts,
                source,
            },
            Transient::Status(status) => EnrichError::Unavailable {
                key,
                attempts,
                status,
            },
        }
    }
}

impl std::fmt::Display for Transient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transient::Request(error) => write!(f, "{error}"),
            Transient::Status(status) => write!(f, "HTTP {status}"),
        }
    }
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
                Err(Attempt::Transient(failure)) if attempts > self.config.retries => {
                    return Err(failure.into_error(key, attempts));
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
            .map_err(|error| Attempt::Transient(Transient::Request(error)))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(Attempt::Final(EnrichError::NotFound {
                key: key.to_owned(),
            }));
        }
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(Attempt::Transient(Transient::Status(status.as_u16())));
        }
        if !status.is_success() {
            return Err(Attempt::Final(EnrichError::Refused {
                key: key.to_owned(),
                status: status.as_u16(),
            }));
        }
        // Read no more than a message may hold: an API that streams without end must not
        // exhaust memory.
        let limit = mapping.max_message_bytes;
        let too_large = || {
            Attempt::Final(EnrichError::TooLarge {
                key: key.to_owned(),
                limit,
            })
        };
        if response
            .content_length()
            .is_some_and(|length| length > limit as u64)
        {
            return Err(too_large());
        }
        let mut response = response;
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| Attempt::Transient(Transient::Request(error)))?
        {
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        let key = key.to_owned();
        match decode_bytes(mapping, Some(&body), Some(key.as_bytes())) {
            Ok(Decoded::Event(event)) if event.key == key => Ok(event),
            Ok(Decoded::Event(event)) => Err(Attempt::Final(EnrichError::OtherKey {
                key,
                found: event.key,
            })),
            Ok(Decoded::IdOnly { .. }) => Err(Attempt::Final(EnrichError::NoStatus { key })),
            Err(source) => Err(Attempt::Final(EnrichError::Undecodable { key, source })),
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
