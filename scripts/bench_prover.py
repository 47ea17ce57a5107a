#!/usr/bin/env python3
"""Prover overhead: training step time with and without the prover, in the same run.

For each recipe (digits-mlp, and wide-mlp with ~10M parameters, batch 64) it trains the
same steps twice from the same seed: once as a plain PyTorch loop (``train_step``), once
through :class:`prover.session.TrainingSession` with per-step weight hashing (BLAKE3),
evidence every k steps, statements spooled and streamed to a real log server on a
loopback port. Reports the median and mean step time of each and the overhead ratio.

    .venv/bin/python scripts/bench_prover.py
    .venv/bin/python scripts/bench_prover.py --steps 40 --recipes wide-mlp
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ledger.client import LogClient  # noqa: E402
from ledger.devserver import ServerProcess  # noqa: E402
from ledger.log import Log  # noqa: E402
from ledger.note import Signer  # noqa: E402
from prover.derive import batch_indexes, init_seed, schedule  # noqa: E402
from prover.recipes import get_recipe, train_step  # noqa: E402
from prover.session import TrainingSession  # noqa: E402


def plain(recipe_name: str, steps: int, over: dict) -> list[float]:
    r = get_recipe(recipe_name, **over)
    data = r.data()
    seed = bytes(32)
    torch.manual_seed(init_seed(seed))
    model = r.model()
    opt = r.optimizer(model)
    plan = schedule(len(data.x), r.batch_size, r.epochs)[:steps]
    times = []
    cache: dict = {}
    for step, epoch, off in plan:
        idx = torch.tensor(batch_indexes(seed, len(data.x), r.batch_size, step, epoch, off, cache))
        t = time.perf_counter()
        train_step(r, model, opt, data.x[idx], data.y[idx], seed, step)
        times.append(time.perf_counter() - t)
    return times


def proved(recipe_name: str, steps: int, over: dict, url: str, vkey: str, d: Path) -> list[float]:
    r = get_recipe(recipe_name, **over)
    trainer = Signer.generate("bench.example/trainer")
    client = LogClient(url, vkey)
    sess = TrainingSession(r, client, trainer, d / f"ev-{recipe_name}", d / f"{recipe_name}.spool")
    sess.open()
    sess.plan = sess.plan[:steps]
    times = []
    for b in sess.batches():
        t = time.perf_counter()
        sess.train_step(b)
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    sess.close()
    times.append(0.0)  # close() is reported separately
    times[-1] = time.perf_counter() - t
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--recipes", default="digits-mlp,wide-mlp")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--k-wide", type=int, default=100,
                    help="checkpoint interval for wide-mlp (default 100: 80 MB of evidence "
                         "per checkpoint)")
    ap.add_argument("--k-digits", type=int, default=5, help="checkpoint interval for digits")
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args()
    out = {}
    with tempfile.TemporaryDirectory() as td:
        d = Path(td)
        log_key = Signer.generate("bench.example/log")
        (d / "log.key").write_text(log_key.private_string())
        Log.create(str(d / "log.db"), log_key).store.close()
        with ServerProcess(str(d / "log.db"), str(d / "log.key"),
                           extra=["--open-registration"]) as srv:
            for name in args.recipes.split(","):
                over = ({"epochs": 50, "k": args.k_wide} if name == "wide-mlp"
                        else {"epochs": 5, "k": args.k_digits})
                plain(name, 5, over)  # warm-up
                base = plain(name, args.steps, over)
                with_p = proved(name, args.steps, over, srv.url, str(log_key.verifier), d)
                close_s = with_p.pop()
                warm = 3
                b, p = base[warm:], with_p[warm:]
                res = {"steps": len(b), "plain_median_ms": statistics.median(b) * 1e3,
                       "prover_median_ms": statistics.median(p) * 1e3,
                       "plain_mean_ms": statistics.mean(b) * 1e3,
                       "prover_mean_ms": statistics.mean(p) * 1e3,
                       "close_seconds": close_s}
                res["overhead_median"] = res["prover_median_ms"] / res["plain_median_ms"] - 1
                res["overhead_mean"] = res["prover_mean_ms"] / res["plain_mean_ms"] - 1
                params = sum(p_.numel() for p_ in get_recipe(name).model().parameters())
                res["parameters"] = params
                out[name] = res
                print(f"{name:11s} {params:>10,} params  plain "
                      f"{res['plain_median_ms']:7.2f} ms/step"
                      f"  with prover {res['prover_median_ms']:7.2f} ms/step  overhead "
                      f"{res['overhead_median'] * 100:+.1f}% (median), "
                      f"{res['overhead_mean'] * 100:+.1f}% (mean); close {close_s:.2f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
