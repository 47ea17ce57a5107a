#!/usr/bin/env python3
"""Membership at scale: sort+hash throughput in bounded memory, and query latency.

Synthetic example hashes (SHA-256 of a counter, 1 in 16 repeated to give duplicates)
are streamed through three phases, each in its own process so that each reports its
own peak RSS:

1. ``baseline``: the in-memory way: all hashes in a Python list, ``sorted(set(...))``
   and the RFC 6962 root with ``ledger.merkle.root_of`` (memory grows with N).
2. ``external``: what the trainer and auditor run: :func:`prover.hashlist.external_sort`
   in chunks of ``--chunk`` records (spilled to disk, merged) and the sorted root via
   :class:`prover.hashlist.MerkleFile` (memory bounded by the chunk, not N).
3. ``cache``: the auditor's index of a published hash list
   (:func:`auditor.membership_index.index`): cold (copy the list from an evidence
   directory, sort, build both trees, write the cache entry) against warm (re-hash every
   file of the entry, recompute both roots from it); ratio warm/cold.
4. ``query``: answering ``--queries`` membership queries (half members, half not) with
   proofs from the stored sorted list, positions and tree (:func:`auditor.membership.answer`),
   after the trees are built; p50/p99 latency per query.

Ratios are against the baseline measured in the same run.

    .venv/bin/python scripts/bench_membership.py                   # 1M examples
    .venv/bin/python scripts/bench_membership.py --n 10000000 --skip-baseline
    .venv/bin/python scripts/bench_membership.py --phase cache --n 1000000 --work DIR
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def synthetic(n: int) -> Iterator[bytes]:
    for i in range(n):
        yield hashlib.sha256(str(i if i % 16 else i // 2).encode()).digest()


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase(name: str, n: int, chunk: int, queries: int, work: str) -> dict[str, float]:
    from ledger.merkle import leaf_hash, root_of
    from prover.hashlist import HEADER_SIZE, MerkleFile, external_sort, write_hash_list

    t0 = time.perf_counter()
    if name == "baseline":
        u = sorted(set(synthetic(n)))
        root = root_of([leaf_hash(h) for h in u])
        return {"seconds": time.perf_counter() - t0, "rss_mb": peak_mb(),
                "distinct": len(u), "root": root.hex()}  # type: ignore[dict-item]
    if name == "external":
        spath, _, _ = external_sort(synthetic(n), work, chunk=chunk, positions=False)
        with MerkleFile(spath) as t:
            root, distinct = t.root, t.size
        return {"seconds": time.perf_counter() - t0, "rss_mb": peak_mb(),
                "distinct": distinct, "root": root.hex()}  # type: ignore[dict-item]
    if name == "cache":
        from auditor.membership_index import index
        from prover.hashlist import publish

        ev, cache, w = Path(work) / "ev", Path(work) / "cache", Path(work) / "w"
        w.mkdir()
        lname = str(publish(ev / "objects", synthetic(n), chunk=chunk)["hash_list"])
        times = []
        for want in ("fetched", "cache"):
            t = time.perf_counter()
            got = index(str(ev), lname, n, cache_dir=cache, work=w)
            times.append(time.perf_counter() - t)
            assert got.source == want, got.source
            got.close()
        t = time.perf_counter()
        with MerkleFile(cache / lname / "sorted.bin"):  # the sorted tree rebuilt from leaves
            full_sorted = time.perf_counter() - t
        return {"cold_seconds": times[0], "warm_seconds": times[1],
                "sorted_tree_from_leaves_seconds": full_sorted, "rss_mb": peak_mb()}
    from auditor.membership import answer

    lst = Path(work) / "list.hashes"
    write_hash_list(lst, synthetic(n))
    spath, ppath, _ = external_sort(synthetic(n), work, chunk=chunk)
    assert ppath is not None
    ordered, srt = MerkleFile(lst, HEADER_SIZE), MerkleFile(spath)
    build = time.perf_counter() - t0
    rng = random.Random(1)
    qs = [(srt.entry(rng.randrange(srt.size)) if k % 2 else rng.randbytes(32))
          for k in range(queries)]
    lat = []
    for q in qs:
        t = time.perf_counter()
        a = answer(q, ordered, srt, ppath)
        lat.append((time.perf_counter() - t) * 1000)
        assert a["answer"] in ("included", "absent")
    lat.sort()
    return {"build_seconds": build, "rss_mb": peak_mb(), "p50_ms": statistics.median(lat),
            "p99_ms": lat[int(0.99 * (len(lat) - 1))], "max_ms": lat[-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="synthetic examples")
    ap.add_argument("--chunk", type=int, default=1 << 18, help="records sorted in memory")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--phase", choices=["baseline", "external", "cache", "query"],
                    help="run one phase in this process and print its JSON (needs --work)")
    ap.add_argument("--work", help="scratch directory of --phase")
    a = ap.parse_args()
    if a.phase:
        print(json.dumps(phase(a.phase, a.n, a.chunk, a.queries, a.work)))
        return
    out = {}
    for name in (["external", "cache", "query"] if a.skip_baseline
                 else ["baseline", "external", "cache", "query"]):
        with tempfile.TemporaryDirectory(prefix="potd-bench-") as work:
            r = subprocess.run([sys.executable, __file__, "--phase", name, "--n", str(a.n),
                                "--chunk", str(a.chunk), "--queries", str(a.queries),
                                "--work", work], capture_output=True, text=True, check=True)
        out[name] = json.loads(r.stdout)
        print(f"{name:9s} {json.dumps(out[name])}", flush=True)
    ext = out["external"]
    print(f"\nsort+hash of {a.n:,} example hashes ({ext['distinct']:,} distinct), chunk "
          f"{a.chunk:,}: {a.n / ext['seconds']:,.0f} examples/s, peak RSS "
          f"{ext['rss_mb']:.0f} MB")
    if "baseline" in out:
        b = out["baseline"]
        assert b["root"] == ext["root"], "external and in-memory sorted roots differ"
        print(f"in-memory baseline: {a.n / b['seconds']:,.0f} examples/s, peak RSS "
              f"{b['rss_mb']:.0f} MB -> external/in-memory: time "
              f"{ext['seconds'] / b['seconds']:.2f}x, RSS {ext['rss_mb'] / b['rss_mb']:.2f}x "
              "(same sorted root)")
    c = out["cache"]
    print(f"auditor's index of the {a.n:,}-example hash list: cold {c['cold_seconds']:.2f} s "
          f"(copy, sort, both trees, cache entry written), warm {c['warm_seconds']:.2f} s "
          f"(entry re-hashed, both roots recomputed from it) -> warm/cold "
          f"{c['warm_seconds'] / c['cold_seconds']:.2f}x")
    q = out["query"]
    print(f"membership query with proofs ({a.queries} queries, half members): p50 "
          f"{q['p50_ms']:.2f} ms, p99 {q['p99_ms']:.2f} ms (index build "
          f"{q['build_seconds']:.1f} s, peak RSS {q['rss_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
