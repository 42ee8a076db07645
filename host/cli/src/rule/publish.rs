//! `converge rule publish`: a rule stored in the fleet's Redis and made its active (or shadow)
//! rule, once its signature and, here first, the other gates pass.

use std::path::PathBuf;
#[cfg(feature = "redis")]
use std::process::ExitCode;

use clap::Args;
#[cfg(feature = "redis")]
use converge::rule::vectors::VectorFile;
#[cfg(feature = "redis")]
use converge::rule::{GateConfig, Gates, pack, read_component, signatures};
#[cfg(feature = "redis")]
use converge::swap::{FleetError, Role};

use super::fleet::FleetArgs;
use super::trust::TrustArgs;
#[cfg(feature = "redis")]
use crate::EXIT_FAILED;
use crate::flags::EngineArgs;

#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    /// The rule component (.wasm).
    #[arg(value_name = "RULE.wasm")]
    pub(crate) rule: PathBuf,
    /// Conformance vectors to pack into the component. Default: RULE.vectors.json, if present.
    #[arg(long, value_name = "FILE")]
    pub(crate) vectors: Option<PathBuf>,
    /// Run the rule beside the active one, counting disagreements, without applying it.
    #[arg(long)]
    pub(crate) shadow: bool,
    /// Publish without running the compile, vector and convergence gates here first (the
    /// instances still run them); the signature is checked all the same.
    #[arg(long)]
    pub(crate) skip_local_gates: bool,
    #[command(flatten)]
    pub(crate) fleet: FleetArgs,
    #[command(flatten)]
    pub(crate) trust: TrustArgs,
    #[command(flatten)]
    pub(crate) engine: EngineArgs,
}

#[cfg(feature = "redis")]
pub(crate) fn publish(args: &PublishArgs) -> anyhow::Result<ExitCode> {
    let mut component = read_component(&args.rule, args.engine.max_component_bytes)?;
    let trusted = args.trust.trusted()?;
    let sidecar = VectorFile::sidecar_path(&args.rule);
    // Packing changes what is signed: a signed component is published as it is.
    let signed = signatures(&component).is_ok_and(|found| !found.is_empty());
    let vectors = match &args.vectors {
        Some(_) if signed => anyhow::bail!(
            "{} is signed, and packing --vectors into it would break its signature: pack first \
             (`converge rule pack`), then sign, then publish",
            args.rule.display()
        ),
        Some(path) => Some(VectorFile::load(path)?),
        None if sidecar.exists() && signed => {
            eprintln!(
                "note: {} is not packed: {} is signed, and packing would break its signature \
                 (pack before signing)",
                sidecar.display(),
                args.rule.display()
            );
            None
        }
        None if sidecar.exists() => Some(VectorFile::load(&sidecar)?),
        None => None,
    };
    if let Some(vectors) = &vectors {
        component = pack(&component, vectors)?;
    }
    // --skip-local-gates skips compiling and checking here, never the signature.
    if let Err(error) = trusted.check(&component) {
        eprintln!(
            "not published: {} refused by the signature gate: {error}",
            args.rule.display()
        );
        return Ok(ExitCode::from(EXIT_FAILED));
    }
    if !args.skip_local_gates {
        let gates =
            Gates::new(args.engine.engine()?, GateConfig::default()).with_trusted_keys(trusted);
        if let Err(error) = gates.admit(&component, None) {
            eprintln!(
                "not published: {} refused by the {} gate: {error}",
                args.rule.display(),
                error.gate()
            );
            return Ok(ExitCode::from(EXIT_FAILED));
        }
    }
    let role = if args.shadow {
        Role::Shadow
    } else {
        Role::Active
    };
    crate::runtime::multi_thread()?.block_on(async {
        let published = args.fleet.connect().await?.publish(&component, role).await;
        let hash = match published {
            Ok(hash) => hash,
            Err(error @ (FleetError::BelowFloor { .. } | FleetError::Integrity(_))) => {
                eprintln!("not published: {error}");
                return Ok(ExitCode::from(EXIT_FAILED));
            }
            Err(error) => return Err(error.into()),
        };
        println!(
            "published {} as the {} rule of fleet {} ({hash})",
            args.rule.display(),
            role.as_str(),
            args.fleet.fleet
        );
        Ok(ExitCode::SUCCESS)
    })
}
