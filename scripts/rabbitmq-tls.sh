#!/usr/bin/env bash
# A private RabbitMQ broker with a TLS (amqps) listener, for SagaKit's TLS tests and for trying TLS locally.
#
#   scripts/rabbitmq-tls.sh certs DIR        make a test CA and a server certificate for 127.0.0.1/localhost in DIR
#                                            (ca.pem, ca.key, server.pem, server.key; a client.pem/client.key pair
#                                            signed by the same CA; and other-ca.pem, a CA that signed nothing)
#   scripts/rabbitmq-tls.sh start PORT DIR   start a broker whose only listener is TLS on 127.0.0.1:PORT, with the
#                                            certificates in DIR (made by `certs`); waits until it answers
#   scripts/rabbitmq-tls.sh stop PORT        stop it
#   scripts/rabbitmq-tls.sh url PORT DIR     print the amqps:// URL (with cacertfile) for it
#
# Like scripts/rabbitmq.sh, the broker runs as a plain process of the current user, with its data, logs and
# Erlang cookie under .local/rabbitmq-tls/PORT. Needs rabbitmq-server and openssl (`scripts/rabbitmq.sh start`
# installs the broker). The private keys stay in DIR (mode 0600) and are never printed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RMQ_BIN=/usr/lib/rabbitmq/bin

log() { echo "rabbitmq-tls.sh: $*" >&2; }

certs() {
    local dir="$1"
    "$ROOT/scripts/test-ca.sh" "$dir"
    log "certificates in $dir"
}

node_env() {
    local port="$1"
    BASE="$ROOT/.local/rabbitmq-tls/$port"
    NODE="sagakit-tls-${port}@localhost"
    export HOME="$BASE/home"
    export RABBITMQ_NODENAME="$NODE"
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_DIST_PORT=$((port + 20000))
    export RABBITMQ_MNESIA_BASE="$BASE/mnesia"
    export RABBITMQ_LOG_BASE="$BASE/log"
    export RABBITMQ_CONF_ENV_FILE="$BASE/rabbitmq-env.conf"
    export RABBITMQ_CONFIG_FILE="$BASE/rabbitmq"
    export RABBITMQ_ADVANCED_CONFIG_FILE="$BASE/advanced.config"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$BASE/enabled_plugins"
    export RABBITMQ_PLUGINS_EXPAND_DIR="$BASE/plugins-expand"
    export ERL_EPMD_ADDRESS=127.0.0.1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

node_pid() {
    local pid
    for pid in $(pgrep -f beam.smp 2>/dev/null); do
        if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx "RABBITMQ_NODENAME=$NODE"; then
            echo "$pid"
            return 0
        fi
    done
    return 1
}

start() {
    local port="$1" dir
    dir="$(cd "$2" && pwd)"
    [[ -x "$RMQ_BIN/rabbitmq-server" ]] || { log "rabbitmq-server is not installed (scripts/rabbitmq.sh start installs it)"; exit 1; }
    node_env "$port"
    if node_pid >/dev/null; then log "$NODE already runs"; return 0; fi
    if port_open "$port"; then log "something else listens on 127.0.0.1:$port"; exit 1; fi
    mkdir -p "$BASE/home" "$BASE/mnesia" "$BASE/log"
    : >"$BASE/rabbitmq-env.conf"
    echo "[]." >"$BASE/enabled_plugins"
    echo "[]." >"$BASE/advanced.config"
    cat >"$BASE/rabbitmq.conf" <<EOF
listeners.tcp = none
listeners.ssl.default = 127.0.0.1:$port
ssl_options.cacertfile = $dir/ca.pem
ssl_options.certfile = $dir/server.pem
ssl_options.keyfile = $dir/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
loopback_users = none
log.console = false
log.file.level = warning
EOF
    log "starting $NODE with a TLS listener on 127.0.0.1:$port (data in $BASE)"
    (
        cd "$RMQ_BIN"
        export RABBITMQ_SERVER_ERL_ARGS="+P 1048576 +t 5000000 +stbt db +zdbbl 128000 +sbwt none +sbwtdcpu none +sbwtdio none -kernel inet_dist_use_interface {127,0,0,1}"
        exec setsid ./rabbitmq-server </dev/null >"$BASE/server.out" 2>&1
    ) &
    local launcher=$! deadline=$((SECONDS + 90))
    until port_open "$port"; do
        if ((SECONDS > deadline)) || ! kill -0 "$launcher" 2>/dev/null; then
            log "the broker did not answer on 127.0.0.1:$port; output:"
            tail -n 40 "$BASE/server.out" >&2 || true
            exit 1
        fi
        sleep 0.5
    done
    "$RMQ_BIN/rabbitmqctl" -n "$NODE" -q await_startup --timeout 60 >/dev/null 2>&1 || true
    log "TLS broker answers on 127.0.0.1:$port"
}

stop() {
    node_env "$1"
    local pid
    if ! pid="$(node_pid)"; then log "no TLS broker on port $1 is running"; return 0; fi
    "$RMQ_BIN/rabbitmqctl" -n "$NODE" -q shutdown >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    log "stopped"
}

# localhost, not 127.0.0.1: librabbitmq checks the certificate's DNS names, not its IP addresses (Docs/Transport.md).
url() { echo "amqps://guest:guest@localhost:$1/%2F?cacertfile=$(cd "$2" && pwd)/ca.pem"; }

cmd="${1:-}"
shift || true
case "$cmd" in
certs) certs "$1" ;;
start) start "$1" "$2" ;;
stop) stop "$1" ;;
url) url "$1" "$2" ;;
*)
    echo "usage: $0 certs DIR | start PORT DIR | stop PORT | url PORT DIR" >&2
    exit 2
    ;;
esac
