"""Checks a trainer runs before ``run.open`` (docs/protocol.md §4.4).

Everything logged stays in the log: a run opened and then given up reads, to an auditor,
as a seed drawn and not used (``run.grinding``). So whatever can fail before training
is checked before ``run.open``: the log key, the trainer key's permission to write, the
recipe (model, optimizer on that model, one forward/backward/update on a copy), the
evidence directory and its free space. Each failure is a :class:`PreflightError` with
a hint; nothing is logged.

Invariants: the global torch RNG state, and nothing else of the caller's, is restored
after the recipe check (the committed initial weights are built later, from the seed,
exactly as without the check). The signer check submits one statement that no log can
accept (a ``step`` of a run that does not exist): a log answers 403 for a signer it does
not allow and 409 ``unknown_run`` otherwise, before and without appending anything.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ledger.client import LogClient, LogRejected, LogUnavailable
from ledger.errors import PotdError, UsageError
from ledger.note import Signer
from ledger.statement import build_statement
from prover.datasets import Dataset, as_datasets, call_data
from prover.recipes import Recipe, train_step

__all__ = ["PreflightError", "Probe", "check_evidence_dir", "check_log", "check_recipe",
           "check_signer", "preflight"]

# room kept free beyond the estimate (spool, manifest, filesystem slack)
DISK_MARGIN = 64 << 20


class PreflightError(UsageError):
    """A check before ``run.open`` failed: nothing was logged."""


@dataclass(frozen=True)
class Probe:
    """What the recipe check learned: the optimizer's class name (committed in
    ``hyperparameters.optimizer``) and the bytes of one weights and one optimizer-state
    object after a step."""

    optimizer: str
    weights_bytes: int
    optimizer_bytes: int


def check_log(client: LogClient) -> None:
    """The log answers and its checkpoint verifies under the pinned key (``--vkey``)."""
    try:
        client.checkpoint()
    except LogUnavailable as e:
        raise PreflightError(f"the log at {client.url} is unreachable: {e.message}",
                             hint="start the log or fix --log; nothing was logged") from None
    except PotdError as e:
        raise PreflightError(f"the log's checkpoint does not verify under the key given: "
                             f"{e.message}", hint="--vkey must be the verifier key of the "
                             "log at --log (`potd ledger keygen` printed it); nothing was "
                             "logged") from None


def check_signer(client: LogClient, trainer: Signer) -> None:
    """The log lets ``trainer`` write: a statement no log can accept is refused for the
    signer (403) or for its unknown run (409), and nothing is appended either way."""
    nonce = hashlib.sha256(b"potd-preflight\n" + os.urandom(32)).hexdigest()
    probe = build_statement("step", nonce, 1, {"prev": "0" * 64, "step": 0,
                                               "batch_root": "0" * 64}, trainer)
    try:
        client.add(probe)
    except LogRejected as e:
        if e.status == 409:
            return
        if e.status in (401, 403):
            raise PreflightError(f"the log does not let {trainer.verifier} write: "
                                 f"{e.detail or e.code}",
                                 hint="ask the log operator to run `potd ledger allow` with "
                                      "this verifier key; nothing was logged") from None
        raise PreflightError(f"the log refused a signer check: {e.status} {e.code}",
                             hint="is --log a potd log?") from None
    except LogUnavailable as e:
        raise PreflightError(f"the log is unreachable: {e.message}",
                             hint="nothing was logged") from None
    raise PreflightError("the log accepted a step of a run that does not exist",
                         hint="this log does not check runs; do not commit to it")


def check_recipe(recipe: Recipe, data: Dataset | None = None, *, dry_step: bool = True) -> Probe:
    """Build the recipe's model and its optimizer on that model, and (``dry_step``) run
    one step of the recipe on a copy of the first batch of ``data`` (default: the
    recipe's training set), under a forked RNG: a recipe that crashes crashes here,
    before anything is logged."""
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = recipe.model()
            check_untied(model.state_dict())
            opt = recipe.optimizer(model)
            if dry_step:
                d = data if data is not None else as_datasets(call_data(recipe)).train
                x, y = d.batch(range(min(recipe.batch_size, len(d))))
                train_step(recipe, model, opt, x.clone(), y.clone(), b"\0" * 32, 0)
            weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
            ostate = sum(v.numel() * v.element_size() if isinstance(v, torch.Tensor) else 8
                         for st in opt.state.values() for v in st.values())
        return Probe(type(opt).__name__, weights, ostate)
    except PotdError as e:
        raise PreflightError(f"recipe {recipe.name}: {e.message}", hint=e.hint) from None
    except Exception as e:  # the recipe is user code: any failure is its failure
        raise PreflightError(f"recipe {recipe.name} fails before training: "
                             f"{type(e).__name__}: {e}",
                             hint="fix the recipe (model, optimizer, loss) and run again; "
                                  "nothing was logged") from e


def check_untied(sd: dict[str, torch.Tensor]) -> None:
    """No two state-dict entries share memory: checkpoints store each entry as its own
    tensor (safetensors refuses shared ones), so a tied layer (``head.weight =
    wte.weight``) would crash at the first checkpoint, after run.open was logged."""
    seen: dict[int, str] = {}
    for name, t in sd.items():
        if t.numel() == 0 or t.device.type == "meta":
            continue
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            raise UsageError(f"state-dict entries {seen[ptr]} and {name} share one tensor "
                             "(tied weights); evidence stores every entry as its own tensor",
                             hint="keep one entry: compute the tied layer from it in forward, "
                                  "e.g. logits = h @ self.wte.weight.t()")
        seen[ptr] = name


def check_evidence_dir(path: str | Path, need: int) -> None:
    """``path`` is a writable directory with ``need`` bytes (plus a margin) free."""
    root = Path(path)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".potd-preflight-{os.getpid()}"
        with open(probe, "wb") as f:
            f.write(b"potd")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        raise PreflightError(f"the evidence directory {root} is not writable: {e}",
                             hint="choose another --evidence or fix its permissions; "
                                  "nothing was logged") from None
    free = shutil.disk_usage(root).free
    if free < need + DISK_MARGIN:
        raise PreflightError(f"the evidence for this run needs about {need >> 20} MiB; "
                             f"{root} has {free >> 20} MiB free",
                             hint="free space, choose another --evidence, or checkpoint "
                                  "less often (--k); nothing was logged")


def evidence_bytes(probe: Probe, steps: int, k: int) -> int:
    """Expected evidence: the initial weights, and weights plus optimizer state at each
    checkpoint (every ``k`` steps and the last)."""
    checkpoints = steps // max(k, 1) + (1 if steps % max(k, 1) else 0)
    return probe.weights_bytes + checkpoints * (probe.weights_bytes + probe.optimizer_bytes)


def preflight(recipe: Recipe, client: LogClient, trainer: Signer, evidence_dir: str | Path,
              steps: int, data: Dataset | None = None) -> Probe:
    """Every check above, cheapest first; the recipe's probe."""
    check_log(client)
    check_signer(client, trainer)
    probe = check_recipe(recipe, data)
    check_evidence_dir(evidence_dir, evidence_bytes(probe, steps, recipe.k))
    return probe
