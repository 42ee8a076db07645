//! `converge rule ...`'s arguments and `rule pack`, and `converge replay`; the fleet commands
//! (publish, status, promote, rollback) run in `fleet.rs`.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::{EXIT_FAILED, EngineArgs};
use crate::config::{Config, FileSourceConfig, SourceConfig};
use crate::replay::{ReplayReport, SourceSize, replay_with_progress};
use crate::rule::pack;
use crate::rule::vectors::VectorFile;
use crate::source::open_lines;

#[derive(Debug, Subcommand)]
pub(super) enum RuleCommand {
    /// Publish a rule to a fleet: store it in Redis by content hash, point the fleet's active
    /// (or, with --shadow, shadow) rule at it and announce it. Every instance gates it and swaps
    /// it in within seconds; `converge rule status` shows the outcome per instance.
    ///
    /// Vectors given with --vectors, or found beside the rule as RULE.vectors.json, are packed
    /// into the component first, so they travel with it — except into a signed component,
    /// whose signature packing would break (pack, then sign, then publish). The signature is
    /// checked here (with --trusted-key: it must be by one of them), even with
    /// --skip-local-gates, then the other gates run before anything is published. Exits 0 once
    /// published, 1 when the rule fails a gate here.
    ///
    /// Needs the `redis` feature.
    Publish(PublishArgs),
    /// List the fleet's live instances with their active rule, shadow and last swap.
    ///
    /// Needs the `redis` feature.
    Status(StatusArgs),
    /// Make the fleet's shadow rule its active rule, once its blob is checked as for
    /// rollback. A shadow whose release is below the fleet's floor is not promoted.
    ///
    /// Needs the `redis` feature.
    Promote(TargetArgs),
    /// Return the fleet to the rule active before the current one (versions an instance
    /// refused are skipped).
    ///
    /// The target is checked before the pointer moves: the history entry must be a content
    /// hash, its blob present, within the size cap and hashing to it, and its signature valid
    /// (with --trusted-key: by one of them). A target whose release (`converge rule sign
    /// --release`) is below the fleet's floor, the highest release it has made active, is a
    /// downgrade, which the fleet's instances refuse: it needs --allow-downgrade, which lowers
    /// the floor and records who made the downgrade, when, from and to what (`converge rule
    /// status`). Exits 0 once rolled back, 1 when the target is refused (nothing changes).
    ///
    /// Needs the `redis` feature.
    Rollback(RollbackArgs),
    /// Embed conformance vectors into a component (custom section `converge:vectors`), so that
    /// they travel with the rule. Pack before signing: packing changes what is signed.
    Pack(PackArgs),
    /// Make a signing key: the private key (PKCS#8 PEM, mode 0600) at --out and its public key
    /// (one line, `ed25519:<base64>`, what `[rule] trusted_keys` takes) at --out with `.pub`
    /// appended. Prints the public key and its id. Never overwrites a file.
    Keygen(super::signing::KeygenArgs),
    /// Sign a rule component with a key from `converge rule keygen`: appends a custom section
    /// `converge:signature`. Signatures by other keys stay (sign with the old and the new key
    /// while rotating); everything else the component carries is signed, vectors and release
    /// included.
    ///
    /// --release N writes the release number (custom section `converge:release`) before
    /// signing: a fleet refuses to make active a release below the highest it has made active,
    /// so number each published version higher than the last. A component without one is
    /// release 0.
    Sign(super::signing::SignArgs),
    /// List a component's signatures and check them: exits 0 when it is signed and every
    /// signature verifies (with --trusted-key: one is by a trusted key), 1 otherwise.
    Verify(super::signing::VerifyArgs),
}

#[derive(Debug, Args)]
pub(super) struct FleetArgs {
    /// The Redis holding the fleet's rules. Prefer the environment variable when the URL holds
    /// a password: a command line is visible to every user of the host.
    // hide_env_values: `--help` would print the variable's value, password and all.
    #[arg(
        long,
        env = "CONVERGE_FLEET_REDIS",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub(super) redis: String,
    /// The fleet's name (`rule.fleet.name` of its instances).
    #[arg(long, env = "CONVERGE_FLEET", value_name = "NAME")]
    pub(super) fleet: String,
}

/// A fleet, and what its target rule's signature must be by (rollback, promote).
#[derive(Debug, Args)]
pub(super) struct TargetArgs {
    #[command(flatten)]
    pub(super) fleet: FleetArgs,
    #[command(flatten)]
    pub(super) trust: super::signing::TrustArgs,
    /// The largest component read, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = crate::rule::DEFAULT_MAX_COMPONENT_BYTES)]
    pub(super) max_component_bytes: usize,
}

/// Rollback's target, and whether it may be a downgrade.
#[derive(Debug, Args)]
pub(super) struct RollbackArgs {
    #[command(flatten)]
    pub(super) target: TargetArgs,
    /// Roll back even to a release below the fleet's floor: the floor is lowered to it, and
    /// the downgrade is recorded (who, when, from, to; `converge rule status` lists it).
    #[arg(long)]
    pub(super) allow_downgrade: bool,
}

#[derive(Debug, Args)]
pub(super) struct PublishArgs {
    /// The rule component (.wasm).
    #[arg(value_name = "RULE.wasm")]
    pub(super) rule: PathBuf,
    /// Conformance vectors to pack into the component. Default: RULE.vectors.json, if present.
    #[arg(long, value_name = "FILE")]
    pub(super) vectors: Option<PathBuf>,
    /// Run the rule beside the active one, counting disagreements, without applying it.
    #[arg(long)]
    pub(super) shadow: bool,
    /// Publish without running the compile, vector and convergence gates here first (the
    /// instances still run them); the signature is checked all the same.
    #[arg(long)]
    pub(super) skip_local_gates: bool,
    #[command(flatten)]
    pub(super) fleet: FleetArgs,
    #[command(flatten)]
    pub(super) trust: super::signing::TrustArgs,
    #[command(flatten)]
    pub(super) engine: EngineArgs,
}

#[derive(Debug, Args)]
pub(super) struct StatusArgs {
    /// Print the status as one JSON document.
    #[arg(long)]
    pub(super) json: bool,
    #[command(flatten)]
    pub(super) fleet: FleetArgs,
}

#[derive(Debug, Args)]
pub(super) struct PackArgs {
    /// The rule component (.wasm).
    #[arg(value_name = "RULE.wasm")]
    rule: PathBuf,
    /// The vector file to embed.
    #[arg(long, value_name = "FILE")]
    vectors: PathBuf,
    /// Where to write the packed component.
    #[arg(long, short, value_name = "FILE")]
    output: PathBuf,
}

#[derive(Debug, Args)]
pub(super) struct ReplayArgs {
    /// The rule to replay (.wasm).
    #[arg(long, value_name = "RULE.wasm")]
    rule: PathBuf,
    /// The `serve` configuration: its store is compared with, its mapping decodes, and its
    /// Kafka source's topics are read from their beginning to their current end.
    #[arg(long, short, env = "CONVERGE_CONFIG", value_name = "FILE")]
    config: PathBuf,
    /// Read these JSON lines instead of the configured source.
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// Write each differing key's replayed state over the stored one.
    #[arg(long)]
    rebuild: bool,
    /// Print the report as one JSON document.
    #[arg(long)]
    json: bool,
    /// Overrides one setting of the configuration, as for `serve`. Repeatable.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    overrides: Vec<String>,
    #[command(flatten)]
    engine: EngineArgs,
}

pub(super) fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

pub(super) fn rule(command: &RuleCommand) -> anyhow::Result<ExitCode> {
    match command {
        RuleCommand::Keygen(args) => super::signing::keygen(args),
        RuleCommand::Sign(args) => super::signing::sign_command(args),
        RuleCommand::Verify(args) => super::signing::verify(args),
        RuleCommand::Pack(args) => {
            let component = read(&args.rule)?;
            let vectors = VectorFile::load(&args.vectors)?;
            let packed = pack(&component, &vectors)?;
            std::fs::write(&args.output, packed)
                .with_context(|| format!("cannot write {}", args.output.display()))?;
            println!(
                "{} vectors packed into {}",
                vectors.vectors.len(),
                args.output.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "redis")]
        fleet_command => super::fleet::run(fleet_command),
        #[cfg(not(feature = "redis"))]
        _ => Err(super::needs_feature(
            "converge rule publish, status, promote and rollback",
            "redis",
        )),
    }
}

/// Reads a rule component, refusing one over the default size cap unread.
pub(super) fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    Ok(crate::rule::read_component(
        path,
        crate::rule::DEFAULT_MAX_COMPONENT_BYTES,
    )?)
}

pub(super) fn replay_command(args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load_with_overrides(&args.config, &args.overrides)?;
    let compiled = args.engine.load(&args.rule)?;
    runtime()?.block_on(async {
        let store = config.store.open().await?;
        let pipeline = config.pipeline.clone();
        let rebuild = args.rebuild;
        let bar = super::progress::Bar::stderr();
        let report = match (&args.input, &config.source) {
            (Some(path), _) | (None, SourceConfig::File(FileSourceConfig { path })) => {
                let mut source = open_lines(path)
                    .await
                    .with_context(|| format!("cannot open input {}", path.display()))?;
                // stdin (`-`) or a pipe has no size to count toward.
                let size = std::fs::metadata(path)
                    .ok()
                    .filter(|metadata| metadata.is_file() && path.as_os_str() != "-")
                    .map_or(SourceSize::Unknown, |metadata| SourceSize::Bytes(metadata.len()));
                let rule = compiled.instance();
                replay_with_progress(rule, &mut source, pipeline, &store, rebuild, &bar, size)
                    .await?
            }
            #[cfg(feature = "kafka")]
            (None, SourceConfig::Kafka(kafka)) => {
                let mut source =
                    crate::source::KafkaRange::open(&kafka.brokers, &kafka.topics, &kafka.properties)?;
                let (rule, size) = (compiled.instance(), SourceSize::Records(source.records()));
                replay_with_progress(rule, &mut source, pipeline, &store, rebuild, &bar, size)
                    .await?
            }
            #[cfg(not(feature = "kafka"))]
            (None, SourceConfig::Kafka(_)) => {
                return Err(super::needs_feature("converge replay from a Kafka source", "kafka"));
            }
            (None, SourceConfig::Fluvio(_)) => anyhow::bail!(
                "replay reads a Kafka source or a file; for a Fluvio topic, export it as JSON lines and pass --input"
            ),
        };
        bar.finish();
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_replay(&mut io::BufWriter::new(io::stdout().lock()), &report)?;
        }
        let settled = if args.rebuild {
            report.conflicts.is_empty()
        } else {
            report.differences.is_empty()
        };
        Ok(if settled {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_FAILED)
        })
    })
}

fn print_replay(out: &mut impl Write, report: &ReplayReport) -> io::Result<()> {
    writeln!(
        out,
        "replayed {} messages through {}: {} keys, {} as stored, {} differ, {} dead letters",
        report.messages,
        report.rule,
        report.keys,
        report.same,
        report.differences.len(),
        report.dead_letters
    )?;
    for difference in &report.differences {
        writeln!(
            out,
            "  {}: stored {} (by {}), replayed {}",
            difference.key,
            serde_json::to_string(&difference.stored).unwrap_or_default(),
            difference.stored_by.as_deref().unwrap_or("-"),
            serde_json::to_string(&difference.replayed).unwrap_or_default()
        )?;
    }
    if report.rebuilt > 0 || !report.conflicts.is_empty() {
        writeln!(
            out,
            "rebuilt {} keys; {} changed meanwhile and were left alone (replay again): {}",
            report.rebuilt,
            report.conflicts.len(),
            report.conflicts.join(", ")
        )?;
    }
    Ok(())
}
