//! `converge rule publish`, `status`, `promote` and `rollback`: the fleet's rule in Redis.

use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::Context as _;

use super::EXIT_FAILED;
use super::rule_command::{FleetArgs, PublishArgs, RuleCommand, TargetArgs, runtime};
use crate::rule::vectors::VectorFile;
use crate::rule::{GateConfig, Gates, TrustedKeys, pack, read_component, signatures};
use crate::swap::Downgrade;
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
            let hash = fleet.promote(trusted, args.max_component_bytes).await?;
            Ok(format!("active rule {hash}"))
        }),
        RuleCommand::Rollback(rollback) => {
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
        // These need no fleet; the dispatcher handles them.
        RuleCommand::Pack(_)
        | RuleCommand::Keygen(_)
        | RuleCommand::Sign(_)
        | RuleCommand::Verify(_) => unreachable_pack(),
    }
}

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

/// A downgrade in one line: when, who, from and to.
fn describe_downgrade(downgrade: &Downgrade) -> String {
    format!(
        "at {} by {}: {} -> {} (release {}, floor {} -> {})",
        utc(downgrade.at_ms),
        downgrade.by,
        downgrade.from.as_deref().map_or("-", short),
        short(&downgrade.to),
        downgrade.release,
        downgrade.floor_before,
        downgrade.release
    )
}

/// `at_ms` (since the Unix epoch) as an RFC 3339 UTC time, to the second.
fn utc(at_ms: u64) -> String {
    let seconds = at_ms / 1000;
    let days = i64::try_from(seconds / 86_400).unwrap_or(i64::MAX / 2);
    let time = seconds % 86_400;
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        time / 3600,
        time % 3600 / 60,
        time % 60
    )
}

/// Rollback or promote: a refused target (tampered, missing, unsigned, below the floor) exits
/// 1 with why; nothing changed.
fn move_pointer(
    args: &TargetArgs,
    done: &str,
    act: impl AsyncFnOnce(&Fleet, &TrustedKeys) -> Result<String, FleetError>,
) -> anyhow::Result<ExitCode> {
    let trusted = args.trust.trusted()?;
    runtime()?.block_on(async {
        let fleet = args.fleet.connect().await?;
        match act(&fleet, &trusted).await {
            Ok(outcome) => {
                println!("fleet {} {done}: {outcome}", args.fleet.fleet);
                Ok(ExitCode::SUCCESS)
            }
            Err(
                error @ (FleetError::Integrity(_)
                | FleetError::TooLarge { .. }
                | FleetError::SignatureRefused { .. }
                | FleetError::MissingBlob { .. }
                | FleetError::BelowFloor { .. }
                | FleetError::Downgrade { .. }),
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
        let published = args.fleet.connect().await?.publish(&component, role).await;
        let hash = match published {
            Ok(hash) => hash,
            Err(error @ (FleetError::BelowFloor { .. } | FleetError::Integrity(_))) => {
                eprintln!("not published: {error}");
                return Ok(ExitCode::from(EXIT_FAILED));
            }
            Err(error) => return Err(error.into()),
        };
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

fn unreachable_pack() -> anyhow::Result<ExitCode> {
    anyhow::bail!("`converge rule pack`, `keygen`, `sign` and `verify` are not fleet commands")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wedge_a_downgrade_record_prints_its_time_in_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_700_000_000_999), "2023-11-14T22:13:20Z");
        assert_eq!(utc(4_102_444_799_000), "2099-12-31T23:59:59Z");
        let line = describe_downgrade(&Downgrade {
            at_ms: 1_700_000_000_000,
            by: "ops@host".to_owned(),
            from: Some("b".repeat(64)),
            to: "a".repeat(64),
            release: 1,
            floor_before: 2,
        });
        assert_eq!(
            line,
            "at 2023-11-14T22:13:20Z by ops@host: bbbbbbbbbbbb -> aaaaaaaaaaaa (release 1, \
             floor 2 -> 1)"
        );
    }
}
