#!/usr/bin/env bash
# Builds a Go rule into a converge:rule component. The one Go builder: `converge new --lang go`
# writes it into the rule's folder, and plugin/go/build.sh (the order-status rule) calls it.
#
#   ./build.sh                            # this folder's rule -> ./{{name}}.wasm
#   build.sh SRC_DIR OUT.wasm [VECTORS]   # the rule in SRC_DIR; VECTORS copied beside OUT as
#                                         # OUT.vectors.json (where `converge check` finds them)
#   build.sh --install                    # only the toolchain (CI installs it up front)
#
# A rule folder is a Go module: package rule (the decision, plain Go, tested natively; its types
# in rule/types.go), package export_wit_world (the export as the converge:rule world) and
# go.mod. A SRC_DIR other than this script's folder needs only its package rule: the rest is
# this folder's (the template's), written into SRC_DIR on each build.
# CONVERGE_RULE_VERSION, when set, is the version the rule reports (rule.Version, -ldflags -X).
# The WIT is wit/ beside this script (or $CONVERGE_WIT).
#
# Installs what is missing first, cached under ${XDG_CACHE_HOME:-~/.cache}/converge/
# rule-toolchains/go (delete it to start over):
#   - wit-bindgen-cli (the Go bindings, its `go` feature only) and wasm-tools (`component embed`
#     and `component new`, its `component` feature only), from crates.io with `cargo install`,
#     once: measured on a 2-core machine, 6.6 and 4.6 minutes of CPU (user), 9 and 16 minutes
#     of wall time while it was busy (with all their features: 12-25 minutes);
#   - Go 1.27.1 from the Go module proxy (GOTOOLCHAIN), over any Go >= 1.21 on the PATH
#     (Debian's golang-go is installed when there is none);
#   - the Go module the bindings import, go.bytecodealliance.org/pkg, which the proxy does not
#     serve: it ships inside the crates.io crate wit-bindgen-go (src/pkg), linked as SRC_DIR/.pkg;
#   - the WASI 0.1 reactor adapter (Go's wasip1 runtime speaks WASI 0.1; components speak
#     0.2), from the crates.io crate wasi-preview1-component-adapter-provider at the version of
#     converge's wasmtime.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ "${1:-}" = --install ] && install_only=true || install_only=false
[ $# -gt 0 ] || set -- "$here" "$here/{{name}}.wasm"

WIT_BINDGEN_VERSION=0.63.0
WASM_TOOLS_VERSION=1.263.0
GO_VERSION=go1.27.1
# The WASI adapter matching converge's wasmtime (Cargo.lock).
ADAPTER_VERSION=48.0.8

cache="${XDG_CACHE_HOME:-$HOME/.cache}/converge/rule-toolchains/go"
bin="$cache/bin"
mkdir -p "$cache"

# The Rust tools, each installed when its cached binary is missing, of another version, or
# lacks the subcommand used here (a binary with every feature, as earlier builds installed,
# passes). Without the caller's CARGO_TARGET_DIR, cargo compiles in a directory of its own and
# removes it after. Under a lock: builds may run at once.
exec {lock}>"$cache/.lock"
flock "$lock"
if ! "$bin/wit-bindgen" --version 2>/dev/null | grep -qF " $WIT_BINDGEN_VERSION" ||
  ! "$bin/wit-bindgen" go --help >/dev/null 2>&1; then
  echo "build.sh: installing wit-bindgen-cli $WIT_BINDGEN_VERSION (Go only) into $cache (once; minutes)" >&2
  env -u CARGO_TARGET_DIR cargo install --quiet --locked --force --root "$cache" \
    --no-default-features --features go "wit-bindgen-cli@$WIT_BINDGEN_VERSION"
fi
if ! "$bin/wasm-tools" --version 2>/dev/null | grep -qF " $WASM_TOOLS_VERSION" ||
  ! "$bin/wasm-tools" component new --help >/dev/null 2>&1 ||
  ! "$bin/wasm-tools" component embed --help >/dev/null 2>&1; then
  echo "build.sh: installing wasm-tools $WASM_TOOLS_VERSION (components only) into $cache (once; minutes)" >&2
  env -u CARGO_TARGET_DIR cargo install --quiet --locked --force --root "$cache" \
    --no-default-features --features component "wasm-tools@$WASM_TOOLS_VERSION"
fi
exec {lock}>&-

# Go: the one on the PATH only starts the pinned release, which it fetches into the cache.
if ! command -v go >/dev/null; then
  echo "build.sh: no go on the PATH; installing Debian's golang-go" >&2
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd=sudo
  $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq golang-go >/dev/null
fi
export GOTOOLCHAIN="$GO_VERSION"
export GOPATH="$cache/gopath" GOMODCACHE="$cache/gopath/pkg/mod" GOCACHE="$cache/go-build"
# The module cache writable, so that the cache directory can simply be deleted.
export GOFLAGS=-modcacherw

# The two crates' sources, through cargo's own registry cache: a manifest that depends on them
# (never built), and `cargo metadata` to say where cargo unpacked them.
crates="$cache/crates"
mkdir -p "$crates"
cat >"$crates/Cargo.toml" <<EOF
[package]
name = "converge-go-rule-sources"
version = "0.0.0"
edition = "2021"
publish = false

[lib]
path = "lib.rs"

[dependencies]
wit-bindgen-go = "=$WIT_BINDGEN_VERSION"
wasi-preview1-component-adapter-provider = "=$ADAPTER_VERSION"

[workspace]
EOF
touch "$crates/lib.rs"
read -r pkg adapter < <(cargo metadata --quiet --format-version 1 --manifest-path "$crates/Cargo.toml" |
  python3 -c '
import json, os, sys
dirs = {p["name"]: os.path.dirname(p["manifest_path"]) for p in json.load(sys.stdin)["packages"]}
print(os.path.join(dirs["wit-bindgen-go"], "src", "pkg"),
      os.path.join(dirs["wasi-preview1-component-adapter-provider"], "artefacts",
                   "wasi_snapshot_preview1.reactor.wasm"))')
test -f "$pkg/go.mod" && test -f "$adapter"
# The pinned Go, fetched now if it is not yet cached.
go version >/dev/null
$install_only && exit 0

src=$(cd "$1" && pwd) out=$2 vectors=${3:-}
wit=${CONVERGE_WIT:-$here/wit}
[ -d "$src/rule" ] || { echo "$0: no package rule (rule/) in $src" >&2; exit 2; }
# The build writes into SRC_DIR: one build of a folder at a time.
mkdir -p "$cache/locks"
exec {folder_lock}>"$cache/locks/$(echo "$src" | sha256sum | cut -c1-16)"
flock "$folder_lock"
# A folder other than this script's holds only its decision (package rule): the template's
# module, export and contract types are written beside it, afresh on every build.
if [ "$src" != "$here" ]; then
  rm -rf "$src/export_wit_world"
  cp -r "$here/go.mod" "$here/export_wit_world" "$src/"
  cp "$here/rule/types.go" "$src/rule/types.go"
fi
ln -sfn "$pkg" "$src/.pkg"

# The bindings, generated afresh from the contract: wit_exports.go (package main, the exported
# functions) and wit_world/ (the contract's types). The generator also writes a go.mod, which
# is not taken: the rule's own names the pinned Go and the .pkg replacement.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ! generated=$("$bin/wit-bindgen" go --quiet -w rule --out-dir "$work/bindings" "$wit" 2>&1); then
  echo "$generated" >&2
  exit 1
fi
rm -rf "$src/wit_world"
cp -r "$work/bindings/wit_world" "$src/wit_world"
cp "$work/bindings/wit_exports.go" "$src/wit_exports.go"

# A core module for WASI 0.1 whose exports are the rule's functions (-buildmode=c-shared: a
# reactor, no main), then the component: the contract embedded, WASI 0.1 adapted to 0.2.
# -checklinkname=0: the bindings' runtime links to Go runtime internals.
ldflags=-checklinkname=0
if [[ -n "${CONVERGE_RULE_VERSION:-}" ]]; then
  ldflags+=" -X wit_component/rule.Version=$CONVERGE_RULE_VERSION"
fi
(cd "$src" && GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -ldflags="$ldflags" -o "$work/core.wasm" .)
"$bin/wasm-tools" component embed -w rule "$wit" "$work/core.wasm" -o "$work/embedded.wasm"
"$bin/wasm-tools" component new --adapt "wasi_snapshot_preview1=$adapter" "$work/embedded.wasm" -o "$work/rule.wasm"
mv "$work/rule.wasm" "$out"
if [ -n "$vectors" ]; then
  # `converge check` and `serve` read a rule's vectors from beside it (RULE.vectors.json).
  cp "$vectors" "${out%.wasm}.vectors.json"
fi
echo "built $out"
