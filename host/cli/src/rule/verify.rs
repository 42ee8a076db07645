//! `converge rule verify`: a component's signatures listed and checked.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use converge::rule::{DEFAULT_MAX_COMPONENT_BYTES, read_component, release, signatures};

use super::trust::TrustArgs;
use crate::EXIT_FAILED;

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The rule component (.wasm).
    #[arg(value_name = "RULE.wasm")]
    rule: PathBuf,
    #[command(flatten)]
    trust: TrustArgs,
    /// The largest component read, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_COMPONENT_BYTES)]
    max_component_bytes: usize,
}

pub(crate) fn verify(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let component = read_component(&args.rule, args.max_component_bytes)?;
    let trusted = args.trust.trusted()?;
    let found = match signatures(&component) {
        Ok(found) => found,
        Err(error) => {
            println!("FAIL: {error}");
            return Ok(ExitCode::from(EXIT_FAILED));
        }
    };
    if let Ok(release) = release(&component) {
        println!("release {release}");
    }
    for signature in &found {
        println!(
            "signature by key {} ({}): {}{}",
            signature.key.id(),
            signature.key,
            if signature.verifies {
                "verifies"
            } else {
                "DOES NOT VERIFY"
            },
            if trusted.keys().contains(&signature.key) {
                ", trusted"
            } else {
                ""
            }
        );
    }
    let verdict = match trusted.check(&component) {
        Ok(Some(key)) => Ok(format!("signed by the trusted key {}", key.id())),
        Ok(None) if found.is_empty() => Err("not signed".to_owned()),
        Ok(None) => Ok("every signature verifies (no key trusted: give --trusted-key)".to_owned()),
        Err(error) => Err(error.to_string()),
    };
    Ok(match verdict {
        Ok(verdict) => {
            println!("PASS: {verdict}");
            ExitCode::SUCCESS
        }
        Err(verdict) => {
            println!("FAIL: {verdict}");
            ExitCode::from(EXIT_FAILED)
        }
    })
}
