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
    pub key: String,
    /// The revision the decision was based on; 0 if the key was absent.
    pub expected_revision: u64,
    pub state: State,
    pub rule: String,
    pub position: String,
}

/// The answer to one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Written {
        revision: u64,
    },
    /// The stored revision was not the expected one; nothing was written.
    Conflict,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store answered something unexpected: {0}")]
    Protocol(String),
    /// The configured store needs a Cargo feature this build lacks.
    #[error("this converge was built without the `{0}` feature, which the store needs")]
    NotBuiltIn(&'static str),
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
