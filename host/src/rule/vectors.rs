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
use crate::rule::Rule;

/// A vector file's contents.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VectorFile {
    pub vectors: Vec<Vector>,
}

/// One case.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vector {
    pub name: String,
    #[serde(default)]
    pub current: Option<State>,
    pub incoming: Event,
    pub expect: Expectation,
}

/// What a vector expects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Expectation {
    Insert(Entity),
    Update(Entity),
    Ignore,
    Reject,
}

impl Expectation {
    pub fn is_met_by(&self, decision: &Decision) -> bool {
        match (self, decision) {
            (Expectation::Insert(want), Decision::Insert(got))
            | (Expectation::Update(want), Decision::Update(got)) => want == got,
            (Expectation::Ignore, Decision::Ignore(_))
            | (Expectation::Reject, Decision::Reject(_)) => true,
            _ => false,
        }
    }

    pub fn kind(&self) -> DecisionKind {
        match self {
            Expectation::Insert(_) => DecisionKind::Insert,
            Expectation::Update(_) => DecisionKind::Update,
            Expectation::Ignore => DecisionKind::Ignore,
            Expectation::Reject => DecisionKind::Reject,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    #[error("cannot read vectors {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid vectors {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

impl VectorFile {
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
    pub name: String,
    pub expected: Expectation,
    /// The decision, or the error the rule failed with.
    pub got: Result<Decision, String>,
}

/// Runs every vector; returns the ones that failed.
pub fn run(rule: &mut dyn Rule, vectors: &[Vector]) -> Vec<VectorFailure> {
    vectors
        .iter()
        .filter_map(|vector| {
            let got = rule
                .decide(vector.current.as_ref(), &vector.incoming)
                .map_err(|error| error.to_string());
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
