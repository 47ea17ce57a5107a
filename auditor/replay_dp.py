"""Exact replay of a data-parallel run (docs/protocol.md §4.8, §5 step 7).

A run's ``run.open`` commits ``data_parallel`` (world size ``N``, split
``potd-shard-v1``). In exact mode the auditor replays its segments with ``N`` spawned
processes on this machine, as the trainer trained: the same DDP wrapper and
gradient-weighting hook (:mod:`prover.distributed`), each rank its shard of every step's
global batch, on the audit's ``--device`` (gloo on the CPU; NCCL on ``cuda:i``, rank
``r`` on ``cuda:i+r``, as :func:`prover.distributed.rank_device` places the trainer's
ranks; in a Ray task, on the GPUs Ray assigned it: :func:`replay_device`). The weights
hashes must match bit for bit. A device type other than the run's makes the audit
tolerance mode, decided before any replay (:mod:`auditor.calibration`). (Tolerance mode
needs one process replaying the global batch as the ranks split it
(:func:`replay_split`): per shard, the step RNG seeded as each rank seeds it, the
gradients weighted by the shards' shares and summed, then one update; the distance to
the committed checkpoint is judged under the calibrated tolerance. A plain global-batch
replay would draw one dropout mask for the whole batch where the ranks drew one per
shard.)

Rank 0's results travel back as plain data (:class:`~auditor.replay.SegmentResult`
fields). Trusts: the auditor's own processes.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch

from ledger.errors import MalformedError
from prover.derive import SHARD_SPLIT, check_world, shard_bounds

from .replay import SegmentJob, SegmentResult, failed_result, not_replayed

MAX_WORLD = 64  # ranks one auditor machine spawns for an exact replay


def world_size(open_body: dict[str, Any], n_examples: int, batch_size: int) -> int:
    """The committed world size (1 without ``data_parallel``); raises
    :class:`~ledger.errors.MalformedError` for a field no honest prover writes."""
    dp = open_body.get("data_parallel")
    if dp is None:
        return 1
    if not isinstance(dp, dict) or dp.get("split") != SHARD_SPLIT:
        raise MalformedError(f"run.open data_parallel {str(dp)[:80]} does not name the split "
                             f"{SHARD_SPLIT}")
    world = dp.get("world_size")
    if type(world) is not int or not 1 <= world <= MAX_WORLD:
        raise MalformedError(f"run.open data_parallel world_size {str(world)[:20]} is not "
                             f"an integer 1..{MAX_WORLD}")
    try:
        check_world(n_examples, batch_size, world)
    except Exception as e:
        raise MalformedError(f"run.open data_parallel: {e}") from None
    return world


def replay_segments(jobs: list[SegmentJob], world: int, timeout: float = 3600,
                    assigned: bool = False) -> list[SegmentResult]:
    """Replay ``jobs`` in order with ``world`` spawned processes on the jobs' device
    (:func:`rank_devices`; ``assigned``: in a Ray task holding its GPUs); rank 0's
    results."""
    import multiprocessing

    from prover.distributed import free_address

    from .replay import provided

    devices = rank_devices(jobs[0].device if jobs else "cpu", world, assigned)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    address = free_address()
    data = provided(jobs[0]) if jobs else None  # disclosed examples travel to the ranks
    procs = [ctx.Process(target=_rank_main,
                         args=(r, world, address, jobs, out, data, str(dev)),
                         daemon=True, name=f"potd-replay-rank-{r}")
             for r, dev in enumerate(devices)]
    for p in procs:
        p.start()
    try:
        got = out.get(timeout=timeout)
    except Exception:
        got = {"error": "the replay processes ended without a result"}
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join()
    if "error" in got:  # the ranks could not run (replay_shard reports bad evidence)
        return [not_replayed(j, f"data-parallel replay ({world} processes): {got['error']}")
                for j in jobs]
    return [SegmentResult(**r) for r in got["results"]]


def replay_device(base: torch.device | str, rank: int, world: int, visible: int | None,
                  assigned: bool = False) -> torch.device:
    """Where replay rank ``rank`` of ``world`` trains for an audit on ``base`` (its
    ``--device``) with ``visible`` CUDA devices in this process (None: not checked). A
    pure function: the CPU for every rank of a CPU replay. On CUDA, rank ``r`` on
    ``cuda:i+r``, as the trainer's local ranks from ``cuda:i`` (the index ``--device``
    names is honoured); but in a Ray task that asked for GPUs (``assigned``), Ray makes
    the GPUs it assigned the task's only visible ones (``CUDA_VISIBLE_DEVICES``, which the
    spawned ranks inherit) and torch numbers them from 0: rank ``r`` on ``cuda:r``
    whatever the index (one of the auditor's machine, not of the worker's). Each rank gets
    its own GPU; a rank beyond the visible devices is a
    :class:`~ledger.errors.UsageError`."""
    from ledger.errors import UsageError

    base = torch.device(base)
    if base.type != "cuda":
        return torch.device("cpu")
    first = 0 if assigned else base.index or 0
    i = first + rank
    if visible is not None and i >= visible:
        if assigned:
            raise UsageError(f"a Ray task asked for {world} GPUs to replay {world} ranks, "
                             f"but sees {visible} CUDA device{'s' if visible != 1 else ''}",
                             hint="the cluster's GPU resources must match its GPUs "
                                  "(ray start --num-gpus)")
        raise UsageError(f"an exact replay of a {world}-process run on cuda:{first} needs "
                         f"cuda:{first}..cuda:{first + world - 1}, one GPU per rank; this "
                         f"machine has {visible} CUDA device{'s' if visible != 1 else ''}",
                         hint=("give --device cuda:0, " if first and world <= visible
                               else "") + "replay on --ray (a cluster with the GPUs), or "
                              "use --replay-mode tolerance (one process)")
    return torch.device("cuda", i)


def rank_devices(device: str, world: int, assigned: bool = False) -> list[torch.device]:
    """The device of each of ``world`` replay ranks on ``device`` (``cpu`` or ``cuda:i``;
    :func:`replay_device`, counting this process's CUDA devices); a
    :class:`~ledger.errors.UsageError` when this machine lacks one (before any process
    starts)."""
    from prover.device import parse_device

    # in a Ray task the index is the auditor's: only the type is checked here
    base = parse_device(torch.device(device).type if assigned else device)
    count = torch.cuda.device_count() if base.type == "cuda" else None
    return [replay_device(torch.device(device), r, world, count, assigned)
            for r in range(world)]


def _rank_main(rank: int, world: int, address: str, jobs: list[SegmentJob],
               out: Any, data: Any = None, device: str = "cpu") -> None:
    import contextlib

    import torch.distributed as dist

    from prover.distributed import init_process_group

    from .replay import provided_data, trainee

    try:
        init_process_group(rank, world, address, device)
        jobs = [replace(job, device=device) for job in jobs]  # this rank's device
        with contextlib.ExitStack() as stack:
            if data is not None and jobs:  # selective disclosure: no data() here either
                j = jobs[0]  # the recipe replay_shard's trainee uses
                stack.enter_context(provided_data(
                    trainee(j.recipe, j.config, j.data_dir, j.device).recipe, data))
            results = [replay_shard(job, rank, world).to_json() for job in jobs]
        if rank == 0:
            out.put({"results": results})
    except Exception as e:  # noqa: BLE001 — reported as the segments' error
        if rank == 0:
            out.put({"error": f"{type(e).__name__}: {str(e)[:300]}"})
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


_DDP: dict[int, Any] = {}


def _wrapped(model: torch.nn.Module, device: torch.device) -> tuple[Any, Any]:
    """The DDP wrapper of this process's model (built once per model) and its share."""
    from torch.nn.parallel import DistributedDataParallel

    from prover.dp_group import _Share, _weighted_allreduce

    if id(model) not in _DDP:
        share = _Share()
        ddp = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda"
                                      else None)
        ddp.register_comm_hook(share, _weighted_allreduce)
        _DDP[id(model)] = (ddp, share, model)
    ddp, share, _ = _DDP[id(model)]
    return ddp, share


def replay_shard(job: SegmentJob, rank: int, world: int) -> SegmentResult:
    """:func:`auditor.replay.replay_segment` for rank ``rank`` of ``world``: every step on
    this rank's shard of the global batch, through DDP, on ``job.device`` (this rank's
    device; exact mode only)."""
    from ledger.errors import PotdError
    from prover.datasets import as_datasets
    from prover.device import to_device
    from prover.evidence import EvidenceSource
    from prover.recipes import train_step

    from .replay import _end_distances, _end_state_error, recipe_data, trainee

    t0 = time.perf_counter()
    if job.threads:
        torch.set_num_threads(job.threads)
    job = replace(job, exact=True)
    src = EvidenceSource(job.evidence)
    tr = trainee(job.recipe, job.config, job.data_dir, job.device)
    dev = tr.device
    recipe = tr.recipe
    try:
        start_sd = src.load(job.start_weights, job.start_weights_hash, job.algorithm)
        opt_sd = (src.load(job.start_optimizer, job.start_optimizer_hash, job.algorithm)
                  if job.start_optimizer is not None and job.start_optimizer_hash is not None
                  else None)
        data = as_datasets(recipe_data(recipe)).train
        steps = range(job.start, job.end + 1)
        if len(job.batches) != len(steps):
            raise MalformedError(f"segment {job.start}..{job.end} has {len(job.batches)} "
                                 "batches")
        shards = []
        for b in job.batches:
            lo, hi = shard_bounds(len(b), world)[rank]
            shards.append((torch.tensor(b[lo:hi]), (hi - lo) / len(b)))
        checked = 0
        first_bad: int | None = None
        distance = opt_distance = None
        for per_step in (False, True):
            model, opt = tr.load(start_sd, opt_sd)
            ddp, share = _wrapped(model, dev)
            first_bad = None
            for i, step in enumerate(steps):
                idx, share.weight = shards[i]
                x, y = data.batch(idx)
                if dev.type != "cpu":
                    x, y = to_device(x, dev), to_device(y, dev)
                train_step(recipe, ddp, opt, x, y, job.seed, step)
                want = job.step_hashes[i]
                if want is not None and (per_step or step == job.end):
                    checked += 1
                    if tr.weights_hash(job.algorithm) != want:
                        first_bad = step
                        break
            if first_bad is None:
                break
            if not per_step:  # the whole segment (the second pass stops at first_bad)
                distance, opt_distance = _end_distances(src, job, model, opt, start_sd,
                                                        opt_sd)
        match = first_bad is None
        end_error = None
        if match:
            end_error = _end_state_error(tr, opt, job)
            match = end_error is None
            if not match:
                distance, opt_distance = _end_distances(src, job, model, opt, start_sd,
                                                        opt_sd)
        if match and job.step_hashes and job.step_hashes[-1] is None:
            match = False
        return SegmentResult(job.start, job.end, match, first_bad, distance, None,
                             time.perf_counter() - t0, steps_checked=checked,
                             error=end_error, optimizer_distance=opt_distance)
    except PotdError as e:
        return failed_result(job, e, t0)


def split_step(recipe: Any, model: torch.nn.Module, opt: torch.optim.Optimizer,
               x: torch.Tensor, y: torch.Tensor, seed: bytes, step: int, world: int) -> None:
    """One data-parallel step of ``world`` ranks, in this process: each shard through the
    recipe's step (its ``opt.step()`` only collects the weighted gradients), then the
    update with their sum."""
    from prover.recipes import train_step

    params = [p for g in opt.param_groups for p in g["params"]]
    total: list[torch.Tensor | None] = [None] * len(params)
    share = 0.0

    def collect(*_: Any, **__: Any) -> None:
        for i, p in enumerate(params):
            if p.grad is not None:
                g = p.grad * share
                prev = total[i]
                total[i] = g if prev is None else prev + g

    bounds = shard_bounds(len(x), world)
    opt.step = collect  # type: ignore[method-assign,assignment]
    try:
        for lo, hi in bounds:
            share = (hi - lo) / len(x)
            train_step(recipe, model, opt, x[lo:hi], y[lo:hi], seed, step)
    finally:
        del opt.step
    for p, g in zip(params, total, strict=True):
        p.grad = g
    opt.step()


def replay_split(job: SegmentJob, world: int) -> SegmentResult:
    """Tolerance-mode replay of a data-parallel segment in one process
    (:func:`split_step` per step); the distance of its end from the committed checkpoint
    is in the result, judged by the caller."""
    from ledger.errors import PotdError
    from prover.datasets import as_datasets
    from prover.device import to_device
    from prover.evidence import EvidenceSource

    from .replay import _end_distances, recipe_data, trainee

    t0 = time.perf_counter()
    if job.threads:
        torch.set_num_threads(job.threads)
    src = EvidenceSource(job.evidence)
    tr = trainee(job.recipe, job.config, job.data_dir, job.device)
    try:
        start_sd = src.load(job.start_weights, job.start_weights_hash, job.algorithm)
        opt_sd = (src.load(job.start_optimizer, job.start_optimizer_hash, job.algorithm)
                  if job.start_optimizer is not None and job.start_optimizer_hash is not None
                  else None)
        data = as_datasets(recipe_data(tr.recipe)).train
        steps = range(job.start, job.end + 1)
        if len(job.batches) != len(steps):
            raise MalformedError(f"segment {job.start}..{job.end} has {len(job.batches)} "
                                 "batches")
        model, opt = tr.load(start_sd, opt_sd)
        for i, step in enumerate(steps):
            idx = torch.tensor(job.batches[i])
            x, y = data.batch(idx)
            if tr.device.type != "cpu":
                x, y = to_device(x, tr.device), to_device(y, tr.device)
            split_step(tr.recipe, model, opt, x, y, job.seed, step, world)
        distance, opt_distance = _end_distances(src, job, model, opt, start_sd, opt_sd)
        return SegmentResult(job.start, job.end, False, None, distance, None,
                             time.perf_counter() - t0, optimizer_distance=opt_distance)
    except PotdError as e:
        return failed_result(job, e, t0)
