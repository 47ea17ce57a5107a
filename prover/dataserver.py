"""``potd prover serve-data``: the trainer's data server for selective disclosure
(docs/protocol.md §4.9).

It serves the canonical bytes of examples (the adapter's ``example_bytes``, which hash to
the committed example hashes) of one *closed* run's dataset — and only those the run's
public challenge discloses: the batches of the segments an audit drawing at most
``max_samples`` replay steps and ``max_memorization`` memorization segments reads, and
the held-out examples the memorization test reads (:mod:`prover.disclosure`). The set is
recomputed here from the log, verified the way an auditor verifies it (the auditor's
log and run checks, :class:`auditor.disclosure.RunChallenge`): the server never takes
an index set from a client.

API (JSON; errors are ``{"error": code, "detail": text, "hint": text}``):

* ``GET /v1/disclosure`` — the run, its public challenge, the limits, what is allowed;
* ``GET /v1/disclosure/heldout-hashes`` — every held-out example hash (hashes, not
  data: the auditor checks them against the committed held-out root);
* ``POST /v1/disclosure/examples`` ``{"run", "challenge", "split": "train"|"heldout",
  "indexes": [...]}`` — ``{"examples": [{"index": i, "data": base64}]}``.

Refusals: 404 another run; 403 ``not-the-challenge`` (a challenge other than the run's
public one) and ``outside-challenge`` (an index the challenge does not disclose); 429
``over-budget`` (the per-challenge budget of examples and bytes is spent); 413 a request
over :data:`MAX_INDEXES` indexes or :data:`MAX_BODY` bytes. Trusts the log key it is
given, the recipe and the trainer's own data.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ledger.errors import UsageError
from ledger.netutil import BodyError, read_body

from .disclosure import RunPlan, heldout_indexes, segments, train_indexes

MAX_INDEXES = 256      # indexes per request
MAX_BODY = 64 << 10    # bytes of a request body
FORMAT = "potd-disclosure-v1"


@dataclass
class Disclosure:
    """One closed run's disclosure: the allowed sets and the budget spent so far."""

    run: str
    plan: RunPlan
    encoding: str
    train: Any             # prover.datasets.Dataset
    heldout: Any
    max_samples: int
    max_memorization: int
    budget_examples: int
    budget_bytes: int
    allowed: dict[str, frozenset[int]] = field(default_factory=dict)
    spent: dict[str, list[int]] = field(default_factory=dict)  # challenge -> [n, bytes]
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        segs = segments(self.plan, self.max_samples, self.max_memorization)
        self.segments = segs
        self.allowed = {"train": frozenset(train_indexes(self.plan, segs)),
                        "heldout": frozenset(heldout_indexes(self.plan,
                                                             self.max_memorization))}

    def info(self) -> dict[str, Any]:
        spent = self.spent.get(self.plan.challenge.hex(), [0, 0])
        return {"format": FORMAT, "run": self.run, "challenge": self.plan.challenge.hex(),
                "encoding": self.encoding, "max_samples": self.max_samples,
                "max_memorization_segments": self.max_memorization,
                "segments": self.segments,
                "train": {"allowed": len(self.allowed["train"]), "total": self.plan.n},
                "heldout": {"allowed": len(self.allowed["heldout"]),
                            "total": self.plan.heldout},
                "budget": {"examples": self.budget_examples, "bytes": self.budget_bytes,
                           "spent_examples": spent[0], "spent_bytes": spent[1]},
                "max_indexes_per_request": MAX_INDEXES}


def _error(status: int, code: str, detail: str, hint: str = "", **extra: Any) -> Response:
    body = {"error": code, "detail": detail, "hint": hint, **extra}
    return Response(json.dumps(body), status_code=status, media_type="application/json")


def _json(obj: Any) -> Response:
    return Response(json.dumps(obj), media_type="application/json")


def create_app(d: Disclosure, *, body_timeout: float = 30.0) -> Starlette:
    held = json.dumps({"run": d.run, "hashes": [d.heldout.example_hash(i).hex()
                                                for i in range(len(d.heldout))]})

    async def info(request: Request) -> Response:
        return _json(d.info())

    async def heldout_hashes(request: Request) -> Response:
        return Response(held, media_type="application/json")

    async def examples(request: Request) -> Response:
        try:
            body = await read_body(request, MAX_BODY, body_timeout)
        except BodyError as e:
            if e.status == 413:
                return _error(413, "too-large", f"a request body is at most {MAX_BODY} "
                              "bytes", hint=f"ask for at most {MAX_INDEXES} indexes at once")
            return _error(408, "timeout", e.message, hint="send the whole request at once")
        try:
            req = json.loads(body)
            run, challenge, split = req["run"], req["challenge"], req["split"]
            idx = req["indexes"]
            if not (isinstance(idx, list) and all(type(i) is int for i in idx)
                    and isinstance(split, str) and isinstance(challenge, str)):
                raise TypeError
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return _error(400, "malformed", "the body is not {\"run\", \"challenge\", "
                          "\"split\", \"indexes\": [int, ...]}")
        if run != d.run:
            return _error(404, "unknown-run", f"this server discloses run {d.run} only")
        if challenge != d.plan.challenge.hex():
            return _error(403, "not-the-challenge", "examples are disclosed only for the "
                          "run's public challenge (fixed by run.close)",
                          hint="GET /v1/disclosure names it; audit with --public-challenge")
        if split not in d.allowed:
            return _error(400, "malformed", f"split {split[:20]!r} is not train or heldout")
        if len(idx) > MAX_INDEXES:
            return _error(413, "too-many", f"at most {MAX_INDEXES} indexes per request")
        outside = sorted(set(idx) - d.allowed[split])
        if outside:
            return _error(403, "outside-challenge", f"{len(outside)} requested {split} "
                          f"example(s) (first: {outside[:5]}) are not disclosed by the "
                          "public challenge of this run",
                          hint=f"this server discloses the examples of an audit drawing at "
                               f"most {d.max_samples} replay steps and {d.max_memorization} "
                               "memorization segments", indexes=outside[:100])
        ds = d.train if split == "train" else d.heldout
        blobs = [ds.example_bytes(i) for i in idx]
        size = sum(len(b) for b in blobs)
        with d.lock:
            spent = d.spent.setdefault(challenge, [0, 0])
            if spent[0] + len(idx) > d.budget_examples or spent[1] + size > d.budget_bytes:
                return _error(429, "over-budget", f"the budget of this challenge "
                              f"({d.budget_examples} examples, {d.budget_bytes} bytes) "
                              f"is spent ({spent[0]} examples, {spent[1]} bytes served)",
                              hint="an audit needs each disclosed example once")
            spent[0] += len(idx)
            spent[1] += size
        return _json({"run": d.run, "split": split, "examples": [
            {"index": i, "data": base64.b64encode(b).decode()}
            for i, b in zip(idx, blobs, strict=True)]})

    return Starlette(routes=[
        Route("/v1/disclosure", info, methods=["GET"]),
        Route("/v1/disclosure/heldout-hashes", heldout_hashes, methods=["GET"]),
        Route("/v1/disclosure/examples", examples, methods=["POST"]),
    ])


def load(client: Any, run: str, *, recipe: str | None = None, data_dir: str | None = None,
         evidence: str = "", max_samples: int = 16, max_memorization: int = 8,
         budget_examples: int | None = None, budget_bytes: int = 1 << 30) -> Disclosure:
    """Verify the log and the run, derive the run's public challenge and disclosure
    plan, load the recipe's data and check it is the committed data. A run that is not
    closed, or whose checks fail, or data that is not the committed data, is a
    :class:`UsageError`: the server does not start."""
    from auditor.disclosure import RunChallenge

    from .dataset_cache import dataset_hashes
    from .datasets import as_datasets, call_data
    from .recipes import get_recipe

    if max_samples < 0 or max_memorization < 0:
        raise UsageError("--max-samples and --max-memorization-segments must be >= 0")
    rc = RunChallenge.derive(client, run, evidence)
    assert rc.plan is not None  # derive() raised otherwise
    rcfg = rc.o.body.get("recipe")
    cfg = rcfg.get("config") if isinstance(rcfg, dict) else None
    if not isinstance(cfg, dict):
        raise UsageError("run.open carries no recipe config")
    r = get_recipe(recipe or str(rcfg.get("name")),  # type: ignore[union-attr]
                   data_dir=data_dir, **cfg)
    data = as_datasets(call_data(r))
    ds = rc.o.body.get("dataset")
    root = dataset_hashes(data.train).root
    if not isinstance(ds, dict) or root != ds.get("root") or \
            data.train.encoding != ds.get("example_hash"):
        raise UsageError(f"the recipe's data here (root {root}) is not the data run {run} "
                         "committed", hint="point --data-dir at the run's data")
    d = Disclosure(run, rc.plan, data.train.encoding, data.train, data.heldout,
                   max_samples, max_memorization, 0, budget_bytes)
    n = len(d.allowed["train"]) + len(d.allowed["heldout"])
    d.budget_examples = 2 * n if budget_examples is None else budget_examples
    return d


def make_server(d: Disclosure, host: str = "127.0.0.1", port: int = 8090,
                on_ready: Callable[[str, int], None] | None = None,
                log_level: str = "warning", *, header_timeout: float = 10.0,
                body_timeout: float = 30.0, max_connections: int = 1024
                ) -> tuple[Any, Any]:
    """A uvicorn server for ``d`` and its bound socket (``server.run(sockets=[sock])``
    serves until SIGINT/SIGTERM or ``server.should_exit``), its connections guarded as
    the log server's are (:func:`ledger.netutil.make_server`)."""
    from ledger.netutil import listen
    from ledger.netutil import make_server as guarded

    sock = listen(host, port)
    server = guarded(create_app(d, body_timeout=body_timeout), sock, on_ready=on_ready,
                     log_level=log_level, header_timeout=header_timeout,
                     max_connections=max_connections)
    return server, sock


def serve(d: Disclosure, host: str = "127.0.0.1", port: int = 8090,
          on_ready: Callable[[str, int], None] | None = None, **limits: Any) -> None:
    """Serve ``d`` until SIGINT/SIGTERM (``limits``: as for :func:`make_server`)."""
    server, sock = make_server(d, host, port, on_ready, **limits)
    server.run(sockets=[sock])
