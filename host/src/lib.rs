//! converge: order-insensitive stream consumption.
//!
//! A business rule compiled to WebAssembly decides, per key, whether an incoming state is newer
//! than the stored one; converge writes the answer atomically, so the stored state converges
//! whatever the delivery order. See ARCHITECTURE.md for the data flow and invariants.
//!
//! Its files, and what each holds: the module map in ARCHITECTURE.md.
//!
//! # Features
//! Transports are Cargo features, all on by default: `kafka` (rdkafka), `fluvio`, `redis`
//! (store, stream dead letters, fleet) and `http` (admin endpoint, enrichment, simulator API).
//! Without them converge still runs rules on JSON lines into memory (`converge run`, `check`,
//! `decide`), and says which feature a command or a configuration needs.

#![warn(missing_docs)]

mod admin;
mod audit;
mod backoff;
pub mod config;
pub mod dead_letter;
pub mod entity;
mod fault;
pub mod pipeline;
pub mod progress;
pub mod redact;
pub mod replay;
pub mod rule;
mod serve;
pub mod shutdown;
pub mod simulator;
pub mod source;
pub mod store;
pub mod swap;
pub mod telemetry;

pub use audit::{Audit, Unconverged};
pub use serve::{ServeError, serve};

/// The transport features this build of converge has, as `(feature, built in)`.
pub const FEATURES: [(&str, bool); 4] = [
    ("kafka", cfg!(feature = "kafka")),
    ("fluvio", cfg!(feature = "fluvio")),
    ("redis", cfg!(feature = "redis")),
    ("http", cfg!(feature = "http")),
];
