"""Data-parallel training (torch.distributed DDP) that commits every step (docs/protocol.md
§4.8).

Usage under ``torchrun`` (or any launcher setting ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/
``MASTER_PORT``), the same code on every rank::

    with data_parallel_session(recipe, client, trainer_key, "evidence/", "run.spool") as run:
        for batch in run.batches():
            run.train_step(batch)

``potd prover train --nproc N`` does the same with ``N`` local processes (gloo on CPU;
NCCL with ``--device cuda[:i]``, rank ``r`` on ``cuda:i+r``), and ``potd prover resume
--train`` continues such a run with the same number of processes (a run trained under
``torchrun``: every rank runs it under ``torchrun`` again,
:func:`prover.resume.resume_data_parallel`). A session that joined the launcher's
process group leaves it when the run ends; a rank ``torchrun`` started stops when
``torchrun`` dies (:mod:`prover.launch`).

Rank 0 is a :class:`DataParallelSession`: the single-process :class:`TrainingSession`
(it alone logs ``run.open``, derives the seed, builds, signs and submits the statements
and writes the evidence), with the world committed in ``run.open``'s ``data_parallel``
field. The other ranks are :class:`DataParallelWorker`: they receive the seed from rank 0
(broadcast), build the same seed-derived model and train their shard.

Start-up: rank 0 broadcasts one message, the seed and where training starts — step 0, or
for a resumed run the step after the last spooled checkpoint and that checkpoint's
evidence (weights and optimizer state, names and hashes). Every rank restores that
checkpoint from the evidence store (hash-checked), so all ranks continue from the same
state; the step RNG is a function of the seed and the step (:func:`prover.recipes.
train_step` reseeds it), so nothing else carries over.

Devices (:func:`backend_for`, :func:`rank_device`): the CPU with gloo, or CUDA with NCCL,
rank ``r`` on ``cuda:LOCAL_RANK`` under ``torchrun`` and on ``cuda:i+r`` for local ranks
started from ``--device cuda:i``. Tensors that cross ranks live on the rank's device;
hashes and evidence are computed from CPU copies.

Invariants:

* Every rank iterates the same seed-derived global batches; rank ``r`` trains on its
  shard (:func:`prover.derive.shard_bounds`), its gradient weighted by its share of the
  batch in DDP's all-reduce (a communication hook), so the update is the global batch's.
  The batch root committed in each step statement is over the global batch.
* After every step, before rank 0 records it, each rank contributes the hash of its
  weights and the digest of the examples it actually fed the step; the values are
  all-gathered and every rank checks them: weights that differ, or a shard that is not
  this rank's part of the committed batch, raise :class:`DataParallelError` naming the
  ranks, and the step is not committed. Rank 0 commits the weights hash it contributed
  (the weights are hashed once per rank and step). The all-gather runs while the next
  step's forward and backward do (small weights are hashed on the training thread
  first, large ones on a thread beside it); the next step's ``optimizer.step()`` waits
  for it, so the error comes at that update (or at ``close``/``flush`` after the last
  step), before any later step is committed (:mod:`prover.agreement`).

Trusts: the other ranks are the trainer's own processes (the check catches a rank that
drifts or reads the wrong data, not a trainer who lies: that is the audit's job).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ledger.client import LogClient
from ledger.errors import PotdError, UsageError
from ledger.note import Signer
from prover.agreement import Agreement, DataParallelError, Job, StepProfile, snapshot, timed
from prover.datasets import as_datasets, call_data
from prover.derive import (
    SHARD_SPLIT,
    check_world,
    init_seed,
    permutation,
    schedule,
    shard_bounds,
)
from prover.dp_group import (  # re-exported: the group's side of a run
    _cuda_count,
    _Share,
    _weighted_allreduce,
    backend_for,
    init_process_group,
    local_rank,
    rank_device,
)
from prover.recipes import Recipe, train_step
from prover.session import SMALL_STATE, Batch, TrainingSession
from prover.session_commit import _optimizer_tensors

__all__ = ["DataParallelError", "DataParallelSession", "DataParallelWorker", "backend_for",
           "data_parallel_session", "init_process_group", "rank_device"]

# rank 0's records reach the commit process in batches of up to this many seconds (and
# at most 32 records; a crash loses at most these unspooled steps, which a resume
# re-trains): one spool transaction, one evidence sync and one wake-up of the commit
# process per batch. Its submitter sends the log what was spooled at most once per
# SUBMIT_INTERVAL while training runs (close and drain send at once). The commit process
# and the log share the machine with the ranks: their CPU per step comes out of the
# ranks' (measured in scripts/bench_ddp.py)
COMMIT_BATCH_SECONDS, SUBMIT_INTERVAL = 0.25, 2.0


class _Ranks:
    """What every rank does the same way: wrap the model, shard, train, agree."""

    # the process group was joined for this rank by data_parallel_session (or a resume
    # under a launcher): it is left when the run ends, as torch asks of every process
    # before exit (an exiting process whose gloo group is left up may abort with
    # "terminate called without an active exception", pytorch/pytorch#190489)
    owns_group = False

    def _leave_group(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

    recipe: Recipe
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    seed: bytes
    alg: str
    device: torch.device
    agreed: str  # the weights hash after the last agreed step
    losses: list[float]  # the global batch's loss of every agreed step
    plan: list[tuple[int, int, int]]  # (step, epoch, offset) of every step of the run
    profile: StepProfile | None = None  # per-part timings (scripts/bench_ddp.py --profile)

    def _wrap(self) -> None:
        from torch.nn.parallel import DistributedDataParallel

        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self._share = _Share()
        cuda = self.device.type == "cuda"
        self.ddp = DistributedDataParallel(self.model,
                                           device_ids=[self.device] if cuda else None)
        self.ddp.register_comm_hook(self._share, _weighted_allreduce)
        # small weights are hashed on the training thread, large ones on the agreement's
        # thread (the session's threshold for streaming them to the commit process)
        size = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
        # two ranks on the CPU: the rows ride on the next step's gradient all-reduce
        # (gloo). Each sum there is of two numbers, the same bits however gloo splits the
        # longer buffer (an exact audit replays the plain hook); with more ranks the
        # order of the sums depends on the split, and CUDA buckets would cost a device
        # round trip: the rows' own all-gather there
        self._agreement = Agreement(self.alg, self._agreed, self.profile,
                                    threaded=size >= SMALL_STATE,
                                    carry=not cuda and self.world == 2)
        if self._agreement.carry:
            self._share.carry = self._agreement.carry_rows
        # step t+1's update waits for step t's agreement (prover.agreement); registered
        # before the session's own pre-hook, which waits for the hasher thread
        self.optimizer.register_step_pre_hook(self._wait_agreed)

    def shard(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's part of ``batch`` (attacks override this)."""
        lo, hi = shard_bounds(len(batch.indexes), self.world)[self.rank]
        return batch.x[lo:hi], batch.y[lo:hi]

    def _dp_step(self, batch: Batch) -> float:
        """Train this rank's shard of ``batch`` and submit the step's agreement, which
        runs while the next step's forward and backward do; the shard's loss."""
        x, y = self.shard(batch)
        self._share.weight = len(x) / len(batch.indexes)
        xd, yd = (x, y) if self.device.type == "cpu" else _on(self.device, x, y)
        loss = float(train_step(self.recipe, self.ddp, self.optimizer, xd, yd, self.seed,
                                batch.step))
        with timed(self.profile, "submit"):
            state = self._weights_state(batch.step)
            if self._agreement.threaded or self._keeps_state(batch.step):
                state = snapshot(state)  # read after the next forward pass
            # the default shard is the batch's own rows (an overriding shard() is checked)
            self._agreement.submit(Job(batch, state, x, y, loss,
                                       last=batch.step == len(self.plan) - 1,
                                       sliced=type(self).shard is _Ranks.shard))
        return loss

    def _wait_agreed(self, *_: Any) -> None:
        with timed(self.profile, "wait"):
            self._agreement.wait()

    _rank_sd: dict[str, torch.Tensor] | None = None

    def _weights_state(self, step: int) -> dict[str, torch.Tensor]:
        """The tensors whose hash this rank contributes after ``step``: the model's state
        dict, cached and taken afresh every ``k`` steps (rank 0: the session's cache,
        checked against a fresh one at checkpoints). A parameter replaced without
        registering it shows within ``k`` steps, as a disagreement if not sooner."""
        if self._rank_sd is None or (step + 1) % self.recipe.k == 0:
            self._rank_sd = self.model.state_dict(keep_vars=True)
        return self._rank_sd

    def _keeps_state(self, step: int) -> bool:
        """Whether :meth:`_agreed` reads the job's state after the next forward pass
        (rank 0, at a checkpoint: buffers are copied for it)."""
        return False

    def _agreed(self, job: Job, loss: float, weights: str) -> None:
        """The agreement (training thread, or its own): step ``job.batch.step`` agreed,
        with the global batch's loss (the shard losses weighted by share) and the
        weights hash every rank contributed."""
        self.agreed = weights
        self.losses.append(loss)


class DataParallelSession(_Ranks, TrainingSession):
    """Rank 0 of a data-parallel run: a :class:`TrainingSession` that commits the world
    in ``run.open`` and trains its shard with DDP (see the module docstring). Resumed with
    :meth:`resume` (via :func:`prover.resume.resume_session`) in a process group of the
    committed world size."""

    def __init__(self, recipe: Recipe, client: LogClient, trainer: Signer,
                 evidence_dir: str | Path, spool_path: str | Path, **kw: Any) -> None:
        super().__init__(recipe, client, trainer, evidence_dir, spool_path, **kw)
        if not dist.is_initialized() or dist.get_rank() != 0:
            raise UsageError("DataParallelSession runs on rank 0 of an initialized process "
                             "group", hint="use data_parallel_session()")
        self.device = rank_device(self.device, 0, local_rank(), _cuda_count(self.device))
        self._seed_sent = False

    def __enter__(self) -> DataParallelSession:
        """Open the run, unless :meth:`resume` started it already
        (:func:`prover.resume.resume_data_parallel`)."""
        if not self._seed_sent:
            self.open()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            super().__exit__(exc_type, exc, tb)
        finally:
            self._leave_group()

    def open(self) -> None:
        try:
            super().open()
        except BaseException as e:
            self._tell_ranks(f"rank 0 could not open the run: {e}")
            raise

    def resume(self, opened: Any, steps: Any, beacon: bytes, step0: dict[str, Any]) -> None:
        try:
            super().resume(opened, steps, beacon, step0)
        except BaseException as e:
            self._tell_ranks(f"rank 0 could not resume the run: {e}")
            raise

    def _tell_ranks(self, error: str) -> None:
        """The other ranks wait for the start message: send them the error instead."""
        if not self._seed_sent:
            self._seed_sent = True
            _send([None, error[:500]])

    def open_body(self, body: dict[str, Any]) -> dict[str, Any]:
        check_world(len(self.train), self.recipe.batch_size, dist.get_world_size())
        self.spool.set_meta(world_size=str(dist.get_world_size()))  # resume starts as many
        return {**body, "data_parallel": {"world_size": dist.get_world_size(),
                                          "split": SHARD_SPLIT,
                                          "backend": dist.get_backend()}}

    def _resume(self, committer: Any, opened: Any, steps: Any, beacon: bytes,
                step0: dict[str, Any]) -> None:
        world = committed_world(opened.body)
        if world != dist.get_world_size():
            raise UsageError(f"run {opened.run[:16]}... was trained by {world} process"
                             f"{'es' if world != 1 else ''}; this process group has "
                             f"{dist.get_world_size()}",
                             hint=f"resume it with --nproc {world}")
        super()._resume(committer, opened, steps, beacon, step0)

    def _start(self, committer: Any, seq: int) -> None:
        """Tell the other ranks the seed and where training starts (the last spooled
        checkpoint of a resumed run, restored here already), then wrap the model."""
        start: dict[str, Any] = {"step": self.start_step}
        if self.start_step and self._prior_checkpoints:
            c = self._prior_checkpoints[-1]
            start.update(evidence=str(self.evidence.root), algorithm=self.alg,
                         **{k: c[k] for k in ("weights", "weights_hash", "optimizer",
                                              "optimizer_hash")})
        self._seed_sent = True
        _send([self.seed, json.dumps(start)])
        self._wrap()
        # the commit process shares the machine with the ranks: fewer, larger spool
        # transactions and log requests cost it (and the log) less CPU per step
        committer.batch_seconds, committer.submit_interval = COMMIT_BATCH_SECONDS, \
            SUBMIT_INTERVAL
        super()._start(committer, seq)

    def train_step(self, batch: Batch) -> float:
        """Train this rank's shard of ``batch``; the step is recorded once the ranks
        agree on it (before the next step's update: see
        :mod:`prover.agreement`). Returns rank 0's shard loss; the global batch's loss,
        which the statement commits, is appended to ``losses`` when the step is agreed."""
        loss = self._dp_step(batch)
        if self.progress:
            self.progress(batch.step + 1, len(self.plan))
        return loss

    def _weights_state(self, step: int) -> dict[str, torch.Tensor]:
        last = step == len(self.plan) - 1
        return self._state(check=(step + 1) % self._k == 0 or last)

    def _keeps_state(self, step: int) -> bool:
        return (step + 1) % self._k == 0 or step == len(self.plan) - 1

    def _agreed(self, job: Job, loss: float, weights: str) -> None:
        """The agreement: record the agreed step with the weights hash the ranks
        agreed on (hashed once: no copy of the weights to the commit process, no second
        hash). A checkpoint step also writes the weights (the hashed snapshot) and the
        optimizer state (unchanged until the next update, which waits for this) as
        evidence, the single-process way."""
        batch = job.batch
        self.agreed = weights
        if self._hash_error is not None:
            raise self._hash_error
        self.losses.append(loss)
        last = batch.step == len(self.plan) - 1
        lr = float(self.statement_lr(batch.step))
        if (batch.step + 1) % self._k == 0 or last:
            opt = _optimizer_tensors(self.optimizer)
            if self._inline:
                self._commit_inline(batch, loss, lr, job.state, opt, last)
            else:
                with self._cond:
                    self._pending += 1
                self._hash_q.put((batch, loss, lr, job.state, opt, last))
            return
        if self._hasher is not None:  # a checkpoint's record still on the hasher thread
            self._hash_q.join()       # goes first (records reach the committer in order)
        assert self._committer is not None
        self._committer.step(batch.step, batch.epoch, loss, lr,
                             weights=weights if self.per_step_weights else None, ring=None,
                             indexes=batch.indexes, root=batch.root, last=False)

    def record(self, batch: Batch, loss: float) -> None:
        raise UsageError("a data-parallel session records the steps train_step trains",
                         hint="call train_step(batch) on every rank")

    def flush(self) -> None:
        """Make every agreed step durable: the steps trained so far, but for the last
        one trained when its agreement rides on the next step's gradient all-reduce (it
        is recorded then, or at ``close``)."""
        if hasattr(self, "_agreement"):
            self._agreement.wait(alone=False)
        super().flush()

    def close(self, timeout: float | None = 600) -> None:
        """Wait for the last step's agreement (and its record), :meth:`TrainingSession.close`,
        then leave the process group if this rank joined it for the run
        (:attr:`owns_group`)."""
        try:
            try:
                if hasattr(self, "_agreement"):
                    self._agreement.finish()  # the last step's agreement, and its record
            except BaseException:
                self._shutdown()
                raise
            super().close(timeout)
        finally:
            self._leave_group()

    def _shutdown(self) -> None:
        agreement = getattr(self, "_agreement", None)
        if agreement is not None:
            agreement.abandon()
        super()._shutdown()


class DataParallelWorker(_Ranks):
    """Rank ``r > 0`` of a data-parallel run: trains its shard, commits nothing. It
    starts where rank 0 says (step 0, or a resumed run's last spooled checkpoint)."""

    def __init__(self, recipe: Recipe, weights_hash: str = "blake3",
                 device: str | torch.device | None = None) -> None:
        from prover.device import parse_device

        self.recipe, self.alg = recipe, weights_hash
        self.device = rank_device(parse_device(device), dist.get_rank(), local_rank(),
                                  _cuda_count(parse_device(device)))
        self.losses: list[float] = []
        self.start_step = 0

    def __enter__(self) -> DataParallelWorker:
        if not hasattr(self, "seed"):  # not started yet (a resume starts it)
            self.open()
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        try:
            if exc_type is None:
                self.close()
            elif hasattr(self, "_agreement"):
                self._agreement.abandon()
        finally:
            self._leave_group()

    def open(self) -> None:
        """Load the data (while rank 0 opens the run), wait for rank 0's start message,
        then :meth:`begin`."""
        self._load()
        seed, start = _send([None, None])
        if not isinstance(seed, bytes):
            raise DataParallelError(str(start), hint="see rank 0's error")
        self.begin(seed, json.loads(start))

    def begin(self, seed: bytes, start: dict[str, Any]) -> None:
        """Build the seed-derived model and optimizer, restore the checkpoint ``start``
        names (if any) and wrap the model."""
        r = self.recipe
        if not hasattr(self, "train"):
            self._load()
        self.seed = seed
        torch.manual_seed(init_seed(self.seed))
        self.model = r.model()  # on the CPU, as rank 0 builds it
        if self.device.type != "cpu":
            self.model.to(self.device)
        self.optimizer = r.optimizer(self.model)
        self._restore(start)
        self._wrap()

    def _load(self) -> None:
        r = self.recipe
        self.train = as_datasets(call_data(r)).train
        self.plan = schedule(len(self.train), r.batch_size, r.epochs)

    def _restore(self, start: dict[str, Any]) -> None:
        """Load the checkpoint rank 0 resumes from (hash-checked evidence)."""
        self.start_step = int(start["step"])
        if "weights" not in start:
            return
        from prover.device import optimizer_to
        from prover.evidence import EvidenceSource, restore_optimizer

        src = EvidenceSource(start["evidence"])
        alg = start["algorithm"]
        self.model.load_state_dict(src.load(start["weights"], start["weights_hash"], alg))
        restore_optimizer(self.optimizer,
                          src.load(start["optimizer"], start["optimizer_hash"], alg))
        if self.device.type != "cpu":
            optimizer_to(self.optimizer, self.device)

    def batches(self) -> Iterator[Batch]:
        order: list[int] = []
        current = -1
        for step, epoch, offset in self.plan[self.start_step:]:
            if epoch != current:
                order, current = permutation(self.seed, len(self.train), epoch), epoch
            idx = order[offset:offset + self.recipe.batch_size]
            x, y = self.train.batch(idx)
            yield Batch(step, epoch, tuple(idx), x, y, None)

    def train_step(self, batch: Batch) -> float:
        """Train this rank's shard of ``batch``; its shard loss (the global batch's loss
        is appended to ``losses`` once the ranks agree on the step)."""
        return self._dp_step(batch)

    def close(self) -> None:
        """Wait for the last step's agreement (raising a disagreement), then leave the
        process group if this rank joined it for the run (:attr:`owns_group`)."""
        try:
            if hasattr(self, "_agreement"):
                self._agreement.finish()
        finally:
            self._leave_group()


def committed_world(open_body: Any) -> int:
    """The world size a ``run.open`` body commits (1: not a data-parallel run)."""
    dp = open_body.get("data_parallel") if isinstance(open_body, dict) else None
    world = dp.get("world_size") if isinstance(dp, dict) else 1
    return world if type(world) is int and world >= 1 else 1


def _on(device: torch.device, *ts: torch.Tensor) -> tuple[Any, ...]:
    from prover.device import to_device

    return tuple(to_device(t, device) for t in ts)


def _send(obj: list[Any]) -> list[Any]:
    """Broadcast ``obj`` from rank 0: ``[seed, start]`` (the start as JSON, see
    :meth:`DataParallelSession._start`) or ``[None, error text]``. Only bytes and str
    travel (the peers are the trainer's own ranks)."""
    dist.broadcast_object_list(obj, src=0)
    if len(obj) != 2 or not isinstance(obj[0], bytes | None) or not isinstance(obj[1], str):
        raise DataParallelError("rank 0 sent neither a seed nor an error")
    return obj


def free_address() -> str:
    """A loopback ``host:port`` free right now, for a local process group."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def start_local(recipe: Recipe, nproc: int, weights_hash: str = "blake3",
                worker: str = "prover.distributed:DataParallelWorker",
                device: torch.device | str = "cpu") -> list[Any]:
    """Start ranks ``1..nproc-1`` of a local run as spawned processes and join the
    process group as rank 0 (this process). ``worker``: ``module:Class`` of the ranks'
    :class:`DataParallelWorker` (tests pass attack subclasses). ``device``: the CPU
    (gloo), or ``cuda:i`` (NCCL; rank ``r`` on ``cuda:i+r``, all checked to exist before
    any process starts). Returns the processes (join them after closing the run;
    terminate them if it fails)."""
    import multiprocessing

    from prover.device import parse_device

    if nproc < 2:
        raise UsageError(f"--nproc {nproc}: a data-parallel run needs at least 2 processes")
    base = parse_device(device)
    devices = [rank_device(base, r, None, _cuda_count(base)) for r in range(nproc)]
    address = free_address()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker_main, daemon=True, name=f"potd-rank-{r}",
                         args=(r, nproc, address, recipe.spec, dict(recipe.config),
                               weights_hash, torch.get_num_threads(), worker,
                               recipe.data_dir, str(base)))
             for r in range(1, nproc)]
    for p in procs:
        p.start()
    try:
        init_process_group(0, nproc, address, devices[0])
    except BaseException:
        stop_local(procs)
        raise
    return procs


def stop_local(procs: list[Any], timeout: float = 30) -> None:
    """Wait for the worker processes (a failed run: ``timeout=0`` stops them now)."""
    for p in procs:
        p.join(timeout)
        if p.is_alive():
            p.terminate()
            p.join()
    if dist.is_initialized():
        dist.destroy_process_group()


def _worker_main(rank: int, world: int, address: str, spec: str, config: dict[str, Any],
                 alg: str, threads: int, worker: str, data_dir: Any = None,
                 device: str = "cpu") -> None:
    import importlib
    import sys

    from prover.recipes import get_recipe

    torch.set_num_threads(threads)
    mod, _, name = worker.partition(":")
    cls = getattr(importlib.import_module(mod), name)
    init_process_group(rank, world, address, rank_device(device, rank))
    try:
        with cls(get_recipe(spec, data_dir=data_dir, **config), alg, device) as w:
            for batch in w.batches():
                w.train_step(batch)
    except PotdError as e:
        print(f"potd: rank {rank}: {e.message}", file=sys.stderr)
        sys.exit(1)
    finally:
        dist.destroy_process_group()


def data_parallel_session(recipe: Recipe, client: LogClient, trainer: Signer,
                          evidence_dir: str | Path, spool_path: str | Path, **kw: Any
                          ) -> DataParallelSession | DataParallelWorker:
    """This rank's part of a data-parallel run; joins the process group from the
    ``torchrun`` environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``)
    unless it is initialized already: gloo, or NCCL for ``device="cuda"`` (each rank on
    ``cuda:LOCAL_RANK``)."""
    from prover.device import parse_device
    from prover.launch import join_from_environment

    base = parse_device(kw.get("device"))
    joined = join_from_environment(base)
    run: DataParallelSession | DataParallelWorker
    if dist.get_rank() == 0:
        run = DataParallelSession(recipe, client, trainer, evidence_dir, spool_path, **kw)
    else:
        run = DataParallelWorker(recipe, kw.get("weights_hash", "blake3"), base)
    run.owns_group = joined  # left when the run ends
    return run
