//! Where decided states live: a key -> state map with compare-and-set on a revision.
//!
//! Every stored state carries a revision that increases by one with each write of its key. A
//! write names the revision its decision was based on (0: the key was absent) and succeeds only
//! if that is still the stored revision; otherwise it reports a conflict, and the pipeline
//! reloads the key and decides again. This is what keeps a key from moving backward when two
//! consumers race on it.
//!
//! Its files, and what each holds: the module map in ARCHITECTURE.md.

// `pub(crate)`: `crate::config` names the default prefix by this path, as the Redis store
// re-exports it under its own name.
pub(crate) mod config;
mod memory;
#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "redis")]
pub use self::redis::{
    CAS_ARGS_PER_KEY, COMPARE_AND_SET, DEFAULT_PREFIX, DEFAULT_TIMEOUT, KEYS_PER_CALL, RedisStore,
};
#[cfg(not(feature = "redis"))]
pub use config::DEFAULT_PREFIX;
pub use config::{
    DEFAULT_STORE_TIMEOUT_MS, DEFAULT_WAIT_TIMEOUT_MS, RedisClusterConfig, RedisStoreCommon,
    RedisStoreConfig, StoreConfig,
};
pub use memory::MemoryStore;

/// A fresh write id ([`Write::writer`]): a random base per process, then counting, so ids do
/// not repeat within a process and two processes collide with negligible probability. Never 0.
pub fn new_writer_id() -> u64 {
    static NEXT: std::sync::LazyLock<std::sync::atomic::AtomicU64> =
        std::sync::LazyLock::new(|| std::sync::atomic::AtomicU64::new(rand::random::<u64>()));
    loop {
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if id != 0 {
            return id;
        }
    }
}

/// Whether a stored revision and writer are what a write expects.
pub fn fence_holds(current: Option<&Current>, write: &Write) -> bool {
    let (revision, writer) = current.map_or((0, 0), |c| (c.revision, c.writer));
    revision == write.expected_revision && writer == write.expected_writer
}

use std::time::Duration;

use serde::Serialize;

use crate::entity::State;

/// A state as stored, with what the store keeps beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stored {
    /// The decided state.
    pub state: State,
    /// 1 for the first write of the key, +1 for each later one.
    pub revision: u64,
    /// Who wrote this revision (see [`Write::writer`]); 0 when unknown.
    pub writer: u64,
    /// `name@version` of the rule that decided this state.
    pub rule: String,
    /// The source position of the last event folded into this state.
    pub position: String,
}

/// A key's state as a decision needs it: what the rule decides against, and the revision and
/// writer a compare-and-set based on it expects to find. Loads read only these fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Current {
    /// The decided state.
    pub state: State,
    /// The stored revision (1 for the first write of the key).
    pub revision: u64,
    /// The id of the write that stored this revision; 0 when unknown (a state written before
    /// writers were recorded).
    pub writer: u64,
}

/// One compare-and-set write.
///
/// It lands only if the key's stored revision *and* writer are the expected ones. The revision
/// alone protects a write based on a state read from the store; the writer also protects a
/// write based on a state that an earlier write still in flight will store (the pipeline
/// decides batch N+1 on batch N's result before N is acknowledged): if another writer got in
/// between, the revision may match but the writer does not, and the write is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The key written.
    pub key: String,
    /// The revision the decision was based on; 0 if the key was absent.
    pub expected_revision: u64,
    /// The writer of that revision; 0 if the key was absent or its writer unknown.
    pub expected_writer: u64,
    /// This write's id, unique across instances (random base, counter): a later write may
    /// expect it. Never 0.
    pub writer: u64,
    /// The state to store.
    pub state: State,
    /// `name@version` of the rule that decided the state.
    pub rule: String,
    /// The source position of the last event folded into the state.
    pub position: String,
}

impl Write {
    /// The state this write stored, as a later decision needs it, once it landed as
    /// `revision`.
    pub fn landed(self, revision: u64) -> Current {
        Current {
            state: self.state,
            revision,
            writer: self.writer,
        }
    }
}

/// The answer to one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The state was stored.
    Written {
        /// The key's new revision.
        revision: u64,
    },
    /// The stored revision or writer was not the expected one; nothing was written.
    Conflict {
        /// What is stored instead (`None`: the key is absent), so the key can be decided
        /// again without another load.
        current: Option<Current>,
    },
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
    /// Stored values at state keys that converge cannot read as states: a field that does not
    /// parse, or a value of another type (`WRONGTYPE`). Retrying would not change them; the
    /// pipeline sets their keys aside (their events are dead-lettered, the values left as they
    /// are for an operator) and goes on with the other keys.
    #[error("{}", describe_unreadable(.0))]
    Unreadable(Vec<Unreadable>),
    /// The compare-and-set script answered neither a revision nor -1: the script at its hash
    /// is not converge's.
    #[error("store answered something unexpected: compare-and-set answered {answer}")]
    UnexpectedAnswer {
        /// What the script answered.
        answer: String,
    },
    /// Fewer replicas than `store.wait_replicas` acknowledged a write within
    /// `store.wait_timeout_ms`. The write may be on the primary only; its batch is not
    /// acknowledged, and the wait is retried like an outage.
    #[error(
        "store unavailable: {replicas} of {wanted} replicas acknowledged the write within \
         {waited:?}"
    )]
    NotReplicated {
        /// Replicas that acknowledged.
        replicas: i64,
        /// Replicas wanted.
        wanted: u32,
        /// How long the write waited for them.
        waited: Duration,
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
            StoreError::Unavailable(_) | StoreError::NotReplicated { .. } => true,
            #[cfg(feature = "redis")]
            StoreError::Parse(_) => false,
            StoreError::MalformedState { .. }
            | StoreError::Unreadable(_)
            | StoreError::UnexpectedAnswer { .. }
            | StoreError::NotBuiltIn(_) => false,
        }
    }
}

/// A value at a state key that is not a state converge can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// The key (without the store's prefix).
    pub key: String,
    /// What is wrong: the field that does not parse, or the type of value found.
    pub why: String,
    /// An excerpt of what is stored (at most [`UNREADABLE_EXCERPT_BYTES`] of it), for the
    /// dead letters of the key's events; empty when it could not be read.
    pub stored: String,
}

/// How much of an unreadable value is quoted in its dead letters.
pub const UNREADABLE_EXCERPT_BYTES: usize = 1024;

fn describe_unreadable(unreadable: &[Unreadable]) -> String {
    let mut text = format!("{} stored state(s) unreadable:", unreadable.len());
    for (n, one) in unreadable.iter().enumerate() {
        if n == 3 {
            text.push_str(" …");
            break;
        }
        text.push_str(&format!(" key {:?}: {};", one.key, one.why));
    }
    text
}

/// A state store. Loads and writes take whole batches so that a networked store can pipeline
/// them in one round trip.
#[allow(async_fn_in_trait)] // Used through generics only; no `dyn Store`, so no Send bound needed.
pub trait Store {
    /// The current states of `keys`, in the same order (`None`: absent). Keys whose stored
    /// value is not a readable state fail the whole call with [`StoreError::Unreadable`],
    /// naming every such key of the call.
    async fn load(&self, keys: &[String]) -> Result<Vec<Option<Current>>, StoreError>;

    /// Applies each write atomically and independently; answers in the same order.
    async fn write(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StoreError>;

    /// Makes sure every write this store has made is as durable as configured (Redis: on
    /// `store.wait_replicas` replicas), for writes whose answer was lost and that may have
    /// landed unconfirmed. Errors as a write does. By default there is nothing to wait for.
    async fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The whole stored records of `keys`, with the rule and position beside each state
    /// (`None`: absent), for reports rather than the data path. By default, what
    /// [`Store::load`] reads, with rule and position unknown (empty).
    async fn inspect(&self, keys: &[String]) -> Result<Vec<Option<Stored>>, StoreError> {
        Ok(self
            .load(keys)
            .await?
            .into_iter()
            .map(|current| {
                current.map(|current| Stored {
                    state: current.state,
                    revision: current.revision,
                    writer: current.writer,
                    rule: String::new(),
                    position: String::new(),
                })
            })
            .collect())
    }
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
                    &redis.common.prefix,
                    Duration::from_millis(redis.common.timeout_ms),
                )
                .await?
                .with_wait_replicas(
                    redis.common.wait_replicas,
                    Duration::from_millis(redis.common.wait_timeout_ms),
                ),
            )),
            #[cfg(feature = "redis")]
            StoreConfig::RedisCluster(cluster) => Ok(AnyStore::Redis(
                RedisStore::connect_cluster_with_timeout(
                    &cluster.urls,
                    &cluster.common.prefix,
                    Duration::from_millis(cluster.common.timeout_ms),
                )
                .await?
                .with_wait_replicas(
                    cluster.common.wait_replicas,
                    Duration::from_millis(cluster.common.wait_timeout_ms),
                ),
            )),
            #[cfg(not(feature = "redis"))]
            StoreConfig::Redis(_) | StoreConfig::RedisCluster(_) => {
                Err(StoreError::NotBuiltIn("redis"))
            }
        }
    }
}

impl Store for AnyStore {
    async fn load(&self, keys: &[String]) -> Result<Vec<Option<Current>>, StoreError> {
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

    async fn sync(&self) -> Result<(), StoreError> {
        match self {
            AnyStore::Memory(store) => store.sync().await,
            #[cfg(feature = "redis")]
            AnyStore::Redis(store) => store.sync().await,
        }
    }

    async fn inspect(&self, keys: &[String]) -> Result<Vec<Option<Stored>>, StoreError> {
        match self {
            AnyStore::Memory(store) => store.inspect(keys).await,
            #[cfg(feature = "redis")]
            AnyStore::Redis(store) => store.inspect(keys).await,
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
        assert!(
            !StoreError::UnexpectedAnswer {
                answer: "0".to_owned()
            }
            .is_transient()
        );
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
