#!/usr/bin/env bash
# The whole test suite, as a user and CI run it (`make test`).
#
# Installs what is missing (apt-get), starts a local RabbitMQ and PostgreSQL on 127.0.0.1 unless
# AMQP_URL / POSTGRES_URL point elsewhere, builds once, runs every test once, and stops the
# servers it started. Integration tests never skip silently when CI is set: an unreachable
# server fails them.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { echo "test.sh: $*" >&2; }

# Build dependencies (headers and pkg-config files of the C libraries SagaKit links).
missing=()
command -v pkg-config >/dev/null || missing+=(pkg-config)
pkg-config --exists librabbitmq 2>/dev/null || missing+=(librabbitmq-dev)
pkg-config --exists sqlite3 2>/dev/null || missing+=(libsqlite3-dev)
if ((${#missing[@]})); then
    log "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

started=()
cleanup() {
    local status=$?
    for server in "${started[@]}"; do
        # Without the exported URLs: with them, the scripts take the server for someone else's
        # and leave it running.
        env -u AMQP_URL -u POSTGRES_URL "scripts/$server.sh" stop || true
    done
    exit $status
}
trap cleanup EXIT INT TERM

if [[ -z "${AMQP_URL:-}" ]]; then
    # Stop at the end only a broker this run started (not one that already answered).
    scripts/rabbitmq.sh status >/dev/null 2>&1 || started+=(rabbitmq)
    scripts/rabbitmq.sh start
    AMQP_URL="$(scripts/rabbitmq.sh url)"
fi
if [[ -z "${POSTGRES_URL:-}" ]]; then
    scripts/postgres.sh status >/dev/null 2>&1 || started+=(postgres)
    scripts/postgres.sh start
    POSTGRES_URL="$(scripts/postgres.sh url)"
fi
export AMQP_URL POSTGRES_URL
log "servers ready (AMQP_URL and POSTGRES_URL exported to the tests)"

log "building (first build compiles the dependencies: several minutes)"
swift build --build-tests "$@"
log "running the tests"
# Only Swift Testing is used; --disable-xctest avoids XCTest's empty "Executed 0 tests" summary.
# Two phases. First the suites that run in this process, in parallel. Then, one at a time, the
# suites that start servers or processes of their own (private brokers, a TLS broker, a cluster,
# a private PostgreSQL, participant processes killed mid-flow, hundreds of CLI runs): beside the
# others they starve the timing of delay-based tests on a small machine. Both phases are bounded,
# so a stuck test fails the run instead of hanging it.
own_processes="ClusterTests|BrokerLateTests|RabbitMQTLSTests|RabbitMQRecoveryTests|RabbitMQFaultTests|TransportFaultTests|DeadLetterFidelityTests"
own_processes+="|ParticipantFaultTests|CrashMatrixTests|StoreOutageTests|SecretLeakTests|OperatorStoredDefinitionTests|PostgresTLSTests|OperatorCLITests"
own_processes+="|PrometheusEndpointTests"  # the example services as processes, scraped over HTTP
own_processes+="|OperatorConnectionTests"  # counts the sessions of the test database
own_processes+="|GracefulStopTests"  # times a stopping instance's hand-back against its running steps
own_processes+="|ConsoleAccessTests"  # starts the saga tool and its console as processes
timeout --kill-after=30 2400 swift test --skip-build --disable-xctest --skip "$own_processes" "$@"
log "the suites that start servers or processes of their own, one at a time"
timeout --kill-after=30 2400 swift test --skip-build --disable-xctest --no-parallel --filter "$own_processes" "$@"
# The crash matrix again on PostgreSQL, whose commands carry a sealed copy of their saga (the
# SQLite store seals none): every crash point with the copies in use (about 15 seconds).
log "the crash-point matrix on PostgreSQL (commands carrying state copies)"
CRASH_MATRIX_STORE=postgres timeout --kill-after=30 600 swift test --skip-build --disable-xctest --filter CrashMatrixTests "$@"

# A user's package (Examples/TripSaga: its own Package.swift, SagaKit by path, public products only):
# its handler tests with SagaTesting, then its services as separate processes on the real broker.
log "the example package, as a user's package"
scripts/example-package.sh

# The choreography protocol's Promela model (Sources/SagaCore/StateMachine/Protocol/saga.pml):
# safety and progress hold, each deliberately broken variant fails (spin; about 2 minutes).
log "the protocol model, checked with spin"
scripts/model-check.sh

# The Prometheus alert rules (Docs/prometheus): promtool check rules and their unit tests.
log "the alert rules, checked with promtool"
scripts/check-alert-rules.sh

# The web console in headless Chromium against a seeded store on the real broker (screenshots in .build/console-screenshots).
log "the web console, in a browser"; scripts/console-test.sh
