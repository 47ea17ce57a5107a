"""Runs as the auditor reconstructs them from a verified log snapshot.

Every entry is parsed as a statement (entries that are not statements are counted, not
trusted); statements are grouped by run. :func:`check_run` verifies one run's structure:
signatures, one signer (the one of ``run.open``), the ``run`` id equals the hash of the
``run.open`` body, contiguous ``seq`` from 0, the ``prev`` hash chain, contiguous steps
from 0, exactly one open and one close (last). Each finding raises nothing: it is
returned as a list of problems, so the report can show all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ledger.errors import PotdError
from ledger.merkle import leaf_hash
from ledger.statement import Statement, parse_statement, run_id, verify_statement_signature
from prover.derive import seed_commitment

from .logview import LogSnapshot


@dataclass
class RunView:
    run: str
    statements: list[tuple[int, Statement]] = field(default_factory=list)  # (log index, st)

    @property
    def open(self) -> Statement | None:
        for _, st in self.statements:
            if st.kind == "run.open":
                return st
        return None

    @property
    def signer(self) -> str | None:
        o = self.open
        return o.signer if o is not None else (
            self.statements[0][1].signer if self.statements else None)

    @property
    def closed(self) -> bool:
        return any(st.kind == "run.close" for _, st in self.statements)

    @property
    def abort(self) -> Statement | None:
        """The run's abort: a ``run.close`` carrying a ``reason`` (docs/protocol.md §3)."""
        for _, st in self.statements:
            if st.kind == "run.close" and "reason" in st.body:
                return st
        return None

    @property
    def steps(self) -> list[tuple[int, Statement]]:
        return [(i, st) for i, st in self.statements if st.kind == "step"]

    def summary(self) -> dict[str, Any]:
        o = self.open
        status = "closed" if self.closed else ("open" if o else "orphan")
        return {"run": self.run, "signer": self.signer,
                "status": "aborted" if self.abort is not None else status,
                "recipe": _recipe_name(o),
                "steps": len(self.steps), "first_index": self.statements[0][0],
                "last_index": self.statements[-1][0]}


def _recipe_name(o: Statement | None) -> str | None:
    rc = o.body.get("recipe") if o is not None else None
    return str(rc.get("name")) if isinstance(rc, dict) else None


def group_runs(snap: LogSnapshot) -> tuple[dict[str, RunView], list[int]]:
    """Statements grouped by run (in log order), and indexes of entries that don't parse."""
    runs: dict[str, RunView] = {}
    foreign: list[int] = []
    for i, e in enumerate(snap.entries):
        try:
            st = parse_statement(e)
        except PotdError:
            foreign.append(i)
            continue
        runs.setdefault(st.run, RunView(st.run)).statements.append((i, st))
    return runs, foreign


NOT_CLOSED = "the run is not closed (no run.close)"


def check_run(view: RunView, snap: LogSnapshot) -> list[str]:
    """Structural problems of one run (empty list = sound)."""
    problems: list[str] = []
    sts = view.statements
    if not sts:
        return ["the run has no statements in the log"]
    first = sts[0][1]
    if first.kind != "run.open":
        problems.append(f"the run's first statement (index {sts[0][0]}) is {first.kind!r}, "
                        "not run.open")
    elif run_id(first.body) != view.run:
        problems.append("the run id is not the hash of its run.open body")
    signer = view.signer
    prev = None
    step_expected = 0
    for n, (idx, st) in enumerate(sts):
        try:
            verify_statement_signature(st)
        except PotdError as e:
            problems.append(f"statement #{st.seq} (index {idx}): {e.message}")
        if st.signer != signer:
            problems.append(f"statement #{st.seq} (index {idx}) is signed by {st.signer}, "
                            f"not by the run's signer {signer}")
        if st.seq != n:
            problems.append(f"statement at index {idx} has seq {st.seq}, expected {n}")
        if n > 0:
            if st.kind == "run.open":
                problems.append(f"a second run.open at index {idx}")
            if st.body.get("prev") != prev:
                problems.append(f"statement #{st.seq} (index {idx}): prev does not match the "
                                "leaf hash of the previous statement (chain broken)")
        if st.kind == "step":
            if st.body.get("step") != step_expected:
                problems.append(f"statement #{st.seq} (index {idx}) is step "
                                f"{st.body.get('step')}, expected step {step_expected}")
            step_expected += 1
        if st.kind == "run.close" and n != len(sts) - 1:
            problems.append(f"statements follow run.close (index {idx})")
        prev = leaf_hash(snap.entries[idx]).hex()
    last = sts[-1][1]
    if last.kind != "run.close":
        problems.append(NOT_CLOSED)
    elif last.body.get("steps") != step_expected:
        problems.append(f"run.close claims {last.body.get('steps')} steps, the log holds "
                        f"{step_expected}")
    return problems


def abandoned_opens(runs: dict[str, RunView], signer: str, this_run: str) -> list[dict[str, Any]]:
    """Other runs opened by ``signer`` that were never closed."""
    return [v.summary() for r, v in runs.items()
            if r != this_run and v.signer == signer and v.open is not None and not v.closed]


def identity(signer: str | None) -> str:
    """The identity behind a verifier key string: its key name (before the first ``+``),
    whatever the key id — a trainer can make any number of keys under one name."""
    return (signer or "").split("+", 1)[0]


def planned_steps(o: Statement) -> int | None:
    """Steps the schedule of a ``run.open`` implies: epochs x ceil(dataset size / batch
    size), from its recipe config (plain arithmetic: nothing is allocated); None when the
    config does not say (a malformed open plans nothing)."""
    rc, ds = o.body.get("recipe"), o.body.get("dataset")
    config = rc.get("config") if isinstance(rc, dict) else None
    if not isinstance(config, dict) or not isinstance(ds, dict):
        return None
    b, e, n = config.get("batch_size"), config.get("epochs"), ds.get("size")
    if not all(type(v) is int and v > 0 for v in (b, e, n)):
        return None
    assert isinstance(b, int) and isinstance(e, int) and isinstance(n, int)
    return e * -(-n // b)


def incomplete(v: RunView) -> str | None:
    """Why a run is incomplete (a seed drawn but not trained to the end), or None.

    Complete = closed, and at least as many steps logged (and claimed by run.close) as
    both its run.open's committed ``hyperparameters.steps`` and its schedule plan.
    """
    o = v.open
    if o is None:
        return "no run.open"
    if not v.closed:
        return "never closed"
    ab = v.abort
    if ab is not None:  # whatever its step count: the trainer chose not to certify it
        return f"aborted after {len(v.steps)} steps: {str(ab.body.get('reason'))[:200]}"
    close = next(st for _, st in v.statements if st.kind == "run.close")
    claimed = close.body.get("steps")
    done = min(len(v.steps), claimed if type(claimed) is int else 0)
    hp = o.body.get("hyperparameters")
    committed = hp.get("steps") if isinstance(hp, dict) else None
    plan = planned_steps(o)
    if plan is None:
        return f"closed after {done} steps; its schedule is malformed"
    want = max(x for x in (committed, plan, 1) if type(x) is int)
    if done < want:
        return f"closed after {done} of {want} planned steps"
    return None


def abort_facts(v: RunView) -> dict[str, Any]:
    """What an abort shows: its reason, the steps logged before it, and whether the
    ``s_rand`` it reveals opens the run's seed commitment (then the abandoned seed is
    recomputable from the run's beacon)."""
    ab, o = v.abort, v.open
    assert ab is not None and o is not None
    s = ab.body.get("s_rand")
    try:
        revealed = isinstance(s, str) and seed_commitment(bytes.fromhex(s)) == o.body.get(
            "seed_commitment")
    except ValueError:
        revealed = False
    return {"reason": str(ab.body.get("reason"))[:1000], "steps_logged": len(v.steps),
            "s_rand_revealed": revealed}


def _data_key(o: Statement | None) -> tuple[str, str] | None:
    if o is None:
        return None
    ds = o.body.get("dataset")
    return (str(ds.get("root")) if isinstance(ds, dict) else "", str(_recipe_name(o)))


def grinding_evidence(runs: dict[str, RunView], view: RunView
                      ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Seed-grinding evidence for ``view``: incomplete runs over the same dataset root and
    recipe, opened before ``view`` closed (earlier runs, and runs open at the same time),
    split into those of the same identity (:func:`identity`, any key id) and those of
    other identities. Each row is a :meth:`RunView.summary` plus ``why`` incomplete.

    Each such run drew a seed the trainer saw and did not use to the end: a choice among
    their seeds. An abort (a ``run.close`` with a ``reason``) is such a run whatever its
    step count — once ``run.open`` is logged the seed is fixed by what the trainer holds
    or will hold (log mode: the beacon comes back with ``run.open``'s reply; drand mode:
    at round R), and the log cannot show that an abort was written before the trainer
    could compute it. Its row adds :func:`abort_facts`. A trainer using a fresh identity
    per attempt is visible only in the second list, which cannot be told apart from
    other people's runs over the same data.
    """
    key = _data_key(view.open)
    me = identity(view.signer)
    end = view.statements[-1][0] if view.closed else None
    mine: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    for r, v in runs.items():
        if r == view.run or v.open is None or _data_key(v.open) != key:
            continue
        if end is not None and v.statements[0][0] > end:
            continue  # opened after this run closed: cannot have been a choice for it
        why = incomplete(v)
        if why is None:
            continue
        row = {**v.summary(), "why": why, "identity": identity(v.signer)}
        if v.abort is not None:
            row.update(abort_facts(v))
        (mine if identity(v.signer) == me else others).append(row)
    return mine, others


def complete_siblings(runs: dict[str, RunView], view: RunView) -> list[dict[str, Any]]:
    """Other *complete* runs of ``view``'s identity over the same dataset root and recipe,
    opened before ``view`` closed. Not grinding evidence (a sweep trains several runs),
    but a trainer could train several full runs and publish the luckiest: the audit lists
    them so a reader sees the choice that was available."""
    key = _data_key(view.open)
    me = identity(view.signer)
    end = view.statements[-1][0] if view.closed else None
    return [{**v.summary(), "identity": me} for r, v in runs.items()
            if r != view.run and v.open is not None and _data_key(v.open) == key
            and identity(v.signer) == me and incomplete(v) is None
            and (end is None or v.statements[0][0] <= end)]
