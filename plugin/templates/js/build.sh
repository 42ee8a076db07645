#!/usr/bin/env bash
# Builds a JavaScript rule into a converge:rule component with componentize-js (every WASI
# feature disabled: the component imports nothing). The one JavaScript builder: `converge new
# --lang js` writes it into the rule's folder, and plugin/js/build.sh (the order-status rule)
# calls it.
#
#   ./build.sh                                   # this folder's rule.js -> ./{{name}}.wasm
#   build.sh SOURCE.js OUT.wasm [VECTORS.json]   # any rule module; VECTORS copied beside OUT
#                                                # as OUT.vectors.json (where `converge check`
#                                                # finds them)
#   build.sh --install                           # only the toolchain (CI installs it up front)
#
# Needs node (18 or later) and npm. componentize-js and its tools are installed as
# package-lock.json (beside this script) pins them, integrity-checked by `npm ci`, under
# ~/.cache/converge/rule-toolchains/js (or $CONVERGE_HOME/rule-toolchains/js), keyed by the
# lockfile and Node's major version, once; node_modules beside this script links there. The WIT
# is wit/ beside this script (or $CONVERGE_WIT). CONVERGE_RULE_VERSION, when set, is the
# version the rule reports (build.mjs).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ "${1:-}" = --install ] && install_only=true || install_only=false
[ $# -gt 0 ] || set -- "$here/rule.js" "$here/{{name}}.wasm"

# The toolchain: node_modules per (lockfile, Node major) pair, installed under a lock (builds
# may run at once) and marked complete only once `npm ci` succeeded, so a half-made one is made
# again.
key=$( (cat "$here/package-lock.json"; node --version | cut -d. -f1) | sha256sum | cut -c1-16)
toolchains=${CONVERGE_HOME:-$HOME/.cache/converge}/rule-toolchains/js
toolchain=$toolchains/componentize-js-$key
mkdir -p "$toolchains"
exec {lock}>"$toolchains/.lock"
flock "$lock"
if [ ! -f "$toolchain/.complete" ]; then
  echo "installing componentize-js into $toolchain" >&2
  rm -rf "$toolchain"
  mkdir -p "$toolchain"
  cp "$here/package.json" "$here/package-lock.json" "$toolchain/"
  (cd "$toolchain" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  touch "$toolchain/.complete"
fi
if [ "$(readlink "$here/node_modules" || true)" != "$toolchain/node_modules" ]; then
  ln -sfn "$toolchain/node_modules" "$here/node_modules"
fi
exec {lock}>&-

$install_only && exit 0
source=$1 out=$2 vectors=${3:-}
[ -f "$source" ] || { echo "$0: no rule module $source" >&2; exit 2; }
node "$here/build.mjs" "$source" "$out" "${CONVERGE_WIT:-$here/wit}"
if [ -n "$vectors" ]; then
  # `converge check` and `serve` read a rule's vectors from beside it (RULE.vectors.json).
  cp "$vectors" "${out%.wasm}.vectors.json"
fi
