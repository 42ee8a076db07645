//! converge's integration tests: one binary, real components, real processes.

mod check;
mod cli;
mod codec;
mod crash;
mod decode_fuzz;
mod engine;
mod enrich;
mod fluvio;
mod in_flight;
mod kafka;
mod pipeline;
mod poison;
mod redis_faults;
mod redis_store;
mod redis_tls;
mod replay;
mod simulator;
mod smartmodule;
mod supply_admin;
mod supply_check;
mod supply_secrets;
mod supply_signature;
mod supply_silence;
mod swap;
mod t3_full;
