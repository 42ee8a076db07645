//! The enrich stage in a build without the `http` feature: there is no client, so an id-only
//! message is dead-lettered (in the group stage). The same API as `enrich.rs`, so the pipeline
//! carries no `cfg` (wasmtime's pattern: a feature that is off is a stub module).

use std::collections::HashMap;
use std::fmt;

use super::PipelineError;
use super::context::Context;
use super::decode::{Decoded, FieldMapping};
use crate::entity::Event;

/// The order-detail API client, which this build lacks: no value of it exists.
#[derive(Debug, Clone)]
pub enum Enricher {}

/// Why an entity could not be fetched: never, in this build.
#[derive(Debug)]
pub enum EnrichError {}

/// Why an [`Enricher`] cannot be set up: never, in this build.
#[derive(Debug)]
pub enum EnrichSetupError {}

/// Each id-only key's answer: always none, in this build.
pub(super) type Fetched = HashMap<String, Result<Event, EnrichError>>;

/// Fetches nothing: there is no enricher.
pub(super) async fn enrich(
    enricher: Option<&Enricher>,
    _decoded: &[(usize, Decoded)],
    _mapping: &FieldMapping,
    _context: &Context,
) -> Result<Fetched, PipelineError> {
    match enricher {
        Some(never) => match *never {},
        None => Ok(HashMap::new()),
    }
}

impl fmt::Display for EnrichError {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {}
    }
}

impl std::error::Error for EnrichError {}

impl fmt::Display for EnrichSetupError {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {}
    }
}

impl std::error::Error for EnrichSetupError {}
