"""Joining a data-parallel run's process group from a launcher's environment (torchrun):
the part of :mod:`prover.distributed` that deals with how the ranks were started, shared
by :func:`prover.distributed.data_parallel_session` and
:func:`prover.resume.resume_data_parallel`.

torchrun starts each rank in a session of its own (``start_new_session``), so killing
torchrun, even its whole process group, leaves the ranks running: rank 0 would go on
committing steps of a run its operator means to resume. A rank joined here asks the
kernel (Linux ``prctl(PR_SET_PDEATHSIG)``) for SIGTERM when torchrun dies.

Trusts: the launcher's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``, ``LOCAL_RANK``, ``TORCHELASTIC_RUN_ID``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

import torch
import torch.distributed as dist

from ledger.errors import UsageError
from prover.dp_group import TIMEOUT, _cuda_count, backend_for, local_rank, rank_device

__all__ = ["join_from_environment"]


def join_from_environment(base: torch.device) -> bool:
    """Join the process group a launcher describes (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``: torchrun) unless one is initialized: gloo, or NCCL
    for a ``base`` on CUDA (each rank on ``cuda:LOCAL_RANK``); whether it joined. A rank
    torchrun started stops when torchrun dies (:func:`_follow_launcher`)."""
    if dist.is_initialized():
        return False
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise UsageError("no process group: RANK and WORLD_SIZE are not set",
                         hint="launch with torchrun, or call init_process_group first")
    dev = rank_device(base, int(os.environ["RANK"]), local_rank(), _cuda_count(base))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    _follow_launcher()
    dist.init_process_group(backend_for(dev), timeout=TIMEOUT)
    return True


def _follow_launcher() -> None:
    """Under torchrun (``TORCHELASTIC_RUN_ID`` set), have the kernel send this rank
    SIGTERM when torchrun dies. torchrun starts each rank in a session of its own, so a
    SIGKILL of torchrun (or of its process group) otherwise leaves the ranks running:
    rank 0 would go on committing steps of a run its operator means to resume. On Linux
    (``prctl(PR_SET_PDEATHSIG)``); elsewhere nothing changes."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    if ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0) == 0 \
            and os.getppid() == 1:  # torchrun died before the prctl
        os.kill(os.getpid(), signal.SIGTERM)
