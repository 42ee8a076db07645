//! `converge replay`: a rule folded from scratch over recorded events, compared with the store
//! (and, with --rebuild, written over it).

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use converge::config::{Config, FileSourceConfig, SourceConfig};
use converge::replay::{ReplayReport, SourceSize, replay_with_progress};
use converge::source::open_lines;

use crate::EXIT_FAILED;
use crate::flags::EngineArgs;
use crate::progress_bar::Bar;

#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
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

pub(crate) fn replay(args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load_with_overrides(&args.config, &args.overrides)?;
    let compiled = args.engine.load(&args.rule)?;
    crate::runtime::multi_thread()?.block_on(async {
        let store = config.store.open().await?;
        let pipeline = config.pipeline.clone();
        let rebuild = args.rebuild;
        let bar = Bar::stderr();
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
                    converge::source::KafkaRange::open(&kafka.brokers, &kafka.topics, &kafka.properties)?;
                let (rule, size) = (compiled.instance(), SourceSize::Records(source.records()));
                replay_with_progress(rule, &mut source, pipeline, &store, rebuild, &bar, size)
                    .await?
            }
            #[cfg(not(feature = "kafka"))]
            (None, SourceConfig::Kafka(_)) => {
                return Err(crate::features::needs_feature("converge replay from a Kafka source", "kafka"));
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
