//! The enrich stage, the seed's final design: a message that carries only an order id is
//! completed by fetching the latest order from the order-detail HTTP API ([`Enricher`], set by
//! [`Pipeline::with_enricher`](super::Pipeline::with_enricher); without one, id-only messages
//! are dead-lettered). A build without the `http` feature has `enrich_disabled.rs` in this
//! file's place: the same API, and no client.
//!
//! Each distinct key of a batch is fetched once, at most `concurrency` at a time, each request
//! bounded by `timeout`, its body read up to the largest message. What the API answers decides:
//!
//! - an event of the key: enriched;
//! - unreachable, timed out, 5xx, 429, or 401/403 (converge's credentials refused: an operator
//!   must act, and nothing about the order is known): an outage. By default it is waited out
//!   with backoff, holding the batch like a store outage; with `on_unavailable = "dead-letter"`
//!   the key's messages are dead-lettered after `retries` retries;
//!   One key failing so for `key_give_up_ms` while the API answers other keys (in its batch,
//!   a later one, or asked again to tell) is a broken entity, not an outage: final;
//! - 404: retried for `not_found_grace_ms` (the API may not show a new order yet), then final;
//! - another 4xx, a body over the limit, or a body that is not an event of the key: final.
//!
//! Final answers dead-letter the key's messages as `not_enriched` (in the group stage), with
//! the reason.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt as _;

use super::PipelineError;
use super::context::Context;
use super::decode::{DecodeError, Decoded, FieldMapping, decode_bytes};
use super::enrich_config::{EnrichConfig, OnUnavailable};
use crate::backoff::Backoff;
use crate::config::ConfigError;
use crate::entity::Event;
use crate::telemetry::events::Unavailable;
use crate::telemetry::{Metrics, Operation, Service, Stage};

/// Each id-only key's answer: its entity, or why it could not be fetched.
pub(super) type Fetched = HashMap<String, Result<Event, EnrichError>>;

/// Fetches the entity of every distinct id-only key of the batch, if an enricher is set. An
/// order-API outage is waited out inside ([`Enricher::fetch_all`]); shutdown interrupts the
/// wait, leaving the batch unacknowledged.
pub(super) async fn enrich(
    enricher: Option<&Enricher>,
    decoded: &[(usize, Decoded)],
    mapping: &FieldMapping,
    context: &Context,
) -> Result<Fetched, PipelineError> {
    let Some(enricher) = enricher else {
        return Ok(HashMap::new());
    };
    let id_only = decoded.iter().filter_map(|(_, decoded)| match decoded {
        Decoded::IdOnly { key } => Some(key.clone()),
        Decoded::Event(_) => None,
    });
    let asked = Instant::now();
    let fetched = context
        .unless_stopped(
            Service::OrderApi,
            enricher.fetch_all(id_only, mapping, &context.metrics),
        )
        .await?;
    if !fetched.is_empty() {
        context
            .metrics
            .record_enrichment(fetched.len(), asked.elapsed());
        context.metrics.record_stage(Stage::Enrich, asked.elapsed());
    }
    Ok(fetched)
}

/// Why an entity could not be fetched. Each is final for the batch: the messages of the key
/// are dead-lettered as `not_enriched` with this as the reason.
#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    /// The API has no entity of the key (HTTP 404), still after the grace period.
    #[error("order API has no entity {key:?} (404, still after {grace:?})")]
    NotFound {
        /// The key asked for.
        key: String,
        /// How long 404s were retried.
        grace: Duration,
    },
    /// The API refused the request with a 4xx other than 401, 403, 404 and 429, which a retry
    /// would not change.
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
    /// The key kept failing as an outage does for `enrich.key_give_up_ms`, while the API
    /// answered other keys: a broken entity, not an outage, so it is not waited out.
    #[error(
        "order API kept failing for {key:?} for {waited:?} ({attempts} attempts) while it \
         answered other keys; last answer: {last}"
    )]
    KeyFailing {
        /// The key asked for.
        key: String,
        /// How many requests were made.
        attempts: u32,
        /// How long since its first failure.
        waited: Duration,
        /// The last attempt's failure (an HTTP status, or why the request failed).
        last: String,
    },
    /// Every attempt was answered with a 5xx, 429, 401 or 403; the last status is kept.
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
    /// The last key the API answered, and when: what tells one failing key from an outage.
    answered: Arc<Mutex<Option<Answered>>>,
}

/// A key the API answered with its entity.
#[derive(Debug, Clone)]
struct Answered {
    key: String,
    at: Instant,
}

/// One attempt's failure: worth retrying or not.
enum Attempt {
    /// Worth another attempt after a backoff.
    Transient(Transient),
    /// A 404, final once the grace period is over.
    NotFound,
    /// The answer for the key.
    Final(EnrichError),
}

/// A failure a later attempt may not meet.
#[derive(Debug)]
enum Transient {
    /// The request or the body's transfer failed.
    Request(reqwest::Error),
    /// The API answered 5xx, 429, 401 or 403.
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
        Ok(Self {
            client,
            config,
            answered: Arc::default(),
        })
    }

    /// Fetches every distinct key once; answers per key. Outages are reported to `metrics`
    /// (one log line and one count per failed attempt).
    pub async fn fetch_all(
        &self,
        keys: impl IntoIterator<Item = String>,
        mapping: &FieldMapping,
        metrics: &Metrics,
    ) -> HashMap<String, Result<Event, EnrichError>> {
        let mut distinct: Vec<String> = keys.into_iter().collect();
        distinct.sort();
        distinct.dedup();
        futures::stream::iter(distinct)
            .map(|key| async move {
                let result = self.fetch(&key, mapping, metrics).await;
                (key, result)
            })
            .buffer_unordered(self.config.concurrency)
            .collect()
            .await
    }

    async fn fetch(
        &self,
        key: &str,
        mapping: &FieldMapping,
        metrics: &Metrics,
    ) -> Result<Event, EnrichError> {
        let mut backoff = Backoff::new(
            Duration::from_millis(self.config.backoff_ms),
            Duration::from_millis(self.config.max_backoff_ms),
        );
        let grace = Duration::from_millis(self.config.not_found_grace_ms);
        let give_up = Duration::from_millis(self.config.key_give_up_ms);
        let mut first_not_found: Option<Instant> = None;
        let mut first_failure: Option<Instant> = None;
        // When the API was first seen answering other keys while this one failed.
        let mut healthy_since: Option<Instant> = None;
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.attempt(key, mapping).await {
                Ok(event) => {
                    self.remember_answered(key);
                    return Ok(event);
                }
                Err(Attempt::Final(error)) => return Err(error),
                Err(Attempt::NotFound) => {
                    let since = *first_not_found.get_or_insert_with(Instant::now);
                    if since.elapsed() >= grace {
                        return Err(EnrichError::NotFound {
                            key: key.to_owned(),
                            grace,
                        });
                    }
                    let wait = backoff.next_wait();
                    tracing::debug!(key, ?wait, "order API has no such entity yet; asking again");
                    tokio::time::sleep(wait).await;
                }
                Err(Attempt::Transient(failure)) => {
                    if self.config.on_unavailable == OnUnavailable::DeadLetter
                        && attempts > self.config.retries
                    {
                        return Err(failure.into_error(key, attempts));
                    }
                    // One key failing while the API answers others is a broken entity: it
                    // is given up on once that has lasted `key_give_up_ms` and the API still
                    // answers others. Until the API is seen answering others, it is an
                    // outage, waited out without limit.
                    let since = *first_failure.get_or_insert_with(Instant::now);
                    match healthy_since {
                        None => healthy_since = self.answers_others(key, since, mapping).await,
                        Some(healthy) if healthy.elapsed() >= give_up => {
                            if self.answers_others(key, healthy, mapping).await.is_some() {
                                return Err(EnrichError::KeyFailing {
                                    key: key.to_owned(),
                                    attempts,
                                    waited: since.elapsed(),
                                    last: failure.to_string(),
                                });
                            }
                            healthy_since = None;
                        }
                        Some(_) => {}
                    }
                    let wait = backoff.next_wait();
                    metrics.emit(Unavailable {
                        service: Service::OrderApi,
                        operation: Operation::Fetch,
                        reason: &failure,
                        retry_in: wait,
                    });
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    fn remember_answered(&self, key: &str) {
        *self.answered.lock().unwrap_or_else(PoisonError::into_inner) = Some(Answered {
            key: key.to_owned(),
            at: Instant::now(),
        });
    }

    /// When the API was seen answering a key other than `key` after `since`: another key
    /// answered since then (in this batch or a later one), or — when none was, as with a
    /// batch of only this key — the last key answered, asked again now. `None`: it answers no
    /// key, an outage.
    async fn answers_others(
        &self,
        key: &str,
        since: Instant,
        mapping: &FieldMapping,
    ) -> Option<Instant> {
        let answered = self
            .answered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .filter(|answered| answered.key != key)?;
        if answered.at > since {
            return Some(answered.at);
        }
        match self.attempt(&answered.key, mapping).await {
            Ok(_) => {
                self.remember_answered(&answered.key);
                Some(Instant::now())
            }
            // Any answer about the entity itself shows the API working.
            Err(Attempt::NotFound | Attempt::Final(_)) => Some(Instant::now()),
            Err(Attempt::Transient(_)) => None,
        }
    }

    async fn attempt(&self, key: &str, mapping: &FieldMapping) -> Result<Event, Attempt> {
        let url = self.config.url.replace("{key}", &percent_encode(key));
        let response = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|error| Attempt::Transient(Transient::Request(without_secrets(error))))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(Attempt::NotFound);
        }
        if status.is_server_error()
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
            || status == reqwest::StatusCode::UNAUTHORIZED
            || status == reqwest::StatusCode::FORBIDDEN
        {
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
            .map_err(|error| Attempt::Transient(Transient::Request(without_secrets(error))))?
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

/// `error` with the secrets of its URL (a query parameter such as `api_key`) replaced: its
/// text becomes a log line and a dead letter's reason. (reqwest has already moved a password
/// in the URL into the request's header.)
fn without_secrets(mut error: reqwest::Error) -> reqwest::Error {
    let Some(url) = error.url_mut() else {
        return error;
    };
    let shown = crate::redact::redact(url.as_str()).into_owned();
    if shown == url.as_str() {
        return error;
    }
    match reqwest::Url::parse(&shown) {
        Ok(redacted) => {
            *url = redacted;
            error
        }
        Err(_) => error.without_url(),
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
            on_unavailable: OnUnavailable::Wait,
            retries: 0,
            backoff_ms: 1,
            max_backoff_ms: 1,
            not_found_grace_ms: 0,
            key_give_up_ms: 0,
        };
        assert!(Enricher::new(config).is_err());
    }
}
