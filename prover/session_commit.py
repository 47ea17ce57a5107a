"""How a :class:`~prover.session.TrainingSession` hands each step to the commit process
(:mod:`prover.committer`): the weights after the step copied into the ring (small
models) or hashed on the hasher thread, overlapped with the next step (larger ones),
checkpoint snapshots, and the optimizer pre-hook that keeps "the weights hashed for step
``t`` are the weights after step ``t``" (see :mod:`prover.session`'s invariants). A mixin
of :class:`~prover.session.TrainingSession`; attacks override :meth:`StepCommits._record`.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from ledger.errors import PotdError
from prover.committer import Committer
from prover.evidence import EvidenceStore
from prover.hashing import TENSORS_HEADER, Parts, StateHasher, stream_size, write_stream

if TYPE_CHECKING:
    from prover.session import Batch


class StepCommits:
    """Per-step records to the commit process (mixin; the session sets the attributes)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    evidence: EvidenceStore
    plan: list[tuple[int, int, int]]
    losses: list[float]
    progress: Callable[[int, int], None] | None
    per_step_weights: bool
    _committer: Committer | None
    _weights: StateHasher
    _opt_stream: StateHasher
    _inline: bool
    _k: int
    _sd: dict[str, torch.Tensor] | None
    _hash_error: BaseException | None
    _pending: int
    _cond: threading.Condition
    _hash_q: queue.Queue[Any]

    statement_lr: Callable[[int], float]

    def _record(self, batch: Batch, loss: float) -> None:
        """Hand the step to the committer with the weights after it: their stream copied
        into the ring (small models), or their hash, computed on the hasher thread."""
        if self._hash_error is not None:
            raise self._hash_error
        self.losses.append(loss)
        last = batch.step == len(self.plan) - 1
        ckpt = (batch.step + 1) % self._k == 0 or last
        lr = float(self.statement_lr(batch.step))
        state = opt = None
        if ckpt or self.per_step_weights:
            state = self._state(check=ckpt)
            if ckpt:
                opt = _optimizer_tensors(self.optimizer)
        if self._inline:
            self._commit_inline(batch, loss, lr, state, opt, last)
        else:
            if state is not None:  # parameters change only in optimizer.step(); buffers
                state = {k: v if isinstance(v, torch.nn.Parameter) else v.detach().clone()
                         for k, v in state.items()}  # may change in the next forward pass
            with self._cond:
                self._pending += 1
            self._hash_q.put((batch, loss, lr, state, opt, last))
        if self.progress:
            self.progress(batch.step + 1, len(self.plan))

    def _state(self, check: bool = False) -> dict[str, torch.Tensor]:
        """The model's state dict (parameters and buffers themselves), cached while no
        module registers a parameter, buffer or submodule (torch's global registration
        hooks tell us). ``check``: compare the cache with a fresh one."""
        sd = self._sd
        if sd is None or check:
            fresh = self.model.state_dict(keep_vars=True)
            if sd is not None and (sd.keys() != fresh.keys()
                                   or any(fresh[k] is not v for k, v in sd.items())):
                raise PotdError("the model's parameters or buffers were replaced without "
                                "registering them (e.g. `del module.weight`)",
                                hint="assign parameters and buffers as module attributes")
            sd = self._sd = fresh
        return sd

    def _structure_changed(self, *_: Any) -> None:
        self._sd = None

    def _commit_inline(self, batch: Batch, loss: float, lr: float,
                       state: dict[str, torch.Tensor] | None,
                       opt: dict[str, torch.Tensor] | None, last: bool) -> None:
        c = self._committer
        assert c is not None
        w = ring = parts = None
        if state is not None:
            parts = self._weights.parts(state)
            ring = c.stream_to_ring(parts, stream_size(parts))
            if ring is None:  # the commit process is behind: hash here
                w = self._weights.hash(parts)
        where: dict[str, Any] | None = None
        inline = bytearray()
        if opt is not None and parts is not None:
            oparts = self._opt_stream.parts(opt)
            oring = c.stream_to_ring(oparts, stream_size(oparts))
            where = {}
            for group, loc, p in (("weights", ring, parts), ("optimizer", oring, oparts)):
                if loc is not None:
                    where[group] = ["ring", *loc]
                else:
                    data = bytearray(stream_size(p))
                    write_stream(p, memoryview(data))
                    where[group] = ["inline", len(inline), len(data)]
                    inline += data
        c.step(batch.step, batch.epoch, loss, lr, weights=w, ring=ring, indexes=batch.indexes,
               root=batch.root, last=last, checkpoint=where, inline=bytes(inline))

    def _commit_hashed(self, batch: Batch, loss: float, lr: float,
                       state: dict[str, torch.Tensor] | None,
                       opt: dict[str, torch.Tensor] | None, last: bool,
                       release: Callable[[], None]) -> None:
        """Hasher thread: hash, snapshot at a checkpoint, release the next optimizer
        step, then send the record."""
        w = where = None
        if state is not None:
            parts = self._weights.parts(state)
            w = self._weights.hash(parts)
            if opt is not None:
                path = self.evidence.root / f".snapshot-{os.getpid()}-{batch.step}"
                oparts = self._opt_stream.parts(opt)
                with open(path, "wb") as f:
                    n = _write_stream_file(f, parts)
                    m = _write_stream_file(f, oparts)
                where = {"weights": ["file", str(path), 0, n],
                         "optimizer": ["file", str(path), n, m]}
        release()
        assert self._committer is not None
        self._committer.step(batch.step, batch.epoch, loss, lr, weights=w, ring=None,
                             indexes=batch.indexes, root=batch.root, last=last,
                             checkpoint=where)

    def _before_update(self, *_: Any) -> None:
        self._wait_hashed()

    def _wait_hashed(self) -> None:
        if self._pending:
            with self._cond:
                self._cond.wait_for(lambda: self._pending == 0)
        if self._hash_error is not None:
            raise self._hash_error

    def _hash_loop(self) -> None:
        def release() -> None:
            with self._cond:
                self._pending -= 1
                self._cond.notify_all()

        while True:
            job = self._hash_q.get()
            try:
                if job is None:
                    return
                if self._hash_error is None:  # after an error, nothing more is committed
                    batch, loss, lr, state, opt, last = job
                    self._commit_hashed(batch, loss, lr, state, opt, last, release)
                else:
                    release()
            except BaseException as e:  # surfaced to the training thread
                self._hash_error = e
                if self._pending:
                    release()
            finally:
                self._hash_q.task_done()


def _optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """:func:`prover.evidence.flatten_optimizer` without the copies: names
    ``state.<param index>.<key>``, the live tensors (scalars as new 0-d tensors)."""
    out = {}
    for pid, st in opt.state_dict()["state"].items():
        for key, v in st.items():
            out[f"state.{pid}.{key}"] = v if isinstance(v, torch.Tensor) else torch.tensor(v)
    return out


def _write_stream_file(f: Any, parts: Parts) -> int:
    f.write(TENSORS_HEADER)
    for frame, raw in parts:
        f.write(frame)
        f.write(raw)
    return stream_size(parts)
