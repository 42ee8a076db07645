//! Conformance vectors: fixed (current, incoming, expected) cases a rule must answer as written.
//!
//! A vector file is JSON:
//!
//! ```json
//! { "vectors": [
//!     { "name": "paid then completed updates",
//!       "current": {"key": "o-1", "status": "paid"},
//!       "incoming": {"key": "o-1", "status": "completed"},
//!       "expect": {"update": {"key": "o-1", "status": "completed"}} },
//!     { "name": "refunded ignores completed", "current": {...}, "incoming": {...},
//!       "expect": "ignore" }
//! ] }
//! ```
//!
//! `expect` is `{"insert": state}` or `{"update": state}` (the state the rule must store,
//! compared field by field), or `"ignore"` / `"reject"` (any reason). Entities are in their
//! JSON form: `version` and `timestamp_ms` default to 0, `payload` to null.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::entity::{Decision, DecisionKind, Entity, Event, State};
use crate::rule::{DecideError, Rule};

/// A vector file's contents.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VectorFile {
    /// The cases, run in order.
    pub vectors: Vec<Vector>,
}

/// One case.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vector {
    /// What the case shows, as failures name it.
    pub name: String,
    /// The stored state the rule decides over (absent: nothing stored).
    #[serde(default)]
    pub current: Option<State>,
    /// The event the rule decides for.
    pub incoming: Event,
    /// What the rule must answer.
    pub expect: Expectation,
}

/// What a vector expects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Expectation {
    /// `insert` of exactly this state.
    Insert(Entity),
    /// `update` to exactly this state.
    Update(Entity),
    /// `ignore`, whatever the reason.
    Ignore,
    /// `reject`, whatever the reason.
    Reject,
}

impl Expectation {
    /// Whether `decision` answers as expected (reasons of `ignore` and `reject` are free text
    /// and not compared).
    pub fn is_met_by(&self, decision: &Decision) -> bool {
        match (self, decision) {
            (Expectation::Insert(want), Decision::Insert(got))
            | (Expectation::Update(want), Decision::Update(got)) => want == got,
            (Expectation::Ignore, Decision::Ignore(_))
            | (Expectation::Reject, Decision::Reject(_)) => true,
            _ => false,
        }
    }

    /// The kind of decision expected.
    pub fn kind(&self) -> DecisionKind {
        match self {
            Expectation::Insert(_) => DecisionKind::Insert,
            Expectation::Update(_) => DecisionKind::Update,
            Expectation::Ignore => DecisionKind::Ignore,
            Expectation::Reject => DecisionKind::Reject,
        }
    }
}

/// Why a vector file cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    /// The file cannot be read.
    #[error("cannot read vectors {path}: {source}")]
    Read {
        /// The vector file.
        path: PathBuf,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// The file is not a vector file.
    #[error("invalid vectors {path}: {source}")]
    Parse {
        /// The vector file.
        path: PathBuf,
        /// What the parser found.
        source: serde_json::Error,
    },
}

impl VectorFile {
    /// Reads and parses the vector file at `path`.
    pub fn load(path: &Path) -> Result<Self, VectorError> {
        let text = std::fs::read_to_string(path).map_err(|source| VectorError::Read {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| VectorError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Where a rule's vectors live by convention: `rule.wasm` -> `rule.vectors.json`.
    pub fn sidecar_path(rule_path: &Path) -> PathBuf {
        rule_path.with_extension("vectors.json")
    }
}

/// A vector the rule answered otherwise than expected.
#[derive(Debug, Clone, Serialize)]
pub struct VectorFailure {
    /// The vector's name.
    pub name: String,
    /// What it expects.
    pub expected: Expectation,
    /// The decision, or the error the rule failed with.
    pub got: Result<Decision, DecideError>,
}

/// Runs every vector; returns the ones that failed.
pub fn run(rule: &mut dyn Rule, vectors: &[Vector]) -> Vec<VectorFailure> {
    vectors
        .iter()
        .filter_map(|vector| {
            let got = rule.decide(vector.current.as_ref(), &vector.incoming);
            let passed = got
                .as_ref()
                .is_ok_and(|decision| vector.expect.is_met_by(decision));
            (!passed).then(|| VectorFailure {
                name: vector.name.clone(),
                expected: vector.expect.clone(),
                got,
            })
        })
        .collect()
}
