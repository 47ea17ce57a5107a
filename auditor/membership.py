"""Was this document in the training data? (``potd auditor membership``; docs/protocol.md
§4.7). Answers from the log and the published example-hash list only, never the data.

Order: verify the log and the run like an audit does (checkpoint, every entry rehashed,
signatures, hash chain; :class:`~auditor.audit.Audit`), derive the seed when the run is
closed (:class:`~auditor.replay_check.ReplayCheck`), fetch the hash list that
``run.open`` names, check it against *both* committed roots (``hash_list`` named check),
then answer each query from the verified list: *included* (sorted index, every dataset
index, the steps whose batches held it — each step's committed batch root recomputed
from the list) or *absent* (the two neighbouring sorted leaves). Every answer carries
its Merkle proofs, and :func:`proof_file` packs them with the checkpoint and statements
into a file :mod:`auditor.membership_proof` verifies offline.

Trusts the pinned log key; the evidence location and everything in it are hostile.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ledger.client import LogClient
from ledger.errors import PotdError, PushbackError
from ledger.merkle import Node, prove_record, prove_tree, split_stored_hash_index
from ledger.note import SignedCheckpoint
from ledger.statement import Statement
from prover.derive import batch_indexes, schedule
from prover.hashing import merkle_root_hex
from prover.hashlist import (
    HEADER_SIZE,
    MerkleFile,
    check_hash_list,
    external_sort,
    positions_of,
)

from .audit import Audit, AuditOptions
from .logview import LogSnapshot
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

    found: tuple[RunView, LogSnapshot, Statement, Statement, SignedCheckpoint] | None = None
    seed: bytes | None = None

    def _verify(self, view: RunView, snap: LogSnapshot, o: Statement, close: Statement,
                cp: SignedCheckpoint) -> None:
        from .replay_check import ReplayCheck

        self.found = (view, snap, o, close, cp)
        self.seed = ReplayCheck(self, view, snap, o, close, cp)._seed()


def _verified_list(a: Audit, evidence: str, o: Statement, work: Path
                   ) -> tuple[MerkleFile, MerkleFile, Path] | None:
    """Fetch the hash list ``run.open`` names and check it against both roots; the
    ordered and sorted trees and the positions file, or None (a failed check)."""
    from prover.evidence import EvidenceSource

    ds = o.body.get("dataset")
    ds = ds if isinstance(ds, dict) else {}
    name, size = ds.get("hash_list"), ds.get("size")
    if not isinstance(name, str) or "sorted_root" not in ds or type(size) is not int:
        a.check("hash_list", "inconclusive", "not committed: the run commits no sorted root "
                "or hash list (a run from before membership proofs); nothing can be proven")
        return None
    path = work / "list.hashes"
    limit = HEADER_SIZE + 32 * min(size, 1 << 34)
    try:
        src = EvidenceSource(evidence)
        if src.is_url:
            data = src.read(f"objects/{name}.hashes", limit=limit)
            digest = hashlib.sha256(data).hexdigest()
            path.write_bytes(data)
            del data
        else:  # streamed: memory does not grow with the list
            digest = copy_regular(Path(evidence) / "objects" / f"{name}.hashes", path, limit)
    except PotdError as e:
        a.check("hash_list", "inconclusive", f"the published hash list cannot be read: "
                f"{e.message}", hint=e.hint)
        return None
    if digest != name:
        a.check("hash_list", "fail", f"the published hash list objects/{name[:16]}….hashes "
                "does not have the SHA-256 its name and run.open commit")
        return None
    try:
        check_hash_list(path, size)
    except PotdError as e:
        a.check("hash_list", "fail", f"the published hash list is malformed: {e.message}")
        return None
    ordered = MerkleFile(path, HEADER_SIZE)
    if ordered.root.hex() != ds.get("root"):
        ordered.close()
        a.check("hash_list", "fail", "the published hash list does not hash to the "
                "committed dataset root", got=ordered.root.hex(), committed=ds.get("root"))
        return None
    spath, ppath, _ = external_sort(
        (ordered.entry(i) for i in range(ordered.size)), work)
    assert ppath is not None
    srt = MerkleFile(spath)
    if srt.root.hex() != ds.get("sorted_root") or srt.size != ds.get("distinct"):
        ordered.close()
        srt.close()
        a.check("hash_list", "fail", "the published hash list's distinct hashes do not hash "
                "to the committed sorted root (or their count differs from 'distinct')",
                got=srt.root.hex(), committed=ds.get("sorted_root"), distinct=srt.size)
        return None
    a.check("hash_list", "pass", f"the published list of {ordered.size} example hashes "
            f"({srt.size} distinct) matches the committed ordered and sorted roots")
    return ordered, srt, ppath


def copy_regular(src: Path, dest: Path, limit: int) -> str:
    """Copy the regular file ``src`` (at most ``limit`` bytes, else EvidenceError) to
    ``dest`` in blocks; return its SHA-256 (hex). Never blocks on a FIFO or reads a
    device (type checked on the opened descriptor)."""
    import os
    import stat

    from prover.evidence import EvidenceError

    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(src, flags)
    except OSError as e:
        raise EvidenceError(f"evidence file {src} cannot be read: {e.strerror}",
                            hint="the trainer must publish the hash list run.open "
                                 "names") from None
    h = hashlib.sha256()
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            raise EvidenceError(f"evidence file {src} is not a regular file of at most "
                                f"{limit} bytes")
        with os.fdopen(fd, "rb", closefd=False) as f, open(dest, "wb") as out:
            left = st.st_size
            while left > 0 and (block := f.read(min(1 << 20, left))):
                h.update(block)
                out.write(block)
                left -= len(block)
    finally:
        os.close(fd)
    return h.hexdigest()


def _proof(t: MerkleFile, i: int) -> dict[str, Any]:
    return {"index": i, "hash": t.entry(i).hex(), "proof": [b64(h) for h in t.prove(i)]}


def answer(q: bytes, ordered: MerkleFile, srt: MerkleFile, positions: Path) -> dict[str, Any]:
    """The answer for example hash ``q`` with its proofs (steps filled in later)."""
    r = srt.bisect(q)
    if r < srt.size and srt.entry(r) == q:
        idx = positions_of(positions, q)
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
               documents: Sequence[bytes] = ()) -> dict[str, Any]:
    """Answer each example hash in ``queries`` (and of each of ``documents``, hashed in
    the run's committed example encoding, :mod:`prover.encodings`) for run ``run``: a
    report with ``answer`` (included / absent / mixed, or unverified / inconclusive), the
    checks, per-query ``answers`` and ``proof`` (a :data:`FORMAT` document). A document
    the run's encoding cannot encode raises UsageError."""
    from prover.encodings import document_hash

    opts = AuditOptions(run=run, evidence=evidence, max_abandoned=1 << 62)
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
               "the run is not closed (or aborted): no answer is given for it")
        return {**rep, "answer": "unverified" if failed else "inconclusive", "reason": why}
    view, snap, o, close, cp = a.found
    ds = o.body.get("dataset")
    enc = ds.get("example_hash") if isinstance(ds, dict) else None
    queries = [*queries, *(document_hash(enc if isinstance(enc, str) else None, d)
                           for d in documents)]
    rep["encoding"] = enc
    with tempfile.TemporaryDirectory(prefix="potd-membership-") as tmp:
        got = _verified_list(a, evidence, o, Path(tmp))
        if got is None:
            st = a.checks[-1]["status"]
            return {**rep, "answer": "unverified" if st == "fail" else "inconclusive",
                    "reason": f"hash_list: {a.checks[-1]['summary']}"}
        ordered, srt, ppath = got
        try:
            answers = [answer(q, ordered, srt, ppath) for q in queries]
            _steps(a, o, ordered, answers)
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
    return rep


def proof_file(run: str, view: RunView, snap: LogSnapshot, o: Statement, close: Statement,
               cp: SignedCheckpoint, answers: list[dict[str, Any]]) -> dict[str, Any]:
    """The self-contained :data:`FORMAT` document (see :mod:`auditor.membership_proof`)."""
    reader = _Levels(snap)

    def stmt(i: int, st: Statement) -> dict[str, Any]:
        return {"index": i, "statement": b64(st.raw),
                "proof": [b64(h) for h in prove_record(cp.size, i, reader)]}

    by_obj = {id(st): i for i, st in view.statements}
    doc: dict[str, Any] = {"format": FORMAT, "run": run, "checkpoint": str(cp),
                           "open": stmt(by_obj[id(o)], o), "answers": answers}
    if any(x.get("steps") is not None for x in answers):
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
