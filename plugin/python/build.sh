#!/usr/bin/env bash
# Builds the order-status rule in Python (app.py here) with the Python template's builder
# (plugin/templates/python/build.sh, the one `converge new --lang python` writes; see there for
# what it installs and caches), against the repository's wit/:
#
#   plugin/python/build.sh                  # -> order-status.wasm, its vectors beside it
#   plugin/python/build.sh APP_DIR OUT.wasm [VECTORS.json]   # tests/rules/*/python
#   plugin/python/build.sh --install        # only the toolchain
#
# CONVERGE_RULE_VERSION, when set, is the version the rule reports.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ $# -gt 0 ] || set -- "$here" "$here/order-status.wasm" "$here/../vectors/order-status.json"
CONVERGE_WIT=${CONVERGE_WIT:-$here/../../wit} exec bash "$here/../templates/python/build.sh" "$@"
