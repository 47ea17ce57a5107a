#!/usr/bin/env python3
"""Ledger core benchmark: library appends vs. raw SQLite inserts, proof latency, memory.

Appends N entries of 200 bytes in batches of B through ``ledger.log.Log`` (hashing,
stored hashes, a signed and self-checked checkpoint per batch, one transaction per
batch) and, in the same run, ``sqlite3.executemany`` of the same rows into a plain
table with the same durability settings (WAL, synchronous=FULL, one transaction per
batch). Then inclusion and consistency proof latency at the final size, and peak RSS.

    .venv/bin/python scripts/bench_ledger.py            # 1,000,000 entries
    .venv/bin/python scripts/bench_ledger.py -n 100000  # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ledger.log import Log  # noqa: E402
from ledger.merkle import check_record, check_tree, leaf_hash  # noqa: E402
from ledger.note import Signer  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def raw_sqlite(path: str, batches: list[list[bytes]]) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE e (idx INTEGER PRIMARY KEY, data BLOB NOT NULL)")
    t = time.perf_counter()
    i = 0
    for b in batches:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO e VALUES (?, ?)", zip(range(i, i + len(b)), b))
        conn.execute("COMMIT")
        i += len(b)
    dt = time.perf_counter() - t
    conn.close()
    return dt


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-n", type=int, default=1_000_000, help="entries (default 1,000,000)")
    ap.add_argument("-b", type=int, default=1000, help="batch size (default 1000)")
    ap.add_argument("--size", type=int, default=200, help="entry size in bytes (default 200)")
    ap.add_argument("--proofs", type=int, default=2000, help="proofs to time (default 2000)")
    ap.add_argument("--json", help="write the results as JSON to this file")
    args = ap.parse_args()

    rnd = random.Random(1)
    pool = [rnd.randbytes(args.size) for _ in range(4096)]
    nb = args.n // args.b
    batches = [[pool[(k * args.b + i) % 4096 + 0] for i in range(args.b)] for k in range(nb)]
    # make every entry distinct in its first bytes, as real statements are
    batches = [[(k * args.b + i).to_bytes(8, "big") + e[8:] for i, e in enumerate(b)]
               for k, b in enumerate(batches)]
    total = nb * args.b

    with tempfile.TemporaryDirectory() as d:
        raw_s = raw_sqlite(os.path.join(d, "raw.db"), batches)
        log = Log.create(os.path.join(d, "log.db"), Signer.generate("bench.example/log"))
        rss = []
        t = time.perf_counter()
        for k, b in enumerate(batches):
            log.append(b)
            if k % max(1, nb // 10) == 0:
                rss.append(round(rss_mb(), 1))
        lib_s = time.perf_counter() - t
        rss.append(round(rss_mb(), 1))
        cp = log.checkpoint()

        idx = [rnd.randrange(total) for _ in range(args.proofs)]
        inc = []
        for i in idx:
            t0 = time.perf_counter()
            p = log.inclusion_proof(i)
            inc.append(time.perf_counter() - t0)
        check_record(p, cp.size, cp.root, idx[-1], leaf_hash(log.entries(idx[-1], idx[-1] + 1)[0]))
        con = []
        for _ in range(args.proofs):
            m = rnd.randrange(1, total)
            t0 = time.perf_counter()
            p = log.consistency_proof(m)
            con.append(time.perf_counter() - t0)
        check_tree(p, cp.size, cp.root, m, log.root_at(m))
        db_mb = os.path.getsize(os.path.join(d, "log.db")) / 2**20

    res = {
        "entries": total, "batch": args.b, "entry_bytes": args.size,
        "raw_sqlite_per_s": round(total / raw_s), "library_per_s": round(total / lib_s),
        "ratio": round(raw_s / lib_s, 3),
        "inclusion_p50_us": round(statistics.median(inc) * 1e6, 1),
        "inclusion_p99_us": round(pct(inc, 99) * 1e6, 1),
        "consistency_p50_us": round(statistics.median(con) * 1e6, 1),
        "consistency_p99_us": round(pct(con, 99) * 1e6, 1),
        "rss_mb_during_append": rss,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "db_mb": round(db_mb, 1),
    }
    print(f"entries               {total:,} x {args.size} B in batches of {args.b}")
    print(f"raw sqlite executemany {res['raw_sqlite_per_s']:>10,} entries/s")
    print(f"potd Log.append        {res['library_per_s']:>10,} entries/s  "
          f"(ratio {res['ratio']:.2f} of raw)")
    print(f"inclusion proof        p50 {res['inclusion_p50_us']} us   "
          f"p99 {res['inclusion_p99_us']} us")
    print(f"consistency proof      p50 {res['consistency_p50_us']} us   "
          f"p99 {res['consistency_p99_us']} us")
    print(f"RSS during append (MB) {rss}")
    print(f"peak RSS               {res['peak_rss_mb']} MB (includes the input batches held "
          f"in memory: {total * args.size / 2**20:.0f} MB)")
    print(f"database size          {res['db_mb']} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
