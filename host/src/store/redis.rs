//! The Redis store: standalone Redis or Redis Cluster, one compare-and-set Lua script per key.
//!
//! # Key layout
//!
//! Each key's state is one hash at `{prefix}{key}` (the prefix defaults to `converge:state:`):
//!
//! | field          | value                                                     |
//! |----------------|-----------------------------------------------------------|
//! | `rev`          | revision: 1 after the first write, +1 per write           |
//! | `status`       | the entity's status                                       |
//! | `version`      | the source's version counter, decimal                     |
//! | `timestamp_ms` | the source timestamp, milliseconds, decimal               |
//! | `payload`      | the entity body, canonical JSON text                      |
//! | `rule`         | `name@version` of the rule that decided this state        |
//! | `position`     | source position of the last event folded into this state  |
//!
//! One hash per key keeps every write single-key, so the same script runs unchanged on Redis
//! Cluster. Loads and writes of a batch go out as one pipeline (on a cluster, one pipeline per
//! hash slot, all in flight at once). After a restart or `SCRIPT FLUSH` the script is re-sent
//! with `EVAL` for exactly the writes that met `NOSCRIPT`.

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{Pipeline, RedisResult, Script};

use crate::entity::State;
use crate::store::{Store, StoreError, Stored, Write, WriteOutcome};

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = crate::config::DEFAULT_PREFIX;

/// Writes the state only if the stored revision is the expected one; answers the new revision,
/// or -1 when the revision did not match (nothing written).
pub const COMPARE_AND_SET: &str = r"
local stored = tonumber(redis.call('HGET', KEYS[1], 'rev') or '0')
if stored ~= tonumber(ARGV[1]) then
  return -1
end
local rev = stored + 1
redis.call('HSET', KEYS[1], 'rev', rev, 'status', ARGV[2], 'version', ARGV[3],
  'timestamp_ms', ARGV[4], 'payload', ARGV[5], 'rule', ARGV[6], 'position', ARGV[7])
return rev
";

const FIELDS: [&str; 7] = [
    "rev",
    "status",
    "version",
    "timestamp_ms",
    "payload",
    "rule",
    "position",
];

#[derive(Clone)]
enum Connection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

/// States in Redis. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct RedisStore {
    connection: Connection,
    prefix: String,
    script: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.connection {
            Connection::Standalone(_) => "standalone",
            Connection::Cluster(_) => "cluster",
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
        let manager = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(StoreError::Redis)?;
        Ok(Self::new(Connection::Standalone(manager), prefix))
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
        Ok(Self::new(Connection::Cluster(connection), prefix))
    }

    fn new(connection: Connection, prefix: &str) -> Self {
        Self {
            connection,
            prefix: prefix.to_owned(),
            script: Script::new(COMPARE_AND_SET),
        }
    }

    /// The prefix of every key this store writes.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis key holding `key`'s state.
    fn redis_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Splits item indexes into groups that may share a pipeline: all of them on a standalone
    /// server, one group per hash slot on a cluster.
    fn groups(&self, keys: impl Iterator<Item = String>) -> Vec<Vec<(usize, String)>> {
        match self.connection {
            Connection::Standalone(_) => {
                let all: Vec<(usize, String)> = keys.enumerate().collect();
                // An empty pipeline is an error to Redis; no items, no round trip.
                if all.is_empty() {
                    Vec::new()
                } else {
                    vec![all]
                }
            }
            Connection::Cluster(_) => {
                let mut by_slot: HashMap<Slot, Vec<(usize, String)>> = HashMap::new();
                for (index, key) in keys.enumerate() {
                    by_slot
                        .entry(Slot::for_key(&key))
                        .or_default()
                        .push((index, key));
                }
                by_slot.into_values().collect()
            }
        }
    }

    async fn query<T: redis::FromRedisValue>(&self, pipe: &Pipeline) -> RedisResult<T> {
        match &self.connection {
            Connection::Standalone(manager) => pipe.query_async(&mut manager.clone()).await,
            Connection::Cluster(cluster) => pipe.query_async(&mut cluster.clone()).await,
        }
    }

    async fn load_group(
        &self,
        group: &[(usize, String)],
    ) -> Result<Vec<Vec<Option<String>>>, StoreError> {
        let mut pipe = redis::pipe();
        for (_, redis_key) in group {
            pipe.cmd("HMGET").arg(redis_key).arg(&FIELDS[..]);
        }
        self.query(&pipe).await.map_err(StoreError::Redis)
    }

    async fn write_group(
        &self,
        group: &[(usize, String)],
        writes: &[Write],
    ) -> Result<Vec<RedisResult<i64>>, StoreError> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for (index, redis_key) in group {
            cas_command(
                &mut pipe,
                "EVALSHA",
                self.script.get_hash(),
                redis_key,
                &writes[*index],
            );
        }
        let mut results: Vec<RedisResult<i64>> =
            self.query(&pipe).await.map_err(StoreError::Redis)?;
        // The server forgot the script (restart, failover, SCRIPT FLUSH): send it again, with
        // EVAL, for exactly the writes that did not run.
        let forgotten: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, result)| matches!(result, Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)))
            .map(|(slot, _)| slot)
            .collect();
        if !forgotten.is_empty() {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for &slot in &forgotten {
                let (index, redis_key) = &group[slot];
                cas_command(
                    &mut pipe,
                    "EVAL",
                    COMPARE_AND_SET,
                    redis_key,
                    &writes[*index],
                );
            }
            let retried: Vec<RedisResult<i64>> =
                self.query(&pipe).await.map_err(StoreError::Redis)?;
            for (slot, result) in forgotten.into_iter().zip(retried) {
                results[slot] = result;
            }
        }
        Ok(results)
    }

    /// Deletes every key under this store's prefix (for tests and resets); returns how many.
    pub async fn delete_all(&self) -> Result<u64, StoreError> {
        let pattern = format!("{}*", self.prefix);
        let mut deleted = 0;
        match &self.connection {
            Connection::Standalone(manager) => {
                deleted += delete_matching(&mut manager.clone(), &pattern).await?;
            }
            Connection::Cluster(cluster) => {
                deleted += delete_matching_cluster(&mut cluster.clone(), &pattern).await?;
            }
        }
        Ok(deleted)
    }
}

fn cas_command(pipe: &mut Pipeline, verb: &str, script: &str, redis_key: &str, write: &Write) {
    let state = &write.state;
    pipe.cmd(verb)
        .arg(script)
        .arg(1)
        .arg(redis_key)
        .arg(write.expected_revision)
        .arg(&state.status)
        .arg(state.version)
        .arg(state.timestamp_ms)
        .arg(&state.payload)
        .arg(&write.rule)
        .arg(&write.position);
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

/// Turns one HMGET answer into a stored state (`None`: the key is absent).
fn parse_stored(key: &str, fields: Vec<Option<String>>) -> Result<Option<Stored>, StoreError> {
    let bad = |field: &'static str| StoreError::MalformedState {
        key: key.to_owned(),
        field,
    };
    let mut fields = fields.into_iter();
    let mut next = |name: &'static str| fields.next().flatten().ok_or_else(|| bad(name));
    let revision = match next("rev") {
        Ok(revision) => revision.parse::<u64>().map_err(|_| bad("rev"))?,
        Err(_) => return Ok(None),
    };
    let status = next("status")?;
    let version = next("version")?
        .parse::<u64>()
        .map_err(|_| bad("version"))?;
    let timestamp_ms = next("timestamp_ms")?
        .parse::<u64>()
        .map_err(|_| bad("timestamp_ms"))?;
    let payload = next("payload")?;
    let rule = next("rule")?;
    let position = next("position")?;
    Ok(Some(Stored {
        state: State {
            key: key.to_owned(),
            status,
            version,
            timestamp_ms,
            payload,
        },
        revision,
        rule,
        position,
    }))
}

impl Store for RedisStore {
    async fn load(&self, keys: &[String]) -> Result<Vec<Option<Stored>>, StoreError> {
        let groups = self.groups(keys.iter().map(|key| self.redis_key(key)));
        let answers =
            futures::future::try_join_all(groups.iter().map(|group| self.load_group(group)))
                .await?;
        let mut loaded: Vec<Option<Stored>> = vec![None; keys.len()];
        for (group, answer) in groups.iter().zip(answers) {
            for ((index, _), fields) in group.iter().zip(answer) {
                loaded[*index] = parse_stored(&keys[*index], fields)?;
            }
        }
        Ok(loaded)
    }

    async fn write(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StoreError> {
        let groups = self.groups(writes.iter().map(|write| self.redis_key(&write.key)));
        let answers = futures::future::try_join_all(
            groups.iter().map(|group| self.write_group(group, writes)),
        )
        .await?;
        let mut outcomes = vec![WriteOutcome::Conflict; writes.len()];
        for (group, answer) in groups.iter().zip(answers) {
            for ((index, _), result) in group.iter().zip(answer) {
                outcomes[*index] = match result.map_err(StoreError::Redis)? {
                    -1 => WriteOutcome::Conflict,
                    revision if revision > 0 => WriteOutcome::Written {
                        revision: revision as u64,
                    },
                    answer => return Err(StoreError::UnexpectedAnswer { answer }),
                };
            }
        }
        Ok(outcomes)
    }
}
