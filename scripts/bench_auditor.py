#!/usr/bin/env python3
"""Auditor cost: replay vs. original training time, and full-log verification speed.

1. Replay: trains a recipe through the prover against a real log server (loopback),
   timing every training step; then the auditor replays R segments and the time it takes
   (checkpoint loading, hash checks and all) is compared with the original training time
   of the same steps, and with a plain PyTorch loop training the same steps, all in the
   same run. ``--repeats N`` audits N times (each audit draws its own R segments) and
   times the plain loop right after each audit on that audit's steps; the figures are
   medians over the N rounds. Warm-up: the process has trained the whole run before
   the first audit, so neither side pays torch's one-time start-up; the plain loop's
   model and optimizer construction is outside its timer, the replay's per-segment
   loading, model refill, optimizer restore and hashing are inside.
   ``--ray``: each audit is repeated with the same sample (same auditor seed) on a local
   Ray instance (``ray.init(num_cpus=2)``, started before the first audit; every other
   round Ray goes first), the reports are checked equal, and the replay phase's wall time
   is compared: the overhead ratio Ray / local, with the local segments' duration (the
   target is for segments of 1 s or more) and Ray's own share (its wall time minus the
   segments' replay time inside the tasks). A first Ray
   audit (another sample) warms the Ray workers up and is reported on its own (cold).
2. verify-log: builds a log of N entries with the library, serves it, and times the
   auditor's full recomputation from entry bundles and hash tiles over HTTP.

    .venv/bin/python scripts/bench_auditor.py                 # digits-mlp + 1M entries
    .venv/bin/python scripts/bench_auditor.py --entries 0 --ray   # local vs Ray replay
                                                    # (wide-mlp, 2 epochs, 4 samples)
    .venv/bin/python scripts/bench_auditor.py --entries 200000 --recipe wide-mlp --epochs 2 \
        --samples 4
    .venv/bin/python scripts/bench_auditor.py --entries 0 --recipe tiny-gpt --epochs 2 \
        --samples 4 --repeats 5                                 # the language model
    .venv/bin/python scripts/bench_auditor.py --entries 0 --recipe tiny-gpt --epochs 1 \
        --device cuda --set n_layer=12 n_head=12 n_embd=768 block=1024   # on a GPU

``--device``: training, replay and the plain loop all run there (the audit replays with
``--device`` too, so the run's and the auditor's device types agree: exact mode).
``--set``: recipe settings (as ``potd prover train --set``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from auditor.audit import Audit, AuditOptions  # noqa: E402
from auditor.logview import fetch_entries, verify_tiles  # noqa: E402
from ledger.client import LogClient  # noqa: E402
from ledger.devserver import ServerProcess  # noqa: E402
from ledger.log import Log  # noqa: E402
from ledger.note import Signer  # noqa: E402
from prover.recipes import get_recipe  # noqa: E402
from prover.session import TrainingSession  # noqa: E402


def replay_bench(d: Path, recipe: str, epochs: int, samples: int,
                 repeats: int = 1, ray: bool = False, device: str = "cpu",
                 settings: dict[str, Any] | None = None) -> dict[str, object]:
    settings = settings or {}
    key = Signer.generate("bench.example/replay-log")
    (d / "r.key").write_text(key.private_string())
    Log.create(str(d / "r.db"), key).store.close()
    with ServerProcess(str(d / "r.db"), str(d / "r.key"), extra=["--open-registration"]) as srv:
        sess = TrainingSession(get_recipe(recipe, **{"epochs": epochs, **settings}),
                               LogClient(srv.url, key.verifier),
                               Signer.generate("bench.example/trainer"), d / "ev", d / "sp",
                               device=device)
        sess.open()
        step_s: dict[int, float] = {}
        for b in sess.batches():
            t = time.perf_counter()
            sess.train_step(b)
            step_s[b.step] = time.perf_counter() - t
        sess.close()
        rounds = []
        with LogClient(srv.url, key.verifier, proofs="tiles") as c:
            cold = None
            if ray:  # the first tasks start Ray's workers (torch import, recipe, data):
                # timed once here; the rounds then measure workers as a cluster keeps them
                w = Audit(c, AuditOptions(run=sess.run_id, evidence=str(d / "ev"),
                                          samples=samples, memorization_segments=0,
                                          seed=b"w" * 32, ray="auto")).run()
                cold = w["timing"]["replay_seconds"]
            for i in range(repeats):
                seed = bytes([i]) * 32

                def audit(seed: bytes = seed, **kw: Any) -> dict[str, Any]:
                    return Audit(c, AuditOptions(run=sess.run_id, evidence=str(d / "ev"),
                                                 samples=samples, memorization_segments=0,
                                                 seed=seed, **kw)).run()

                # with --ray, every other round audits on Ray first (a load that changes
                # during the round then favours neither side)
                rr = audit(ray="auto") if ray and i % 2 else None
                rep = audit(device=device)
                rr = audit(ray="auto") if ray and rr is None else rr
                ray_s = ray_wall = ray_tasks = None
                if rr is not None:
                    assert rr["verdict"] == rep["verdict"]
                    assert _comparable(rr["replay"]) == _comparable(rep["replay"])
                    ray_wall = rr["timing"]["replay_seconds"]
                    ray_tasks = sum(float(s["seconds"]) for s in rr["replay"]["segments"])
                    ray_s = ray_wall / rep["timing"]["replay_seconds"]
                segs = rep["replay"]["segments"]
                replayed = [t for s in segs for t in range(s["start"], s["end"] + 1)]
                replay_s = sum(s["seconds"] for s in segs)
                rounds.append({"verdict": rep["verdict"], "segments": len(segs),
                               "steps": len(replayed), "replay": replay_s,
                               "train": sum(step_s[t] for t in replayed),
                               "plain": _plain_seconds(recipe, epochs, replayed, device,
                                                       settings),
                               "segment_seconds": statistics.median(
                                   float(s["seconds"]) for s in segs),
                               "local_replay_wall": rep["timing"]["replay_seconds"],
                               "ray_replay_wall": ray_wall, "ray_over_local": ray_s,
                               # the segments' own replay time inside the Ray tasks (the
                               # rest of the Ray wall time: scheduling, transfer, waiting)
                               "ray_task_seconds": ray_tasks})
    import torch

    med = {k: statistics.median(float(r[k]) for r in rounds)
           for k in ("steps", "replay", "train", "plain")}
    ratio = statistics.median(float(r["replay"]) / float(r["train"]) for r in rounds)
    ratio_plain = statistics.median(float(r["replay"]) / float(r["plain"]) for r in rounds)
    return {"recipe": recipe, "verdict": ",".join(sorted({str(r["verdict"]) for r in rounds})),
            "segments": rounds[0]["segments"], "steps_replayed": med["steps"],
            "repeats": repeats, "threads": torch.get_num_threads(), "device": device,
            "replay_mode": str(rep["replay"].get("mode")),
            "replay_seconds": round(med["replay"], 3),
            "original_training_seconds": round(med["train"], 3),
            "plain_training_seconds": round(med["plain"], 3),
            "ratio": round(ratio, 3), "ratio_vs_plain": round(ratio_plain, 3),
            "ratios_vs_plain": [round(float(r["replay"]) / float(r["plain"]), 3)
                                for r in rounds],
            "segment_seconds": round(statistics.median(float(r["segment_seconds"])
                                                       for r in rounds), 3),
            "ray_cold_replay_seconds": cold if ray else None,
            "ray_over_local": (round(statistics.median(float(r["ray_over_local"])
                                                       for r in rounds), 3) if ray else None),
            "rounds": rounds}


def _comparable(report: Any) -> Any:
    """A report part without timings (a Ray audit's report is the local one otherwise)."""
    if isinstance(report, dict):
        return {k: _comparable(v) for k, v in report.items() if k != "seconds"}
    if isinstance(report, list):
        return [_comparable(v) for v in report]
    return report


def _plain_seconds(recipe_name: str, epochs: int, steps: list[int], device: str = "cpu",
                   settings: dict[str, Any] | None = None) -> float:
    """The same steps trained by a plain loop without the prover (a stricter baseline)."""
    import torch

    from prover.datasets import as_datasets
    from prover.derive import batch_indexes, schedule
    from prover.device import to_device
    from prover.recipes import train_step

    dev = torch.device(device)
    r = get_recipe(recipe_name, **{"epochs": epochs, **(settings or {})})
    data = as_datasets(r.data()).train
    model, seed = r.model().to(dev), bytes(32)
    opt = r.optimizer(model)
    plan = schedule(len(data), r.batch_size, r.epochs)
    total = 0.0
    cache: dict[tuple[bytes, int, int], list[int]] = {}
    for step, epoch, off in plan[:max(steps) + 1]:
        idx = torch.tensor(batch_indexes(seed, len(data), r.batch_size, step, epoch, off,
                                         cache))
        t = time.perf_counter()
        x, y = data.batch(idx)
        train_step(r, model, opt, to_device(x, dev), to_device(y, dev), seed, step)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if step in steps:
            total += time.perf_counter() - t
    return total


def verify_log_bench(d: Path, n: int) -> dict[str, object]:
    key = Signer.generate("bench.example/big-log")
    (d / "big.key").write_text(key.private_string())
    log = Log.create(str(d / "big.db"), key)
    t = time.perf_counter()
    for k in range(0, n, 1000):
        log.append([b"entry %09d " % i + b"x" * 180 for i in range(k, min(n, k + 1000))])
    build_s = time.perf_counter() - t
    log.store.close()
    with ServerProcess(str(d / "big.db"), str(d / "big.key")) as srv:
        with LogClient(srv.url, key.verifier) as c:
            t = time.perf_counter()
            cp = c.checkpoint()
            snap = fetch_entries(c, cp)
            t_entries = time.perf_counter() - t
            tiles = verify_tiles(c, snap)
            total = time.perf_counter() - t
    return {"entries": n, "build_seconds": round(build_s, 2),
            "fetch_and_rehash_seconds": round(t_entries, 2), "tiles": tiles,
            "total_seconds": round(total, 2), "entries_per_second": round(n / total)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--recipe", help="default digits-mlp; with --ray wide-mlp (segments of "
                    "10 steps, over 1 s each)")
    ap.add_argument("--epochs", type=int, help="default 3; with --ray 2")
    ap.add_argument("--samples", type=int,
                    help="segments replayed per audit (0: skip the replay benchmark; "
                         "default 8, with --ray 4)")
    ap.add_argument("--threads", type=int,
                    help="torch threads for training, replay and the plain loop alike "
                         "(default: torch's default)")
    ap.add_argument("--repeats", type=int,
                    help="audits of the same run; medians are reported (default 5, with --ray 3)")
    ap.add_argument("--entries", type=int, default=1_000_000,
                    help="log size for the verify-log benchmark (0: skip it)")
    ap.add_argument("--ray", action="store_true",
                    help="also replay each audit's sample on a local Ray instance (2 CPUs)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:INDEX (default cpu)")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="recipe settings, e.g. n_layer=12 n_head=12 n_embd=768 block=1024")
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args()
    args.recipe = args.recipe or ("wide-mlp" if args.ray else "digits-mlp")
    args.epochs = args.epochs or (2 if args.ray else 3)
    args.repeats = args.repeats or (3 if args.ray else 5)
    args.samples = args.samples if args.samples is not None else 4 if args.ray else 8
    from ledger.errors import PotdError
    from prover.device import parse_device
    from prover.recipes.settings import parse_settings

    try:
        device, settings = str(parse_device(args.device)), parse_settings(tuple(args.set))
    except PotdError as e:
        ap.error(f"{e.message} ({e.hint})")
    if args.ray:
        import ray

        t = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        print(f"ray.init (local, 2 CPUs): {time.perf_counter() - t:.1f}s", flush=True)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as td:
        d = Path(td)
        if args.samples > 0:
            out["replay"] = r = replay_bench(d, args.recipe, args.epochs, args.samples,
                                             args.repeats, args.ray, device, settings)
            print(f"replay   {r['recipe']}: {r['steps_replayed']} steps in {r['segments']} "
                  f"segments replayed in {r['replay_seconds']}s vs "
                  f"{r['original_training_seconds']}s of "
                  f"original training: ratio {r['ratio']}; vs {r['plain_training_seconds']}s of "
                  f"plain training without the prover: ratio {r['ratio_vs_plain']} "
                  f"(medians of {r['repeats']} audits, ratios {r['ratios_vs_plain']}; "
                  f"{r['threads']} torch threads; device {r['device']}, "
                  f"{r['replay_mode']} mode; verdict {r['verdict']})", flush=True)
            if args.ray:
                rounds: Any = r["rounds"]
                walls = [x["local_replay_wall"] for x in rounds]
                seg = float(r["segment_seconds"])  # type: ignore[arg-type]
                print(f"ray      replay phase on Ray / local (same segments, same report): "
                      f"{r['ray_over_local']} (median of {r['repeats']}: "
                      f"{[round(x['ray_over_local'], 3) for x in rounds]}; local replay phase "
                      f"{statistics.median(walls):.3f}s, Ray "
                      f"{statistics.median(x['ray_replay_wall'] for x in rounds):.3f}s, of "
                      f"which inside the tasks' replays "
                      f"{statistics.median(x['ray_task_seconds'] for x in rounds):.3f}s vs "
                      f"{statistics.median(x['replay'] for x in rounds):.3f}s locally; "
                      f"segments of {seg:.2f}s (median, local); the first, cold Ray audit's "
                      f"replay phase {r['ray_cold_replay_seconds']}s)", flush=True)
                ratio = float(r["ray_over_local"])  # type: ignore[arg-type]
                verdict = (f"{ratio}x, {'met' if ratio <= 1.3 else 'missed'}" if seg >= 1 else
                           f"not measured: segments of {seg:.2f}s are shorter than 1 s (use a "
                           "larger recipe, e.g. the --ray default wide-mlp)")
                print(f"ray      target <= 1.3x for segments >= 1 s: {verdict}",
                      flush=True)
                own = statistics.median((x["ray_replay_wall"] - x["ray_task_seconds"])
                                        / x["local_replay_wall"] for x in rounds)
                print(f"ray      Ray's own share (replay phase wall minus the segments' replay "
                      f"time inside the tasks, over the local phase; meaningful when the "
                      f"tasks run one at a time): {own:+.1%} (median)", flush=True)
        if args.entries > 0:
            out["verify_log"] = v = verify_log_bench(d, args.entries)
            print(f"verify-log {v['entries']:,} entries + {v['tiles']} tiles over HTTP in "
                  f"{v['total_seconds']}s: {v['entries_per_second']:,} entries/s "
                  f"(entries+rehash {v['fetch_and_rehash_seconds']}s)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
