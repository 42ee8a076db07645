//! Message -> event, the one way converge reads a message: field mapping, key validation and
//! canonical JSON, shared by the host (`converge`'s decode step) and the order-status
//! SmartModule (`plugin/smartmodule`), so a record one of them refuses the other refuses too,
//! with the same reason.
//!
//! A message is a JSON object. Its fields are found by name ([`FieldMapping`]):
//! - `key` (string or integer, required, not blank): the entity's identity; if the field is
//!   absent, the transport's message key is used. A key that is empty or only whitespace
//!   ([`char::is_whitespace`], i.e. what [`str::trim`] removes, Unicode spaces included) is
//!   refused ([`validate_key`]);
//! - `status` (string): when absent, the message is *id-only* — it names the entity but not its
//!   state, and must be enriched (the latest state fetched by key) before a rule can decide;
//! - `version`, `timestamp` (non-negative integers, default 0);
//! - `payload` (any JSON, default null), passed to the rule as canonical JSON text
//!   ([`canonical_json`]).
//!
//! The crate uses no OS API: it builds for the host, `wasm32-wasip2` and
//! `wasm32-unknown-unknown` (the SmartModule's target).
//!
//! # Layout
//! - [`FieldMapping`]: the field names and the size limit; [`FieldMapping::decode`] turns a
//!   message's bytes (and its transport key) into [`Decoded`] — an event's [`Fields`] or an
//!   id-only key — or a [`DecodeError`], which converge dead-letters.
//! - [`validate_key`]: the key rule, on its own.
//! - [`canonical_json`], [`NULL_PAYLOAD`]: a payload's text as a rule sees it.
//! - [`BAD_KEY_CORPUS`]: keys every reader of messages must refuse, for tests on both sides.

#![warn(missing_docs)]

mod corpus;
mod decode;
mod json;

pub use crate::corpus::{BAD_KEY_CORPUS, BadKey};
pub use crate::decode::{DecodeError, Decoded, FieldMapping, Fields, JsonError, validate_key};
pub use crate::json::{NULL_PAYLOAD, canonical_json};
