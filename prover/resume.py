"""Ending or continuing an interrupted run from its spool (docs/protocol.md §4.5).

The spool of a run holds every statement the trainer built (a prefix of the run: the log
holds a prefix of that), and in its meta table the run's ``s_rand``, its beacon, the
step-0 beacon evidence and the recipe settings. It never holds the trainer's private key:
both commands here take it again.

* :func:`abort_run` ends an open run with an **abort**: a ``run.close`` carrying a
  ``reason`` and revealing ``s_rand``, submitted after every spooled statement, so an
  auditor sees exactly which seed was abandoned and why.
* :func:`resume_session` rebuilds a :class:`~prover.session.TrainingSession` that
  continues the run from its last spooled checkpoint with the same seed and order. A
  data-parallel run (``run.open`` commits its world size, the spool's meta repeats it)
  resumes with as many ranks (:class:`~prover.distributed.DataParallelSession`): local
  processes spawned here, or the caller's process group when one is initialized; every
  rank restores the same checkpoint.
* :func:`resume_data_parallel` is each rank's part of that resume under a launcher
  (torchrun; ``potd prover resume --train`` calls it when ``RANK`` and ``WORLD_SIZE``
  are set): rank 0 resumes the run as above, the other ranks read the spooled recipe
  settings (read-only) and restore the checkpoint rank 0 names.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ledger.beacon_client import BeaconClient
from ledger.client import LogClient
from ledger.errors import UsageError
from ledger.merkle import leaf_hash
from ledger.note import Signer, Verifier
from ledger.policy import Policy
from ledger.statement import Statement, build_statement, parse_statement
from prover.beacon import DEFAULT_LEAD
from prover.derive import seed_commitment
from prover.spool import Spool, Submitter

if TYPE_CHECKING:
    from prover.distributed import DataParallelWorker
    from prover.session import TrainingSession

__all__ = ["SpooledRun", "abort_run", "load_run", "resume_data_parallel", "resume_session"]

MAX_REASON = 1000


@dataclass(frozen=True)
class SpooledRun:
    """A run as its spool holds it."""

    spool: Spool
    meta: dict[str, str]
    statements: list[Statement]

    @property
    def opened(self) -> Statement:
        return self.statements[0]

    @property
    def steps(self) -> list[Statement]:
        return [st for st in self.statements if st.kind == "step"]

    @property
    def closed(self) -> bool:
        return self.statements[-1].kind == "run.close"

    def client(self) -> LogClient:
        return LogClient(self.meta["log"], self.meta["log_vkey"])


def load_run(spool_path: str | Path, trainer: Signer) -> SpooledRun:
    """The run in ``spool_path``, checked to be open, signed by ``trainer``, and holding
    the ``s_rand`` its ``run.open`` commits to."""
    sp = Spool(spool_path)
    meta = sp.meta()
    rows = sp.statements()
    if "run" not in meta or "s_rand" not in meta or not rows:
        raise UsageError(f"{spool_path} is not a potd spool with a run in it")
    sts = [parse_statement(data) for _, data in rows]
    run = SpooledRun(sp, meta, sts)
    o = run.opened
    if o.kind != "run.open" or o.run != meta["run"]:
        raise UsageError(f"{spool_path}: the first spooled statement is not the run's run.open")
    if [st.seq for st in sts] != list(range(len(sts))):
        raise UsageError(f"{spool_path}: the spooled statements are not contiguous")
    if o.signer != str(trainer.verifier):
        raise UsageError(f"run {o.run[:16]}... was opened by {o.signer}, not by this key",
                         hint="pass the --key the run was trained with")
    if o.body.get("seed_commitment") != seed_commitment(bytes.fromhex(meta["s_rand"])):
        raise UsageError("the spooled s_rand does not match the run's seed commitment")
    if run.closed:
        raise UsageError(f"run {o.run[:16]}... is already closed",
                         hint="nothing to abort or resume; `potd prover resume` submits "
                              "whatever is still unacknowledged")
    return run


def abort_run(spool_path: str | Path, trainer: Signer, reason: str, *,
              client: LogClient | None = None, timeout: float = 300) -> Statement:
    """End the open run in ``spool_path`` with an abort, logged after every spooled
    statement; the abort statement. Body: ``prev``, ``steps`` (step statements before
    it), ``s_rand`` (revealed), ``reason`` (free text, at most 1000 characters)."""
    reason = reason.strip()
    if not reason or len(reason) > MAX_REASON:
        raise UsageError(f"an abort needs a reason of 1 to {MAX_REASON} characters")
    run = load_run(spool_path, trainer)
    last = run.statements[-1]
    body = {"prev": leaf_hash(last.raw).hex(), "steps": len(run.steps),
            "s_rand": run.meta["s_rand"], "reason": reason}
    data = build_statement("run.close", run.opened.run, last.seq + 1, body, trainer)
    run.spool.put(last.seq + 1, data)
    try:
        _submit(run, client, timeout)
    finally:
        run.spool.close()
    return parse_statement(data)


def _submit(run: SpooledRun, client: LogClient | None, timeout: float) -> None:
    own = client is None
    c = client or run.client()
    sub = Submitter(run.spool, c, run.opened.run)
    sub.start()
    try:
        sub.drain(timeout)
    finally:
        sub.stop()
        sub.join()
        if own:
            c.close()


def resume_session(spool_path: str | Path, trainer: Signer, *, submit_batch: int = 256,
                   client: LogClient | None = None, beacon: BeaconClient | None = None,
                   time_witnesses: Sequence[Verifier] | None = None,
                   time_quorum: int | None = None, time_policy: Policy | None = None,
                   beacon_lead: float = DEFAULT_LEAD,
                   data_dir: str | Path | None = None,
                   nproc: int | None = None) -> TrainingSession:
    """A :class:`~prover.session.TrainingSession` continuing the run in ``spool_path``,
    already resumed: iterate ``batches()``, ``train_step`` each, then ``close()``. A
    drand-mode run needs its ``beacon`` (and the witnesses attesting time) again: its
    ``run.close`` commits a challenge round. ``data_dir``: where the data lives now (the
    recipe's ``data_dir``; default: where it lived when the run was trained, as spooled);
    the data must still hash to the committed root. ``nproc``: the number of processes,
    which must be the run's world size (default: that size); a data-parallel run's ranks
    are started here unless a process group is initialized (then it must have that size).
    The session's ``local_ranks`` are the processes started here: join them with
    :func:`prover.distributed.stop_local` after ``close()``."""
    from prover.recipes import get_recipe
    from prover.session import TrainingSession

    run = load_run(spool_path, trainer)
    m = run.meta
    run.spool.close()
    world = _world(run, nproc)
    if "beacon" not in m or "step0" not in m or "config" not in m:
        raise UsageError(f"{spool_path} does not record the run's beacon and settings "
                         "(written by an older potd, or interrupted before step 0)",
                         hint="abort the run with `potd prover abort` and start a new one")
    drand = run.opened.body.get("beacon")
    if isinstance(drand, dict) and beacon is None:
        raise UsageError("this run's seed comes from a drand beacon: resuming it needs the "
                         "beacon again (its run.close commits a challenge round)",
                         hint="pass --beacon (and --beacon-chain, --witness as for train)")
    recipe = get_recipe(m["recipe"], data_dir=data_dir or m.get("data_dir") or None,
                        **json.loads(m["config"]))
    session: type[TrainingSession] = TrainingSession
    procs: list[Any] = []
    if world > 1:
        import torch.distributed as dist

        from prover.distributed import DataParallelSession, start_local

        session = DataParallelSession
        if not dist.is_initialized():
            procs = start_local(recipe, world, m["weights_hash"],
                                device=m.get("device") or "cpu")
    try:
        sess = _resumed(session, run, recipe, spool_path, trainer, client, submit_batch,
                        beacon if isinstance(drand, dict) else None, beacon_lead,
                        time_witnesses, time_quorum, time_policy)
    except BaseException:
        if procs:
            from prover.distributed import stop_local

            stop_local(procs, timeout=0)
        raise
    sess.local_ranks = procs  # type: ignore[attr-defined]
    return sess


def _world(run: SpooledRun, nproc: int | None) -> int:
    """The run's committed world size, checked against the spool's record and ``nproc``."""
    from prover.distributed import committed_world

    world = committed_world(run.opened.body)
    if run.meta.get("world_size", str(world)) != str(world):
        raise UsageError(f"the spool records world size {run.meta['world_size'][:20]}, the "
                         f"run's run.open commits {world}",
                         hint="this spool is not the one the run was trained with")
    if nproc is not None and nproc != world:
        what = (f"data-parallel with {world} processes" if world > 1
                else "in one process")
        raise UsageError(f"--nproc {nproc}: run {run.opened.run[:16]}... was trained "
                         f"{what}; a resume must use the same world size to reproduce "
                         "its steps bit for bit",
                         hint=f"resume with --nproc {world} (or without --nproc)")
    return world


def _resumed(session: type[TrainingSession], run: SpooledRun, recipe: Any,
             spool_path: str | Path, trainer: Signer, client: LogClient | None,
             submit_batch: int, beacon: BeaconClient | None, beacon_lead: float,
             time_witnesses: Sequence[Verifier] | None, time_quorum: int | None,
             time_policy: Policy | None) -> TrainingSession:
    m = run.meta
    sess = session(recipe, client or run.client(), trainer, m["evidence"], spool_path,
                   per_step_weights=json.loads(m["per_step_weights"]),
                   weights_hash=m["weights_hash"], s_rand=bytes.fromhex(m["s_rand"]),
                   submit_batch=submit_batch, preflight=False, beacon=beacon,
                   beacon_lead=beacon_lead, time_witnesses=time_witnesses,
                   time_quorum=time_quorum, time_policy=time_policy,
                   device=m.get("device") or None)  # the device it trained on
    sess.resume(run.opened, [(st, st.raw) for st in run.steps], bytes.fromhex(m["beacon"]),
                json.loads(m["step0"]))
    return sess


def launched() -> bool:
    """A launcher (torchrun) started this process as one rank of several."""
    import os

    return "RANK" in os.environ and os.environ.get("WORLD_SIZE", "1") not in ("", "1")


def resume_data_parallel(spool_path: str | Path, trainer: Signer, **kw: Any
                         ) -> TrainingSession | DataParallelWorker:
    """This rank's part of resuming the data-parallel run in ``spool_path`` under a
    launcher: every rank calls it with the same arguments, as
    :func:`prover.distributed.data_parallel_session` on every rank started the run, and
    gets its part ready to train (``for b in run.batches(): run.train_step(b)``, then
    ``run.close()``). It checks the launcher's world size against the spooled one (on
    every rank, before any joins), joins the process group from the environment on the
    device the run trained on, then rank 0 resumes the run (:func:`resume_session`,
    ``kw`` as there) and the other ranks build the spooled recipe and restore the
    checkpoint rank 0 names (from its evidence directory, which they must see at the
    same path). ``trainer`` is used by rank 0 only."""
    import os

    import torch.distributed as dist

    from prover.distributed import DataParallelWorker
    from prover.launch import join_from_environment
    from prover.recipes import get_recipe

    if not launched():
        raise UsageError("not started by a launcher: RANK and WORLD_SIZE (> 1) are not set",
                         hint="run it under torchrun, or use resume_session (which starts "
                              "the ranks itself)")
    m = _read_meta(spool_path)
    world = os.environ["WORLD_SIZE"]
    if m.get("world_size", "1") != world:
        raise UsageError(f"the launcher started {world[:20]} processes; run "
                         f"{m['run'][:16]}... was trained by {m.get('world_size', '1')[:20]}",
                         hint=f"launch {m.get('world_size', '1')[:20]} processes "
                              "(torchrun --nproc-per-node)")
    from prover.device import parse_device

    device = m.get("device") or None
    joined = join_from_environment(parse_device(device))
    if dist.get_rank() == 0:
        sess = resume_session(spool_path, trainer, nproc=int(world), **kw)
        sess.owns_group = joined  # type: ignore[attr-defined]  # left when the run ends
        return sess
    data_dir = kw.get("data_dir") or m.get("data_dir") or None
    try:
        recipe = get_recipe(m["recipe"], data_dir=data_dir, **json.loads(m["config"]))
    except (KeyError, ValueError) as e:
        raise UsageError(f"{spool_path} does not record the run's recipe settings ({e})",
                         hint="abort the run with `potd prover abort`") from None
    w = DataParallelWorker(recipe, m["weights_hash"], device)
    w.owns_group = joined
    w.open()
    return w


def _read_meta(spool_path: str | Path) -> dict[str, str]:
    """The spool's meta table, read without writing (rank 0 holds the spool open)."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{Path(spool_path).resolve()}?mode=ro", uri=True,
                             timeout=30) as conn:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.Error as e:
        raise UsageError(f"cannot read the spool {spool_path}: {e}") from None
    if "run" not in meta or "weights_hash" not in meta:
        raise UsageError(f"{spool_path} is not a potd spool with a run in it")
    return dict(meta)
