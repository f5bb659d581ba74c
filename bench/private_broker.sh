#!/bin/sh
# A private RabbitMQ node for the benchmarks, on its own port and data
# directory, for when the shared broker on 5672 is being restarted by other
# people's tests (a sample during which the broker went away is retaken,
# but a broker restarted every 20 s makes the benchmarks crawl).
#
#   bench/private_broker.sh start    # prints the CYME_BENCH_BROKER to export
#   CYME_BENCH_BROKER=amqp://guest:guest@127.0.0.1:5682// .venv/bin/python bench/cold_start.py
#   bench/private_broker.sh stop     # stops the node and removes its data
#
# Needs the rabbitmq-server package (Debian: /usr/lib/rabbitmq/bin) and the
# right to use its Erlang cookie (root, or the rabbitmq user).
set -eu
PORT=${CYME_BENCH_BROKER_PORT:-5682}
NODE=cymebench@localhost
BASE=${TMPDIR:-/tmp}/cyme-bench-rabbitmq
PATH=/usr/lib/rabbitmq/bin:/usr/sbin:$PATH

env_for_node() {
    RABBITMQ_NODENAME=$NODE
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    RABBITMQ_NODE_PORT=$PORT
    RABBITMQ_DIST_PORT=$((PORT + 20000))
    RABBITMQ_MNESIA_BASE=$BASE/mnesia
    RABBITMQ_LOG_BASE=$BASE/log
    RABBITMQ_ENABLED_PLUGINS_FILE=$BASE/enabled_plugins
    RABBITMQ_CONFIG_FILE=$BASE/rabbitmq
    RABBITMQ_PID_FILE=$BASE/rabbitmq.pid
    export RABBITMQ_NODENAME RABBITMQ_NODE_IP_ADDRESS RABBITMQ_NODE_PORT \
        RABBITMQ_DIST_PORT RABBITMQ_MNESIA_BASE RABBITMQ_LOG_BASE \
        RABBITMQ_ENABLED_PLUGINS_FILE RABBITMQ_CONFIG_FILE RABBITMQ_PID_FILE
}

case "${1:-}" in
start)
    mkdir -p "$BASE/mnesia" "$BASE/log"
    echo "[]." > "$BASE/enabled_plugins"
    : > "$BASE/rabbitmq.conf"
    env_for_node
    rabbitmq-server -detached
    rabbitmqctl -n "$NODE" wait --timeout 60 "$BASE/rabbitmq.pid" >/dev/null
    echo "CYME_BENCH_BROKER=amqp://guest:guest@127.0.0.1:$PORT//"
    ;;
stop)
    env_for_node
    rabbitmqctl -n "$NODE" stop "$BASE/rabbitmq.pid" >/dev/null 2>&1 || true
    rm -rf "$BASE"
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
