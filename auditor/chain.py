"""The checkpoint chain and the certified model (docs/protocol.md §4, §6): pure rules over the
bodies of a run's statements — no torch, no I/O, nothing trusted.

A checkpoint (``checkpoint`` in a ``step`` body) commits the whole training state after
its step: ``weights`` / ``optimizer`` (evidence object names, ``<sha256 of the
file>.safetensors``), ``weights_hash`` / ``optimizer_hash`` (tensor hashes, lowercase
hex) and ``state`` = the ``potd-state-v1`` hash over both (:func:`prover.hashing.state_hash`).
Rules, each a problem when broken:

* **form** — every checkpoint is an object with those five fields, well formed, and
  ``state`` recomputes from the two hashes;
* **chain** — the step's ``weights`` equals its checkpoint's ``weights_hash`` (the
  weights the step committed are the weights the next segment starts from);
* **spacing** — checkpoints sit exactly at the steps ``t`` with ``(t + 1) % k == 0``
  and at the last step, where ``k`` is the committed ``hyperparameters.k``, equal to
  the recipe config's ``k``, a positive integer;
* **model** — the last step has a checkpoint; ``run.close`` names its weights hash in
  ``final_weights`` and its state in ``final_state``, and ``steps`` equals the number
  of steps. That checkpoint's weights are the **certified model**.

Replay (``auditor.replay``) adds the dynamic half: each replayed segment must end in
exactly the committed state the next segment starts from (weights and optimizer state).
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ledger.errors import MalformedError, UsageError
from prover.hashing import state_hash

HASH = re.compile(r"[0-9a-f]{64}")
OBJECT = re.compile(r"[0-9a-f]{64}\.safetensors")
FIELDS = ("weights", "weights_hash", "optimizer", "optimizer_hash", "state")
MAX_PROBLEMS = 20


@dataclass
class Chain:
    """The well-formed checkpoints (each with its ``step``), and every broken rule."""

    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    k: int | None = None
    last_step: int | None = None

    def add(self, problem: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)


def checkpoint_form(c: object) -> str | None:
    """Why ``c`` is not a well-formed checkpoint object (None: it is)."""
    if not isinstance(c, dict):
        return f"the checkpoint is a JSON {type(c).__name__}, not an object"
    for f in FIELDS:
        v = c.get(f)
        if not isinstance(v, str):
            return f"its {f!r} is missing or not a string"
        if not (OBJECT if f in ("weights", "optimizer") else HASH).fullmatch(v):
            return (f"its {f!r} {v[:80]!r} is not "
                    + ("<sha256>.safetensors" if f in ("weights", "optimizer")
                       else "64 lowercase hex digits"))
    try:
        want = state_hash({"weights": c["weights_hash"], "optimizer": c["optimizer_hash"]})
    except MalformedError as e:
        return e.message
    if c["state"] != want:
        return (f"its state {c['state'][:16]}… is not the potd-state-v1 hash of its weights "
                f"and optimizer hashes ({want[:16]}…)")
    return None


def committed_k(open_body: Mapping[str, Any]) -> tuple[int | None, str | None]:
    """The checkpoint interval ``k`` run.open commits, or why there is none."""
    hp, rc = open_body.get("hyperparameters"), open_body.get("recipe")
    k = hp.get("k") if isinstance(hp, dict) else None
    cfg = rc.get("config") if isinstance(rc, dict) else None
    ck = cfg.get("k") if isinstance(cfg, dict) else None
    if type(k) is not int or k < 1:
        return None, f"run.open commits no positive integer checkpoint interval k ({k!r})"
    if type(ck) is not int or ck != k:
        return None, (f"the hyperparameters' k ({k}) differs from the recipe config's k "
                      f"({ck!r})")
    return k, None


def check_chain(open_body: Mapping[str, Any], steps: Sequence[Mapping[str, Any]]) -> Chain:
    """The form, chain and spacing rules over the run's step bodies (in order)."""
    ch = Chain()
    ch.k, why = committed_k(open_body)
    if why:
        ch.add(why)
    hp = open_body.get("hyperparameters")
    n_committed = hp.get("steps") if isinstance(hp, dict) else None
    if isinstance(n_committed, int) and n_committed != len(steps):
        ch.add(f"run.open commits {n_committed} steps, the run logged {len(steps)}")
    for i, body in enumerate(steps):
        t = body.get("step")
        t = t if type(t) is int else i
        last = i == len(steps) - 1
        if last:
            ch.last_step = t
        due = last or (ch.k is not None and (t + 1) % ch.k == 0)
        if "checkpoint" not in body:
            if due:
                ch.add(f"step {t}: no checkpoint, but one is due "
                       + ("at the last step (the tail of the run is in no segment)" if last
                          else f"every k = {ch.k} steps"))
            continue
        if not due:
            ch.add(f"step {t}: a checkpoint off the committed spacing (k = {ch.k})")
        c = body["checkpoint"]
        bad = checkpoint_form(c)
        if bad is not None:
            ch.add(f"step {t}: malformed checkpoint: {bad}")
            continue
        assert isinstance(c, dict)
        if body.get("weights") != c["weights_hash"]:
            ch.add(f"step {t}: the step committed weights {str(body.get('weights'))[:16]}…, "
                   f"its checkpoint holds weights {c['weights_hash'][:16]}…: the next "
                   "segment would not start from what this step produced")
            continue
        ch.checkpoints.append({"step": t, **{f: c[f] for f in FIELDS}})
    return ch


def certify(close_body: Mapping[str, Any], steps: Sequence[Mapping[str, Any]],
            chain: Chain) -> tuple[dict[str, Any] | None, list[str]]:
    """The certified model (step, weights hash, evidence object, state) and the problems
    that deny it (a model is returned only with no problem)."""
    problems: list[str] = []
    if not steps:
        return None, ["the run logged no step"]
    last = steps[-1]
    t = chain.last_step
    ck = chain.checkpoints[-1] if chain.checkpoints else None
    if ck is None or ck["step"] != t:
        problems.append(f"no valid checkpoint at the last step {t}: the final model is "
                        "committed by no checkpoint")
        ck = None
    fw = close_body.get("final_weights")
    if ck is not None:
        if fw != ck["weights_hash"]:
            problems.append(f"run.close names final weights {str(fw)[:16]}…, the last "
                            f"checkpoint (step {t}) holds {ck['weights_hash'][:16]}…")
        if last.get("weights") != ck["weights_hash"]:
            problems.append(f"the last step's weights {str(last.get('weights'))[:16]}… are "
                            "not its checkpoint's")
        if close_body.get("final_state") != ck["state"]:
            problems.append(f"run.close names final state "
                            f"{str(close_body.get('final_state'))[:16]}…, the last "
                            f"checkpoint's state is {ck['state'][:16]}…")
    elif fw is not None and fw != last.get("weights"):
        problems.append(f"run.close names final weights {str(fw)[:16]}… that the last step "
                        "did not produce")
    if close_body.get("steps") != len(steps):
        problems.append(f"run.close says {close_body.get('steps')!r} steps, the run logged "
                        f"{len(steps)}")
    if problems or ck is None:
        return None, problems
    return {"step": ck["step"], "weights_hash": ck["weights_hash"], "evidence": ck["weights"],
            "state": ck["state"], "optimizer": ck["optimizer"],
            "optimizer_hash": ck["optimizer_hash"]}, []


Layout = dict[str, tuple[str, list[int]]]  # tensor name -> (safetensors dtype, shape)


def safetensors_layout(data: bytes) -> Layout:
    """Names, dtypes and shapes from a safetensors file's header (the bytes have passed
    :meth:`prover.evidence.EvidenceSource.verify`, which parsed the same header)."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    return {k: (str(v["dtype"]), [int(d) for d in v["shape"]]) for k, v in header.items()
            if k != "__metadata__"}


def weights_layout_problem(got: Layout, want: Layout) -> str | None:
    """Why committed weights do not fit the recipe's model (None: they do exactly)."""
    extra, missing = sorted(set(got) - set(want)), sorted(set(want) - set(got))
    if extra:
        return f"tensor {extra[0][:80]!r} is not in the recipe's model"
    if missing:
        return f"tensor {missing[0]!r} of the recipe's model is missing"
    for k, v in want.items():
        if got[k] != v:
            return f"tensor {k!r} is {got[k][0]} {got[k][1]}, the recipe's model has {v[0]} {v[1]}"
    return None


def optimizer_layout_problem(got: Layout, params: list[tuple[str, list[int]]]) -> str | None:
    """Why a committed optimizer state does not fit the recipe's parameters (in optimizer
    order): names ``state.<parameter index>.<key>``, each tensor shaped and typed like its
    parameter, or a scalar ``step``."""
    for name, (dt, shape) in got.items():
        parts = name.split(".")
        if len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit() or \
                int(parts[1]) >= len(params):
            return f"optimizer tensor {name[:80]!r} names no parameter of the recipe's model"
        pdt, pshape = params[int(parts[1])]
        if not (parts[2] == "step" and shape == []) and (shape, dt) != (pshape, pdt):
            return (f"optimizer tensor {name!r} is {dt} {shape}, its parameter is "
                    f"{pdt} {pshape}")
    return None


def model_file_hash(path: str, algorithm: str) -> str:
    """The weights hash of a shipped safetensors model file (never unpickled).

    Raises :class:`UsageError` with a hint when the file is unreadable or not
    safetensors (a pickle or zip checkpoint is refused before parsing).
    """
    from prover.hashing import hash_safetensors_bytes

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UsageError(f"cannot read model file {path}: {e.strerror}",
                             hint="pass a readable .safetensors file") from None
    if data[:1] == b"\x80" or data[:2] == b"PK":
        raise UsageError(f"model file {path} is a pickle/zip (torch.save) file, not "
                             "safetensors; refusing to load it",
                             hint="convert it with safetensors.torch.save_file")
    try:
        return hash_safetensors_bytes(data, algorithm)
    except MalformedError as e:
        raise UsageError(f"model file {path} is not safetensors: {e.message}",
                             hint="pass the model as a .safetensors file") from None
