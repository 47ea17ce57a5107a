"""Data-parallel training (2 gloo processes, real DDP) and its audit: every step
committed, the ranks' agreement check, exact (2 processes) and tolerance (1 process)
replay, and (with Ray installed) the exact audit on a local Ray equal to the local one."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import torch
from e2e import Env, checks, drive_data_parallel

from ledger.errors import MalformedError, UsageError
from prover.derive import check_world, shard_bounds
from prover.distributed import (
    DataParallelError,
    DataParallelSession,
    DataParallelWorker,
    start_local,
    stop_local,
)
from prover.hashing import hash_tensors
from prover.recipes import get_recipe
from prover.session import Batch


def test_shard_vector() -> None:
    # docs/protocol.md §4.8
    assert shard_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert shard_bounds(32, 2) == [(0, 16), (16, 32)]
    assert shard_bounds(29, 2) == [(0, 14), (14, 29)]
    with pytest.raises(UsageError):
        shard_bounds(2, 3)
    check_world(1437, 32, 2)
    with pytest.raises(UsageError, match="fewer examples than ranks"):
        check_world(65, 32, 2)  # the last batch of an epoch holds 1 example


def test_shard_digest_is_equal_exactly_for_the_same_examples() -> None:
    # what the ranks compare after each step: the bytes fed, whatever memory holds them
    from prover.agreement import shard_digest, shard_digests

    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 9, (8, 64), generator=g), torch.randint(0, 9, (8, 64))
    d = shard_digest(x, y)
    assert shard_digest(x.clone(), y.clone()) == d
    assert shard_digest(torch.cat([x, x])[8:], y.t().contiguous().t()) == d  # other memory
    z = torch.randn(8, 6, generator=g)
    assert shard_digest(z[:, ::2], y) == shard_digest(z[:, ::2].contiguous(), y)
    changed = x.clone()
    changed[5, 7] += 1
    others = [shard_digest(changed, y), shard_digest(x.flip(0), y.flip(0)),  # order
              shard_digest(x[:4], y[:4]),                                    # fewer rows
              shard_digest(x.view(4, 128), y),                               # shape
              shard_digest(x.to(torch.int32), y),                            # dtype
              shard_digest(x.view(torch.float64), y),                        # same bytes
              shard_digest(y, x)]                                            # x and y swapped
    assert len({d, *others}) == 1 + len(others)
    # the x/y boundary is framed: moving a column from x to y changes the digest
    xy = torch.cat([x, y], 1)
    assert shard_digest(xy[:, :64], xy[:, 64:]) == d
    assert shard_digest(xy[:, :63], xy[:, 63:]) != d
    assert shard_digest(torch.zeros(0, 3), torch.zeros(0)) != shard_digest(torch.zeros(0, 2),
                                                                           torch.zeros(0))
    # the shards of a global batch, from one byte view of it (as the agreement takes them)
    for xs, ys in [(x, y), (z[:, ::2], torch.arange(8)), (x.bool(), y.to(torch.bfloat16)),
                   (z.half(), x.to(torch.uint8)), (z.double(), x.to(torch.int16))]:
        bounds = shard_bounds(8, 3)
        got = shard_digests(xs, ys, bounds)
        assert got == [shard_digest(xs[lo:hi], ys[lo:hi]) for lo, hi in bounds]
        assert got == [_shard_digest_by_definition(xs[lo:hi], ys[lo:hi]) for lo, hi in bounds]


def _shard_digest_by_definition(x: torch.Tensor, y: torch.Tensor) -> bytes:
    """SHA-256 of the header and each tensor's potd-tensors-v1 frame and bytes, from
    prover.hashing's own framing (no fast path)."""
    import hashlib

    from prover.agreement import SHARD_HEADER
    from prover.hashing import _frame, dtype_name, tensor_bytes

    h = hashlib.sha256(SHARD_HEADER)
    for name, t in (("x", x), ("y", y)):
        raw = tensor_bytes(t)
        h.update(_frame(name, dtype_name(t), t.shape, raw.nbytes) + bytes(raw))
    return h.digest()


def test_auditor_checks_the_committed_world() -> None:
    from auditor.replay_dp import world_size

    def dp(**kw: Any) -> dict[str, Any]:
        return {"data_parallel": {"world_size": 2, "split": "potd-shard-v1", **kw}}

    assert world_size({}, 1437, 32) == 1
    assert world_size(dp(), 1437, 32) == 2
    for body in (dp(split="potd-shard-v0"), dp(world_size=0), dp(world_size=10**9),
                 dp(world_size="2"), dp(world_size=True), {"data_parallel": "2"}):
        with pytest.raises(MalformedError):
            world_size(body, 1437, 32)
    with pytest.raises(MalformedError, match="fewer examples than ranks"):
        world_size(dp(), 65, 32)  # a step of one example cannot have been split over 2


class OtherBatchWorker(DataParallelWorker):
    """Rank 1 trains step 3 on the other half of the batch (rank 0's shard)."""

    def shard(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if batch.step == 3:
            lo, hi = shard_bounds(len(batch.indexes), self.world)[0]
            return batch.x[lo:hi], batch.y[lo:hi]
        return super().shard(batch)


class InPlaceShardWorker(DataParallelWorker):
    """Rank 1 feeds step 3 its shard's own tensors (the memory rank 0's check would trust
    without rehashing them), changed in place: other examples in the same memory."""

    def shard(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = super().shard(batch)
        if batch.step == 3:
            x.add_(1)
        return x, y


class DriftingWorker(DataParallelWorker):
    """Rank 1's weights drift in the update of step ``DRIFT`` (the last step when None)."""

    DRIFT: int | None = 3

    def shard(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if batch.step == 0:
            self.optimizer.register_step_post_hook(self._drift)
        self._step = batch.step
        return super().shard(batch)

    def _drift(self, *_: Any) -> None:
        if self._step == (len(self.plan) - 1 if self.DRIFT is None else self.DRIFT):
            with torch.no_grad():
                next(self.model.parameters()).add_(1e-3)


class LastStepDriftingWorker(DriftingWorker):
    DRIFT = None


class HashingSession(DataParallelSession):
    """Rank 0, also hashing its weights independently after every step; flushes after
    step 5 and counts the statements spooled then."""

    def train_step(self, batch: Batch) -> float:
        loss = super().train_step(batch)
        self.after.append(hash_tensors(self.model.state_dict(), self.alg))
        if batch.step == 5:
            from prover.spool import Spool

            self.flush()
            self.spooled_at_5 = Spool(self.spool.path).counts()[0]
        return loss


def train_dp(env: Env, tag: str, worker: str | None = None,
             cls: type[DataParallelSession] = DataParallelSession,
             recipe_name: str = "digits-mlp", **overrides: Any) -> DataParallelSession:
    recipe = get_recipe(recipe_name, **{"epochs": 1, **overrides})
    procs = start_local(recipe, 2, worker=worker or
                        "prover.distributed:DataParallelWorker")
    s = env.session(tag, cls=cls, recipe=recipe_name, overrides=overrides)
    s.after = []  # type: ignore[attr-defined]
    drive_data_parallel(s, procs)
    return s


@pytest.mark.slow
def test_two_rank_run_commits_every_step_and_audits_in_both_modes(
        env: Env, ray_available: bool) -> None:
    tkey = env.dir / "trainer.key"
    tkey.write_text(env.trainer.private_string())
    t = subprocess.run([sys.executable, "-m", "ledger", "prover", "train", "--nproc", "2",
                        "--recipe", "digits-mlp", "--epochs", "1", "--log", env.url,
                        "--vkey", str(env.log_key.verifier), "--key", str(tkey),
                        "--evidence", str(env.dir / "ev-dp"), "--json",
                        str(env.dir / "dp.json")], capture_output=True, text=True, timeout=600)
    assert t.returncode == 0, t.stderr
    summary = json.loads((env.dir / "dp.json").read_text())
    n = summary["steps"]
    assert summary["statements"] == n + 2
    run = summary["run"]
    with env.client() as c:
        cp = c.checkpoint()
        entries = [json.loads(e) for e in c.entries(0, cp.size, cp)]
    opened = entries[0]["body"]
    assert opened["data_parallel"] == {"world_size": 2, "split": "potd-shard-v1",
                                       "backend": "gloo"}
    assert [e["kind"] for e in entries] == ["run.open"] + ["step"] * n + ["run.close"]
    seed = bytes(range(32))  # the same sample for the local and the Ray audit
    exact = env.audit(run, env.dir / "ev-dp", replay_mode="exact", samples=2, seed=seed)
    assert checks(exact)["replay"] == "pass", exact["checks"]
    rep: Any = exact["replay"]
    assert rep["mode"] == "exact" and "2 gloo processes" in rep["mode_reason"]
    tol = env.audit(run, env.dir / "ev-dp", replay_mode="tolerance", samples=2,
                    state="state-tol")
    assert checks(tol)["replay"] == "pass", [c for c in tol["checks"] if c["name"] == "replay"]
    assert "one process" in tol["replay"]["mode_reason"]
    if ray_available:  # the same replays as Ray tasks: the same report
        from test_ray import comparable

        on_ray = env.audit(run, env.dir / "ev-dp", replay_mode="exact", samples=2,
                           seed=seed, ray="auto", state="state-ray")
        assert on_ray["options"]["ray"] == "auto"
        assert comparable(on_ray) == comparable(exact)


@pytest.mark.slow
def test_rank_training_another_batch_is_refused_while_training(env: Env) -> None:
    with pytest.raises(DataParallelError, match=r"step 3: rank\(s\) 1 trained on examples"):
        train_dp(env, "bad", worker="test_distributed:OtherBatchWorker")
    # nothing after step 2 was committed: the spool holds run.open and steps 0..2
    from prover.spool import Spool

    total, _ = Spool(str(env.dir / "bad.spool")).counts()
    assert total == 4


@pytest.mark.slow
@pytest.mark.parametrize("worker", ["DriftingWorker", "LastStepDriftingWorker"])
def test_rank_whose_weights_drift_stops_the_run_before_a_later_update_or_commit(
        env: Env, worker: str) -> None:
    # the agreement on step t runs beside step t+1's forward and backward: the error
    # comes at step t+1's update, before it changes a weight, or (after the last step)
    # at close; step t is not committed, nor anything after it
    from prover.spool import Spool

    recipe = get_recipe("digits-mlp", epochs=1)
    procs = start_local(recipe, 2, worker=f"test_distributed:{worker}")
    s = env.session(worker, cls=HashingSession)
    s.after = []  # type: ignore[attr-defined]
    try:
        with pytest.raises(DataParallelError) as e:
            s.open()
            for b in s.batches():
                s.train_step(b)
            s.close()
        drift = len(s.plan) - 1 if worker.startswith("Last") else 3
        assert e.value.message.startswith(f"step {drift}: the weights of rank(s) 1 differ")
        after: list[str] = s.after  # type: ignore[attr-defined]
        assert len(after) == drift + 1  # step drift+1's update never ran
        assert hash_tensors(s.model.state_dict(), s.alg) == after[-1]
        s._shutdown()
    finally:
        stop_local(procs, timeout=30)
    assert all(p.exitcode == 1 for p in procs)  # rank 1 saw it too
    spool = Spool(str(env.dir / f"{worker}.spool"))
    assert spool.counts()[0] == 1 + drift  # run.open, steps 0..drift-1: no run.close
    kinds = [json.loads(d)["kind"] for _, d in spool.statements()]
    assert kinds == ["run.open"] + ["step"] * drift


@pytest.mark.slow
def test_rank_changing_its_shard_in_place_is_refused_while_training(env: Env) -> None:
    # a rank feeding its shard's own memory is not rehashed: its digest comes from the
    # batch as it loaded it, so changing that memory changes what it reports
    with pytest.raises(DataParallelError, match=r"step 3: rank\(s\) 1 trained on examples"):
        train_dp(env, "inplace", worker="test_distributed:InPlaceShardWorker")


@pytest.mark.slow
@pytest.mark.parametrize("recipe_name,overrides", [
    ("digits-mlp", {}),                                 # weights streamed to the commit process
    ("wide-mlp", {"hidden": 400, "k": 4, "epochs": 1}),  # 1.4 MB: the hasher thread's path
])
def test_each_step_commits_the_weights_hash_the_ranks_agreed_on(
        env: Env, recipe_name: str, overrides: dict[str, Any]) -> None:
    # rank 0 hashes its weights once per step (for the agreement) and commits that hash;
    # checkpoint steps still go through the session's snapshot path
    s = train_dp(env, f"h-{recipe_name}", cls=HashingSession, recipe_name=recipe_name,
                 **overrides)
    with env.client() as c:
        cp = c.checkpoint()
        entries = [json.loads(e) for e in c.entries(0, cp.size, cp)]
    steps = [e["body"] for e in entries if e["kind"] == "step" and e["run"] == s.run_id]
    assert [b["step"] for b in steps] == list(range(len(s.plan)))
    assert [b["weights"] for b in steps] == s.after  # type: ignore[attr-defined]
    assert sum("checkpoint" in b for b in steps) >= 2
    a = s._agreement
    if a.threaded:  # every step's rows all-gathered on the agreement's thread
        assert (a.carried, a.alone) == (0, len(s.plan))
        assert s.spooled_at_5 == 1 + 6  # type: ignore[attr-defined]
    else:  # every step's rows rode on the next step's gradient all-reduce, but the last's
        assert (a.carried, a.alone) == (len(s.plan) - 1, 1)
        # a flush on rank 0 alone makes the agreed steps durable (0..4); step 5's rows
        # wait for step 6's all-reduce, which the other rank is not in yet
        assert s.spooled_at_5 == 1 + 5  # type: ignore[attr-defined]


@pytest.mark.slow
def test_world_size_the_batch_cannot_split_is_refused_before_logging(env: Env) -> None:
    recipe = get_recipe("digits-mlp", epochs=1, batch_size=1)
    procs = start_local(recipe, 2)
    s = env.session("tiny", cls=DataParallelSession, overrides={"batch_size": 1})
    try:
        with pytest.raises(UsageError, match="fewer examples than ranks"):
            s.open()
    finally:
        stop_local(procs)
    assert all(p.exitcode == 1 for p in procs)  # told by rank 0, not left waiting
    with env.client() as c:
        assert c.checkpoint().size == 0
