//! The command line's definition: the commands, and the flags more than one of them takes.
//! Each command's own flags are in its file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use converge::rule::{CompileCache, CompiledRule, EngineLimits, RuleEngine};

use crate::logs::LogFormat;
use crate::{check, completions, decide, man, new, replay, rule, run, serve, simulate};

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
pub(crate) struct Cli {
    /// How log lines (on stderr) are written: `text` for people, `json` (one object per line)
    /// for log collectors. The level is set with RUST_LOG (default `warn`; `info` logs every
    /// named event).
    #[arg(long, global = true, env = "CONVERGE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the pipeline on a JSON-lines stream with an in-memory store (no servers needed),
    /// then print the final states, the decision counts and whether every key converged.
    ///
    /// Without --rule it runs the shipped order-status rule, built into converge, and says so
    /// on its first line. Exits 0 when every key converged, 1 when one did not, 2 on a usage
    /// or load error. Bad lines are reported with their line number and reason and counted; the run goes on.
    Run(run::RunArgs),
    /// Run the pipeline as configured (Kafka -> rule -> Redis), until SIGINT or SIGTERM.
    ///
    /// On a signal the batches in flight are finished, their offsets committed and the consumer
    /// group left. Exits 0 after a clean stop, 2 on a configuration or connection error.
    ///
    /// Each transport the configuration names needs its feature in this build: `kafka`
    /// (Kafka source and dead letters), `fluvio` (Fluvio source), `redis` (Redis store,
    /// stream dead letters, fleet), `http` (admin endpoint, enrichment).
    Serve(serve::ServeArgs),
    /// Ask a rule for one decision and print it as JSON.
    ///
    /// Without --rule it asks the shipped order-status rule, built into converge.
    ///
    /// Exits 0 with the decision, 1 when the rule failed (trap, deadline, memory cap, a
    /// decision against the contract), 2 on a usage or load error.
    Decide(decide::DecideArgs),
    /// Check a rule: its conformance vectors, then convergence on generated event histories
    /// (every delivery order, duplicates, redelivery, no silent ignore, determinism). Prints a
    /// minimal counterexample on failure.
    ///
    /// Each run draws a fresh random seed and prints it; `--seed N` repeats that run exactly
    /// (with the same vectors and sample).
    ///
    /// Exits 0 when the rule passes, 1 when a check fails, 2 on a usage or load error. When
    /// stderr is a terminal, a progress bar counts the histories checked there.
    Check(check::CheckArgs),
    /// Start a rule: write the folder NAME holding a minimal convergent rule in one language,
    /// its contract (wit/rule.wit), its vectors, a README and build.sh, which installs what the
    /// language needs when missing and writes NAME/NAME.wasm.
    ///
    ///   converge new my-rule --lang rust && (cd my-rule && ./build.sh) && converge check my-rule/my-rule.wasm
    #[command(verbatim_doc_comment)]
    New(new::NewArgs),
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
    Simulate(simulate::SimulateArgs),
    /// Change the rule a fleet serves, without a redeploy: publish, status, promote, rollback,
    /// pack, and sign rules: keygen, sign, verify. See `converge rule --help`. Publish, status,
    /// promote and rollback need the `redis` feature.
    #[command(subcommand)]
    Rule(rule::RuleCommand),
    /// Fold recorded events through a rule from scratch and report which keys' final states
    /// differ from the stored ones; --rebuild writes the replayed states.
    ///
    /// Exits 0 when nothing differs (with --rebuild: when every difference was rebuilt), 1
    /// otherwise, 2 on a usage, load or connection error.
    ///
    /// Reading a Kafka source needs the `kafka` feature; a Redis store the `redis` feature.
    /// When stderr is a terminal, progress bars count what is read and the keys compared there.
    Replay(replay::ReplayArgs),
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
    Completions(completions::CompletionsArgs),
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
    Man(man::ManArgs),
}

#[derive(Debug, Args)]
pub(crate) struct EngineArgs {
    /// How long one rule call may run before it is interrupted, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    pub(crate) deadline_ms: u64,
    /// The most memory one rule instance may use, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = converge::rule::DEFAULT_MEMORY_MIB)]
    pub(crate) memory_mib: usize,
    /// The largest rule component accepted, in bytes; a larger file is not read.
    #[arg(long, value_name = "BYTES", default_value_t = converge::rule::DEFAULT_MAX_COMPONENT_BYTES)]
    pub(crate) max_component_bytes: usize,
    /// Where compiled rules are kept, so the next load of the same component skips compiling
    /// (a directory of converge's alone); default: $XDG_CACHE_HOME/converge/rules, else
    /// $HOME/.cache/converge/rules.
    #[arg(long, value_name = "DIR", conflicts_with = "no_compile_cache")]
    pub(crate) compile_cache: Option<PathBuf>,
    /// Compile every rule, keeping nothing on disk.
    #[arg(long)]
    pub(crate) no_compile_cache: bool,
}

impl EngineArgs {
    /// An engine with these limits.
    pub(crate) fn engine(&self) -> anyhow::Result<RuleEngine> {
        let cache =
            CompileCache::configured(!self.no_compile_cache, self.compile_cache.as_deref())?;
        Ok(RuleEngine::with_compile_cache(
            EngineLimits {
                memory_cap_bytes: self.memory_mib.saturating_mul(1 << 20),
                deadline: Duration::from_millis(self.deadline_ms),
                max_component_bytes: self.max_component_bytes,
                ..EngineLimits::default()
            },
            cache,
        )?)
    }

    /// The rule component at `rule`, compiled by an engine with these limits.
    pub(crate) fn load(&self, rule: &Path) -> anyhow::Result<CompiledRule> {
        self.engine()?
            .compile_file(rule)
            .with_context(|| format!("cannot load rule {}", rule.display()))
    }
}

/// The command line as `--help`, the completions and the man pages show it.
pub(crate) fn command() -> clap::Command {
    Cli::command().after_help(crate::features::help())
}

/// The command line of this process; `--help`, `--version` and a usage error exit here.
pub(crate) fn parse() -> anyhow::Result<Cli> {
    Ok(Cli::from_arg_matches(&command().get_matches())?)
}
