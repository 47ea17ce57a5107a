"""Segment replays as Ray tasks (``potd auditor audit --ray auto|ADDRESS``).

Each task gets a :class:`~auditor.replay.SegmentJob` (one, or for an exact
data-parallel replay as many as fill the cluster; plain data: the evidence
location is a shared directory or the HTTP evidence transport's URL, which the task reads
and checks itself) and returns the :class:`~auditor.replay.SegmentResult` as a plain
dict. The tasks run the same functions a local audit runs (:func:`~auditor.replay.
replay_segment`; for a data-parallel run :func:`~auditor.replay_dp.replay_segments` with
the committed world size, or :func:`~auditor.replay_dp.replay_split`), so the report is
the local one apart from timings. A task asks for one CPU per torch thread of each
process it runs (the run's thread count, which every replay uses; at most the cluster's
CPUs), so Ray runs no more replays at once than there are cores, and on a CUDA audit
(``--device cuda[:i]``) one GPU per process it runs (:func:`task_gpus`): Ray makes those
the task's only visible GPUs, so its ranks train on ``cuda:0..`` there whatever index
``--device`` names (:func:`auditor.replay_dp.replay_device`).

Ray is the optional extra ``potd[ray]``. Trusts: the Ray cluster the auditor names (its
workers compute the verdict's replays). A worker runs *its own* installed potd, so every
task answers with :func:`worker_identity` — potd's version, a hash of its code, and the
library versions replays depend on — and a task whose worker differs from the auditor is
not used: its segments are *not replayed* (inconclusive), never judged by other code or
in another environment than the audit's replay mode assumes.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

from ledger.errors import UsageError

from .replay import SegmentJob, SegmentResult, not_replayed


def connect(address: str) -> None:
    """Join the Ray cluster at ``address`` (``auto``: the one this machine runs, else a
    new local instance); a no-op when this process is connected already."""
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray, which is not installed",
                         hint="pip install 'potd[ray]'") from None
    if ray.is_initialized():
        return
    try:
        ray.init(address=None if address == "local" else address,
                 include_dashboard=False, log_to_driver=False)
    except ConnectionError:
        if address != "auto":
            raise UsageError(f"no Ray cluster at {address}",
                             hint="start one (ray start --head) or pass --ray auto") from None
        ray.init(include_dashboard=False, log_to_driver=False)


@functools.cache
def worker_identity() -> dict[str, str | None]:
    """What a replay's result depends on besides its job: potd's version and a SHA-256
    over its packages' Python sources (path and bytes, in path order), and the versions
    of torch, numpy and Python. The same installation gives the same identity wherever
    it lives."""
    import platform

    import torch

    from .audit import potd_version

    h = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    for pkg in ("ledger", "prover", "auditor"):
        for f in sorted((root / pkg).rglob("*.py")):
            rel = f.relative_to(root).as_posix().encode()
            h.update(len(rel).to_bytes(4, "big") + rel + f.read_bytes())
    try:
        import numpy
        numpy_version: str | None = numpy.__version__
    except ImportError:
        numpy_version = None
    return {"potd": potd_version(), "code": h.hexdigest(), "torch": torch.__version__,
            "numpy": numpy_version, "python": platform.python_version()}


def task_results(reply: Any, jobs: list[SegmentJob], mine: dict[str, str | None]
                 ) -> list[SegmentResult]:
    """The results of a task that answered ``reply``: used only when its worker's
    identity is the auditor's (``mine``); otherwise its segments are not replayed,
    naming what differs (a worker of an older potd answers without an identity)."""
    theirs = reply.get("identity") if isinstance(reply, dict) else None
    if isinstance(theirs, dict) and theirs == mine and isinstance(reply.get("results"), list):
        return [SegmentResult(**r) for r in reply["results"]]
    if not isinstance(theirs, dict):
        why = "a potd without worker identities (older than the auditor's)"
    else:
        why = ", ".join(f"{k} {str(theirs.get(k))[:16]} (auditor: {str(mine.get(k))[:16]})"
                        for k in sorted(set(mine) | set(theirs), key=str)[:20]
                        if theirs.get(k) != mine.get(k))[:400]
    return [not_replayed(job, f"the Ray worker runs other code or libraries than the "
                              f"auditor: {why}; install the auditor's potd and libraries "
                              "on the workers") for job in jobs]


def _task(kind: str, jobs: list[SegmentJob], world: int, gpu: bool = False
          ) -> dict[str, Any]:
    """Run in a Ray worker: ``{"identity": worker_identity(), "results": [...]}``.
    ``gpu``: the task holds the GPUs it asked for (:func:`task_gpus`), numbered from
    ``cuda:0`` here whatever index the audit's ``--device`` names
    (:func:`auditor.replay_dp.replay_device`)."""
    return {"identity": worker_identity(), "results": _replays(kind, jobs, world, gpu)}


def _replays(kind: str, jobs: list[SegmentJob], world: int, gpu: bool
             ) -> list[dict[str, Any]]:
    if kind == "exact-dp":  # one process group for all the task's segments
        from .replay_dp import replay_segments

        return [r.to_json() for r in replay_segments(jobs, world, assigned=gpu)]
    if gpu:
        from dataclasses import replace

        from .replay_dp import rank_devices

        jobs = [replace(j, device=str(rank_devices(j.device, 1, assigned=True)[0]))
                for j in jobs]
    if kind == "split":
        from .replay_dp import replay_split

        return [replay_split(job, world).to_json() for job in jobs]
    from .replay import replay_segment

    return [replay_segment(job).to_json() for job in jobs]


def task_gpus(kind: str, world: int, gpu: bool) -> int:
    """The GPUs a task asks for: one per process it replays with (an exact
    data-parallel replay runs the committed world's ranks; the others one process), none
    for a CPU audit."""
    return (world if kind == "exact-dp" else 1) if gpu else 0


def task_cpus(jobs: list[SegmentJob], processes: int, cluster: float) -> int:
    """The CPUs a task asks for: one per torch thread of each process it runs (every
    replay runs with the run's thread count), at most the cluster's. Asking for fewer
    would let Ray run more replays at once than there are cores: their threads then
    compete with each other and with Ray's own processes (on a 2-core machine, two
    2-thread replays at once took 1.25-1.41x the wall time of the same replays one after
    the other, and a cold start imported torch in two workers at once)."""
    threads = max((j.threads or 1 for j in jobs), default=1)
    return max(1, min(processes * threads, int(cluster)))


def ray_map(jobs: list[SegmentJob], address: str, *, world: int = 1, exact: bool = True,
            gpu: bool = False) -> list[SegmentResult]:
    """Replay ``jobs`` as Ray tasks; results in job order. A task that fails (a lost
    worker, an exception: the replay itself reports bad evidence in its result) leaves
    its segments not replayed (``unavailable``), with the reason."""
    import ray

    connect(address)
    kind = "exact-dp" if world > 1 and exact else "split" if world > 1 else "single"
    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call, unused-ignore]
    cpus = task_cpus(jobs, world if kind == "exact-dp" else 1, resources.get("CPU", 1))
    task = ray.remote(_task).options(num_cpus=cpus, num_gpus=task_gpus(kind, world, gpu),
                                     max_retries=0)
    # one segment per task; an exact data-parallel replay spawns its world's processes
    # once per task, so its segments go in as many tasks as the cluster runs at once
    slots = max(1, int(resources.get("CPU", 1)) // cpus)
    size = 1 if kind != "exact-dp" else -(-len(jobs) // slots)
    chunks = [jobs[i:i + size] for i in range(0, len(jobs), size)]
    # ``gpu`` only when set: a CPU audit's tasks call _task as workers of older potd
    # expect (which then answer without an identity: see task_results)
    refs = [task.remote(kind, chunk, world, *([gpu] if gpu else [])) for chunk in chunks]
    mine = worker_identity()
    out = []
    for chunk, ref in zip(chunks, refs, strict=True):
        try:
            out += task_results(ray.get(ref), chunk, mine)
        except Exception as e:  # noqa: BLE001 — a lost task: its segments not replayed
            out += [not_replayed(job, f"Ray task failed: {type(e).__name__}: "
                                      f"{str(e)[:200]}") for job in chunk]
    return out
