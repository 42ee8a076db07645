#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs and starts what the tests need (the
# wasm32-wasip2 target, Redis, a Redis Cluster and Kafka on loopback; podman and a static build
# for the container image; the checkers of deploy/), then runs every test of
# the workspace once, in release mode (the rule engine and the convergence check are
# compute-heavy; one optimised build serves the tests, the benchmarks and the demo).
#
# Both feature sets are tested: converge without its transports (what the demo builds) first,
# then the whole workspace with every feature. The rule components are built by the tests
# themselves (tests/src/build.rs), each once per run.
set -euo pipefail
cd "$(dirname "$0")/../.."

# Rule components are wasm32-wasip2; the Fluvio SmartModule is a core module (wasm32-unknown-unknown).
for target in wasm32-wasip2 wasm32-unknown-unknown; do
  rustup target list --installed | grep -qx "$target" || rustup target add "$target"
done

# The Go rule's toolchain (wit-bindgen-cli and wasm-tools from crates.io, Go 1.27.1 from the Go
# module proxy), installed and cached under ~/.cache/converge/rule-toolchains/go on a fresh
# machine (once: about 11 minutes of CPU, 25 of wall time on a busy 2-core machine): the `lang_go_` and `new_` tests build
# Go rules (they would install it themselves; installing it here keeps it out of a test's time).
bash plugin/go/build.sh --install

# Real services on loopback: Redis, a 3-master Redis Cluster, Apache Kafka (KRaft).
bash deploy/scripts/redis.sh
bash deploy/scripts/redis.sh --cluster
bash deploy/scripts/kafka.sh

# The container image (a static musl converge with every transport, the shipped rule, FROM
# scratch), built before the tests that run it (`image_`), so that its build does not compete
# with them for the cores; then everything in deploy/ validated offline (manifests against the
# Kubernetes schemas, the systemd unit against that static binary, the alert rules).
bash deploy/scripts/image.sh
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bash deploy/scripts/deploy-check.sh "$target_dir/x86_64-unknown-linux-musl/release/converge"

# converge without transports: the library's and the binary's unit tests, README command 1 on
# that build, and the error a configuration naming a transport gets from it.
cargo test --release -p converge -p converge-cli --no-default-features "$@"
bash deploy/scripts/check-minimal.sh

# The toolchains of the rules in other languages (plugin/python, plugin/js; the `lang_` and
# `new_` tests build rules with their builders, plugin/templates/<lang>/build.sh): python3 with venv, node and npm from Debian when missing, then
# componentize-py and componentize-js as their lockfiles pin them, into
# ~/.cache/converge/rule-toolchains (once; later runs find them there).
if ! command -v node >/dev/null || ! command -v npm >/dev/null \
  || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  echo "test.sh: installing the Debian packages python3-venv, nodejs and npm"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd=sudo
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq python3-venv nodejs npm >/dev/null
fi
bash plugin/python/build.sh --install
bash plugin/js/build.sh --install

# The default members, every feature: host and host/cli (unit tests), plugin (the rule core, its
# vectors and the codec, natively) and tests (integration tests against the compiled components
# and the binary).
cargo test --release "$@"
