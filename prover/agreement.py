"""The ranks' agreement after each step of a data-parallel run (docs/protocol.md §4.8),
run beside the training loop instead of on its critical path.

After step ``t`` every rank hands :meth:`Agreement.submit` a job: its weights after the
step (the parameters themselves, which change only in ``optimizer.step()``, and copies of
the buffers, which the next forward pass may change), the examples it fed, the shard of
the global batch they should be, and its shard loss. A thread hashes the weights and the
examples, all-gathers (weights hash, fed digest, loss) over a gloo process group of its
own on the CPU (the training loop's DDP all-reduces use the default group meanwhile; one
group per thread, so the two threads' collectives never interleave on one group), checks
every row and hands the agreed step on (rank 0: to the commit process). Meanwhile the
training loop runs step ``t+1``'s forward and backward.

Invariants:

* Step ``t+1``'s ``optimizer.step()`` waits for step ``t``'s job (an optimizer step
  pre-hook, :meth:`wait`), so the weights and optimizer state the thread reads are those
  after step ``t``, and a divergence at step ``t`` raises :class:`DataParallelError`
  naming the ranks there — on every rank that sees it, before step ``t+1`` changes a
  weight — or, after the last step, at ``flush``/``close``.
* A step is handed on only after its rows agreed, and steps are handed on in order from
  this one thread: rank 0 never records (spools, submits) step ``t`` before step ``t``'s
  agreement passed, and after a failed agreement it records nothing more.
* At most one job is in flight (:meth:`submit` waits for the previous one).

Trusts: the other ranks are the trainer's own processes (as :mod:`prover.distributed`);
the recipe changes parameters only in ``optimizer.step()``, as the single-process
session's hasher thread assumes (a recipe that changed them in the next forward pass
would have them hashed part-way: a disagreement if the ranks differ, else a weights hash
the audit's replay does not reproduce).
"""

from __future__ import annotations

import atexit
import hashlib
import queue
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ledger.errors import PotdError
from prover.derive import SHARD_SPLIT, shard_bounds
from prover.hashing import (
    EXAMPLE_HEADER,
    StateHasher,
    _frame,
    dtype_name,
    example_hashes,
    tensor_bytes,
)
from prover.session import Batch

__all__ = ["Agreement", "DataParallelError", "Job", "StepProfile", "rows_example_hashes",
           "snapshot"]


class DataParallelError(PotdError):
    """The ranks of a data-parallel run disagree (weights or data after a step)."""


@dataclass
class Job:
    """One step's contribution: the weights after it, the examples fed, the shard loss."""

    batch: Batch
    state: dict[str, torch.Tensor]
    x: torch.Tensor
    y: torch.Tensor
    loss: float


def snapshot(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` as it is now, for hashing while the next step's forward pass runs:
    parameters themselves (only ``optimizer.step()`` changes them, and it waits for the
    hash), buffers copied (a forward pass may change them, e.g. batch norm statistics)."""
    return {k: v if isinstance(v, torch.nn.Parameter) else v.detach().clone()
            for k, v in state.items()}


def rows_example_hashes(xs: torch.Tensor, ys: torch.Tensor) -> list[bytes]:
    """:func:`prover.hashing.example_hashes` of stacked rows, the framing built once: every
    row has the same dtypes and shapes, so the same frames (tests/test_distributed.py
    checks the two agree)."""
    n = len(xs)
    if n != len(ys):
        return example_hashes(xs, ys)  # its error
    if n == 0:
        return []
    bx, by = tensor_bytes(xs), tensor_bytes(ys)
    sx, sy = bx.nbytes // n, by.nbytes // n
    head = hashlib.sha256(EXAMPLE_HEADER + _frame("x", dtype_name(xs), xs.shape[1:], sx))
    fy = _frame("y", dtype_name(ys), ys.shape[1:], sy)
    out = []
    for i in range(n):
        h = head.copy()
        h.update(bx[i * sx:(i + 1) * sx])
        h.update(fy)
        h.update(by[i * sy:(i + 1) * sy])
        out.append(h.digest())
    return out


class StepProfile:
    """Wall and CPU (this thread's) seconds per step of named parts; for benchmarks
    (``scripts/bench_ddp.py --profile``)."""

    def __init__(self) -> None:
        self.parts: dict[str, list[tuple[float, float]]] = {}
        self._lock = threading.Lock()

    def add(self, part: str, wall: float, cpu: float) -> None:
        with self._lock:
            self.parts.setdefault(part, []).append((wall, cpu))

    @contextmanager
    def timed(self, part: str) -> Iterator[None]:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.add(part, time.perf_counter() - t0, time.thread_time() - c0)

    def summary(self) -> dict[str, dict[str, float]]:
        """Per part: median and mean wall and CPU milliseconds, and how many steps."""
        import statistics

        out = {}
        for part, xs in sorted(self.parts.items()):
            walls, cpus = [w for w, _ in xs], [c for _, c in xs]
            out[part] = {"n": len(xs),
                         "wall_median_ms": round(statistics.median(walls) * 1e3, 4),
                         "wall_mean_ms": round(statistics.mean(walls) * 1e3, 4),
                         "cpu_median_ms": round(statistics.median(cpus) * 1e3, 4),
                         "cpu_mean_ms": round(statistics.mean(cpus) * 1e3, 4)}
        return out


@contextmanager
def _untimed() -> Iterator[None]:
    yield


def timed(profile: StepProfile | None, part: str) -> Any:
    """``profile.timed(part)``, or nothing without a profile."""
    return profile.timed(part) if profile is not None else _untimed()


class Agreement:
    """One rank's agreement thread (see the module docstring). ``on_agreed(job,
    global_loss, weights_hash_hex)`` runs on the thread for every agreed step, in order.
    Create it on every rank at the same point (it creates a process group)."""

    def __init__(self, alg: str, on_agreed: Callable[[Job, float, str], None],
                 profile: StepProfile | None = None) -> None:
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        # gloo on the CPU whatever the training backend: the rows are CPU bytes, and a
        # second NCCL communicator used from another thread can deadlock with DDP's
        self.group: Any = dist.new_group(backend="gloo")
        self.hasher = StateHasher(alg)
        self.on_agreed, self.profile = on_agreed, profile
        self.error: BaseException | None = None
        self._q: queue.Queue[Job | None] = queue.Queue()
        self._idle = threading.Event()
        self._idle.set()
        self._lock = threading.Lock()  # held while a step is handed on
        self._abandoned = False
        self._thread: threading.Thread | None = threading.Thread(
            target=self._loop, name="potd-agreement", daemon=True)
        self._thread.start()
        # a rank that exits without close() (its loop simply ends) still completes the last
        # step's all-gather, which the other ranks wait for, before torch tears down
        atexit.register(self._at_exit)

    # -- training thread -------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Agree on ``job`` in the background (after the previous job; raises its error)."""
        self.wait()
        if self._thread is None:
            raise DataParallelError("the agreement thread has stopped",
                                    hint="submit steps before finish()")
        self._idle.clear()
        self._q.put(job)

    def wait(self, timeout: float | None = None) -> None:
        """Until the job in flight is agreed and handed on; raise its error (and every
        later call raises it again: nothing after a failed step is committed)."""
        if not self._idle.wait(timeout):
            raise DataParallelError(f"the ranks' agreement did not finish within {timeout} s",
                                    hint="another rank stopped or hangs; see its error")
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        """Wait for the last job (raising its error), then stop the thread."""
        try:
            self.wait()
        finally:
            self._stop()

    def abandon(self, timeout: float = 60) -> None:
        """After a failure elsewhere: let a job in flight finish (up to ``timeout`` s; its
        step is still handed on if the ranks agree), then hand on nothing more."""
        self._idle.wait(timeout)
        with self._lock:
            self._abandoned = True
        self._stop(join=self._idle.is_set())

    def _at_exit(self) -> None:
        self.abandon(timeout=60)

    def _stop(self, join: bool = True) -> None:
        t, self._thread = self._thread, None
        atexit.unregister(self._at_exit)
        if t is not None:
            self._q.put(None)
            if join:
                t.join()

    # -- the thread --------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            try:
                if self.error is None:
                    self._agree(job)
            except BaseException as e:  # raised on the training thread at its next wait
                self.error = e
            finally:
                self._idle.set()

    def _agree(self, job: Job) -> None:
        p, batch = self.profile, job.batch
        with timed(p, "hash"):
            mine = bytes.fromhex(self.hasher.hash(job.state))
        with timed(p, "examples"):
            # each rank's fed examples against its shard of the global batch as this rank
            # loaded it (the tensor framing: any dataset adapter, docs/protocol.md §4.8);
            # this rank's fed digest from the global batch's hashes when it fed its
            # shard's very tensors (the same memory, so the same bytes)
            bounds = shard_bounds(len(batch.indexes), self.world)
            ex = rows_example_hashes(batch.x, batch.y)
            expected = [hashlib.sha256(b"".join(ex[lo:hi])).digest() for lo, hi in bounds]
            lo, hi = bounds[self.rank]
            fed = (expected[self.rank] if _same_memory(job.x, batch.x[lo:hi])
                   and _same_memory(job.y, batch.y[lo:hi])
                   else hashlib.sha256(b"".join(rows_example_hashes(job.x, job.y))).digest())
        local = torch.frombuffer(bytearray(mine + fed + struct.pack(">d", job.loss)),
                                 dtype=torch.uint8)
        got = [torch.empty_like(local) for _ in range(self.world)]
        with timed(p, "gather"):
            dist.all_gather(got, local, group=self.group)
        rows = [g.numpy().tobytes() for g in got]
        wrong_data = [r for r in range(self.world) if rows[r][32:64] != expected[r]]
        if wrong_data:
            raise DataParallelError(
                f"step {batch.step}: rank(s) {', '.join(map(str, wrong_data))} trained on "
                "examples other than their shard of the committed batch; the step is not "
                "committed", hint="every rank must load the same data and shard it with "
                f"{SHARD_SPLIT} (prover.derive.shard_bounds)")
        differ = [r for r in range(self.world) if rows[r][:32] != rows[0][:32]]
        if differ:
            raise DataParallelError(
                f"step {batch.step}: the weights of rank(s) {', '.join(map(str, differ))} "
                "differ from rank 0's after the step; the step is not committed",
                hint="all ranks need the same recipe, torch version and thread count")
        loss = sum(float(struct.unpack(">d", row[64:])[0]) * (hi - lo) / len(batch.indexes)
                   for row, (lo, hi) in zip(rows, bounds, strict=True))
        with self._lock, timed(p, "record"):
            if not self._abandoned:
                self.on_agreed(job, loss, mine.hex())


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``a`` and ``b`` are the same elements of the same memory (hence the same bytes)."""
    return (a.device == b.device and a.dtype == b.dtype and a.shape == b.shape
            and a.stride() == b.stride() and a.data_ptr() == b.data_ptr())
