#!/usr/bin/env bash
# Builds the order-status rule in Go (package rule here) with the Go template's builder
# (plugin/templates/go/build.sh, the one `converge new --lang go` writes; see there for what it
# installs and caches), against the repository's wit/:
#
#   plugin/go/build.sh                      # -> order-status.wasm, its vectors beside it
#   plugin/go/build.sh SRC_DIR OUT.wasm [VECTORS.json] | --install
#
# CONVERGE_RULE_VERSION, when set, is the version the rule reports.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ $# -gt 0 ] || set -- "$here" "$here/order-status.wasm" "$here/../vectors/order-status.json"
CONVERGE_WIT=${CONVERGE_WIT:-$here/../../wit} exec bash "$here/../templates/go/build.sh" "$@"
