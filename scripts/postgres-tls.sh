#!/usr/bin/env bash
# A private PostgreSQL with TLS, for SagaKit's PostgreSQL TLS tests and for trying sslmode locally.
#
#   scripts/postgres-tls.sh certs DIR        make a test CA and a server certificate for localhost/127.0.0.1 in DIR
#                                            (ca.pem, ca.key, server.pem, server.key; other-ca.pem, a CA that
#                                            signed nothing), with openssl
#   scripts/postgres-tls.sh start PORT DIR   create a fresh server (initdb) listening on 127.0.0.1 and 127.0.0.2:PORT
#                                            with ssl = on and DIR's server certificate; create the `sagakit` user
#                                            and database; wait until it answers
#   scripts/postgres-tls.sh ssl PORT on|off  turn TLS on or off (reload; new connections see it)
#   scripts/postgres-tls.sh stop PORT        stop it and remove its data
#   scripts/postgres-tls.sh url PORT         print postgres://sagakit:<password>@127.0.0.1:PORT/sagakit
#
# Like scripts/postgres.sh, the server runs as a plain process (as the `postgres` user when run as root), with its
# data under .local/postgres-tls/PORT (or /var/tmp/sagakit-pg-tls-PORT when the `postgres` user cannot reach the
# repository). Needs PostgreSQL (`scripts/postgres.sh start` installs it) and openssl. Private keys stay in DIR
# and the data directory (mode 0600); the password is only written to the URL file (mode 0600), never logged.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { echo "postgres-tls.sh: $*" >&2; }

bin_dir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

as_owner() {
    if [[ $(id -u) -eq 0 ]]; then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

resolve_base() {
    local port="$1"
    BASE="$ROOT/.local/postgres-tls/$port"
    if [[ $(id -u) -eq 0 ]]; then
        local dir="$ROOT/.local"
        while [[ ! -d "$dir" ]]; do dir=$(dirname "$dir"); done
        runuser -u postgres -- test -x "$dir" 2>/dev/null || BASE="/var/tmp/sagakit-pg-tls-$port"
    fi
    DATA="$BASE/data"
    RUN="$BASE/run"
    LOGFILE="$BASE/postgres.log"
    URLFILE="$BASE/url"
}

certs() {
    local dir="$1"
    "$ROOT/scripts/test-ca.sh" "$dir"
    chmod 755 "$dir"
    log "certificates in $dir"
}

psql_owner() {
    as_owner "$(bin_dir)/psql" -X -q -v ON_ERROR_STOP=1 -h "$RUN" -p "$PORT" -U postgres -d postgres "$@"
}

running() { [[ -f "$DATA/postmaster.pid" ]] && as_owner "$(bin_dir)/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

stop() {
    if [[ -n "$(bin_dir)" ]] && running; then
        as_owner "$(bin_dir)/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
        log "stopped the server on port $PORT"
    fi
    rm -rf "$BASE"
}

set_ssl() {
    local state="$1"
    [[ "$state" == on || "$state" == off ]] || { log "ssl takes on or off"; exit 2; }
    echo "ssl = $state" >"$DATA/sagakit-ssl.conf"
    [[ $(id -u) -eq 0 ]] && chown postgres:postgres "$DATA/sagakit-ssl.conf"
    as_owner "$(bin_dir)/pg_ctl" -D "$DATA" reload >/dev/null
    # The reload is a signal: wait until the server reports the new setting.
    for _ in $(seq 1 100); do
        [[ "$(psql_owner -tA -c 'SHOW ssl')" == "$state" ]] && { log "ssl = $state"; return 0; }
        sleep 0.1
    done
    log "the server did not take ssl = $state; see $LOGFILE"
    exit 1
}

start() {
    local dir
    dir="$(cd "$1" && pwd)"
    [[ -x "$(bin_dir)/initdb" ]] || { log "PostgreSQL is not installed (scripts/postgres.sh start installs it)"; exit 1; }
    stop # a fresh server each time: its certificates are DIR's
    mkdir -p "$DATA" "$RUN"
    chmod 700 "$BASE" "$DATA"
    [[ $(id -u) -eq 0 ]] && chown -R postgres:postgres "$BASE"
    as_owner "$(bin_dir)/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    install -m 0644 "$dir/server.pem" "$DATA/server.crt"
    install -m 0600 "$dir/server.key" "$DATA/server.key"
    [[ $(id -u) -eq 0 ]] && chown postgres:postgres "$DATA/server.crt" "$DATA/server.key"
    cat >>"$DATA/postgresql.conf" <<EOF
# SagaKit TLS test server (scripts/postgres-tls.sh)
listen_addresses = '127.0.0.1,127.0.0.2'
port = $PORT
unix_socket_directories = '$RUN'
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
include_if_exists = 'sagakit-ssl.conf'
EOF
    echo "ssl = on" >"$DATA/sagakit-ssl.conf"
    # 127.0.0.2 reaches the same server under an address the certificate does not name.
    echo "host all all 127.0.0.0/8 scram-sha-256" >>"$DATA/pg_hba.conf"
    [[ $(id -u) -eq 0 ]] && chown postgres:postgres "$DATA/sagakit-ssl.conf"
    touch "$LOGFILE"
    [[ $(id -u) -eq 0 ]] && chown postgres:postgres "$LOGFILE"
    log "starting on 127.0.0.1:$PORT and 127.0.0.2:$PORT with ssl = on (data in $BASE)"
    as_owner "$(bin_dir)/pg_ctl" -D "$DATA" -l "$LOGFILE" -w -t 60 start >/dev/null ||
        { log "the server did not start; see $LOGFILE"; tail -n 20 "$LOGFILE" >&2; exit 1; }
    local password
    password=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
    psql_owner -c "CREATE ROLE sagakit LOGIN PASSWORD '$password'"
    psql_owner -c "CREATE DATABASE sagakit OWNER sagakit"
    (umask 077 && echo "postgres://sagakit:$password@127.0.0.1:$PORT/sagakit" >"$URLFILE")
    log "ready on port $PORT"
}

cmd="${1:-}"
shift || true
case "$cmd" in
certs) certs "$1" ;;
start | ssl | stop | url)
    PORT="${1:?port}"
    resolve_base "$PORT"
    case "$cmd" in
    start) start "$2" ;;
    ssl) set_ssl "$2" ;;
    stop) stop ;;
    url) cat "$URLFILE" ;;
    esac
    ;;
*)
    echo "usage: $0 certs DIR | start PORT DIR | ssl PORT on|off | stop PORT | url PORT" >&2
    exit 2
    ;;
esac
