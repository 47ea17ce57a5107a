"""The ``checkpoints`` and ``model`` checks, and the quick question "was this model file
produced by run R in log L?" (``potd auditor check-model``) — no torch, no replay.

The quick check verifies what the audit verifies before replay: the signed checkpoint
(pinned key, witness policy, consistency with the stored checkpoint), every entry
rehashed to the signed root (inclusion), the run's signatures and hash chain, then the
checkpoint chain rules of :mod:`auditor.chain` and the file's weights hash against the
certified model. It trusts that the committed steps really produce the committed
weights — which only a replay (``potd auditor audit``) checks; its answer says so.

Answers: ``yes`` (every check passed and the file is the certified model), ``no`` (a
check failed: evidence of a false claim or a different file), ``inconclusive`` (the run
is not complete, so nothing certifies a model yet; or the log is unreachable).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ledger.errors import PotdError, PushbackError

from .audit import Audit, AuditOptions
from .chain import Chain, certify, check_chain, model_file_hash

if TYPE_CHECKING:
    from ledger.client import LogClient
    from ledger.note import SignedCheckpoint
    from ledger.statement import Statement

    from .logview import LogSnapshot
    from .runs import RunView

ANSWERS = {"yes": 0, "no": 1, "inconclusive": 3}
_NOT_CLOSED = "the run is not closed (no run.close)"  # auditor.runs.check_run's finding


def checkpoints_check(a: Audit, o: Statement, steps: list[Statement]) -> Chain:
    """The ``checkpoints`` check: form, chain and spacing (:mod:`auditor.chain`)."""
    ch = check_chain(o.body, [st.body for st in steps])
    a.check("checkpoints", "fail" if ch.problems else "pass",
            ch.problems[0] if ch.problems else
            f"{len(ch.checkpoints)} checkpoints, every k = {ch.k} steps and at the last step "
            f"{ch.last_step}; each commits one state hash over weights and optimizer state, "
            "and holds its step's weights",
            problems=ch.problems, k=ch.k, steps=[c["step"] for c in ch.checkpoints])
    return ch


def model_check(a: Audit, o: Statement, close: Statement, steps: list[Statement],
                chain: Chain, path: str | None) -> None:
    """The ``model`` check: the final checkpoint certifies the model (``report["model"]``
    names it), and ``path``, when given, is that model."""
    model, problems = certify(close.body, [st.body for st in steps], chain)
    if model is None:
        a.report["model"] = {"certified": False}
        a.check("model", "fail", problems[0] if problems else "no certified model",
                problems=problems)
        return
    alg = str(o.body.get("weights_hash"))
    a.report["model"] = {"certified": True, "algorithm": alg, **model}
    where = f"model {model['weights_hash']} (evidence objects/{model['evidence']})"
    if path is not None:
        try:
            got = model_file_hash(path, alg)
        except PotdError as e:
            a.check("model", "fail", e.message, file=path)
            return
        match = got == model["weights_hash"]
        a.report["model"]["file"] = {"path": path, "weights_hash": got, "match": match}
        if not match:
            a.check("model", "fail", f"the model file {path} has weights hash {got}, not the "
                    f"final {where}", file=path, file_hash=got, **model)
            return
    a.check("model", "pass", f"final {where}: the last step's weights, its checkpoint and "
            "run.close agree" + (f"; the model file {path} is this model" if path else ""),
            **model)


class ModelCheck(Audit):
    """An :class:`Audit` that stops after the chain and model checks (no recipe, seed,
    data, evidence or replay)."""

    def _verify(self, view: RunView, snap: LogSnapshot, o: Statement, close: Statement,
                cp: SignedCheckpoint) -> None:
        steps = [st for _, st in view.steps]
        chain = checkpoints_check(self, o, steps)
        model_check(self, o, close, steps, chain, self.opts.model)


def check_model(client: LogClient, run: str, model: str,
                progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Answer whether the safetensors file ``model`` is the model run ``run`` certifies
    in the log behind ``client``; a report dict with ``answer`` and the checks."""
    model_file_hash(model, "sha256")  # unreadable / not safetensors: UsageError, up front
    opts = AuditOptions(run=run, evidence="", model=model, max_abandoned=1 << 62)
    try:
        rep = ModelCheck(client, opts, progress).run()
    except PushbackError as e:  # the log is unreachable or shedding load: no answer yet
        return {"format": "potd-model-check-v1", "run": run, "answer": "inconclusive",
                "reason": e.message, "checks": []}
    checks = rep["checks"]
    # a run still open (no run.close) certifies no model yet: that alone is inconclusive
    incomplete = any(c["name"] == "replay" and c["status"] == "skip" for c in checks)
    failed = [c for c in checks if c["status"] == "fail" and not (
        incomplete and c["name"] == "run.chain"
        and c["evidence"].get("problems") == [_NOT_CLOSED])]
    passed = any(c["name"] == "model" and c["status"] == "pass" for c in checks)
    rep["format"] = "potd-model-check-v1"
    rep["answer"] = "no" if failed else ("yes" if passed else "inconclusive")
    if failed:
        rep["reason"] = f"{failed[0]['name']}: {failed[0]['summary']}"
    elif not passed:
        skipped = [c for c in checks if c["status"] in ("inconclusive", "skip")]
        rep["reason"] = skipped[0]["summary"] if skipped else "no model check was reached"
    for k in ("replay", "memorization", "losses", "verdict"):
        rep.pop(k, None)
    return rep
