#!/usr/bin/env bash
# The end-to-end benchmark (Kafka -> rule -> Redis) on this machine: starts Redis and Kafka on
# loopback like the test command, then runs tests/benches/pipeline.rs, which prints events/s
# with the compiled component and with the rule compiled natively, event-to-stored latency
# percentiles at a fixed rate, and converge's CAS write rate against redis-benchmark running the
# same Lua script. Sizes: BENCH_ORDERS, BENCH_RATE, BENCH_LATENCY_SECONDS (see the bench's docs).
# With CONVERGE_BENCH_FLUVIO=host:port (a Fluvio cluster's SC), the throughput backlog also goes
# through the Fluvio source. The report is written to target/bench/pipeline.json
# (kafka_events_per_s and fluvio_events_per_s from the same run).
# The Wasm-tax micro-benchmarks are `cargo bench -p converge-tests --bench rule`.
set -euo pipefail
cd "$(dirname "$0")/../.."

rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
bash deploy/scripts/redis.sh
bash deploy/scripts/kafka.sh
cargo bench -p converge-tests --bench pipeline "$@"
