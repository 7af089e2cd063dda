#!/usr/bin/env bash
# Proves SagaKit as a user's package would use it: builds Examples/TripSaga (its own Package.swift,
# SagaKit by path, public products only), runs its handler tests with the SagaTesting product, then
# runs its three services as separate processes on the real broker with a SQLite store and starts
# trips from a fourth process; every trip must end as expected.
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
