#!/usr/bin/env bash
# Builds the order-status rule in JavaScript (rule.js here) with the JavaScript template's
# builder (plugin/templates/js/build.sh, the one `converge new --lang js` writes; see there for
# what it installs and caches), against the repository's wit/:
#
#   plugin/js/build.sh                      # -> order-status.wasm, its vectors beside it
#   plugin/js/build.sh SOURCE.js OUT.wasm [VECTORS.json]     # tests/rules/*/js
#   plugin/js/build.sh --install            # only the toolchain
#
# CONVERGE_RULE_VERSION, when set, is the version the rule reports.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ $# -gt 0 ] || set -- "$here/rule.js" "$here/order-status.wasm" "$here/../vectors/order-status.json"
CONVERGE_WIT=${CONVERGE_WIT:-$here/../../wit} exec bash "$here/../templates/js/build.sh" "$@"
