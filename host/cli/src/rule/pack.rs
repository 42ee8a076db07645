//! `converge rule pack`: conformance vectors embedded into a component, to travel with it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use converge::rule::vectors::VectorFile;
use converge::rule::{DEFAULT_MAX_COMPONENT_BYTES, pack as pack_vectors, read_component};

#[derive(Debug, Args)]
pub(crate) struct PackArgs {
    /// The rule component (.wasm).
    #[arg(value_name = "RULE.wasm")]
    rule: PathBuf,
    /// The vector file to embed.
    #[arg(long, value_name = "FILE")]
    vectors: PathBuf,
    /// Where to write the packed component.
    #[arg(long, short, value_name = "FILE")]
    output: PathBuf,
}

pub(crate) fn pack(args: &PackArgs) -> anyhow::Result<ExitCode> {
    // Over the default size cap, the component is refused unread.
    let component = read_component(&args.rule, DEFAULT_MAX_COMPONENT_BYTES)?;
    let vectors = VectorFile::load(&args.vectors)?;
    let packed = pack_vectors(&component, &vectors)?;
    std::fs::write(&args.output, packed)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    println!(
        "{} vectors packed into {}",
        vectors.vectors.len(),
        args.output.display()
    );
    Ok(ExitCode::SUCCESS)
}
