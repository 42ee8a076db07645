//! The `converge` command line.

use std::io::{self, IsTerminal as _, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

use crate::dead_letter::MemoryDeadLetters;
use crate::embedded::{Audit, Unconverged};
use crate::entity::{Event, State};
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::rule::Rule;
use crate::rule::check::{self, CheckConfig, CheckReport};
use crate::rule::vectors::{self, VectorFailure, VectorFile};
use crate::rule::{CompiledRule, EngineLimits, RuleEngine};
use crate::shutdown::Shutdown;
use crate::simulator::{MessageShape, Publisher, Simulator, SimulatorConfig};
use crate::source::open_lines;
use crate::store::MemoryStore;

#[cfg(feature = "redis")]
mod fleet;
mod manual;
mod progress;
mod rule_command;
mod signing;

/// Exit code: the check or run found a problem with the rule or the data.
const EXIT_FAILED: u8 = 1;

/// The error of a command (or a part of one) this build of converge was compiled without.
#[cfg(not(all(feature = "kafka", feature = "redis", feature = "http")))]
fn needs_feature(what: &str, feature: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{what} needs converge built with the `{feature}` feature; this build has {} \
         (rebuild with `cargo build --features {feature}`)",
        built_features()
    )
}

/// `the features kafka, redis` or `no transport features`.
#[cfg(not(all(feature = "kafka", feature = "redis", feature = "http")))]
fn built_features() -> String {
    let built: Vec<&str> = crate::FEATURES
        .iter()
        .filter(|(_, built)| *built)
        .map(|(name, _)| *name)
        .collect();
    if built.is_empty() {
        "no transport features".to_owned()
    } else {
        format!("the features {}", built.join(", "))
    }
}

/// Order-insensitive stream consumption: a WebAssembly rule decides, the store converges
///
/// converge makes consuming a stream of entity changes order-insensitive: a business rule
/// compiled to WebAssembly decides, per key, whether an incoming state is newer than the stored
/// one, so the stored state converges whatever the delivery order.
#[derive(Debug, Parser)]
#[command(
    name = "converge",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    /// How log lines (on stderr) are written: `text` for people, `json` (one object per line)
    /// for log collectors. The level is set with RUST_LOG (default `warn`; `info` logs every
    /// named event).
    #[arg(long, global = true, env = "CONVERGE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the pipeline on a JSON-lines stream with an in-memory store (no servers needed),
    /// then print the final states, the decision counts and whether every key converged.
    ///
    /// Exits 0 when every key converged, 1 when one did not, 2 on a usage or load error.
    /// Bad lines are reported with their line number and reason and counted; the run goes on.
    Run(RunArgs),
    /// Run the pipeline as configured (Kafka -> rule -> Redis), until SIGINT or SIGTERM.
    ///
    /// On a signal the batch in flight is finished, its offsets committed and the consumer
    /// group left. Exits 0 after a clean stop, 2 on a configuration or connection error.
    ///
    /// Each transport the configuration names needs its feature in this build: `kafka`
    /// (Kafka source and dead letters), `fluvio` (Fluvio source), `redis` (Redis store,
    /// stream dead letters, fleet), `http` (admin endpoint, enrichment).
    Serve(ServeArgs),
    /// Ask a rule for one decision and print it as JSON.
    ///
    /// Exits 0 with the decision, 1 when the rule failed (trap, deadline, memory cap, a
    /// decision against the contract), 2 on a usage or load error.
    Decide(DecideArgs),
    /// Check a rule: its conformance vectors, then convergence on generated event histories
    /// (every delivery order, duplicates, redelivery, no silent ignore, determinism). Prints a
    /// minimal counterexample on failure.
    ///
    /// Each run draws a fresh random seed and prints it; `--seed N` repeats that run exactly
    /// (with the same vectors and sample).
    ///
    /// Exits 0 when the rule passes, 1 when a check fails, 2 on a usage or load error. When
    /// stderr is a terminal, a progress bar counts the histories checked there.
    Check(CheckArgs),
    /// Simulate the order system: create orders, move them through their statuses, serve
    /// `GET /orders/{id}`, and publish every change keyed by order id — full or id-only — through
    /// a network that shuffles, duplicates and delays messages.
    ///
    /// Publishes to Kafka with --brokers, else writes JSON lines to stdout (the input of
    /// `converge run`). A summary goes to stderr. With --serve the order API stays up after
    /// the simulated orders are published, until SIGINT or SIGTERM.
    ///
    /// --brokers needs the `kafka` feature, --listen the `http` feature. When stderr is a
    /// terminal (and stdout is not, or --brokers is given), a progress bar counts the status
    /// changes published there.
    Simulate(SimulateArgs),
    /// Change the rule a fleet serves, without a redeploy: publish, status, promote, rollback,
    /// pack, and sign rules: keygen, sign, verify. See `converge rule --help`. Publish, status,
    /// promote and rollback need the `redis` feature.
    #[command(subcommand)]
    Rule(rule_command::RuleCommand),
    /// Fold recorded events through a rule from scratch and report which keys' final states
    /// differ from the stored ones; --rebuild writes the replayed states.
    ///
    /// Exits 0 when nothing differs (with --rebuild: when every difference was rebuilt), 1
    /// otherwise, 2 on a usage, load or connection error.
    ///
    /// Reading a Kafka source needs the `kafka` feature; a Redis store the `redis` feature.
    /// When stderr is a terminal, progress bars count what is read and the keys compared there.
    Replay(rule_command::ReplayArgs),
    /// Print a shell completion script to stdout
    ///
    /// Install it where the shell looks for completions; a new shell picks it up:
    ///
    ///   bash  converge completions bash > ~/.local/share/bash-completion/completions/converge
    ///   zsh   converge completions zsh > ~/.zfunc/_converge
    ///         (~/.zshrc, before compinit runs: fpath=(~/.zfunc $fpath); autoload -Uz compinit; compinit)
    ///   fish  converge completions fish > ~/.config/fish/completions/converge.fish
    ///
    /// System-wide: /usr/share/bash-completion/completions/converge,
    /// /usr/local/share/zsh/site-functions/_converge,
    /// /usr/share/fish/vendor_completions.d/converge.fish. For elvish, append the script to
    /// ~/.config/elvish/rc.elv; for PowerShell, to $PROFILE.
    #[command(verbatim_doc_comment)]
    Completions(manual::CompletionsArgs),
    /// Print converge's man page (roff) to stdout, or with --dir write one page per command
    ///
    ///   converge man > ~/.local/share/man/man1/converge.1
    ///   converge man --dir ~/.local/share/man/man1     (converge.1, converge-check.1, ...)
    ///
    /// Then `man converge`, `man converge-check`: man searches ~/.local/share/man when
    /// ~/.local/bin is on PATH (otherwise add ~/.local/share/man to MANPATH). System-wide:
    /// /usr/local/share/man/man1, then run `mandb`. To read it without installing:
    /// `converge man | man -l -`.
    #[command(verbatim_doc_comment)]
    Man(manual::ManArgs),
}

#[derive(Debug, Args)]
struct EngineArgs {
    /// How long one rule call may run before it is interrupted, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    deadline_ms: u64,
    /// The most memory one rule instance may use, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    memory_mib: usize,
    /// The largest rule component accepted, in bytes; a larger file is not read.
    #[arg(long, value_name = "BYTES", default_value_t = crate::rule::DEFAULT_MAX_COMPONENT_BYTES)]
    max_component_bytes: usize,
}

impl EngineArgs {
    fn engine(&self) -> anyhow::Result<RuleEngine> {
        Ok(RuleEngine::new(EngineLimits {
            memory_cap_bytes: self.memory_mib.saturating_mul(1 << 20),
            deadline: Duration::from_millis(self.deadline_ms),
            max_component_bytes: self.max_component_bytes,
            ..EngineLimits::default()
        })?)
    }

    fn load(&self, rule: &Path) -> anyhow::Result<CompiledRule> {
        self.engine()?
            .compile_file(rule)
            .with_context(|| format!("cannot load rule {}", rule.display()))
    }
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The rule component (.wasm).
    #[arg(long, env = "CONVERGE_RULE", value_name = "RULE.wasm")]
    rule: PathBuf,
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

#[derive(Debug, Args)]
struct ServeArgs {
    /// The configuration file (TOML); see deploy/converge.example.toml.
    #[arg(long, short, env = "CONVERGE_CONFIG", value_name = "FILE")]
    config: PathBuf,
    /// Overrides one setting of the file, by its dotted path, e.g.
    /// `--set source.brokers=kafka:9092` or `--set pipeline.batch_size=1024`. The value is read
    /// as TOML (a number, boolean, array...) and otherwise as a string. Repeatable.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    overrides: Vec<String>,
}

#[derive(Debug, Args)]
struct SimulateArgs {
    /// Orders to create and move through their lifecycle.
    #[arg(long, value_name = "N", default_value_t = SimulatorConfig::default().orders)]
    orders: usize,
    /// Order ids are this prefix and a number.
    #[arg(long, value_name = "PREFIX", default_value = "order-")]
    key_prefix: String,
    /// What a message carries: the whole order, or only its id (to be enriched).
    #[arg(long, value_enum, default_value_t = MessageShape::Full)]
    messages: MessageShape,
    /// Percent of messages published twice.
    #[arg(long, value_name = "PERCENT", default_value_t = SimulatorConfig::default().duplicate_percent)]
    duplicate_percent: u8,
    /// Messages held at once and let out in random order (1: keep the order).
    #[arg(long, value_name = "N", default_value_t = SimulatorConfig::default().shuffle_window)]
    shuffle_window: usize,
    /// Hold each message up to this long before publishing it.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    max_delay_ms: u64,
    /// Status changes per second; 0: as fast as possible. Paced runs are open-loop: each Kafka
    /// record's timestamp is the time it was scheduled for, even when it goes out late.
    #[arg(long, value_name = "N", default_value_t = 0)]
    rate: u32,
    /// Stop after this many seconds (with --rate: after rate × seconds changes); orders not yet
    /// final stay on their last status. Default: every order runs to its end.
    #[arg(long, value_name = "S")]
    seconds: Option<f64>,
    /// Seed of the simulation; the same seed makes the same orders and disorder.
    #[arg(long, value_name = "N", default_value_t = SimulatorConfig::default().seed)]
    seed: u64,
    /// Kafka bootstrap servers; without them, messages are written to stdout as JSON lines.
    #[arg(long, value_name = "HOST:PORT,...")]
    brokers: Option<String>,
    /// The topic to publish to.
    #[arg(long, value_name = "TOPIC", default_value = "orders")]
    topic: String,
    /// A librdkafka producer property (e.g. security.protocol=SASL_SSL). Repeatable.
    #[arg(long = "property", value_name = "NAME=VALUE")]
    properties: Vec<String>,
    /// Serve the order API (GET /orders/{id}, POST /orders, POST /orders/{id}/advance) here.
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// Write every order's final state here (JSON, by order id): what a converged store holds.
    #[arg(long, value_name = "FILE")]
    expected: Option<PathBuf>,
    /// Keep serving the order API after publishing, until SIGINT or SIGTERM.
    #[arg(long, requires = "listen")]
    serve: bool,
}

#[derive(Debug, Args)]
struct DecideArgs {
    /// The rule component (.wasm).
    #[arg(long, value_name = "RULE.wasm")]
    rule: PathBuf,
    /// The stored state as JSON, or `none` when nothing is stored.
    #[arg(long, value_name = "JSON|none", default_value = "none")]
    current: String,
    /// The incoming event as JSON, e.g. '{"key":"o-1","status":"paid","version":2}'.
    #[arg(long, value_name = "JSON")]
    incoming: String,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Debug, Args)]
struct CheckArgs {
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

/// The `--help` footer: which transport features this binary was built with.
fn features_help() -> String {
    let list: Vec<String> = crate::FEATURES
        .iter()
        .map(|(name, built)| {
            format!(
                "{name} {}",
                if *built {
                    "(built in)"
                } else {
                    "(not built in)"
                }
            )
        })
        .collect();
    format!(
        "Transport features: {}. A command or configuration that needs a feature this build \
         lacks is refused with the feature's name; rebuild with `cargo build --features NAME`.",
        list.join(", ")
    )
}

/// The command line as `--help`, the completions and the man pages show it.
fn command() -> clap::Command {
    Cli::command().after_help(features_help())
}

/// Parses the command line and runs the command. Errors are usage or load errors (exit 2).
pub fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::from_arg_matches(&command().get_matches())?;
    let logs = tracing_subscriber::fmt()
        // Whichever crate logs a URL, its password does not reach the log; nor does a log
        // line break a progress bar.
        .with_writer(progress::log_writer)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        );
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    match cli.command {
        Command::Run(args) => run_embedded(&args),
        Command::Serve(args) => serve(&args),
        Command::Decide(args) => decide(&args),
        Command::Check(args) => check_rule(&args),
        Command::Simulate(args) => simulate(&args),
        Command::Rule(command) => rule_command::rule(&command),
        Command::Replay(args) => rule_command::replay_command(&args),
        Command::Completions(args) => manual::completions(&args),
        Command::Man(args) => manual::man(&args),
    }
}

fn serve(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // First, so that a supervisor's SIGTERM during the start is a clean stop.
    let shutdown = signals(&runtime);
    let config = crate::config::Config::load_with_overrides(&args.config, &args.overrides)?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %args.config.display(),
        "starting"
    );
    runtime.block_on(async {
        crate::serve::serve(&config, shutdown.wait()).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// [`Shutdown::on_signals`]; without handlers (which only fails when the process cannot
/// install any), only the end of the work stops it, and the operator is told.
fn signals(runtime: &tokio::runtime::Runtime) -> Shutdown {
    let _entered = runtime.enter();
    Shutdown::on_signals().unwrap_or_else(|error| {
        tracing::warn!(%error, "cannot listen for SIGINT or SIGTERM; they will kill, not stop");
        Shutdown::never()
    })
}

fn simulate(args: &SimulateArgs) -> anyhow::Result<ExitCode> {
    let mut properties = std::collections::BTreeMap::new();
    for property in &args.properties {
        let (name, value) = property
            .split_once('=')
            .with_context(|| format!("--property {property:?} is not NAME=VALUE"))?;
        properties.insert(name.to_owned(), value.to_owned());
    }
    let config = SimulatorConfig {
        orders: args.orders,
        key_prefix: args.key_prefix.clone(),
        shape: args.messages,
        duplicate_percent: args.duplicate_percent.min(100),
        shuffle_window: args.shuffle_window,
        max_delay: Duration::from_millis(args.max_delay_ms),
        rate: args.rate,
        duration: args
            .seconds
            .map(|seconds| {
                Duration::try_from_secs_f64(seconds)
                    .with_context(|| format!("--seconds {seconds} is not a duration"))
            })
            .transpose()?,
        seed: args.seed,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let shutdown = signals(&runtime);
    runtime.block_on(async {
        let publisher = match &args.brokers {
            #[cfg(feature = "kafka")]
            Some(brokers) => Publisher::kafka(brokers, &args.topic, &properties)?,
            #[cfg(not(feature = "kafka"))]
            Some(_) => return Err(needs_feature("converge simulate --brokers", "kafka")),
            None => Publisher::Lines(Box::new(io::BufWriter::new(io::stdout()))),
        };
        let simulator = Simulator::new(config, publisher);
        let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
        #[cfg(not(feature = "http"))]
        drop(api_stopped);
        let api: Option<tokio::task::JoinHandle<io::Result<()>>> = match args.listen {
            #[cfg(feature = "http")]
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?;
                eprintln!(
                    "order API on http://{}/orders/{{id}}",
                    listener.local_addr()?
                );
                Some(tokio::spawn(simulator.serve_api(listener, async move {
                    let _ = api_stopped.await;
                })))
            }
            #[cfg(not(feature = "http"))]
            Some(_) => return Err(needs_feature("converge simulate --listen", "http")),
            None => None,
        };
        // Not over JSON lines written to the same terminal: the two would mix.
        let bar = progress::Bar::shown_if(args.brokers.is_some() || !io::stdout().is_terminal());
        let summary = simulator.run_with_progress(&bar).await?;
        bar.finish();
        if let Some(path) = &args.expected {
            let json = serde_json::to_string_pretty(&summary.expected)?;
            std::fs::write(path, json + "\n")
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        eprintln!("{}", serde_json::to_string(&summary)?);
        if args.serve {
            eprintln!("serving the order API until SIGINT or SIGTERM");
            shutdown.wait().await;
            simulator.drain().await?;
        }
        let _ = stop_api.send(());
        if let Some(api) = api {
            api.await??;
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn decide(args: &DecideArgs) -> anyhow::Result<ExitCode> {
    let current: Option<State> = if args.current.trim() == "none" {
        None
    } else {
        Some(serde_json::from_str(&args.current).context("--current is not a valid state")?)
    };
    let incoming: Event =
        serde_json::from_str(&args.incoming).context("--incoming is not a valid event")?;
    let mut rule = args.engine.load(&args.rule)?.instance();
    match rule.decide(current.as_ref(), &incoming) {
        Ok(decision) => {
            println!("{}", serde_json::to_string(&decision)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("converge: {error}");
            Ok(ExitCode::from(EXIT_FAILED))
        }
    }
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

fn check_rule(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let compiled = args.engine.load(&args.rule)?;
    let vectors_file = match &args.vectors {
        Some(path) => Some(path.clone()),
        None => Some(VectorFile::sidecar_path(&args.rule)).filter(|path| path.is_file()),
    };
    let vectors = match &vectors_file {
        Some(path) => VectorFile::load(path)?.vectors,
        // Otherwise the vectors the component carries, if any.
        None => crate::rule::embedded_vectors(&std::fs::read(&args.rule)?)?
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
                    .unwrap_or(crate::rule::GateConfig::default().check_histories),
            )
        } else {
            CheckConfig {
                histories: args.histories.unwrap_or(CheckConfig::default().histories),
                ..CheckConfig::default()
            }
        }
    };
    let bar = progress::Bar::stderr();
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
        match crate::pipeline::decode_bytes(&mapping, Some(line), None) {
            Ok(crate::pipeline::Decoded::Event(event)) => {
                corpus.add(&event);
                events += 1;
            }
            Ok(crate::pipeline::Decoded::IdOnly { key }) => corpus.add_key(&key),
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
                || {
                    format!(
                        "packed in the component as {}",
                        crate::rule::VECTORS_SECTION
                    )
                },
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

#[derive(Debug, serde::Serialize)]
struct RunReport<'a> {
    rule: String,
    stats: &'a crate::pipeline::Stats,
    dead_letters: Vec<crate::dead_letter::DeadLetter>,
    states: Vec<crate::store::Stored>,
    unconverged: Vec<Unconverged>,
    converged: bool,
}

fn run_embedded(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let compiled = args.engine.load(&args.rule)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let shutdown = signals(&runtime);
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
        pipeline.run(&mut audit, shutdown.wait()).await?;
        let unconverged = audit
            .verify(&mut compiled.instance(), pipeline.store())
            .await?;
        let report = RunReport {
            rule: pipeline.rule().info().stamp(),
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
    writeln!(out, "rule {}", report.rule)?;
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
    let decisions: Vec<String> = crate::entity::DecisionKind::ALL
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
