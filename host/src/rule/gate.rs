//! The gates a rule passes before it may serve: size, signature, compile, import allowlist, its
//! own conformance vectors, and a quick convergence check.
//!
//! A rule's vectors travel inside the component, as a custom section named
//! [`VECTORS_SECTION`] holding a vector file (see [`crate::rule::vectors`]). Rules built in Rust embed
//! it with `#[link_section]` (see `plugin/src/component.rs`); any other component gets one with
//! `converge rule pack` ([`pack`]). A rule read from a file may instead have its vectors in the
//! sidecar file `RULE.vectors.json`; an embedded section wins over a sidecar.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasm_encoder::ComponentSection;

use crate::rule::check::{self, CheckConfig, Violation};
use crate::rule::signature::{IntegrityError, SignatureError, TrustedKeys};
use crate::rule::vectors::{self, VectorFile};
use crate::rule::{CompiledRule, LoadError, RuleEngine};

/// The custom section that carries a rule's conformance vectors.
pub const VECTORS_SECTION: &str = "converge:vectors";

/// How strict the gates are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// Refuse a rule that brings no conformance vectors. On by default: vectors are the rule
    /// author's statement of intent, and the only gate that catches a rule that converges to the
    /// wrong answer.
    #[serde(default = "default_true")]
    pub require_vectors: bool,
    /// How many generated histories the quick convergence check runs (of up to 6 events; the
    /// full `converge check` runs 200 of up to 10). 200: the fewest at which every subtly
    /// wrong rule of the test suite failed on every one of 200 seeds (at 100, one in two
    /// hundred slipped through); a few hundred milliseconds for the shipped rule, so a swap
    /// still gates in well under a second.
    #[serde(default = "default_check_histories")]
    pub check_histories: usize,
}

fn default_true() -> bool {
    true
}

fn default_check_histories() -> usize {
    200
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            require_vectors: true,
            check_histories: default_check_histories(),
        }
    }
}

/// What refuses a candidate: one of the gates, or (for a promotion or rollback) the swap
/// itself. Its lowercase name labels metrics, logs and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gate {
    /// The component is larger than `rule.max_component_bytes`.
    Size,
    /// It is not signed by a trusted key (`rule.trusted_keys`), or a signature it carries does
    /// not verify.
    Signature,
    /// Not a gate of the candidate but of its delivery: a fleet pointer that is not a content
    /// hash, or a blob whose SHA-256 is not the hash it is stored under.
    Integrity,
    /// The bytes do not compile or link as a rule, or its info is invalid.
    Compile,
    /// The component imports outside the allowlist.
    Imports,
    /// The rule brings no conformance vectors, invalid ones, or fails them.
    Vectors,
    /// The quick convergence check found a counterexample.
    Convergence,
    /// Not a gate of the candidate: a promotion or rollback had nothing to act on.
    Swap,
    /// Not a gate of the candidate's bytes but of its behaviour on live events: it answered
    /// `ignore` far more often than the rule it was to replace (`rule.auto_rollback`), as a
    /// shadow before a promotion or after a swap (which was then rolled back).
    #[serde(rename = "ignore_share")]
    IgnoreShare,
}

impl Gate {
    /// The gate's name: `size`, `signature`, `integrity`, `compile`, `imports`, `vectors`,
    /// `convergence`, `swap` or `ignore_share`.
    pub fn as_str(self) -> &'static str {
        match self {
            Gate::Size => "size",
            Gate::Signature => "signature",
            Gate::Integrity => "integrity",
            Gate::Compile => "compile",
            Gate::Imports => "imports",
            Gate::Vectors => "vectors",
            Gate::Convergence => "convergence",
            Gate::Swap => "swap",
            Gate::IgnoreShare => "ignore_share",
        }
    }
}

impl std::fmt::Display for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a candidate was refused. Nothing of a refused candidate ever decides a served event.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// It is too large, does not compile, link or answer a valid info, or it imports outside
    /// the allowlist.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// It is not signed as `rule.trusted_keys` requires, or a signature does not verify.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// It arrived from the fleet as something it is not (see [`IntegrityError`]).
    #[error(transparent)]
    Integrity(#[from] IntegrityError),
    /// Its [`VECTORS_SECTION`] section does not parse as a vector file.
    #[error("the {VECTORS_SECTION} section is not a valid vector file: {0}")]
    Vectors(#[source] serde_json::Error),
    /// It brings no vectors, and [`GateConfig::require_vectors`] is on.
    #[error(
        "the rule brings no conformance vectors (a {VECTORS_SECTION} custom section, or RULE.vectors.json beside a rule file); set rule.gates.require_vectors = false to accept it anyway"
    )]
    NoVectors,
    /// It answers some of its own vectors otherwise than they expect.
    #[error("{} of {total} conformance vectors failed: {}", .failures.len(), describe_failures(.failures))]
    VectorsFailed {
        /// How many vectors it brings.
        total: usize,
        /// The ones it failed.
        failures: Vec<vectors::VectorFailure>,
    },
    /// The quick convergence check, run with a fresh random seed, found this counterexample.
    #[error(
        "the rule does not converge (check seed {seed}; `converge check RULE.wasm --quick --histories {histories} --seed {seed}` repeats it): {}",
        .violation.to_string().trim_end()
    )]
    NotConvergent {
        /// The seed the check drew its histories from.
        seed: u64,
        /// How many histories the check runs ([`GateConfig::check_histories`]).
        histories: usize,
        /// The shrunk counterexample.
        violation: Box<Violation>,
    },
}

impl GateError {
    /// Which gate refused, for metrics and status.
    pub fn gate(&self) -> Gate {
        match self {
            GateError::Load(LoadError::TooLarge { .. }) => Gate::Size,
            GateError::Signature(_) => Gate::Signature,
            GateError::Integrity(_) => Gate::Integrity,
            GateError::Load(LoadError::ForbiddenImports(_)) => Gate::Imports,
            GateError::Load(_) => Gate::Compile,
            GateError::Vectors(_) | GateError::NoVectors | GateError::VectorsFailed { .. } => {
                Gate::Vectors
            }
            GateError::NotConvergent { .. } => Gate::Convergence,
        }
    }
}

fn describe_failures(failures: &[vectors::VectorFailure]) -> String {
    failures
        .iter()
        .map(|failure| {
            let got = match &failure.got {
                Ok(decision) => decision.kind().as_str().to_owned(),
                Err(error) => format!("error ({error})"),
            };
            format!(
                "{:?} expected {} got {got}",
                failure.name,
                failure.expected.kind().as_str()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A candidate that passed every gate.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// The compiled rule, ready to instantiate.
    pub compiled: CompiledRule,
    /// The component's content hash (see [`content_hash`]).
    pub hash: String,
}

/// Runs the gates with one engine (and so one set of limits) for every candidate.
#[derive(Debug, Clone)]
pub struct Gates {
    engine: RuleEngine,
    config: GateConfig,
    trusted: TrustedKeys,
}

impl Gates {
    /// Gates that compile with `engine` and are as strict as `config`, trusting no signing key
    /// (see [`Gates::with_trusted_keys`]).
    pub fn new(engine: RuleEngine, config: GateConfig) -> Self {
        Self {
            engine,
            config,
            trusted: TrustedKeys::default(),
        }
    }

    /// These gates, requiring a signature by one of `trusted` (when there are any).
    pub fn with_trusted_keys(mut self, trusted: TrustedKeys) -> Self {
        self.trusted = trusted;
        self
    }

    /// The keys a candidate's signature must be by; none: signatures are not required.
    pub fn trusted_keys(&self) -> &TrustedKeys {
        &self.trusted
    }

    /// The engine candidates compile with, and its limits.
    pub fn engine(&self) -> &RuleEngine {
        &self.engine
    }

    /// Runs every gate on `bytes`. `sidecar` holds vectors found beside a rule file; vectors
    /// embedded in the component take precedence. CPU-bound (compiling, checking): call it
    /// from a blocking thread in async code.
    pub fn admit(&self, bytes: &[u8], sidecar: Option<VectorFile>) -> Result<Admitted, GateError> {
        // Size and signature first: nothing of untrusted bytes is compiled.
        self.engine.check_size(bytes.len())?;
        self.trusted.check(bytes)?;
        let compiled = self.engine.compile(bytes)?;
        let vectors = match embedded_vectors(bytes)? {
            Some(vectors) => Some(vectors),
            None => sidecar,
        };
        let vectors = match vectors {
            Some(file) => file.vectors,
            None if self.config.require_vectors => return Err(GateError::NoVectors),
            None => Vec::new(),
        };
        let mut rule = compiled.instance();
        let failures = vectors::run(&mut rule, &vectors);
        if !failures.is_empty() {
            return Err(GateError::VectorsFailed {
                total: vectors.len(),
                failures,
            });
        }
        // A fresh seed per candidate, and values from its vectors beside generated ones: a
        // rule cannot be tuned to the histories it will be checked with.
        let report = check::check(
            &compiled,
            &CheckConfig::quick(self.config.check_histories),
            &check::Corpus::from_vectors(&vectors),
        );
        if let Some(violation) = report.violation {
            return Err(GateError::NotConvergent {
                seed: report.seed,
                histories: self.config.check_histories,
                violation: Box::new(violation),
            });
        }
        Ok(Admitted {
            compiled,
            hash: content_hash(bytes),
        })
    }
}

/// The SHA-256 of a component, in hex: how a fleet names a rule version in Redis.
pub fn content_hash(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// The vectors a component carries: the last [`VECTORS_SECTION`] of the component itself (which
/// [`pack`] appends), else the last one inside any of its modules (where `#[link_section]`
/// puts it). `Ok(None)` when it carries none; bytes that are not wasm carry none (compiling
/// them fails on its own, with a better message).
pub fn embedded_vectors(bytes: &[u8]) -> Result<Option<VectorFile>, GateError> {
    let mut outer: Option<&[u8]> = None;
    let mut nested: Option<&[u8]> = None;
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else {
            return Ok(None);
        };
        match payload {
            wasmparser::Payload::ModuleSection { .. }
            | wasmparser::Payload::ComponentSection { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::CustomSection(section) if section.name() == VECTORS_SECTION => {
                if depth == 0 {
                    outer = Some(section.data());
                } else {
                    nested = Some(section.data());
                }
            }
            _ => {}
        }
    }
    outer
        .or(nested)
        .map(|data| serde_json::from_slice(data).map_err(GateError::Vectors))
        .transpose()
}

/// `component` with `vectors` appended as its [`VECTORS_SECTION`], which then takes precedence
/// over any section it already had.
pub fn pack(component: &[u8], vectors: &VectorFile) -> Result<Vec<u8>, serde_json::Error> {
    let data = serde_json::to_vec(vectors)?;
    let mut packed = component.to_vec();
    wasm_encoder::CustomSection {
        name: Cow::Borrowed(VECTORS_SECTION),
        data: Cow::Owned(data),
    }
    .append_to_component(&mut packed);
    Ok(packed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_are_named_in_lowercase_everywhere() {
        for (gate, name) in [
            (Gate::Size, "size"),
            (Gate::Signature, "signature"),
            (Gate::Integrity, "integrity"),
            (Gate::Compile, "compile"),
            (Gate::Imports, "imports"),
            (Gate::Vectors, "vectors"),
            (Gate::Convergence, "convergence"),
            (Gate::Swap, "swap"),
        ] {
            assert_eq!(gate.as_str(), name);
            assert_eq!(gate.to_string(), name);
            let json = serde_json::to_string(&gate).expect("serialises");
            assert_eq!(json, format!("{name:?}"));
            assert_eq!(serde_json::from_str::<Gate>(&json).expect("parses"), gate);
        }
        assert_eq!(GateError::NoVectors.gate(), Gate::Vectors);
    }
}
