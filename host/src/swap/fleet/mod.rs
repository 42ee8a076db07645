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
//! to live), `rule:floor` (the highest release ever made active, in decimal),
//! `rule:downgrades` (a list of [`Downgrade`] records as JSON, newest first, the newest 50
//! kept), `rule:downgraded` (how many downgrades were recorded, a counter) and the channel
//! `rule:events`.
//!
//! Whoever can write these keys can try to steer the fleet, so nothing read from them is taken
//! on trust: a pointer or history entry that is not a content hash is refused and never
//! followed; a blob is read only up to the size cap (its length is asked first) and refused
//! unless its SHA-256 is the hash it is stored under; the candidate then passes every gate,
//! the signature gate first. `rollback` and `promote` check their target the same way (and its
//! signature against the keys they are given) before they move a pointer, and move it only if
//! it still holds what they read.
//!
//! **Releases.** A component declares a release number, covered by its signatures (see
//! [`crate::rule::release`]). The fleet's floor is the highest release it has made active:
//! publish and promote raise it in the same script that moves the pointer, and refuse a
//! release below it; rollback to a release below it is refused unless it is an explicit
//! downgrade (`--allow-downgrade`), which lowers the floor and is recorded (`rule:downgrades`,
//! `rule:downgraded`) in that same script. An instance refuses an active pointer whose rule's
//! release is below the floor (gate `integrity`), and keeps in memory the highest floor it has
//! seen: a floor lowered in Redis without a newly recorded downgrade (a key deleted or
//! overwritten, a restored backup) does not lower it. A restarted instance starts from the
//! floor in Redis.
//!
//! Its files, and what each holds: the module map in ARCHITECTURE.md.

mod follow;
mod script;

use std::sync::{Arc, Mutex};

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::rule::{
    IntegrityError, SignatureError, TrustedKeys, content_hash, excerpt, is_content_hash, release,
};
use crate::swap::{Role, RuleStatus, now_ms};
use follow::FloorMemory;
use script::{ACTIVATE, REFUSE, RELEASE_LUA, ROLLBACK};

/// How many versions the history keeps.
const HISTORY: isize = 50;
/// How many refused hashes the fleet remembers (the newest).
const REFUSED_KEPT: isize = 256;
/// The most of a pointer read: longer than any hash, so a long value cannot pass for one
/// cut short, and short enough that a planted huge value costs nothing to poll.
const POINTER_READ: isize = 100;
/// The most of the floor or the downgrade counter read: more than the 20 digits of a `u64`.
const NUMBER_READ: isize = 40;

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
    #[error("the fleet's {} pointer moved meanwhile; nothing changed (try again)", .0.as_str())]
    Moved(Role),
    /// Publish or promote: the rule's release is below the fleet's floor; nothing changed.
    #[error(
        "the rule {hash} is release {release}, below fleet {fleet}'s floor {floor} (the highest \
         release it has made active); sign it with a higher --release, or return to an older \
         release with `converge rule rollback --allow-downgrade`; nothing changed"
    )]
    BelowFloor {
        /// The fleet's name.
        fleet: String,
        /// The rule's hash.
        hash: String,
        /// Its release.
        release: u64,
        /// The floor.
        floor: u64,
    },
    /// Rollback: the target's release is below the fleet's floor, and no downgrade was
    /// allowed; nothing changed.
    #[error(
        "rolling back to {hash} (release {release}) is a downgrade: fleet {fleet}'s floor is \
         {floor} (the highest release it has made active), and its instances refuse a release \
         below it; give --allow-downgrade to lower the floor (the downgrade is recorded in the \
         fleet's history); nothing changed"
    )]
    Downgrade {
        /// The fleet's name.
        fleet: String,
        /// The target's hash.
        hash: String,
        /// Its release.
        release: u64,
        /// The floor.
        floor: u64,
    },
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
    /// The highest release the fleet has made active (or lowered to by the newest downgrade):
    /// its instances refuse an active rule of a lower release.
    #[serde(default)]
    pub floor: u64,
    /// The downgrades made (`converge rule rollback --allow-downgrade`), newest first.
    #[serde(default)]
    pub downgrades: Vec<Downgrade>,
    /// Every live instance's last report, by name.
    pub instances: Vec<InstanceReport>,
}

/// A rollback to a release below the fleet's floor, made on purpose and recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Downgrade {
    /// When, in ms since the Unix epoch.
    pub at_ms: u64,
    /// Who: the operator's user and host, as the command line found them.
    pub by: String,
    /// The active rule it replaced (none: there was none).
    pub from: Option<String>,
    /// The rule it made active.
    pub to: String,
    /// That rule's release: the floor from then on.
    pub release: u64,
    /// The floor before.
    pub floor_before: u64,
}

/// What [`Fleet::rollback`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolledBack {
    /// The new active hash.
    pub hash: String,
    /// Its release.
    pub release: u64,
    /// The downgrade recorded, when its release is below the floor it replaced.
    pub downgrade: Option<Downgrade>,
}

/// A stored number (the floor, the downgrade counter) that is not a canonical decimal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a canonical decimal number: {value}")]
struct NotANumber {
    /// An excerpt of what the key holds instead.
    value: String,
}

impl From<NotANumber> for IntegrityError {
    fn from(NotANumber { value }: NotANumber) -> Self {
        IntegrityError::Floor { value }
    }
}

/// A release number as the fleet stores it (canonical decimal); an empty value (a missing
/// key) is 0.
fn parse_number(bytes: &[u8]) -> Result<u64, NotANumber> {
    if bytes.is_empty() {
        return Ok(0);
    }
    let text = String::from_utf8_lossy(bytes);
    let canonical = bytes.iter().all(u8::is_ascii_digit) && (bytes == b"0" || bytes[0] != b'0');
    text.parse()
        .ok()
        .filter(|_| canonical)
        .ok_or_else(|| NotANumber {
            value: excerpt(&text),
        })
}

/// A connection to a fleet's keys. Clones share the floor this instance holds itself to.
#[derive(Clone)]
pub struct Fleet {
    client: redis::Client,
    connection: redis::aio::MultiplexedConnection,
    name: String,
    floor: Arc<Mutex<FloorMemory>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// Connects to the fleet `name` in the Redis at `url`.
    pub async fn connect(url: &str, name: &str) -> Result<Self, FleetError> {
        let client = redis::Client::open(url)?;
        let connection = client.get_multiplexed_async_connection().await?;
        Ok(Self {
            client,
            connection,
            name: name.to_owned(),
            floor: Arc::default(),
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
    /// is not gated here: `converge rule publish` gates it first, and every instance does. As
    /// the active rule, its release (0 when it declares none or cannot be read: the gates
    /// refuse what cannot be read) may not be below the fleet's floor, which it raises.
    pub async fn publish(&self, component: &[u8], role: Role) -> Result<String, FleetError> {
        let hash = content_hash(component);
        let release = release(component).unwrap_or(0);
        if role == Role::Active {
            // Checked again, atomically, as the pointer moves; this spares storing the blob.
            let floor = self.floor().await?;
            if release < floor {
                return Err(self.below_floor(&hash, release, floor));
            }
        }
        let mut connection = self.connection.clone();
        let _: () = connection
            .set(self.key(&format!("rule:blob:{hash}")), component)
            .await?;
        match role {
            Role::Active => {
                self.activate(&hash, None, release).await?;
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

    /// Makes `hash`, of release `release`, active; with `shadow`, only while the shadow pointer
    /// holds it. Answers whether it did; a release below the floor is an error.
    async fn activate(
        &self,
        hash: &str,
        shadow: Option<&str>,
        release: u64,
    ) -> Result<bool, FleetError> {
        let mut connection = self.connection.clone();
        let done: i64 = redis::Script::new(&format!("{RELEASE_LUA}{ACTIVATE}"))
            .key(self.pointer(Role::Active))
            .key(self.pointer(Role::Shadow))
            .key(self.key("rule:history"))
            .key(self.key("rule:events"))
            .key(self.key("rule:refused"))
            .key(self.key("rule:floor"))
            .arg(hash)
            .arg(HISTORY)
            .arg(shadow.unwrap_or_default())
            .arg(release.to_string())
            .invoke_async(&mut connection)
            .await?;
        match done {
            -1 | -2 => {
                let floor = self.floor().await?;
                Err(self.below_floor(hash, release, floor))
            }
            done => Ok(done == 1),
        }
    }

    fn below_floor(&self, hash: &str, release: u64, floor: u64) -> FleetError {
        FleetError::BelowFloor {
            fleet: self.name.clone(),
            hash: hash.to_owned(),
            release,
            floor,
        }
    }

    /// The fleet's floor: 0 when it has none; one that is not a number is an error.
    pub async fn floor(&self) -> Result<u64, FleetError> {
        let mut connection = self.connection.clone();
        let bytes: Vec<u8> = connection
            .getrange(self.key("rule:floor"), 0, NUMBER_READ)
            .await?;
        parse_number(&bytes).map_err(|error| IntegrityError::from(error).into())
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
        let release = self
            .check_target("shadow pointer", &shadow, trusted, max_bytes)
            .await?;
        let floor = self.floor().await?;
        if release < floor {
            return Err(self.below_floor(&shadow, release, floor));
        }
        if !self.activate(&shadow, Some(&shadow), release).await? {
            return Err(FleetError::Moved(Role::Shadow));
        }
        Ok(shadow)
    }

    /// Returns the fleet to the version before the current one: the newest history entry that
    /// is not the active rule and that no instance refused. The entries on the way must be
    /// content hashes, and the target must be stored intact (its SHA-256 is its hash, it is
    /// within `max_bytes`) and pass the signature gate with `trusted`; anything else is an
    /// error and nothing changes — a tampered history is refused, never followed. A target
    /// whose release is below the fleet's floor is a downgrade: refused unless
    /// `allow_downgrade`, and then recorded as made `by` (who), lowering the floor. The pointer
    /// moves only if it and the floor still hold what was read.
    pub async fn rollback(
        &self,
        trusted: &TrustedKeys,
        max_bytes: usize,
        allow_downgrade: bool,
        by: &str,
    ) -> Result<RolledBack, FleetError> {
        let mut connection = self.connection.clone();
        let (active, _) = self.pointers().await?;
        let floor_raw: Vec<u8> = connection
            .getrange(self.key("rule:floor"), 0, NUMBER_READ)
            .await?;
        let floor = parse_number(&floor_raw).map_err(IntegrityError::from)?;
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
        let release = self
            .check_target(
                &format!("history entry {}", index + 1),
                target,
                trusted,
                max_bytes,
            )
            .await?;
        let downgrade = if release < floor {
            if !allow_downgrade {
                return Err(FleetError::Downgrade {
                    fleet: self.name.clone(),
                    hash: target.clone(),
                    release,
                    floor,
                });
            }
            Some(Downgrade {
                at_ms: now_ms(),
                by: by.to_owned(),
                from: active.clone(),
                to: target.clone(),
                release,
                floor_before: floor,
            })
        } else {
            None
        };
        let record = match &downgrade {
            Some(downgrade) => serde_json::to_string(downgrade).map_err(FleetError::Report)?,
            None => String::new(),
        };
        let moved: i64 = redis::Script::new(&format!("{RELEASE_LUA}{ROLLBACK}"))
            .key(self.pointer(Role::Active))
            .key(self.key("rule:history"))
            .key(self.key("rule:events"))
            .key(self.key("rule:floor"))
            .key(self.key("rule:downgrades"))
            .key(self.key("rule:downgraded"))
            .arg(active.as_deref().unwrap_or_default())
            .arg(target)
            .arg(index)
            .arg(release.to_string())
            .arg(floor_raw)
            .arg(record)
            .arg(HISTORY)
            .invoke_async(&mut connection)
            .await?;
        if moved != 1 {
            return Err(FleetError::Moved(Role::Active));
        }
        Ok(RolledBack {
            hash: target.clone(),
            release,
            downgrade,
        })
    }

    /// Checks that `hash` (what `what` holds) names an intact component whose signatures pass
    /// with `trusted`. Answers its release.
    async fn check_target(
        &self,
        what: &str,
        hash: &str,
        trusted: &TrustedKeys,
        max_bytes: usize,
    ) -> Result<u64, FleetError> {
        if !is_content_hash(hash) {
            return Err(IntegrityError::NotAHash {
                pointer: what.to_owned(),
                value: excerpt(hash),
            }
            .into());
        }
        let component = self.component(hash, max_bytes).await?;
        let refused = |source| FleetError::SignatureRefused {
            hash: hash.to_owned(),
            source,
        };
        trusted.check(&component).map_err(refused)?;
        release(&component).map_err(refused)
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

    /// The downgrades recorded, newest first (a record that does not parse is left out).
    async fn downgrades(&self) -> Result<Vec<Downgrade>, FleetError> {
        let mut connection = self.connection.clone();
        let records: Vec<Vec<u8>> = connection
            .lrange(self.key("rule:downgrades"), 0, HISTORY - 1)
            .await?;
        Ok(records
            .iter()
            .filter_map(|record| serde_json::from_slice(record).ok())
            .collect())
    }

    /// The pointers, the history and every live instance's report.
    pub async fn status(&self) -> Result<FleetStatus, FleetError> {
        let mut connection = self.connection.clone();
        let (active, shadow) = self.pointers().await?;
        let history = self.history().await?;
        let floor = self.floor().await?;
        let downgrades = self.downgrades().await?;
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
            floor,
            downgrades,
            instances,
        })
    }
}
