"""Selective disclosure of a data-parallel run (docs/protocol.md §4.8, §4.9): the
disclosed global batches are replayed split per the committed shard rule, in exact mode
by the trainer's world of spawned gloo processes (the disclosed examples handed to each)
and in tolerance mode by one process. Real 2-rank DDP training of the directory-of-files
user recipe of test_disclosure_filedir: the auditor has no data directory, so a replay
process that read the recipe's data() instead of the disclosed files would fail."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from e2e import checks, drive_data_parallel, make_env
from test_disclosure_filedir import Case

from prover.distributed import DataParallelSession, DataParallelWorker, start_local
from prover.recipes import get_recipe
from prover.session import Batch


def _relabel(batch: Batch, steps: int) -> Batch:
    """The committed batch (its root kept) with other labels, from the middle on."""
    if batch.step < steps // 2:
        return batch
    return Batch(batch.step, batch.epoch, batch.indexes, batch.x, (batch.y + 1) % 10,
                 batch.root)


class SubstitutingSession(DataParallelSession):
    """Rank 0 of a run whose every rank trains on relabelled data (so the ranks agree)
    while the batch roots committed are the honest ones."""

    def train_step(self, batch: Batch) -> float:
        return super().train_step(_relabel(batch, len(self.plan)))


class SubstitutingWorker(DataParallelWorker):
    def train_step(self, batch: Batch) -> float:
        return super().train_step(_relabel(batch, len(self.plan)))


def _train(case: Case, tag: str, session: type[DataParallelSession], worker: str) -> str:
    env, recipe = case.env, get_recipe(case.spec, data_dir=case.data)
    procs = start_local(recipe, 2, worker=worker)
    s = session(recipe, env.client(), env.trainer, env.dir / f"ev-{tag}",
                env.dir / f"{tag}.spool", data_dir=case.data)
    drive_data_parallel(s, procs)
    return s.run_id


def _audit(case: Case, run: str, url: str, tag: str, mode: str, **kw: Any
           ) -> dict[str, Any]:
    kw.setdefault("samples", 2)
    return case.env.audit(run, case.env.dir / f"ev-{tag}", state=f"state-{tag}-{mode}",
                          disclosure=url, public_challenge=True, replay_mode=mode,
                          recipe=case.spec, memorization_segments=1, **kw)


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Case]:
    root = tmp_path_factory.mktemp("dp-disclosure")
    for env in make_env(root):
        yield Case(env, root)


@pytest.mark.slow
def test_dp_run_audits_with_disclosure_in_both_modes(case: Case) -> None:
    run = _train(case, "dp", DataParallelSession, "prover.distributed:DataParallelWorker")
    srv = case.serve(run, max_samples=2, max_memorization=1)
    try:
        exact = _audit(case, run, srv.url, "dp", "exact", seed=bytes(32))
        tol = _audit(case, run, srv.url, "dp", "tolerance", seed=bytes(32))
    finally:
        srv.stop()
    for rep, how in ((exact, "2 gloo processes"), (tol, "one process")):
        assert rep["verdict"] == "pass", [x for x in rep["checks"] if x["status"] != "pass"]
        c = checks(rep)
        assert c["disclosure"] == c["replay"] == "pass"
        assert rep["replay"]["world_size"] == 2 and how in rep["replay"]["mode_reason"]
        assert 0 < rep["disclosure"]["train"]["fraction"] < 1
    assert exact["replay"]["mode"] == "exact" and tol["replay"]["mode"] == "tolerance"


@pytest.mark.slow
def test_dp_data_substitution_caught_with_disclosure(case: Case) -> None:
    run = _train(case, "dp-atk", SubstitutingSession,
                 "test_disclosure_dp:SubstitutingWorker")
    srv = case.serve(run, max_samples=1, max_memorization=1)
    try:  # the final segment, relabelled, is always replayed
        rep = _audit(case, run, srv.url, "dp-atk", "exact", samples=1)
    finally:
        srv.stop()
    c = checks(rep)
    assert c["disclosure"] == "pass" and c["replay"] == "fail", rep["checks"]
    assert rep["verdict"] == "fail" and rep["replay"]["world_size"] == 2
