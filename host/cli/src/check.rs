//! `converge check`: a rule's conformance vectors, then its convergence on generated event
//! histories.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use converge::pipeline::{Decoded, PipelineConfig, decode_bytes};
use converge::rule::check::{self, CheckConfig, CheckReport};
use converge::rule::vectors::{self, VectorFailure, VectorFile};
use converge::rule::{GateConfig, VECTORS_SECTION, embedded_vectors};

use crate::EXIT_FAILED;
use crate::flags::EngineArgs;
use crate::progress_bar::Bar;

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// The rule component (.wasm).
    #[arg(value_name = "RULE.wasm")]
    rule: PathBuf,
    /// Conformance vectors (JSON). Default: RULE.vectors.json beside the rule, if present, else
    /// the vectors packed into the component.
    #[arg(long, value_name = "FILE")]
    vectors: Option<PathBuf>,
    /// Print the report as one JSON document instead of text.
    #[arg(long)]
    json: bool,
    /// How many event histories to generate [default: 200; with --quick, the gates' 200].
    #[arg(long, value_name = "N")]
    histories: Option<usize>,
    /// Seed of the history generator: the printed seed of an earlier run repeats it (the same
    /// histories, the same counterexample). Default: a fresh random seed.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Messages to draw keys, statuses, versions, timestamps and payloads from, beside
    /// generated ones: JSON lines as `converge run` reads them, decoded with the default field
    /// mapping. A line that does not decode is an error.
    #[arg(long, value_name = "FILE")]
    sample: Option<PathBuf>,
    /// Run the quick check the gates run before a rule serves (shorter histories), e.g. to
    /// repeat a gate refusal with its seed.
    #[arg(long)]
    quick: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Debug, serde::Serialize)]
struct CheckOutput {
    rule: String,
    vectors_file: Option<PathBuf>,
    vectors_run: usize,
    sample_file: Option<PathBuf>,
    sample_events: usize,
    vector_failures: Vec<VectorFailure>,
    property: CheckReport,
    passed: bool,
}

pub(crate) fn check(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let compiled = args.engine.load(&args.rule)?;
    let vectors_file = match &args.vectors {
        Some(path) => Some(path.clone()),
        None => Some(VectorFile::sidecar_path(&args.rule)).filter(|path| path.is_file()),
    };
    let vectors = match &vectors_file {
        Some(path) => VectorFile::load(path)?.vectors,
        // Otherwise the vectors the component carries, if any.
        None => embedded_vectors(&std::fs::read(&args.rule)?)?
            .map(|file| file.vectors)
            .unwrap_or_default(),
    };
    let mut corpus = check::Corpus::from_vectors(&vectors);
    let sample_events = match &args.sample {
        Some(path) => read_sample(path, &mut corpus)?,
        None => 0,
    };
    let mut rule = compiled.instance();
    let vector_failures = vectors::run(&mut rule, &vectors);
    let config = CheckConfig {
        seed: args.seed,
        ..if args.quick {
            CheckConfig::quick(
                args.histories
                    .unwrap_or(GateConfig::default().check_histories),
            )
        } else {
            CheckConfig {
                histories: args.histories.unwrap_or(CheckConfig::default().histories),
                ..CheckConfig::default()
            }
        }
    };
    let bar = Bar::stderr();
    let property = check::check_with_progress(&compiled, &config, &corpus, &bar);
    bar.finish();
    let passed = vector_failures.is_empty() && property.passed();
    let output = CheckOutput {
        rule: compiled.info().stamp(),
        vectors_file,
        vectors_run: vectors.len(),
        sample_file: args.sample.clone(),
        sample_events,
        vector_failures,
        property,
        passed,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&output)?);
    } else {
        print_check(&mut io::stdout().lock(), &output)?;
    }
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

/// Adds the events of the JSON lines at `path` to `corpus`, decoded as `converge run` decodes
/// them; returns how many there were. Id-only messages add their key. A line that does not
/// decode fails the whole sample: a check drawing from part of it would pass for the wrong
/// reason.
fn read_sample(path: &Path, corpus: &mut check::Corpus) -> anyhow::Result<usize> {
    let text =
        std::fs::read(path).with_context(|| format!("cannot read sample {}", path.display()))?;
    let mapping = PipelineConfig::default().mapping;
    let mut events = 0;
    for (index, line) in text.split(|byte| *byte == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match decode_bytes(&mapping, Some(line), None) {
            Ok(Decoded::Event(event)) => {
                corpus.add(&event);
                events += 1;
            }
            Ok(Decoded::IdOnly { key }) => corpus.add_key(&key),
            Err(error) => anyhow::bail!(
                "sample {} line {}: {error} (every line must decode as `converge run` decodes it)",
                path.display(),
                index + 1
            ),
        }
    }
    Ok(events)
}

fn print_check(out: &mut impl Write, output: &CheckOutput) -> io::Result<()> {
    writeln!(out, "rule {}", output.rule)?;
    match &output.vectors_file {
        None if output.vectors_run == 0 => writeln!(
            out,
            "vectors: none given, no sidecar file and none packed in the component; skipped"
        )?,
        source => {
            let source = source.as_ref().map_or_else(
                || format!("packed in the component as {}", VECTORS_SECTION),
                |path| path.display().to_string(),
            );
            let failed = output.vector_failures.len();
            let status = if failed == 0 { "ok" } else { "FAIL" };
            writeln!(
                out,
                "vectors: {status} — {} of {} passed ({})",
                output.vectors_run - failed,
                output.vectors_run,
                source
            )?;
            for failure in &output.vector_failures {
                let got = match &failure.got {
                    Ok(decision) => serde_json::to_string(decision).unwrap_or_default(),
                    Err(error) => format!("error: {error}"),
                };
                let expected = serde_json::to_string(&failure.expected).unwrap_or_default();
                writeln!(
                    out,
                    "  FAIL {}: expected {expected}, got {got}",
                    failure.name
                )?;
            }
        }
    }
    if let Some(path) = &output.sample_file {
        writeln!(
            out,
            "sample: {} events ({})",
            output.sample_events,
            path.display()
        )?;
    }
    let property = &output.property;
    writeln!(
        out,
        "seed {} (--seed {} repeats this run)",
        property.seed, property.seed
    )?;
    match &property.violation {
        None => writeln!(
            out,
            "convergence: ok — {} histories, {} delivery orders, {} decisions",
            property.histories, property.orders, property.decisions
        )?,
        Some(violation) => {
            writeln!(
                out,
                "convergence: FAIL after {} histories, {} delivery orders (seed {})",
                property.histories, property.orders, property.seed
            )?;
            write!(out, "{violation}")?;
        }
    }
    writeln!(out, "{}", if output.passed { "PASS" } else { "FAIL" })?;
    Ok(())
}
