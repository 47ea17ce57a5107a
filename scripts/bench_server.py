#!/usr/bin/env python3
"""Log server load benchmark (loopback only, bounded in count and time; not a test).

Starts ``potd ledger serve`` on a free 127.0.0.1 port with a fresh SQLite log, then
measures, each phase bounded by a statement count and a time limit:

  add        C concurrent clients (default 64), each appending its own run statement
             by statement with ``POST /add`` (keep-alive, one request in flight each)
  add-batch  a few clients sending ``POST /add-batch`` of B statements (default 1,000)
  proof      C clients asking ``GET /proof/inclusion`` for random indexes
  tile       C clients fetching random full hash tiles and entry bundles

With ``--db postgresql://...`` it compares add-batch of one SQLite frontend, one and
two PostgreSQL frontends instead (scripts/bench_frontends.py).

and, in the same run, the baselines: the raw library rate (``Log.append`` of the same
statement bytes in batches of the sizes the server saw) and the per-statement cost of
parsing and verifying a statement (Ed25519), which bounds any signed write path.

Statements are signed before the clock starts; the load generator is a separate
process speaking plain HTTP/1.1 over asyncio streams, so the server and the generator
each get one of the machine's cores.

    .venv/bin/python scripts/bench_server.py              # the defaults below
    .venv/bin/python scripts/bench_server.py --quick      # a few seconds per phase
    .venv/bin/python scripts/bench_server.py --phases batch --stages  # CPU by stage

The add-batch phase also reports the server's CPU per entry (/proc), split into
verification - the Ed25519 check alone, measured on one core in the same run - and
everything else (parsing, admission, storage, replies, HTTP), and with ``--stages``
that CPU by write-path stage (scripts/stage_clock.py).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import (  # noqa: E402
    cpu_seconds,
    http_request,
    load_avg,
    pct,
    pin_process,
    run_load,
    start_potd,
    thread_cpu,
)

from ledger.log import Log  # noqa: E402
from ledger.merkle import leaf_hash  # noqa: E402
from ledger.note import Signer  # noqa: E402
from ledger.statement import (  # noqa: E402
    build_statement,
    parse_statement,
    run_id,
    verify_statement_signature,
)
from ledger.storage import SQLiteStore  # noqa: E402

# --- statements -----------------------------------------------------------------------


def make_run(trainer: Signer, tag: int, steps: int) -> list[bytes]:
    """A run.open and ``steps`` steps, chained, with prover-like bodies (~600 bytes)."""
    body = {"seed_commitment": os.urandom(32).hex(),
            "dataset": {"root": os.urandom(32).hex(), "size": 60000, "example_hash": "v1"},
            "recipe": {"name": "bench", "code_hash": os.urandom(32).hex(), "config": {}},
            "weights_hash": "blake3", "tag": tag}
    rid = run_id(body)
    out = [build_statement("run.open", rid, 0, body, trainer)]
    prev = leaf_hash(out[0]).hex()
    for t in range(steps):
        st = build_statement("step", rid, t + 1, {
            "step": t, "epoch": 0, "batch_root": os.urandom(32).hex(), "batch_size": 64,
            "loss": "2.302585", "lr": "0.001", "weights": os.urandom(32).hex(), "prev": prev,
        }, trainer)
        prev = leaf_hash(st).hex()
        out.append(st)
    return out


def _make_runs_worker(args: tuple[str, int, int]) -> list[bytes]:
    skey, tag, steps = args
    return make_run(Signer.parse(skey), tag, steps)


def make_runs(trainer: Signer, count: int, steps: int, tag0: int) -> list[list[bytes]]:
    with mp.Pool(2) as pool:
        return pool.map(_make_runs_worker, [(trainer.private_string(), tag0 + i, steps)
                                            for i in range(count)])


# --- the load generator (runs in a child process) ----------------------------------------

def post(path: str, body: bytes) -> bytes:
    return http_request("POST", path, body)


def get(path: str) -> bytes:
    return http_request("GET", path)


# --- reporting ----------------------------------------------------------------------------

def summarize(name: str, res: dict[str, Any], per_request: int = 1) -> dict[str, Any]:
    ok = res["statuses"].get(200, 0)
    lat = res["latencies"]
    return {"phase": name, "requests": len(lat), "ok": ok, "statuses": res["statuses"],
            "seconds": round(res["seconds"], 2),
            "per_s": round(ok * per_request / res["seconds"]),
            "req_per_s": round(len(lat) / res["seconds"]),
            "p50_ms": round(statistics.median(lat) * 1000, 2) if lat else None,
            "p99_ms": round(pct(lat, 99) * 1000, 2) if lat else None}


# --- baselines ----------------------------------------------------------------------------

def library_rate(path: str, statements: list[bytes], batch: int) -> float:
    log = Log.create(path, Signer.generate("bench.example/baseline"))
    t = time.perf_counter()
    for i in range(0, len(statements), batch):
        log.append(statements[i:i + batch])
    dt = time.perf_counter() - t
    log.store.close()
    return len(statements) / dt


def verify_rate(statements: list[bytes]) -> float:
    t = time.perf_counter()
    for raw in statements:
        verify_statement_signature(parse_statement(raw))
    return len(statements) / (time.perf_counter() - t)


def verify_cpu_us(statements: list[bytes], rounds: int = 3) -> tuple[float, float]:
    """CPU time per statement (not wall time: the machine may be shared), the median of
    ``rounds`` passes, of (1) the Ed25519 signature check alone, by the implementation
    the server uses (ledger/_fastpath.c's libsodium call if built, else PyNaCl) - the one
    thing a frontend must do per statement, the "verification" of the split - and (2)
    parsing it (canonical form, field checks), which counts as overhead."""
    native, pynacl, parse = ed25519_cpu_us(statements, rounds)
    return native if native is not None else pynacl, parse


def ed25519_cpu_us(statements: list[bytes], rounds: int = 3
                   ) -> tuple[float | None, float, float]:
    """``(native Ed25519 µs or None, PyNaCl Ed25519 µs, parsing µs)`` per statement, in
    thread CPU time (medians of ``rounds``). The native figure is one call over all the
    statements (the message assembly in C included); PyNaCl's is its verify() alone."""
    import nacl.signing

    from ledger import statement_native
    from ledger.note import Verifier
    parsed = [parse_statement(raw) for raw in statements]
    keys = {st.signer: nacl.signing.VerifyKey(Verifier.parse(st.signer).public_key)
            for st in parsed}
    work = [(keys[st.signer], st.signing_message(), st.sig) for st in parsed]
    native: list[float] = []
    verify, parse = [], []
    for _ in range(rounds):
        t = time.thread_time()
        for key, msg, sig in work:
            key.verify(msg, sig)
        verify.append(1e6 * (time.thread_time() - t) / len(work))
        if statement_native.available():
            t = time.thread_time()
            assert statement_native.first_bad_signature(parsed) == len(parsed)
            native.append(1e6 * (time.thread_time() - t) / len(parsed))
        t = time.thread_time()
        for raw in statements:
            parse_statement(raw, lazy=True)  # as the server's write path parses
        parse.append(1e6 * (time.thread_time() - t) / len(statements))
    return (statistics.median(native) if native else None, statistics.median(verify),
            statistics.median(parse))


def cpu_split(cpu_s: float, entries: int, verify_us: float) -> str:
    """``frontend CPU µs/entry; not verification µs (% of verification)``."""
    per = 1e6 * cpu_s / max(entries, 1)
    other = per - verify_us
    return (f"{per:.1f} µs/entry, of which not verification {other:.1f} "
            f"({100 * other / verify_us:.0f} % of the {verify_us:.1f} µs Ed25519 check)")


# --- the server ---------------------------------------------------------------------------

def start_server(d: str, extra: list[str], stages: str | None = None
                 ) -> tuple[subprocess.Popen[bytes], int, Signer]:
    key = Signer.generate("bench.example/log")
    Path(d, "log.key").write_text(key.private_string())
    Log.create(os.path.join(d, "log.db"), key).store.close()
    trainer = Signer.generate("trainer.bench")
    store = SQLiteStore(os.path.join(d, "log.db"))
    store.ensure_indexes()
    store.set_signer_allowed(str(trainer.verifier), True)
    store.close()
    args = ["ledger", "serve", "--db", os.path.join(d, "log.db"), "--key",
            os.path.join(d, "log.key"), "--port", "0", *extra]
    cmd = (None if stages is None else
           [sys.executable, str(ROOT / "scripts" / "stage_clock.py"), stages, *args])
    p, url = start_potd(args, Path(d, "server.err"), cmd=cmd)
    return p, int(url.rsplit(":", 1)[1]), trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=64, help="concurrent clients (default 64)")
    ap.add_argument("--adds", type=int, default=60_000,
                    help="single adds in total, at most (default 60,000)")
    ap.add_argument("--batch", type=int, default=1000, help="add-batch size (default 1000)")
    ap.add_argument("--batches", type=int, default=60, help="add-batch requests (default 60)")
    ap.add_argument("--batch-clients", type=int, default=4,
                    help="concurrent add-batch clients (default 4)")
    ap.add_argument("--reads", type=int, default=60_000,
                    help="proof and tile requests per phase, at most (default 60,000)")
    ap.add_argument("--seconds", type=float, default=20, help="time limit per phase (default 20)")
    ap.add_argument("--quick", action="store_true", help="small counts, 5 s per phase")
    ap.add_argument("--phases", default="add,batch,proof,tile",
                    help="comma-separated subset of add,batch,proof,tile")
    ap.add_argument("--server-arg", action="append", default=[],
                    help="extra argument for potd ledger serve (repeatable)")
    ap.add_argument("--json", help="write the results as JSON to this file")
    ap.add_argument("--stages", action="store_true",
                    help="time the server's write-path stages in CPU (scripts/stage_clock.py) "
                         "and print them per entry; use with --phases batch")
    ap.add_argument("--pin", action="store_true",
                    help="put the server (and this process's baselines) on the first CPU "
                         "and the load generator on the second (a diagnostic: the server "
                         "then verifies on one core)")
    ap.add_argument("--db", help="a postgresql:// URL (CREATEDB rights): compare add-batch of "
                                 "one SQLite, one and two PostgreSQL frontends instead")
    a = ap.parse_args()
    if a.db:
        sys.path.insert(0, str(ROOT / "scripts"))
        from bench_frontends import compare
        compare(a.db, a.batch, 12 if a.quick else a.batches, a.batch_clients,
                5 if a.quick else a.seconds, a.stages)
        return
    if a.quick:
        a.adds, a.batches, a.reads, a.seconds = 12_800, 12, 10_000, 5
    rnd = random.Random(1)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="potd-bench-") as d:
        stages_file = os.path.join(d, "stages.json") if a.stages else None
        proc, port, trainer = start_server(d, a.server_arg, stages_file)
        cpus = sorted(os.sched_getaffinity(0))
        load_cpus: set[int] | None = None
        if a.pin:
            if len(cpus) < 2:
                raise SystemExit("--pin needs two CPUs")
            pin_process(proc.pid, {cpus[0]})
            load_cpus = {cpus[1]}
        try:
            steps = max(1, a.adds // a.clients - 1)
            print(f"signing {a.clients} runs x {steps + 1} statements and "
                  f"{a.batches} batches x {a.batch} ...", flush=True)
            runs = make_runs(trainer, a.clients, steps, 0)
            per_batch_client = -(-a.batches // a.batch_clients)
            brun = make_runs(trainer, a.batch_clients, per_batch_client * a.batch - 1, 10_000)
            sample = [s for r in runs for s in r][:20_000]
            print(f"statement size: {statistics.mean(len(s) for s in sample):.0f} bytes",
                  flush=True)

            # baselines, measured while the server idles (with --pin on the server's CPU)
            if a.pin:
                pin_process(os.getpid(), {cpus[0]})
            verify_per_s = verify_rate(sample[:5000])
            native_us, pynacl_us, parse_us = ed25519_cpu_us([s for r in brun for s in r][:5000])
            verify_us = native_us if native_us is not None else pynacl_us
            lib1 = library_rate(os.path.join(d, "b1.db"), sample, a.clients)
            lib2 = library_rate(os.path.join(d, "b2.db"), [s for r in brun for s in r][:20_000],
                                a.batch)

            phases = set(a.phases.split(","))
            if "add" in phases:
                h0 = health(port)
                res = run_load(port, [[post("/add", s) for s in r] for r in runs], a.seconds)
                results.append(summarize(f"add ({a.clients} clients)", res))
                h1 = health(port)
                n, f = h1["flushes"] - h0["flushes"], h1["flush_seconds"] - h0["flush_seconds"]
                print(f"add: {n} flushes, {(h1['flushed'] - h0['flushed']) / max(n, 1):.1f} "
                      f"statements and {1000 * f / max(n, 1):.2f} ms each, busy "
                      f"{100 * f / res['seconds']:.0f}% of the time", flush=True)
            if "batch" in phases:
                reqs = [[post("/add-batch", b"[" + b",".join(r[i:i + a.batch]) + b"]")
                         for i in range(0, len(r), a.batch)] for r in brun]
                cpu0, threads0 = cpu_seconds(proc.pid), thread_cpu(proc.pid)
                res = run_load(port, reqs, a.seconds, cpus=load_cpus)
                batch_cpu = cpu_seconds(proc.pid) - cpu0
                threads = by_thread(proc.pid, threads0, thread_cpu(proc.pid))
                results.append(summarize(f"add-batch of {a.batch}", res, a.batch))
                n = max(res["statuses"].get(200, 0) * a.batch, 1)
                results[-1]["frontend_cpu_us"] = round(1e6 * batch_cpu / n, 1)
                per_req = max(res["statuses"].get(200, 0), 1)
                results[-1]["threads"] = [(name, round(1e6 * cpu / n, 1), round(faults / n, 2),
                                           round(vol / per_req, 1), round(invol / per_req, 1))
                                          for name, cpu, faults, vol, invol in threads]
            if "add" not in phases and "batch" not in phases:  # something to read
                run_load(port, [[post("/add-batch", b"[" + b",".join(r) + b"]")]
                                for r in runs], a.seconds)

            size = int(health(port)["size"])
            per = max(1, a.reads // a.clients)
            if "proof" in phases:
                reqs = [[get(f"/proof/inclusion?index={rnd.randrange(size)}&size={size}")
                         for _ in range(per)] for _ in range(a.clients)]
                results.append(summarize("inclusion proof", run_load(port, reqs, a.seconds)))
            full = size // 256
            if "tile" in phases and full:
                for name, prefix in (("hash tile (full)", "/tile/0/"),
                                     ("entry bundle (full)", "/tile/entries/")):
                    reqs = [[get(prefix + _fmt(rnd.randrange(full))) for _ in range(per)]
                            for _ in range(a.clients)]
                    results.append(summarize(name, run_load(port, reqs, a.seconds)))
        finally:
            proc.terminate()
            proc.wait(30)
        stages = (json.loads(Path(stages_file).read_text())
                  if stages_file and os.path.exists(stages_file) else None)
    print()
    print(f"{'phase':26} {'requests':>9} {'ok':>7} {'s':>6} {'entries|req/s':>14} "
          f"{'p50 ms':>8} {'p99 ms':>8}")
    for r in results:
        print(f"{r['phase']:26} {r['requests']:>9} {r['ok']:>7} {r['seconds']:>6} "
              f"{r['per_s']:>14,} {r['p50_ms']:>8} {r['p99_ms']:>8}")
    print(f"\nbaseline, same run: Log.append {lib1:,.0f} entries/s in batches of {a.clients}, "
          f"{lib2:,.0f} in batches of {a.batch}; parse + verify one statement "
          f"{verify_per_s:,.0f}/s on one core; CPU per statement: Ed25519 check "
          f"{verify_us:.1f} µs ({'native, libsodium' if native_us is not None else 'PyNaCl'}; "
          f"PyNaCl {pynacl_us:.1f} µs), parsing {parse_us:.1f} µs")
    for r in results:
        if "frontend_cpu_us" in r:
            print(f"{r['phase']}: frontend CPU " + cpu_split(
                r["frontend_cpu_us"] / 1e6, 1, verify_us) + f"; load {load_avg()}")
            if stages is not None:
                print_stages(stages, r)
            if stages is not None and r.get("threads"):
                print("  CPU per entry by thread (µs; minor page faults per entry; "
                      "voluntary and involuntary context switches per request):")
                for name, us, faults, vol, invol in r["threads"]:
                    print(f"    {name:26} {us:7.1f} {faults:8.2f} {vol:8.1f} {invol:8.1f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"phases": results, "library_per_s": {
            str(a.clients): round(lib1), str(a.batch): round(lib2)},
            "parse_verify_per_s": round(verify_per_s), "verify_cpu_us": round(verify_us, 2),
            "pynacl_verify_cpu_us": round(pynacl_us, 2),
            "parse_cpu_us": round(parse_us, 2)}, indent=2) + "\n")


def print_stages(stages: dict[str, float], phase: dict[str, Any]) -> None:
    """CPU per entry by write-path stage (nested stages indented); the rest of the
    frontend's CPU is the event loop, HTTP and hand-offs between threads."""
    entries = max(1, phase["ok"] * int(phase["phase"].rsplit(" ", 1)[1]))
    print("  CPU per entry by stage (µs; scripts/stage_clock.py):")
    top = 0.0
    for name in sorted(stages):
        us = 1e6 * stages[name] / entries
        if "." not in name:
            top += us
        print(f"    {'  ' * name.count('.')}{name.rsplit('.', 1)[-1]:24} {us:7.1f}")
    print(f"    {'outside these (loop, HTTP)':24} {phase['frontend_cpu_us'] - top:7.1f}")


def by_thread(pid: int, before: dict[int, tuple[float, int, int, int]],
              after: dict[int, tuple[float, int, int, int]]
              ) -> list[tuple[str, float, int, int, int]]:
    """``(name, CPU seconds, minor faults, voluntary and involuntary context switches)``
    of each thread that ran between two :func:`thread_cpu` snapshots, busiest first: the
    main thread is the event loop; of the others, the two busiest are the verify threads
    (Ed25519 and parsing), then the flush thread (admission, storage, replies)."""
    rows = []
    for tid, (cpu, faults, vol, invol) in after.items():
        c0, f0, v0, i0 = before.get(tid, (0.0, 0, 0, 0))
        if cpu - c0 > 0 or faults - f0 > 0:
            rows.append((tid, cpu - c0, faults - f0, vol - v0, invol - i0))
    rows.sort(key=lambda r: (r[0] != pid, -r[1]))
    return [("main (event loop)" if tid == pid else f"thread {tid}", cpu, faults, vol, invol)
            for tid, cpu, faults, vol, invol in rows]


def health(port: int) -> dict[str, Any]:
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
        out: dict[str, Any] = json.loads(r.read())
    return out


def _fmt(n: int) -> str:
    from ledger.tiles import format_index
    return format_index(n)


if __name__ == "__main__":
    main()
