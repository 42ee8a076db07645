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
set -euo pipefail

version=${KAFKA_VERSION:-4.1.1}
port=${KAFKA_PORT:-9092}
controller_port=$((port + 1))
home=${CONVERGE_HOME:-$HOME/.cache/converge}
dir=$home/kafka-$version
instance=$home/kafka-$port

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if listening "$port"; then
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

java_run() {
  java -Xms256m -Xmx768m -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$dir/libs/*" "$@"
}

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
