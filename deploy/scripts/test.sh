#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs and starts what the tests need (the
# wasm32-wasip2 target, Redis, a Redis Cluster and Kafka on loopback), then runs every
# test of the workspace once, in release mode (the rule engine and the convergence check are
# compute-heavy; one optimised build serves the tests, the benchmarks and the demo).
set -euo pipefail
cd "$(dirname "$0")/../.."

# Rule components are wasm32-wasip2; the Fluvio SmartModule is a core module (wasm32-unknown-unknown).
for target in wasm32-wasip2 wasm32-unknown-unknown; do
  rustup target list --installed | grep -qx "$target" || rustup target add "$target"
done

# Real services on loopback: Redis, a 3-master Redis Cluster, Apache Kafka (KRaft).
bash deploy/scripts/redis.sh
bash deploy/scripts/redis.sh --cluster
bash deploy/scripts/kafka.sh

# The rule crates are built for wasm32-wasip2 by the tests themselves (tests/src/build.rs);
# building them here first only makes a failure show up with cargo's own message.
cargo build --release --target wasm32-wasip2 \
  -p converge-order-rule \
  -p converge-test-rule-last-write-wins \
  -p converge-test-rule-faulty \
  -p converge-test-rule-forbidden-import \
  -p converge-test-rule-version-rank
cargo build --release --target wasm32-unknown-unknown -p converge-order-smartmodule
# The default members: host (unit tests), plugin (the rule core and its vectors, natively) and
# tests (integration tests against the compiled components and the binary).
cargo test --release "$@"
