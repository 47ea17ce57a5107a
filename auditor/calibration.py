"""Which replay mode an audit uses, and the tolerance of tolerance mode (docs/protocol.md
§5, step 7).

Exact mode (weights hashes bit for bit) is chosen only when the run's recorded
environment is the auditor's: ``torch``, ``device`` (the device type, :mod:`prover.device`)
and ``threads`` present and equal, and every other field both record equal (a run trained
on CUDA and replayed on the CPU, or the reverse, is always tolerance mode). Otherwise
distances are judged against 10x the *honest reproduction noise*, measured here so that
it cannot degenerate:

* the noise replays use thread counts that really differ from the replay's own (the
  trainer's recorded count, and 2 when the replay runs on 1 thread, else 1) — never
  1 thread against 1;
* they start from the same checked evidence and are compared with each other, never with
  the commitment, so a forged checkpoint cannot inflate the tolerance;
* noise 0 (every replay agrees bit for bit) measures nothing: then no tolerance exists,
  and a distance above 0 makes the replay *inconclusive* with the reason — never a fail
  at an arbitrary floor.

Trusts: the auditor's own replays; the run's recorded environment only as a hint of
which thread count to try.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ledger.errors import PotdError

if TYPE_CHECKING:
    from .audit import Audit, AuditOptions
    from .replay import SegmentJob, SegmentResult

# environment fields that must be present and equal for exact (bit-for-bit) replay; any
# other field both environments record must be equal too
ENV_KEYS = ("torch", "device", "threads")
NOISE_FACTOR = 10


def same_environment(run: dict[str, Any], mine: dict[str, Any]) -> bool:
    """The run's recorded environment is the auditor's (see the module docstring)."""
    return all(k in run and run[k] == mine.get(k) for k in ENV_KEYS) and all(
        run[k] == mine[k] for k in set(run) & set(mine))


def mode_reason(opts: AuditOptions, same: bool, run: dict[str, Any],
                mine: dict[str, Any]) -> str:
    """Why the audit replays in the mode it does (for the report)."""
    if opts.tolerance is not None:
        return f"--tolerance {opts.tolerance:g} given"
    if opts.replay_mode != "auto":
        return f"--replay-mode {opts.replay_mode} given"
    if same:
        return "the run's recorded environment equals the auditor's"
    diff = [f"{k} {run.get(k)!r} vs {mine.get(k)!r}" for k in sorted(set(run) | set(mine))
            if (k in ENV_KEYS or (k in run and k in mine)) and run.get(k) != mine.get(k)]
    why = "environment differs (run vs auditor): " + ", ".join(diff)[:300]
    if run.get("device") != mine.get("device"):  # e.g. trained on CUDA, replayed on CPU
        why = (f"the run trained on device type {str(run.get('device'))[:20]!r}, the auditor "
               f"replays on {mine.get('device')!r}: kernels differ across device types, so "
               "replay is compared under a tolerance; " + why)
    return why


def recorded_threads(v: Any) -> int | None:
    """A recorded thread count worth calibrating with (an int 1..256), else None."""
    return v if type(v) is int and 1 <= v <= 256 else None


def noise_threads(mine: int, run: dict[str, Any]) -> list[int]:
    """Thread counts to replay against ``mine``: the trainer's recorded one, and 2 if
    ``mine`` is 1, else 1 — each different from ``mine``, without repeats."""
    wanted = (recorded_threads(run.get("threads")), 2 if mine == 1 else 1)
    return list(dict.fromkeys(n for n in wanted if n is not None and n != mine))


def calibrate(a: Audit, jobs: list[SegmentJob], results: list[SegmentResult],
              run: dict[str, Any], threads: int) -> tuple[float | None, str | None]:
    """``(tolerance, None)``, or ``(None, why the distances cannot be judged)``.

    Replays the segment furthest from its commitment with ``threads`` and with each of
    :func:`noise_threads`; records ``calibration`` in the report. ``(None, None)`` when
    no replay yielded a distance (its errors fail the replay on their own)."""
    from .replay import noise_distance

    ok = [(r.distance, j) for r, j in zip(results, jobs, strict=True)
          if r.error is None and r.distance is not None]
    if not ok:
        return None, None
    job = max(ok, key=lambda x: x[0])[1]
    others = noise_threads(threads, run)
    noise = 0.0
    tried = []
    for n in others:
        try:
            d = noise_distance(job, (threads, n))
        except (PotdError, RuntimeError, ValueError, KeyError, IndexError, TypeError) as e:
            why = f"replay noise could not be measured: {getattr(e, 'message', e)}"
            a.report["calibration"] = {"reason": why, "tolerance": None}
            return None, why
        tried.append({"threads": [threads, n], "distance": d})
        noise = max(noise, d)
    cal: dict[str, Any] = {
        "noise": noise, "segment": [job.start, job.end], "replays": tried,
        "method": f"{threads} vs {' and '.join(map(str, others))} threads from the same "
                  f"checked start; tolerance {NOISE_FACTOR}x the noise"}
    a.report["calibration"] = cal
    if noise > 0.0 and math.isfinite(noise):
        cal["tolerance"] = NOISE_FACTOR * noise
        return NOISE_FACTOR * noise, None
    cal["tolerance"] = None
    worst = max(d for d, _ in ok)
    why = ("replay noise cannot be calibrated: replays with "
           f"{' and '.join(str(t['threads']) for t in tried)} threads agree bit for bit, so "
           "how far honest training in the trainer's environment may drift is unknown, and "
           f"the largest distance from a commitment ({worst:.3g}) can be judged neither "
           "drift nor forgery")
    cal["reason"] = why
    return None, why
