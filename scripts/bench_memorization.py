#!/usr/bin/env python3
"""How informative is the memorization test? Combined z-scores of honest runs (several
recipes and optimizers) and of adversaries, each trained through a real log server and
audited for real. Prints one line per case (3 runs each by default).

    .venv/bin/python scripts/bench_memorization.py
    .venv/bin/python scripts/bench_memorization.py --runs 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import attacks  # noqa: E402

from prover.attacks import ATTACKS  # noqa: E402
from prover.recipes import get_recipe  # noqa: E402
from prover.session import TrainingSession  # noqa: E402

CASES: list[tuple[str, Any, str, dict[str, Any]]] = [
    ("digits-mlp SGD momentum 0.9", TrainingSession, "digits-mlp", {"epochs": 1}),
    ("digits-mlp SGD no momentum", TrainingSession, "digits-mlp",
     {"epochs": 1, "momentum": "0"}),
    ("digits-mlp hidden 16", TrainingSession, "digits-mlp", {"epochs": 1, "hidden": 16}),
    ("digits-cnn Adam", TrainingSession, "digits-cnn", {"epochs": 1}),
    ("attack: tiny-lr", ATTACKS["tiny-lr"], "digits-mlp", {"epochs": 1}),
    ("attack: data substitution", ATTACKS["data-substitution"], "digits-mlp", {"epochs": 1}),
    ("attack: skipped steps", ATTACKS["skipped-steps"], "digits-mlp", {"epochs": 1}),
]


def run(root: Path, tag: str, cls: Any, recipe: str, over: dict[str, Any]) -> tuple[float, int,
                                                                                     int]:
    b = attacks.Bench(root, tag)
    try:
        ev = str(b.dir / "ev")
        s = cls(get_recipe(recipe, **over), b.client(), b.trainer, ev, str(b.dir / "sp"))
        s.open()
        for bt in s.batches():
            s.train_step(bt)
        s.close()
        rep = b.audit(s.run_id, ev)
    finally:
        b.close()
    m = rep["memorization"]
    return float(m["combined_z"]), int(m["flagged"]), len(m["segments"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="potd-memo-"))
    for i, (name, cls, recipe, over) in enumerate(CASES):
        res = [run(root, f"c{i}r{r}", cls, recipe, over) for r in range(args.runs)]
        print(f"{name:30s} combined z: {', '.join(f'{z:.2f}' for z, _, _ in res)}; "
              f"segments with z < 0: {', '.join(f'{f}/{n}' for _, f, n in res)}", flush=True)


if __name__ == "__main__":
    main()
