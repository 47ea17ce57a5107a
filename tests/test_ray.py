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
