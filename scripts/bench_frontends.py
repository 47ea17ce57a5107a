"""``scripts/bench_server.py --db postgresql://...``: add-batch throughput of one and of
two PostgreSQL frontends beside one SQLite frontend, in the same run, with CPU per
entry of the frontends and of the database (from /proc; the database must run on this
machine for its share to count: the server behind the URL and its child processes, not
other PostgreSQL servers on the machine).

Each configuration gets a fresh log (a new database ``potd_bench_<n>`` next to the one
in the URL, dropped afterwards; a new SQLite file) and the same number of pre-signed
statements: ``--batch-clients`` runs, each sent in order as ``--batches`` add-batch
requests spread over the clients; with two frontends, client ``i`` writes through
frontend ``i % 2``. Verification CPU per entry is measured in the same run: the
Ed25519 signature check alone, on one core (the one thing a frontend must do per
statement), so the report splits a frontend's CPU into verification and everything
else - parsing, canonical-form and field checks, admission, storage, replies, HTTP and
the event loop are all "not verification".

Why two frontends cost more each than one: a fourth configuration runs two frontends
with every client on the first (the second idle but following the tree), and for each
frontend the report gives its CPU per entry, its statements per integration round
(from /metrics) and its context switches per request (from /proc).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_server import make_runs, verify_cpu_us
from benchlib import cpu_seconds, http_request, run_load, start_potd, thread_cpu

from ledger.log import Log
from ledger.note import Signer
from ledger.storage import open_store


def postmaster_pid(url: str) -> int | None:
    """The pid of the PostgreSQL server behind ``url`` (the parent of a backend), or
    None when it does not run on this machine."""
    import psycopg
    with psycopg.connect(url, autocommit=True) as conn:  # the backend lives meanwhile
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        try:
            fields = Path(f"/proc/{row[0]}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, TypeError):
            return None
    return int(fields[1])


def postgres_pids(postmaster: int | None) -> list[int]:
    """The server process and its children (backends, writers): other PostgreSQL
    servers on the machine (other users' databases) are not counted."""
    if postmaster is None:
        return []
    out = [postmaster]
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                out.append(int(d))
    return out


def postgres_cpu(postmaster: int | None) -> dict[int, float]:
    return {p: cpu_seconds(p) for p in postgres_pids(postmaster)}


def start(db: str, key: Path, d: Path, n: int, stages: bool = False
          ) -> tuple[subprocess.Popen[bytes], int]:
    """Frontend ``n``; with ``stages`` under scripts/stage_clock.py (to d/stagesN.json)."""
    args = ["ledger", "serve", "--db", db, "--key", str(key), "--port", "0"]
    cmd = ([sys.executable, str(Path(__file__).parent / "stage_clock.py"),
            str(d / f"stages{n}.json"), *args] if stages else None)
    p, url = start_potd(args, d / f"server{n}.err", cmd=cmd)
    return p, int(url.rsplit(":", 1)[1])


def new_database(url: str, n: int) -> tuple[str, str]:
    import psycopg
    base, _, _ = url.rpartition("/")
    name = f"potd_bench_{os.getpid()}_{n}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    return f"{base}/{name}", name


def drop_database(url: str, name: str) -> None:
    import psycopg
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]


def switches(pid: int) -> int:
    """Voluntary and involuntary context switches of all of a process's threads."""
    return sum(v + i for _, _, v, i in thread_cpu(pid).values())


def rounds(port: int) -> tuple[float, float]:
    """``(statements, integration rounds)`` a frontend reports on /metrics so far."""
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    got = dict(re.findall(r"(?m)^potd_integration_batch_size_(sum|count) (\S+)$", text))
    return float(got.get("sum", 0)), float(got.get("count", 0))


def one(label: str, db: str, frontends: int, runs: list[list[bytes]], batch: int,
        seconds: float, d: Path, key: Signer, trainer: Signer, idle: bool = False,
        stages: bool = False) -> dict[str, Any]:
    """One configuration; ``idle``: every client on the first frontend; ``stages``: the
    frontends' CPU by write-path stage too (scripts/stage_clock.py)."""
    (d / "log.key").write_text(key.private_string())
    Log.create(db, key).store.close()
    store = open_store(db)
    store.ensure_indexes()
    store.set_signer_allowed(str(trainer.verifier), True)
    store.close()
    procs = [start(db, d / "log.key", d, k, stages) for k in range(frontends)]
    try:
        reqs = [[http_request("POST", "/add-batch", b"[" + b",".join(r[i:i + batch]) + b"]")
                 for i in range(0, len(r), batch)] for r in runs]
        fe0 = [cpu_seconds(p.pid) for p, _ in procs]
        sw0 = [switches(p.pid) for p, _ in procs]
        r0 = [rounds(port) for _, port in procs]
        postmaster = postmaster_pid(db) if "postgresql" in db else None
        pg0 = postgres_cpu(postmaster)
        res = run_load([port for _, port in procs][:1 if idle else None], reqs, seconds)
        fe = [cpu_seconds(p.pid) - c for (p, _), c in zip(procs, fe0, strict=True)]
        sw = [switches(p.pid) - c for (p, _), c in zip(procs, sw0, strict=True)]
        r1 = [rounds(port) for _, port in procs]
        pg1 = postgres_cpu(postmaster)
        pg = sum(c - pg0.get(p, 0.0) for p, c in pg1.items())
    finally:
        for p, _ in procs:
            p.terminate()
            p.wait(30)
    ok = res["statuses"].get(200, 0) * batch
    per_frontend = []
    for k in range(frontends):
        entries, n = r1[k][0] - r0[k][0], r1[k][1] - r0[k][1]
        reqs_k = max(1.0, entries / batch)
        per_frontend.append({"cpu_s": round(fe[k], 3), "entries": round(entries),
                             "per_round": round(entries / n) if n else 0,
                             "switches_per_request": round(sw[k] / reqs_k, 1)})
        f = d / f"stages{k}.json"
        if stages and f.exists() and entries:
            per_frontend[-1]["stages_us"] = {
                name: round(1e6 * v / entries, 2)
                for name, v in json.loads(f.read_text()).items()}
    return {"config": label, "entries": ok, "seconds": round(res["seconds"], 2),
            "per_s": round(ok / res["seconds"]), "statuses": res["statuses"],
            "frontend_cpu_us": round(1e6 * sum(fe) / max(ok, 1), 1),
            "db_cpu_us": round(1e6 * pg / max(ok, 1), 1) if "postgresql" in db else None,
            "frontends": per_frontend}


def compare(url: str, batch: int, batches: int, clients: int, seconds: float,
            stages: bool = False) -> None:
    trainer = Signer.generate("trainer.bench")
    key = Signer.generate("bench.example/log")
    per_client = -(-batches // clients)
    configs = [("SQLite, 1 frontend", None, 1, False), ("PostgreSQL, 1 frontend", 0, 1, False),
               ("PostgreSQL, 2 frontends", 1, 2, False),
               ("PostgreSQL, 2 frontends, 1 idle", 2, 2, True)]
    print(f"signing {len(configs)} x {clients} runs x {per_client * batch} statements ...",
          flush=True)
    all_runs = [make_runs(trainer, clients, per_client * batch - 1, 1000 * k)
                for k in range(len(configs))]
    verify_us, parse_us = verify_cpu_us([s for r in all_runs[0] for s in r][:5000])
    results = []
    with tempfile.TemporaryDirectory(prefix="potd-bench-") as tmp:
        for k, (label, n, frontends, idle) in enumerate(configs):
            d = Path(tmp, str(k))
            d.mkdir()
            if n is None:
                db, name = str(d / "log.db"), ""
            else:
                db, name = new_database(url, n)
            try:
                results.append(one(label, db, frontends, all_runs[k], batch, seconds, d, key,
                                   trainer, idle, stages))
            finally:
                if name:
                    drop_database(url, name)
            print(results[-1], flush=True)
    base = results[0]["per_s"]
    print(f"\n{'configuration':26} {'entries':>8} {'entries/s':>10} {'x SQLite':>9} "
          f"{'frontend CPU µs/entry':>22} {'of which not verify':>20} {'DB CPU µs/entry':>16}")
    for r in results:
        other = r["frontend_cpu_us"] - verify_us
        print(f"{r['config']:26} {r['entries']:>8} {r['per_s']:>10,} "
              f"{r['per_s'] / base:>9.2f} {r['frontend_cpu_us']:>22} "
              f"{other:>8.1f} ({100 * other / verify_us:.0f} %)  "
              f"{r['db_cpu_us'] if r['db_cpu_us'] is not None else '-':>16}")
    print("\nby frontend: CPU µs per entry it took (not verification), statements per "
          "integration round, context switches per request")
    for r in results:
        cells = []
        for f in r["frontends"]:
            if f["entries"]:
                us = 1e6 * f["cpu_s"] / f["entries"]
                cells.append(f"{us:.1f} ({us - verify_us:.1f}), {f['per_round']}/round, "
                             f"{f['switches_per_request']} sw/req")
                st = f.get("stages_us")
                if st:
                    cells[-1] += " [" + ", ".join(
                        f"{k.rsplit('.', 1)[-1]} {st[k]:.1f}" for k in
                        ("verify.ed25519", "parse", "flush", "flush.refresh",
                         "flush.admit.log_append.store", "flush.replies") if k in st) + "]"
            else:
                cells.append(f"idle: {f['cpu_s']:.2f} s CPU")
        print(f"  {r['config']:32} " + " | ".join(cells))
    print(f"\nbaseline, same run: Ed25519 check of one statement {verify_us:.1f} µs of CPU "
          f"(parsing it {parse_us:.1f} µs, counted as not verification)")
