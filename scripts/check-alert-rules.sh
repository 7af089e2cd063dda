#!/usr/bin/env bash
# Checks the Prometheus alert rules shipped in Docs/prometheus/ (CI runs it from scripts/test.sh):
#   promtool check rules   the file parses, every expression is valid PromQL, templates render;
#   promtool test rules    the unit tests in saga-alerts.test.yml: given these series, these
#                          alerts fire (with these labels and annotations) and those do not.
#
# Installs Debian's `prometheus` package (which ships promtool) when promtool is missing. The
# package's maintainer scripts would start a Prometheus server: a policy-rc.d that forbids it is
# put in place for the install when none exists (and removed afterwards).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RULES="$ROOT/Docs/prometheus/saga-alerts.rules.yml"
TESTS="$ROOT/Docs/prometheus/saga-alerts.test.yml"

log() { echo "check-alert-rules.sh: $*" >&2; }

if ! command -v promtool >/dev/null; then
    if [[ $(id -u) -ne 0 ]]; then
        log "promtool is missing: install Debian's prometheus package (sudo apt-get install prometheus) and run again"
        exit 1
    fi
    log "installing promtool (Debian package prometheus) with apt-get"
    policy=/usr/sbin/policy-rc.d
    placed=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\n# check-alert-rules.sh: no service starts during this install\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        placed=1
        trap '[[ $placed -eq 1 ]] && rm -f "$policy"' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # A service that starts anyway and fails must not fail the install: promtool is all we need.
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null || command -v promtool >/dev/null
fi

log "$(promtool --version 2>&1 | head -1)"
promtool check rules "$RULES"
(cd "$(dirname "$TESTS")" && promtool test rules "$(basename "$TESTS")")
log "alert rules OK"
