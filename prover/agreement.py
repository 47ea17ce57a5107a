"""The ranks' agreement after each step of a data-parallel run (docs/protocol.md §4.8),
kept off the training loop's critical path.

After step ``t`` every rank hands :meth:`Agreement.submit` a job: its weights after the
step, the examples it fed, the shard of the global batch they should be, and its shard
loss. Each rank hashes the weights and the examples and gathers every rank's row
(weights hash, fed digest, loss) — on the next step's gradient all-reduce (below), or
all-gathered over a gloo process group of its own on the CPU (the training loop's DDP
all-reduces use the default group; a separate group, so the agreement's collectives
never interleave with DDP's on one group) — checks every row and hands the agreed step
on (rank 0: to the commit process). Meanwhile the training loop runs step ``t+1``'s
forward and backward. Two ways, by the size of the weights:

* small weights (the default tiny recipes): :meth:`submit` hashes on the training
  thread right away (the weights are those after step ``t``; a few hundred microseconds
  of hashing beat a thread's wake-ups and its contention for the GIL with the training
  loop). With ``carry`` (two ranks on the CPU) the rows then ride on step ``t+1``'s
  gradient all-reduce (:meth:`carry_rows`, called from DDP's communication hook: each
  rank writes its row, its bytes as numbers, into its own slot of an extension of the
  gradient bucket that is zero elsewhere, so the sum over ranks is every rank's row,
  exactly) — no collective of its own, no wake-up of another thread; :meth:`wait`
  (step ``t+1``'s update) reads and checks them. A job no gradient all-reduce carried
  (the last step, or a step without backward) is all-gathered on its own when every
  rank waits for it: at the next update, or at ``finish`` (``flush`` on rank 0 alone
  leaves a carried-to-be job in flight: the other ranks are not there to gather it).
  Without ``carry`` (CUDA, more ranks) :meth:`submit` starts the all-gather without
  waiting for it and :meth:`wait` completes it, checks the rows and hands the step on;
* large weights (``threaded``): a thread does all of it (the parameters themselves,
  which change only in ``optimizer.step()``, and copies of the buffers, which the next
  forward pass may change), overlapped with the next step's forward and backward.

Invariants (both ways):

* Step ``t+1``'s ``optimizer.step()`` waits for step ``t``'s job (an optimizer step
  pre-hook, :meth:`wait`), so the weights and optimizer state read for step ``t`` are
  those after step ``t``, and a divergence at step ``t`` raises :class:`DataParallelError`
  naming the ranks there — on every rank that sees it, before step ``t+1`` changes a
  weight — or, after the last step, at ``flush``/``close``.
* A step is handed on only after its rows agreed, and steps are handed on in order:
  rank 0 never records (spools, submits) step ``t`` before step ``t``'s agreement
  passed, and after a failed agreement it records nothing more.
* At most one job is in flight (:meth:`submit` waits for the previous one).
* Every rank gathers a job the same way: carried by the same bucket of the same
  all-reduce, or all-gathered alone at the same call (the next update, ``finish``; a
  failure elsewhere (:meth:`abandon`) gathers only a job the others can still join: one
  carried already, or the last step's).

Trusts: the other ranks are the trainer's own processes (as :mod:`prover.distributed`);
the recipe changes parameters only in ``optimizer.step()``, as the single-process
session's hasher thread assumes (a recipe that changed them in the next forward pass
would have them hashed part-way on the threaded way: a disagreement if the ranks
differ, else a weights hash the audit's replay does not reproduce).
"""

from __future__ import annotations

import atexit
import datetime
import hashlib
import queue
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ledger.errors import PotdError
from prover.derive import SHARD_SPLIT, shard_bounds
from prover.hashing import StateHasher, _frame, dtype_name_of, tensor_bytes
from prover.session import Batch

__all__ = ["Agreement", "DataParallelError", "Job", "StepProfile", "shard_digest",
           "shard_digests", "snapshot"]


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
    last: bool = False  # the run's last step: no later gradient all-reduce carries it
    sliced: bool = False  # x and y are rows lo:hi of the batch's own x and y (its shard)


def snapshot(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` as it is now, for hashing while the next step's forward pass runs:
    parameters themselves (only ``optimizer.step()`` changes them, and it waits for the
    hash), buffers copied (a forward pass may change them, e.g. batch norm statistics)."""
    return {k: v if isinstance(v, torch.nn.Parameter) else v.detach().clone()
            for k, v in state.items()}


SHARD_HEADER = b"potd-shard-digest-v1\n"
ROW = 32 + 32 + 8  # weights hash, fed digest, loss (f64 BE): what each rank all-gathers


def shard_digest(xs: torch.Tensor, ys: torch.Tensor) -> bytes:
    """SHA-256 of stacked examples as one framed stream: ``SHARD_HEADER``, then for
    ``x`` and ``y`` the ``potd-tensors-v1`` frame (name, dtype, shape, byte count) and
    the tensor's raw bytes. Two shards have the same digest exactly when they hold the
    same examples in the same order, with the same dtypes and shapes (a rank's digest
    of what it fed against the digest of its shard of the global batch: what the ranks
    compare after each step, never committed). One pass over contiguous bytes, where
    hashing every example cost the training loop a Python loop."""
    return shard_digests(xs, ys, [(0, len(xs))])[0]


def shard_digests(xs: torch.Tensor, ys: torch.Tensor, bounds: list[tuple[int, int]]
                  ) -> list[bytes]:
    """:func:`shard_digest` of rows ``[lo, hi)`` of ``xs`` and ``ys`` for each bound,
    from one byte view of each (tests/test_distributed.py checks they agree)."""
    out = []
    views = []
    for t in (xs, ys):
        raw = _byte_view(t)
        views.append((raw, raw.nbytes // len(t) if len(t) else 0, t.dtype,
                      tuple(t.shape[1:])))
    for lo, hi in bounds:
        h = hashlib.sha256(SHARD_HEADER)
        for name, (raw, row, dtype, rest) in zip("xy", views, strict=True):
            h.update(_shard_frame(name, dtype, (hi - lo, *rest), (hi - lo) * row))
            h.update(raw[lo * row:hi * row])
        out.append(h.digest())
    return out


def _byte_view(t: torch.Tensor) -> memoryview:
    """:func:`prover.hashing.tensor_bytes`, in one call for what batches are (a
    contiguous CPU tensor of numbers, on a little-endian machine): its own memory."""
    if (t.dtype in _NUMPY_DTYPES and t.device.type == "cpu" and not t.requires_grad
            and t.is_contiguous() and (_LITTLE or t.element_size() == 1)):
        try:
            return t.numpy().data.cast("B")
        except TypeError:  # no elements: memoryview cannot cast it
            pass
    return tensor_bytes(t)


_LITTLE = sys.byteorder == "little"
_NUMPY_DTYPES = {torch.float64, torch.float32, torch.float16, torch.int64, torch.int32,
                 torch.int16, torch.int8, torch.uint8}
_FRAMES: dict[tuple[Any, ...], bytes] = {}  # a batch's few shapes: frames made once


def _shard_frame(name: str, dtype: torch.dtype, shape: tuple[int, ...], nbytes: int) -> bytes:
    key = (name, dtype, shape, nbytes)
    f = _FRAMES.get(key)
    if f is None:
        if len(_FRAMES) > 256:
            _FRAMES.clear()
        f = _FRAMES[key] = _frame(name, dtype_name_of(dtype), shape, nbytes)
    return f


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


_UNTIMED = nullcontext()  # reusable: no generator made per step and part


def timed(profile: StepProfile | None, part: str) -> Any:
    """``profile.timed(part)``, or nothing without a profile."""
    return profile.timed(part) if profile is not None else _UNTIMED


@dataclass
class _Gather:
    """A job whose rows are being all-gathered (the inline way)."""

    job: Job
    mine: bytes  # this rank's weights hash
    expected: list[bytes]  # every rank's shard digest, from this rank's global batch
    work: Any  # the all-gather in flight (None: done, or not started)
    carried: Any = None  # (future, rows tensor) of the gradient all-reduce carrying it


class Agreement:
    """One rank's agreement (see the module docstring). ``on_agreed(job, global_loss,
    weights_hash_hex)`` runs for every agreed step, in order (on the training thread, or
    on the agreement thread when ``threaded``). Create it on every rank at the same point
    (it creates a process group)."""

    def __init__(self, alg: str, on_agreed: Callable[[Job, float, str], None],
                 profile: StepProfile | None = None, threaded: bool = True,
                 carry: bool = False) -> None:
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        # gloo on the CPU whatever the training backend: the rows are CPU bytes, and a
        # second NCCL communicator used from another thread can deadlock with DDP's
        self.group: Any = dist.new_group(backend="gloo")
        self.hasher = StateHasher(alg)
        self.on_agreed, self.profile, self.threaded = on_agreed, profile, threaded
        self.carry = carry and not threaded
        self.carried = self.alone = 0  # jobs a gradient all-reduce carried; gathered alone
        # the gradient bucket extended by the rows (views of one tensor), reused
        self._ext: tuple[torch.Tensor, Any, torch.Tensor] | None = None
        self.error: BaseException | None = None
        self._q: queue.Queue[Job | None] = queue.Queue()
        self._idle = threading.Event()
        self._idle.set()
        self._lock = threading.Lock()  # held while a step is handed on
        self._abandoned = self._stopped = False
        self._gather: _Gather | None = None  # the inline way's job in flight
        # this rank's row (weights hash, fed digest, loss) and every rank's, reused: one
        # job at a time uses them
        self._row = bytearray(ROW)
        self._local = torch.frombuffer(self._row, dtype=torch.uint8)
        self._row_np = self._local.numpy()
        self._got = [torch.empty(ROW, dtype=torch.uint8) for _ in range(self.world)]
        self._rows = [t.numpy() for t in self._got]
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._loop, name="potd-agreement",
                                            daemon=True)
            self._thread.start()
        # a rank that exits without close() (its loop simply ends) still completes the last
        # step's all-gather, which the other ranks wait for, before torch tears down
        atexit.register(self._at_exit)

    # -- training thread -------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Agree on ``job`` (after the previous job; raises its error): hash it now and
        start its all-gather, or hand it to the thread."""
        self.wait()
        if self._stopped:
            raise DataParallelError("the agreement has stopped",
                                    hint="submit steps before finish()")
        if not self.threaded:
            self._gather = self._start(job, launch=not self.carry)
            return
        self._idle.clear()
        self._q.put(job)

    def wait(self, timeout: float | None = None, alone: bool = True) -> None:
        """Until the job in flight is agreed and handed on; raise its error (and every
        later call raises it again: nothing after a failed step is committed). A job
        that no gradient all-reduce carried is all-gathered now (every rank must wait
        for it at the same point); ``alone=False``: such a job stays in flight unless it
        is the last step's (``flush`` on one rank)."""
        g, self._gather = self._gather, None
        if g is not None and not alone and g.work is None and g.carried is None \
                and not g.job.last:
            self._gather = g
            g = None
        if g is not None and self.error is None:
            try:
                if g.work is None and g.carried is None:
                    self._launch(g, wait=True, timeout=timeout)
                self._complete(g, timeout)
            except BaseException as e:
                self.error = e
        if not self._idle.wait(timeout):
            raise DataParallelError(f"the ranks' agreement did not finish within {timeout} s",
                                    hint="another rank stopped or hangs; see its error")
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        """Wait for the last job (raising its error), then stop."""
        try:
            self.wait()
        finally:
            self._stop()

    def abandon(self, timeout: float = 60) -> None:
        """After a failure elsewhere: let a job in flight finish (up to ``timeout`` s; its
        step is still handed on if the ranks agree), then hand on nothing more."""
        try:
            self.wait(timeout, alone=False)
        except BaseException:  # the failure elsewhere is the one reported
            pass
        with self._lock:
            self._abandoned = True
        self._stop(join=self._idle.is_set())

    def _at_exit(self) -> None:
        self.abandon(timeout=60)

    def _stop(self, join: bool = True) -> None:
        t, self._thread = self._thread, None
        self._stopped = True
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
                    g = self._start(job, launch=False)
                    self._launch(g, wait=True)
                    self._complete(g, None)
            except BaseException as e:  # raised on the training thread at its next wait
                self.error = e
            finally:
                self._idle.set()

    # -- both ways ---------------------------------------------------------------------

    def _start(self, job: Job, launch: bool = True) -> _Gather:
        """Hash the weights and the examples into this rank's row; ``launch``: start its
        all-gather."""
        p, batch = self.profile, job.batch
        with timed(p, "hash"):
            mine = bytes.fromhex(self.hasher.hash(job.state))
        with timed(p, "examples"):
            # each rank's fed examples against its shard of the global batch as this rank
            # loaded it (the tensors' bytes: any dataset adapter, docs/protocol.md §4.8);
            # this rank's fed digest is its shard's when it fed the shard's very tensors
            # (the same memory, so the same bytes)
            bounds = shard_bounds(len(batch.indexes), self.world)
            expected = shard_digests(batch.x, batch.y, bounds)
            lo, hi = bounds[self.rank]
            fed = (expected[self.rank] if job.sliced or (
                _same_memory(job.x, batch.x[lo:hi]) and _same_memory(job.y, batch.y[lo:hi]))
                else shard_digest(job.x, job.y))
        self._row[:] = mine + fed + struct.pack(">d", job.loss)
        g = _Gather(job, mine, expected, None)
        if launch:
            self._launch(g)
        return g

    def _launch(self, g: _Gather, wait: bool = False, timeout: float | None = None) -> None:
        """All-gather this rank's row on the agreement's own group (``wait``: to the end;
        a peer that does not join within ``timeout`` s: :class:`DataParallelError`)."""
        with timed(self.profile, "gather" if wait else "launch"):
            # the group's own call: dist.all_gather's checks cost the loop more
            g.work = self.group.allgather([self._got], [self._local])
            self.alone += 1
            if wait:
                self._wait_work(g, timeout)

    def carry_rows(self, buf: torch.Tensor, weight: float
                   ) -> torch.futures.Future[torch.Tensor] | None:
        """DDP's communication hook, for the bucket that carries the rows (the same one on
        every rank): all-reduce ``buf`` times ``weight`` (the rank's gradient share) and
        the job in flight's rows in one go — each rank's row, its bytes as numbers 0-255,
        in its own slot, zero elsewhere, so the sum is every rank's row (exactly, in any
        floating dtype numpy can view). None: no job waits to be carried (the caller
        all-reduces ``buf`` alone)."""
        g = self._gather
        if g is None or g.work is not None or g.carried is not None or self.error is not None \
                or buf.dtype not in _NUMPY_DTYPES or buf.device.type != "cpu":
            return None  # (a bucket numpy cannot view: the job is all-gathered alone)
        with timed(self.profile, "launch"):
            n = buf.numel()
            ext = self._ext
            if ext is None or ext[0].numel() != n or ext[0].dtype != buf.dtype:
                # the bucket, then the rows (numbers; a numpy view: cheaper to fill)
                t = torch.empty(n + self.world * ROW, dtype=buf.dtype, device=buf.device)
                ext = self._ext = (t[:n], t[n:].numpy(), t)
            head, rows, whole = ext
            torch.mul(buf, weight, out=head)
            rows[:] = 0
            rows[self.rank * ROW:(self.rank + 1) * ROW] = self._row_np
            work: Any = dist.all_reduce(whole, async_op=True)
            fut: torch.futures.Future[list[torch.Tensor]] = work.get_future()
            g.carried = (fut, rows)
            self.carried += 1

        def bucket(f: torch.futures.Future[list[torch.Tensor]]) -> torch.Tensor:
            f.value()  # raises the all-reduce's error
            return head

        return fut.then(bucket)

    def _wait_work(self, g: _Gather, timeout: float | None) -> None:
        step = g.job.batch.step
        try:
            done = g.work.wait() if timeout is None else \
                g.work.wait(datetime.timedelta(seconds=timeout))
        except RuntimeError as e:  # gloo: a peer gone, or the timeout
            raise DataParallelError(f"the ranks' all-gather of step {step} failed: {e}",
                                    hint="another rank stopped or hangs; see its "
                                    "error") from None
        if done is False:
            raise DataParallelError(f"the ranks' agreement did not finish within {timeout} s",
                                    hint="another rank stopped or hangs; see its error")
        g.work = None

    def _complete(self, g: _Gather, timeout: float | None) -> None:
        """Wait for ``g``'s all-gather, check every row, hand the step on."""
        p, batch = self.profile, g.job.batch
        if g.carried is not None:  # complete: DDP waited for its buckets' all-reduces
            with timed(p, "gather"):
                fut, got = g.carried
                try:
                    fut.wait()
                except RuntimeError as e:  # gloo: a peer gone (the backward saw it too)
                    raise DataParallelError(f"the gradient all-reduce carrying step "
                                            f"{batch.step}'s agreement failed: {e}",
                                            hint="another rank stopped or hangs; see its "
                                            "error") from None
                flat = got.astype("uint8").tobytes()
            rows = [flat[r * ROW:(r + 1) * ROW] for r in range(self.world)]
        else:
            if g.work is not None:
                with timed(p, "gather"):
                    self._wait_work(g, timeout)
            rows = [a.tobytes() for a in self._rows]
        expected = g.expected
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
        bounds = shard_bounds(len(batch.indexes), self.world)
        loss = sum(float(struct.unpack(">d", row[64:])[0]) * (hi - lo) / len(batch.indexes)
                   for row, (lo, hi) in zip(rows, bounds, strict=True))
        with self._lock, timed(p, "record"):
            if not self._abandoned:
                self.on_agreed(g.job, loss, g.mine.hex())


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``a`` and ``b`` are the same elements of the same memory (hence the same bytes)."""
    return (a.device == b.device and a.dtype == b.dtype and a.shape == b.shape
            and a.stride() == b.stride() and a.data_ptr() == b.data_ptr())
