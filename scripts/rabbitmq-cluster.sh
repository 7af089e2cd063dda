#!/usr/bin/env bash
# A three-node RabbitMQ cluster on loopback, the way users scale out: three nodes of the local
# broker, each with its own AMQP port, data and Erlang distribution port, one shared Erlang cookie.
#
#   scripts/rabbitmq-cluster.sh start          start a fresh cluster: the nodes (scripts/rabbitmq.sh per port), joined
#   scripts/rabbitmq-cluster.sh stop           stop every node
#   scripts/rabbitmq-cluster.sh url            print one AMQP URL naming all three nodes
#   scripts/rabbitmq-cluster.sh stop-node N    stop node N (1-3) the hard way (kill -9 of its VM)
#   scripts/rabbitmq-cluster.sh start-node N   start node N again (it rejoins the cluster)
#   scripts/rabbitmq-cluster.sh status         print the cluster status as node 1 sees it
#   scripts/rabbitmq-cluster.sh queues N       print every queue's type, leader and online members as node N sees them
#   scripts/rabbitmq-cluster.sh await-quorum N wait (at most 120 s) until stopping node N would leave every quorum
#                                              queue with a quorum: what an operator checks before taking a node down
#
# Environment: CLUSTER_BASE_PORT (default 5781; the nodes use BASE, BASE+1, BASE+2).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE_PORT="${CLUSTER_BASE_PORT:-5781}"
PORTS=("$BASE_PORT" "$((BASE_PORT + 1))" "$((BASE_PORT + 2))")
RMQ_BIN=/usr/lib/rabbitmq/bin
log() { echo "rabbitmq-cluster.sh: $*" >&2; }

node_name() { echo "sagakit-$1@localhost"; }
node_base() { echo "$ROOT/.local/rabbitmq/$1"; }

# rabbitmqctl against node on port $1, with that node's private environment.
ctl() {
    local port=$1
    shift
    (
        export HOME="$(node_base "$port")/home" ERL_EPMD_ADDRESS=127.0.0.1
        "$RMQ_BIN/rabbitmqctl" -n "$(node_name "$port")" "$@"
    )
}

seed_cookie() {
    # Every node must share one Erlang cookie to form a cluster.
    local cookie="$ROOT/.local/rabbitmq/cluster-cookie"
    mkdir -p "$(dirname "$cookie")"
    [[ -f $cookie ]] || head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 20 >"$cookie"
    for port in "${PORTS[@]}"; do
        mkdir -p "$(node_base "$port")/home"
        install -m 400 "$cookie" "$(node_base "$port")/home/.erlang.cookie"
    done
}

start_node() {
    local port=$1
    env -u AMQP_URL RABBITMQ_PORT="$port" "$ROOT/scripts/rabbitmq.sh" start
}

join() {
    local port=$1 first
    first="$(node_name "${PORTS[0]}")"
    if ctl "$port" -q cluster_status 2>/dev/null | grep -q "$first"; then return 0; fi
    log "joining $(node_name "$port") to $first"
    ctl "$port" -q stop_app
    ctl "$port" -q reset
    ctl "$port" -q join_cluster "$first"
    ctl "$port" -q start_app
}

start() {
    # A fresh cluster each time: a node of an old cluster would wait at boot for its old peers.
    for port in "${PORTS[@]}"; do
        env -u AMQP_URL RABBITMQ_PORT="$port" "$ROOT/scripts/rabbitmq.sh" stop >/dev/null 2>&1 || true
        rm -rf "$(node_base "$port")"
    done
    seed_cookie
    for port in "${PORTS[@]}"; do start_node "$port"; done
    for port in "${PORTS[@]:1}"; do join "$port"; done
    log "cluster of ${#PORTS[@]} nodes: $(url)"
}

stop() {
    for port in "${PORTS[@]}"; do env -u AMQP_URL RABBITMQ_PORT="$port" "$ROOT/scripts/rabbitmq.sh" stop || true; done
}

node_pid() {
    local port=$1 pid
    for pid in $(pgrep -f beam.smp 2>/dev/null); do
        if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx "RABBITMQ_NODENAME=$(node_name "$port")"; then
            echo "$pid"
            return 0
        fi
    done
    return 1
}

stop_node() {
    local port=${PORTS[$(($1 - 1))]} pid
    pid="$(node_pid "$port")" || { log "node $1 is not running"; return 0; }
    log "killing node $1 ($(node_name "$port"), pid $pid)"
    kill -9 "$pid"
}

url() {
    local hosts=()
    for port in "${PORTS[@]}"; do hosts+=("127.0.0.1:$port"); done
    local IFS=,
    echo "amqp://guest:guest@${hosts[*]}/%2F"
}

cmd="${1:-status}"
shift || true
case "$cmd" in
start) start ;;
stop) stop ;;
url) url ;;
stop-node) stop_node "$1" ;;
start-node) start_node "${PORTS[$(($1 - 1))]}" ;;
status) ctl "${PORTS[0]}" cluster_status ;;
queues) ctl "${PORTS[$(($1 - 1))]}" -q -t 30 list_queues name type leader online members ;;
await-quorum)
    port=${PORTS[$(($1 - 1))]}
    (
        export HOME="$(node_base "$port")/home" ERL_EPMD_ADDRESS=127.0.0.1
        "$RMQ_BIN/rabbitmq-upgrade" -n "$(node_name "$port")" -q -t 120 await_online_quorum_plus_one
    )
    ;;
*)
    echo "usage: $0 start|stop|url|stop-node N|start-node N|status|queues N|await-quorum N" >&2
    exit 2
    ;;
esac
