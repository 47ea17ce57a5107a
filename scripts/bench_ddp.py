#!/usr/bin/env python3
r"""Data-parallel prover overhead: 2 gloo ranks, the prover vs plain DDP, in the same run.

Alternates ``--rounds`` times, on the same recipe, data and machine:

* plain DDP: 2 spawned ranks train ``--steps`` steps with DistributedDataParallel (the
  same shard split and gradient-weighting hook the prover uses, no potd);
* prover: ``potd``'s :class:`prover.distributed.DataParallelSession` (rank 0, this
  process, against a real log server on a loopback port) and a spawned rank 1 train a
  run of the same recipe: per-step weights hashes all-gathered and checked, statements
  signed, spooled and streamed to the log, evidence every k steps.

Every variant trains the same recipe, data set, model shape, batch split and thread
count (plain DDP with a fixed seed; the prover's seed comes from the log, so its batch
order and initial weights differ, not the work per step); each round starts with
another variant (plain, prover, ...; then prover, ..., plain; ...), and the first
``--warmup`` steps of every run (default 8) are left out of every figure.

Reports rank 0's median and mean step time for each and the overhead (prover / plain - 1),
medians over the rounds; the time to train (wall time from the first step to the end of
the last: for the prover, the last step's agreement), over all rounds and per round;
rank 0's CPU time per step (all its threads: a machine shared with other jobs inflates
wall time far more than CPU time), and the CPU time per step the prover's other
processes on the same machine use while the ranks train (its commit process, which
signs, spools and submits the statements, and the loopback log server); and the CPU per
step of all of them together (both ranks, plus the prover's two), against plain DDP's
two ranks: on a machine whose cores the ranks fill, the prover's extra CPU comes out of
the ranks' time.

``--aa`` runs plain DDP a second time in every round (an A/A run, in the same rotation)
and prints its overheads over the first beside the prover's (A/B): median step, time to
train and CPU of all processes, the median and range over the rounds. Two runs of the
same code differ by that much here: a prover overhead inside the A/A range is noise.

    .venv/bin/python scripts/bench_ddp.py --rounds 3 --threads 1     # tiny-gpt, 36 steps
    .venv/bin/python scripts/bench_ddp.py --rounds 3 --threads 1 \
        --set n_embd=128 n_layer=4 n_head=4 block=128               # 0.8M parameters

``--profile`` adds, for rank 0 and rank 1 of the prover runs, each part's wall and CPU
time per step (medians over the rounds' steps): ``step`` (the whole train_step, on the
training thread), ``submit`` (the step's agreement started: ``hash``, the weights;
``examples``, the shard digests), ``launch`` (two ranks on the CPU: the next step's
last gradient bucket all-reduced with the rows, the whole hook, which plain DDP's
``mul_`` and all-reduce of the bucket would cost too; else starting the rows' own
all-gather), ``wait`` (the next update waiting for it: ``gather``, reading the rows
(the all-gather's end, with the wait for the slower rank, where it has its own); the
check; ``record``, rank 0's hand-off to the commit process); and the
CPU per step of rank 0's threads by name (``native``: torch's and gloo's own). With
large weights the agreement runs on a thread (``potd-agreement``) and ``gather`` is
the whole all-gather there.
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
from prover.agreement import StepProfile, timed  # noqa: E402
from prover.datasets import as_datasets, call_data  # noqa: E402
from prover.derive import permutation, schedule, shard_bounds  # noqa: E402
from prover.distributed import (  # noqa: E402
    DataParallelSession,
    DataParallelWorker,
    _Share,
    _weighted_allreduce,
    free_address,
    init_process_group,
    start_local,
    stop_local,
)
from prover.recipes import get_recipe, train_step  # noqa: E402

SEED = bytes(32)
BENCH_ENV = "POTD_BENCH_DDP"  # BenchWorker's settings (JSON), set before start_local


class BenchSession(DataParallelSession):
    """Rank 0; ``sync``: wait for each step's agreement before returning, as the prover
    did before the agreement ran beside the next step (``--compare-sync``)."""

    sync = False

    def train_step(self, batch: Any) -> float:
        loss = super().train_step(batch)
        if self.sync:
            self._agreement.wait()
        return loss


class BenchWorker(DataParallelWorker):
    """Rank 1: ``sync`` as :class:`BenchSession`; with a ``profile`` path it times its
    parts and writes them there (JSON) when it closes."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.bench = json.loads(os.environ[BENCH_ENV])
        self.profile = StepProfile() if self.bench["profile"] else None

    def train_step(self, batch: Any) -> float:
        with timed(self.profile, "step"):
            loss = super().train_step(batch)
            if self.bench["sync"]:
                self._agreement.wait()
            return loss

    def close(self) -> None:
        super().close()
        if self.profile is not None:
            Path(self.bench["profile"]).write_text(json.dumps(self.profile.parts))


def plain_rank(rank: int, world: int, address: str, spec: str, config: dict[str, Any],
               steps: int, out: Any, threads: int, warmup: int = 0) -> None:
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
    start, cpu0 = time.perf_counter(), time.process_time()
    for step, epoch, offset in schedule(len(data), r.batch_size, r.epochs)[:steps]:
        if step == warmup:  # what the warm-up steps cost is left out, as for the prover
            start, cpu0 = time.perf_counter(), time.process_time()
        if epoch != current:
            order, current = permutation(SEED, len(data), epoch), epoch
        idx = order[offset:offset + r.batch_size]
        lo, hi = shard_bounds(len(idx), world)[rank]
        x, y = data.batch(idx[lo:hi])
        share.weight = (hi - lo) / len(idx)
        t0, c0 = time.perf_counter(), time.process_time()
        train_step(r, ddp, opt, x, y, SEED, step)
        if step >= warmup:
            times.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
    total, cpu = time.perf_counter() - start, time.process_time() - cpu0
    out.put((rank, times, cpus, total, cpu / len(times)))  # cpu: the whole process's
    dist.destroy_process_group()


def plain(spec: str, config: dict[str, Any], steps: int, warmup: int = 0
          ) -> tuple[list[float], list[float], float, float]:
    """Rank 0's step times and CPU, the time to train, and both ranks' CPU per step (all
    after the first ``warmup`` steps)."""
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    address = free_address()
    procs = [ctx.Process(target=plain_rank, args=(r, 2, address, spec, config, steps, q,
                                                  torch.get_num_threads(), warmup))
             for r in range(2)]
    for p in procs:
        p.start()
    got = sorted(q.get(timeout=1800) for _ in procs)
    for p in procs:
        p.join()
    _, times, cpus, total, _ = got[0]
    return times, cpus, total, sum(g[4] for g in got)


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """CPU time (user + system) the process ``pid`` (or its thread ``tid``) has used so
    far (Linux; else 0)."""
    stat = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def task_cpu(pid: int) -> float:
    """CPU seconds the threads of process ``pid`` alive now have used (Linux schedstat,
    nanoseconds; else :func:`cpu_seconds`): a rank's, whose threads live as long as it."""
    try:
        return sum(int(Path(f"/proc/{pid}/task/{t}/schedstat").read_text().split()[0])
                   for t in os.listdir(f"/proc/{pid}/task")) / 1e9
    except (OSError, ValueError, IndexError):
        return cpu_seconds(pid)


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds used so far by each thread of process ``pid`` (Linux; else empty)."""
    out = {}
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            out[int(t)] = cpu_seconds(pid, int(t))
    except OSError:
        pass
    return out


def by_thread_name(before: dict[int, float], after: dict[int, float], steps: int
                   ) -> dict[str, float]:
    """CPU seconds per step of this process's threads between two :func:`thread_cpu`
    readings, by Python thread name (threads Python did not start: ``native``)."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid, c in after.items():
        name = "main" if tid == os.getpid() else names.get(tid, "native")
        out[name] = out.get(name, 0.0) + (c - before.get(tid, 0.0)) / steps
    return out


def prover(d: Path, url: str, log_key: Signer, spec: str, config: dict[str, Any],
           steps: int, tag: str, server_pid: int, profiles: list[StepProfile] | None = None,
           sync: bool = False, warmup: int = 0
           ) -> tuple[list[float], list[float], dict[str, float]]:
    """Rank 0's step times, and the CPU seconds per step that the commit process and the
    log server (sharing the machine with the ranks) used during the steps, and
    ``cpu["train"]``: the wall seconds from the first step to the last step's agreement
    (the time to train, the plain run's loop's counterpart), and ``cpu["ranks"]``: both
    ranks' CPU seconds per step (all their threads). ``profiles``:
    add rank 0's and rank 1's part timings to these two. ``sync``: each step waits for
    its agreement (see :class:`BenchSession`). All after the first ``warmup`` steps."""
    r = get_recipe(spec, **config)
    out = d / f"{tag}-rank1.json"
    os.environ[BENCH_ENV] = json.dumps({"profile": str(out) if profiles is not None else None,
                                        "sync": sync})
    procs = start_local(r, 2, worker="bench_ddp:BenchWorker")
    s = BenchSession(r, LogClient(url, log_key.verifier),
                     Signer.generate("bench.example/trainer"), d / f"ev-{tag}",
                     d / f"{tag}.spool")
    s.sync = sync
    if profiles is not None:
        s.profile = profiles[0]
    s.open()
    assert s._committer is not None
    pids = {"commit_process": s._committer.proc.pid, "log_server": server_pid}

    def readings() -> tuple[Any, ...]:
        return ({k: cpu_seconds(p) for k, p in pids.items()}, thread_cpu(os.getpid()),
                task_cpu(procs[0].pid), time.perf_counter(), time.process_time())

    before, threads0, rank1, start, cpu0 = readings()
    times, cpus = [], []
    for b in s.batches():
        if b.step == warmup:  # what the warm-up steps cost is left out, as for plain DDP
            before, threads0, rank1, start, cpu0 = readings()
        t0, c0 = time.perf_counter(), time.process_time()
        s.train_step(b)
        if b.step >= warmup:
            times.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
    s._agreement.wait()  # the last step agreed (and handed to the commit process)
    train, rank0 = time.perf_counter() - start, time.process_time() - cpu0
    rank1 = task_cpu(procs[0].pid) - rank1
    cpu = {k: (cpu_seconds(p) - before[k]) / len(times) for k, p in pids.items()}
    cpu["train"], cpu["ranks"] = train, (rank0 + rank1) / len(times)
    threads = by_thread_name(threads0, thread_cpu(os.getpid()), len(times))
    s.close()
    stop_local(procs)
    if profiles is not None:
        profiles[0].parts.setdefault("step", []).extend(zip(times, cpus, strict=True))
        for name, c in threads.items():  # CPU only: one value per run
            profiles[0].parts.setdefault(f"thread {name}", []).append((0.0, c))
        for part, xs in json.loads(out.read_text()).items():
            profiles[1].parts.setdefault(part, []).extend(tuple(x) for x in xs)
    return times[:steps], cpus[:steps], cpu


def spread_of(xs: list[float]) -> dict[str, float]:
    """Median, smallest and largest of ``xs`` (the rounds' values)."""
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


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
    ap.add_argument("--profile", action="store_true",
                    help="also print each part's wall and CPU time per step on rank 0 "
                         "and rank 1 (see above)")
    ap.add_argument("--compare-sync", action="store_true",
                    help="each round also runs the prover with every step waiting for its "
                         "agreement (the agreement on the critical path, as before it ran "
                         "beside the next step): overhead of both over plain DDP")
    ap.add_argument("--aa", action="store_true",
                    help="each round also runs plain DDP a second time (an A/A run): its "
                         "overheads over the first show how far two runs of the same code "
                         "differ here, the noise to read the prover's overheads against")
    ap.add_argument("--warmup", type=int, default=8,
                    help="steps at the start of every run left out of the step times, the "
                         "time to train and the CPU per step (default 8)")
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from prover.recipes.settings import parse_settings

    config = {**parse_settings(tuple(args.set)), "epochs": args.epochs}
    r = get_recipe(args.recipe, **config)
    steps = len(schedule(len(as_datasets(call_data(r)).train), r.batch_size, r.epochs))
    if not 0 <= args.warmup < steps:
        ap.error(f"--warmup must be from 0 to {steps - 1} (this run has {steps} steps)")
    rounds: list[dict[str, float]] = []
    all_steps: dict[str, list[float]] = {"plain": [], "prover": [], "sync": [], "aa": []}
    profiles = [StepProfile(), StepProfile()] if args.profile else None
    variants = ["plain", "prover"] + (["sync"] if args.compare_sync else []) \
        + (["aa"] if args.aa else [])
    with tempfile.TemporaryDirectory() as td:
        d = Path(td)
        key = Signer.generate("bench.example/ddp-log")
        (d / "l.key").write_text(key.private_string())
        Log.create(str(d / "l.db"), key).store.close()
        with ServerProcess(str(d / "l.db"), str(d / "l.key"),
                           extra=["--open-registration"]) as srv:
            for i in range(args.rounds):
                # each round starts with another variant (the first run of a round may
                # find the caches, the page cache and the other jobs otherwise)
                order = variants[i % len(variants):] + variants[:i % len(variants)]
                got: dict[str, Any] = {}
                for v in order:
                    if v in ("plain", "aa"):
                        got[v] = plain(r.spec, config, steps, args.warmup)
                    else:
                        got[v] = prover(d, srv.url, key, r.spec, config, steps, f"{v}{i}",
                                        srv.proc.pid, profiles if v == "prover" else None,
                                        sync=v == "sync", warmup=args.warmup)
                p, pc, ptrain, pranks = got["plain"]
                q, qc, cpu = got["prover"]
                rounds.append({"plain_median": statistics.median(p),
                               "prover_median": statistics.median(q),
                               "plain_mean": statistics.mean(p),
                               "prover_mean": statistics.mean(q),
                               "plain_cpu_median": statistics.median(pc),
                               "prover_cpu_median": statistics.median(qc),
                               "commit_process_cpu": cpu["commit_process"],
                               "log_server_cpu": cpu["log_server"],
                               "plain_train": ptrain, "prover_train": cpu["train"],
                               "plain_total_cpu": pranks,
                               "prover_total_cpu": cpu["ranks"] + cpu["commit_process"]
                               + cpu["log_server"]})
                rounds[-1]["train_overhead"] = cpu["train"] / ptrain - 1
                rounds[-1]["overhead"] = rounds[-1]["prover_median"] / \
                    rounds[-1]["plain_median"] - 1
                rounds[-1]["cpu_overhead"] = rounds[-1]["prover_cpu_median"] / \
                    rounds[-1]["plain_cpu_median"] - 1
                all_steps["plain"] += p
                all_steps["prover"] += q
                sync = aa = ""
                if args.compare_sync:
                    w, wc, _ = got["sync"]
                    all_steps["sync"] += w
                    rounds[-1].update(sync_median=statistics.median(w),
                                      sync_cpu_median=statistics.median(wc))
                    rounds[-1]["sync_overhead"] = rounds[-1]["sync_median"] / \
                        rounds[-1]["plain_median"] - 1
                    sync = (f"; agreement waited for at each step "
                            f"{rounds[-1]['sync_median'] * 1e3:.3f} ms: "
                            f"{rounds[-1]['sync_overhead']:+.1%}, CPU "
                            f"{rounds[-1]['sync_cpu_median'] * 1e3:.3f} ms")
                if args.aa:  # plain DDP against itself: what the same code differs by
                    a, _, atrain, aranks = got["aa"]
                    all_steps["aa"] += a
                    rounds[-1].update(aa_median=statistics.median(a), aa_train=atrain,
                                      aa_total_cpu=aranks)
                    rounds[-1]["aa_overhead"] = rounds[-1]["aa_median"] / \
                        rounds[-1]["plain_median"] - 1
                    rounds[-1]["aa_train_overhead"] = atrain / ptrain - 1
                    aa = (f"; A/A (plain DDP again): median step "
                          f"{rounds[-1]['aa_overhead']:+.1%}, time to train "
                          f"{rounds[-1]['aa_train_overhead']:+.1%}, CPU per step of all "
                          f"processes {(aranks - pranks) * 1e3:+.2f} ms")
                print(f"round {i} ({', '.join(order)}): plain DDP "
                      f"{rounds[-1]['plain_median'] * 1e3:.3f} ms, "
                      f"prover {rounds[-1]['prover_median'] * 1e3:.3f} ms per step (median, "
                      f"rank 0, {len(p)} steps): {rounds[-1]['overhead']:+.1%}; rank 0's CPU "
                      f"per step {rounds[-1]['plain_cpu_median'] * 1e3:.3f} / "
                      f"{rounds[-1]['prover_cpu_median'] * 1e3:.3f} ms; CPU per step "
                      f"of the commit process {cpu['commit_process'] * 1e3:.2f} ms, of the "
                      f"log server {cpu['log_server'] * 1e3:.2f} ms; time to train "
                      f"{ptrain:.3f} / {cpu['train']:.3f} s "
                      f"({rounds[-1]['train_overhead']:+.1%}); CPU per step of all "
                      f"processes {pranks * 1e3:.2f} / "
                      f"{rounds[-1]['prover_total_cpu'] * 1e3:.2f} ms; load average "
                      f"{os.getloadavg()[0]:.1f}{sync}{aa}", flush=True)
    med = {k: statistics.median(x[k] for x in rounds) for k in rounds[0]}
    out = {"recipe": args.recipe, "steps": steps, "warmup": args.warmup, "rounds": rounds,
           "overhead_median": round(med["prover_median"] / med["plain_median"] - 1, 3),
           "overhead_mean": round(med["prover_mean"] / med["plain_mean"] - 1, 3),
           "overhead_rounds_median": round(med["overhead"], 3),
           "plain_median_ms": round(med["plain_median"] * 1e3, 3),
           "prover_median_ms": round(med["prover_median"] * 1e3, 3),
           "plain_cpu_ms": round(med["plain_cpu_median"] * 1e3, 3),
           "prover_cpu_ms": round(med["prover_cpu_median"] * 1e3, 3),
           "cpu_overhead": round(med["prover_cpu_median"] / med["plain_cpu_median"] - 1, 3),
           "cpu_overhead_rounds_median": round(med["cpu_overhead"], 3),
           "commit_process_cpu_ms": round(med["commit_process_cpu"] * 1e3, 3),
           "log_server_cpu_ms": round(med["log_server_cpu"] * 1e3, 3),
           "plain_train_s": round(med["plain_train"], 3),
           "prover_train_s": round(med["prover_train"], 3),
           "train_overhead_rounds_median": round(med["train_overhead"], 3),
           "train_overhead_total": round(sum(x["prover_train"] for x in rounds)
                                         / sum(x["plain_train"] for x in rounds) - 1, 3),
           "plain_total_cpu_ms": round(med["plain_total_cpu"] * 1e3, 3),
           "prover_total_cpu_ms": round(med["prover_total_cpu"] * 1e3, 3),
           "extra_cpu_ms_rounds_median": round(statistics.median(
               x["prover_total_cpu"] - x["plain_total_cpu"] for x in rounds) * 1e3, 3),
           "threads": torch.get_num_threads(), "set": args.set,
           "load_average": os.getloadavg()[0]}
    pooled = {k: statistics.median(v) for k, v in all_steps.items() if v}
    out["overhead_all_steps_median"] = round(pooled["prover"] / pooled["plain"] - 1, 3)
    if args.compare_sync:
        out["sync_median_ms"] = round(med["sync_median"] * 1e3, 3)
        out["sync_overhead_median"] = round(med["sync_median"] / med["plain_median"] - 1, 3)
        out["sync_overhead_all_steps_median"] = round(pooled["sync"] / pooled["plain"] - 1, 3)
        out["sync_cpu_ms"] = round(med["sync_cpu_median"] * 1e3, 3)
    if args.aa:
        def spread(key: str) -> dict[str, float]:
            xs = [x[key] for x in rounds]
            return {"median": round(statistics.median(xs), 3), "min": round(min(xs), 3),
                    "max": round(max(xs), 3),
                    "median_abs": round(statistics.median(abs(x) for x in xs), 3)}

        out["aa"] = {"overhead": spread("aa_overhead"),
                     "train_overhead": spread("aa_train_overhead"),
                     "overhead_all_steps_median": round(pooled["aa"] / pooled["plain"] - 1, 3),
                     "train_overhead_total": round(sum(x["aa_train"] for x in rounds)
                                                   / sum(x["plain_train"] for x in rounds)
                                                   - 1, 3),
                     "extra_cpu_ms": {k: round(v * 1e3, 3) for k, v in spread_of(
                         [x["aa_total_cpu"] - x["plain_total_cpu"] for x in rounds]).items()}}
        out["ab"] = {"overhead": spread("overhead"), "train_overhead": spread("train_overhead"),
                     "extra_cpu_ms": {k: round(v * 1e3, 3) for k, v in spread_of(
                         [x["prover_total_cpu"] - x["plain_total_cpu"]
                          for x in rounds]).items()}}
    if profiles is not None:
        out["profile"] = {f"rank{i}": p.summary() for i, p in enumerate(profiles)}
    print(f"DDP 2 ranks, {args.recipe} {' '.join(args.set)}: plain DDP "
          f"{out['plain_median_ms']} ms, prover {out['prover_median_ms']} ms per step; "
          f"prover overhead {out['overhead_median']:+.1%} (median step), "
          f"{out['overhead_mean']:+.1%} (mean step), {out['overhead_rounds_median']:+.1%} "
          f"(median of the rounds' overheads) over plain DDP; {args.rounds} rounds, "
          f"{torch.get_num_threads()} torch threads per rank; rank 0's CPU time per step "
          f"(all its threads, less sensitive to other load than wall time): plain "
          f"{out['plain_cpu_ms']} ms, prover {out['prover_cpu_ms']} ms "
          f"({out['cpu_overhead']:+.1%}; median of the rounds' ratios "
          f"{out['cpu_overhead_rounds_median']:+.1%}); CPU per step of the commit "
          f"process {out['commit_process_cpu_ms']} ms, of the log server "
          f"{out['log_server_cpu_ms']} ms (medians); median of all {len(all_steps['plain'])} "
          f"steps: {out['overhead_all_steps_median']:+.1%}; time to train "
          f"({steps - args.warmup} steps after the warm-up, to the last step's agreement): "
          f"plain {out['plain_train_s']} s, prover "
          f"{out['prover_train_s']} s (medians), {out['train_overhead_total']:+.1%} over "
          f"all rounds, median of the rounds' {out['train_overhead_rounds_median']:+.1%}; "
          f"CPU per step of all processes (both ranks; the prover's commit process and log "
          f"server too): plain {out['plain_total_cpu_ms']} ms, prover "
          f"{out['prover_total_cpu_ms']} ms (medians), the prover's extra "
          f"{out['extra_cpu_ms_rounds_median']} ms (median of the rounds')")
    if args.aa:
        aa, ab = out["aa"], out["ab"]

        def rng(x: dict[str, float], ms: bool = False) -> str:
            f = (lambda v: f"{v:+.2f} ms") if ms else (lambda v: f"{v:+.1%}")
            return f"median {f(x['median'])}, rounds {f(x['min'])} to {f(x['max'])}"

        print(f"noise, A/A (plain DDP against plain DDP, the same rounds): median step "
              f"{rng(aa['overhead'])} (median of all steps "
              f"{aa['overhead_all_steps_median']:+.1%}); time to train "
              f"{rng(aa['train_overhead'])} ({aa['train_overhead_total']:+.1%} over all "
              f"rounds); CPU per step of all processes {rng(aa['extra_cpu_ms'], True)}")
        print(f"A/B (the prover against plain DDP), the same way: median step "
              f"{rng(ab['overhead'])}; time to train {rng(ab['train_overhead'])}; CPU per "
              f"step of all processes {rng(ab['extra_cpu_ms'], True)}")
    if args.compare_sync:
        print(f"with each step waiting for its agreement: {out['sync_median_ms']} ms per "
              f"step, {out['sync_overhead_median']:+.1%} (median step), "
              f"{out['sync_overhead_all_steps_median']:+.1%} (median of all steps); rank 0's "
              f"CPU {out['sync_cpu_ms']} ms")
    if profiles is not None:
        print("per step, medians (means) over the prover rounds' steps, wall / CPU ms:")
        for rank, parts in out["profile"].items():
            for part, v in parts.items():
                if part.startswith("thread "):  # one value per run: CPU per step
                    print(f"  {rank} {part}: CPU {v['cpu_median_ms']:.3f} ms per step "
                          f"(median of {v['n']} runs)")
                    continue
                print(f"  {rank} {part:9} wall {v['wall_median_ms']:8.3f} "
                      f"({v['wall_mean_ms']:.3f})  CPU {v['cpu_median_ms']:8.3f} "
                      f"({v['cpu_mean_ms']:.3f})  n={v['n']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
