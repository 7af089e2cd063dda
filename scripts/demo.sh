#!/usr/bin/env bash
# The example order system, end to end: starts the broker (installing it when missing), builds,
# launches inventory-, payment-, shipping- and order-service as separate processes, runs N order
# sagas and checks the invariants against every service's own database.
#
#   scripts/demo.sh [--store sqlite|postgres] [--release] [--keep-broker] [sagakit-demo options]
#
# sagakit-demo options (see `sagakit-demo --help`): --sagas N (500), --concurrency C (50),
# --decline-rate R (0.1), --shipping-failure-rate R (0.05), --instances N (1), --chaos,
# --large-order-rate R (0.1), --fraud-reject-rate R (0.2), --manual-review (approve large orders
# yourself: `order-saga signal <id> fraud.approved --by <name>`).
#
# The broker (and PostgreSQL) are stopped at the end when this script started them, unless
# --keep-broker is given. Ctrl-C stops every process the demo started.
#
# Environment: AMQP_URL (use that broker), SAGAKIT_STORE_URL (use that store),
# SAGAKIT_BUILD_DIR (build folder, default .build).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

STORE=sqlite
CONFIG=debug
KEEP_BROKER=0
ARGS=()
while (($#)); do
    case "$1" in
        --store) STORE="${2:?--store needs sqlite or postgres}"; shift 2 ;;
        --store=*) STORE="${1#--store=}"; shift ;;
        --release) CONFIG=release; shift ;;
        --keep-broker) KEEP_BROKER=1; shift ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) ARGS+=("$1"); shift ;;
    esac
done
case "$STORE" in sqlite|postgres) ;; *) echo "demo.sh: --store must be sqlite or postgres, not '$STORE'" >&2; exit 2 ;; esac

log() { echo "demo.sh: $*" >&2; }

STARTED_BROKER=0
STARTED_POSTGRES=0
DEMO_PID=""

cleanup() {
    local status=$?
    trap - INT TERM EXIT
    if [[ -n "$DEMO_PID" ]] && kill -0 "$DEMO_PID" 2>/dev/null; then
        log "stopping the demo's processes"
        kill -INT -- "-$DEMO_PID" 2>/dev/null || true
        for _ in $(seq 1 40); do kill -0 "$DEMO_PID" 2>/dev/null || break; sleep 0.5; done
        kill -KILL -- "-$DEMO_PID" 2>/dev/null || true
    fi
    # Anything left in the demo's process group (a service that outlived the driver).
    [[ -n "$DEMO_PID" ]] && kill -KILL -- "-$DEMO_PID" 2>/dev/null || true
    if ((STARTED_POSTGRES && !KEEP_BROKER)); then scripts/postgres.sh stop >/dev/null 2>&1 || true; fi
    if ((STARTED_BROKER && !KEEP_BROKER)); then
        log "stopping the broker this demo started (keep it with --keep-broker)"
        scripts/rabbitmq.sh stop >/dev/null 2>&1 || true
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. The broker.
if [[ -z "${AMQP_URL:-}" ]]; then
    scripts/rabbitmq.sh status >/dev/null 2>&1 || STARTED_BROKER=1
    scripts/rabbitmq.sh start
    AMQP_URL="$(scripts/rabbitmq.sh url)"
fi
export AMQP_URL

# 2. The store.
if [[ "$STORE" == postgres && -z "${SAGAKIT_STORE_URL:-}" ]]; then
    [[ -x scripts/postgres.sh ]] || { log "scripts/postgres.sh is missing; set SAGAKIT_STORE_URL=postgres://..."; exit 1; }
    scripts/postgres.sh status >/dev/null 2>&1 || STARTED_POSTGRES=1
    scripts/postgres.sh start
    SAGAKIT_STORE_URL="$(scripts/postgres.sh url)"
    export SAGAKIT_STORE_URL
fi

# 3. Build (GRDB needs SQLite's headers; librabbitmq-dev came with the broker above).
if ! pkg-config --exists sqlite3 2>/dev/null; then
    SUDO=""; ((EUID == 0)) || SUDO=sudo
    log "installing libsqlite3-dev with apt-get"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends libsqlite3-dev pkg-config >/dev/null
fi
BUILD_DIR="${SAGAKIT_BUILD_DIR:-.build}"
log "building ($CONFIG, in $BUILD_DIR; the first build takes several minutes)"
swift build -c "$CONFIG" --scratch-path "$BUILD_DIR" || { log "the build failed"; exit 1; }
BIN="$(swift build -c "$CONFIG" --scratch-path "$BUILD_DIR" --show-bin-path)"

# 4. Run, in its own process group so that every process it starts can be stopped together.
set -m
"$BIN/sagakit-demo" "${ARGS[@]}" &
DEMO_PID=$!
set +m
set +e
wait "$DEMO_PID"
STATUS=$?
set -e
kill -KILL -- "-$DEMO_PID" 2>/dev/null || true
DEMO_PID=""
exit "$STATUS"
