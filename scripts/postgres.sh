#!/usr/bin/env bash
# A local PostgreSQL for SagaKit's tests and benchmarks.
#
#   scripts/postgres.sh start    install (apt-get) when missing, initdb, start on 127.0.0.1, create the
#                                `sagakit` database and user, write the URL, wait until it answers
#   scripts/postgres.sh stop     stop the server this script started
#   scripts/postgres.sh status   print whether the server answers; exit 1 when it does not
#   scripts/postgres.sh url      print the URL to use (postgres://user:password@127.0.0.1:port/sagakit)
#
# The server runs as a plain process (as the `postgres` user when run as root, since initdb refuses root)
# with its data, socket, log and URL under .local/postgres in the repository. A server of ours that
# already runs is reused. The port is PGPORT, or a free one picked at the first start and kept.
# When POSTGRES_URL is set, everything points at that server instead and start/stop do nothing.
#
# When the `postgres` user cannot reach that directory (a clone under a root user's home, which is
# mode 0700), everything goes to /var/tmp/sagakit-pg-<hash of the directory's path> instead, owned
# by `postgres`: the same path always maps to the same place, so start, stop, status and url agree.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { echo "postgres.sh: $*" >&2; }

# The nearest directory of a path that exists.
existing_ancestor() {
    local dir=$1
    while [[ ! -d "$dir" ]]; do dir=$(dirname "$dir"); done
    echo "$dir"
}

# Whether the server's OS user can enter (search) the directory that holds, or will hold, $1.
owner_can_reach() {
    [[ $(id -u) -ne 0 ]] && return 0
    id postgres >/dev/null 2>&1 || return 0 # not installed yet: decided again once it is
    runuser -u postgres -- test -x "$(existing_ancestor "$1")" 2>/dev/null
}

# Sets BASE (relocated when the server's user cannot reach it) and the paths under it.
resolve_base() {
    # SAGAKIT_PG_BASE puts a second, private server elsewhere (tests that stop and restart a server
    # use one of their own, with PGPORT, so that they do not disturb the others).
    BASE="${SAGAKIT_PG_BASE:-$ROOT/.local/postgres}"
    REQUESTED="$BASE"
    if ! owner_can_reach "$BASE"; then
        local relocated
        relocated="/var/tmp/sagakit-pg-$(printf '%s' "$BASE" | sha256sum | cut -c1-16)"
        if [[ -e "$relocated" && "$(stat -c %U "$relocated")" != postgres ]]; then
            log "$relocated exists and is not owned by postgres; remove it"
            exit 1
        fi
        BASE="$relocated"
    fi
    DATA="$BASE/data"
    RUN="$BASE/run"
    LOGFILE="$BASE/postgres.log"
    URLFILE="$BASE/url"
    PORTFILE="$BASE/port"
}
resolve_base
DB=sagakit
DBUSER=sagakit

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

bin_dir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

# Runs a command as the server's owner: `postgres` when we are root, ourselves otherwise.
as_owner() {
    if [[ $(id -u) -eq 0 ]]; then
        # From /: the current directory may be one that user cannot enter.
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

install_if_missing() {
    if [[ -z "$(bin_dir)" || ! -x "$(bin_dir)/initdb" ]]; then
        log "installing postgresql with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends postgresql >/dev/null
        # Debian's postinst may start its own cluster on 5432; it does not matter to us.
    fi
}

pick_port() {
    if [[ -n "${PGPORT:-}" ]]; then
        echo "$PGPORT"
    elif [[ -f "$PORTFILE" ]]; then
        cat "$PORTFILE"
    else
        local port
        for _ in $(seq 1 100); do
            port=$((20000 + RANDOM % 30000))
            if ! port_open "$port"; then
                echo "$port"
                return
            fi
        done
        log "no free port found"
        exit 1
    fi
}

running() { [[ -f "$DATA/postmaster.pid" ]] && as_owner "$(bin_dir)/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

init_cluster() {
    [[ -f "$DATA/PG_VERSION" ]] && return
    log "initdb into $DATA"
    mkdir -p "$BASE"
    # Only the server's user needs the directory (the URL file is read by root or by that user).
    chmod 700 "$BASE"
    rm -rf "$DATA"
    mkdir -p "$DATA" "$RUN"
    [[ $(id -u) -eq 0 ]] && chown -R postgres:postgres "$BASE"
    chmod 700 "$DATA"
    as_owner "$(bin_dir)/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    cat >>"$DATA/postgresql.conf" <<EOF
# SagaKit test server (scripts/postgres.sh)
listen_addresses = '127.0.0.1'
unix_socket_directories = '$RUN'
max_connections = 1000
synchronous_commit = on
EOF
}

start() {
    if [[ -n "${POSTGRES_URL:-}" ]]; then
        log "POSTGRES_URL is set; nothing to start"
        return
    fi
    install_if_missing
    resolve_base # the `postgres` user may be new
    init_cluster
    local port
    if running; then
        port=$(cat "$PORTFILE")
        log "reusing the server on 127.0.0.1:$port"
    else
        port=$(pick_port)
        if port_open "$port"; then
            log "port $port is taken by another program; set PGPORT or remove $PORTFILE"
            exit 1
        fi
        mkdir -p "$RUN"
        [[ $(id -u) -eq 0 ]] && chown postgres:postgres "$RUN" "$BASE"
        touch "$LOGFILE"
        [[ $(id -u) -eq 0 ]] && chown postgres:postgres "$LOGFILE"
        log "starting on 127.0.0.1:$port"
        as_owner "$(bin_dir)/pg_ctl" -D "$DATA" -l "$LOGFILE" -o "-p $port" -w -t 60 start >/dev/null
        echo "$port" >"$PORTFILE"
    fi
    # Wait until it answers on TCP.
    for _ in $(seq 1 120); do
        "$(bin_dir)/pg_isready" -q -h 127.0.0.1 -p "$port" && break
        sleep 0.5
    done
    "$(bin_dir)/pg_isready" -q -h 127.0.0.1 -p "$port" || { log "the server does not answer; see $LOGFILE"; exit 1; }
    create_database "$port"
}

psql_owner() {
    local port=$1
    shift
    as_owner "$(bin_dir)/psql" -X -q -v ON_ERROR_STOP=1 -h "$RUN" -p "$port" -U postgres -d postgres "$@"
}

create_database() {
    local port=$1 password
    if [[ -f "$URLFILE" ]] && grep -q ":$port/" "$URLFILE"; then
        password=$(sed -E 's|^postgres://[^:]+:([^@]+)@.*$|\1|' "$URLFILE")
    else
        password=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
    fi
    if [[ -z "$(psql_owner "$port" -tA -c "SELECT 1 FROM pg_roles WHERE rolname = '$DBUSER'")" ]]; then
        psql_owner "$port" -c "CREATE ROLE $DBUSER LOGIN PASSWORD '$password'"
    else
        psql_owner "$port" -c "ALTER ROLE $DBUSER PASSWORD '$password'"
    fi
    if [[ -z "$(psql_owner "$port" -tA -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" ]]; then
        psql_owner "$port" -c "CREATE DATABASE $DB OWNER $DBUSER"
    fi
    echo "postgres://$DBUSER:$password@127.0.0.1:$port/$DB" >"$URLFILE.tmp"
    mv "$URLFILE.tmp" "$URLFILE"
    if [[ "$BASE" != "$REQUESTED" ]]; then
        # Where tools look for it (the tests' fallback reads .local/postgres/url): a copy for this
        # user, and a link to the log.
        mkdir -p "$REQUESTED"
        install -m 600 "$URLFILE" "$REQUESTED/url"
        ln -sfn "$LOGFILE" "$REQUESTED/postgres.log"
        log "data in $BASE (the postgres user cannot reach $REQUESTED)"
    fi
    log "ready: $(sed -E 's|:[^:@/]+@|:***@|' "$URLFILE")"
}

stop() {
    if [[ -n "${POSTGRES_URL:-}" ]]; then
        log "POSTGRES_URL is set; nothing to stop"
        return
    fi
    if [[ -n "$(bin_dir)" ]] && running; then
        as_owner "$(bin_dir)/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
        log "stopped"
    else
        log "not running"
    fi
}

url() {
    if [[ -n "${POSTGRES_URL:-}" ]]; then
        echo "$POSTGRES_URL"
    elif [[ -f "$URLFILE" ]]; then
        cat "$URLFILE"
    else
        log "no URL yet: run scripts/postgres.sh start"
        exit 1
    fi
}

status() {
    local target
    target=$(url)
    local hostport
    hostport=$(echo "$target" | sed -E 's|^[a-z]+://([^@]*@)?([^/?]+).*$|\2|')
    local host=${hostport%:*} port=${hostport##*:}
    [[ "$hostport" == *:* ]] || port=5432
    if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
        echo "postgres answers on $host:$port"
    else
        echo "postgres does not answer on $host:$port"
        exit 1
    fi
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
url) url ;;
*)
    echo "usage: $0 start|stop|status|url" >&2
    exit 2
    ;;
esac
