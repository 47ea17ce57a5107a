"""The process group of a data-parallel run (docs/protocol.md §4.8): backends and rank
devices, joining the group, and the gradient all-reduce's communication hook (each rank's
gradient weighted by its share of the batch), which the prover's ranks
(:mod:`prover.distributed`) and an exact replay's (:mod:`auditor.replay_dp`) both use."""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist

from ledger.errors import UsageError

TIMEOUT = datetime.timedelta(minutes=10)


def backend_for(device: torch.device | str) -> str:
    """The torch.distributed backend for ranks on ``device``: NCCL on CUDA, else gloo."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def local_rank() -> int | None:
    """``LOCAL_RANK`` as a launcher (torchrun) sets it, else None."""
    v = os.environ.get("LOCAL_RANK", "")
    return int(v) if v.isdigit() else None


def rank_device(base: torch.device | str, rank: int, local: int | None = None,
                count: int | None = None) -> torch.device:
    """The device of rank ``rank`` in a run on ``base``: the CPU for every rank of a CPU
    run; on CUDA, ``cuda:local`` under a launcher that gives the local rank (torchrun's
    ``LOCAL_RANK``), else ``cuda:i+rank`` for local ranks started from ``cuda:i``.
    ``count``: the CUDA devices here, checked when given (a
    :class:`~ledger.errors.UsageError` names the devices there are)."""
    base = torch.device(base)
    if base.type != "cuda":
        return torch.device("cpu")
    i = local if local is not None else (base.index or 0) + rank
    if count is not None and i >= count:
        raise UsageError(f"rank {rank} would train on cuda:{i}, but this machine has "
                         f"{count} CUDA device{'s' if count != 1 else ''}",
                         hint="start at most one process per GPU on each node "
                              "(torchrun --nproc-per-node)" if local is not None else
                              f"--nproc N from --device cuda:I needs cuda:I..cuda:I+N-1: "
                              f"lower --nproc or the index (0..{count - 1})")
    return torch.device("cuda", i)


def _cuda_count(device: torch.device) -> int | None:
    return torch.cuda.device_count() if device.type == "cuda" else None


def init_process_group(rank: int, world: int, address: str,
                       device: torch.device | str = "cpu") -> None:
    """Join the process group at ``address`` (host:port) with the backend for ``device``
    (:func:`backend_for`; on CUDA, after making ``device`` this process's current one)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend_for(dev), init_method=f"tcp://{address}", rank=rank,
                            world_size=world, timeout=TIMEOUT)


class _Share:
    """The communication hook's state: this rank's share of the current batch, and what
    carries the agreement's rows along with the last bucket (:meth:`prover.agreement.
    Agreement.carry_rows`; None: nothing)."""

    def __init__(self) -> None:
        self.weight = 1.0
        self.carry: Any = None


def _weighted_allreduce(state: _Share, bucket: Any) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: sum over ranks of each rank's gradient times its share
    (the last bucket: with the agreement's rows, when a job waits for them)."""
    buf = bucket.buffer()
    if state.carry is not None and bucket.is_last():
        carried: torch.futures.Future[torch.Tensor] | None = state.carry(buf, state.weight)
        if carried is not None:
            return carried
    buf.mul_(state.weight)
    work: Any = dist.all_reduce(buf, async_op=True)
    fut: torch.futures.Future[list[torch.Tensor]] = work.get_future()
    return fut.then(lambda f: f.value()[0])


# DDP checks the hook's annotations as objects (this module's are strings)
_weighted_allreduce.__annotations__ = {"state": _Share, "bucket": dist.GradBucket,  # type: ignore[attr-defined]
                                       "return": torch.futures.Future[torch.Tensor]}
