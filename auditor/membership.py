"""Was this document in the training data? (``potd auditor membership``; docs/protocol.md
§4.7). Answers from the log and the published example-hash list only, never the data.

Order: verify the log and the run like an audit does (checkpoint, every entry rehashed,
signatures, hash chain; :class:`~auditor.audit.Audit`), derive the seed when the run is
closed (:class:`~auditor.replay_check.ReplayCheck`; a run still open is answered from its
``run.open``, naming no steps), fetch the hash list that ``run.open`` names within the
operator's bounds, or take its index from the cache (:mod:`auditor.membership_index`),
check it against *both* committed roots (``hash_list`` named check),
then answer each query from the verified list: *included* (sorted index, every dataset
index, the steps whose batches held it — each step's committed batch root recomputed
from the list) or *absent* (the two neighbouring sorted leaves). Every answer carries
its Merkle proofs, and :func:`proof_file` packs them with the checkpoint and statements
into a file :mod:`auditor.membership_proof` verifies offline.

Trusts the pinned log key; the evidence location and everything in it are hostile.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ledger.client import LogClient
from ledger.errors import MalformedError, PushbackError
from ledger.merkle import Node, prove_record, prove_tree, split_stored_hash_index
from ledger.note import SignedCheckpoint
from ledger.statement import Statement
from prover.derive import batch_indexes, schedule
from prover.hashing import merkle_root_hex
from prover.hashlist import MerkleFile, positions_of

from .audit import Audit, AuditOptions
from .logview import LogSnapshot
from .membership_index import CACHE_MAX_BYTES, MAX_HASH_LIST_BYTES
from .membership_proof import FORMAT, b64, derive_steps
from .runs import RunView

MAX_ORDERED_PROOFS = 1000  # dataset indexes proven per included hash (all are listed)
ANSWERS = {"included": 0, "absent": 0, "unverified": 1, "inconclusive": 3}


class _Levels:
    """A HashReader over a verified :class:`LogSnapshot`'s complete node levels."""

    def __init__(self, snap: LogSnapshot) -> None:
        self.snap = snap

    def _node(self, lv: int, n: int) -> bytes:
        row = self.snap.levels[lv] if lv < len(self.snap.levels) else []
        if n < len(row):
            return row[n]
        # levels 1..7 are not kept (tiles are 8 levels high): rebuild from the leaves
        return MerkleFile._perfect(self.snap.leaf_hashes[n << lv:(n + 1) << lv])

    def read_nodes(self, nodes: Sequence[Node]) -> list[bytes]:
        return [self._node(lv, n) for lv, n in nodes]

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        return self.read_nodes([split_stored_hash_index(i) for i in indexes])


class MembershipCheck(Audit):
    """An :class:`Audit` that stops after the log, the run's structure and the seed."""

    found: tuple[RunView, LogSnapshot, Statement, Statement | None,
                 SignedCheckpoint] | None = None
    seed: bytes | None = None

    def _problems(self, view: RunView, snap: LogSnapshot) -> list[str]:
        # a run that is still open is sound so far: membership answers from run.open
        from .runs import NOT_CLOSED

        got = super()._problems(view, snap)
        if view.abort is None and not any(st.kind == "run.close" for _, st in view.statements):
            got = [p for p in got if p != NOT_CLOSED]
        return got

    def _incomplete(self, view: RunView, snap: LogSnapshot, o: Statement,
                    cp: SignedCheckpoint) -> bool:
        # run.open commits the dataset: inclusion and absence are answerable now; the
        # steps come from the seed, which run.close reveals
        self.found = (view, snap, o, None, cp)
        return True

    def _verify(self, view: RunView, snap: LogSnapshot, o: Statement, close: Statement,
                cp: SignedCheckpoint) -> None:
        from .replay_check import ReplayCheck

        self.found = (view, snap, o, close, cp)
        self.seed = ReplayCheck(self, view, snap, o, close, cp)._seed()


def _verified_list(a: Audit, evidence: str, o: Statement, work: Path
                   ) -> tuple[MerkleFile, MerkleFile, Path] | None:
    """Fetch the hash list ``run.open`` names (or take it from the cache) and check it
    against both roots; the ordered and sorted trees and the positions file, or None (a
    failed or inconclusive ``hash_list`` check). Bounds and cache: ``a.opts``
    (``max_hash_list_bytes``, ``hash_list_cache``) and :mod:`auditor.membership_index`."""
    from .membership_index import Corrupt, Unavailable, index

    ds = o.body.get("dataset")
    ds = ds if isinstance(ds, dict) else {}
    name, size = ds.get("hash_list"), ds.get("size")
    if not isinstance(name, str) or "sorted_root" not in ds or type(size) is not int \
            or len(name) != 64 or name.strip("0123456789abcdef") or size < 0:
        a.check("hash_list", "inconclusive", "not committed: the run commits no sorted root "
                "or hash list (a run from before membership proofs); nothing can be proven")
        return None
    cache = a.opts.hash_list_cache
    try:
        got = index(evidence, name, size, max_bytes=a.opts.max_hash_list_bytes,
                    cache_dir=Path(cache) if cache else None,
                    cache_max_bytes=a.opts.hash_list_cache_max_bytes, work=work)
    except Unavailable as e:
        a.check("hash_list", "inconclusive", e.message, hint=e.hint)
        return None
    except Corrupt as e:
        a.check("hash_list", "fail", e.message)
        return None
    ordered, srt = got.ordered, got.srt
    if ordered.root.hex() != ds.get("root"):
        got.close()
        a.check("hash_list", "fail", "the published hash list does not hash to the "
                "committed dataset root", got=ordered.root.hex(), committed=ds.get("root"))
        return None
    if srt.root.hex() != ds.get("sorted_root") or srt.size != ds.get("distinct"):
        got.close()
        a.check("hash_list", "fail", "the published hash list's distinct hashes do not hash "
                "to the committed sorted root (or their count differs from 'distinct')",
                got=srt.root.hex(), committed=ds.get("sorted_root"), distinct=srt.size)
        return None
    a.check("hash_list", "pass", f"the published list of {ordered.size} example hashes "
            f"({srt.size} distinct) matches the committed ordered and sorted roots "
            f"(index: {got.source})", index=got.source)
    return ordered, srt, got.positions


def _proof(t: MerkleFile, i: int) -> dict[str, Any]:
    return {"index": i, "hash": t.entry(i).hex(), "proof": [b64(h) for h in t.prove(i)]}


def answer(q: bytes, ordered: MerkleFile, srt: MerkleFile, positions: Path) -> dict[str, Any]:
    """The answer for example hash ``q`` with its proofs (steps filled in later)."""
    r = srt.bisect(q)
    if r < srt.size and srt.entry(r) == q:
        idx = positions_of(positions, q)
        # the positions file is derived data (possibly from a cache): every index it names
        # must hold q in the verified ordered list, else it is not used at all
        wrong = [i for i in idx[:MAX_ORDERED_PROOFS]
                 if not 0 <= i < ordered.size or ordered.entry(i) != q]
        if wrong or not idx:
            raise MalformedError(f"the membership index names dataset index "
                                 f"{wrong[0] if wrong else 'none'} for {q.hex()[:16]}…, "
                                 "which does not hold it",
                                 hint="run again with --no-cache (or delete the cache "
                                      "directory's entry): the index is rebuilt")
        # every index listed is proven; a hash repeated more often says how many in all
        shown = idx[:MAX_ORDERED_PROOFS]
        return {"hash": q.hex(), "answer": "included", "indexes": shown,
                "occurrences": len(idx), "sorted": _proof(srt, r),
                "ordered": [_proof(ordered, i) for i in shown]}
    return {"hash": q.hex(), "answer": "absent",
            "left": _proof(srt, r - 1) if r > 0 else None,
            "right": _proof(srt, r) if r < srt.size else None}


def _steps(a: MembershipCheck, o: Statement, ordered: MerkleFile,
           answers: list[dict[str, Any]]) -> None:
    """Name the steps that trained on each included hash; check each named step's batch
    root, recomputed from the verified list, against the one the step committed."""
    assert a.found is not None
    view = a.found[0]
    hp = o.body.get("hyperparameters")
    hp = hp if isinstance(hp, dict) else {}
    bs, ep, n = hp.get("batch_size"), hp.get("epochs"), ordered.size
    inc = [x for x in answers if x["answer"] == "included"]
    if not inc:
        return
    if a.found[3] is None:
        a.check("membership.steps", "skip", "the run is open: which steps trained on an "
                "example is derived from the seed, revealed only at run.close; the steps "
                "are unknown until the run closes")
        return
    if a.seed is None or type(bs) is not int or type(ep) is not int or bs < 1 or ep < 1:
        a.check("membership.steps", "skip", "no seed or schedule: the steps that trained on "
                "the included examples are not named")
        return
    plan = schedule(n, bs, ep)
    steps = {st.body.get("step"): st for _, st in view.steps}
    if len(plan) != len(steps):
        a.check("membership.steps", "fail", f"the committed schedule has {len(plan)} steps, "
                f"the log {len(steps)}: batches cannot be located")
        return
    bad = []
    cache: dict[tuple[bytes, int, int], list[int]] = {}
    for x in inc:
        x["steps"] = derive_steps(a.seed, n, bs, ep, x["indexes"])
        for t in x["steps"]:
            _, epoch, off = plan[t]
            idx = batch_indexes(a.seed, n, bs, t, epoch, off, cache)
            root = merkle_root_hex(ordered.entry(i) for i in idx)
            if steps[t].body.get("batch_root") != root:
                bad.append(f"step {t}: the committed batch root is not the root of the "
                           "seed-derived batch")
    a.check("membership.steps", "fail" if bad else "pass", bad[0] if bad else
            "each step named recomputes to its committed batch root from the verified "
            "hash list", problems=bad[:20])


def membership(client: LogClient, run: str, queries: list[bytes], evidence: str,
               progress: Callable[[str, int, int], None] | None = None,
               documents: Sequence[bytes] = (), *,
               max_hash_list_bytes: int = MAX_HASH_LIST_BYTES,
               cache_dir: str | None = None,
               cache_max_bytes: int | None = CACHE_MAX_BYTES) -> dict[str, Any]:
    """Answer each example hash in ``queries`` (and of each of ``documents``, hashed in
    the run's committed example encoding, :mod:`prover.encodings`) for run ``run``: a
    report with ``answer`` (included / absent / mixed, or unverified / inconclusive), the
    checks, per-query ``answers`` and ``proof`` (a :data:`FORMAT` document). A run still
    open is answered from its ``run.open`` (``run_state`` "open": no steps are named; they
    are unknown until the run closes). A document the run's encoding cannot encode raises
    UsageError. ``max_hash_list_bytes`` and ``cache_dir`` (None: no cache) bound and
    cache the hash list, the cache kept under ``cache_max_bytes`` (None: unbounded;
    :mod:`auditor.membership_index`)."""
    from prover.encodings import document_hash

    opts = AuditOptions(run=run, evidence=evidence, max_abandoned=1 << 62,
                        max_hash_list_bytes=max_hash_list_bytes, hash_list_cache=cache_dir,
                        hash_list_cache_max_bytes=cache_max_bytes)
    a = MembershipCheck(client, opts, progress)
    rep: dict[str, Any] = {"format": "potd-membership-v1", "run": run, "checks": a.checks}
    try:
        a.run()
    except PushbackError as e:
        return {**rep, "answer": "inconclusive", "reason": e.message}
    rep["log"] = a.report.get("log")
    failed = [c for c in a.checks if c["status"] == "fail"]
    if a.found is None or failed:
        why = (f"{failed[0]['name']}: {failed[0]['summary']}" if failed else
               "the run has no run.open in the log: no answer is given for it")
        return {**rep, "answer": "unverified" if failed else "inconclusive", "reason": why}
    view, snap, o, close, cp = a.found
    rep["run_state"] = "closed" if close is not None else "open"
    if close is None:
        rep["steps"] = ("unknown until the run closes: they are derived from the seed, "
                        "which run.close reveals")
    ds = o.body.get("dataset")
    enc = ds.get("example_hash") if isinstance(ds, dict) else None
    queries = [*queries, *(document_hash(enc if isinstance(enc, str) else None, d)
                           for d in documents)]
    rep["encoding"] = enc
    with tempfile.TemporaryDirectory(prefix="potd-membership-") as tmp:
        got = _verified_list(a, evidence, o, Path(tmp))
        if got is None:
            st = a.checks[-1]["status"]
            hint = a.checks[-1]["evidence"].get("hint")
            return {**rep, "answer": "unverified" if st == "fail" else "inconclusive",
                    "reason": f"hash_list: {a.checks[-1]['summary']}",
                    **({"hint": hint} if hint else {})}
        ordered, srt, ppath = got
        try:
            answers = [answer(q, ordered, srt, ppath) for q in queries]
            _steps(a, o, ordered, answers)
        except MalformedError as e:  # a damaged local index: nothing said of the run
            return {**rep, "answer": "inconclusive", "reason": f"index: {e.message}",
                    "hint": e.hint}
        finally:
            ordered.close()
            srt.close()
    if any(c["status"] == "fail" for c in a.checks):
        c = next(c for c in a.checks if c["status"] == "fail")
        return {**rep, "answer": "unverified", "reason": f"{c['name']}: {c['summary']}"}
    rep["answers"] = answers
    rep["answer"] = ("included" if all(x["answer"] == "included" for x in answers) else
                     "absent" if all(x["answer"] == "absent" for x in answers) else "mixed")
    rep["proof"] = proof_file(run, view, snap, o, close, cp, answers)
    if close is None:
        rep["proof"]["run_state"] = "open"
    return rep


def proof_file(run: str, view: RunView, snap: LogSnapshot, o: Statement,
               close: Statement | None, cp: SignedCheckpoint,
               answers: list[dict[str, Any]]) -> dict[str, Any]:
    """The self-contained :data:`FORMAT` document (see :mod:`auditor.membership_proof`)."""
    reader = _Levels(snap)

    def stmt(i: int, st: Statement) -> dict[str, Any]:
        return {"index": i, "statement": b64(st.raw),
                "proof": [b64(h) for h in prove_record(cp.size, i, reader)]}

    by_obj = {id(st): i for i, st in view.statements}
    doc: dict[str, Any] = {"format": FORMAT, "run": run, "checkpoint": str(cp),
                           "open": stmt(by_obj[id(o)], o), "answers": answers}
    if close is not None and any(x.get("steps") is not None for x in answers):
        doc["close"] = stmt(by_obj[id(close)], close)
        i0, s0 = view.steps[0]
        doc["step0"] = stmt(i0, s0)
        bsize = by_obj[id(o)] + 1
        doc["beacon_consistency"] = {
            "size": bsize, "proof": [b64(h) for h in prove_tree(cp.size, bsize, reader)]}
    return doc


def check_sorted_root(a: Audit, ds: dict[str, Any], hashes: Iterable[bytes]) -> None:
    """``dataset.sorted``: the committed sorted root and ``distinct`` recomputed from the
    auditor's copy of the data (already matched to the ordered root). A run from before
    membership proofs commits neither: reported as not committed, not as a failure."""
    from prover.hashlist import sorted_commitment

    if "sorted_root" not in ds:
        a.check("dataset.sorted", "skip", "not committed: the run commits no sorted root "
                "(a run from before membership proofs); absence cannot be proven for it")
        return
    with tempfile.TemporaryDirectory(prefix="potd-sorted-") as tmp:
        root, distinct = sorted_commitment(hashes, tmp)
    if root != ds.get("sorted_root") or distinct != ds.get("distinct"):
        a.check("dataset.sorted", "fail", f"the committed sorted root "
                f"{str(ds.get('sorted_root'))[:16]}… ({str(ds.get('distinct'))[:20]} distinct) "
                f"is not the root of the data's sorted distinct hashes ({root[:16]}…, "
                f"{distinct}): absence proofs against it would be worthless",
                committed=ds.get("sorted_root"), recomputed=root, distinct=distinct)
        return
    a.check("dataset.sorted", "pass", f"the sorted root over the {distinct} distinct "
            "example hashes matches the commitment", root=root)
