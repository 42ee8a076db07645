//! `converge rule publish`, `status`, `promote` and `rollback`: the fleet's rule in Redis.

use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::Context as _;

use super::EXIT_FAILED;
use super::rule_command::{FleetArgs, PublishArgs, RuleCommand, TargetArgs, runtime};
use crate::rule::vectors::VectorFile;
use crate::rule::{GateConfig, Gates, TrustedKeys, pack, read_component, signatures};
use crate::swap::{Fleet, FleetError, FleetStatus, Role};

impl FleetArgs {
    async fn connect(&self) -> anyhow::Result<Fleet> {
        Fleet::connect(&self.redis, &self.fleet)
            .await
            .with_context(|| {
                format!(
                    "cannot reach the fleet's Redis at {}",
                    crate::redact::redact(&self.redis)
                )
            })
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
        RuleCommand::Promote(args) => move_pointer(args, "promoted", async |fleet, trusted| {
            fleet.promote(trusted, args.max_component_bytes).await
        }),
        RuleCommand::Rollback(args) => move_pointer(args, "rolled back", async |fleet, trusted| {
            fleet.rollback(trusted, args.max_component_bytes).await
        }),
        // These need no fleet; the dispatcher handles them.
        RuleCommand::Pack(_)
        | RuleCommand::Keygen(_)
        | RuleCommand::Sign(_)
        | RuleCommand::Verify(_) => unreachable_pack(),
    }
}

/// Rollback or promote: a refused target (tampered, missing, unsigned) exits 1 with why;
/// nothing changed.
fn move_pointer(
    args: &TargetArgs,
    done: &str,
    act: impl AsyncFnOnce(&Fleet, &TrustedKeys) -> Result<String, FleetError>,
) -> anyhow::Result<ExitCode> {
    let trusted = args.trust.trusted()?;
    runtime()?.block_on(async {
        let fleet = args.fleet.connect().await?;
        match act(&fleet, &trusted).await {
            Ok(hash) => {
                println!("fleet {} {done}: active rule {hash}", args.fleet.fleet);
                Ok(ExitCode::SUCCESS)
            }
            Err(
                error @ (FleetError::Integrity(_)
                | FleetError::TooLarge { .. }
                | FleetError::SignatureRefused { .. }
                | FleetError::MissingBlob { .. }),
            ) => {
                eprintln!("not {done}: {error}");
                Ok(ExitCode::from(EXIT_FAILED))
            }
            Err(error) => Err(error.into()),
        }
    })
}

fn publish(args: &PublishArgs) -> anyhow::Result<ExitCode> {
    let mut component = read_component(&args.rule, args.engine.max_component_bytes)?;
    let trusted = args.trust.trusted()?;
    let sidecar = VectorFile::sidecar_path(&args.rule);
    // Packing changes what is signed: a signed component is published as it is.
    let signed = signatures(&component).is_ok_and(|found| !found.is_empty());
    let vectors = match &args.vectors {
        Some(_) if signed => anyhow::bail!(
            "{} is signed, and packing --vectors into it would break its signature: pack first \
             (`converge rule pack`), then sign, then publish",
            args.rule.display()
        ),
        Some(path) => Some(VectorFile::load(path)?),
        None if sidecar.exists() && signed => {
            eprintln!(
                "note: {} is not packed: {} is signed, and packing would break its signature \
                 (pack before signing)",
                sidecar.display(),
                args.rule.display()
            );
            None
        }
        None if sidecar.exists() => Some(VectorFile::load(&sidecar)?),
        None => None,
    };
    if let Some(vectors) = &vectors {
        component = pack(&component, vectors)?;
    }
    // --skip-local-gates skips compiling and checking here, never the signature.
    if let Err(error) = trusted.check(&component) {
        eprintln!(
            "not published: {} refused by the signature gate: {error}",
            args.rule.display()
        );
        return Ok(ExitCode::from(EXIT_FAILED));
    }
    if !args.skip_local_gates {
        let gates =
            Gates::new(args.engine.engine()?, GateConfig::default()).with_trusted_keys(trusted);
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

fn unreachable_pack() -> anyhow::Result<ExitCode> {
    anyhow::bail!("`converge rule pack`, `keygen`, `sign` and `verify` are not fleet commands")
}
