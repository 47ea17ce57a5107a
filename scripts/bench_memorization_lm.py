#!/usr/bin/env python3
"""The paper's memorization experiment (Choi, Shavit, Duvenaud 2023, §memorization) on
the language model ``tiny-gpt``: how well does the per-segment loss drop of a segment's
own data, against held-out data, tell an honest segment from a lying one?

For each seed, an honest run of tiny-gpt (its default settings, a seeded data order) is
trained once, keeping the state before every step. For each segment length k, segments
of k steps starting at multiples of k are branched off that run three ways, each from
the same state and with the same committed batches B:

* honest — trains on B;
* data addition — trains on B plus, in every step, as many undeclared extra windows
  (Bible text past the dataset's end, never committed);
* data omission — trains on undeclared windows only, while committing B (data never
  trained on).

Each segment is scored exactly as the auditor scores it (``auditor.replay.memorization``:
a Welch z-score of the loss drops of the segment's committed examples against the
held-out windows). Printed per attack and k: the **detection rate** of one segment (flagged
when z < 0, the auditor's per-segment rule), the **AUC** (the probability that an honest
segment scores above an attacked one), and, combined over the segments of a run with
Stouffer's method, the rate at which a run lying in every tested segment scores below the
auditor's warning threshold (combined z < 1). The honest rows give the **false-fail
rate**: honest segments flagged, and honest runs whose combined z falls below 1.

    .venv/bin/python scripts/bench_memorization_lm.py            # 4 seeds, k = 2,4,8,16
    .venv/bin/python scripts/bench_memorization_lm.py --quick    # 2 seeds, k = 4,8
    .venv/bin/python scripts/bench_memorization_lm.py --json out.json

No log server is involved: this measures the statistic, not the plumbing (the end-to-end
audit runs the same function; see tests/test_tiny_gpt.py and scripts/demo).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from auditor.replay import memorization  # noqa: E402
from prover.datasets import as_datasets  # noqa: E402
from prover.recipes import get_recipe, train_step  # noqa: E402
from prover.recipes.tiny_gpt import TinyGPT, kjv_bytes, windows  # noqa: E402

CASES = ("honest", "addition", "omission")
THRESHOLD = 1.0  # the auditor's combined-z warning threshold


def extra_pool(r: TinyGPT, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` windows of the text past the dataset's end: data nobody committed."""
    block, count = int(r.config["block"]), int(r.config["windows"])
    tokens = torch.frombuffer(bytearray(kjv_bytes()), dtype=torch.uint8)
    w = windows(tokens, block, block + 1, count + n)[count:]
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


def sd_copy(model: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[Any, Any]:
    return (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))


def one_seed(seed: int, ks: list[int], segments: int, over: dict[str, Any]) -> dict[str, Any]:
    r = get_recipe("tiny-gpt", **over)
    assert isinstance(r, TinyGPT)
    train = as_datasets(r.data()).train
    dx, dy = train.batch(range(len(train)))  # a few hundred windows: all in memory
    total, bs = r.total_steps(), r.batch_size
    gen = torch.Generator().manual_seed(seed)
    batches = [perm[i:i + bs] for _ in range(r.epochs)
               for perm in [torch.randperm(len(dx), generator=gen)]
               for i in range(0, len(dx), bs)]
    assert len(batches) == total
    ex, ey = extra_pool(r, total * bs)
    step_seed = seed.to_bytes(32, "big")
    torch.manual_seed(seed)
    model = r.model()
    opt = r.optimizer(model)
    states = []
    for step in range(total):  # the honest run, keeping the state before every step
        states.append(sd_copy(model, opt))
        b = batches[step]
        train_step(r, model, opt, dx[b], dy[b], step_seed, step)
    states.append(sd_copy(model, opt))

    out: dict[str, Any] = {}
    for k in ks:
        starts = list(range(0, total - k + 1, k))
        if len(starts) > segments:  # spread over the run
            starts = [starts[round(i * (len(starts) - 1) / (segments - 1))]
                      for i in range(segments)]
        zs: dict[str, list[float]] = {c: [] for c in CASES}
        for s0 in starts:
            committed = [int(i) for s in range(s0, s0 + k) for i in batches[s]]
            for case in CASES:
                if case == "honest":
                    end_sd = states[s0 + k][0]
                else:
                    model.load_state_dict(states[s0][0])
                    opt.load_state_dict(states[s0][1])
                    for s in range(s0, s0 + k):
                        b = batches[s]
                        extra = torch.arange(s * bs, s * bs + len(b))
                        x, y = ((torch.cat([dx[b], ex[extra]]), torch.cat([dy[b], ey[extra]]))
                                if case == "addition" else (ex[extra], ey[extra]))
                        train_step(r, model, opt, x, y, step_seed, s)
                    end_sd = copy.deepcopy(model.state_dict())
                m = memorization(r, states[s0][0], end_sd, committed)
                zs[case].append(float(m["z"]))
        out[str(k)] = zs
    return out


def auc(honest: list[float], attack: list[float]) -> float:
    pairs = [(h > a) + 0.5 * (h == a) for h in honest for a in attack]
    return sum(pairs) / len(pairs) if pairs else math.nan


def table(runs: list[dict[str, Any]], ks: list[int]) -> list[dict[str, Any]]:
    rows = []
    for k in ks:
        per = {c: [z for run in runs for z in run[str(k)][c]] for c in CASES}
        comb = {c: [sum(run[str(k)][c]) / math.sqrt(len(run[str(k)][c])) for run in runs]
                for c in CASES}
        for c in CASES:
            rows.append({
                "k": k, "case": c, "segments": len(per[c]), "runs": len(comb[c]),
                "mean_z": sum(per[c]) / len(per[c]),
                "segment_flag_rate": sum(z < 0 for z in per[c]) / len(per[c]),
                "auc": None if c == "honest" else auc(per["honest"], per[c]),
                "combined_z": comb[c],
                "run_below_threshold": sum(z < THRESHOLD for z in comb[c]) / len(comb[c]),
            })
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, default=4, help="honest runs (default 4)")
    ap.add_argument("--ks", default="2,4,8,16", help="segment lengths (default 2,4,8,16)")
    ap.add_argument("--segments", type=int, default=8,
                    help="tested segments per run and k (default 8, as the auditor)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="tiny-gpt setting (repeatable), e.g. --set epochs=4")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--quick", action="store_true", help="2 seeds, k = 4,8, 6 segments")
    ap.add_argument("--json", help="also write the table as JSON to this file")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.ks, args.segments = 2, "4,8", 6
    from prover.recipes.settings import parse_settings

    over = parse_settings(args.set)
    ks = [int(k) for k in args.ks.split(",")]
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    runs = []
    for seed in range(args.seeds):
        runs.append(one_seed(seed, ks, args.segments, over))
        print(f"seed {seed} done ({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
    rows = table(runs, ks)
    cfg = get_recipe("tiny-gpt", **over).config
    print(f"tiny-gpt {json.dumps({k: cfg[k] for k in sorted(over)}) if over else '(defaults)'}: "
          f"{args.seeds} seeds, up to {args.segments} segments per run and k; "
          f"{time.perf_counter() - t0:.0f}s")
    print("| k | run | mean z | segments flagged (z < 0) | AUC vs honest | "
          "runs with combined z < 1 | combined z per run |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        a = "—" if row["auc"] is None else f"{row['auc']:.2f}"
        print(f"| {row['k']} | {row['case']} | {row['mean_z']:.2f} | "
              f"{row['segment_flag_rate']:.0%} of {row['segments']} | {a} | "
              f"{row['run_below_threshold']:.0%} of {row['runs']} | "
              f"{', '.join(f'{z:.1f}' for z in row['combined_z'])} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": cfg, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
