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

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{Pipeline, Script};

use crate::entity::State;
use crate::store::{
    Current, Store, StoreError, Stored, UNREADABLE_EXCERPT_BYTES, Unreadable, Write, WriteOutcome,
};

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = crate::config::DEFAULT_PREFIX;

/// Compare-and-set of one or more keys (`KEYS[i]`, with its [`CAS_ARGS_PER_KEY`] arguments at
/// `ARGV[(i-1)*9+1 ..= (i-1)*9+9]`): expected revision, expected writer, status, version,
/// timestamp_ms, payload, rule, position, and this write's id. Each key is written only if its
/// stored revision and writer are the expected ones (an absent key has revision 0 and writer
/// "0"). Answers one entry per key: the new revision, or, when they did not match (nothing
/// written), `{-1}` for an absent key and `{-1, rev, wid, status, version, timestamp_ms,
/// payload}` otherwise.
///
/// On standalone Redis a batch's writes go in calls of [`KEYS_PER_CALL`] keys, so the cost of
/// a script call is paid once per call rather than once per key; on a cluster, one key per
/// call (keys of one call must share a slot). Writers are compared as strings: Lua numbers are
/// doubles and would round a 64-bit id.
pub const COMPARE_AND_SET: &str = r"
local answers = {}
for i = 1, #KEYS do
  local a = (i - 1) * 9
  local fence = redis.call('HMGET', KEYS[i], 'rev', 'wid')
  local stored = tonumber(fence[1] or '0')
  if stored ~= tonumber(ARGV[a + 1]) or (fence[2] or '0') ~= ARGV[a + 2] then
    if not fence[1] then
      answers[i] = {-1}
    else
      local now = redis.call('HMGET', KEYS[i], 'rev', 'wid', 'status', 'version', 'timestamp_ms', 'payload')
      answers[i] = {-1, now[1], now[2] or '0', now[3] or '', now[4] or '', now[5] or '', now[6] or ''}
    end
  else
    local rev = stored + 1
    redis.call('HSET', KEYS[i], 'rev', rev, 'wid', ARGV[a + 9], 'status', ARGV[a + 3],
      'version', ARGV[a + 4], 'timestamp_ms', ARGV[a + 5], 'payload', ARGV[a + 6],
      'rule', ARGV[a + 7], 'position', ARGV[a + 8])
    answers[i] = rev
  end
end
return answers
";

/// Arguments of [`COMPARE_AND_SET`] per key.
pub const CAS_ARGS_PER_KEY: usize = 9;

/// Keys per [`COMPARE_AND_SET`] call on standalone Redis: large enough to spread the cost of a
/// call, small enough that one call holds the server for well under a millisecond.
pub const KEYS_PER_CALL: usize = 64;

/// What a load reads: the fields a decision and its compare-and-set need.
const FIELDS: [&str; 6] = ["rev", "wid", "status", "version", "timestamp_ms", "payload"];

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

/// Slot ranges and the node serving each, from `CLUSTER SLOTS`. Only used to group keys: the
/// client routes each group by its own map, and a group sent to a node that no longer serves
/// one of its slots fails and is retried after the map is read again.
#[derive(Debug, Default)]
struct SlotMap {
    /// The index of the node serving each slot the map covers.
    node_of: HashMap<Slot, usize>,
}

impl SlotMap {
    fn parse(answer: redis::Value) -> Result<Self, StoreError> {
        let mut nodes: Vec<(String, i64)> = Vec::new();
        let mut ranges = Vec::new();
        let entries: Vec<redis::Value> =
            redis::from_redis_value(answer).map_err(StoreError::Parse)?;
        for entry in entries {
            let items: Vec<redis::Value> =
                redis::from_redis_value(entry).map_err(StoreError::Parse)?;
            let mut items = items.into_iter();
            let (Some(first), Some(last), Some(primary)) =
                (items.next(), items.next(), items.next())
            else {
                continue;
            };
            let first: u16 = redis::from_redis_value(first).map_err(StoreError::Parse)?;
            let last: u16 = redis::from_redis_value(last).map_err(StoreError::Parse)?;
            let primary: Vec<redis::Value> =
                redis::from_redis_value(primary).map_err(StoreError::Parse)?;
            let mut primary = primary.into_iter();
            let (Some(host), Some(port)) = (primary.next(), primary.next()) else {
                continue;
            };
            let address: (String, i64) = (
                redis::from_redis_value(host).map_err(StoreError::Parse)?,
                redis::from_redis_value(port).map_err(StoreError::Parse)?,
            );
            let node = match nodes.iter().position(|known| *known == address) {
                Some(node) => node,
                None => {
                    nodes.push(address);
                    nodes.len() - 1
                }
            };
            ranges.push((first, last, node));
        }
        let node_of = ranges
            .into_iter()
            .flat_map(|(first, last, node)| {
                (first..=last).filter_map(move |slot| Some((Slot::new(slot)?, node)))
            })
            .collect();
        Ok(Self { node_of })
    }
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

    /// Reads which node serves which slots again (at connection, and after a cluster call
    /// failed, which a moved slot makes it do).
    async fn read_slot_map(&self) -> Result<(), StoreError> {
        let Connection::Cluster {
            connection, nodes, ..
        } = &self.connection
        else {
            return Ok(());
        };
        let mut slots = redis::cmd("CLUSTER");
        slots.arg("SLOTS");
        let answer = connection
            .clone()
            .route_command(
                slots,
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await
            .map_err(StoreError::Redis)?;
        let map = SlotMap::parse(answer)?;
        *nodes.write().unwrap_or_else(PoisonError::into_inner) = map;
        Ok(())
    }

    /// Splits items into groups that may share a pipeline: all of them on a standalone server,
    /// one group per node on a cluster (each with a slot of that node to route it by).
    fn groups(&self, redis_keys: &[String]) -> Vec<Group> {
        if redis_keys.is_empty() {
            // An empty pipeline is an error to Redis; no items, no round trip.
            return Vec::new();
        }
        match &self.connection {
            Connection::Standalone { .. } => vec![Group {
                slot: None,
                items: (0..redis_keys.len()).collect(),
            }],
            Connection::Cluster { nodes, .. } => {
                let nodes = nodes.read().unwrap_or_else(PoisonError::into_inner);
                // By node where the map knows it, else by slot (its own group).
                let mut by_node: HashMap<Result<usize, Slot>, Group> = HashMap::new();
                for (index, key) in redis_keys.iter().enumerate() {
                    let slot = Slot::for_key(key);
                    let node = nodes.node_of.get(&slot).copied().ok_or(slot);
                    by_node
                        .entry(node)
                        .or_insert_with(|| Group {
                            slot: Some(slot),
                            items: Vec::new(),
                        })
                        .items
                        .push(index);
                }
                by_node.into_values().collect()
            }
        }
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

    /// Deletes every key under this store's prefix (for tests and resets); returns how many.
    pub async fn delete_all(&self) -> Result<u64, StoreError> {
        let pattern = format!("{}*", self.prefix);
        let mut deleted = 0;
        match &self.connection {
            Connection::Standalone { writes, .. } => {
                deleted += delete_matching(&mut writes.clone(), &pattern).await?;
            }
            Connection::Cluster { connection, .. } => {
                deleted += delete_matching_cluster(&mut connection.clone(), &pattern).await?;
            }
        }
        Ok(deleted)
    }
}

/// One compare-and-set call of the writes at `items`.
fn cas_command(
    pipe: &mut Pipeline,
    verb: &str,
    script: &str,
    items: &[usize],
    redis_keys: &[String],
    writes: &[Write],
) {
    let command = pipe.cmd(verb).arg(script).arg(items.len());
    for &index in items {
        command.arg(&redis_keys[index]);
    }
    for &index in items {
        let write = &writes[index];
        let state = &write.state;
        command
            .arg(write.expected_revision)
            .arg(write.expected_writer)
            .arg(&state.status)
            .arg(state.version)
            .arg(state.timestamp_ms)
            .arg(&state.payload)
            .arg(&write.rule)
            .arg(&write.position)
            .arg(write.writer);
    }
}

async fn delete_matching<C: ConnectionLike + Send>(
    connection: &mut C,
    pattern: &str,
) -> Result<u64, StoreError> {
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(connection)
            .await
            .map_err(StoreError::Redis)?;
        for key in keys {
            deleted += redis::cmd("DEL")
                .arg(&key)
                .query_async::<u64>(connection)
                .await
                .map_err(StoreError::Redis)?;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

async fn delete_matching_cluster(
    cluster: &mut ClusterConnection,
    pattern: &str,
) -> Result<u64, StoreError> {
    use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
    // SCAN through a cluster connection visits one node; KEYS on every primary sees them all.
    // Fine for tests and resets, never on the data path.
    let routing = RoutingInfo::MultiNode((
        MultipleNodeRoutingInfo::AllMasters,
        Some(ResponsePolicy::CombineArrays),
    ));
    let mut keys_command = redis::cmd("KEYS");
    keys_command.arg(pattern);
    let answer = cluster
        .route_command(keys_command, routing)
        .await
        .map_err(StoreError::Redis)?;
    let keys: Vec<String> = redis::from_redis_value(answer).map_err(StoreError::Parse)?;
    let mut deleted = 0;
    for key in keys {
        deleted += redis::cmd("DEL")
            .arg(&key)
            .query_async::<u64>(cluster)
            .await
            .map_err(StoreError::Redis)?;
    }
    Ok(deleted)
}

/// Turns one HMGET answer of [`FIELDS`] into a current state (`None`: the key is absent).
fn parse_current(key: &str, fields: Vec<Option<String>>) -> Result<Option<Current>, StoreError> {
    let bad = |field: &'static str| StoreError::MalformedState {
        key: key.to_owned(),
        field,
    };
    let mut fields = fields.into_iter();
    let mut next = |name: &'static str| fields.next().flatten().ok_or_else(|| bad(name));
    // The fence is read here as numbers and compared by the script as text (`wid`) and as a
    // Lua number (`rev`): only the canonical decimal form reads the same both ways. Any other
    // form ("05", "+5", " 5", a writer without a revision) would make every compare-and-set
    // on the key conflict forever, so it is unreadable, and the key is set aside.
    let (revision, writer) = match (next("rev").ok(), next("wid").ok()) {
        (None, None) => return Ok(None),
        (Some(revision), Some(writer)) => (
            canonical_u64(&revision).ok_or_else(|| bad("rev"))?,
            canonical_u64(&writer).ok_or_else(|| bad("wid"))?,
        ),
        // States written before writers were recorded have none: 0, as the script reads it.
        (Some(revision), None) => (canonical_u64(&revision).ok_or_else(|| bad("rev"))?, 0),
        (None, Some(_)) => return Err(bad("rev")),
    };
    let status = next("status")?;
    let version = next("version")?
        .parse::<u64>()
        .map_err(|_| bad("version"))?;
    let timestamp_ms = next("timestamp_ms")?
        .parse::<u64>()
        .map_err(|_| bad("timestamp_ms"))?;
    let payload = next("payload")?;
    Ok(Some(Current {
        state: State {
            key: key.to_owned(),
            status,
            version,
            timestamp_ms,
            payload,
        },
        revision,
        writer,
    }))
}

/// The bytes a write sends: what dominates a pipeline's size.
fn write_bytes(write: &Write) -> usize {
    write.key.len()
        + write.state.status.len()
        + write.state.payload.len()
        + write.rule.len()
        + write.position.len()
        + 64
}

/// The length of a bulk string answer (0 for anything else).
fn bulk_len(value: &redis::Value) -> usize {
    match value {
        redis::Value::BulkString(bytes) => bytes.len(),
        _ => 0,
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

/// `text` as a u64 if it is written the one way converge writes numbers: decimal digits, no
/// sign, no spaces, no leading zero.
fn canonical_u64(text: &str) -> Option<u64> {
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = text.len() > 1 && text.starts_with('0');
    if digits_only && !leading_zero {
        text.parse().ok()
    } else {
        None
    }
}

/// What `inspect` reads: [`FIELDS`], then the rule and the position.
const INSPECTED: [&str; 8] = [
    "rev",
    "wid",
    "status",
    "version",
    "timestamp_ms",
    "payload",
    "rule",
    "position",
];

/// The fields of one HMGET answer as text; a field that is not UTF-8 is malformed.
fn text_fields(
    key: &str,
    names: &[&'static str],
    raw: &[Option<Vec<u8>>],
) -> Result<Vec<Option<String>>, StoreError> {
    raw.iter()
        .zip(names)
        .map(|(value, &field)| match value {
            None => Ok(None),
            Some(bytes) => {
                String::from_utf8(bytes.clone())
                    .map(Some)
                    .map_err(|_| StoreError::MalformedState {
                        key: key.to_owned(),
                        field,
                    })
            }
        })
        .collect()
}

/// `name=value` for each field present, for an unreadable state's dead letters.
fn excerpt_of_fields(names: &[&'static str], raw: &[Option<Vec<u8>>]) -> String {
    let mut text = String::new();
    for (name, value) in names.iter().zip(raw) {
        if let Some(value) = value {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(&format!("{name}={:?}", String::from_utf8_lossy(value)));
        }
    }
    cut_excerpt(text)
}

/// At most [`UNREADABLE_EXCERPT_BYTES`] of `text`, cut on a character boundary.
fn cut_excerpt(mut text: String) -> String {
    if text.len() > UNREADABLE_EXCERPT_BYTES {
        let mut end = UNREADABLE_EXCERPT_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// Whether a command's answer is Redis refusing it for the key's type.
fn is_wrong_type(value: &redis::Value) -> bool {
    matches!(value, redis::Value::ServerError(error) if error.code() == "WRONGTYPE")
}

/// Turns the compare-and-set's answer into an outcome.
fn parse_outcome(key: &str, answer: redis::Value) -> Result<WriteOutcome, StoreError> {
    match answer {
        redis::Value::Int(revision) if revision > 0 => Ok(WriteOutcome::Written {
            revision: revision as u64,
        }),
        redis::Value::Array(items) if items.first() == Some(&redis::Value::Int(-1)) => {
            let raw: Vec<Option<Vec<u8>>> = items
                .into_iter()
                .skip(1)
                .map(|item| redis::from_redis_value(item).map_err(StoreError::Parse))
                .collect::<Result<_, _>>()?;
            match text_fields(key, &FIELDS, &raw).and_then(|fields| parse_current(key, fields)) {
                Ok(current) => Ok(WriteOutcome::Conflict { current }),
                Err(StoreError::MalformedState { field, .. }) => {
                    Err(StoreError::Unreadable(vec![Unreadable {
                        key: key.to_owned(),
                        why: format!("field {field:?} does not parse"),
                        stored: excerpt_of_fields(&FIELDS, &raw),
                    }]))
                }
                Err(error) => Err(error),
            }
        }
        redis::Value::Int(answer) => Err(StoreError::UnexpectedAnswer {
            answer: answer.to_string(),
        }),
        other => Err(StoreError::UnexpectedAnswer {
            answer: format!("{other:?}"),
        }),
    }
}

/// Which connection a pipeline goes on.
#[derive(Clone, Copy)]
enum Access {
    Read,
    Write,
}

/// Items of one batch that share a pipeline, by index; `slot` routes a cluster group.
struct Group {
    slot: Option<Slot>,
    items: Vec<usize>,
}

/// A per-command error inside a pipeline's answer (e.g. `MOVED` during a resharding, `WRONGTYPE`).
fn command_error(value: redis::Value) -> Result<redis::Value, StoreError> {
    match value {
        redis::Value::ServerError(error) => Err(StoreError::Redis(error.into())),
        value => Ok(value),
    }
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
    fn only_the_canonical_decimal_reads_as_a_fence_number() {
        assert_eq!(canonical_u64("0"), Some(0));
        assert_eq!(canonical_u64("5"), Some(5));
        assert_eq!(canonical_u64("18446744073709551615"), Some(u64::MAX));
        for text in [
            "",
            "05",
            "+5",
            " 5",
            "5 ",
            "-1",
            "0x5",
            "1e3",
            "18446744073709551616",
        ] {
            assert_eq!(canonical_u64(text), None, "{text:?}");
        }
    }

    #[test]
    fn the_replication_fence_is_outside_the_state_keyspace() {
        for prefix in ["converge:state:", "converge", "c", "~", "~c", "p:"] {
            let key = replication_fence_key(prefix);
            assert!(!key.starts_with(prefix), "{prefix:?}: {key:?}");
        }
    }
}
