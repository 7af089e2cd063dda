#!/usr/bin/env bash
# Proves SagaKit as a user's package would use it: builds Examples/TripSaga (its own Package.swift,
# SagaKit by path, public products only), runs its handler tests with the SagaTesting product, then
# runs its three services as separate processes on the real broker with a SQLite store and starts
# trips from a fourth process; every trip must end as expected; then the package's own operator tool
# (trip-tool) must count, list, show and draw them.
#
# Needs AMQP_URL (scripts/test.sh exports it). Environment: TRIPS (default 40).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PACKAGE="$ROOT/Examples/TripSaga"
log() { echo "example-package.sh: $*" >&2; }

: "${AMQP_URL:?set AMQP_URL (scripts/rabbitmq.sh url)}"
WORK="$(mktemp -d /tmp/sagakit-trip.XXXXXX)"
pids=()
cleanup() {
    local status=$?
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if ((status != 0)); then
        for log in "$WORK"/*.log; do [[ -f $log ]] && { echo "--- $log"; tail -n 30 "$log"; }; done
    fi
    rm -rf "$WORK"
    exit $status
}
trap cleanup EXIT INT TERM

cd "$PACKAGE"
log "building the package (SagaKit by path)"
swift build --build-tests
log "running its handler tests (SagaTesting)"
swift test --skip-build --disable-xctest

BIN="$(swift build --show-bin-path)"
log "a service given a store URL it cannot use says so in one line and exits with status 1"
status=0
SAGAKIT_STORE_URL="postgres://app:s3cret-pw@127.0.0.1:1/x" "$BIN/trip-flight" >"$WORK/bad-url.out" 2>"$WORK/bad-url.err" || status=$?
if ((status != 1)) || ! grep -q "^trip-flight: .*is not a SQLite URL" "$WORK/bad-url.err" \
    || grep -q "s3cret-pw\|Fatal error" "$WORK/bad-url.err" "$WORK/bad-url.out"; then
    echo "example-package.sh: expected exit status 1 and one clean line without the password; got status $status:" >&2
    cat "$WORK/bad-url.err" >&2
    exit 1
fi

export SAGAKIT_STORE_URL="sqlite://$WORK/sagas.db"
export SAGAKIT_PREFIX="trip-$$"
export SAGAKIT_LOG_LEVEL=notice
for service in flight hotel payment; do
    "$BIN/trip-$service" >"$WORK/$service.log" 2>&1 &
    pids+=($!)
done
log "three services started (prefix $SAGAKIT_PREFIX); starting ${TRIPS:-40} trips"
TRIPS="${TRIPS:-40}" "$BIN/trip-starter" 2>"$WORK/starter.log" | tee "$WORK/starter.out"
grep -q " 0 wrong" "$WORK/starter.out"
log "every trip ended as expected"

log "the team's own operator tool (trip-tool: SagaOperator with the trip definition) reads the same store"
read -r trips completed compensated < <(sed -nE 's/^trip-starter: ([0-9]+) trips: ([0-9]+) completed, ([0-9]+) compensated.*/\1 \2 \3/p' "$WORK/starter.out")
"$BIN/trip-tool" definitions >"$WORK/definitions.out" 2>&1
# NAME VERSION HASH SAGAS BY STATUS …: the trips counted by status (statuses with none left out).
by_status="completed $completed"
((compensated == 0)) || by_status="compensated $compensated, $by_status"
if ! grep -Eq "^trip +1 +[0-9a-f]{8} +$trips +$by_status " "$WORK/definitions.out"; then
    echo "example-package.sh: trip-tool definitions does not count $trips trips ($completed completed, $compensated compensated):" >&2
    cat "$WORK/definitions.out" >&2
    exit 1
fi
"$BIN/trip-tool" list --status compensated --ids >"$WORK/compensated.ids"
if (($(wc -l <"$WORK/compensated.ids") != compensated)); then
    echo "example-package.sh: trip-tool list --status compensated --ids listed $(wc -l <"$WORK/compensated.ids"), expected $compensated" >&2
    exit 1
fi
"$BIN/trip-tool" show "$(head -n 1 "$WORK/compensated.ids")" >"$WORK/show.out"
grep -q "compensated" "$WORK/show.out" || { echo "example-package.sh: trip-tool show:" >&2; cat "$WORK/show.out" >&2; exit 1; }
"$BIN/trip-tool" graph trip | grep -q "flowchart" || { echo "example-package.sh: trip-tool graph trip drew no flowchart" >&2; exit 1; }
log "trip-tool: definitions, list, show and graph agree with the starter"
