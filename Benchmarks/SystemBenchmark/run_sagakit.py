"""Slot B of the yardstick for SagaKit (see ../README.md, "Slotting in the Swift framework").

Adapted for issue 13 (a copy lives in SagaKit's Benchmarks/SystemBenchmark/run_sagakit.py): the
default rows are SAGAKIT_LABELS=system,inproc; SAGAKIT_BIN points at the release binaries (default
$SAGAKIT_DIR/.build/release); SAGAKIT_LOCAL=transaction|separate|none picks SystemBenchmark's --local.

  sagakit-system  Benchmarks/SystemBenchmark: the peer's shape (3 participant processes + starter,
                  fail at step 3 -> 2 compensations, one local UPDATE per step in the saga's own
                  transaction via LocalWrite, PostgreSQL store, terminal lifecycle event observed).
                  It prints the yardstick's JSON itself (--json), CPU cores per group included.
  sagakit-system-jemalloc  sagakit-system with every process on jemalloc instead of glibc's malloc
                  (LD_PRELOAD of Debian's libjemalloc2, a deployment choice; label system-je).

Older labels, appended as JSON lines with run_peer.py's fields:

  sagakit-demo    the project's own multi-process example system (inventory, payment, shipping
                  and order services as separate processes; each service keeps its local data in
                  its own SQLite file; saga state in PostgreSQL). This is the like-for-like row:
                  3 participant processes + a starter, a local write per step, durable queues,
                  persistent messages, confirms. Failure variant: the demo declines at step 2
                  (payment) instead of step 3, so a failed saga runs 1 compensation, not 2.
  sagakit-inproc  the project's SagaBenchmark: the three participants and the starter in ONE
                  process, handlers with no local work. An upper bound, not like-for-like.

Usage (same CLI as run_peer.py):
  SAGAKIT_DIR=/path/to/checkout python3 run_sagakit.py --M 2000 --m-for-c1 500 --runs 1 \
      --first-run 1 --configs 1:0,50:0,200:0,50:20 --sync-commit on --out results.jsonl
Needs a release build in $SAGAKIT_DIR (swift build -c release), the bench vhost and the bench
PostgreSQL (run.sh sets both up). SAGAKIT_LABELS=demo,inproc picks the rows.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "peer-python"))


def load1() -> float:
    return float(open("/proc/loadavg").read().split()[0])


def pg_url(db: str) -> str:
    return f"postgres://postgres@127.0.0.1:{os.environ.get('PG_PORT', '55433')}/{db}"


def ensure_db(db: str) -> None:
    pg_bin = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")
    port = os.environ.get("PG_PORT", "55433")
    q = subprocess.run([f"{pg_bin}/psql", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "-Atqc",
                        f"select 1 from pg_database where datname='{db}'", "postgres"],
                       capture_output=True, text=True)
    if "1" not in q.stdout:
        subprocess.run([f"{pg_bin}/createdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", db], check=True)


def reset_db(db: str) -> None:
    pg_bin = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")
    port = os.environ.get("PG_PORT", "55433")
    subprocess.run([f"{pg_bin}/dropdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "--if-exists", "--force", db],
                   capture_output=True)
    ensure_db(db)


def run_demo(binpath: str, amqp: str, m: int, c: int, fail: float, run: int, sync: str) -> dict:
    db = "bench_sagakit_demo"
    reset_db(db)
    data = "/tmp/bench-sagakit-demo"
    shutil.rmtree(data, ignore_errors=True)
    os.makedirs(data, exist_ok=True)
    env = dict(os.environ)
    env.update({"AMQP_URL": amqp, "SAGAKIT_STORE_URL": pg_url(db), "SAGAKIT_DATA_DIR": data, "NO_COLOR": "1"})
    argv = [os.path.join(binpath, "sagakit-demo"), "--sagas", str(m), "--concurrency", str(c),
            "--decline-rate", str(fail / 100.0), "--cancel-rate", "0", "--shipping-failure-rate", "0"]
    t0 = time.time()
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    wall = time.time() - t0
    out = {"bench": "sagakit-demo", "run": run, "M": m, "C": c, "fail_pct": fail, "sync_commit": sync,
           "store": "postgres", "local_data": "sqlite-per-service", "wall_incl_startup_s": round(wall, 1)}
    reports = sorted(glob.glob(os.path.join(data, "report-*.json")))
    if r.returncode != 0 or not reports:
        out.update({"error": f"demo rc={r.returncode}", "tail": (r.stdout + r.stderr)[-1500:],
                    "sagas_per_s": 0.0, "latency_ms": {}, "verify": {"ok": False}})
        return out
    st = json.load(open(reports[-1]))["statistics"]
    ok = "All invariants hold." in r.stdout
    out.update({
        "secs": round(st["seconds"], 3),
        "sagas_per_s": round(st["throughput"], 1),
        "latency_ms": {"n": st["completed"] + st["compensated"], "p50": round(st["p50"] * 1000, 2),
                       "p99": round(st["p99"] * 1000, 2), "max": round(st["max"] * 1000, 2)},
        "outcomes": {"completed": st["completed"], "compensated": st["compensated"],
                     "needs_attention": st["needsAttention"], "unfinished": st["unfinished"]},
        "verify": {"ok": ok and st["unfinished"] == 0 and st["needsAttention"] == 0},
        "load1": load1(),
    })
    return out


JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"


def run_system_je(binpath: str, amqp: str, m: int, c: int, fail: float, run: int, sync: str) -> dict:
    """run_system with jemalloc preloaded into every process (apt-get install libjemalloc2)."""
    if not os.path.exists(JEMALLOC):
        return {"bench": "sagakit-system-jemalloc", "run": run, "M": m, "C": c, "fail_pct": fail,
                "sync_commit": sync, "error": f"{JEMALLOC} is missing (apt-get install libjemalloc2)",
                "sagas_per_s": 0.0, "latency_ms": {}, "verify": {"ok": False}}
    return run_system(binpath, amqp, m, c, fail, run, sync, label="sagakit-system-jemalloc",
                      extra_env={"LD_PRELOAD": JEMALLOC})


def run_system(binpath: str, amqp: str, m: int, c: int, fail: float, run: int, sync: str,
               label: str = "", extra_env: dict | None = None) -> dict:
    """SystemBenchmark (issue 13): 3 participant processes + starter, local write per step in the
    saga's transaction (LocalWrite), PostgreSQL store, terminal lifecycle event observed."""
    db = "bench_sagakit_system"
    reset_db(db)
    env = dict(os.environ)
    # URLs in the environment, not in argv (the process list shows argv to every user).
    env.update({"AMQP_URL": amqp, "POSTGRES_URL": pg_url(db)})
    env.update(extra_env or {})
    argv = [os.path.join(binpath, "SystemBenchmark"), "--store", "postgres",
            "--sagas", str(m), "--warmup", "100", "--concurrency", str(c), "--fail-pct", str(fail),
            "--run", str(run), "--sync-commit", sync, "--json",
            "--local", os.environ.get("SAGAKIT_LOCAL", "transaction")]
    label = label or os.environ.get("SAGAKIT_SYSTEM_LABEL", "sagakit-system")
    argv += ["--label", label]
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    if r.returncode != 0 or not lines:
        return {"bench": label, "run": run, "M": m, "C": c, "fail_pct": fail, "sync_commit": sync,
                "error": f"rc={r.returncode}", "tail": (r.stdout + r.stderr)[-1500:], "sagas_per_s": 0.0,
                "latency_ms": {}, "verify": {"ok": False}}
    return json.loads(lines[-1])


ROW = re.compile(r"^\s*(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)/(\d+)/(\d+)\s*$")


def run_inproc(binpath: str, amqp: str, m: int, c: int, fail: float, run: int, sync: str) -> dict:
    db = "bench_sagakit_inproc"
    reset_db(db)
    env = dict(os.environ)
    env.update({"AMQP_URL": amqp, "POSTGRES_URL": pg_url(db)})
    argv = [os.path.join(binpath, "SagaBenchmark"), "--store", "postgres", "--sagas", str(m),
            "--concurrency", str(c), "--failure-rate", str(fail / 100.0)]
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    out = {"bench": "sagakit-inproc", "run": run, "M": m, "C": c, "fail_pct": fail, "sync_commit": sync,
           "store": "postgres"}
    rows = [ROW.match(l) for l in r.stdout.splitlines()]
    rows = [x for x in rows if x]
    if r.returncode != 0 or not rows:
        out.update({"error": f"rc={r.returncode}", "tail": (r.stdout + r.stderr)[-1500:], "sagas_per_s": 0.0,
                    "latency_ms": {}, "verify": {"ok": False}})
        return out
    g = rows[-1]
    done, comp, other = int(g.group(6)), int(g.group(7)), int(g.group(8))
    out.update({"sagas_per_s": float(g.group(2)),
                "latency_ms": {"p50": float(g.group(3)), "p99": float(g.group(4))},
                "cpu_us_per_step": float(g.group(5)),
                "outcomes": {"completed": done, "compensated": comp, "other": other},
                "verify": {"ok": other == 0 and done + comp == m}, "load1": load1()})
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--M", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--first-run", type=int, default=1)
    ap.add_argument("--configs", default="1:0,50:0,200:0,50:20")
    ap.add_argument("--sync-commit", default="on")
    ap.add_argument("--m-for-c1", type=int, default=0)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    if a.sync_commit != "on":
        print("run_sagakit: only synchronous_commit=on is measured (SagaKit's store sets no session option)",
              file=sys.stderr)
        return 0
    binpath = os.environ.get("SAGAKIT_BIN") or os.path.join(os.environ["SAGAKIT_DIR"], ".build", "release")
    amqp = os.environ["AMQP_URL"]
    labels = os.environ.get("SAGAKIT_LABELS", "system,inproc").split(",")
    configs = [(int(x.split(":")[0]), float(x.split(":")[1])) for x in a.configs.split(",")]
    rc = 0
    with open(a.out, "a") if a.out else sys.stdout as f:
        for run in range(a.first_run, a.first_run + a.runs):
            for c, fail in configs:
                m = a.m_for_c1 if (c == 1 and a.m_for_c1) else a.M
                for label in labels:
                    fn = {"demo": run_demo, "inproc": run_inproc, "system": run_system,
                          "system-je": run_system_je}[label]
                    res = fn(binpath, amqp, m, c, fail, run, a.sync_commit)
                    if not res["verify"].get("ok"):
                        rc = 1
                    f.write(json.dumps(res) + "\n")
                    f.flush()
                    print(json.dumps(res), file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
