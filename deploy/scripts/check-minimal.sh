#!/usr/bin/env bash
# Checks converge built without its transports (`--no-default-features`, what demo.sh builds):
# README command 1 converges every order of the sample, and a configuration that names a
# transport is refused with the feature it needs, before anything connects.
set -euo pipefail
cd "$(dirname "$0")/../.."

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
bash deploy/scripts/demo.sh --json > "$out/report.json"
python3 - "$out/report.json" deploy/sample/orders.expected.json <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
expected = {s["key"]: s for s in json.load(open(sys.argv[2]))["final_states"]}
states = {s["state"]["key"]: s["state"] for s in report["states"]}
assert report["converged"], "the demo did not converge"
assert set(states) == set(expected), "the demo stored other keys than the sample's orders"
fields = ("status", "version", "timestamp_ms")
wrong = [k for k, e in expected.items() if any(states[k][f] != e[f] for f in fields)]
assert not wrong, f"orders not on their expected state: {wrong[:5]}"
print(f"check-minimal: the demo converged {len(states)} orders to their expected states")
PY

# serve reads its rule from a file: the shipped rule's component.
cargo build --quiet --release --target wasm32-wasip2 -p converge-order-rule
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
cat > "$out/kafka.toml" <<TOML
[rule]
path = "$target_dir/wasm32-wasip2/release/converge_order_rule.wasm"
[source]
kind = "kafka"
brokers = "127.0.0.1:9"
group_id = "g"
topics = ["orders"]
[store]
kind = "memory"
[dead_letter]
kind = "kafka"
topic = "orders.dlq"
TOML
# Bounded: were the feature check ever lost, serve would retry the unreachable broker forever.
if timeout 60 "$target_dir/release/converge" serve --config "$out/kafka.toml" 2> "$out/serve.err"; then
  echo "check-minimal: serve accepted a Kafka source in a build without the kafka feature" >&2
  exit 1
fi
grep -q 'needs converge built with the `kafka` feature' "$out/serve.err" || {
  echo "check-minimal: serve's error does not name the missing feature:" >&2
  cat "$out/serve.err" >&2
  exit 1
}
echo "check-minimal: serve names the missing feature: $(head -c 200 "$out/serve.err")"
"$target_dir/release/converge" --help | grep -q 'kafka (not built in)' || {
  echo "check-minimal: --help does not say which transport features are missing" >&2
  exit 1
}
echo "check-minimal: --help lists the transport features this build lacks"
