//! The cluster map: which node serves which slot, as last read, and the grouping of a batch's
//! keys by node that it serves (one pipeline per node, all in flight at once).

use std::collections::HashMap;
use std::sync::PoisonError;

use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo, Slot};

use super::{Connection, RedisStore};
use crate::store::StoreError;

/// Slot ranges and the node serving each, from `CLUSTER SLOTS`. Only used to group keys: the
/// client routes each group by its own map, and a group sent to a node that no longer serves
/// one of its slots fails and is retried after the map is read again.
#[derive(Debug, Default)]
pub(super) struct SlotMap {
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

/// Items of one batch that share a pipeline, by index; `slot` routes a cluster group.
pub(super) struct Group {
    pub(super) slot: Option<Slot>,
    pub(super) items: Vec<usize>,
}

impl RedisStore {
    /// Reads which node serves which slots again (at connection, and after a cluster call
    /// failed, which a moved slot makes it do).
    pub(super) async fn read_slot_map(&self) -> Result<(), StoreError> {
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
    pub(super) fn groups(&self, redis_keys: &[String]) -> Vec<Group> {
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
}
