#!/usr/bin/env bash
# The converge container image, built and run with podman; no image is pulled from any registry.
#
#   image.sh [build]                     builds localhost/converge:latest (and :<version>)
#   image.sh run [PODMAN-ARGS] [-- CONVERGE-ARGS]
#                                        runs it (--rm); without CONVERGE-ARGS the image's default
#                                        command: the demo on the shipped sample stream
#   image.sh podman PODMAN-ARGS...       any podman command, with the global flags below
#
# e.g.  image.sh run
#       image.sh run --network=host --read-only \
#         -v "$PWD/converge.toml:/etc/converge/converge.toml:ro" -- serve
#
# build: installs what is missing (Debian packages podman, runc, musl-tools; the Rust targets
# x86_64-unknown-linux-musl and wasm32-wasip2), builds a static converge with every transport and
# the order-status rule, lays out the image's root tree beside the build
# (<target dir>/image/context, deploy/image/assemble.sh) and builds deploy/image/Dockerfile's
# final stage from it. Quick when nothing changed: cargo has nothing to do, the image build takes
# a second and gives the same image ID. Prints the image's size.
#
# Podman here runs containers only with the runc runtime, cgroupfs and explicit limits (otherwise
# "setrlimit RLIMIT_NOFILE: Operation not permitted" or "cgroups in hybrid mode not supported");
# `run` and `podman` add them:
#   CONVERGE_PODMAN_FLAGS   global podman flags, default "--runtime runc --cgroup-manager=cgroupfs"
#   CONVERGE_RUN_FLAGS      added to `run`, default
#                           "--ulimit nofile=1024:1024 --ulimit nproc=1024:1024"
#   CONVERGE_IMAGE          the image's name, default localhost/converge
#   CONVERGE_IMAGE_PROFILE  the cargo profile of the binary, default release (what the tests
#                           build); dist adds thin LTO (a smaller, slower-to-link binary)
#   CARGO_TARGET_DIR        respected, like every cargo build
set -euo pipefail

image=${CONVERGE_IMAGE:-localhost/converge}
read -r -a podman_flags <<< "${CONVERGE_PODMAN_FLAGS:---runtime runc --cgroup-manager=cgroupfs}"
read -r -a run_flags <<< "${CONVERGE_RUN_FLAGS:---ulimit nofile=1024:1024 --ulimit nproc=1024:1024}"
musl=x86_64-unknown-linux-musl
profile=${CONVERGE_IMAGE_PROFILE:-release}
profile_dir=$profile
[ "$profile" != dev ] || profile_dir=debug

require_podman() {
  command -v podman >/dev/null && command -v runc >/dev/null && return 0
  echo "image: podman and runc are not installed; \`bash deploy/scripts/image.sh\` installs them" >&2
  exit 1
}

case "${1:-build}" in
  run)
    shift
    require_podman
    podman_args=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do
      podman_args+=("$1")
      shift
    done
    [ $# -gt 0 ] && shift # the --
    # exec: a signal to this script (a test stopping it, Ctrl-C) reaches podman, which passes it on
    # to converge (--sig-proxy, on by default).
    exec podman "${podman_flags[@]}" run --rm --pull=never "${run_flags[@]}" "${podman_args[@]}" \
      "$image:latest" "$@"
    ;;
  podman)
    shift
    require_podman
    exec podman "${podman_flags[@]}" "$@"
    ;;
  build) ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac

started=$(date +%s)
# Only the build works in the repository: `run` keeps the caller's directory for relative paths.
cd "$(dirname "$0")/../.."

if ! command -v podman >/dev/null || ! command -v runc >/dev/null \
  || ! command -v musl-gcc >/dev/null || [ ! -s /etc/ssl/certs/ca-certificates.crt ]; then
  echo "image: installing the Debian packages podman, runc, musl-tools and ca-certificates"
  export DEBIAN_FRONTEND=noninteractive
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd=sudo
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq podman runc musl-tools ca-certificates >/dev/null
fi
installed=$(rustup target list --installed)
for target in "$musl" wasm32-wasip2; do
  grep -qx "$target" <<< "$installed" || rustup target add "$target"
done

# Every transport (the default features): the image serves Kafka -> rule -> Redis. librdkafka,
# zlib and OpenSSL are compiled from source against musl (vendored), so the binary is static.
# The first build takes 10 to 20 minutes on 2 cores; later ones only what changed.
cargo build --profile "$profile" --target "$musl" -p converge-cli --bin converge
cargo build --quiet --release --target wasm32-wasip2 -p converge-order-rule

metadata=$(cargo metadata --format-version 1 --no-deps)
target_dir=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' <<< "$metadata")
version=$(python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "converge"))' <<< "$metadata")
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)

# The build's context holds the root tree only, outside the sources: nothing of the repository
# (or of the target directory) is sent to the build.
context=$target_dir/image/context
bash deploy/image/assemble.sh "$target_dir/$musl/$profile_dir/converge" \
  "$target_dir/wasm32-wasip2/release/converge_order_rule.wasm" "$context/root-tree"

# The tree takes the place of the Dockerfile's `artifacts` stage: its builder stage (which would
# pull a Rust image) is skipped, and --pull=never makes sure of it. No layer cache (--layers):
# it would keep every earlier binary's layer alive under intermediate images; without it the
# build copies the tree again (about a second) and, with a fixed timestamp (the commit's),
# an unchanged tree gives the same image ID.
previous=$(podman image inspect --format '{{.Id}}' "$image:latest" 2>/dev/null || true)
podman build --quiet --pull=never --layers=false \
  --timestamp "${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}" \
  --file deploy/image/Dockerfile \
  --build-context artifacts="$context" \
  --build-arg VERSION="$version" \
  --build-arg REVISION="$revision" \
  --tag "$image:latest" --tag "$image:$version" \
  "$context" >/dev/null
current=$(podman image inspect --format '{{.Id}}' "$image:latest")
# The image this one replaces, unless another tag or a container still holds it.
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
  podman rmi "$previous" >/dev/null 2>&1 || true
fi

size=$(podman image inspect --format '{{.Size}}' "$image:latest")
echo "image: $image:latest ($image:$version) built in $(($(date +%s) - started)) s," \
  "$((size / 1000000)) MB ($size bytes)"
podman images "$image"
