//! An instance's side of the fleet: following the pointers (on announcements and by polling),
//! holding itself to the highest release floor it has seen, offering what moved to its
//! [`RuleControl`], and reporting what it serves.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use futures::StreamExt;

use super::script::VIEW;
use super::{
    Fleet, FleetError, InstanceReport, NUMBER_READ, NotANumber, POINTER_READ, parse_number,
};
use crate::rule::{GateError, IntegrityError, LoadError, excerpt, is_content_hash, release};
use crate::shutdown::Shutdown;
use crate::swap::{Origin, Role, RuleControl, now_ms};

/// How often an instance re-reads the pointers (besides pub/sub) and reports its status.
const POLL: Duration = Duration::from_secs(2);
/// How long an instance's report outlives its last heartbeat.
const REPORT_TTL_SECONDS: u64 = 10;

/// The floor an instance holds itself to: the highest it has seen, lowered only by a newly
/// recorded downgrade.
#[derive(Debug, Default)]
pub(super) struct FloorMemory {
    /// Whether the fleet's floor was read yet (the first read is taken as it is).
    read: bool,
    /// The floor.
    floor: u64,
    /// The highest downgrade counter read.
    downgraded: u64,
    /// The fleet's floor last warned about as lower than this one, so the warning is not
    /// repeated every poll.
    warned: Option<u64>,
}

/// The fleet's pointers, floor and downgrade counter, read in one transaction.
struct View {
    active: Option<String>,
    shadow: Option<String>,
    /// The floor (0 when there is none), or what the key holds instead of a number.
    floor: Result<u64, NotANumber>,
    /// The downgrade counter (0 when there is none); `None` when it is not a number.
    downgraded: Option<u64>,
}

impl Fleet {
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

    /// The pointers, the floor and the downgrade counter, in one script, so that a pointer is
    /// judged against the floor that was set with it. A key of another type reads as text
    /// that is neither a hash nor a number (and is refused as such), never as an error.
    async fn view(&self) -> Result<View, FleetError> {
        let mut connection = self.connection.clone();
        let (active, shadow, floor, downgraded): (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) =
            redis::Script::new(VIEW)
                .key(self.pointer(Role::Active))
                .key(self.pointer(Role::Shadow))
                .key(self.key("rule:floor"))
                .key(self.key("rule:downgraded"))
                .arg(POINTER_READ)
                .arg(NUMBER_READ)
                .invoke_async(&mut connection)
                .await?;
        let pointer = |bytes: Vec<u8>| {
            (!bytes.is_empty()).then(|| String::from_utf8_lossy(&bytes).into_owned())
        };
        Ok(View {
            active: pointer(active),
            shadow: pointer(shadow),
            floor: parse_number(&floor),
            downgraded: parse_number(&downgraded).ok(),
        })
    }

    /// The floor this instance holds the active pointer to, once `view` is taken into account:
    /// the highest floor it has seen, lowered only to the floor of a newly recorded downgrade
    /// (logged). A floor that is not a number is answered as the refusal it causes.
    fn hold_floor(&self, view: &View) -> Result<u64, IntegrityError> {
        let floor = match &view.floor {
            Ok(floor) => *floor,
            Err(not_a_number) => return Err(not_a_number.clone().into()),
        };
        let mut memory = self.floor.lock().unwrap_or_else(PoisonError::into_inner);
        let recorded = memory.read
            && view
                .downgraded
                .is_some_and(|downgraded| downgraded > memory.downgraded);
        if !memory.read || floor > memory.floor {
            memory.floor = floor;
        } else if floor < memory.floor && recorded {
            tracing::warn!(
                fleet = %self.name,
                from = memory.floor,
                to = floor,
                "the fleet's release floor was lowered by a recorded downgrade (`converge rule \
                 status` lists it); following it"
            );
            memory.floor = floor;
        } else if floor < memory.floor && memory.warned != Some(floor) {
            tracing::warn!(
                fleet = %self.name,
                held = memory.floor,
                fleet_floor = floor,
                "the fleet's release floor is lower than this instance has seen, and no downgrade \
                 was recorded: holding to the higher floor"
            );
            memory.warned = Some(floor);
        }
        memory.read = true;
        memory.downgraded = memory.downgraded.max(view.downgraded.unwrap_or(0));
        Ok(memory.floor)
    }

    /// Brings `control` in line with the fleet's pointers where they moved since `seen`. Only
    /// a moved pointer is acted on, so a rule uploaded to one instance by its admin endpoint
    /// keeps serving there until the fleet publishes again. An active pointer to a release
    /// below the floor this instance holds to is refused (gate `integrity`).
    pub async fn sync(
        &self,
        control: &Arc<RuleControl>,
        seen: &mut (Option<String>, Option<String>),
    ) -> Result<(), FleetError> {
        let view = self.view().await?;
        let floor = self.hold_floor(&view);
        let View { active, shadow, .. } = view;
        if active != seen.0 {
            if let Some(hash) = &active
                && control.active_hash() != *hash
            {
                self.offer(control, hash, Role::Active, Some(floor)).await?;
            }
            seen.0 = active;
        }
        if shadow != seen.1 {
            match &shadow {
                Some(hash) if control.shadow_hash().as_ref() != Some(hash) => {
                    self.offer(control, hash, Role::Shadow, None).await?;
                }
                Some(_) => {}
                None => control.clear_shadow(&Origin::Fleet),
            }
            seen.1 = shadow;
        }
        Ok(())
    }

    /// Offers the rule `hash` to `control` in `role`. `floor`: the release floor it is held to
    /// (the active role), or why there is none to hold it to.
    async fn offer(
        &self,
        control: &Arc<RuleControl>,
        hash: &str,
        role: Role,
        floor: Option<Result<u64, IntegrityError>>,
    ) -> Result<(), FleetError> {
        // A refusal is recorded by the control (log, metric, status); the pointer is not
        // retried until it moves again.
        let refuse = |error: GateError| {
            control.record_refusal(role, &Origin::Fleet, &excerpt(hash), error);
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
                // Below the floor: refused before any gate, and not remembered as refused by
                // the fleet (an explicit downgrade may return to it).
                let below = match floor {
                    Some(Err(error)) => Some(error),
                    Some(Ok(floor)) => match release(&bytes) {
                        Ok(release) if release < floor => Some(IntegrityError::BelowFloor {
                            hash: hash.to_owned(),
                            release,
                            floor,
                        }),
                        // A release that cannot be read is refused by the signature gate.
                        _ => None,
                    },
                    None => None,
                };
                if let Some(error) = below {
                    refuse(GateError::Integrity(error));
                    return Ok(());
                }
                let control = Arc::clone(control);
                let offered = tokio::task::spawn_blocking(move || {
                    control.offer(&bytes, None, &Origin::Fleet, role)
                })
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

    /// Follows the fleet until `shutdown` is requested: acts on announcements at once, re-reads the
    /// pointers every 2 s and reports this instance's status as often. Redis errors are
    /// logged and retried; the rule serving meanwhile keeps serving.
    pub async fn follow(
        self,
        control: Arc<RuleControl>,
        instance: String,
        mut seen: (Option<String>, Option<String>),
        mut shutdown: Shutdown,
    ) {
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
                    () = shutdown.requested() => break 'connect,
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
