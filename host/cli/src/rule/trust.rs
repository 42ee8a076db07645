//! The keys a rule's signature must be by, for the commands that check one (verify, publish,
//! promote, rollback).

use std::path::PathBuf;

use clap::Args;
use converge::rule::{PublicKey, TrustedKeys};

/// The keys a rule's signature must be by, for the commands that check one.
#[derive(Debug, Args)]
pub(crate) struct TrustArgs {
    /// A public key (`ed25519:<base64>`, as `converge rule keygen` prints it) one of which must
    /// have signed the rule. Repeatable; the environment variable takes a comma-separated list.
    #[arg(
        long = "trusted-key",
        env = "CONVERGE_TRUSTED_KEYS",
        value_delimiter = ',',
        value_name = "KEY"
    )]
    trusted_keys: Vec<PublicKey>,
    /// Trust the keys of this `serve` configuration's `[rule] trusted_keys` too.
    #[arg(long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
}

impl TrustArgs {
    /// The keys given on the command line, in the environment and in the configuration.
    pub(crate) fn trusted(&self) -> anyhow::Result<TrustedKeys> {
        let mut keys = self.trusted_keys.clone();
        if let Some(path) = &self.config {
            let config = converge::config::Config::load(path)?;
            keys.extend(config.rule.trusted_keys);
        }
        Ok(TrustedKeys::new(keys))
    }
}
