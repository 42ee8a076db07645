//! `converge`, the command line of the converge library: each command in a file of its own,
//! its flags beside it.
//!
//! Its files, and what each holds: the module map in ARCHITECTURE.md.

use std::process::ExitCode;

mod check;
mod completions;
mod decide;
mod features;
mod flags;
mod logs;
mod man;
mod new;
mod progress_bar;
mod replay;
mod rule;
mod run;
mod runtime;
mod serve;
mod shipped_rule;
mod simulate;

// The data path allocates and frees many small strings per event from a few threads (the
// runtime, librdkafka's); glibc's allocator spent a fifth of converge's CPU on them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code: the check or run found a problem with the rule or the data.
const EXIT_FAILED: u8 = 1;

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        // A reader that stopped reading (`converge run | head`) is not an error.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            // An error may quote a URL (a Redis client's, a request's): never its password.
            eprintln!("converge: {}", converge::redact::redact(&report(&error)));
            ExitCode::from(2)
        }
    }
}

/// Parses the command line and runs the command. Errors are usage or load errors (exit 2).
fn run() -> anyhow::Result<ExitCode> {
    let cli = flags::parse()?;
    logs::init(cli.log_format);
    match cli.command {
        flags::Command::Run(args) => run::run(&args),
        flags::Command::Serve(args) => serve::serve(&args),
        flags::Command::Decide(args) => decide::decide(&args),
        flags::Command::Check(args) => check::check(&args),
        flags::Command::New(args) => new::new(&args),
        flags::Command::Simulate(args) => simulate::simulate(&args),
        flags::Command::Rule(command) => rule::run(&command),
        flags::Command::Replay(args) => replay::replay(&args),
        flags::Command::Completions(args) => completions::completions(&args),
        flags::Command::Man(args) => man::man(&args),
    }
}

/// The error and its causes, joined by ": " as `{:#}` joins them, but a cause is left out when
/// the messages before it already say it: converge's errors spell out their cause and also
/// keep it as their source, which `{:#}` would print twice.
fn report(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if text.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    text
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::report;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read rule.wasm: {source}")]
    struct Read {
        source: std::io::Error,
    }

    #[test]
    fn a_cause_the_message_already_says_is_not_repeated() {
        let missing = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let error = anyhow::Error::new(Read { source: missing }).context("cannot load the rule");
        assert_eq!(
            report(&error),
            "cannot load the rule: cannot read rule.wasm: no such file"
        );
    }
}
