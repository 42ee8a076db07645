//! converge: order-insensitive stream consumption.
//!
//! A business rule compiled to WebAssembly decides, per key, whether an incoming state is newer
//! than the stored one; converge writes the answer atomically, so the stored state converges
//! whatever the delivery order. See ARCHITECTURE.md for the data flow and invariants.
//!
//! # Layout
//! - [`entity`]: the rule's vocabulary (entity, decision, rule info), generated from the WIT
//!   contract, and its JSON form.
//! - [`rule`]: the [`rule::Rule`] trait every rule runner implements; decision validation.
//! - [`imports`]: the import allowlist a rule component must stay within.
//! - [`engine`]: compiles and runs rule components under a deadline and a memory cap.
//! - [`vectors`]: conformance vectors, fixed cases a rule must answer as written.
//! - [`gate`]: what a rule passes before it serves; vectors carried in a custom section.
//! - [`swap`]: the serving rule (active, previous, shadow), swapped between batches.
//! - [`rule_file`]: the watched rule file.
//! - [`replay`]: a rule folded over recorded events, compared with (or rebuilding) the store.
//! - [`fleet`]: rules published to every instance through Redis; status of live instances.
//! - [`check`]: the convergence property check and its minimal counterexamples.
//! - [`message`]: a message as a source delivers it, and its position.
//! - [`decode`]: message -> event, by field mapping.
//! - [`enrich`]: id-only message -> latest entity, from the order-detail HTTP API.
//! - [`source`]: the [`source::Source`] trait and the JSON-lines source.
//! - [`store`]: the [`store::Store`] trait (compare-and-set on a revision) and the in-memory store.
//! - [`redis_store`]: the Redis and Redis Cluster store, compare-and-set in Lua.
//! - [`dead_letter`]: dead letters and where they go.
//! - [`pipeline`]: one batch through decode, coalesce, load, decide, write, dead-letter.
//! - [`kafka_source`]: the Kafka consumer-group source, offsets stored after acknowledgement.
//! - [`fluvio_source`]: the Fluvio source, offsets committed after acknowledgement.
//! - [`kafka_dead_letters`]: dead letters to a Kafka topic.
//! - [`redis_dead_letters`]: dead letters to a Redis stream.
//! - [`config`]: the `serve` configuration (TOML), validated before connecting.
//! - [`serve`]: the pipeline built from a configuration, run until shutdown.
//! - [`admin`]: health, readiness and Prometheus metrics over HTTP.
//! - [`simulator`]: the order-system simulator: order API and a misbehaving publisher.
//! - [`cli`]: the `converge` command line.

pub mod admin;
pub mod check;
pub mod cli;
pub mod config;
pub mod dead_letter;
pub mod decode;
pub mod engine;
pub mod enrich;
pub mod entity;
pub mod fleet;
pub mod fluvio_source;
pub mod gate;
pub mod imports;
pub mod kafka_dead_letters;
pub mod kafka_source;
pub mod message;
pub mod pipeline;
pub mod redis_dead_letters;
pub mod redis_store;
pub mod replay;
pub mod rule;
pub mod rule_file;
pub mod serve;
pub mod simulator;
pub mod source;
pub mod store;
pub mod swap;
pub mod vectors;
