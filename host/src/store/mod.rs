//! Where decided states live: a key -> state map with compare-and-set on a revision.
//!
//! Every stored state carries a revision that increases by one with each write of its key. A
//! write names the revision its decision was based on (0: the key was absent) and succeeds only
//! if that is still the stored revision; otherwise it reports a conflict, and the pipeline
//! reloads the key and decides again. This is what keeps a key from moving backward when two
//! consumers race on it.
//!
//! # Layout
//! - this module: the [`Store`] trait, [`Stored`], [`Write`], [`WriteOutcome`], [`StoreError`];
//! - `memory`: the in-memory store ([`MemoryStore`]), the embedded default;
//! - `redis` (feature `redis`): Redis and Redis Cluster ([`RedisStore`]), compare-and-set in
//!   Lua.

mod memory;
#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "redis")]
pub use self::redis::{COMPARE_AND_SET, DEFAULT_PREFIX, DEFAULT_TIMEOUT, RedisStore};
pub use memory::MemoryStore;

#[cfg(feature = "redis")]
use std::time::Duration;

use serde::Serialize;

use crate::config::StoreConfig;

use crate::entity::State;

/// A state as stored, with what the store keeps beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stored {
    /// The decided state.
    pub state: State,
    /// 1 for the first write of the key, +1 for each later one.
    pub revision: u64,
    /// `name@version` of the rule that decided this state.
    pub rule: String,
    /// The source position of the last event folded into this state.
    pub position: String,
}

/// One compare-and-set write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The key written.
    pub key: String,
    /// The revision the decision was based on; 0 if the key was absent.
    pub expected_revision: u64,
    /// The state to store.
    pub state: State,
    /// `name@version` of the rule that decided the state.
    pub rule: String,
    /// The source position of the last event folded into the state.
    pub position: String,
}

/// The answer to one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The state was stored.
    Written {
        /// The key's new revision.
        revision: u64,
    },
    /// The stored revision was not the expected one; nothing was written.
    Conflict,
}

/// Why a store call failed. [`StoreError::is_transient`] tells an outage, which the pipeline
/// waits out, from an answer that retrying would not change.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis failed: unreachable, connection lost, slower than the timeout, or a command
    /// refused. Transient: converge cannot tell a refused command from a server in trouble,
    /// and a retry after a backoff is what both need.
    #[cfg(feature = "redis")]
    #[error("store unavailable: {0}")]
    Redis(#[source] ::redis::RedisError),
    /// Another [`Store`] implementation could not be reached or did not answer in time.
    /// Transient.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A stored state lacks a field or has one that does not parse: the key was written by
    /// something other than converge, or by an incompatible version.
    #[error(
        "store answered something unexpected: state of key {key:?}: field {field:?} is \
         missing or malformed"
    )]
    MalformedState {
        /// The key whose state is malformed.
        key: String,
        /// The field at fault.
        field: &'static str,
    },
    /// The compare-and-set script answered neither a revision nor -1: the script at its hash
    /// is not converge's.
    #[error("store answered something unexpected: compare-and-set answered {answer}")]
    UnexpectedAnswer {
        /// What the script answered.
        answer: i64,
    },
    /// An answer of Redis did not have the expected type.
    #[cfg(feature = "redis")]
    #[error("store answered something unexpected: {0}")]
    Parse(#[source] ::redis::ParsingError),
    /// The configured store needs a Cargo feature this build lacks.
    #[error("this converge was built without the `{0}` feature, which the store needs")]
    NotBuiltIn(&'static str),
}

impl StoreError {
    /// Whether the failure is an outage to wait out and retry (the store down, a connection
    /// lost, an answer slower than the timeout), rather than an answer retrying would not
    /// change (a malformed state, an unexpected answer, a missing feature).
    pub fn is_transient(&self) -> bool {
        match self {
            #[cfg(feature = "redis")]
            StoreError::Redis(_) => true,
            StoreError::Unavailable(_) => true,
            #[cfg(feature = "redis")]
            StoreError::Parse(_) => false,
            StoreError::MalformedState { .. }
            | StoreError::UnexpectedAnswer { .. }
            | StoreError::NotBuiltIn(_) => false,
        }
    }
}

/// A state store. Loads and writes take whole batches so that a networked store can pipeline
/// them in one round trip.
#[allow(async_fn_in_trait)] // Used through generics only; no `dyn Store`, so no Send bound needed.
pub trait Store {
    /// The stored states of `keys`, in the same order (`None`: absent).
    async fn load(&self, keys: &[String]) -> Result<Vec<Option<Stored>>, StoreError>;

    /// Applies each write atomically and independently; answers in the same order.
    async fn write(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StoreError>;
}

/// A store built from its configuration ([`StoreConfig::open`]).
#[derive(Debug)]
pub enum AnyStore {
    /// In this process's memory.
    Memory(MemoryStore),
    /// Redis or Redis Cluster.
    #[cfg(feature = "redis")]
    Redis(RedisStore),
}

impl StoreConfig {
    /// Connects to the configured store.
    pub async fn open(&self) -> Result<AnyStore, StoreError> {
        match self {
            StoreConfig::Memory => Ok(AnyStore::Memory(MemoryStore::new())),
            #[cfg(feature = "redis")]
            StoreConfig::Redis(redis) => Ok(AnyStore::Redis(
                RedisStore::connect_with_timeout(
                    &redis.url,
                    &redis.prefix,
                    Duration::from_millis(redis.timeout_ms),
                )
                .await?,
            )),
            #[cfg(feature = "redis")]
            StoreConfig::RedisCluster(cluster) => Ok(AnyStore::Redis(
                RedisStore::connect_cluster_with_timeout(
                    &cluster.urls,
                    &cluster.prefix,
                    Duration::from_millis(cluster.timeout_ms),
                )
                .await?,
            )),
            #[cfg(not(feature = "redis"))]
            StoreConfig::Redis(_) | StoreConfig::RedisCluster(_) => {
                Err(StoreError::NotBuiltIn("redis"))
            }
        }
    }
}

impl Store for AnyStore {
    async fn load(&self, keys: &[String]) -> Result<Vec<Option<Stored>>, StoreError> {
        match self {
            AnyStore::Memory(store) => store.load(keys).await,
            #[cfg(feature = "redis")]
            AnyStore::Redis(store) => store.load(keys).await,
        }
    }

    async fn write(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StoreError> {
        match self {
            AnyStore::Memory(store) => store.write(writes).await,
            #[cfg(feature = "redis")]
            AnyStore::Redis(store) => store.write(writes).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_are_transient_and_answers_are_not() {
        assert!(StoreError::Unavailable("connection reset".into()).is_transient());
        assert!(
            !StoreError::MalformedState {
                key: "order-1".to_owned(),
                field: "rev",
            }
            .is_transient()
        );
        assert!(!StoreError::UnexpectedAnswer { answer: 0 }.is_transient());
        assert!(!StoreError::NotBuiltIn("redis").is_transient());
    }

    #[cfg(feature = "redis")]
    #[test]
    fn every_redis_error_is_transient() {
        let refused = ::redis::RedisError::from((::redis::ErrorKind::Io, "connection refused"));
        let error = StoreError::Redis(refused);
        assert!(error.is_transient());
        assert!(error.to_string().contains("connection refused"), "{error}");
        assert!(std::error::Error::source(&error).is_some());
    }
}
