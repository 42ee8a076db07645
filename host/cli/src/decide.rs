//! `converge decide`: one decision asked of a rule.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use converge::entity::{Event, State};
use converge::rule::Rule as _;

use crate::flags::EngineArgs;
use crate::{EXIT_FAILED, shipped_rule};

#[derive(Debug, Args)]
pub(crate) struct DecideArgs {
    /// The rule component (.wasm). Default: the shipped order-status rule, built into converge.
    #[arg(long, value_name = "RULE.wasm")]
    rule: Option<PathBuf>,
    /// The stored state as JSON, or `none` when nothing is stored.
    #[arg(long, value_name = "JSON|none", default_value = "none")]
    current: String,
    /// The incoming event as JSON, e.g. '{"key":"o-1","status":"paid","version":2}'.
    #[arg(long, value_name = "JSON")]
    incoming: String,
    #[command(flatten)]
    engine: EngineArgs,
}

pub(crate) fn decide(args: &DecideArgs) -> anyhow::Result<ExitCode> {
    let current: Option<State> = if args.current.trim() == "none" {
        None
    } else {
        Some(serde_json::from_str(&args.current).context("--current is not a valid state")?)
    };
    let incoming: Event =
        serde_json::from_str(&args.incoming).context("--incoming is not a valid event")?;
    let mut rule = shipped_rule::load(&args.engine, args.rule.as_deref())?.instance();
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
