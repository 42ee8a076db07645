#!/usr/bin/env bash
# The main job on embedded defaults, no servers needed: runs `converge run` over the sample
# stream (shuffled, duplicated, with a few bad lines) into the in-memory store, with the shipped
# order-status rule that the binary carries (host/cli/build.rs builds it for wasm32-wasip2). Prints the final states, the decision counts
# and whether every order converged. Extra arguments go to `converge run` (e.g. --json).
#
# converge is built without its transports (Kafka, Fluvio, Redis, HTTP): the embedded run needs
# none of them, and librdkafka, OpenSSL and the fluvio client take most of a full build.
set -euo pipefail
cd "$(dirname "$0")/../.."

rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cargo build --quiet --release -p converge-cli --no-default-features --bin converge
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
exec "$target_dir/release/converge" run --input deploy/sample/orders.jsonl "$@"
