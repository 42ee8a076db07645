#!/usr/bin/env bash
# Builds a JavaScript rule into a WebAssembly component with componentize-js (every WASI
# feature disabled: the component imports nothing).
#
#   plugin/js/build.sh                        # rule.js -> order-status.wasm, its vectors beside
#                                             # it (order-status.vectors.json)
#   plugin/js/build.sh SOURCE.js OUT.wasm [VECTORS.json]
#                                             # any rule module (tests/rules/*/js)
#   plugin/js/build.sh --install              # only the toolchain (CI installs it up front)
#
# Needs node (18 or later) and npm. componentize-js and its tools are installed as
# package-lock.json pins them (integrity-checked by `npm ci`) under
# ~/.cache/converge/rule-toolchains/js (or $CONVERGE_HOME/rule-toolchains/js), keyed by the
# lockfile and Node's major version, once; this folder's node_modules links there. The WIT is the
# repository's wit/ (or $CONVERGE_WIT).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
install_only=false
if [ "${1:-}" = --install ]; then
  install_only=true
elif [ $# -eq 0 ]; then
  set -- "$here/rule.js" "$here/order-status.wasm" "$here/../vectors/order-status.json"
elif [ $# -lt 2 ] || [ $# -gt 3 ]; then
  echo "usage: $0 [--install | SOURCE.js OUT.wasm [VECTORS.json]]" >&2
  exit 2
fi

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
node "$here/build.mjs" "$source" "$out"
if [ -n "$vectors" ]; then
  # `converge check` and `serve` read a rule's vectors from beside it (RULE.vectors.json).
  cp "$vectors" "${out%.wasm}.vectors.json"
fi
