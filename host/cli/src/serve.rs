//! `converge serve`: the pipeline as configured, until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The configuration file (TOML); see deploy/converge.example.toml.
    #[arg(long, short, env = "CONVERGE_CONFIG", value_name = "FILE")]
    config: PathBuf,
    /// Overrides one setting of the file, by its dotted path, e.g.
    /// `--set source.brokers=kafka:9092` or `--set pipeline.batch_size=1024`. The value is read
    /// as TOML (a number, boolean, array...) and otherwise as a string. Repeatable.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    overrides: Vec<String>,
}

pub(crate) fn serve(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let runtime = crate::runtime::multi_thread()?;
    // First, so that a supervisor's SIGTERM during the start is a clean stop.
    let shutdown = crate::runtime::signals(&runtime);
    let config = converge::config::Config::load_with_overrides(&args.config, &args.overrides)?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %args.config.display(),
        "starting"
    );
    runtime.block_on(async {
        converge::serve(&config, shutdown).await?;
        Ok(ExitCode::SUCCESS)
    })
}
