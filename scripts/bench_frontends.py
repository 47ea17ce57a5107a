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
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench_server import make_runs, verify_cpu_us
from benchlib import cpu_seconds, http_request, run_load, start_potd

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


def start(db: str, key: Path, d: Path, n: int) -> tuple[subprocess.Popen[bytes], int]:
    p, url = start_potd(["ledger", "serve", "--db", db, "--key", str(key), "--port", "0"],
                        d / f"server{n}.err")
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


def one(label: str, db: str, frontends: int, runs: list[list[bytes]], batch: int,
        seconds: float, d: Path, key: Signer, trainer: Signer) -> dict[str, Any]:
    (d / "log.key").write_text(key.private_string())
    Log.create(db, key).store.close()
    store = open_store(db)
    store.ensure_indexes()
    store.set_signer_allowed(str(trainer.verifier), True)
    store.close()
    procs = [start(db, d / "log.key", d, k) for k in range(frontends)]
    try:
        reqs = [[http_request("POST", "/add-batch", b"[" + b",".join(r[i:i + batch]) + b"]")
                 for i in range(0, len(r), batch)] for r in runs]
        fe0 = [cpu_seconds(p.pid) for p, _ in procs]
        postmaster = postmaster_pid(db) if "postgresql" in db else None
        pg0 = postgres_cpu(postmaster)
        res = run_load([port for _, port in procs], reqs, seconds)
        fe = sum(cpu_seconds(p.pid) - c for (p, _), c in zip(procs, fe0, strict=True))
        pg1 = postgres_cpu(postmaster)
        pg = sum(c - pg0.get(p, 0.0) for p, c in pg1.items())
    finally:
        for p, _ in procs:
            p.terminate()
            p.wait(30)
    ok = res["statuses"].get(200, 0) * batch
    return {"config": label, "entries": ok, "seconds": round(res["seconds"], 2),
            "per_s": round(ok / res["seconds"]), "statuses": res["statuses"],
            "frontend_cpu_us": round(1e6 * fe / max(ok, 1), 1),
            "db_cpu_us": round(1e6 * pg / max(ok, 1), 1) if "postgresql" in db else None}


def compare(url: str, batch: int, batches: int, clients: int, seconds: float) -> None:
    trainer = Signer.generate("trainer.bench")
    key = Signer.generate("bench.example/log")
    per_client = -(-batches // clients)
    configs = [("SQLite, 1 frontend", None, 1), ("PostgreSQL, 1 frontend", 0, 1),
               ("PostgreSQL, 2 frontends", 1, 2)]
    print(f"signing {len(configs)} x {clients} runs x {per_client * batch} statements ...",
          flush=True)
    all_runs = [make_runs(trainer, clients, per_client * batch - 1, 1000 * k)
                for k in range(len(configs))]
    verify_us, parse_us = verify_cpu_us([s for r in all_runs[0] for s in r][:5000])
    results = []
    with tempfile.TemporaryDirectory(prefix="potd-bench-") as tmp:
        for k, (label, n, frontends) in enumerate(configs):
            d = Path(tmp, str(k))
            d.mkdir()
            if n is None:
                db, name = str(d / "log.db"), ""
            else:
                db, name = new_database(url, n)
            try:
                results.append(one(label, db, frontends, all_runs[k], batch, seconds, d, key,
                                   trainer))
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
    print(f"\nbaseline, same run: Ed25519 check of one statement {verify_us:.1f} µs of CPU "
          f"(parsing it {parse_us:.1f} µs, counted as not verification)")
