//! `converge rule ...` (publish, status, promote, rollback, pack) and `converge replay`.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::{EXIT_FAILED, EngineArgs};
use crate::config::{Config, SourceConfig};
use crate::fleet::{Fleet, FleetStatus};
use crate::gate::{self, GateConfig, Gates};
use crate::kafka_source::KafkaRange;
use crate::replay::ReplayReport;
use crate::source::JsonLinesSource;
use crate::swap::Role;
use crate::vectors::VectorFile;

#[derive(Debug, Subcommand)]
pub(super) enum RuleCommand {
    /// Publish a rule to a fleet: store it in Redis by content hash, point the fleet's active
    /// (or, with --shadow, shadow) rule at it and announce it. Every instance gates it and swaps
    /// it in within seconds; `converge rule status` shows the outcome per instance.
    ///
    /// Vectors given with --vectors, or found beside the rule as RULE.vectors.json, are packed
    /// into the component first, so they travel with it. The gates run here too before
    /// anything is published. Exits 0 once published, 1 when the rule fails the gates here.
    Publish(PublishArgs),
    /// List the fleet's live instances with their active rule, shadow and last swap.
    Status(StatusArgs),
    /// Make the fleet's shadow rule its active rule.
    Promote(FleetArgs),
    /// Return the fleet to the rule active before the current one.
    Rollback(FleetArgs),
    /// Embed conformance vectors into a component (custom section `converge:vectors`), so that
    /// they travel with the rule.
    Pack(PackArgs),
}

#[derive(Debug, Args)]
pub(super) struct FleetArgs {
    /// The Redis holding the fleet's rules.
    #[arg(long, env = "CONVERGE_FLEET_REDIS", value_name = "URL")]
    redis: String,
    /// The fleet's name (`rule.fleet.name` of its instances).
    #[arg(long, env = "CONVERGE_FLEET", value_name = "NAME")]
    fleet: String,
}

impl FleetArgs {
    async fn connect(&self) -> anyhow::Result<Fleet> {
        Fleet::connect(&self.redis, &self.fleet)
            .await
            .with_context(|| format!("cannot reach the fleet's Redis at {}", self.redis))
    }
}

#[derive(Debug, Args)]
pub(super) struct PublishArgs {
    /// The rule component (.wasm).
    #[arg(value_name = "RULE.wasm")]
    rule: PathBuf,
    /// Conformance vectors to pack into the component. Default: RULE.vectors.json, if present.
    #[arg(long, value_name = "FILE")]
    vectors: Option<PathBuf>,
    /// Run the rule beside the active one, counting disagreements, without applying it.
    #[arg(long)]
    shadow: bool,
    /// Publish without gating here first (the instances still gate it).
    #[arg(long)]
    skip_local_gates: bool,
    #[command(flatten)]
    fleet: FleetArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Debug, Args)]
pub(super) struct StatusArgs {
    /// Print the status as one JSON document.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    fleet: FleetArgs,
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

fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

pub(super) fn rule(command: &RuleCommand) -> anyhow::Result<ExitCode> {
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
        RuleCommand::Pack(args) => {
            let component = read(&args.rule)?;
            let vectors = VectorFile::load(&args.vectors)?;
            let packed = gate::pack(&component, &vectors)?;
            std::fs::write(&args.output, packed)
                .with_context(|| format!("cannot write {}", args.output.display()))?;
            println!(
                "{} vectors packed into {}",
                vectors.vectors.len(),
                args.output.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read rule {}", path.display()))
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
        component = gate::pack(&component, vectors)?;
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

pub(super) fn replay(args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load_with_overrides(&args.config, &args.overrides)?;
    let compiled = args.engine.load(&args.rule)?;
    runtime()?.block_on(async {
        let store = crate::serve::open_store(&config.store).await?;
        let pipeline = config.pipeline.clone();
        let report = match (&args.input, &config.source) {
            (Some(path), _) => {
                let file = tokio::fs::File::open(path)
                    .await
                    .with_context(|| format!("cannot open input {}", path.display()))?;
                let mut source = JsonLinesSource::new(tokio::io::BufReader::new(file));
                crate::replay::replay(compiled.instance(), &mut source, pipeline, &store, args.rebuild)
                    .await?
            }
            (
                None,
                SourceConfig::Kafka {
                    brokers,
                    topics,
                    properties,
                    ..
                },
            ) => {
                let mut source = KafkaRange::open(brokers, topics, properties)?;
                crate::replay::replay(compiled.instance(), &mut source, pipeline, &store, args.rebuild)
                    .await?
            }
            (None, SourceConfig::File { path }) => {
                let file = tokio::fs::File::open(path)
                    .await
                    .with_context(|| format!("cannot open input {}", path.display()))?;
                let mut source = JsonLinesSource::new(tokio::io::BufReader::new(file));
                crate::replay::replay(compiled.instance(), &mut source, pipeline, &store, args.rebuild)
                    .await?
            }
            (None, SourceConfig::Fluvio { .. }) => anyhow::bail!(
                "replay reads a Kafka source or a file; for a Fluvio topic, export it as JSON lines and pass --input"
            ),
        };
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
