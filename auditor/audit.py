"""The audit of one training run (docs/protocol.md §5), producing a report dict.

Each check appends ``{"name", "status", "summary", "evidence"}`` with status

* ``pass``;
* ``fail`` — evidence of a false claim: something the trainer (or the log) committed is
  contradicted by what the auditor recomputed or fetched (a missing object the log names
  is evidence too: the trainer withheld it);
* ``inconclusive`` — the check could not be made, which says nothing against the claim:
  the log or the evidence location unreachable or absent (no manifest at all), a drand
  round not fetchable, replay noise that cannot be calibrated;
* ``warn`` — passed, with something a reader must see (shown with any pass);
* ``skip`` — not applicable or not asked for.

The verdict is ``fail`` if any check failed, else ``inconclusive`` if any check was
inconclusive (or a check that matters was skipped: replay, seed, order, init), else
``pass`` (``warnings`` lists the checks that warned). Mistakes of the caller — a pinned
key that does not sign this log, bad arguments — are no verdict at all: they raise
:class:`~ledger.errors.UsageError` (exit 2 in the CLI).

The report's header records what the verdict depends on: potd's version, the policy
(``--max-abandoned``, ``--require-drand``, the witness quorum, ``--max-model-bytes``,
the challenge kind) and the other audit options.

Order matters for trust: the checkpoint is verified (and its consistency with the
auditor's stored state) before any entry is read; entries are trusted only after the
root recomputed from them equals the verified root; evidence only after its bytes match
their content address and their tensors match the hash the log committed.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ledger.client import LogClient
from ledger.drand import ChainInfo
from ledger.errors import (
    DeadlineExceeded,
    LimitError,
    PeerUnreachable,
    PotdError,
    PushbackError,
    UsageError,
    VerificationError,
)
from ledger.note import SignedCheckpoint, open_checkpoint
from ledger.statement import Statement
from prover.derive import choose

from .logview import LogSnapshot, fetch_entries
from .runs import RunView, check_run, complete_siblings, grinding_evidence, group_runs, identity

FRACTIONS = (0.01, 0.05, 0.1, 0.25, 0.5)


@dataclass
class AuditOptions:
    run: str
    evidence: str
    recipe: str | None = None
    data_dir: str | None = None         # the auditor's copy of the data (Recipe.data_dir)
    samples: int = 4
    public_challenge: bool = False
    workers: int = 1
    memorization_segments: int = 8
    tolerance: float | None = None     # force tolerance mode with this tolerance
    seed: bytes | None = None          # auditor randomness (default: os.urandom)
    max_abandoned: int = 0             # incomplete earlier runs of the identity tolerated
    max_model_bytes: int = 4 << 30     # a committed config may build no larger model
    model: str | None = None           # a shipped safetensors model file to check
    beacon_url: str | None = None      # drand HTTP beacon to fetch rounds not in evidence
    beacon_chain: ChainInfo | None = None  # pinned drand chain (else known public chains)
    require_drand: bool = False        # a log-signature beacon fails the seed check
    replay_mode: str = "auto"          # auto: exact iff the environment matches; exact;
                                       # tolerance (calibrated unless ``tolerance``)
    ray: str | None = None             # replay segments as tasks on this Ray cluster
    disclosure: str | None = None      # data server URL: audit without the data
                                       # (auditor.disclosure; needs public_challenge)
    device: str = "cpu"                # where replays train (cpu, cuda, cuda:i)
    max_hash_list_bytes: int = 1 << 30  # a published example-hash list is fetched no larger
    hash_list_cache: str | None = None  # cache of verified hash-list indexes (membership)
    hash_list_cache_max_bytes: int | None = 8 << 30  # pruned to this, least recently used


STATUSES = ("pass", "fail", "inconclusive", "warn", "skip")
EXIT_CODES = {"pass": 0, "fail": 1, "inconclusive": 3}  # 2: usage (no verdict)


def unreachable(e: BaseException | None) -> bool:
    """``e`` says a peer could not be asked (down, refused, stalled past its deadline,
    shedding load): nothing was learnt, so a check it stops is inconclusive."""
    return isinstance(e, (PushbackError, PeerUnreachable, DeadlineExceeded))


def potd_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("potd")
    except PackageNotFoundError:
        return "unknown"


def header(client: LogClient, opts: AuditOptions) -> dict[str, Any]:
    """What a verdict depends on besides the log and the evidence: potd's version, the
    policy it was judged by and the options of the audit."""
    ws = [f"{w.name}+{w.key_id:08x}" for w in getattr(client, "witnesses", ())]
    return {
        "potd_version": potd_version(),
        "policy": {
            "max_abandoned": opts.max_abandoned, "require_drand": opts.require_drand,
            "witnesses": ws, "quorum": getattr(client, "quorum", 0),
            "max_model_bytes": opts.max_model_bytes,
            "challenge": "public" if opts.public_challenge else "auditor",
            "beacon_chain": opts.beacon_chain.hash_hex if opts.beacon_chain else None},
        "options": {
            "samples": opts.samples, "memorization_segments": opts.memorization_segments,
            "replay_mode": opts.replay_mode, "tolerance": opts.tolerance,
            "workers": opts.workers, "recipe": opts.recipe, "evidence": opts.evidence,
            "model": opts.model, "beacon_url": opts.beacon_url, "ray": opts.ray,
            "disclosure": opts.disclosure}}


class Audit:
    def __init__(self, client: LogClient, opts: AuditOptions,
                 progress: Callable[[str, int, int], None] | None = None) -> None:
        if opts.replay_mode not in ("auto", "exact", "tolerance"):
            raise UsageError(f"replay mode {opts.replay_mode!r} is not auto, exact or "
                             "tolerance")
        if opts.disclosure and (not opts.public_challenge or opts.workers > 1 or opts.ray):
            raise UsageError("--disclosure needs --public-challenge, one worker and no Ray",
                             hint="the data server discloses only what the public challenge "
                                  "draws, and replays run in this process")
        self.client, self.opts = client, opts
        self.progress = progress
        self._phase = "log.checkpoint"  # the check an unreachable peer leaves unmade
        self.checks: list[dict[str, Any]] = []
        self.report: dict[str, Any] = {
            "format": "potd-audit-report-v1", "run": opts.run, "recipe": opts.recipe,
            "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            **header(client, opts),
            # the pinned origin until a checkpoint is verified (then its size and root)
            "log": ({"url": client.url, "origin": client.origin} if client is not None
                    else {}),
            "checks": self.checks, "replay": {"samples": 0, "segments": []},
            "memorization": {"segments": [], "flagged": 0}, "losses": [], "timing": {},
            "warnings": []}

    # -- helpers -------------------------------------------------------------

    def check(self, name: str, status: str, summary: str, **evidence: Any) -> str:
        if status not in STATUSES:
            raise ValueError(f"check status {status!r}")
        self.checks.append({"name": name, "status": status, "summary": summary,
                            "evidence": evidence})
        return status

    def _tick(self, what: str, done: int, total: int) -> None:
        if self.progress:
            self.progress(what, done, total)

    def verdict(self) -> str:
        st = [c["status"] for c in self.checks]
        if "fail" in st:
            return "fail"
        if "inconclusive" in st:
            return "inconclusive"
        if any(c["status"] == "skip" and c["name"] in ("replay", "seed", "order", "init")
               for c in self.checks):
            return "inconclusive"
        if self.report.get("inconclusive"):
            return "inconclusive"
        return "pass"

    # -- the audit -------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """The report. A usage error (the pinned key does not sign this log, arguments
        that cannot work) raises :class:`~ledger.errors.UsageError` instead: no verdict."""
        t0 = time.perf_counter()
        try:
            self._run()
        except _Stop:
            pass
        except UsageError:
            raise
        except PotdError as e:
            if not unreachable(e):
                raise
            self.check(self._phase, "inconclusive", f"could not be checked: {e.message}",
                       hint=e.hint)
        self.report["verdict"] = self.verdict()
        self.report["warnings"] = [f"{c['name']}: {c['summary']}" for c in self.checks
                                   if c["status"] == "warn"]
        self.report["timing"]["total_seconds"] = round(time.perf_counter() - t0, 3)
        return self.report

    def _run(self) -> None:
        c = self.client
        prior = c.latest
        try:
            cp = c.checkpoint()
        except UsageError:
            raise
        except (VerificationError, LimitError) as e:  # incl. an oversized answer
            if unreachable(e):
                raise
            self.check("log.checkpoint", "fail", e.message, **_jsonable(getattr(e, "evidence", {})))
            raise _Stop from None
        self._phase = "log.entries"
        cosigned = [f"{w.name}+{w.key_id:08x}" for w in c.check_witnesses(cp)]
        self.report["log"] = {"url": c.url, "origin": cp.origin, "checkpoint_size": cp.size,
                              "checkpoint_root": cp.root.hex(), "checkpoint": str(cp),
                              "witnesses": cosigned}
        self.check("log.checkpoint", "pass",
                   f"checkpoint of size {cp.size} signed by the pinned log key"
                   + (f", consistent with the stored checkpoint of size {prior.size}"
                      if prior else " (first contact: no stored checkpoint to compare)")
                   + (f"; cosigned by {len(cosigned)} of {len(c.witnesses)} witnesses "
                      f"(quorum {c.quorum})" if c.witnesses else ""),
                   witnesses=cosigned)
        try:
            snap = fetch_entries(c, cp, progress=lambda n: self._tick("entries", n, cp.size))
        except PotdError as e:
            if unreachable(e):
                raise
            self.check("log.entries", "fail", e.message)
            raise _Stop from None
        self._phase = "replay"  # what a later unreachable peer leaves unchecked
        runs, foreign = group_runs(snap)
        view = runs.get(self.opts.run)
        if view is None:
            self.check("run.inclusion", "fail",
                       f"the log (size {cp.size}) holds no statement of run {self.opts.run}")
            raise _Stop
        self.check("run.inclusion", "pass",
                   f"{len(view.statements)} statements of the run proven included at size "
                   f"{cp.size} (all {cp.size} entries rehashed to the signed root)",
                   indexes=[i for i, _ in view.statements][:10000])
        self.report["signer"] = view.signer
        problems = self._problems(view, snap)
        sig_problems = [p for p in problems if "signature" in p or "signed by" in p]
        self.check("run.signatures", "fail" if sig_problems else "pass",
                   sig_problems[0] if sig_problems else
                   f"every statement verifies under the trainer key {view.signer}",
                   problems=sig_problems)
        chain = [p for p in problems if p not in sig_problems]
        self.check("run.chain", "fail" if chain else "pass",
                   chain[0] if chain else "seq, prev hash chain and step numbers are "
                   "contiguous; one run.open, " + ("one run.close" if view.statements[-1][1]
                                                   .kind == "run.close" else
                                                   "no run.close yet (the run is open)"),
                   problems=chain)
        self._grinding(runs, view)
        ab = view.abort
        if ab is not None:
            self.check("run.closed", "fail", f"the run was aborted after {len(view.steps)} "
                       f"steps ({str(ab.body.get('reason'))[:200]}): it certifies no model",
                       reason=str(ab.body.get("reason"))[:1000])
            raise _Stop
        o = view.open
        closes = [st for _, st in view.statements if st.kind == "run.close"]
        if o is None or not closes:
            if o is not None and self._incomplete(view, snap, o, cp):
                raise _Stop
            self.check("replay", "skip", "the run is not complete (no open or no close): "
                       "nothing to replay")
            raise _Stop
        self.report["losses"] = [[st.body.get("step"), _float(st.body.get("loss"))]
                                 for _, st in view.steps]
        self._verify(view, snap, o, closes[0], cp)

    def _problems(self, view: RunView, snap: LogSnapshot) -> list[str]:
        """The run's structural problems (:func:`~auditor.runs.check_run`)."""
        return check_run(view, snap)

    def _incomplete(self, view: RunView, snap: LogSnapshot, o: Statement,
                    cp: SignedCheckpoint) -> bool:
        """An open (not yet closed) run's verified structure: True when this audit has
        a use for it (membership answers from ``run.open``), False to skip the rest."""
        return False

    def _verify(self, view: RunView, snap: LogSnapshot, o: Statement, close: Statement,
                cp: SignedCheckpoint) -> None:
        """The checks past the log and the run's structure (the quick model check
        overrides this: no replay)."""
        from .replay_check import ReplayCheck

        if self.opts.disclosure:
            from .disclosure import DisclosureCheck

            DisclosureCheck(self, view, snap, o, close, cp).run()
            return
        ReplayCheck(self, view, snap, o, close, cp).run()


    def _grinding(self, runs: dict[str, RunView], view: RunView) -> None:
        """``run.grinding``: incomplete runs that could have been alternatives to this
        one's seed (see :func:`~auditor.runs.grinding_evidence`). Aborted runs count like
        any other incomplete run (docs/protocol.md §5) and are reported as aborts: their
        reason, their step count and whether the revealed ``s_rand`` opens their
        commitment."""
        mine, others = grinding_evidence(runs, view)
        limit = self.opts.max_abandoned
        me = identity(view.signer)
        blind = ("; a trainer using a fresh identity per attempt shows only as runs by "
                 "other identities over the same data, which this check lists but cannot "
                 "attribute")
        aborted = [r for r in mine if r["status"] == "aborted"]
        if mine:
            status = "fail" if len(mine) > limit else "warn"
            kinds = (f" ({len(aborted)} aborted with a reason and s_rand revealed, "
                     f"{len(mine) - len(aborted)} never closed or closed early)"
                     if aborted else "")
            summary = (f"{len(mine)} incomplete run(s) of identity {me} over the same "
                       "dataset and recipe (aborted, never closed, or closed before their "
                       f"planned steps){kinds} were opened before this run closed: the "
                       "trainer could have picked this run's seed among theirs (seed "
                       f"grinding; {limit} tolerated)")
            bad = [r["run"][:16] for r in aborted if not r["s_rand_revealed"]]
            if bad:
                summary += (f"; the s_rand revealed by the abort of {', '.join(bad)} does "
                            "not open its seed commitment")
        else:
            status = "warn" if others else "pass"
            summary = (f"no incomplete run of identity {me} (any key) over the same dataset "
                       "and recipe before this run closed")
        if others:
            summary += (f"; {len(others)} incomplete run(s) by other identities over the "
                        "same data (not counted against this trainer)")
        complete = complete_siblings(runs, view)
        if complete:
            summary += (f"; {len(complete)} other complete run(s) of this identity over the "
                        "same data and recipe (listed, not counted: the trainer could have "
                        "published the one it liked best)")
        self.check("run.grinding", status, summary + blind, runs=mine, other_identities=others,
                   identity=me, tolerated=limit, aborted=len(aborted),
                   complete_siblings=complete)

class _Stop(Exception):
    """Internal: stop the audit early (the failing check is already recorded)."""


def _float(s: Any) -> float | None:
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, bytes):
            out[k] = v.hex()
        elif isinstance(v, list):
            out[k] = [x.hex() if isinstance(x, bytes) else x for x in v]
        else:
            out[k] = v if isinstance(v, (int, float, str, type(None))) else str(v)
    return out


def detection_probabilities(r: int) -> dict[str, float]:
    """``1 - (1 - f)^R`` for a few forged fractions ``f`` of the steps, ``R`` distinct
    steps drawn (a lower bound: drawing without replacement does better)."""
    return {str(f): round(1 - (1 - f) ** r, 4) for f in FRACTIONS}


def challenge_seed(opts: AuditOptions, public: bytes | None) -> bytes:
    """The replay sample's seed: the protocol-fixed public challenge (see
    :func:`auditor.beacon_check.public_challenge`; None when it was rejected), or
    auditor randomness."""
    if opts.public_challenge and public is not None:
        return public
    return opts.seed if opts.seed is not None else os.urandom(32)


def sample(seed: bytes, population: int, r: int, label: bytes = b"challenge") -> list[int]:
    """``r`` distinct positions in ``range(population)`` from ``seed`` (sorted), by the
    language-independent :func:`prover.derive.choose` (a public challenge must be
    re-derivable by anyone)."""
    return choose(seed, label, population, r)


def step_sample(seed: bytes, ends: list[int], steps: int, r: int
                ) -> tuple[list[int], list[int], list[int]]:
    """The replay sample, drawn over *steps* so that checkpoint spacing cannot dilute it.

    ``ends`` are the segment boundaries: ``ends[0] = -1`` (the initial weights), then the
    step of every committed checkpoint, increasing; segment ``i`` covers steps
    ``ends[i] + 1 .. ends[i + 1]``. Draws ``r`` distinct steps of ``range(steps)`` with
    :func:`sample` and returns ``(drawn steps, indexes of the segments containing them
    (de-duplicated, sorted), drawn steps no segment covers)``. A forger of a fraction
    ``f`` of the steps escapes with probability at most ``(1 - f)^r``, however the
    checkpoints are spaced (one long forged segment is as likely to be drawn as the
    steps in it).
    """
    if any(b >= a for a, b in zip(ends[1:], ends, strict=False)):
        raise UsageError("segment ends must be increasing")
    drawn = sample(seed, steps, r)
    picks: set[int] = set()
    uncovered = []
    for t in drawn:
        i = bisect.bisect_left(ends, t) - 1   # ends[i] < t <= ends[i + 1]
        if i + 1 < len(ends):
            picks.add(i)
        else:
            uncovered.append(t)
    return drawn, sorted(picks), uncovered


def pool_map(fn: Callable[[Any], Any], jobs: list[Any], workers: int,
             lost: Callable[[Any, str], Any] | None = None) -> list[Any]:
    """``map(fn, jobs)`` on ``workers`` spawned processes (in this one for one worker or
    job). A worker that dies (killed, out of memory) gives ``lost(job, why)`` for each
    job it took down, when ``lost`` is given; the others still run."""
    if workers <= 1 or len(jobs) <= 1:
        return list(map(fn, jobs))  # no comprehension frame under the replay's steps
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
        futures = [ex.submit(fn, job) for job in jobs]
        out = []
        for job, fut in zip(jobs, futures, strict=True):
            try:
                out.append(fut.result())
            except concurrent.futures.process.BrokenProcessPool as e:
                if lost is None:
                    raise
                out.append(lost(job, f"a replay worker process died: {e}"))
        return out


__all__ = ["Audit", "AuditOptions", "LogSnapshot", "RunView", "Statement", "open_checkpoint"]
