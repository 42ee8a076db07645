//! converge: order-insensitive stream consumption.
//!
//! A business rule compiled to WebAssembly decides, per key, whether an incoming state is newer
//! than the stored one; converge writes the answer atomically, so the stored state converges
//! whatever the delivery order. See ARCHITECTURE.md for the data flow and invariants.
//!
//! # Layout
//! - [`entity`]: the rule's vocabulary (entity, decision, rule info), generated from the WIT
//!   contract, and its JSON form.
//! - [`rule`]: the [`rule::Rule`] trait; the engine that runs rule components; the import
//!   allowlist; conformance vectors; the convergence check; the gates a candidate passes.
//! - [`swap`]: the serving rule (active, previous, shadow), the watched rule file and the fleet
//!   (Redis); the admin endpoint offers its uploads to the same control.
//! - [`source`]: the [`source::Source`] trait; messages and positions; JSON lines, Kafka,
//!   Fluvio.
//! - [`store`]: the [`store::Store`] trait (compare-and-set on a revision and writer); memory,
//!   Redis.
//! - [`dead_letter`]: dead letters and their sinks: memory, Kafka, Redis stream.
//! - [`pipeline`]: batches through decode, enrich, group, current state (cache or load), fold,
//!   then compare-and-set and dead-letter with several batches in flight, acknowledged in order.
//! - [`telemetry`]: the metrics every component reports to, and named events (log + metric).
//! - [`config`]: the `serve` configuration (TOML); each section builds its component.
//! - [`replay`]: a rule folded over recorded events, compared with (or rebuilding) the store.
//! - [`simulator`]: the order system's stand-in (publishing to Kafka with `kafka`, its order
//!   API with `http`).
//! - `serve`: the pipeline built from a configuration, run until shutdown ([`serve()`]).
//! - `admin`: health, readiness, metrics and rule swaps over HTTP (the server with feature
//!   `http`; its `[admin]` section always, so a build without it refuses the section by name).
//! - `audit`: `converge run`'s convergence audit ([`Audit`]): every delivered event kept and
//!   checked against the store after the run.
//! - [`progress`]: the [`progress::Progress`] a long call (replay, check, simulation) reports
//!   its stages and counts to; the command line (crate `converge-cli`) draws it as a bar on a
//!   terminal.
//! - [`redact`]: passwords in URLs replaced by `***` in everything converge prints; secrets
//!   whose `Debug` hides them.
//! - [`shutdown`]: the one stop request ([`shutdown::Shutdown`]), from a trigger or from
//!   SIGINT/SIGTERM.
//! - `backoff`: exponential backoff between attempts at something that failed.
//! - `fault`: crash points for the crash tests (feature `fault-injection`; nothing otherwise).
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
