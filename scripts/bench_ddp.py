#!/usr/bin/env python3
"""Data-parallel prover overhead: 2 gloo ranks, the prover vs plain DDP, in the same run.

Alternates ``--rounds`` times, on the same recipe, data and machine:

* plain DDP: 2 spawned ranks train ``--steps`` steps with DistributedDataParallel (the
  same shard split and gradient-weighting hook the prover uses, no potd);
* prover: ``potd``'s :class:`prover.distributed.DataParallelSession` (rank 0, this
  process, against a real log server on a loopback port) and a spawned rank 1 train a
  run of the same recipe: per-step weights hashes all-gathered and checked, statements
  signed, spooled and streamed to the log, evidence every k steps.

Reports rank 0's median and mean step time for each and the overhead (prover / plain - 1),
medians over the rounds; rank 0's CPU time per step (all its threads: a machine shared
with other jobs inflates wall time far more than CPU time), and the CPU time per step
the prover's other processes on the same machine use while the ranks train (its commit
process, which signs, spools and submits the statements, and the loopback log server).

    .venv/bin/python scripts/bench_ddp.py --rounds 3 --threads 1     # tiny-gpt, 36 steps
    .venv/bin/python scripts/bench_ddp.py --rounds 3 --threads 1 \
        --set n_embd=128 n_layer=4 n_head=4 block=128               # 0.8M parameters
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from ledger.client import LogClient  # noqa: E402
from ledger.devserver import ServerProcess  # noqa: E402
from ledger.log import Log  # noqa: E402
from ledger.note import Signer  # noqa: E402
from prover.datasets import as_datasets, call_data  # noqa: E402
from prover.derive import permutation, schedule, shard_bounds  # noqa: E402
from prover.distributed import (  # noqa: E402
    DataParallelSession,
    _Share,
    _weighted_allreduce,
    free_address,
    init_process_group,
    start_local,
    stop_local,
)
from prover.recipes import get_recipe, train_step  # noqa: E402

SEED = bytes(32)


def plain_rank(rank: int, world: int, address: str, spec: str, config: dict[str, Any],
               steps: int, out: Any, threads: int) -> None:
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(threads)
    init_process_group(rank, world, address)
    r = get_recipe(spec, **config)
    data = as_datasets(call_data(r)).train
    torch.manual_seed(0)
    model = r.model()
    opt = r.optimizer(model)
    share = _Share()
    ddp = DistributedDataParallel(model)
    ddp.register_comm_hook(share, _weighted_allreduce)
    times, cpus = [], []
    order: list[int] = []
    current = -1
    for step, epoch, offset in schedule(len(data), r.batch_size, r.epochs)[:steps]:
        if epoch != current:
            order, current = permutation(SEED, len(data), epoch), epoch
        idx = order[offset:offset + r.batch_size]
        lo, hi = shard_bounds(len(idx), world)[rank]
        x, y = data.batch(idx[lo:hi])
        share.weight = (hi - lo) / len(idx)
        t0, c0 = time.perf_counter(), time.process_time()
        train_step(r, ddp, opt, x, y, SEED, step)
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    if rank == 0:
        out.put((times, cpus))
    dist.destroy_process_group()


def plain(spec: str, config: dict[str, Any], steps: int) -> tuple[list[float], list[float]]:
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    address = free_address()
    procs = [ctx.Process(target=plain_rank, args=(r, 2, address, spec, config, steps, q,
                                                  torch.get_num_threads()))
             for r in range(2)]
    for p in procs:
        p.start()
    times: tuple[list[float], list[float]] = q.get(timeout=1800)
    for p in procs:
        p.join()
    return times


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process ``pid`` has used so far (Linux; else 0)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def prover(d: Path, url: str, log_key: Signer, spec: str, config: dict[str, Any],
           steps: int, tag: str, server_pid: int
           ) -> tuple[list[float], list[float], dict[str, float]]:
    """Rank 0's step times, and the CPU seconds per step that the commit process and the
    log server (sharing the machine with the ranks) used during the steps."""
    r = get_recipe(spec, **config)
    procs = start_local(r, 2)
    s = DataParallelSession(r, LogClient(url, log_key.verifier),
                            Signer.generate("bench.example/trainer"), d / f"ev-{tag}",
                            d / f"{tag}.spool")
    s.open()
    assert s._committer is not None
    pids = {"commit_process": s._committer.proc.pid, "log_server": server_pid}
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    times, cpus = [], []
    for b in s.batches():
        t0, c0 = time.perf_counter(), time.process_time()
        s.train_step(b)
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    cpu = {k: (cpu_seconds(p) - before[k]) / len(times) for k, p in pids.items()}
    s.close()
    stop_local(procs)
    return times[:steps], cpus[:steps], cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--recipe", default="tiny-gpt")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="recipe settings, e.g. n_embd=128 n_layer=4 n_head=4 block=128")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, help="torch threads per rank, both sides "
                    "(default: torch's default)")
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from prover.recipes.settings import parse_settings

    config = {**parse_settings(tuple(args.set)), "epochs": args.epochs}
    r = get_recipe(args.recipe, **config)
    steps = len(schedule(len(as_datasets(call_data(r)).train), r.batch_size, r.epochs))
    rounds = []
    with tempfile.TemporaryDirectory() as td:
        d = Path(td)
        key = Signer.generate("bench.example/ddp-log")
        (d / "l.key").write_text(key.private_string())
        Log.create(str(d / "l.db"), key).store.close()
        with ServerProcess(str(d / "l.db"), str(d / "l.key"),
                           extra=["--open-registration"]) as srv:
            for i in range(args.rounds):
                p, pc = plain(r.spec, config, steps)
                q, qc, cpu = prover(d, srv.url, key, r.spec, config, steps, f"r{i}",
                                    srv.proc.pid)
                rounds.append({"plain_median": statistics.median(p),
                               "prover_median": statistics.median(q),
                               "plain_mean": statistics.mean(p),
                               "prover_mean": statistics.mean(q),
                               "plain_cpu_median": statistics.median(pc),
                               "prover_cpu_median": statistics.median(qc),
                               "commit_process_cpu": cpu["commit_process"],
                               "log_server_cpu": cpu["log_server"]})
                rounds[-1]["overhead"] = rounds[-1]["prover_median"] / \
                    rounds[-1]["plain_median"] - 1
                print(f"round {i}: plain DDP {rounds[-1]['plain_median'] * 1e3:.3f} ms, "
                      f"prover {rounds[-1]['prover_median'] * 1e3:.3f} ms per step (median, "
                      f"rank 0, {steps} steps): {rounds[-1]['overhead']:+.1%}; rank 0's CPU "
                      f"per step {rounds[-1]['plain_cpu_median'] * 1e3:.3f} / "
                      f"{rounds[-1]['prover_cpu_median'] * 1e3:.3f} ms; CPU per step "
                      f"of the commit process {cpu['commit_process'] * 1e3:.2f} ms, of the "
                      f"log server {cpu['log_server'] * 1e3:.2f} ms; load average "
                      f"{os.getloadavg()[0]:.1f}", flush=True)
    med = {k: statistics.median(x[k] for x in rounds) for k in rounds[0]}
    out = {"recipe": args.recipe, "steps": steps, "rounds": rounds,
           "overhead_median": round(med["prover_median"] / med["plain_median"] - 1, 3),
           "overhead_mean": round(med["prover_mean"] / med["plain_mean"] - 1, 3),
           "overhead_rounds_median": round(med["overhead"], 3),
           "plain_median_ms": round(med["plain_median"] * 1e3, 3),
           "prover_median_ms": round(med["prover_median"] * 1e3, 3),
           "plain_cpu_ms": round(med["plain_cpu_median"] * 1e3, 3),
           "prover_cpu_ms": round(med["prover_cpu_median"] * 1e3, 3),
           "cpu_overhead": round(med["prover_cpu_median"] / med["plain_cpu_median"] - 1, 3),
           "commit_process_cpu_ms": round(med["commit_process_cpu"] * 1e3, 3),
           "log_server_cpu_ms": round(med["log_server_cpu"] * 1e3, 3),
           "threads": torch.get_num_threads(), "set": args.set}
    print(f"DDP 2 ranks, {args.recipe} {' '.join(args.set)}: plain DDP "
          f"{out['plain_median_ms']} ms, prover {out['prover_median_ms']} ms per step; "
          f"prover overhead {out['overhead_median']:+.1%} (median step), "
          f"{out['overhead_mean']:+.1%} (mean step), {out['overhead_rounds_median']:+.1%} "
          f"(median of the rounds' overheads) over plain DDP; {args.rounds} rounds, "
          f"{torch.get_num_threads()} torch threads per rank; rank 0's CPU time per step "
          f"(all its threads, less sensitive to other load than wall time): plain "
          f"{out['plain_cpu_ms']} ms, prover {out['prover_cpu_ms']} ms "
          f"({out['cpu_overhead']:+.1%}); CPU per step of the commit "
          f"process {out['commit_process_cpu_ms']} ms, of the log server "
          f"{out['log_server_cpu_ms']} ms (medians)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
