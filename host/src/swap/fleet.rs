//! A fleet: every instance configured with the same Redis and fleet name serves the same rule.
//!
//! `converge rule publish` stores a component by its content hash, moves the fleet's `active`
//! (or `shadow`) pointer and announces it on a pub/sub channel; every instance follows the
//! pointers — on the announcement at once, and by polling in case one was missed — gates the
//! candidate itself and swaps it in (see [`crate::swap`]). Each instance reports what it serves
//! under a key that expires, so `converge rule status` lists only live instances.
//!
//! Keys, all under `converge:fleet:{NAME}:` (one hash tag, so one slot on a cluster):
//! `rule:blob:HASH` (component bytes), `rule:active`, `rule:shadow` (hashes), `rule:history`
//! (list of hashes made active, newest first; what rollback walks back), `rule:refused` (hashes
//! an instance refused at its gates; rollback skips them), `instances` (set of
//! instance ids), `instance:ID` (its [`InstanceReport`] as JSON, with a time to live) and the
//! channel `rule:events`.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::rule::content_hash;
use crate::swap::{Role, RuleControl, RuleStatus, now_ms};

/// How often an instance re-reads the pointers (besides pub/sub) and reports its status.
const POLL: Duration = Duration::from_secs(2);
/// How long an instance's report outlives its last heartbeat.
const REPORT_TTL_SECONDS: u64 = 10;
/// How many versions the history keeps.
const HISTORY: isize = 50;

/// Why a fleet operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// Redis refused or failed a command, or cannot be reached.
    #[error("fleet Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A pointer names a component the fleet does not hold.
    #[error("the fleet has no rule {hash}")]
    MissingBlob {
        /// The component's content hash.
        hash: String,
    },
    /// Promote: the fleet has no shadow rule.
    #[error("fleet {fleet} has no shadow rule to promote")]
    NoShadow {
        /// The fleet's name.
        fleet: String,
    },
    /// Rollback: no version before the active one is left that no instance refused.
    #[error("fleet {fleet} has no earlier version to roll back to")]
    NoEarlierVersion {
        /// The fleet's name.
        fleet: String,
    },
    /// An instance report cannot be written or read as JSON.
    #[error("invalid instance report: {0}")]
    Report(#[source] serde_json::Error),
}

/// What one instance last said about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceReport {
    /// The instance's name (`rule.fleet.instance`, or host and process id).
    pub instance: String,
    /// When it reported, in ms since the Unix epoch.
    pub reported_at_ms: u64,
    /// What it serves.
    pub rule: RuleStatus,
}

/// The fleet's pointers, as `converge rule status` shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetStatus {
    /// The fleet's name.
    pub fleet: String,
    /// The hash of the rule the fleet's instances are to serve.
    pub active: Option<String>,
    /// The hash of the rule they are to run as a shadow.
    pub shadow: Option<String>,
    /// Hashes made active, newest first.
    pub history: Vec<String>,
    /// Every live instance's last report, by name.
    pub instances: Vec<InstanceReport>,
}

/// A connection to a fleet's keys.
#[derive(Clone)]
pub struct Fleet {
    client: redis::Client,
    connection: redis::aio::MultiplexedConnection,
    name: String,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Makes `hash` active: records it in the history (unless it already heads it), moves the
/// pointer, drops a shadow of the same hash and announces the change — in one step, so
/// concurrent publishers cannot interleave.
const ACTIVATE: &str = r"
local head = redis.call('LINDEX', KEYS[3], 0)
if head ~= ARGV[1] then
  redis.call('LPUSH', KEYS[3], ARGV[1])
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[2]) - 1)
end
redis.call('SET', KEYS[1], ARGV[1])
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
redis.call('PUBLISH', KEYS[4], 'active ' .. ARGV[1])
return 1
";

/// Returns to the newest version before the active one that no instance refused: drops the
/// history down to it and points at it. Answers its hash, or false when there is none (and
/// then changes nothing).
const ROLLBACK: &str = r"
local history = redis.call('LRANGE', KEYS[2], 0, -1)
for i = 2, #history do
  if redis.call('SISMEMBER', KEYS[4], history[i]) == 0 then
    redis.call('LTRIM', KEYS[2], i - 1, -1)
    redis.call('SET', KEYS[1], history[i])
    redis.call('PUBLISH', KEYS[3], 'active ' .. history[i])
    return history[i]
  end
end
return false
";

impl Fleet {
    /// Connects to the fleet `name` in the Redis at `url`.
    pub async fn connect(url: &str, name: &str) -> Result<Self, FleetError> {
        let client = redis::Client::open(url)?;
        let connection = client.get_multiplexed_async_connection().await?;
        Ok(Self {
            client,
            connection,
            name: name.to_owned(),
        })
    }

    /// The fleet's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn key(&self, suffix: &str) -> String {
        format!("converge:fleet:{{{}}}:{suffix}", self.name)
    }

    fn pointer(&self, role: Role) -> String {
        self.key(&format!("rule:{}", role.as_str()))
    }

    /// Stores `component` and makes it the fleet's active or shadow rule. Answers its hash.
    pub async fn publish(&self, component: &[u8], role: Role) -> Result<String, FleetError> {
        let hash = content_hash(component);
        let mut connection = self.connection.clone();
        let _: () = connection
            .set(self.key(&format!("rule:blob:{hash}")), component)
            .await?;
        match role {
            Role::Active => self.activate(&hash).await?,
            Role::Shadow => {
                let _: () = connection.set(self.pointer(Role::Shadow), &hash).await?;
                let _: () = connection
                    .publish(self.key("rule:events"), format!("shadow {hash}"))
                    .await?;
            }
        }
        Ok(hash)
    }

    async fn activate(&self, hash: &str) -> Result<(), FleetError> {
        let mut connection = self.connection.clone();
        let _: i64 = redis::Script::new(ACTIVATE)
            .key(self.pointer(Role::Active))
            .key(self.pointer(Role::Shadow))
            .key(self.key("rule:history"))
            .key(self.key("rule:events"))
            .arg(hash)
            .arg(HISTORY)
            .invoke_async(&mut connection)
            .await?;
        Ok(())
    }

    /// Makes the shadow the fleet's active rule. Answers its hash.
    pub async fn promote(&self) -> Result<String, FleetError> {
        let shadow: Option<String> = self
            .connection
            .clone()
            .get(self.pointer(Role::Shadow))
            .await?;
        let Some(shadow) = shadow else {
            return Err(FleetError::NoShadow {
                fleet: self.name.clone(),
            });
        };
        self.activate(&shadow).await?;
        Ok(shadow)
    }

    /// Returns the fleet to the version active before the current one. Answers its hash.
    pub async fn rollback(&self) -> Result<String, FleetError> {
        let mut connection = self.connection.clone();
        let previous: Option<String> = redis::Script::new(ROLLBACK)
            .key(self.pointer(Role::Active))
            .key(self.key("rule:history"))
            .key(self.key("rule:events"))
            .key(self.key("rule:refused"))
            .invoke_async(&mut connection)
            .await?;
        previous.ok_or_else(|| FleetError::NoEarlierVersion {
            fleet: self.name.clone(),
        })
    }

    /// The fleet's `active` and `shadow` pointers (content hashes).
    pub async fn pointers(&self) -> Result<(Option<String>, Option<String>), FleetError> {
        let mut connection = self.connection.clone();
        let (active, shadow): (Option<String>, Option<String>) = redis::pipe()
            .get(self.pointer(Role::Active))
            .get(self.pointer(Role::Shadow))
            .query_async(&mut connection)
            .await?;
        Ok((active, shadow))
    }

    /// The component stored under `hash`.
    pub async fn component(&self, hash: &str) -> Result<Vec<u8>, FleetError> {
        let bytes: Option<Vec<u8>> = self
            .connection
            .clone()
            .get(self.key(&format!("rule:blob:{hash}")))
            .await?;
        bytes.ok_or_else(|| FleetError::MissingBlob {
            hash: hash.to_owned(),
        })
    }

    /// Records what `instance` serves, for `converge rule status`.
    pub async fn report(&self, report: &InstanceReport) -> Result<(), FleetError> {
        let json = serde_json::to_string(report).map_err(FleetError::Report)?;
        let mut connection = self.connection.clone();
        let _: () = redis::pipe()
            .set_ex(
                self.key(&format!("instance:{}", report.instance)),
                json,
                REPORT_TTL_SECONDS,
            )
            .sadd(self.key("instances"), &report.instance)
            .query_async(&mut connection)
            .await?;
        Ok(())
    }

    /// Removes `instance`'s report (on a clean stop).
    pub async fn leave(&self, instance: &str) -> Result<(), FleetError> {
        let mut connection = self.connection.clone();
        let _: () = redis::pipe()
            .del(self.key(&format!("instance:{instance}")))
            .srem(self.key("instances"), instance)
            .query_async(&mut connection)
            .await?;
        Ok(())
    }

    /// The pointers, the history and every live instance's report.
    pub async fn status(&self) -> Result<FleetStatus, FleetError> {
        let mut connection = self.connection.clone();
        let (active, shadow) = self.pointers().await?;
        let history: Vec<String> = connection.lrange(self.key("rule:history"), 0, -1).await?;
        let mut ids: Vec<String> = connection.smembers(self.key("instances")).await?;
        ids.sort();
        let mut instances = Vec::new();
        for id in ids {
            let json: Option<String> = connection.get(self.key(&format!("instance:{id}"))).await?;
            match json {
                Some(json) => {
                    instances.push(serde_json::from_str(&json).map_err(FleetError::Report)?)
                }
                // Its report expired: the instance is gone.
                None => {
                    let _: () = connection.srem(self.key("instances"), &id).await?;
                }
            }
        }
        Ok(FleetStatus {
            fleet: self.name.clone(),
            active,
            shadow,
            history,
            instances,
        })
    }

    /// Brings `control` in line with the fleet's pointers where they moved since `seen`. Only
    /// a moved pointer is acted on, so a rule uploaded to one instance by its admin endpoint
    /// keeps serving there until the fleet publishes again.
    pub async fn sync(
        &self,
        control: &Arc<RuleControl>,
        seen: &mut (Option<String>, Option<String>),
    ) -> Result<(), FleetError> {
        let (active, shadow) = self.pointers().await?;
        if active != seen.0 {
            if let Some(hash) = &active
                && control.active_hash() != *hash
            {
                self.offer(control, hash, Role::Active).await?;
            }
            seen.0 = active;
        }
        if shadow != seen.1 {
            match &shadow {
                Some(hash) if control.shadow_hash().as_ref() != Some(hash) => {
                    self.offer(control, hash, Role::Shadow).await?;
                }
                Some(_) => {}
                None => control.clear_shadow("fleet"),
            }
            seen.1 = shadow;
        }
        Ok(())
    }

    async fn offer(
        &self,
        control: &Arc<RuleControl>,
        hash: &str,
        role: Role,
    ) -> Result<(), FleetError> {
        let bytes = self.component(hash).await?;
        let control = Arc::clone(control);
        // A refusal is recorded by the control (log, metric, status); the pointer is not
        // retried until it moves again.
        let offered =
            tokio::task::spawn_blocking(move || control.offer(&bytes, None, "fleet", role)).await;
        if let Ok(Err(_refused)) = offered {
            // Rollback never returns the fleet to a version an instance refused.
            let _: () = self
                .connection
                .clone()
                .sadd(self.key("rule:refused"), hash)
                .await?;
        }
        Ok(())
    }

    /// Follows the fleet until `shutdown` resolves: acts on announcements at once, re-reads the
    /// pointers every 2 s and reports this instance's status as often. Redis errors are
    /// logged and retried; the rule serving meanwhile keeps serving.
    pub async fn follow(
        self,
        control: Arc<RuleControl>,
        instance: String,
        mut seen: (Option<String>, Option<String>),
        shutdown: impl Future<Output = ()>,
    ) {
        let mut shutdown = std::pin::pin!(shutdown);
        'connect: loop {
            let mut pubsub = match self.subscribe().await {
                Ok(pubsub) => Some(pubsub),
                Err(error) => {
                    tracing::warn!(fleet = %self.name, %error, "cannot subscribe to fleet announcements; polling only");
                    None
                }
            };
            let mut poll = tokio::time::interval(POLL);
            loop {
                let announced = async {
                    match pubsub.as_mut() {
                        Some(pubsub) => pubsub.on_message().next().await.is_some(),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = &mut shutdown => break 'connect,
                    alive = announced => {
                        if !alive {
                            tracing::warn!(fleet = %self.name, "fleet announcements ended; resubscribing");
                            continue 'connect;
                        }
                    }
                    _ = poll.tick() => {
                        if pubsub.is_none() {
                            pubsub = self.subscribe().await.ok();
                        }
                    }
                }
                if let Err(error) = self.sync(&control, &mut seen).await {
                    tracing::warn!(fleet = %self.name, %error, "cannot read the fleet's rule");
                }
                // Reported after every sync, so a swap shows in status as soon as it is made.
                let report = InstanceReport {
                    instance: instance.clone(),
                    reported_at_ms: now_ms(),
                    rule: control.status(),
                };
                if let Err(error) = self.report(&report).await {
                    tracing::warn!(fleet = %self.name, %error, "cannot report status");
                }
            }
        }
        if let Err(error) = self.leave(&instance).await {
            tracing::warn!(fleet = %self.name, %error, "cannot remove this instance's report");
        }
    }

    async fn subscribe(&self) -> Result<redis::aio::PubSub, FleetError> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(self.key("rule:events")).await?;
        Ok(pubsub)
    }
}
