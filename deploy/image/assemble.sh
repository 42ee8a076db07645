#!/usr/bin/env bash
# Lays out the root file system of the converge image in OUT (the image's final stage copies OUT
# to / as it is). Run by deploy/scripts/image.sh on this machine and by the Dockerfile's builder
# stage, so both images hold the same tree:
#
#   /usr/bin/converge                              the static binary, stripped
#   /usr/share/converge/rules/order-status.wasm    the shipped rule (deploy/kubernetes/configmap.yaml)
#   /usr/share/converge/sample/orders.jsonl        the sample stream the default command runs
#   /etc/converge/converge.toml                    deploy/converge.example.toml, rule path adjusted
#   /etc/passwd, /etc/group                        root, and the user converge (65532)
#   /etc/ssl/certs/ca-certificates.crt             the builder's CA bundle (Debian's
#                                                  ca-certificates), for TLS to Kafka and Redis
#   /tmp                                           empty, for a run without --read-only
#
#   assemble.sh BINARY RULE OUT      (run from the repository root)
#
# OUT is laid out anew each time, so nothing dropped from this list lingers in the image; the
# image build fixes every file's time (podman build --timestamp), so an unchanged tree still
# gives the same image.
set -euo pipefail

if [ $# -ne 3 ]; then
  echo "usage: $0 BINARY RULE OUT" >&2
  exit 2
fi
binary=$1
rule=$2
out=$3
rule_path=/usr/share/converge/rules/order-status.wasm

ca_bundle=/etc/ssl/certs/ca-certificates.crt
if [ ! -s "$ca_bundle" ]; then
  echo "assemble: no CA bundle at $ca_bundle (Debian package ca-certificates)" >&2
  exit 1
fi
case "$out" in
  "" | / | .) echo "assemble: refusing to lay out the tree in '$out'" >&2; exit 2 ;;
esac
rm -rf "$out"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

put() { # source destination-inside-OUT mode
  local destination=$out$2
  mkdir -p "$(dirname "$destination")"
  cp "$1" "$destination"
  chmod "$3" "$destination"
}

# The unstripped binary stays in the target directory, for its symbols.
strip -o "$scratch/converge" "$binary"
put "$scratch/converge" /usr/bin/converge 0755
put "$rule" "$rule_path" 0644
put deploy/sample/orders.jsonl /usr/share/converge/sample/orders.jsonl 0644

example=deploy/converge.example.toml
sed "s|^path = \"target/wasm32-wasip2/release/converge_order_rule.wasm\"|path = \"$rule_path\"|" \
  "$example" > "$scratch/converge.toml"
# The example's rule path moved: fail here rather than ship a config pointing at nothing.
grep -q "^path = \"$rule_path\"" "$scratch/converge.toml" \
  || { echo "assemble: the rule path in $example is not the one this script rewrites" >&2; exit 1; }
put "$scratch/converge.toml" /etc/converge/converge.toml 0644

# A scratch image has no user database; without one, tools and logs show a bare 65532, and
# Kubernetes' runAsNonRoot needs the numeric USER the Dockerfile sets anyway.
cat > "$scratch/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
converge:x:65532:65532:converge:/nonexistent:/sbin/nologin
PASSWD
cat > "$scratch/group" <<'GROUP'
root:x:0:
converge:x:65532:
GROUP
put "$ca_bundle" "$ca_bundle" 0644
put "$scratch/passwd" /etc/passwd 0644
put "$scratch/group" /etc/group 0644

mkdir -p "$out/tmp"
chmod 1777 "$out/tmp"
