//! Helpers for tests and resets, never on the data path: deleting every key under a prefix.

use redis::aio::ConnectionLike;
use redis::cluster_async::ClusterConnection;

use super::{Connection, RedisStore};
use crate::store::StoreError;

impl RedisStore {
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
