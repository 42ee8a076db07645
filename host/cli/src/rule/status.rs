//! `converge rule status`: the fleet's pointers and its live instances, each with its active
//! rule, shadow and last swap.

#[cfg(feature = "redis")]
use std::io::{self, Write};
#[cfg(feature = "redis")]
use std::process::ExitCode;

use clap::Args;
#[cfg(feature = "redis")]
use converge::swap::FleetStatus;

use super::fleet::FleetArgs;
#[cfg(feature = "redis")]
use super::fleet::{describe_downgrade, short};

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Print the status as one JSON document.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) fleet: FleetArgs,
}

#[cfg(feature = "redis")]
pub(crate) fn status(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    crate::runtime::multi_thread()?.block_on(async {
        let status = args.fleet.connect().await?.status().await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&status)?);
        } else {
            print_status(&mut io::BufWriter::new(io::stdout().lock()), &status)?;
        }
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(feature = "redis")]
fn print_status(out: &mut impl Write, status: &FleetStatus) -> io::Result<()> {
    let pointer = |hash: &Option<String>| hash.as_deref().map_or("-", short).to_owned();
    writeln!(
        out,
        "fleet {}: active {}, shadow {}, {} versions in history, release floor {}",
        status.fleet,
        pointer(&status.active),
        pointer(&status.shadow),
        status.history.len(),
        status.floor
    )?;
    for downgrade in &status.downgrades {
        writeln!(out, "downgrade {}", describe_downgrade(downgrade))?;
    }
    if status.instances.is_empty() {
        writeln!(out, "no live instances")?;
    }
    for instance in &status.instances {
        let rule = &instance.rule;
        writeln!(
            out,
            "{}: {} ({}) from {}",
            instance.instance,
            rule.active.rule,
            short(&rule.active.hash),
            rule.active.origin
        )?;
        if let Some(ignores) = &rule.active.ignores {
            writeln!(out, "  ignore share {ignores}")?;
        }
        if let Some(previous) = &rule.previous {
            let ignores = previous
                .ignores
                .map(|ignores| format!(", ignore share {ignores}"))
                .unwrap_or_default();
            writeln!(
                out,
                "  previous {} ({}){ignores}",
                previous.rule,
                short(&previous.hash)
            )?;
        }
        if let Some(swap) = &rule.last_swap {
            let outcome = match (&swap.refusal, &swap.auto_rollback) {
                (Some(refusal), _) => {
                    format!("refused by the {} gate: {}", refusal.gate, refusal.reason)
                }
                (None, Some(rolled_back)) => format!(
                    "applied, rolling back {} ({}): {}",
                    rolled_back.rule,
                    short(&rolled_back.hash),
                    rolled_back.reason
                ),
                (None, None) => "applied".to_owned(),
            };
            writeln!(
                out,
                "  last swap: {} {} ({}) from {}: {outcome}",
                swap.role.as_str(),
                swap.rule.as_deref().unwrap_or("?"),
                short(&swap.hash),
                swap.origin
            )?;
        }
        if let Some(shadow) = &rule.shadow {
            writeln!(
                out,
                "  shadow {} ({}): {} disagreements in {} decisions",
                shadow.rule.rule,
                short(&shadow.rule.hash),
                shadow.disagreements,
                shadow.decisions
            )?;
            if let (Some(ignores), Some(active)) = (&shadow.rule.ignores, &shadow.active_ignores) {
                writeln!(
                    out,
                    "    ignore share {ignores}; the active rule's on the same events: {active}"
                )?;
            }
            for sample in &shadow.samples {
                writeln!(
                    out,
                    "    {}",
                    serde_json::to_string(sample).unwrap_or_default()
                )?;
            }
        }
    }
    Ok(())
}
