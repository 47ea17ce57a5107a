#!/usr/bin/env python3
"""Dataset hashing: a token file's example hashes and root, cold and from the cache.

Writes a token file of ``--mb`` megabytes of random ``uint16`` ids (nanoGPT's
``train.bin`` layout) in a temporary directory, then for each ``--blocks`` window size
(stride = block):

* floor: one ``hashlib.sha256`` over the file's bytes (read into memory once, outside
  the timer) — what hashing these bytes costs with no per-example framing at all;
* cold: :func:`prover.dataset_cache.dataset_hashes` with an empty cache — chunked reads,
  one SHA-256 per window (the example hashes), the RFC 6962 root, the cache entry
  written; reported in MB/s of the token file;
* python: cold again with the optional native hasher switched off (the pure-Python path:
  three interpreter calls per window), the baseline for the native one;
* warm: the same call again, best of 5 (a new :class:`~prover.datasets.TokenFile` object): the
  checksummed cache entry read and verified; the ratio cold / warm.

The operating system's page cache holds the file in every case ("cold" means no potd
cache). All timings in the same run; best of ``--repeats``.

    .venv/bin/python scripts/bench_datasets.py                  # 100 MB, blocks 128 and 1024
    .venv/bin/python scripts/bench_datasets.py --mb 20 --blocks 256 --json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import prover.datasets as datasets  # noqa: E402
from prover.dataset_cache import dataset_hashes  # noqa: E402
from prover.datasets import TokenFile, write_tokens  # noqa: E402


def best(fn: Any, repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def hash_floor(data: bytes, repeats: int) -> float:
    return best(lambda: hashlib.sha256(data).digest(), repeats)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mb", type=int, default=100, help="token file size in MB (10^6 bytes)")
    ap.add_argument("--blocks", default="128,1024", help="window sizes (stride = block)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="JSON on stdout")
    args = ap.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.bin"
        rng = np.random.default_rng(0)
        write_tokens(path, rng.integers(0, 50257, args.mb * 500_000), "uint16")
        size = path.stat().st_size
        floor = hash_floor(path.read_bytes(), args.repeats)
        for block in (int(b) for b in args.blocks.split(",")):
            colds, warms, pys = [], [], []
            native = datasets._native
            for r in range(args.repeats):
                os.environ["POTD_CACHE"] = str(Path(tmp) / f"cache-{block}-{r}")
                c, cold = best(lambda b=block: dataset_hashes(TokenFile(path, block=b)), 1)
                w, warm = best(lambda b=block: dataset_hashes(TokenFile(path, block=b)), 5)
                datasets._native = None
                p, py = best(lambda b=block: dataset_hashes(TokenFile(path, block=b),
                                                            cache=False), 1)
                datasets._native = native
                assert warm.root == cold.root == py.root and warm.blob == cold.blob == py.blob
                colds.append(c)
                warms.append(w)
                pys.append(p)
            c, w, p = min(colds), min(warms), min(pys)
            rows.append({"block": block, "windows": len(cold), "bytes": size,
                         "native": native is not None,
                         "floor_mb_s": size / floor / 1e6, "cold_s": c,
                         "cold_mb_s": size / c / 1e6, "python_mb_s": size / p / 1e6,
                         "warm_s": w, "warm_ratio": c / w})
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"token file: {size / 1e6:.0f} MB uint16; hash-only floor (hashlib sha256 over "
          f"the same bytes): {rows[0]['floor_mb_s']:.0f} MB/s")
    print(f"native hasher: {'built' if rows[0]['native'] else 'NOT built (pure Python)'}")
    print(f"{'block':>6} {'windows':>9} {'cold s':>8} {'cold MB/s':>10} {'python MB/s':>12} "
          f"{'warm ms':>8} {'cold/warm':>9}")
    for r in rows:
        print(f"{r['block']:>6} {r['windows']:>9} {r['cold_s']:>8.3f} {r['cold_mb_s']:>10.0f} "
              f"{r['python_mb_s']:>12.0f} {r['warm_s'] * 1000:>8.1f} {r['warm_ratio']:>8.0f}x")


if __name__ == "__main__":
    main()
