#!/usr/bin/env bash
# Builds this rule into ./{{name}}.wasm, installing the wasm32-wasip2 Rust target if it is missing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

if ! command -v cargo >/dev/null; then
    echo "build.sh: cargo not found; install Rust with rustup (https://rustup.rs)" >&2
    exit 1
fi
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi
cargo build --release --target wasm32-wasip2
target="${CARGO_TARGET_DIR:-$here/target}"
cp "$target/wasm32-wasip2/release/{{crate_name}}.wasm" "$here/{{name}}.wasm"
echo "built $here/{{name}}.wasm"
