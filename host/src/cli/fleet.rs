//! `converge rule publish`, `status`, `promote` and `rollback`: the fleet's rule in Redis.

use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::Context as _;

use super::EXIT_FAILED;
use super::rule_command::{FleetArgs, PublishArgs, RuleCommand, read, runtime};
use crate::rule::vectors::VectorFile;
use crate::rule::{GateConfig, Gates, pack};
use crate::swap::{Fleet, FleetStatus, Role};

impl FleetArgs {
    async fn connect(&self) -> anyhow::Result<Fleet> {
        Fleet::connect(&self.redis, &self.fleet)
            .await
            .with_context(|| format!("cannot reach the fleet's Redis at {}", self.redis))
    }
}

/// Runs a fleet command (every `rule` subcommand but `pack`).
pub(super) fn run(command: &RuleCommand) -> anyhow::Result<ExitCode> {
    match command {
        RuleCommand::Publish(args) => publish(args),
        RuleCommand::Status(args) => runtime()?.block_on(async {
            let status = args.fleet.connect().await?.status().await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&mut io::BufWriter::new(io::stdout().lock()), &status)?;
            }
            Ok(ExitCode::SUCCESS)
        }),
        RuleCommand::Promote(fleet) => runtime()?.block_on(async {
            let hash = fleet.connect().await?.promote().await?;
            println!("promoted {hash} to active in fleet {}", fleet.fleet);
            Ok(ExitCode::SUCCESS)
        }),
        RuleCommand::Rollback(fleet) => runtime()?.block_on(async {
            let hash = fleet.connect().await?.rollback().await?;
            println!("fleet {} rolled back to {hash}", fleet.fleet);
            Ok(ExitCode::SUCCESS)
        }),
        // `pack` needs no fleet; the dispatcher handles it.
        RuleCommand::Pack(_) => unreachable_pack(),
    }
}

fn publish(args: &PublishArgs) -> anyhow::Result<ExitCode> {
    let mut component = read(&args.rule)?;
    let sidecar = VectorFile::sidecar_path(&args.rule);
    let vectors = match &args.vectors {
        Some(path) => Some(VectorFile::load(path)?),
        None if sidecar.exists() => Some(VectorFile::load(&sidecar)?),
        None => None,
    };
    if let Some(vectors) = &vectors {
        component = pack(&component, vectors)?;
    }
    if !args.skip_local_gates {
        let gates = Gates::new(args.engine.engine()?, GateConfig::default());
        if let Err(error) = gates.admit(&component, None) {
            eprintln!(
                "not published: {} refused by the {} gate: {error}",
                args.rule.display(),
                error.gate()
            );
            return Ok(ExitCode::from(EXIT_FAILED));
        }
    }
    let role = if args.shadow {
        Role::Shadow
    } else {
        Role::Active
    };
    runtime()?.block_on(async {
        let hash = args
            .fleet
            .connect()
            .await?
            .publish(&component, role)
            .await?;
        println!(
            "published {} as the {} rule of fleet {} ({hash})",
            args.rule.display(),
            role.as_str(),
            args.fleet.fleet
        );
        Ok(ExitCode::SUCCESS)
    })
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

fn print_status(out: &mut impl Write, status: &FleetStatus) -> io::Result<()> {
    let pointer = |hash: &Option<String>| hash.as_deref().map_or("-", short).to_owned();
    writeln!(
        out,
        "fleet {}: active {}, shadow {}, {} versions in history",
        status.fleet,
        pointer(&status.active),
        pointer(&status.shadow),
        status.history.len()
    )?;
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
        if let Some(swap) = &rule.last_swap {
            let outcome = match &swap.refusal {
                Some(refusal) => {
                    format!("refused by the {} gate: {}", refusal.gate, refusal.reason)
                }
                None => "applied".to_owned(),
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

fn unreachable_pack() -> anyhow::Result<ExitCode> {
    anyhow::bail!("`converge rule pack` is not a fleet command")
}
