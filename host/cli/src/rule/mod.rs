//! `converge rule …`: change the rule a fleet serves (publish, status, promote, rollback, in
//! Redis: the `redis` feature), pack vectors into a component, and sign rules (keygen, sign,
//! verify). One file per subcommand; `fleet` and `trust` hold the flags several of them take.

use std::process::ExitCode;

use clap::Subcommand;

mod fleet;
mod keygen;
mod pack;
#[cfg(feature = "redis")]
mod promote;
mod publish;
mod rollback;
mod sign;
mod status;
mod trust;
mod verify;

#[derive(Debug, Subcommand)]
pub(crate) enum RuleCommand {
    /// Publish a rule to a fleet: store it in Redis by content hash, point the fleet's active
    /// (or, with --shadow, shadow) rule at it and announce it. Every instance gates it and swaps
    /// it in within seconds; `converge rule status` shows the outcome per instance.
    ///
    /// Vectors given with --vectors, or found beside the rule as RULE.vectors.json, are packed
    /// into the component first, so they travel with it — except into a signed component,
    /// whose signature packing would break (pack, then sign, then publish). The signature is
    /// checked here (with --trusted-key: it must be by one of them), even with
    /// --skip-local-gates, then the other gates run before anything is published. Exits 0 once
    /// published, 1 when the rule fails a gate here.
    ///
    /// Needs the `redis` feature.
    Publish(publish::PublishArgs),
    /// List the fleet's live instances with their active rule, shadow and last swap.
    ///
    /// Needs the `redis` feature.
    Status(status::StatusArgs),
    /// Make the fleet's shadow rule its active rule, once its blob is checked as for
    /// rollback. A shadow whose release is below the fleet's floor is not promoted.
    ///
    /// Needs the `redis` feature.
    Promote(fleet::TargetArgs),
    /// Return the fleet to the rule active before the current one (versions an instance
    /// refused are skipped).
    ///
    /// The target is checked before the pointer moves: the history entry must be a content
    /// hash, its blob present, within the size cap and hashing to it, and its signature valid
    /// (with --trusted-key: by one of them). A target whose release (`converge rule sign
    /// --release`) is below the fleet's floor, the highest release it has made active, is a
    /// downgrade, which the fleet's instances refuse: it needs --allow-downgrade, which lowers
    /// the floor and records who made the downgrade, when, from and to what (`converge rule
    /// status`). Exits 0 once rolled back, 1 when the target is refused (nothing changes).
    ///
    /// Needs the `redis` feature.
    Rollback(rollback::RollbackArgs),
    /// Embed conformance vectors into a component (custom section `converge:vectors`), so that
    /// they travel with the rule. Pack before signing: packing changes what is signed.
    Pack(pack::PackArgs),
    /// Make a signing key: the private key (PKCS#8 PEM, mode 0600) at --out and its public key
    /// (one line, `ed25519:<base64>`, what `[rule] trusted_keys` takes) at --out with `.pub`
    /// appended. Prints the public key and its id. Never overwrites a file.
    Keygen(keygen::KeygenArgs),
    /// Sign a rule component with a key from `converge rule keygen`: appends a custom section
    /// `converge:signature`. Signatures by other keys stay (sign with the old and the new key
    /// while rotating); everything else the component carries is signed, vectors and release
    /// included.
    ///
    /// --release N writes the release number (custom section `converge:release`) before
    /// signing: a fleet refuses to make active a release below the highest it has made active,
    /// so number each published version higher than the last. A component without one is
    /// release 0.
    Sign(sign::SignArgs),
    /// List a component's signatures and check them: exits 0 when it is signed and every
    /// signature verifies (with --trusted-key: one is by a trusted key), 1 otherwise.
    Verify(verify::VerifyArgs),
}

/// Runs a `rule` subcommand.
pub(crate) fn run(command: &RuleCommand) -> anyhow::Result<ExitCode> {
    match command {
        RuleCommand::Pack(args) => pack::pack(args),
        RuleCommand::Keygen(args) => keygen::keygen(args),
        RuleCommand::Sign(args) => sign::sign(args),
        RuleCommand::Verify(args) => verify::verify(args),
        #[cfg(feature = "redis")]
        RuleCommand::Publish(args) => publish::publish(args),
        #[cfg(feature = "redis")]
        RuleCommand::Status(args) => status::status(args),
        #[cfg(feature = "redis")]
        RuleCommand::Promote(args) => promote::promote(args),
        #[cfg(feature = "redis")]
        RuleCommand::Rollback(args) => rollback::rollback(args),
        #[cfg(not(feature = "redis"))]
        RuleCommand::Publish(_)
        | RuleCommand::Status(_)
        | RuleCommand::Promote(_)
        | RuleCommand::Rollback(_) => Err(crate::features::needs_feature(
            "converge rule publish, status, promote and rollback",
            "redis",
        )),
    }
}
