//! `converge rule rollback`: the fleet returned to the rule active before the current one; a
//! downgrade below its release floor only when asked, and then recorded.

#[cfg(feature = "redis")]
use std::process::ExitCode;

use clap::Args;

use super::fleet::TargetArgs;
#[cfg(feature = "redis")]
use super::fleet::{describe_downgrade, move_pointer};

/// Rollback's target, and whether it may be a downgrade.
#[derive(Debug, Args)]
pub(crate) struct RollbackArgs {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    /// Roll back even to a release below the fleet's floor: the floor is lowered to it, and
    /// the downgrade is recorded (who, when, from, to; `converge rule status` lists it).
    #[arg(long)]
    pub(crate) allow_downgrade: bool,
}

#[cfg(feature = "redis")]
pub(crate) fn rollback(rollback: &RollbackArgs) -> anyhow::Result<ExitCode> {
    let args = &rollback.target;
    move_pointer(args, "rolled back", async |fleet, trusted| {
        let done = fleet
            .rollback(
                trusted,
                args.max_component_bytes,
                rollback.allow_downgrade,
                &operator(),
            )
            .await?;
        Ok(match &done.downgrade {
            None => format!("active rule {} (release {})", done.hash, done.release),
            Some(downgrade) => format!(
                "active rule {} (release {}); DOWNGRADED: the floor was {}, it is now {}, \
                 and the downgrade is recorded ({})",
                done.hash,
                done.release,
                downgrade.floor_before,
                downgrade.release,
                describe_downgrade(downgrade)
            ),
        })
    })
}

#[cfg(feature = "redis")]
/// Who runs this command, for the record of a downgrade: `user@host`, as the environment and
/// the kernel say.
fn operator() -> String {
    let user = ["USER", "LOGNAME"]
        .into_iter()
        .find_map(|name| std::env::var(name).ok().filter(|user| !user.is_empty()))
        .unwrap_or_else(|| "unknown".to_owned());
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|host| host.trim().to_owned())
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    format!("{user}@{host}")
}
