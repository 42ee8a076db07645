#!/usr/bin/env bash
# Installs and starts a real single-node Apache Kafka (KRaft mode: one process is both broker and
# controller) on loopback. The jars come from Maven Central; nothing else is downloaded.
# Idempotent and quick the second time: an installed version is reused, a running broker is left
# alone.
#
#   KAFKA_VERSION   default 4.1.1
#   KAFKA_PORT      default 9092 (the controller listens on KAFKA_PORT + 1)
#   CONVERGE_HOME   where services live, default ~/.cache/converge
#   KAFKA_FOREGROUND  1: run the broker in the foreground (exec, log appended to kafka.log, no
#                   readiness wait), for a caller that owns and stops the process itself (a
#                   test's private broker); default: in the background, waiting until it listens
#
# `kafka.sh --cluster N [--node I]`: a cluster of N nodes on loopback instead (KRaft, each node
# both broker and controller, all N the controller quorum), beside the single broker and apart
# from it: node I (1..N) listens on KAFKA_CLUSTER_PORT + I - 1 (default 9192, so 9192-9194 for
# three), its controller on that port + 100, with its data, log (kafka.log) and pid (kafka.pid)
# in $CONVERGE_HOME/kafka-cluster-<port>. Internal topics are replicated min(N, 3) times. Nodes
# already listening are left alone and the others started (all of them, or only node I with
# --node), in the background; it returns once each started node listens. Stop a node with
# `kill $(cat $CONVERGE_HOME/kafka-cluster-<port>/kafka.pid)`.
set -euo pipefail

cluster=
node=
while [ $# -gt 0 ]; do
  case $1 in
    --cluster) cluster=${2:?--cluster needs a node count}; shift 2 ;;
    --node) node=${2:?--node needs a node number}; shift 2 ;;
    *) echo "kafka: unknown argument $1 (usage: kafka.sh [--cluster N [--node I]])" >&2; exit 2 ;;
  esac
done
if [ -n "$node" ] && [ -z "$cluster" ]; then
  echo "kafka: --node needs --cluster" >&2
  exit 2
fi

version=${KAFKA_VERSION:-4.1.1}
port=${KAFKA_PORT:-9092}
controller_port=$((port + 1))
home=${CONVERGE_HOME:-$HOME/.cache/converge}
dir=$home/kafka-$version
instance=$home/kafka-$port

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

java_run() {
  java -Xms256m -Xmx768m -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$dir/libs/*" "$@"
}

# The N-node cluster (see the header): start_cluster N [I].
start_cluster() {
  local nodes=$1 only=$2 base=${KAFKA_CLUSTER_PORT:-9192}
  [ "$nodes" -ge 1 ] 2>/dev/null || { echo "kafka: --cluster needs a positive node count" >&2; exit 2; }
  if [ -n "$only" ] && ! { [ "$only" -ge 1 ] 2>/dev/null && [ "$only" -le "$nodes" ]; }; then
    echo "kafka: --node must be between 1 and $nodes" >&2
    exit 2
  fi
  local replicas=$((nodes < 3 ? nodes : 3))
  local min_isr=$((replicas < 2 ? 1 : 2))
  local voters="" i
  for i in $(seq 1 "$nodes"); do
    voters+="${voters:+,}$i@127.0.0.1:$((base + 100 + i - 1))"
  done
  # One cluster id for every node, kept beside them: a node formatted later joins the others.
  local id_file=$home/kafka-cluster-$base.id
  if [ ! -s "$id_file" ]; then
    mkdir -p "$home"
    java_run kafka.tools.StorageTool random-uuid >"$id_file"
  fi
  local cluster_id
  cluster_id=$(cat "$id_file")
  local started=()
  for i in $(seq 1 "$nodes"); do
    [ -z "$only" ] || [ "$only" = "$i" ] || continue
    local node_port=$((base + i - 1))
    local node_dir=$home/kafka-cluster-$node_port
    if listening "$node_port"; then
      echo "kafka: cluster node $i already listening on 127.0.0.1:$node_port"
      continue
    fi
    mkdir -p "$node_dir"
    cat >"$node_dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=$i
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$node_port,CONTROLLER://127.0.0.1:$((node_port + 100))
advertised.listeners=PLAINTEXT://127.0.0.1:$node_port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$node_dir/data
num.partitions=6
default.replication.factor=$replicas
auto.create.topics.enable=true
offsets.topic.replication.factor=$replicas
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=$replicas
transaction.state.log.min.isr=$min_isr
share.coordinator.state.topic.replication.factor=$replicas
share.coordinator.state.topic.min.isr=$min_isr
group.initial.rebalance.delay.ms=0
# A node killed without a goodbye is fenced (its leaderships moved) within 6 s, not 9.
broker.session.timeout.ms=6000
broker.heartbeat.interval.ms=1000
message.max.bytes=16777216
PROPS
    if [ ! -f "$node_dir/data/meta.properties" ]; then
      java_run kafka.tools.StorageTool format -t "$cluster_id" -c "$node_dir/server.properties" >/dev/null
    fi
    echo "kafka: starting cluster node $i of $nodes on 127.0.0.1:$node_port (log: $node_dir/kafka.log)"
    nohup java -Xms128m -Xmx512m -Dlog4j2.configurationFile="$dir/log4j2.properties" \
      -cp "$dir/libs/*" kafka.Kafka "$node_dir/server.properties" >"$node_dir/kafka.log" 2>&1 &
    echo $! >"$node_dir/kafka.pid"
    started+=("$i")
  done
  # Started together, waited for together: a node may not listen before a quorum of
  # controllers answers.
  for i in "${started[@]}"; do
    local node_port=$((base + i - 1))
    local node_dir=$home/kafka-cluster-$node_port
    local waited=0
    until listening "$node_port"; do
      if ! kill -0 "$(cat "$node_dir/kafka.pid")" 2>/dev/null; then
        echo "kafka: cluster node $i exited; last lines of $node_dir/kafka.log:" >&2
        tail -n 30 "$node_dir/kafka.log" >&2
        exit 1
      fi
      if [ "$waited" -ge 240 ]; then
        echo "kafka: cluster node $i not listening after 120 s; see $node_dir/kafka.log" >&2
        exit 1
      fi
      sleep 0.5
      waited=$((waited + 1))
    done
    echo "kafka: cluster node $i ready on 127.0.0.1:$node_port"
  done
}

if [ -z "$cluster" ] && listening "$port"; then
  echo "kafka: already listening on 127.0.0.1:$port"
  exit 0
fi

if [ ! -f "$dir/.complete" ]; then
  command -v java >/dev/null || { echo "kafka: java is required (Debian: default-jre-headless)" >&2; exit 1; }
  command -v mvn >/dev/null || { echo "kafka: maven is required (Debian: maven)" >&2; exit 1; }
  echo "kafka: fetching Apache Kafka $version jars from Maven Central into $dir"
  mkdir -p "$dir"
  cat > "$dir/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.converge</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$version</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>2.24.3</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>2.24.3</version></dependency>
  </dependencies>
</project>
POM
  mvn -q -B -f "$dir/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$dir/libs" -DincludeScope=runtime
  cat > "$dir/log4j2.properties" <<'LOG'
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.out.ref = out
logger.kafka.name = kafka
logger.kafka.level = info
LOG
  touch "$dir/.complete"
fi

if [ -n "$cluster" ]; then
  start_cluster "$cluster" "$node"
  exit 0
fi

mkdir -p "$instance"
cat > "$instance/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$instance/data
num.partitions=6
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
# Large enough for the 10 MB message of the bad-input test (T8); the default is 1 MiB.
message.max.bytes=16777216
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
PROPS

if [ ! -f "$instance/data/meta.properties" ]; then
  cluster_id=$(java_run kafka.tools.StorageTool random-uuid)
  java_run kafka.tools.StorageTool format -t "$cluster_id" -c "$instance/server.properties" >/dev/null
fi

if [ "${KAFKA_FOREGROUND:-0}" = 1 ]; then
  exec java -Xms256m -Xmx768m -Dlog4j2.configurationFile="$dir/log4j2.properties" \
    -cp "$dir/libs/*" kafka.Kafka "$instance/server.properties" >>"$instance/kafka.log" 2>&1
fi

echo "kafka: starting $version on 127.0.0.1:$port (log: $instance/kafka.log)"
nohup java -Xms256m -Xmx768m -Dlog4j2.configurationFile="$dir/log4j2.properties" \
  -cp "$dir/libs/*" kafka.Kafka "$instance/server.properties" >"$instance/kafka.log" 2>&1 &
echo $! >"$instance/kafka.pid"

for _ in $(seq 1 120); do
  if listening "$port"; then
    echo "kafka: ready on 127.0.0.1:$port"
    exit 0
  fi
  if ! kill -0 "$(cat "$instance/kafka.pid")" 2>/dev/null; then
    echo "kafka: the broker exited; last lines of $instance/kafka.log:" >&2
    tail -n 30 "$instance/kafka.log" >&2
    exit 1
  fi
  sleep 0.5
done
echo "kafka: not listening after 60 s; see $instance/kafka.log" >&2
exit 1
