#!/usr/bin/env bash
# Interleaved A/B of two SystemBenchmark builds (or one build with and without an option), the
# way the figures in Docs/Operations.md "Throughput" were measured: REPS repetitions, each runs A
# then B on a fresh database, one JSON line per run reduced to sagas/s, p50, CPU per step, the
# PostgreSQL transactions per saga and each process's peak resident set. Compare medians;
# identical runs spread by about ±8 %.
#
#   A=/old/SystemBenchmark B=.build/release/SystemBenchmark scripts/bench-ab.sh
#   A=.build/release/SystemBenchmark B=.build/release/SystemBenchmark B_ARGS="--handlers 32" \
#       scripts/bench-ab.sh
#
# Environment: PG_ADMIN_URL (a database to create and drop the scratch database from, default
# postgres://postgres@127.0.0.1:55433/postgres, the yardstick's server), AMQP_URL, C (50), M
# (2000), REPS (3), A_ARGS and B_ARGS (extra options of each side), PG_DATA (the server's data
# directory: with it each line also says the PostgreSQL server's CPU per saga).
set -euo pipefail

: "${A:?A=<SystemBenchmark binary>}" "${B:?B=<SystemBenchmark binary>}"
ADMIN="${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:55433/postgres}"
DB=ab_scratch
SCRATCH="${ADMIN%/*}/$DB"
C="${C:-50}" M="${M:-2000}" REPS="${REPS:-3}"
export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2F}"

for rep in $(seq 1 "$REPS"); do
    for side in A B; do
        bin=${!side}
        extra_name="${side}_ARGS"
        read -r -a extra <<<"${!extra_name:-}"
        psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DB" 2>/dev/null
        psql "$ADMIN" -qc "CREATE DATABASE $DB"
        before=$(psql "$ADMIN" -Atc "SELECT xact_commit FROM pg_stat_database WHERE datname = '$DB'")
        # The URL (with its password) in the environment: arguments show in the process list.
        line=$(POSTGRES_URL="$SCRATCH" "$bin" --store postgres --sagas "$M" --warmup 100 --concurrency "$C" \
            --local transaction --json ${PG_DATA:+--pg-data "$PG_DATA"} "${extra[@]}" 2>/dev/null | grep '^{' | tail -1 || true)
        after=$(psql "$ADMIN" -Atc "SELECT xact_commit FROM pg_stat_database WHERE datname = '$DB'")
        if [ -z "$line" ]; then
            echo "bench-ab: side $side ($bin) printed no result in repetition $rep; run it by hand to see why:" >&2
            echo "  POSTGRES_URL=<the scratch database's URL> $bin --store postgres --sagas $M --concurrency $C --local transaction ${extra[*]}" >&2
            exit 1
        fi
        echo "$line" | python3 -c '
import json, sys
d = json.load(sys.stdin)
rep, side, tx, m = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
steps = "/".join(str(v) for v in d.get("cpu_us_per_step", {}).values())
rate, p50, ok = d["sagas_per_s"], d["latency_ms"].get("p50"), d["verify"]["ok"]
cores = d.get("cpu_cores", {})
per_saga = ", ".join(f"{k} {cores[k] * 1e6 / rate:.0f}" for k in ("broker", "postgres", "driver") if cores.get(k) is not None)
rss = "/".join(f"{v:.1f}" for v in d.get("peak_rss_mb", {}).values())
print(f"rep {rep} {side}: {rate:.1f} sagas/s, p50 {p50} ms, CPU us/step {steps}, "
      f"{tx / (m + 100):.2f} PostgreSQL tx/saga, CPU us/saga {per_saga}, peak RSS MB {rss}, verify {ok}")
' "$rep" "$side" "$((after - before))" "$M"
    done
done
psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DB" 2>/dev/null
