#!/usr/bin/env python3
"""Witness load benchmark (loopback only, bounded in count and time; not a test).

Starts ``potd witness serve`` on a free 127.0.0.1 port with a fresh SQLite database
pinning L logs (default 32), then measures ``POST /add-checkpoint``:

  prepared  each log appends entries (B per checkpoint, default 4) and the requests
            (``old``, consistency proof, signed checkpoint) are built before the clock
            starts; a separate load-generator process (asyncio, keep-alive, one request
            in flight per log, as a log does) sends them. This is the witness's rate.
  live      L client threads, each appending to its own log, then asking for a
            cosignature with ``request_cosignature`` (ledger.peer, keep-alive): end to end,
            including the log's own append and proof work in this process.
  contend   C clients race from one state for one log with different valid
            checkpoints; exactly one may win each round, the rest must get 409.
  publish   a real log server (``potd ledger serve --witness URL=VKEY``) in front of
            this witness: N writes one after another, each waiting until the cosigned
            checkpoint covering it is served at ``GET /checkpoint``. Reports the time
            from the flush to publication (measured by the server, ``/health``) and
            from the write's reply to a client seeing it; then the latency of writes
            with ``--wait-for-witnesses`` against the same writes to a log without
            witnesses.

Every 200 is a cosignature the server verified, persisted (WAL, synchronous=FULL) and
signed. Targets: >= 500 add-checkpoint requests/s; witnessing adds <= 100 ms (p50) to
the time a checkpoint takes to be published.

    .venv/bin/python scripts/bench_witness.py            # defaults below
    .venv/bin/python scripts/bench_witness.py --quick    # a few seconds per phase
    .venv/bin/python scripts/bench_witness.py --only publish --flushes 200
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import benchlib  # noqa: E402
import httpx  # noqa: E402
from benchlib import http_request, pct, start_potd  # noqa: E402

from ledger.cosignature import count_cosignatures  # noqa: E402
from ledger.devserver import ServerProcess  # noqa: E402
from ledger.log import Log  # noqa: E402
from ledger.note import ALG_COSIGNATURE_V1, Signer, open_checkpoint  # noqa: E402
from ledger.peer import Peer  # noqa: E402
from ledger.statement import build_statement  # noqa: E402
from ledger.witness import (  # noqa: E402
    AddCheckpointRequest,
    SizeConflictError,
    WitnessState,
)
from ledger.witness_client import request_cosignature  # noqa: E402

# --- preparing requests (log appending) -------------------------------------------------


def _prepare(args: tuple[str, str, int, int]) -> list[bytes]:
    """Grow one log by ``per`` entries ``rounds`` times; one add-checkpoint body each."""
    path, skey, rounds, per = args
    log = Log.create(path, Signer.parse(skey))
    out, old = [], 0
    for r in range(rounds):
        log.append([b"entry %d.%d" % (r, i) for i in range(per)])
        out.append(AddCheckpointRequest(old, tuple(log.consistency_proof(old)),
                                        log.checkpoint().to_bytes()).to_bytes())
        old = log.size
    log.store.close()
    return out


def http_post(body: bytes) -> bytes:
    return http_request("POST", "/add-checkpoint", body, "text/plain")


def run_load(port: int, per_client: list[list[bytes]], limit_s: float) -> dict[str, Any]:
    """The prepared checkpoints, each client's in order (a client stops at its first
    non-200: its next request would start from the wrong size)."""
    return benchlib.run_load(port, [[http_post(b) for b in c] for c in per_client], limit_s,
                             on_error="stop")


def run_live(url: str, logs: list[Log], per: int, limit_s: float, max_requests: int
             ) -> dict[str, Any]:
    lat: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    t0 = time.perf_counter()
    budget = [max_requests]

    def worker(log: Log) -> None:
        old = log.size
        with Peer(deadline=30) as http:
            while time.perf_counter() - t0 < limit_s:
                with lock:
                    if budget[0] <= 0:
                        return
                    budget[0] -= 1
                log.append([b"live %d" % (log.size + i) for i in range(per)])
                t = time.perf_counter()
                try:
                    request_cosignature(url, old, log.consistency_proof(old), log.checkpoint(),
                                        client=http)
                    code = 200
                except SizeConflictError as e:
                    code = 409
                    old = e.size
                else:
                    old = log.size
                with lock:
                    lat.append(time.perf_counter() - t)
                    statuses[code] = statuses.get(code, 0) + 1

    threads = [threading.Thread(target=worker, args=(lg,)) for lg in logs]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return {"seconds": time.perf_counter() - t0, "latencies": lat, "statuses": statuses}


def run_contend(url: str, log: Log, clients: int, rounds: int, limit_s: float
                ) -> dict[str, Any]:
    lat: list[float] = []
    statuses: dict[int, int] = {}
    bad_rounds = 0
    t0 = time.perf_counter()
    https = [Peer(deadline=30) for _ in range(clients)]
    old = log.size
    for _ in range(rounds):
        if time.perf_counter() - t0 > limit_s:
            break
        bodies = []
        for _ in range(clients):
            log.append([b"contend %d" % log.size])
            bodies.append((list(log.consistency_proof(old)), log.checkpoint()))
        got: list[int] = []
        round_state = (threading.Barrier(clients), threading.Lock(), old, bodies, got)

        def go(i: int, rs: tuple[Any, ...] = round_state) -> None:
            barrier, lock, start, reqs, out = rs
            barrier.wait()
            t = time.perf_counter()
            try:
                request_cosignature(url, start, reqs[i][0], reqs[i][1], client=https[i])
                code = 200
            except SizeConflictError:
                code = 409
            with lock:
                lat.append(time.perf_counter() - t)
                out.append(code)

        ths = [threading.Thread(target=go, args=(i,)) for i in range(clients)]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        for c in got:
            statuses[c] = statuses.get(c, 0) + 1
        bad_rounds += got.count(200) != 1
        st = [s for s in httpx.get(url + "/state").json()["logs"] if s["origin"] == log.origin]
        old = st[0]["size"]
    for h in https:
        h.close()
    return {"seconds": time.perf_counter() - t0, "latencies": lat, "statuses": statuses,
            "rounds_without_exactly_one_winner": bad_rounds}


# --- publication through a real log server -------------------------------------------------

def _statements(n: int, tag: str) -> list[bytes]:
    trainer = Signer.generate(f"bench.example/{tag}")
    body = {"seed_commitment": "00" * 32, "dataset": {"root": "11" * 32, "size": 1},
            "recipe": {"name": tag}, "hyperparameters": {}, "environment": {}}
    return [build_statement("run.open", None, 0, {**body, "n": i}, trainer) for i in range(n)]


def _log_server(d: str, tag: str, extra: list[str], pin: WitnessState
                ) -> tuple[ServerProcess, Signer]:
    """A log server process with a fresh log, pinned at the witness before it starts."""
    key = Signer.generate(f"bench.example/{tag}")
    pin.add_log(key.name, key.verifier)
    Path(d, f"{tag}.key").write_text(key.private_string())
    Log.create(str(Path(d, f"{tag}.db")), key).store.close()
    srv = ServerProcess(str(Path(d, f"{tag}.db")), str(Path(d, f"{tag}.key")),
                        extra=["--open-registration", *extra],
                        log_file=str(Path(d, f"{tag}.log"))).start()
    return srv, key


def run_publish(d: str, wurl: str, wkey: Signer, flushes: int, limit_s: float
                ) -> list[dict[str, Any]]:
    """Publication delay with one local witness, then write latency with and without
    waiting for witnesses."""
    out = []
    pin = WitnessState(str(Path(d, "witness.db")))
    wspec = f"{wurl}={wkey.verifier}"
    # 1. writes answered at once; the cosigned checkpoint follows at GET /checkpoint
    srv, key = _log_server(d, "published", ["--witness", wspec], pin)
    seen: list[float] = []
    t_start = time.perf_counter()
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            for st in _statements(flushes, "p"):
                if time.perf_counter() - t_start > limit_s:
                    break
                r = http.post("/add", content=st, headers={"content-type": "application/json"})
                r.raise_for_status()
                t = time.perf_counter()
                need = r.json()["index"] + 1
                while True:
                    got = http.get("/checkpoint")  # 503 until a first checkpoint is witnessed
                    cp = open_checkpoint(got.content, key.verifier) if got.is_success else None
                    if cp is not None and cp.size >= need:
                        break
                    if time.perf_counter() - t > 10:
                        raise SystemExit("no witnessed checkpoint after 10 s")
                    time.sleep(0.002)  # polling harder would slow the server it measures
                assert count_cosignatures(cp.note, [wkey.verifier]) == [wkey.verifier]
                seen.append(time.perf_counter() - t)
            health = http.get("/health").json()["witnessing"]
    finally:
        srv.stop()
    pub = health["publish_ms"]
    row = {"phase": "publish", "flushes": len(seen), "flush_to_published_p50_ms": pub["p50"],
           "flush_to_published_p99_ms": pub["p99"], "flush_to_published_max_ms": pub["max"],
           "reply_to_visible_p50_ms": round(statistics.median(seen) * 1000, 2),
           "reply_to_visible_p99_ms": round(pct(seen, 99) * 1000, 2)}
    print(f"publish   {row['flushes']:6d} flushes, one at a time: flush -> cosigned checkpoint "
          f"published p50 {pub['p50']} ms, p99 {pub['p99']} ms (server); add reply -> seen "
          f"at /checkpoint p50 {row['reply_to_visible_p50_ms']} ms, p99 "
          f"{row['reply_to_visible_p99_ms']} ms (client)", flush=True)
    out.append(row)
    # 2. write latency: --wait-for-witnesses against a log without witnesses
    lat: dict[str, list[float]] = {}
    for tag, extra in (("plain", []), ("waiting", ["--witness", wspec, "--wait-for-witnesses"])):
        srv, key = _log_server(d, tag, extra, pin)
        lat[tag] = []
        t_start = time.perf_counter()
        try:
            with httpx.Client(base_url=srv.url, timeout=30) as http:
                http.get("/health")
                for st in _statements(flushes, tag):
                    if time.perf_counter() - t_start > limit_s:
                        break
                    t = time.perf_counter()
                    r = http.post("/add", content=st,
                                  headers={"content-type": "application/json"})
                    r.raise_for_status()
                    lat[tag].append(time.perf_counter() - t)
                    if extra:
                        cp = open_checkpoint(r.json()["checkpoint"], key.verifier)
                        assert count_cosignatures(cp.note, [wkey.verifier])
        finally:
            srv.stop()
    pin.close()
    p50 = {k: statistics.median(v) * 1000 for k, v in lat.items()}
    p99 = {k: pct(v, 99) * 1000 for k, v in lat.items()}
    row = {"phase": "wait", "writes": len(lat["waiting"]),
           "plain_p50_ms": round(p50["plain"], 2), "plain_p99_ms": round(p99["plain"], 2),
           "waiting_p50_ms": round(p50["waiting"], 2), "waiting_p99_ms": round(p99["waiting"], 2),
           "added_p50_ms": round(p50["waiting"] - p50["plain"], 2)}
    print(f"wait      {row['writes']:6d} writes, one at a time: POST /add p50 "
          f"{row['plain_p50_ms']} ms without witnesses, {row['waiting_p50_ms']} ms with "
          f"--wait-for-witnesses (+{row['added_p50_ms']} ms; p99 {row['plain_p99_ms']} -> "
          f"{row['waiting_p99_ms']} ms)", flush=True)
    out.append(row)
    return out


# --- reporting -----------------------------------------------------------------------------

def summarize(name: str, res: dict[str, Any]) -> dict[str, Any]:
    lat = res["latencies"]
    out = {"phase": name, "requests": len(lat), "statuses": res["statuses"],
           "seconds": round(res["seconds"], 2),
           "req_per_s": round(len(lat) / res["seconds"]),
           "cosigned_per_s": round(res["statuses"].get(200, 0) / res["seconds"]),
           "p50_ms": round(statistics.median(lat) * 1000, 2) if lat else None,
           "p99_ms": round(pct(lat, 99) * 1000, 2) if lat else None}
    if "rounds_without_exactly_one_winner" in res:
        out["rounds_without_exactly_one_winner"] = res["rounds_without_exactly_one_winner"]
    print(f"{name:9s} {out['requests']:6d} requests in {out['seconds']:6.2f} s: "
          f"{out['req_per_s']:5d} req/s, {out['cosigned_per_s']:5d} cosigned/s, "
          f"p50 {out['p50_ms']} ms, p99 {out['p99_ms']} ms, statuses {out['statuses']}",
          flush=True)
    return out


# --- the server -----------------------------------------------------------------------------

def start_witness(d: str) -> tuple[subprocess.Popen[bytes], str]:
    key = Signer.generate("bench.example/witness", ALG_COSIGNATURE_V1)
    Path(d, "w.key").write_text(key.private_string())
    return start_potd(["witness", "serve", "--db", str(Path(d, "witness.db")), "--key",
                       str(Path(d, "w.key")), "--port", "0"], Path(d, "witness.err"), "witness")


def load_phases(a: argparse.Namespace, d: str, url: str, signers: list[Signer],
                per_client: list[list[bytes]]) -> list[dict[str, Any]]:
    results = []
    port = int(url.rsplit(":", 1)[1])
    results.append(summarize("prepared", run_load(port, per_client, a.seconds)))
    # fresh origins: the prepared ones already moved on at the witness
    spare = [Signer.generate(f"bench.example/live{i}") for i in range(a.logs)]
    st = WitnessState(str(Path(d, "witness.db")))
    for s in spare:
        st.add_log(s.name, s.verifier)
    st.close()
    live_logs = [Log.create(str(Path(d, f"live{i}.db")), s) for i, s in enumerate(spare)]
    results.append(summarize("live", run_live(url, live_logs, a.per, a.seconds, a.live)))
    contend_log = Log.create(str(Path(d, "contend.db")), signers[a.logs])
    results.append(summarize("contend", run_contend(url, contend_log, a.contend, a.rounds,
                                                    a.seconds)))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--logs", type=int, default=32, help="logs = concurrent clients (32)")
    ap.add_argument("--requests", type=int, default=16_000,
                    help="prepared requests in total, at most (default 16,000)")
    ap.add_argument("--per", type=int, default=4, help="entries appended per checkpoint (4)")
    ap.add_argument("--live", type=int, default=4000, help="live requests, at most (4,000)")
    ap.add_argument("--contend", type=int, default=16, help="racing clients (16)")
    ap.add_argument("--rounds", type=int, default=50, help="contention rounds (50)")
    ap.add_argument("--flushes", type=int, default=200,
                    help="writes (= flushes) in the publish and wait phases (200)")
    ap.add_argument("--only", choices=["load", "publish"],
                    help="only the witness load phases, or only the publication phases")
    ap.add_argument("--seconds", type=float, default=20, help="time limit per phase (20)")
    ap.add_argument("--quick", action="store_true", help="small counts, 5 s per phase")
    ap.add_argument("--json", help="write the results as JSON to this file")
    a = ap.parse_args()
    if a.quick:
        a.requests, a.live, a.rounds, a.seconds, a.flushes = 4000, 1000, 10, 5, 50
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="potd-bench-witness-") as d:
        signers = [Signer.generate(f"bench.example/log{i}") for i in range(a.logs + 1)]
        st = WitnessState(str(Path(d, "witness.db")))
        for s in signers:
            st.add_log(s.name, s.verifier)
        st.close()
        per_client: list[list[bytes]] = []
        if a.only != "publish":
            rounds = max(1, a.requests // a.logs)
            print(f"appending to {a.logs} logs: {rounds} checkpoints of {a.per} entries "
                  "each ...", flush=True)
            t = time.perf_counter()
            with mp.Pool(2) as pool:
                per_client = pool.map(_prepare, [(str(Path(d, f"p{i}.db")), s.private_string(),
                                                  rounds, a.per)
                                                 for i, s in enumerate(signers[:a.logs])])
            print(f"  prepared {rounds * a.logs} requests in {time.perf_counter() - t:.1f} s "
                  f"(mean body {statistics.mean(len(b) for b in per_client[0])} bytes)",
                  flush=True)
        proc, url = start_witness(d)
        try:
            if a.only != "publish":
                results += load_phases(a, d, url, signers, per_client)
            if a.only != "load":
                wkey = Signer.parse(Path(d, "w.key").read_text())
                results += run_publish(d, url, wkey, a.flushes, a.seconds)
        finally:
            proc.terminate()
            proc.wait(10)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
