//! `converge rule promote`: the fleet's shadow rule made its active rule.

use std::process::ExitCode;

use super::fleet::{TargetArgs, move_pointer};

pub(crate) fn promote(args: &TargetArgs) -> anyhow::Result<ExitCode> {
    move_pointer(args, "promoted", async |fleet, trusted| {
        let hash = fleet.promote(trusted, args.max_component_bytes).await?;
        Ok(format!("active rule {hash}"))
    })
}
