#!/usr/bin/env bash
# A local RabbitMQ broker for SagaKit's tests, benchmarks and demo.
#
#   scripts/rabbitmq.sh start     install (apt-get) when missing, start on 127.0.0.1, wait until it answers
#   scripts/rabbitmq.sh stop      stop the broker this script started
#   scripts/rabbitmq.sh restart   stop and start the broker application (queues and messages are recovered
#                                 from disk; the Erlang VM stays up, so this takes seconds, not a full boot)
#   scripts/rabbitmq.sh reset     delete every queue, exchange and message of the broker this script started
#                                 (test suites leave their queues behind; thousands of idle queues cost the
#                                 broker CPU and skew benchmarks: reset before measuring)
#   scripts/rabbitmq.sh status    print whether a broker answers, exit 1 when none does
#   scripts/rabbitmq.sh url       print the AMQP URL to use
#   scripts/rabbitmq.sh ctl ARGS  run rabbitmqctl against the broker (e.g. `ctl close_all_connections bye`)
#   scripts/rabbitmq.sh controllable  exit 0 when the broker in use (AMQP_URL) is the one this script started
#
# The broker runs as a plain process of the current user (not a system service) with its data, logs and
# Erlang cookie under .local/rabbitmq/PORT in the repository. A broker already answering on the port is reused.
# When AMQP_URL is set, everything points at that broker instead, and start/stop/restart/reset act only when it
# names this script's broker on 127.0.0.1:RABBITMQ_PORT (a private broker for fault tests).
#
# Environment: RABBITMQ_PORT (default 5672; each port is its own broker with its own data directory, so tests
# that restart a broker can use a private one on another port), AMQP_URL.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT="${RABBITMQ_PORT:-5672}"
DIST_PORT=$((PORT + 20000))
BASE="$ROOT/.local/rabbitmq/$PORT"
NODE="sagakit-${PORT}@localhost"
RMQ_BIN=/usr/lib/rabbitmq/bin
PIDFILE="$BASE/broker.pid"
DEFAULT_URL="amqp://guest:guest@127.0.0.1:${PORT}/%2F"

log() { echo "rabbitmq.sh: $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

# The pid of our node's Erlang VM, found by the node name in its environment (robust to a lost pid file).
own_broker_pid() {
    local pid
    for pid in $(pgrep -f beam.smp 2>/dev/null); do
        if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx "RABBITMQ_NODENAME=$NODE"; then
            echo "$pid"
            return 0
        fi
    done
    return 1
}

own_broker_running() { own_broker_pid >/dev/null; }

install_if_missing() {
    local missing=()
    [[ -x "$RMQ_BIN/rabbitmq-server" ]] || missing+=(rabbitmq-server)
    pkg-config --exists librabbitmq 2>/dev/null || missing+=(librabbitmq-dev)
    command -v pkg-config >/dev/null || missing+=(pkg-config)
    if ((${#missing[@]})); then
        log "installing ${missing[*]} with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        # Debian's postinst tries to start the system service; without systemd it fails harmlessly.
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        # Do not let a Debian-started service hold the port (harmless when there is none).
        if [[ -x /etc/init.d/rabbitmq-server ]] && ! own_broker_running; then
            /etc/init.d/rabbitmq-server stop >/dev/null 2>&1 || true
        fi
    fi
}

# The environment that names our node and its private files; used for the server and for rabbitmqctl.
node_env() {
    export HOME="$BASE/home"
    export RABBITMQ_NODENAME="$NODE"
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT="$PORT"
    export RABBITMQ_DIST_PORT="$DIST_PORT"
    export RABBITMQ_MNESIA_BASE="$BASE/mnesia"
    export RABBITMQ_LOG_BASE="$BASE/log"
    export RABBITMQ_CONF_ENV_FILE="$BASE/rabbitmq-env.conf"
    export RABBITMQ_CONFIG_FILE="$BASE/rabbitmq"
    export RABBITMQ_ADVANCED_CONFIG_FILE="$BASE/advanced.config"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$BASE/enabled_plugins"
    export RABBITMQ_PLUGINS_EXPAND_DIR="$BASE/plugins-expand"
    export ERL_EPMD_ADDRESS=127.0.0.1
}

ctl() {
    if own_broker_running; then
        node_env
        "$RMQ_BIN/rabbitmqctl" -n "$NODE" "$@"
    elif [[ -x /usr/sbin/rabbitmqctl ]]; then
        # A broker we did not start (for example Debian's service): its own wrapper knows its node and cookie.
        /usr/sbin/rabbitmqctl "$@"
    else
        log "no broker started by this script and no rabbitmqctl found"
        return 1
    fi
}

wait_until_answering() {
    local deadline=$((SECONDS + ${1:-60}))
    until port_open; do
        if ((SECONDS > deadline)); then
            log "the broker did not answer on 127.0.0.1:$PORT in time; log: $BASE/log"
            tail -n 30 "$BASE/log/"*.log 2>/dev/null >&2 || true
            return 1
        fi
        if [[ -n "${2:-}" ]] && ! kill -0 "$2" 2>/dev/null; then
            log "the broker exited during start; output:"
            tail -n 40 "$BASE/server.out" >&2 || true
            return 1
        fi
        sleep 0.5
    done
}

start() {
    if [[ -n "${AMQP_URL:-}" ]] && ! names_own_port; then log "AMQP_URL is set: using that broker"; return 0; fi
    if port_open; then
        log "a broker already answers on 127.0.0.1:$PORT; reusing it"
        return 0
    fi
    install_if_missing
    if port_open; then log "a broker answers on 127.0.0.1:$PORT; reusing it"; return 0; fi
    mkdir -p "$BASE/home" "$BASE/mnesia" "$BASE/log"
    : >"$BASE/rabbitmq-env.conf"
    echo "[]." >"$BASE/enabled_plugins"
    echo "[]." >"$BASE/advanced.config"
    cat >"$BASE/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$PORT
loopback_users = none
log.console = false
log.file.level = warning
EOF
    # Distribution: epmd and the node listen on loopback only; the dist port follows the AMQP port so two
    # brokers (ours and a system one) do not clash.
    node_env
    log "starting $NODE on 127.0.0.1:$PORT (data in $BASE)"
    (
        cd "$RMQ_BIN"
        # RabbitMQ's defaults plus: no scheduler busy-waiting (+sbwt none and friends). Erlang
        # schedulers otherwise spin for a while before sleeping, which on a small host shared with
        # the database and the services burns CPU they need (RabbitMQ's runtime-tuning guide
        # recommends this for shared or CPU-constrained hosts).
        export RABBITMQ_SERVER_ERL_ARGS="+P 1048576 +t 5000000 +stbt db +zdbbl 128000 +sbwt none +sbwtdcpu none +sbwtdio none -kernel inet_dist_use_interface {127,0,0,1}"
        exec setsid ./rabbitmq-server </dev/null >"$BASE/server.out" 2>&1
    ) &
    echo $! >"$PIDFILE"
    wait_until_answering 90 "$(cat "$PIDFILE")"
    own_broker_pid >"$PIDFILE" || true
    "$RMQ_BIN/rabbitmqctl" -n "$NODE" -q await_startup --timeout 60 >/dev/null 2>&1 || true
    log "broker answers at $(url)"
}

stop() {
    if [[ -n "${AMQP_URL:-}" ]] && ! controllable; then log "AMQP_URL is set: not stopping that broker"; return 0; fi
    local pid
    if ! pid="$(own_broker_pid)"; then log "no broker started by this script is running"; rm -f "$PIDFILE"; return 0; fi
    node_env
    "$RMQ_BIN/rabbitmqctl" -n "$NODE" -q shutdown >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
    log "stopped"
}

# Exit 0 when the broker that AMQP_URL (or the default URL) names is one this script controls (for tests that
# close connections or restart the broker).
controllable() {
    own_broker_running || return 1
    names_own_port
}

# Exit 0 when AMQP_URL is unset or names this script's broker (loopback, RABBITMQ_PORT).
names_own_port() {
    [[ -z "${AMQP_URL:-}" ]] && return 0
    case "$AMQP_URL" in
    *@127.0.0.1:"$PORT"/* | *@localhost:"$PORT"/* | amqp://127.0.0.1:"$PORT"/* | amqp://localhost:"$PORT"/*) return 0 ;;
    *) return 1 ;;
    esac
}

restart() {
    if ! controllable; then log "the broker in use was not started by this script: not restarting it"; return 1; fi
    ctl -q stop_app >/dev/null
    ctl -q start_app >/dev/null
    wait_until_answering 60
}

# Empties our broker (rabbitmqctl reset: queues, exchanges, messages and users go; the default guest user
# comes back with the application).
reset() {
    if ! controllable; then log "the broker in use was not started by this script: not resetting it"; return 1; fi
    local queues
    queues=$(ctl -q list_queues name 2>/dev/null | wc -l)
    # start_app after a reset warns about feature flags on stderr; the broker is fine.
    ctl -q stop_app >/dev/null 2>&1
    ctl -q reset >/dev/null 2>&1
    ctl -q start_app >/dev/null 2>&1
    wait_until_answering 60
    log "reset: $queues queue(s) deleted"
}

url() { echo "${AMQP_URL:-$DEFAULT_URL}"; }

status() {
    if [[ -n "${AMQP_URL:-}" ]]; then echo "using AMQP_URL"; return 0; fi
    if port_open; then
        if own_broker_running; then echo "running ($NODE, pid $(own_broker_pid)) at $(url)"; else echo "a broker answers at $(url)"; fi
    else
        echo "not running"
        return 1
    fi
}

cmd="${1:-status}"
shift || true
case "$cmd" in
start) start ;;
stop) stop ;;
restart) restart ;;
reset) reset ;;
status) status ;;
url) url ;;
ctl) ctl "$@" ;;
controllable) controllable ;;
*)
    echo "usage: $0 start|stop|restart|reset|status|url|ctl ARGS|controllable" >&2
    exit 2
    ;;
esac
