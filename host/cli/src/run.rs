//! `converge run`: the pipeline over JSON lines into the in-memory store, then every key
//! audited for convergence.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use converge::dead_letter::{DeadLetter, MemoryDeadLetters};
use converge::pipeline::{Pipeline, PipelineConfig, Stats};
use converge::rule::Rule as _;
use converge::source::open_lines;
use converge::store::{MemoryStore, Stored};
use converge::{Audit, Unconverged};

use crate::flags::EngineArgs;
use crate::{EXIT_FAILED, shipped_rule};

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The rule component (.wasm). Default: the shipped order-status rule, built into converge.
    #[arg(long, env = "CONVERGE_RULE", value_name = "RULE.wasm")]
    rule: Option<PathBuf>,
    /// JSON-lines input, one message per line; `-` reads stdin.
    #[arg(long, short, value_name = "FILE", default_value = "-")]
    input: PathBuf,
    /// The most messages per batch.
    #[arg(long, value_name = "N", default_value_t = PipelineConfig::default().batch_size)]
    batch_size: usize,
    /// Print the report as one JSON document instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Debug, serde::Serialize)]
struct RunReport<'a> {
    rule: String,
    /// The rule's file; none for the shipped rule built into converge.
    rule_file: Option<&'a Path>,
    stats: &'a Stats,
    dead_letters: Vec<DeadLetter>,
    states: Vec<Stored>,
    unconverged: Vec<Unconverged>,
    converged: bool,
}

pub(crate) fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let compiled = shipped_rule::load(&args.engine, args.rule.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let shutdown = crate::runtime::signals(&runtime);
    runtime.block_on(async {
        let config = PipelineConfig {
            batch_size: args.batch_size.max(1),
            ..PipelineConfig::default()
        };
        let mut pipeline = Pipeline::new(
            compiled.instance(),
            MemoryStore::new(),
            MemoryDeadLetters::new(),
            config,
        );
        let source = open_lines(&args.input)
            .await
            .with_context(|| format!("cannot open input {}", args.input.display()))?;
        let mut audit = Audit::new(source, pipeline.config().mapping.clone());
        pipeline.run(&mut audit, shutdown).await?;
        let unconverged = audit
            .verify(&mut compiled.instance(), pipeline.store())
            .await?;
        let report = RunReport {
            rule: pipeline.rule().info().stamp(),
            rule_file: args.rule.as_deref(),
            stats: pipeline.stats(),
            dead_letters: {
                // Reported in input order, whichever step of a batch refused them.
                let mut letters = pipeline.dead_letters().letters();
                letters.sort_by(|a, b| a.position.cmp(&b.position));
                letters
            },
            states: pipeline.store().snapshot(),
            converged: unconverged.is_empty(),
            unconverged,
        };
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_run(&mut io::BufWriter::new(io::stdout().lock()), &report)?;
        }
        Ok(if report.converged {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_FAILED)
        })
    })
}

fn print_run(out: &mut impl Write, report: &RunReport<'_>) -> io::Result<()> {
    match report.rule_file {
        Some(file) => writeln!(out, "rule {} ({})", report.rule, file.display())?,
        None => writeln!(out, "rule {} ({})", report.rule, shipped_rule::BUILT_IN)?,
    }
    for letter in &report.dead_letters {
        writeln!(
            out,
            "{}: {}: {}",
            letter.position,
            letter.kind.as_str(),
            letter.reason
        )?;
    }
    writeln!(out, "final states ({} keys):", report.states.len())?;
    for stored in &report.states {
        let state = &stored.state;
        writeln!(
            out,
            "  {:<14} {:<10} v{:<3} t={:<14} rev={:<3} {}",
            state.key,
            state.status,
            state.version,
            state.timestamp_ms,
            stored.revision,
            state.payload
        )?;
    }
    let stats = report.stats;
    let decisions: Vec<String> = converge::entity::DecisionKind::ALL
        .iter()
        .map(|kind| format!("{kind} {}", stats.decisions.get(kind).copied().unwrap_or(0)))
        .collect();
    writeln!(
        out,
        "messages {} in {} batches; decisions: {}; writes {}; dead letters {}",
        stats.messages,
        stats.batches,
        decisions.join(", "),
        stats.writes,
        report.dead_letters.len()
    )?;
    for key in &report.unconverged {
        writeln!(
            out,
            "NOT CONVERGED {}: stored {} but event {} would replace it",
            key.key,
            serde_json::to_string(&key.stored).unwrap_or_default(),
            serde_json::to_string(&key.superseded_by).unwrap_or_default()
        )?;
    }
    if report.converged {
        writeln!(
            out,
            "converged: every one of {} keys ended on its latest state (no delivered event would replace it)",
            report.states.len()
        )?;
    } else {
        writeln!(
            out,
            "NOT converged: {} of {} keys did not end on their latest state",
            report.unconverged.len(),
            report.states.len()
        )?;
    }
    Ok(())
}
