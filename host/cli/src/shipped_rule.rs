//! The shipped order-status rule (`plugin/`), built by `build.rs` and carried in the binary:
//! the rule `converge run` and `converge decide` use when no `--rule` is given.

use std::path::Path;

use anyhow::Context as _;
use converge::rule::CompiledRule;

use crate::flags::EngineArgs;

/// The component's bytes.
const COMPONENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/order-status.wasm"));

/// What [`load`] says of the shipped rule where a rule's file would be named.
pub(crate) const BUILT_IN: &str = "built in";

/// The rule at `path`, or the shipped one when there is none; the log says which.
pub(crate) fn load(engine: &EngineArgs, path: Option<&Path>) -> anyhow::Result<CompiledRule> {
    let compiled = match path {
        Some(path) => engine.load(path)?,
        None => engine
            .engine()?
            .compile(COMPONENT)
            .context("cannot load the shipped order-status rule")?,
    };
    let from = path.map_or_else(|| BUILT_IN.into(), Path::to_string_lossy);
    tracing::info!(rule = %compiled.info().stamp(), %from, "rule loaded");
    Ok(compiled)
}
