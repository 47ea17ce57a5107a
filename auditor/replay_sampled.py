"""Check 4–5 of the audit, the sampled part: which segments to replay (from the
auditor's challenge), replaying them (in process, in worker processes, as the run's
data-parallel world, or on Ray), judging them (exact or tolerance mode), and the
memorization test (docs/protocol.md §5 steps 7–8). A mixin of
:class:`~auditor.replay_check.ReplayCheck`, which establishes what it reads: the
checked recipe, seed, data order, initial state and evidence."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, cast

from ledger.errors import PotdError
from ledger.statement import Statement
from prover.dataset_cache import HashTable
from prover.derive import batch_indexes
from prover.evidence import EvidenceError, EvidenceSource
from prover.recipes import Recipe
from prover.session import environment

from .calibration import calibrate, mode_reason, same_environment
from .replay import SegmentJob, SegmentResult, memorization, not_replayed, replay_segment

if TYPE_CHECKING:
    from .audit import Audit

# Stouffer-combined z below which the memorization test fails (see README: measured
# honest runs of digits-mlp give combined z of about 3 to 6 over 8 segments).
MEMORIZATION_THRESHOLD = 1.0


def _evidence_status(e: EvidenceError) -> str:
    """"inconclusive" for evidence that could not be fetched (the server not answering:
    the transport error is the context the evidence source wraps), else "fail"
    (missing, altered or misshapen evidence is evidence against the trainer)."""
    from .audit import unreachable

    return "inconclusive" if unreachable(e.__context__) else "fail"


class SampledReplay:
    """Replay and memorization over the segments the challenge draws (mixin)."""

    # set by ReplayCheck before _replay runs
    a: Audit
    o: Statement
    steps: list[Statement]
    hashes: HashTable                    # the committed training examples' hashes
    plan: list[tuple[int, int, int]]     # (step, epoch, offset) per step
    alg: str
    init: dict[str, Any]
    threads: int
    _job_orders: dict[tuple[bytes, int, int], list[int]]

    def _public_challenge(self) -> tuple[bytes | None, dict[str, Any]]:
        raise NotImplementedError  # ReplayCheck's

    def _replay(self, recipe: Recipe, seed: bytes, ckpts: list[dict[str, Any]]) -> None:
        from .audit import challenge_seed, detection_probabilities, pool_map, step_sample

        a = self.a
        bounds = [{"step": -1, "weights": self.init.get("weights"),
                   "weights_hash": self.init.get("weights_hash"), "optimizer": None,
                   "optimizer_hash": None}] + ckpts
        segments = [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]
        if not segments:
            a.check("replay", "skip", "no committed checkpoints: nothing to replay from")
            return
        env = self.o.body.get("environment") or {}
        env = env if isinstance(env, dict) else {}
        mine = environment(a.opts.device)  # the device the replays run on
        self.threads = int(mine["threads"])  # every replay runs with it (workers too)
        same = same_environment(env, mine)  # see auditor.calibration
        mode = a.opts.replay_mode
        if a.opts.tolerance is not None:
            mode = "tolerance"
        exact = same if mode == "auto" else mode == "exact"
        if a.opts.samples < 1:
            a.check("replay", "skip", f"--samples {a.opts.samples}: no step drawn, nothing "
                    "replayed")
            return
        public, challenge = self._public_challenge()
        cseed = challenge_seed(a.opts, public)
        drawn, picks, uncovered = step_sample(cseed, [int(b["step"]) for b in bounds],
                                              len(self.steps), a.opts.samples)
        # the segment that produced the certified model is always replayed: a run whose
        # last segment is forged ships a model no sample could vouch for otherwise
        final = len(segments) - 1
        add_final = int(bounds[-1]["step"]) == len(self.steps) - 1 and final not in picks
        if add_final:
            picks = sorted([*picks, final])
        jobs = [self._job(recipe, seed, segments[i], exact) for i in picks]
        t0 = time.perf_counter()
        done = 0

        def tick(r: SegmentResult) -> SegmentResult:
            nonlocal done
            done += 1
            a._tick("replay", done, len(jobs))
            return r

        world = self._world(recipe)
        if world is None:
            return
        if a.opts.ray:  # the same replays as Ray tasks (auditor.replay_ray)
            from .replay_ray import ray_map

            results = list(map(tick, ray_map(
                jobs, a.opts.ray, world=world, exact=exact,
                gpu=a.opts.device != "cpu")))  # tasks replay on --device
        elif exact and world > 1:  # the trainer's world, spawned here (auditor.replay_dp)
            from .replay_dp import replay_segments

            results = list(map(tick, replay_segments(jobs, world)))
        elif world > 1:  # one process, the ranks' split (auditor.replay_dp)
            from functools import partial

            from .replay_dp import replay_split

            run = partial(replay_split, world=world)
            results = list(map(tick, map(run, jobs) if a.opts.workers <= 1 else
                               pool_map(run, jobs, a.opts.workers, not_replayed)))
        else:
            # in-process, map() calls replay_segment straight from C: no frame of ours
            # between this one and the replayed steps (see replay_segment's loop)
            results = list(map(tick, map(replay_segment, jobs) if a.opts.workers <= 1 else
                               pool_map(replay_segment, jobs, a.opts.workers, not_replayed)))
        replay_s = time.perf_counter() - t0
        tol = None
        undecided: str | None = None  # why a distance cannot be judged (inconclusive)
        if not exact and jobs:
            if a.opts.tolerance is not None:
                tol = a.opts.tolerance
            else:
                tol, undecided = calibrate(a, jobs, results, env, self.threads)
            for r in results:
                r.tolerance = tol
                if r.error is None and r.distance is not None:
                    r.match = r.distance <= tol if tol is not None else r.distance == 0.0
        drift: list[SegmentResult] = []
        if exact and not same:
            drift, tol = self._forced_exact_drift(jobs, results, env)
        bad = [r for r in results if not r.match]
        # evidence of a false claim (not: not replayed, or drift exact mode cannot judge)
        failed = [r for r in bad if not r.unavailable and all(r is not x for x in drift)]
        segs = [r.to_json() for r in results]
        a.report["replay"] = {
            "samples": len(results), "mode": "exact" if exact else "tolerance",
            "mode_reason": mode_reason(a.opts, same, env, mine) + _world_reason(
                world, exact, a.opts.device),
            "world_size": world,
            "segments_total": len(segments), "steps_total": len(self.steps),
            "steps_drawn": len(drawn), "steps_sampled": drawn[:1000],
            "steps_replayed": sum(r.end - r.start + 1 for r in results),
            "basis": "steps: each drawn step's whole segment is replayed, and the final "
                     "segment (which produced the certified model) always",
            "final_segment_added": add_final,
            "challenge": {**challenge, "seed": cseed.hex()},
            "segments": segs, "detection_probability": detection_probabilities(len(drawn)),
            "environment": {"run": env, "auditor": mine}}
        a.report["timing"]["replay_seconds"] = round(replay_s, 3)
        drew = (f"{len(drawn)} of {len(self.steps)} steps drawn from the challenge, "
                f"{len(results)} of {len(segments)} segments replayed"
                f"{' (the final one always)' if add_final else ''} "
                f"({sum(r.end - r.start + 1 for r in results)} steps)")
        if uncovered:
            a.check("replay", "fail", f"step(s) {', '.join(map(str, uncovered[:10]))} drawn "
                    "for replay lie after the last committed checkpoint: no segment covers "
                    "them, they cannot be replayed", uncovered=uncovered[:1000])
        elif undecided is not None and failed and all(r.error is None for r in failed):
            a.check("replay", "inconclusive", f"{undecided} ({drew})",
                    segments=[x.to_json() for x in bad],
                    hint="audit in the trainer's environment (exact mode) or give "
                         "--tolerance from a calibration you trust")
        elif failed:
            r = failed[0]
            where = (f"weights differ from the committed hash from step {r.first_mismatch_step}"
                     if r.first_mismatch_step is not None else
                     (r.error or f"distance {r.distance:.3g} exceeds tolerance {tol:.3g}"
                      if r.distance is not None and tol is not None else
                      r.error or "weights differ from the commitment"))
            if exact and r.distance is not None:
                where += (f"; the replayed end of the segment is at relative distance "
                          f"{r.distance:.3g} from the committed checkpoint (rounding drift "
                          "between environments stays near float precision, ~1e-7 to "
                          "1e-5; other training lands near 1e-2 or beyond)")
            hint = ({"hint": "a distance near float precision points to an environment "
                             "difference the run did not record: re-audit with "
                             "--replay-mode tolerance to judge it against measured noise"}
                    if exact and r.distance is not None and tol is None else {})
            if exact and tol is not None:  # forced exact, judged against measured noise
                where += f", beyond the replay noise measured here (tolerance {tol:.3g})"
            a.check("replay", "fail", f"segment steps {r.start}..{r.end}: {where} ({drew})",
                    segments=[x.to_json() for x in failed], **hint)
        elif drift:  # --replay-mode exact in another environment: bits differ, no more
            r = drift[0]
            within = (f"within the replay noise measured here (tolerance {tol:.3g})"
                      if tol is not None else
                      f"which cannot be judged: {a.report.get('calibration', {}).get('reason')}")
            a.check("replay", "inconclusive",
                    f"{len(drift)} segment(s) not bit-identical, e.g. steps {r.start}..{r.end} "
                    f"(from step {r.first_mismatch_step}), but exact mode was asked for in an "
                    "environment other than the run's, where rounding differs: the replayed "
                    f"end is at relative distance {r.distance:.3g} from the commitment, "
                    f"{within} ({drew})", segments=[x.to_json() for x in drift],
                    hint="replay in the trainer's recorded environment for a bit-exact "
                         "check, or audit with --replay-mode auto or tolerance, which "
                         "judges the distance against measured noise")
        elif bad:  # not replayed, for reasons that are not the trainer's
            r = bad[0]
            a.check("replay", "inconclusive", f"{len(bad)} segment(s) could not be replayed, "
                    f"e.g. steps {r.start}..{r.end}: {r.error} ({drew})",
                    segments=[x.to_json() for x in bad],
                    hint="nothing was learnt about those segments: retry the audit when "
                         "the evidence server and the replay workers are up")
        else:
            a.check("replay", "pass", drew + " "
                    + ("bit-exactly (same environment)" if exact else
                       f"within tolerance {tol:.3g} (environment differs)" if tol is not None
                       else "bit for bit, though the environment differs"),
                    steps=sum(r.end - r.start + 1 for r in results))
        self._memorization(recipe, segments, cseed, seed)

    def _forced_exact_drift(self, jobs: list[SegmentJob], results: list[SegmentResult],
                            env: dict[str, Any]
                            ) -> tuple[list[SegmentResult], float | None]:
        """``--replay-mode exact`` where the run's recorded environment differs from the
        auditor's: a bit difference alone is no evidence of a false claim (honest rounding
        differs between environments). The mismatches with a distance are judged as
        tolerance mode judges them: beyond the calibrated noise they stay failures; the
        rest (within it, or all of them when the noise cannot be measured) are returned,
        with their tolerance set, for an inconclusive check; and the tolerance (None when
        nothing was calibrated)."""
        near = [r for r in results
                if not r.match and r.error is None and r.distance is not None]
        if not near:
            return [], None
        tol, _ = calibrate(self.a, jobs, results, env, self.threads)
        for r in near:
            r.tolerance = tol
        return [r for r in near if tol is None or cast(float, r.distance) <= tol], tol

    def _world(self, recipe: Recipe) -> int | None:
        """The run's committed data-parallel world size; None (after a failed check) when
        ``run.open``'s ``data_parallel`` is malformed."""
        from .replay_dp import world_size

        try:
            return world_size(dict(self.o.body), len(self.hashes), recipe.batch_size)
        except PotdError as e:
            self.a.check("replay", "fail", e.message,
                         hint="an honest prover commits data_parallel as potd prover writes it")
            return None

    def _job(self, recipe: Recipe, seed: bytes, seg: tuple[dict[str, Any], dict[str, Any]],
             exact: bool) -> SegmentJob:
        start, end = int(seg[0]["step"]) + 1, int(seg[1]["step"])
        by_step = {int(st.body["step"]): st for st in self.steps}  # type: ignore[arg-type]
        hashes = tuple(str(by_step[t].body["weights"]) if "weights" in by_step[t].body else None
                       for t in range(start, end + 1))
        cache = self._job_orders  # jobs come in step order: one permutation per epoch
        batches = tuple(tuple(batch_indexes(seed, len(self.hashes), recipe.batch_size,
                                            *self.plan[t], cache)) for t in range(start, end + 1))
        return SegmentJob(
            recipe=recipe.spec, config=dict(recipe.config), seed=seed,
            n_examples=len(self.hashes), algorithm=self.alg, evidence=self.a.opts.evidence,
            start=start, end=end, start_weights=str(seg[0]["weights"]),
            start_weights_hash=str(seg[0]["weights_hash"]),
            start_optimizer=seg[0]["optimizer"], start_optimizer_hash=seg[0]["optimizer_hash"],
            step_hashes=hashes, step_starts=tuple((self.plan[t][1], self.plan[t][2])
                                                  for t in range(start, end + 1)),
            end_weights=str(seg[1]["weights"]), end_weights_hash=str(seg[1]["weights_hash"]),
            end_optimizer=seg[1].get("optimizer"), end_optimizer_hash=seg[1].get("optimizer_hash"),
            exact=exact, batches=batches, threads=self.threads, data_dir=self.a.opts.data_dir,
            device=self.a.opts.device)

    def _memorization(self, recipe: Recipe, segments: list[tuple[dict[str, Any],
                      dict[str, Any]]], cseed: bytes, seed: bytes) -> None:
        """The memorization test on segments drawn from the auditor's challenge randomness
        (``cseed``), which the trainer does not know while training (unlike ``seed``)."""
        from .audit import sample

        a = self.a
        n = max(0, min(a.opts.memorization_segments, len(segments)))
        if n == 0:
            a.check("memorization", "skip", "no segments to test")
            return
        chosen = sample(cseed, len(segments), n, b"memorization")
        src = EvidenceSource(a.opts.evidence)
        rows = []
        cache: dict[tuple[bytes, int, int], list[int]] = {}
        for i in chosen:
            s0, s1 = segments[i]
            try:
                w0 = src.load(str(s0["weights"]), str(s0["weights_hash"]), self.alg)
                w1 = src.load(str(s1["weights"]), str(s1["weights_hash"]), self.alg)
            except EvidenceError as e:  # unreachable: inconclusive (see _evidence_error)
                a.check("memorization", _evidence_status(e), e.message,
                        file=e.evidence.get("file"))
                return
            examples: list[int] = []
            for t in range(int(s0["step"]) + 1, int(s1["step"]) + 1):
                step, epoch, off = self.plan[t]
                examples += batch_indexes(seed, len(self.hashes), recipe.batch_size, step,
                                          epoch, off, cache)
            try:
                m = memorization(recipe, w0, w1, examples)
            except EvidenceError as e:
                a.check("memorization", _evidence_status(e), e.message)
                return
            m.update(start=int(s0["step"]) + 1, end=int(s1["step"]), flagged=m["z"] < 0.0)
            rows.append(m)
        flagged = sum(1 for r in rows if r["flagged"])
        combined = sum(r["z"] for r in rows) / math.sqrt(len(rows))
        a.report["memorization"] = {
            "segments": rows, "flagged": flagged, "combined_z": combined,
            "threshold": MEMORIZATION_THRESHOLD,
            "note": "per segment: loss drop of the segment's own examples vs held-out "
                    "examples between the checkpoints around it, as a Welch z-score (Choi et "
                    "al. 2023); flagged when z < 0; combined over segments by Stouffer's "
                    "method. Weak with momentum or very small models."}
        summary = (f"combined z = {combined:.2f} over {len(rows)} segments "
                   f"({flagged} without a learning signal on their own data)")
        replayed = any(c["name"] == "replay" and c["status"] == "pass" for c in a.checks)
        if combined < MEMORIZATION_THRESHOLD:
            # a statistical signal, not evidence of a false claim: where replay reproduced
            # the sampled segments it only warns (honest runs of small models, strong
            # momentum or few segments score low now and then); without a passing replay
            # it is the one signal left and fails
            a.check("memorization", "warn" if replayed else "fail", "no clear learning "
                    "signal: the committed batches were not learned more than held-out data; "
                    + summary + ("; replay reproduced the sampled segments, so this is a "
                                 "warning, not evidence of a false claim" if replayed else ""),
                    combined_z=combined)
        else:
            a.check("memorization", "pass", "segments learned their own data more than "
                    "held-out data; " + summary, combined_z=combined)


def _world_reason(world: int, exact: bool, device: str = "cpu") -> str:
    """What a data-parallel run's replay mode means (for the report)."""
    from prover.distributed import backend_for

    if world == 1:
        return ""
    if exact:
        return (f"; data-parallel run of world size {world}: replayed with {world} "
                f"{backend_for(device)} processes on {device}, each on its shard, for "
                "bit-identical weights hashes")
    return (f"; data-parallel run of world size {world}: one process replays the global "
            "batch as the ranks split it (each shard's gradient weighted by its share), "
            "which equals their all-reduced update only up to rounding, so the distance is "
            "judged under the tolerance")
