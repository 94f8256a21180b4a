#!/usr/bin/env bash
# Launch one KRaft Kafka node (broker + controller) listening on 127.0.0.1 only: the single-node
# stack, or one node of the cluster topology (skewless/stack/cluster.py sets the KAFKA_NODE_ID ...
# variables below). The one launch path for the local process (skewless/stack/kafka.py), the cluster
# topology and the test image (infra/docker/kafka.Dockerfile). Formats the storage on first start,
# then execs the broker, so the launcher's pid is the broker's pid.
#
# Environment:
#   KAFKA_PORT, KAFKA_CONTROLLER_PORT  required: client and controller listener ports
#   KAFKA_STATE_DIR                    required: holds server.properties (rendered) and data/
#   KAFKA_JARS_DIR                     default: infra/.cache/jars/kafka (fetched by `make setup`)
#   KAFKA_HEAP_OPTS                    default: -Xms128m -Xmx512m
#   JAVA                               default: java
# Cluster topology (defaults: the single node):
#   KAFKA_NODE_ID                      default: 1
#   KAFKA_QUORUM_VOTERS                default: <node id>@127.0.0.1:<controller port> (static quorum)
#   KAFKA_CLUSTER_ID                   default: random; every node of one cluster is formatted with the same id
#   KAFKA_REPLICATION_FACTOR           default: 1 (default.replication.factor and the internal topics')
#   KAFKA_MIN_INSYNC_REPLICAS          default: 1 (min.insync.replicas and the internal topics' min ISR)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${KAFKA_PORT:?set KAFKA_PORT (SKEWLESS_KAFKA_PORT in skewless)}"
: "${KAFKA_CONTROLLER_PORT:?set KAFKA_CONTROLLER_PORT (SKEWLESS_KAFKA_CONTROLLER_PORT in skewless)}"
: "${KAFKA_STATE_DIR:?set KAFKA_STATE_DIR to a writable directory}"
JARS=${KAFKA_JARS_DIR:-$HERE/../.cache/jars/kafka}
JAVA=${JAVA:-java}
NODE_ID=${KAFKA_NODE_ID:-1}
VOTERS=${KAFKA_QUORUM_VOTERS:-$NODE_ID@127.0.0.1:$KAFKA_CONTROLLER_PORT}
REPLICATION=${KAFKA_REPLICATION_FACTOR:-1}
MIN_ISR=${KAFKA_MIN_INSYNC_REPLICAS:-1}

if ! compgen -G "$JARS/kafka_2.13-*.jar" >/dev/null; then
  echo "run-kafka: no Kafka jars in $JARS; fix: make setup (mvn -q -f infra/pom.xml package)" >&2
  exit 2
fi

DATA=$KAFKA_STATE_DIR/data
CONF=$KAFKA_STATE_DIR/server.properties
mkdir -p "$DATA"
sed -e "s|@KAFKA_PORT@|$KAFKA_PORT|g" \
    -e "s|@KAFKA_CONTROLLER_PORT@|$KAFKA_CONTROLLER_PORT|g" \
    -e "s|@KAFKA_DATA_DIR@|$DATA|g" \
    -e "s|@KAFKA_NODE_ID@|$NODE_ID|g" \
    -e "s|@KAFKA_QUORUM_VOTERS@|$VOTERS|g" \
    -e "s|@KAFKA_REPLICATION_FACTOR@|$REPLICATION|g" \
    -e "s|@KAFKA_MIN_INSYNC_REPLICAS@|$MIN_ISR|g" \
    "$HERE/server.properties" >"$CONF"

read -r -a HEAP <<<"${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m}"
JVM=(-server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
     -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true
     "-Dlog4j2.configurationFile=$HERE/log4j2.properties" -cp "$JARS/*")

if [ ! -f "$DATA/meta.properties" ]; then
  # A cluster id is 16 random bytes, base64url without padding (what `StorageTool random-uuid`
  # prints); generated here to spare one JVM start. A leading '-' would read as a CLI flag.
  id=${KAFKA_CLUSTER_ID:--}
  while [ "${id:0:1}" = "-" ]; do
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
  done
  echo "run-kafka: formatting $DATA (cluster id $id)"
  "$JAVA" -Xmx256m -XX:TieredStopAtLevel=1 "${JVM[@]:1}" kafka.tools.StorageTool format -t "$id" -c "$CONF"
fi

echo "run-kafka: starting node $NODE_ID, broker on 127.0.0.1:$KAFKA_PORT (controller 127.0.0.1:$KAFKA_CONTROLLER_PORT, voters $VOTERS)"
exec "$JAVA" "${HEAP[@]}" "${JVM[@]}" kafka.Kafka "$CONF"
