#!/usr/bin/env bash
# Builds the order-status rule in Go into plugin/go/order-status.wasm, a converge:rule
# component, with its conformance vectors beside it (order-status.vectors.json, which
# `converge check` and a rule file's gates read). Installs what is missing first, cached under
# ${XDG_CACHE_HOME:-~/.cache}/converge/rule-toolchains/go (delete it to start over):
#
#   - wit-bindgen-cli (the Go bindings) and wasm-tools (the component), from crates.io with
#     `cargo install`: about 12 minutes of compiling on 2 cores, once;
#   - Go 1.27.1 from the Go module proxy (GOTOOLCHAIN), over any Go >= 1.21 on the PATH
#     (Debian's golang-go is installed when there is none);
#   - the Go module the bindings import, go.bytecodealliance.org/pkg, which the proxy does not
#     serve: it ships inside the crates.io crate wit-bindgen-go (src/pkg), linked here as .pkg;
#   - the WASI 0.1 reactor adapter (Go's wasip1 runtime speaks WASI 0.1; components speak
#     0.2), from the crates.io crate wasi-preview1-component-adapter-provider at the version of
#     converge's wasmtime.
#
# CONVERGE_RULE_VERSION, when set, is the version the rule reports (default: order.Version).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
wit=$(cd "$here/../../wit" && pwd)
out="$here/order-status.wasm"

WIT_BINDGEN_VERSION=0.63.0
WASM_TOOLS_VERSION=1.263.0
GO_VERSION=go1.27.1
# The WASI adapter matching converge's wasmtime (Cargo.lock).
ADAPTER_VERSION=48.0.8

cache="${XDG_CACHE_HOME:-$HOME/.cache}/converge/rule-toolchains/go"
bin="$cache/bin"
mkdir -p "$cache"

# The Rust tools, each only if its cached binary is missing or of another version. Without the
# caller's CARGO_TARGET_DIR, cargo compiles in a directory of its own and removes it after.
if ! "$bin/wit-bindgen" --version 2>/dev/null | grep -qF " $WIT_BINDGEN_VERSION" ||
  ! "$bin/wasm-tools" --version 2>/dev/null | grep -qF " $WASM_TOOLS_VERSION"; then
  echo "build.sh: installing wit-bindgen-cli $WIT_BINDGEN_VERSION and wasm-tools $WASM_TOOLS_VERSION into $cache (once; about 12 minutes)" >&2
  env -u CARGO_TARGET_DIR cargo install --quiet --locked --root "$cache" \
    "wit-bindgen-cli@$WIT_BINDGEN_VERSION" "wasm-tools@$WASM_TOOLS_VERSION"
fi

# Go: the one on the PATH only starts the pinned release, which it fetches into the cache.
if ! command -v go >/dev/null; then
  echo "build.sh: no go on the PATH; installing Debian's golang-go" >&2
  apt-get update -qq && apt-get install -y -qq golang-go >/dev/null
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
ln -sfn "$pkg" "$here/.pkg"

# The bindings, generated afresh from the contract: wit_exports.go (package main, the exported
# functions) and wit_world/ (the contract's types). The generator also writes a go.mod, which
# is not taken: the project's own names the pinned Go and the .pkg replacement.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ! generated=$("$bin/wit-bindgen" go --quiet -w rule --out-dir "$work/bindings" "$wit" 2>&1); then
  echo "$generated" >&2
  exit 1
fi
rm -rf "$here/wit_world"
cp -r "$work/bindings/wit_world" "$here/wit_world"
cp "$work/bindings/wit_exports.go" "$here/wit_exports.go"

# A core module for WASI 0.1 whose exports are the rule's functions (-buildmode=c-shared: a
# reactor, no main), then the component: the contract embedded, WASI 0.1 adapted to 0.2.
# -checklinkname=0: the bindings' runtime links to Go runtime internals.
ldflags=-checklinkname=0
if [[ -n "${CONVERGE_RULE_VERSION:-}" ]]; then
  ldflags+=" -X wit_component/order.Version=$CONVERGE_RULE_VERSION"
fi
(cd "$here" && GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -ldflags="$ldflags" -o "$work/core.wasm" .)
"$bin/wasm-tools" component embed -w rule "$wit" "$work/core.wasm" -o "$work/embedded.wasm"
"$bin/wasm-tools" component new --adapt "wasi_snapshot_preview1=$adapter" "$work/embedded.wasm" -o "$work/rule.wasm"
mv "$work/rule.wasm" "$out"
cp "$here/../vectors/order-status.json" "${out%.wasm}.vectors.json"
echo "$out"
