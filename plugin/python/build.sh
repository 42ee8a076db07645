#!/usr/bin/env bash
# Builds a Python rule into a WebAssembly component with componentize-py (--stub-wasi: the
# component imports no WASI at all).
#
#   plugin/python/build.sh                      # this folder's app.py -> order-status.wasm,
#                                               # its vectors beside it (order-status.vectors.json)
#   plugin/python/build.sh APP_DIR OUT.wasm [VECTORS.json]
#                                               # any folder with an app.py (tests/rules/*/python)
#   plugin/python/build.sh --install            # only the toolchain (CI installs it up front)
#
# Needs python3 (3.9 or later, with venv). componentize-py is installed, pinned and hash-checked
# (requirements.txt), into a virtual environment under ~/.cache/converge/rule-toolchains/python
# (or $CONVERGE_HOME/rule-toolchains/python), keyed by requirements.txt and the Python version,
# once; later builds reuse it. The WIT is the repository's wit/ (or $CONVERGE_WIT).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
install_only=false
if [ "${1:-}" = --install ]; then
  install_only=true
elif [ $# -eq 0 ]; then
  set -- "$here" "$here/order-status.wasm" "$here/../vectors/order-status.json"
elif [ $# -lt 2 ] || [ $# -gt 3 ]; then
  echo "usage: $0 [--install | APP_DIR OUT.wasm [VECTORS.json]]" >&2
  exit 2
fi

# The toolchain: a venv per (requirements, Python) pair, made under a lock (builds may run at
# once) and marked complete only once pip succeeded, so a half-made one is made again.
key=$( (cat "$here/requirements.txt"; python3 --version) | sha256sum | cut -c1-16)
toolchains=${CONVERGE_HOME:-$HOME/.cache/converge}/rule-toolchains/python
venv=$toolchains/componentize-py-$key
if [ ! -f "$venv/.complete" ]; then
  mkdir -p "$toolchains"
  exec {lock}>"$toolchains/.lock"
  flock "$lock"
  if [ ! -f "$venv/.complete" ]; then
    echo "installing componentize-py into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --require-hashes \
      --only-binary :all: -r "$here/requirements.txt"
    touch "$venv/.complete"
  fi
  exec {lock}>&-
fi

$install_only && exit 0
app_dir=$1 out=$2 vectors=${3:-}
[ -f "$app_dir/app.py" ] || { echo "$0: no app.py in $app_dir" >&2; exit 2; }
wit=${CONVERGE_WIT:-$here/../../wit}
"$venv/bin/componentize-py" -d "$wit" -w rule componentize --stub-wasi -p "$app_dir" app -o "$out"
if [ -n "$vectors" ]; then
  # `converge check` and `serve` read a rule's vectors from beside it (RULE.vectors.json).
  cp "$vectors" "${out%.wasm}.vectors.json"
fi
