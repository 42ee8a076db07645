//! `converge man`: the man pages, generated from the same clap definition as `--help`, so they
//! never fall behind it.

use std::io::{self, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

/// The name the completion scripts complete and the pages are named after.
pub(crate) const BIN: &str = "converge";

#[derive(Debug, Args)]
pub(crate) struct ManArgs {
    /// Write one page per command into this directory (converge.1, converge-check.1,
    /// converge-rule-sign.1, ...) instead of converge.1 to stdout.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

pub(crate) fn man(args: &ManArgs) -> anyhow::Result<ExitCode> {
    match &args.dir {
        None => {
            let mut out = io::BufWriter::new(io::stdout().lock());
            // As `generate_to` does: `help` has no page of its own to point to.
            let command = crate::flags::command().disable_help_subcommand(true);
            clap_mangen::Man::new(command).render(&mut out)?;
            out.flush()?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(crate::flags::command(), dir)
                .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
            eprintln!("man pages written to {}", dir.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
