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
//! an instance refused, a sorted set by time, the newest 256 kept; rollback skips them),
//! `instances` (set of instance ids), `instance:ID` (its [`InstanceReport`] as JSON, with a time
//! to live) and the channel `rule:events`.
//!
//! Whoever can write these keys can try to steer the fleet, so nothing read from them is taken
//! on trust: a pointer or history entry that is not a content hash is refused and never
//! followed; a blob is read only up to the size cap (its length is asked first) and refused
//! unless its SHA-256 is the hash it is stored under; the candidate then passes every gate,
//! the signature gate first. `rollback` and `promote` check their target the same way (and its
//! signature against the keys they are given) before they move a pointer, and move it only if
//! it still holds what they read.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::rule::{
    GateError, IntegrityError, LoadError, SignatureError, TrustedKeys, content_hash, excerpt,
    is_content_hash,
};
use crate::swap::{Role, RuleControl, RuleStatus, now_ms};

/// How often an instance re-reads the pointers (besides pub/sub) and reports its status.
const POLL: Duration = Duration::from_secs(2);
/// How long an instance's report outlives its last heartbeat.
const REPORT_TTL_SECONDS: u64 = 10;
/// How many versions the history keeps.
const HISTORY: isize = 50;
/// How many refused hashes the fleet remembers (the newest).
const REFUSED_KEPT: isize = 256;
/// The most of a pointer read: longer than any hash, so a long value cannot pass for one
/// cut short, and short enough that a planted huge value costs nothing to poll.
const POINTER_READ: isize = 100;

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
    /// A pointer or history entry that is not a content hash, or a blob that is not what its
    /// hash says: refused, never followed.
    #[error(transparent)]
    Integrity(#[from] IntegrityError),
    /// A blob larger than the size cap; it was not read.
    #[error(
        "the fleet's rule {hash} is {size} bytes, over the cap of {cap} bytes \
         (rule.max_component_bytes); not read"
    )]
    TooLarge {
        /// The hash it is stored under.
        hash: String,
        /// Its length in Redis.
        size: u64,
        /// The cap.
        cap: usize,
    },
    /// Rollback or promote: the target's signatures are refused (see [`TrustedKeys::check`]);
    /// nothing changed.
    #[error("the fleet's rule {hash} is refused by the signature gate: {source}; nothing changed")]
    SignatureRefused {
        /// The target's hash.
        hash: String,
        /// Why.
        source: SignatureError,
    },
    /// Rollback or promote: a pointer moved while the target was checked; nothing changed.
    #[error("the fleet's {0} pointer moved meanwhile; nothing changed (try again)")]
    Moved(&'static str),
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

/// Makes `hash` (ARGV[1]) active: records it in the history (unless it already heads it),
/// moves the pointer, drops a shadow of the same hash, takes it off the refused set (it is
/// offered afresh) and announces the change — in one step, so concurrent publishers cannot
/// interleave. With ARGV[3] (promote), only while the shadow pointer still holds it; answers 0
/// when it does not, and changes nothing.
const ACTIVATE: &str = r"
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[3] then
  return 0
end
if redis.call('TYPE', KEYS[5]).ok == 'zset' then
  redis.call('ZREM', KEYS[5], ARGV[1])
end
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

/// Returns to the history entry ARGV[2] (0-based index ARGV[3]), which rollback has
/// checked: drops the history down to it and points at it — only while the active pointer
/// still holds ARGV[1] (empty: no pointer) and the entry is still there. Answers 1, or 0 when
/// something moved (and then changes nothing).
const ROLLBACK: &str = r"
local active = redis.call('GET', KEYS[1])
if (active or '') ~= ARGV[1] or redis.call('LINDEX', KEYS[2], ARGV[3]) ~= ARGV[2] then
  return 0
end
redis.call('LTRIM', KEYS[2], ARGV[3], -1)
redis.call('SET', KEYS[1], ARGV[2])
redis.call('PUBLISH', KEYS[3], 'active ' .. ARGV[2])
return 1
";

/// Adds ARGV[2] to the refused set with score ARGV[1] (ms) and keeps the newest ARGV[3]. A
/// refused set from before it was sorted (a plain set) is converted first.
const REFUSE: &str = r"
if redis.call('TYPE', KEYS[1]).ok == 'set' then
  local members = redis.call('SMEMBERS', KEYS[1])
  redis.call('DEL', KEYS[1])
  for _, member in ipairs(members) do
    redis.call('ZADD', KEYS[1], 0, member)
  end
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[3]) + 1))
return 1
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

    /// Stores `component` and makes it the fleet's active or shadow rule. Answers its hash. It
    /// is not gated here: `converge rule publish` gates it first, and every instance does.
    pub async fn publish(&self, component: &[u8], role: Role) -> Result<String, FleetError> {
        let hash = content_hash(component);
        let mut connection = self.connection.clone();
        let _: () = connection
            .set(self.key(&format!("rule:blob:{hash}")), component)
            .await?;
        match role {
            Role::Active => {
                self.activate(&hash, None).await?;
            }
            Role::Shadow => {
                let _: () = connection.set(self.pointer(Role::Shadow), &hash).await?;
                let _: () = connection
                    .publish(self.key("rule:events"), format!("shadow {hash}"))
                    .await?;
            }
        }
        Ok(hash)
    }

    /// Makes `hash` active; with `shadow`, only while the shadow pointer holds it. Answers
    /// whether it did.
    async fn activate(&self, hash: &str, shadow: Option<&str>) -> Result<bool, FleetError> {
        let mut connection = self.connection.clone();
        let done: i64 = redis::Script::new(ACTIVATE)
            .key(self.pointer(Role::Active))
            .key(self.pointer(Role::Shadow))
            .key(self.key("rule:history"))
            .key(self.key("rule:events"))
            .key(self.key("rule:refused"))
            .arg(hash)
            .arg(HISTORY)
            .arg(shadow.unwrap_or_default())
            .invoke_async(&mut connection)
            .await?;
        Ok(done == 1)
    }

    /// Makes the shadow the fleet's active rule, once it is checked as [`Fleet::rollback`]
    /// checks its target. Answers its hash.
    pub async fn promote(
        &self,
        trusted: &TrustedKeys,
        max_bytes: usize,
    ) -> Result<String, FleetError> {
        let (_, shadow) = self.pointers().await?;
        let Some(shadow) = shadow else {
            return Err(FleetError::NoShadow {
                fleet: self.name.clone(),
            });
        };
        self.check_target("shadow pointer", &shadow, trusted, max_bytes)
            .await?;
        if !self.activate(&shadow, Some(&shadow)).await? {
            return Err(FleetError::Moved("shadow"));
        }
        Ok(shadow)
    }

    /// Returns the fleet to the version before the current one: the newest history entry that
    /// is not the active rule and that no instance refused. The entries on the way must be
    /// content hashes, and the target must be stored intact (its SHA-256 is its hash, it is
    /// within `max_bytes`) and pass the signature gate with `trusted`; anything else is an
    /// error and nothing changes — a tampered history is refused, never followed. The pointer
    /// moves only if it still holds what was read. Answers the new active hash.
    pub async fn rollback(
        &self,
        trusted: &TrustedKeys,
        max_bytes: usize,
    ) -> Result<String, FleetError> {
        let mut connection = self.connection.clone();
        let (active, _) = self.pointers().await?;
        let history = self.history().await?;
        let refused = self.refused().await?;
        let mut target = None;
        for (index, entry) in history.iter().enumerate() {
            if !is_content_hash(entry) {
                return Err(IntegrityError::NotAHash {
                    pointer: format!("history entry {}", index + 1),
                    value: excerpt(entry),
                }
                .into());
            }
            if Some(entry) != active.as_ref() && !refused.contains(entry) {
                target = Some((index, entry));
                break;
            }
        }
        let Some((index, target)) = target else {
            return Err(FleetError::NoEarlierVersion {
                fleet: self.name.clone(),
            });
        };
        self.check_target(
            &format!("history entry {}", index + 1),
            target,
            trusted,
            max_bytes,
        )
        .await?;
        let moved: i64 = redis::Script::new(ROLLBACK)
            .key(self.pointer(Role::Active))
            .key(self.key("rule:history"))
            .key(self.key("rule:events"))
            .arg(active.as_deref().unwrap_or_default())
            .arg(target)
            .arg(index)
            .invoke_async(&mut connection)
            .await?;
        if moved != 1 {
            return Err(FleetError::Moved("active"));
        }
        Ok(target.clone())
    }

    /// Checks that `hash` (what `what` holds) names an intact component whose signatures pass
    /// with `trusted`.
    async fn check_target(
        &self,
        what: &str,
        hash: &str,
        trusted: &TrustedKeys,
        max_bytes: usize,
    ) -> Result<(), FleetError> {
        if !is_content_hash(hash) {
            return Err(IntegrityError::NotAHash {
                pointer: what.to_owned(),
                value: excerpt(hash),
            }
            .into());
        }
        let component = self.component(hash, max_bytes).await?;
        trusted
            .check(&component)
            .map_err(|source| FleetError::SignatureRefused {
                hash: hash.to_owned(),
                source,
            })?;
        Ok(())
    }

    /// The history, newest first (at most as long as it is kept).
    async fn history(&self) -> Result<Vec<String>, FleetError> {
        let mut connection = self.connection.clone();
        let history: Vec<Vec<u8>> = connection
            .lrange(self.key("rule:history"), 0, HISTORY - 1)
            .await?;
        Ok(history
            .iter()
            .map(|entry| String::from_utf8_lossy(entry).into_owned())
            .collect())
    }

    /// The hashes instances refused (a plain set from before it was sorted is read too).
    async fn refused(&self) -> Result<std::collections::HashSet<String>, FleetError> {
        let mut connection = self.connection.clone();
        let key = self.key("rule:refused");
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut connection)
            .await?;
        let members: Vec<String> = match kind.as_str() {
            "set" => connection.smembers(&key).await?,
            "zset" => connection.zrange(&key, 0, -1).await?,
            _ => Vec::new(),
        };
        Ok(members.into_iter().collect())
    }

    /// Records that an instance refused `hash`, so rollback skips it; the newest 256 are kept.
    async fn remember_refused(&self, hash: &str) -> Result<(), FleetError> {
        let mut connection = self.connection.clone();
        let _: i64 = redis::Script::new(REFUSE)
            .key(self.key("rule:refused"))
            .arg(now_ms())
            .arg(hash)
            .arg(REFUSED_KEPT)
            .invoke_async(&mut connection)
            .await?;
        Ok(())
    }

    /// The fleet's `active` and `shadow` pointers, as they are (a pointer that is not a content
    /// hash is reported, not followed; only its first 100 bytes are read).
    pub async fn pointers(&self) -> Result<(Option<String>, Option<String>), FleetError> {
        let mut connection = self.connection.clone();
        let (active, shadow): (Vec<u8>, Vec<u8>) = redis::pipe()
            .getrange(self.pointer(Role::Active), 0, POINTER_READ)
            .getrange(self.pointer(Role::Shadow), 0, POINTER_READ)
            .query_async(&mut connection)
            .await?;
        // GETRANGE answers nothing for a missing key.
        let pointer = |bytes: Vec<u8>| {
            (!bytes.is_empty()).then(|| String::from_utf8_lossy(&bytes).into_owned())
        };
        Ok((pointer(active), pointer(shadow)))
    }

    /// The component stored under `hash`, checked: `hash` is a content hash, the blob is no
    /// larger than `max_bytes` (its length is asked before it is read, and no more than that
    /// is read) and its SHA-256 is `hash`.
    pub async fn component(&self, hash: &str, max_bytes: usize) -> Result<Vec<u8>, FleetError> {
        if !is_content_hash(hash) {
            return Err(IntegrityError::NotAHash {
                pointer: "rule".to_owned(),
                value: excerpt(hash),
            }
            .into());
        }
        let key = self.key(&format!("rule:blob:{hash}"));
        let mut connection = self.connection.clone();
        let missing = || FleetError::MissingBlob {
            hash: hash.to_owned(),
        };
        let too_large = |size| FleetError::TooLarge {
            hash: hash.to_owned(),
            size,
            cap: max_bytes,
        };
        let size: u64 = connection.strlen(&key).await?;
        if size == 0 {
            return Err(missing());
        }
        if size > max_bytes as u64 {
            return Err(too_large(size));
        }
        let bytes: Vec<u8> = connection
            .getrange(&key, 0, isize::try_from(max_bytes).unwrap_or(isize::MAX))
            .await?;
        if bytes.is_empty() {
            return Err(missing());
        }
        if bytes.len() > max_bytes {
            return Err(too_large(bytes.len() as u64));
        }
        let actual = content_hash(&bytes);
        if actual != hash {
            return Err(IntegrityError::HashMismatch {
                stored_under: hash.to_owned(),
                actual,
            }
            .into());
        }
        Ok(bytes)
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
        let history = self.history().await?;
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
        // A refusal is recorded by the control (log, metric, status); the pointer is not
        // retried until it moves again.
        let refuse = |error: GateError| {
            control.record_refusal(role, "fleet", &excerpt(hash), error);
        };
        if !is_content_hash(hash) {
            refuse(GateError::Integrity(IntegrityError::NotAHash {
                pointer: format!("{} pointer", role.as_str()),
                value: excerpt(hash),
            }));
            return Ok(());
        }
        let refused = match self.component(hash, control.max_component_bytes()).await {
            Ok(bytes) => {
                let control = Arc::clone(control);
                let offered =
                    tokio::task::spawn_blocking(move || control.offer(&bytes, None, "fleet", role))
                        .await;
                matches!(offered, Ok(Err(_)))
            }
            Err(FleetError::Integrity(error)) => {
                refuse(GateError::Integrity(error));
                true
            }
            Err(FleetError::TooLarge { size, cap, .. }) => {
                refuse(GateError::Load(LoadError::TooLarge {
                    what: format!("the fleet's rule {hash}"),
                    size,
                    cap,
                }));
                true
            }
            Err(other) => return Err(other),
        };
        if refused {
            // Rollback never returns the fleet to a version an instance refused.
            self.remember_refused(hash).await?;
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
                    rule: control.status().redacted(),
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
