#!/usr/bin/env bash
# Installs (Debian package redis-server) and starts Redis on loopback, without persistence.
# Idempotent: a running server is left alone.
#
#   redis.sh             a standalone server on REDIS_PORT (default 6379)
#   redis.sh --cluster   a 3-master Redis Cluster on REDIS_CLUSTER_PORT.. +2 (default 7000-7002)
#
#   CONVERGE_HOME   where services keep their files, default ~/.cache/converge
set -euo pipefail

home=${CONVERGE_HOME:-$HOME/.cache/converge}

# openssl makes the certificates of the TLS test (rediss://).
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null \
  || ! command -v openssl >/dev/null; then
  echo "redis: installing the Debian packages redis-server and openssl"
  export DEBIAN_FRONTEND=noninteractive
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd=sudo
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq redis-server openssl >/dev/null
fi

start() { # port [extra redis-server arguments...]
  local port=$1
  shift
  if redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1; then
    return 0
  fi
  local dir=$home/redis-$port
  mkdir -p "$dir"
  # Nothing is persisted: a node that is not running starts empty, with no stale cluster state.
  rm -f "$dir"/nodes-*.conf
  redis-server --bind 127.0.0.1 --port "$port" --daemonize yes --save "" --appendonly no \
    --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" "$@"
  for _ in $(seq 1 100); do
    redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "redis: not answering on 127.0.0.1:$port; see $dir/redis.log" >&2
  return 1
}

if [ "${1:-}" = "--cluster" ]; then
  first=${REDIS_CLUSTER_PORT:-7000}
  ports=("$first" "$((first + 1))" "$((first + 2))")
  for port in "${ports[@]}"; do
    start "$port" --cluster-enabled yes --cluster-config-file "nodes-$port.conf" \
      --cluster-node-timeout 5000
  done
  if ! redis-cli -h 127.0.0.1 -p "$first" cluster info | grep -q 'cluster_state:ok'; then
    redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >/dev/null
    for _ in $(seq 1 100); do
      redis-cli -h 127.0.0.1 -p "$first" cluster info | grep -q 'cluster_state:ok' && break
      sleep 0.1
    done
  fi
  echo "redis: cluster ready on 127.0.0.1:${ports[0]}-${ports[2]}"
else
  port=${REDIS_PORT:-6379}
  start "$port"
  echo "redis: ready on 127.0.0.1:$port"
fi
