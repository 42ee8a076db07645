#!/usr/bin/env bash
# Builds a Python rule into a converge:rule component with componentize-py (--stub-wasi: the
# component imports no WASI at all). The one Python builder: `converge new --lang python` writes
# it into the rule's folder, and plugin/python/build.sh (the order-status rule) calls it.
#
#   ./build.sh                                 # this folder's app.py -> ./{{name}}.wasm
#   build.sh APP_DIR OUT.wasm [VECTORS.json]   # any folder with an app.py; VECTORS copied beside
#                                              # OUT as OUT.vectors.json (where `converge check`
#                                              # finds them)
#   build.sh --install                         # only the toolchain (CI installs it up front)
#
# Needs python3 (3.9 or later, with venv). componentize-py is installed, pinned and hash-checked
# (requirements.txt beside this script), into a virtual environment under
# ~/.cache/converge/rule-toolchains/python (or $CONVERGE_HOME/rule-toolchains/python), keyed by
# requirements.txt and the Python version, once; later builds reuse it. The WIT is wit/ beside
# this script (or $CONVERGE_WIT). CONVERGE_RULE_VERSION, when set, is the version the rule
# reports: it replaces the value of app.py's `VERSION = "..."` line in the built copy.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ "${1:-}" = --install ] && install_only=true || install_only=false
[ $# -gt 0 ] || set -- "$here" "$here/{{name}}.wasm"

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
wit=${CONVERGE_WIT:-$here/wit}
if [ -n "${CONVERGE_RULE_VERSION:-}" ]; then
  # A copy of the app with the version replaced; the folder itself is left as it is.
  copy=$(mktemp -d)
  trap 'rm -rf "$copy"' EXIT
  cp -r "$app_dir/." "$copy/"
  sed -Ei "s/^VERSION = \".*\"$/VERSION = \"$CONVERGE_RULE_VERSION\"/" "$copy/app.py"
  grep -qxF "VERSION = \"$CONVERGE_RULE_VERSION\"" "$copy/app.py" || {
    echo "$0: CONVERGE_RULE_VERSION is set but $app_dir/app.py has no line VERSION = \"...\"" >&2
    exit 2
  }
  app_dir=$copy
fi
"$venv/bin/componentize-py" -d "$wit" -w rule componentize --stub-wasi -p "$app_dir" app -o "$out"
if [ -n "$vectors" ]; then
  # `converge check` and `serve` read a rule's vectors from beside it (RULE.vectors.json).
  cp "$vectors" "${out%.wasm}.vectors.json"
fi
echo "built $out"
