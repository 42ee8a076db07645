#!/usr/bin/env bash
# Prints `-p <package>` for every rule crate of the workspace, one a line: the packages that
# declare `[package.metadata.converge] rule = "<name>"` in their Cargo.toml (the order-status
# rule in plugin/, the test rules in tests/rules/*). The same metadata is what the tests build
# from (tests/src/build.rs), so the list is written only in the crates' own manifests.
#
#   cargo clippy --target wasm32-wasip2 $(bash deploy/scripts/rule-crates.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo metadata --no-deps --format-version 1 | python3 -c '
import json, sys

packages = json.load(sys.stdin)["packages"]
rules = sorted(
    package["name"]
    for package in packages
    if ((package.get("metadata") or {}).get("converge") or {}).get("rule")
)
if not rules:
    sys.exit("rule-crates.sh: no package declares [package.metadata.converge] rule")
for name in rules:
    print("-p", name)
'
