#!/usr/bin/env bash
# A single-node Apache Kafka broker (KRaft, no ZooKeeper) on 127.0.0.1 for development,
# tests and CI. Not for production: see deploy/README.md for a cluster.
#
#   deploy/kafka/kafka.sh start|stop|status
#
# Environment:
#   KAFKA_PORT             client port (default 9092); the controller uses KAFKA_PORT+1
#   KAFKA_SSL_PORT         TLS client port (default KAFKA_PORT+2), with a certificate signed
#                          by a CA generated on first start: $KAFKA_DIR/tls/ca.pem
#   KAFKA_SASL_PORT        SASL_SSL client port (default KAFKA_PORT+3): SASL/PLAIN over the same
#                          TLS, user KAFKA_SASL_USER (default tailsift) with KAFKA_SASL_PASSWORD
#                          (default tailsift-dev-secret; a development broker on loopback only)
#   KAFKA_DIR              config, data and logs (default ./.kafka); `stop` keeps the data
#   KAFKA_VERSION          Apache Kafka version (default below, the one tailsift is tested with)
#   KAFKA_CACHE            where the jars are cached (default ~/.cache/tailsift/kafka-$KAFKA_VERSION)
#   KAFKA_HEAP             JVM heap (default 512m)
#   KAFKA_START_TIMEOUT    seconds `start` waits for the broker (default 90)
#
# On first use, Maven fetches Apache Kafka's own jars from Maven Central (pom.xml next to
# this script) into KAFKA_CACHE. `start` returns once the broker has finished starting and
# accepts connections, and prints the bootstrap address on stdout.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KAFKA_VERSION="${KAFKA_VERSION:-4.1.2}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
CONTROLLER_PORT="$((KAFKA_PORT + 1))"
KAFKA_SSL_PORT="${KAFKA_SSL_PORT:-$((KAFKA_PORT + 2))}"
KAFKA_SASL_PORT="${KAFKA_SASL_PORT:-$((KAFKA_PORT + 3))}"
KAFKA_SASL_USER="${KAFKA_SASL_USER:-tailsift}"
KAFKA_SASL_PASSWORD="${KAFKA_SASL_PASSWORD:-tailsift-dev-secret}"
KAFKA_DIR="$(mkdir -p "${KAFKA_DIR:-./.kafka}" && cd "${KAFKA_DIR:-./.kafka}" && pwd)"
KAFKA_CACHE="${KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tailsift/kafka-$KAFKA_VERSION}"
KAFKA_HEAP="${KAFKA_HEAP:-512m}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
PID_FILE="$KAFKA_DIR/kafka.pid"
LOG_FILE="$KAFKA_DIR/logs/server.log"
CONFIG="$KAFKA_DIR/server.properties"
BOOTSTRAP="127.0.0.1:$KAFKA_PORT"

say() { echo "kafka.sh: $*" >&2; }

running_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE")"
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

fetch_jars() {
    if [[ -f "$KAFKA_CACHE/.complete" ]]; then
        return
    fi
    say "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central into $KAFKA_CACHE"
    rm -rf "$KAFKA_CACHE"
    mkdir -p "$KAFKA_CACHE/lib"
    mvn -q -B -Dstyle.color=never -f "$HERE/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$KAFKA_CACHE/lib" >&2
    touch "$KAFKA_CACHE/.complete"
}

# A development CA and a server certificate for 127.0.0.1/localhost, made once per KAFKA_DIR
# (openssl); the broker reads key and chain from one PEM file (ssl.keystore.type=PEM).
# Clients trust $KAFKA_DIR/tls/ca.pem. Not for production: use your own PKI there.
write_tls() {
    local dir="$KAFKA_DIR/tls"
    [[ -f "$dir/server.pem" ]] && return
    mkdir -p "$dir"
    (
        cd "$dir"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
            -subj "/CN=tailsift Kafka development CA" -keyout ca-key.pem -out ca.pem 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
            -keyout server-key.pem -out server.csr 2>/dev/null
        printf "subjectAltName=DNS:localhost,IP:127.0.0.1\n" >san.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 3650 \
            -extfile san.ext -out server-cert.pem 2>/dev/null
        cat server-key.pem server-cert.pem >server.pem
        rm -f server.csr san.ext
    ) || { say "cannot make TLS certificates with openssl"; return 1; }
}

# The JVM command line, as an array so paths with spaces survive.
java_cmd=(java -Xms128m "-Xmx$KAFKA_HEAP" -XX:+UseG1GC -Djava.awt.headless=true
    -Dorg.slf4j.simpleLogger.showDateTime=true
    "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd HH:mm:ss.SSS"
    -Dorg.slf4j.simpleLogger.log.org.apache.kafka.clients=warn
    -cp "$KAFKA_CACHE/lib/*")

write_config() {
    mkdir -p "$KAFKA_DIR/data" "$KAFKA_DIR/logs"
    cat >"$CONFIG" <<EOF
# Written by deploy/kafka/kafka.sh: one node that is both broker and KRaft controller.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT,SSL://127.0.0.1:$KAFKA_SSL_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,SSL://127.0.0.1:$KAFKA_SSL_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL
ssl.keystore.type=PEM
ssl.keystore.location=$KAFKA_DIR/tls/server.pem
sasl.enabled.mechanisms=PLAIN
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$KAFKA_SASL_USER="$KAFKA_SASL_PASSWORD";
log.dirs=$KAFKA_DIR/data
num.partitions=4
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=24
EOF
}

start() {
    local pid
    if pid="$(running_pid)"; then
        say "already running (pid $pid)"
        echo "$BOOTSTRAP"
        return 0
    fi
    fetch_jars
    write_tls
    write_config
    if [[ ! -f "$KAFKA_DIR/data/meta.properties" ]]; then
        local cluster_id
        cluster_id="$("${java_cmd[@]}" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)"
        "${java_cmd[@]}" kafka.tools.StorageTool format -t "$cluster_id" -c "$CONFIG" >>"$LOG_FILE" 2>&1 || {
            say "formatting storage in $KAFKA_DIR/data failed; see $LOG_FILE"
            tail -n 20 "$LOG_FILE" >&2
            return 1
        }
    fi
    local mark
    mark="$(wc -l <"$LOG_FILE" 2>/dev/null || echo 0)"
    nohup setsid "${java_cmd[@]}" kafka.Kafka "$CONFIG" >>"$LOG_FILE" 2>&1 </dev/null &
    echo $! >"$PID_FILE"
    local deadline=$((SECONDS + KAFKA_START_TIMEOUT))
    while ((SECONDS < deadline)); do
        if ! running_pid >/dev/null; then
            say "the broker exited during start; the end of $LOG_FILE:"
            tail -n 30 "$LOG_FILE" >&2
            return 1
        fi
        # Ready = the server says it finished starting AND the client port takes connections.
        if tail -n +"$((mark + 1))" "$LOG_FILE" | grep -q "Kafka Server started" &&
            (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null; then
            say "Apache Kafka $KAFKA_VERSION running (pid $(cat "$PID_FILE")), data in $KAFKA_DIR"
            echo "$BOOTSTRAP"
            return 0
        fi
        sleep 0.3
    done
    say "the broker did not start within ${KAFKA_START_TIMEOUT}s; the end of $LOG_FILE:"
    tail -n 30 "$LOG_FILE" >&2
    stop
    return 1
}

stop() {
    local pid
    if ! pid="$(running_pid)"; then
        say "not running"
        rm -f "$PID_FILE"
        return 0
    fi
    kill -TERM "$pid"
    for _ in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "broker did not stop within 30s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PID_FILE"
    say "stopped (data kept in $KAFKA_DIR)"
}

status() {
    local pid
    if pid="$(running_pid)"; then
        echo "running (pid $pid) on $BOOTSTRAP, data in $KAFKA_DIR"
    else
        echo "stopped"
        return 3
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
