"""``potd auditor audit --ray``: the segment replays as tasks on a real local Ray instance
(2 CPUs, one for the session: conftest's ``ray_available``), the report equal to a local
audit's apart from timings, for a single-process run and a forged one (a data-parallel
run: tests/test_distributed.py). Skipped without Ray, unless ``POTD_REQUIRE_RAY=1`` (set
by .ci/run), which turns the skip into a failure."""

from __future__ import annotations

from typing import Any

import pytest
from e2e import Env, checks

from prover.attacks import ForgedCheckpoint

SEED = bytes(range(32))  # the same auditor randomness for both audits: the same sample


def comparable(report: Any) -> Any:
    """The report without what differs between two audits of the same run: timings, the
    time it was made, and the options (which name Ray)."""
    if isinstance(report, dict):
        return {k: comparable(v) for k, v in report.items()
                if k not in ("seconds", "generated_at", "timing", "options")}
    if isinstance(report, list):
        return [comparable(v) for v in report]
    return report


def both(env: Env, run: str, tag: str, **kw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    kw.setdefault("samples", 2)
    local = env.audit(run, env.dir / f"ev-{tag}", state=f"s-{tag}-l", seed=SEED, **kw)
    on_ray = env.audit(run, env.dir / f"ev-{tag}", state=f"s-{tag}-r", seed=SEED, ray="auto",
                       **kw)
    return local, on_ray


@pytest.mark.slow
def test_ray_audit_equals_local_and_catches_a_forged_segment(env: Env,
                                                             ray_local: None) -> None:
    honest = env.train("honest")
    local, on_ray = both(env, honest.run_id, "honest")
    assert checks(local)["replay"] == "pass"
    assert on_ray["options"]["ray"] == "auto"
    assert comparable(on_ray) == comparable(local)
    forged = env.train("forged", cls=ForgedCheckpoint)
    local, on_ray = both(env, forged.run_id, "forged", samples=1000)
    assert checks(local)["replay"] == "fail"
    assert comparable(on_ray) == comparable(local)


def test_a_worker_with_other_code_or_libraries_is_not_trusted() -> None:
    """A Ray worker runs its own installed potd: a task answering with another identity
    (another potd, other libraries, or an older potd answering without one) leaves its
    segments not replayed — inconclusive, never judged by that code."""
    from auditor.replay import SegmentJob
    from auditor.replay_ray import task_results, worker_identity

    mine = worker_identity()
    assert len(str(mine["code"])) == 64 and mine["torch"]
    jobs = [SegmentJob(recipe="digits-mlp", config={}, seed=b"s" * 32, n_examples=10,
                       algorithm="sha256", evidence="ev", start=s, end=s + 4,
                       start_weights="w", start_weights_hash="h", start_optimizer=None,
                       start_optimizer_hash=None, step_hashes=(), step_starts=())
            for s in (0, 5)]
    result = {"start": 0, "end": 4, "match": True, "first_mismatch_step": None,
              "distance": None, "tolerance": None, "seconds": 1.0}
    ok = task_results({"identity": dict(mine), "results": [result]}, jobs[:1], mine)
    assert ok[0].match and not ok[0].unavailable
    for reply, named in [([result], "older"),  # a worker of an older potd: a bare list
                         ({"identity": {**mine, "code": "0" * 64}, "results": [result]},
                          "code"),
                         ({"identity": {**mine, "torch": "2.0.0"}, "results": [result]},
                          "torch 2.0.0")]:
        got = task_results(reply, jobs, mine)
        assert [(r.start, r.match, r.unavailable) for r in got] == [(0, False, True),
                                                                     (5, False, True)]
        assert named in str(got[0].error) and "install the auditor's potd" in str(got[0].error)
