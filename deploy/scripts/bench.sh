#!/usr/bin/env bash
# The end-to-end benchmark (Kafka -> rule -> Redis) on this machine, with `converge serve`'s
# default configuration: starts Redis, the Redis Cluster and Kafka on loopback like the test
# command, then runs tests/benches/pipeline.rs (its doc comment says what each run measures and
# how). Redis is switched to AOF with appendfsync everysec for the run and back afterwards.
#
# It reports events/s draining a backlog (three runs: min, median, max; natively; into the Redis
# Cluster), the limits on this machine (librdkafka's bare consume rate, redis-benchmark running
# converge's compare-and-set script at converge's pipeline depth), latency percentiles under an
# open-loop producer in its own process (`converge simulate --rate`, records stamped with their
# intended send time; the first second after the group join is left out), the pause of a rule
# swap, consumer lag over time, batch sizes and time per stage from converge's own metrics.
# The report goes to target/bench/pipeline.json, the plots to target/bench/pipeline.svg.
#
# Sizes (environment):
#   BENCH_ORDERS            orders per backlog (default 40000; ~2.9 changes each, 20% duplicated)
#   BENCH_RATE              changes/s of the latency runs (default 10000)
#   BENCH_LATENCY_SECONDS   length of each latency run (default 10)
#   BENCH_CAS_REQUESTS      redis-benchmark calls (default 200000)
# With CONVERGE_BENCH_FLUVIO=host:port (a Fluvio cluster's SC), the backlog also goes through
# the Fluvio source (fluvio_events_per_s).
# The Wasm-tax micro-benchmarks are `cargo bench -p converge-tests --bench rule`.
#
# `bench.sh rules` runs tests/benches/rules.rs instead: the order-status rule in Rust, Go,
# Python and JavaScript, each built by its project (toolchains installed when missing), measured
# alike (size, load cold and from the compile cache, instantiate, decide, decide-batch, end to
# end through Kafka and Redis, swap pause); report in target/bench/rules.json, bars in
# target/bench/rules.svg. Sizes: BENCH_RULES_ORDERS (default 20000), BENCH_RULES_RATE (2000),
# BENCH_RULES_SECONDS (8).
set -euo pipefail
cd "$(dirname "$0")/../.."

rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
bash deploy/scripts/redis.sh
bash deploy/scripts/redis.sh --cluster
# redis-benchmark ships in Debian's redis-tools (a dependency of redis-server, which redis.sh
# installs); installed the same way if it is missing.
if ! command -v redis-benchmark >/dev/null; then
  echo "bench: installing the Debian package redis-tools (redis-benchmark)"
  export DEBIAN_FRONTEND=noninteractive
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd=sudo
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq redis-tools >/dev/null
fi
bash deploy/scripts/kafka.sh
if [ "${1:-}" = rules ]; then
  shift
  cargo bench -p converge-tests --bench rules "$@"
else
  cargo bench -p converge-tests --bench pipeline "$@"
fi
