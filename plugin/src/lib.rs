//! The seed's order-status rule.
//!
//! An order moves through `created < paid < completed < refunded`. The kitchen only needs an
//! order's latest state, so an incoming event replaces the stored one only if it is newer:
//! higher status rank, then (same status) higher version, then later source timestamp, and —
//! when all of these agree but the payloads differ — the payload that sorts higher byte-wise.
//! The last step makes the order total, so the stored state never depends on which of two
//! conflicting observations arrived last.
//!
//! # Layout
//! - [`core`]: the pure decision function, ordinary Rust, tested natively.
//! - `component` (wasm32-wasip2 only): the wit-bindgen glue exporting the core as
//!   `converge:rule`.
//!
//! The same core runs inside Fluvio as a SmartModule: see `plugin/smartmodule`.

pub mod core;

#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
#[allow(unsafe_code)] // wit-bindgen's generated ABI glue is unsafe by nature.
mod component;

pub use crate::core::{Decision, Entity, NAME, STATUSES, VERSION, decide};
