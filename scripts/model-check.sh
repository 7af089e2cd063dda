#!/usr/bin/env bash
# Checks the choreography protocol's Promela model with spin
# (Sources/SagaCore/StateMachine/Protocol/saga.pml; what it proves: Docs/Guarantees.md,
# "The protocol model").
#
# Also checks parallel.pml, the protocol of a parallel group (SagaStateMachine+Parallel.swift).
#
# The correct model must pass every safety and progress check; each deliberately broken variant
# must FAIL its check (so the checks can fail); the known gap (-DCHECK_NO_LEAK) must fail too until
# the protocol closes it. Prints a table and exits non-zero on any unexpected result.
#
# Installs spin and gcc with apt-get when missing. Works in a temporary directory. Exhaustive
# searches (-DCOLLAPSE only compresses states; no bitstate), two at a time (MODEL_CHECK_JOBS);
# about 70 s on 2 idle cores. MODEL_CHECK_PIVOTS=1 also checks the pivot on the first and the last
# step.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROTOCOL="$ROOT/Sources/SagaCore/StateMachine/Protocol"

log() { echo "model-check.sh: $*" >&2; }

if ! command -v spin >/dev/null || ! command -v gcc >/dev/null; then
    log "installing spin and gcc with apt-get"
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends spin gcc >/dev/null
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/sagakit-model.XXXXXX")"
keep=false   # an unexpected result keeps the directory (pan.log, the trail) for a look
trap '$keep || rm -rf "$work"' EXIT
cp "$PROTOCOL/saga.pml" "$PROTOCOL/parallel.pml" "$work/"
cd "$work"

# Bounds of the scenarios (see the #defines in saga.pml).
CRASHES=(-DMAXCRASH=2 -DMAXFAIL=1 -DMAXDUP=1 -DREAPS=1)   # crashes and duplicates
FAILURES=(-DMAXCRASH=1 -DMAXFAIL=2 -DMAXDUP=0 -DREAPS=1)  # retries, then compensation
PROGRESS=(-DMAXCRASH=1 -DMAXFAIL=1 -DMAXDUP=0 -DREAPS=1)  # progress with the reaper
ALONE=(-DMAXCRASH=1 -DMAXFAIL=1 -DMAXDUP=1 -DNO_REAPER)   # progress without it

JOBS="${MODEL_CHECK_JOBS:-2}"   # searches at once (one core each)
model=saga.pml                   # the model the next checks search
runs=0

# check <property> <variant label> <expect> <safety|progress> <spin -D flags...>
# <expect> is pass, or fail=<text the first violation must contain> (so that a variant fails for
# the reason it was built for, not another). Starts the search in the background (at most $JOBS at once); its table row goes to runN/row.
check() {
    while (($(jobs -rp | wc -l) >= JOBS)); do wait -n || true; done
    runs=$((runs + 1))
    run_one "run$runs" "$@" &
}

run_one() {
    local dir=$1 property=$2 label=$3 expect=$4 mode=$5 reason=""
    shift 5
    if [[ $expect == fail=* ]]; then
        reason=${expect#fail=}
        expect=fail
    fi
    local defines=("$@")
    mkdir "$dir"
    cp "$model" "$dir/"
    local out result states seconds violation=""
    # Expected failures stop at the first counterexample: an unoptimised build is quicker.
    local opt=-O2
    [[ $expect == fail ]] && opt=-O0
    (
        cd "$dir"
        spin -a "${defines[@]}" "$model" >spin.log 2>&1
        if [[ $mode == safety ]]; then
            gcc "$opt" -DSAFETY -DNOCLAIM -DCOLLAPSE -DMEMLIM=4000 -o pan pan.c 2>gcc.log
            ./pan -m200000 -w24 >pan.log 2>&1 || true
        else
            gcc "$opt" -DCOLLAPSE -DNFAIR=3 -DMEMLIM=4000 -o pan pan.c 2>gcc.log
            ./pan -m200000 -w24 -a -f >pan.log 2>&1 || true
        fi
    ) || {
        log "building the verifier for '$label' failed:"
        cat "$dir"/spin.log "$dir"/gcc.log >&2 || true
        echo "$property|$label|$expect|error|-|-|spin or gcc failed" >"$dir/row"
        return
    }
    out="$dir/pan.log"
    states=$(grep -Eo '^ *[0-9.e+]+ states, stored' "$out" | grep -Eo '[0-9.e+]+' | head -1 || true)
    seconds=$(grep -Eo 'elapsed time [0-9.e+]+' "$out" | grep -Eo '[0-9.e+]+$' | head -1 || true)
    if grep -q 'errors: 0' "$out" && ! grep -Eq 'reached -DMEMLIM|max search depth too small' "$out"; then
        result=pass
    elif grep -Eq 'errors: [1-9]' "$out"; then
        result=fail
        violation=$(grep -Em1 'pan:1:|assertion violated|acceptance cycle' "$out" | sed 's/^pan:1: //' || true)
    else
        result=incomplete
        violation="search incomplete (memory or depth bound)"
    fi
    if [[ $result == fail && -n $reason && $violation != *"$reason"* ]]; then
        result="fail, other"
    fi
    if [[ $result != "$expect" ]]; then
        log "UNEXPECTED: $property / $label: expected $expect, got $result"
        tail -25 "$out" >&2
    fi
    echo "$property|$label|$expect|$result|${states:--}|${seconds:--}|$violation" >"$dir/row"
}

log "checking the protocol model in $work"
check "safety (crashes, duplicates)" "correct" pass safety "${CRASHES[@]}"
check "safety (failures, compensation)" "correct" pass safety "${FAILURES[@]}"
check "progress: every saga ends" "correct, with the reaper" pass progress "${PROGRESS[@]}"
check "progress: every saga ends" "correct, no reaper" pass progress "${ALONE[@]}"
check "safety (crashes, duplicates)" "BROKEN_NO_CAS" fail='!(actDone[k])' safety "${CRASHES[@]}" -DBROKEN_NO_CAS
check "safety (crashes, duplicates)" "BROKEN_NO_IDEMPOTENCY" fail='(actApplied[k]<=1)' safety "${CRASHES[@]}" -DBROKEN_NO_IDEMPOTENCY
check "safety (crashes, duplicates)" "BROKEN_UNDO_ON_ANY_DISCARD" fail='(live[mj]&&' safety "${CRASHES[@]}" -DBROKEN_UNDO_ON_ANY_DISCARD
check "progress: every saga ends" "BROKEN_ACK_BEFORE_COMMIT, no reaper" fail='acceptance cycle' progress "${ALONE[@]}" -DBROKEN_ACK_BEFORE_COMMIT
check "progress: every saga ends" "BROKEN_NO_RELAY, no reaper" fail='acceptance cycle' progress "${ALONE[@]}" -DBROKEN_NO_RELAY
check "no effect left after compensation" "correct (known gap)" fail='!(live[mj])' safety "${FAILURES[@]}" -DCHECK_NO_LEAK
if [[ ${MODEL_CHECK_PIVOTS:-0} == 1 ]]; then
    # The pivot moved to the first and to the last step (about a minute each).
    check "safety (failures, compensation)" "correct, PIVOT=1" pass safety "${FAILURES[@]}" -DPIVOT=1
    check "safety (failures, compensation)" "correct, PIVOT=3" pass safety "${FAILURES[@]}" -DPIVOT=3
fi
# parallel.pml: a parallel group as implemented (a failing group waits for its running members,
# then compensates the completed ones one at a time, newest first).
model=parallel.pml
check "parallel group, safety" "group waits for running members" pass safety
check "parallel group, progress" "group waits for running members" pass progress
check "parallel group, safety" "BROKEN_COMPENSATE_AT_ONCE" fail='!(live[1])' safety -DBROKEN_COMPENSATE_AT_ONCE

wait
printf '\n%-36s %-38s %-8s %-10s %12s %8s  %s\n' property variant expected result states seconds "first violation"
unexpected=0
elapsed=$SECONDS
for ((i = 1; i <= runs; i++)); do
    IFS='|' read -r property label expect result states seconds violation <"run$i/row" ||
        { property="run $i"; result=missing; expect=pass; }
    [[ $result == "$expect" ]] || unexpected=$((unexpected + 1))
    printf '%-36s %-38s %-8s %-10s %12s %8s  %s\n' "$property" "$label" "$expect" "$result" "$states" "$seconds" "$violation"
done
echo
if ((unexpected)); then
    keep=true
    log "$unexpected unexpected result(s); the runs (pan.log, the .trail) are kept in $work"
    exit 1
fi
log "all $runs checks as expected (${elapsed} s)"
