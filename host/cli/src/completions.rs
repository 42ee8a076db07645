//! `converge completions`: a shell completion script, generated from the same clap definition
//! as `--help`, so it never falls behind it.

use std::io::{self, Write as _};
use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

pub(crate) fn completions(args: &CompletionsArgs) -> anyhow::Result<ExitCode> {
    // Into memory first: the generator panics on a write error, and a reader that stops
    // early (`| head`) is not one.
    let mut script = Vec::new();
    clap_complete::generate(
        args.shell,
        &mut crate::flags::command(),
        crate::man::BIN,
        &mut script,
    );
    let mut out = io::stdout().lock();
    out.write_all(&script)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
