//! The Redis store: standalone Redis or Redis Cluster, one compare-and-set Lua script per key.
//!
//! # Key layout
//!
//! Each key's state is one hash at `{prefix}{key}` (the prefix defaults to `converge:state:`):
//!
//! | field          | value                                                     |
//! |----------------|-----------------------------------------------------------|
//! | `rev`          | revision: 1 after the first write, +1 per write           |
//! | `wid`          | id of the write that stored this revision (decimal u64)   |
//! | `status`       | the entity's status                                       |
//! | `version`      | the source's version counter, decimal                     |
//! | `timestamp_ms` | the source timestamp, milliseconds, decimal               |
//! | `payload`      | the entity body, canonical JSON text                      |
//! | `rule`         | `name@version` of the rule that decided this state        |
//! | `position`     | source position of the last event folded into this state  |
//!
//! `rev` and `wid` are the compare-and-set's fence, in canonical decimal (no sign, no leading
//! zero), or the state is unreadable and its key set aside — the script compares them as text
//! and as a Lua number, so any other spelling would conflict on every write. A `wid` without a
//! `rev` is unreadable too; a `rev` without a `wid` (states written before writers were
//! recorded) reads as writer 0, as the script reads it.
//!
//! One hash per key keeps every write single-key, so the same script runs unchanged on Redis
//! Cluster. Loads (`HMGET` of the fields a decision needs: not `rule` nor `position`) and
//! writes of a batch go out as one pipeline; on a cluster, one pipeline per node, all in flight
//! at once (keys grouped by the node that serves their slot, as the client last saw the
//! cluster). After a restart or `SCRIPT FLUSH` the script is re-sent with `EVAL` for exactly the
//! writes that met `NOSCRIPT`.
//!
//! The compare-and-set answers the new revision, or, on a conflict, the stored state, so a
//! conflicted key is decided again without another load. On standalone Redis one script call
//! sets up to [`KEYS_PER_CALL`] keys, each checked and written on its own.
//!
//! Its files, and what each holds: the module map in ARCHITECTURE.md.

mod parse;
mod script;
mod slot_map;
mod testing;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use redis::{Pipeline, Script};

use crate::store::{
    Current, Store, StoreError, Stored, UNREADABLE_EXCERPT_BYTES, Unreadable, Write, WriteOutcome,
};
use parse::{
    FIELDS, INSPECTED, bulk_len, command_error, cut_excerpt, excerpt_of_fields, is_wrong_type,
    parse_current, parse_outcome, text_fields, write_bytes,
};
use script::cas_command;
pub use script::{CAS_ARGS_PER_KEY, COMPARE_AND_SET, KEYS_PER_CALL};
use slot_map::{Group, SlotMap};

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = crate::config::DEFAULT_PREFIX;

/// The connections a store talks on.
#[derive(Clone)]
enum Connection {
    /// Loads go on their own connection, so a batch's loads do not queue behind the writes
    /// of the batches still in flight (keys in flight are never loaded; see the pipeline's
    /// cache).
    Standalone {
        writes: ConnectionManager,
        reads: ConnectionManager,
    },
    Cluster {
        connection: ClusterConnection,
        reads: ClusterConnection,
        /// Which node serves which slots, as last read; batches are split by node with it.
        nodes: Arc<RwLock<SlotMap>>,
    },
}

/// States in Redis. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct RedisStore {
    connection: Connection,
    prefix: String,
    script: Script,
    /// Replicas each write must reach (`WAIT`) and how long it may wait; none: the
    /// primary's answer is enough.
    replication: Option<(u32, Duration)>,
    /// The largest state seen (read, written, or guessed from a load that timed out), in
    /// bytes: it sets how many keys one load pipeline asks for.
    largest_state: Arc<AtomicUsize>,
}

/// The most bytes of states one pipeline carries: a batch of large states goes in several
/// round trips, each well within `store.timeout_ms`, rather than one that times out on every
/// attempt.
pub const PIPELINE_BYTES: usize = 4 << 20;

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.connection {
            Connection::Standalone { .. } => "standalone",
            Connection::Cluster { .. } => "cluster",
        };
        f.debug_struct("RedisStore")
            .field("kind", &kind)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// How long a connection attempt or an answer may take unless configured otherwise.
pub const DEFAULT_TIMEOUT: Duration =
    Duration::from_millis(crate::config::DEFAULT_STORE_TIMEOUT_MS);

impl RedisStore {
    /// Connects to a standalone server (`redis://`, `rediss://` URLs with user and password)
    /// with the default timeout.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        Self::connect_with_timeout(url, prefix, DEFAULT_TIMEOUT).await
    }

    /// Connects to a standalone server; a connection attempt or an answer taking longer than
    /// `timeout` fails as unavailable (and the pipeline retries after a backoff). A lost
    /// connection is re-established on the next call.
    pub async fn connect_with_timeout(
        url: &str,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(StoreError::Redis)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // Reconnection is retried by the pipeline, with its own backoff.
            .set_number_of_retries(1);
        let writes = client
            .get_connection_manager_with_config(config.clone())
            .await
            .map_err(StoreError::Redis)?;
        let reads = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(StoreError::Redis)?;
        Ok(Self::new(Connection::Standalone { writes, reads }, prefix))
    }

    /// Connects to a Redis Cluster through any of its nodes, with the default timeout.
    pub async fn connect_cluster(urls: &[String], prefix: &str) -> Result<Self, StoreError> {
        Self::connect_cluster_with_timeout(urls, prefix, DEFAULT_TIMEOUT).await
    }

    /// Connects to a Redis Cluster; `timeout` as for [`RedisStore::connect_with_timeout`].
    pub async fn connect_cluster_with_timeout(
        urls: &[String],
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let client = redis::cluster::ClusterClient::builder(urls.iter().map(String::as_str))
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .build()
            .map_err(StoreError::Redis)?;
        let connection = client
            .get_async_connection()
            .await
            .map_err(StoreError::Redis)?;
        let reads = client
            .get_async_connection()
            .await
            .map_err(StoreError::Redis)?;
        let store = Self::new(
            Connection::Cluster {
                connection,
                reads,
                nodes: Arc::default(),
            },
            prefix,
        );
        store.read_slot_map().await?;
        Ok(store)
    }

    fn new(connection: Connection, prefix: &str) -> Self {
        Self {
            connection,
            prefix: prefix.to_owned(),
            script: Script::new(COMPARE_AND_SET),
            replication: None,
            largest_state: Arc::default(),
        }
    }

    /// Keys per load pipeline: [`PIPELINE_BYTES`] of states as large as the largest seen.
    fn keys_per_load(&self) -> usize {
        (PIPELINE_BYTES / self.largest_state.load(Ordering::Relaxed).max(1)).max(1)
    }

    fn saw_state(&self, bytes: usize) {
        self.largest_state.fetch_max(bytes, Ordering::Relaxed);
    }

    /// Answers a write only once `replicas` replicas have it (`WAIT`, sent in the write's
    /// pipeline, so on its connection); fewer within `timeout` fails the write as
    /// [`StoreError::NotReplicated`]. 0: the primary's answer is enough.
    pub fn with_wait_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.replication = (replicas > 0).then_some((replicas, timeout));
        self
    }

    /// Appends the replication wait, if any, to a write pipeline.
    fn wait_for_replicas(&self, pipe: &mut Pipeline) {
        if let Some((replicas, timeout)) = self.replication {
            pipe.cmd("WAIT")
                .arg(replicas)
                .arg(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        }
    }

    /// Takes the replication wait's answer off the end of a write pipeline's answers.
    fn replicated(&self, answers: &mut Vec<redis::Value>) -> Result<(), StoreError> {
        let Some((wanted, waited)) = self.replication else {
            return Ok(());
        };
        let answer = answers.pop().ok_or_else(|| StoreError::UnexpectedAnswer {
            answer: "no answer to WAIT".to_owned(),
        })?;
        let replicas: i64 =
            redis::from_redis_value(command_error(answer)?).map_err(StoreError::Parse)?;
        if replicas < i64::from(wanted) {
            return Err(StoreError::NotReplicated {
                replicas,
                wanted,
                waited,
            });
        }
        Ok(())
    }

    /// The prefix of every key this store writes.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The server's `maxmemory-policy`, if it tells (a managed Redis may refuse `CONFIG`; on a
    /// cluster, one node's). Any policy but `noeviction` lets Redis drop state keys under
    /// memory pressure: a dropped key starts over from the next event, and a cached state
    /// then disagrees with the store.
    pub async fn eviction_policy(&self) -> Option<String> {
        let mut command = redis::cmd("CONFIG");
        command.arg("GET").arg("maxmemory-policy");
        let answer: redis::RedisResult<Vec<String>> = match &self.connection {
            Connection::Standalone { reads, .. } => command.query_async(&mut reads.clone()).await,
            Connection::Cluster { reads, .. } => command.query_async(&mut reads.clone()).await,
        };
        answer.ok()?.into_iter().nth(1)
    }

    /// The Redis key holding `key`'s state.
    fn redis_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Sends one group's pipeline; a cluster group goes to the node serving its slot. Each
    /// command's answer or error comes back in order.
    async fn query(
        &self,
        group: &Group,
        pipe: Pipeline,
        access: Access,
    ) -> Result<Vec<redis::Value>, StoreError> {
        let answer = match (&self.connection, group.slot) {
            (Connection::Standalone { writes, reads }, _) => {
                let manager = match access {
                    Access::Read => reads,
                    Access::Write => writes,
                };
                pipe.query_async(&mut manager.clone()).await
            }
            (
                Connection::Cluster {
                    connection, reads, ..
                },
                slot,
            ) => {
                let connection = match access {
                    Access::Read => reads,
                    Access::Write => connection,
                };
                let route = match slot {
                    Some(slot) => SingleNodeRoutingInfo::SpecificNode(Route::with_slot(
                        slot,
                        SlotAddr::Master,
                    )),
                    None => SingleNodeRoutingInfo::RandomPrimary,
                };
                let count = pipe.cmd_iter().count();
                let answer = connection
                    .clone()
                    .route_pipeline(pipe, 0, count, route)
                    .await;
                if answer.is_err() {
                    // A slot may have moved: group by the cluster's current layout next time.
                    let _ = self.read_slot_map().await;
                }
                answer
            }
        };
        answer.map_err(StoreError::Redis)
    }

    /// Loads one group's keys, in pipelines of [`Self::keys_per_load`] keys, one after the
    /// other. A pipeline that times out makes the next ones half as long: states too large
    /// for one round trip are loaded in smaller ones on the retry, down to one key.
    async fn load_group(
        &self,
        group: &Group,
        redis_keys: &[String],
    ) -> Result<Vec<redis::Value>, StoreError> {
        let mut answers = Vec::with_capacity(group.items.len());
        for part in group.items.chunks(self.keys_per_load()) {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for &index in part {
                pipe.cmd("HMGET").arg(&redis_keys[index]).arg(&FIELDS[..]);
            }
            match self.query(group, pipe, Access::Read).await {
                Ok(values) => {
                    for value in &values {
                        if let redis::Value::Array(fields) = value {
                            let bytes = fields.iter().map(bulk_len).sum();
                            self.saw_state(bytes);
                        }
                    }
                    answers.extend(values);
                }
                Err(StoreError::Redis(error)) if error.is_timeout() => {
                    self.saw_state(PIPELINE_BYTES / (part.len() / 2).max(1));
                    return Err(StoreError::Redis(error));
                }
                Err(error) => return Err(error),
            }
        }
        Ok(answers)
    }

    /// Sends one group's writes in pipelines of at most [`PIPELINE_BYTES`] (at least one
    /// write each), one after the other, and answers one value per item, in order.
    async fn write_group(
        &self,
        group: &Group,
        redis_keys: &[String],
        writes: &[Write],
    ) -> Result<Vec<redis::Value>, StoreError> {
        let mut answers = Vec::with_capacity(group.items.len());
        let mut part = Vec::new();
        let mut bytes = 0;
        for &index in &group.items {
            let size = write_bytes(&writes[index]);
            self.saw_state(size);
            if !part.is_empty() && bytes + size > PIPELINE_BYTES {
                let items = std::mem::take(&mut part);
                let sub = Group {
                    slot: group.slot,
                    items,
                };
                answers.extend(self.write_pipeline(&sub, redis_keys, writes).await?);
                bytes = 0;
            }
            part.push(index);
            bytes += size;
        }
        if !part.is_empty() {
            let sub = Group {
                slot: group.slot,
                items: part,
            };
            answers.extend(self.write_pipeline(&sub, redis_keys, writes).await?);
        }
        Ok(answers)
    }

    /// Sends writes as one pipeline and answers one value per item of the group, in order.
    async fn write_pipeline(
        &self,
        group: &Group,
        redis_keys: &[String],
        writes: &[Write],
    ) -> Result<Vec<redis::Value>, StoreError> {
        let keys_per_call = match self.connection {
            Connection::Standalone { .. } => KEYS_PER_CALL,
            Connection::Cluster { .. } => 1,
        };
        let calls: Vec<&[usize]> = group.items.chunks(keys_per_call).collect();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for call in &calls {
            cas_command(
                &mut pipe,
                "EVALSHA",
                self.script.get_hash(),
                call,
                redis_keys,
                writes,
            );
        }
        self.wait_for_replicas(&mut pipe);
        let mut answers = self.query(group, pipe, Access::Write).await?;
        self.replicated(&mut answers)?;
        // The server forgot the script (restart, failover, SCRIPT FLUSH): send it again, with
        // EVAL, for exactly the calls that did not run.
        let forgotten: Vec<usize> = answers
            .iter()
            .enumerate()
            .filter(|(_, answer)| {
                matches!(answer, redis::Value::ServerError(error)
                    if error.code() == "NOSCRIPT")
            })
            .map(|(call, _)| call)
            .collect();
        if !forgotten.is_empty() {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for &call in &forgotten {
                cas_command(
                    &mut pipe,
                    "EVAL",
                    COMPARE_AND_SET,
                    calls[call],
                    redis_keys,
                    writes,
                );
            }
            self.wait_for_replicas(&mut pipe);
            let mut retried = self.query(group, pipe, Access::Write).await?;
            self.replicated(&mut retried)?;
            for (call, answer) in forgotten.into_iter().zip(retried) {
                answers[call] = answer;
            }
        }
        let mut per_item = Vec::with_capacity(group.items.len());
        for (call, answer) in calls.iter().zip(answers) {
            let entries: Vec<redis::Value> =
                redis::from_redis_value(command_error(answer)?).map_err(StoreError::Parse)?;
            if entries.len() != call.len() {
                return Err(StoreError::UnexpectedAnswer {
                    answer: format!(
                        "{} answers to a compare-and-set of {} keys",
                        entries.len(),
                        call.len()
                    ),
                });
            }
            per_item.extend(entries);
        }
        Ok(per_item)
    }

    /// Names the unreadable values found by a load, with the type of each value that is not a
    /// hash and an excerpt of it where it is a string. Best effort: a failure to read them
    /// leaves the excerpt empty, the verdict stands.
    async fn describe_unreadable(
        &self,
        keys: &[String],
        redis_keys: &[String],
        found: Vec<(usize, String, Option<String>)>,
    ) -> Vec<Unreadable> {
        let mut unreadable = Vec::with_capacity(found.len());
        for (index, why, excerpt) in found {
            let stored = match excerpt {
                Some(excerpt) => excerpt,
                None => self.excerpt_of_value(&redis_keys[index]).await,
            };
            let why = match (why.as_str(), stored.split_once(':')) {
                ("not a hash", Some((kind, _))) => format!("a {kind} value, not a hash"),
                _ => why,
            };
            unreadable.push(Unreadable {
                key: keys[index].clone(),
                why,
                stored,
            });
        }
        unreadable
    }

    /// `type: excerpt` of a value that is not a hash (the excerpt only for a string).
    async fn excerpt_of_value(&self, redis_key: &str) -> String {
        let keys = [redis_key.to_owned()];
        let Some(group) = self.groups(&keys).into_iter().next() else {
            return String::new();
        };
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        pipe.cmd("TYPE").arg(redis_key);
        pipe.cmd("GETRANGE")
            .arg(redis_key)
            .arg(0)
            .arg(UNREADABLE_EXCERPT_BYTES - 1);
        let Ok(answers) = self.query(&group, pipe, Access::Read).await else {
            return String::new();
        };
        let mut answers = answers.into_iter();
        let kind: String = answers
            .next()
            .and_then(|value| redis::from_redis_value(value).ok())
            .unwrap_or_default();
        let bytes: Option<Vec<u8>> = answers
            .next()
            .and_then(|value| redis::from_redis_value(value).ok());
        match bytes {
            Some(bytes) => cut_excerpt(format!("{kind}: {:?}", String::from_utf8_lossy(&bytes))),
            None => format!("{kind}:"),
        }
    }
}

/// The key `sync` writes to fence replication: outside the state keyspace (no key under
/// `prefix`), so it is never read as a state, listed with the states or deleted with them.
fn replication_fence_key(prefix: &str) -> String {
    // `prefix` cannot be a prefix of both: they differ in their first character.
    [
        "converge-replication-fence:",
        "~converge-replication-fence:",
    ]
    .iter()
    .map(|head| format!("{head}{prefix}"))
    .find(|key| !key.starts_with(prefix))
    .unwrap_or_else(|| format!("~~converge-replication-fence:{prefix}"))
}

/// Which connection a pipeline goes on.
#[derive(Clone, Copy)]
enum Access {
    Read,
    Write,
}

impl Store for RedisStore {
    /// A write whose answer was lost may have landed on the primary unconfirmed; a
    /// connection made since knows nothing of it, so `WAIT` alone would answer at once. A
    /// small write first (a fence key beside the prefix) puts everything written before it
    /// into what `WAIT` waits for, since replicas apply the primary's writes in order.
    ///
    /// On a cluster each node replicates on its own; the fence covers only the node of the
    /// fence key (see the README's "Durability").
    async fn sync(&self) -> Result<(), StoreError> {
        if self.replication.is_none() {
            return Ok(());
        }
        let keys = [replication_fence_key(&self.prefix)];
        let Some(group) = self.groups(&keys).into_iter().next() else {
            return Ok(());
        };
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        pipe.cmd("SET").arg(&keys[0]).arg(std::process::id());
        self.wait_for_replicas(&mut pipe);
        let mut answers = self.query(&group, pipe, Access::Write).await?;
        self.replicated(&mut answers)?;
        answers
            .into_iter()
            .try_for_each(|answer| command_error(answer).map(drop))
    }

    async fn load(&self, keys: &[String]) -> Result<Vec<Option<Current>>, StoreError> {
        let redis_keys: Vec<String> = keys.iter().map(|key| self.redis_key(key)).collect();
        let groups = self.groups(&redis_keys);
        let answers = futures::future::try_join_all(
            groups
                .iter()
                .map(|group| self.load_group(group, &redis_keys)),
        )
        .await?;
        let mut loaded: Vec<Option<Current>> = vec![None; keys.len()];
        // (index, what is wrong, excerpt; `None` when the value is not a hash)
        let mut unreadable: Vec<(usize, String, Option<String>)> = Vec::new();
        for (group, answer) in groups.iter().zip(answers) {
            for (&index, value) in group.items.iter().zip(answer) {
                if is_wrong_type(&value) {
                    unreadable.push((index, "not a hash".to_owned(), None));
                    continue;
                }
                let raw: Vec<Option<Vec<u8>>> =
                    redis::from_redis_value(command_error(value)?).map_err(StoreError::Parse)?;
                let excerpt = || Some(excerpt_of_fields(&FIELDS, &raw));
                let parsed = text_fields(&keys[index], &FIELDS, &raw)
                    .and_then(|fields| parse_current(&keys[index], fields));
                match parsed {
                    Ok(current) => loaded[index] = current,
                    Err(StoreError::MalformedState { field, .. }) => {
                        unreadable.push((
                            index,
                            format!("field {field:?} does not parse"),
                            excerpt(),
                        ));
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        if !unreadable.is_empty() {
            return Err(StoreError::Unreadable(
                self.describe_unreadable(keys, &redis_keys, unreadable)
                    .await,
            ));
        }
        Ok(loaded)
    }

    async fn inspect(&self, keys: &[String]) -> Result<Vec<Option<Stored>>, StoreError> {
        let redis_keys: Vec<String> = keys.iter().map(|key| self.redis_key(key)).collect();
        let groups = self.groups(&redis_keys);
        let mut inspected: Vec<Option<Stored>> = vec![None; keys.len()];
        for group in &groups {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for &index in &group.items {
                pipe.cmd("HMGET")
                    .arg(&redis_keys[index])
                    .arg(&FIELDS[..])
                    .arg("rule")
                    .arg("position");
            }
            for (&index, value) in group
                .items
                .iter()
                .zip(self.query(group, pipe, Access::Read).await?)
            {
                let raw: Vec<Option<Vec<u8>>> =
                    redis::from_redis_value(command_error(value)?).map_err(StoreError::Parse)?;
                let mut fields = text_fields(&keys[index], &INSPECTED, &raw)?;
                let position = fields.pop().flatten().unwrap_or_default();
                let rule = fields.pop().flatten().unwrap_or_default();
                inspected[index] = parse_current(&keys[index], fields)?.map(|current| Stored {
                    state: current.state,
                    revision: current.revision,
                    writer: current.writer,
                    rule,
                    position,
                });
            }
        }
        Ok(inspected)
    }

    async fn write(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StoreError> {
        let redis_keys: Vec<String> = writes.iter().map(|w| self.redis_key(&w.key)).collect();
        let groups = self.groups(&redis_keys);
        let answers = futures::future::try_join_all(
            groups
                .iter()
                .map(|group| self.write_group(group, &redis_keys, writes)),
        )
        .await?;
        let mut outcomes = vec![WriteOutcome::Conflict { current: None }; writes.len()];
        let mut unreadable = Vec::new();
        for (group, answer) in groups.iter().zip(answers) {
            for (&index, value) in group.items.iter().zip(answer) {
                match parse_outcome(&writes[index].key, command_error(value)?) {
                    Ok(outcome) => outcomes[index] = outcome,
                    Err(StoreError::Unreadable(mut found)) => unreadable.append(&mut found),
                    Err(error) => return Err(error),
                }
            }
        }
        if !unreadable.is_empty() {
            return Err(StoreError::Unreadable(unreadable));
        }
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replication_fence_is_outside_the_state_keyspace() {
        for prefix in ["converge:state:", "converge", "c", "~", "~c", "p:"] {
            let key = replication_fence_key(prefix);
            assert!(!key.starts_with(prefix), "{prefix:?}: {key:?}");
        }
    }
}
