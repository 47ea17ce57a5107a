"""The self-contained membership proof file ``potd-membership-proof-v1`` and its offline
verification (``potd auditor verify-membership``; docs/protocol.md §4.7).

A proof file holds a signed checkpoint, the run's ``run.open`` (and ``run.close`` and first
step, when steps are named) with their inclusion proofs into that checkpoint, and one
answer per queried example hash. A proof made while the run was open has no
``run.close``: it proves inclusion or absence (both roots are in ``run.open``) and names
no steps, which stay unknown until the run closes:

* ``included``: the sorted-tree index and inclusion proof of the hash, and every dataset
  index with its inclusion proof into the ordered root (``dataset.root``);
* ``absent``: its two neighbours in the sorted tree (``left``, ``right``: index, hash,
  inclusion proof), ``left < hash < right``, at adjacent indexes; at the edges only
  ``right`` (index 0) or only ``left`` (index ``distinct - 1``); neither for an empty
  dataset (``sorted_root`` is then the empty-tree hash and ``distinct`` 0).

The steps of an included example are re-derived from the seed: ``s_rand`` of the
``run.close`` and, in log-beacon mode, the beacon checkpoint carried by step 0 (checked
against the pinned key, and consistent with the proof's checkpoint). In drand mode the
file's steps are reported as not re-verified offline.

Trusts only the pinned log key given to :func:`verify_proof`; everything in the file is
hostile: any defect raises :class:`~ledger.errors.VerificationError` (or
MalformedError) naming what failed.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from ledger.errors import MalformedError, PotdError, VerificationError
from ledger.merkle import EMPTY_ROOT, check_record, check_tree, leaf_hash
from ledger.note import Verifier, open_checkpoint
from ledger.statement import Statement, parse_statement, verify_statement_signature
from prover.derive import beacon_from_checkpoint, derive_seed, seed_commitment

FORMAT = "potd-membership-proof-v1"
MAX_PROOF_HASHES = 64


class MembershipProofError(VerificationError):
    """A membership proof file does not prove what it claims."""

    code = "bad_membership_proof"
    hint = "the proof file is forged, altered, or for another run or log: do not trust it"


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(v: Any, what: str) -> bytes:
    if not isinstance(v, str):
        raise MembershipProofError(f"{what} is not a base64 string")
    try:
        return base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise MembershipProofError(f"{what} is not valid base64") from None


def _hex32(v: Any, what: str) -> bytes:
    try:
        b = bytes.fromhex(v) if isinstance(v, str) else b""
    except ValueError:
        b = b""
    if len(b) != 32:
        raise MembershipProofError(f"{what} is not 64 hex digits")
    return b


def _int(v: Any, what: str) -> int:
    if type(v) is not int or v < 0:
        raise MembershipProofError(f"{what} is not a non-negative integer")
    return int(v)


def _obj(v: Any, what: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise MembershipProofError(f"{what} is not a JSON object")
    return v


def _path(v: Any, what: str) -> list[bytes]:
    if not isinstance(v, list) or len(v) > MAX_PROOF_HASHES:
        raise MembershipProofError(f"{what} is not a list of at most {MAX_PROOF_HASHES} hashes")
    return [_unb64(h, what) for h in v]


def _record(proof: Any, size: int, root: bytes, index: int, entry: bytes, what: str) -> None:
    try:
        check_record(_path(proof, what), size, root, index, leaf_hash(entry))
    except PotdError as e:
        raise MembershipProofError(f"{what}: {e.message}") from None


def entry_proof(d: dict[str, Any], size: int, root: bytes, what: str) -> tuple[int, bytes]:
    """Check ``{"index", "hash", "proof"}`` against a tree; return (index, hash)."""
    i, h = _int(d.get("index"), f"{what}.index"), _hex32(d.get("hash"), f"{what}.hash")
    if i >= size:
        raise MembershipProofError(f"{what}: index {i} is outside the tree of size {size}")
    _record(d.get("proof"), size, root, i, h, what)
    return i, h


def check_answer(ans: dict[str, Any], ds: dict[str, Any]) -> None:
    """Verify one answer against the committed dataset fields ``ds`` (run.open)."""
    q = _hex32(ans.get("hash"), "answer.hash")
    size, root = _int(ds.get("size"), "dataset.size"), _hex32(ds.get("root"), "dataset.root")
    m = _int(ds.get("distinct"), "dataset.distinct")
    sroot = _hex32(ds.get("sorted_root"), "dataset.sorted_root")
    if ans.get("answer") == "included":
        i, h = entry_proof(_obj(ans.get("sorted"), "sorted"), m, sroot, "sorted proof")
        if h != q:
            raise MembershipProofError("the sorted-tree leaf is not the queried hash")
        idx = ans.get("indexes")
        if not isinstance(idx, list) or not idx:
            raise MembershipProofError("an included answer lists no dataset index")
        listed = {_int(j, "dataset index") for j in idx}
        ordered = ans.get("ordered")
        if not isinstance(ordered, list):
            raise MembershipProofError("an included answer carries no ordered-root proofs")
        proven = set()
        for k, p in enumerate(ordered):
            j, h = entry_proof(_obj(p, "ordered proof"), size, root, f"ordered proof {k}")
            if h != q:
                raise MembershipProofError(f"ordered proof {k} is not for the queried hash")
            proven.add(j)
        if proven != listed:
            raise MembershipProofError("the dataset indexes listed are not exactly the ones "
                                       "proven in the ordered root")
        return
    if ans.get("answer") != "absent":
        raise MembershipProofError(f"answer {str(ans.get('answer'))[:20]!r} is not included "
                                   "or absent")
    left, right = ans.get("left"), ans.get("right")
    if m == 0:
        if sroot != EMPTY_ROOT or left is not None or right is not None:
            raise MembershipProofError("an empty dataset has the empty sorted root and no "
                                       "neighbours")
        return
    li = ri = None
    if left is not None:
        li, lh = entry_proof(_obj(left, "left"), m, sroot, "left neighbour")
        if not lh < q:
            raise MembershipProofError("the left neighbour is not below the queried hash")
    if right is not None:
        ri, rh = entry_proof(_obj(right, "right"), m, sroot, "right neighbour")
        if not q < rh:
            raise MembershipProofError("the right neighbour is not above the queried hash")
    if li is None and ri is None:
        raise MembershipProofError("an absent answer needs at least one neighbour")
    if li is None and ri != 0:
        raise MembershipProofError("only a right neighbour, but it is not the first leaf")
    if ri is None and li != m - 1:
        raise MembershipProofError("only a left neighbour, but it is not the last leaf")
    if li is not None and ri is not None and ri != li + 1:
        raise MembershipProofError(f"the neighbours (sorted indexes {li} and {ri}) are not "
                                   "adjacent: other hashes lie between them")


def _statement(d: Any, what: str, cp_size: int, cp_root: bytes) -> tuple[int, Statement]:
    d = _obj(d, what)
    raw = _unb64(d.get("statement"), f"{what}.statement")
    try:
        st = parse_statement(raw)
        verify_statement_signature(st)
    except PotdError as e:
        raise MembershipProofError(f"{what}: {e.message}") from None
    i = _int(d.get("index"), f"{what}.index")
    if i >= cp_size:
        raise MembershipProofError(f"{what}: index {i} is outside the checkpoint")
    try:
        check_record(_path(d.get("proof"), what), cp_size, cp_root, i, leaf_hash(raw))
    except PotdError as e:
        raise MembershipProofError(f"{what}: not included in the checkpoint: "
                                   f"{e.message}") from None
    return i, st


def derive_steps(seed: bytes, n: int, batch_size: int, epochs: int,
                 indexes: list[int]) -> list[int]:
    """The steps whose batches hold dataset ``indexes`` (prover.derive order)."""
    from prover.derive import permutation

    per_epoch = -(-n // batch_size)
    want = set(indexes)
    steps = []
    for e in range(epochs):
        for pos, i in enumerate(permutation(seed, n, e)):
            if i in want:
                steps.append(e * per_epoch + pos // batch_size)
    return sorted(steps)


def verify_proof(doc: Any, vkey: Verifier, run: str | None = None, *,
                 origin: str | None = None) -> dict[str, Any]:
    """Verify a proof file against the pinned log key (and, given ``run``, that it is
    about that run; ``origin``: the log's, if its key is named otherwise); return a
    summary (run, checkpoint size, per-hash answers, steps verified or why not). Raises
    on any defect."""
    doc = _obj(doc, "the proof file")
    if run is not None and doc.get("run") != run:
        raise MembershipProofError(f"the proof is about run {str(doc.get('run'))[:64]}, "
                                   f"not {run}")
    if doc.get("format") != FORMAT:
        raise MembershipProofError(f"not a {FORMAT} file")
    text = doc.get("checkpoint")
    if not isinstance(text, str):
        raise MembershipProofError("the proof file has no checkpoint")
    try:
        cp = open_checkpoint(text, vkey, origin=origin)
    except PotdError as e:
        raise MembershipProofError(f"checkpoint: {e.message}") from None
    oi, o = _statement(doc.get("open"), "run.open", cp.size, cp.root)
    run = doc.get("run")
    if o.kind != "run.open" or o.run != run:
        raise MembershipProofError(f"the statement is not the run.open of run {str(run)[:64]}")
    ds = _obj(o.body.get("dataset"), "run.open dataset")
    if "sorted_root" not in ds:
        raise MembershipProofError("the run commits no sorted root: nothing can be proven")
    answers = doc.get("answers")
    if not isinstance(answers, list) or not answers:
        raise MembershipProofError("the proof file holds no answer")
    for k, ans in enumerate(answers):
        try:
            check_answer(_obj(ans, f"answer {k}"), ds)
        except MembershipProofError as e:
            raise MembershipProofError(f"answer {k}: {e.message}") from None
    out: dict[str, Any] = {"run": o.run, "checkpoint_size": cp.size, "origin": cp.origin,
                           "answers": [{"hash": a["hash"], "answer": a["answer"],
                                        "indexes": a.get("indexes"), "steps": a.get("steps")}
                                       for a in answers]}
    out["steps_verified"] = _steps(doc, answers, o, oi, ds, cp, vkey)
    return out


def _steps(doc: dict[str, Any], answers: list[Any], o: Statement, oi: int,
           ds: dict[str, Any], cp: Any, vkey: Verifier) -> str:
    if not any(a.get("answer") == "included" and a.get("steps") is not None for a in answers):
        if doc.get("close") is None and any(a.get("answer") == "included" for a in answers):
            return ("unknown until the run closes (the proof carries no run.close: it was "
                    "made while the run was open, and the steps derive from the seed that "
                    "run.close reveals)")
        return "no steps claimed"
    if doc.get("close") is None or doc.get("step0") is None:
        raise MembershipProofError("steps are named but the proof has no run.close and step 0")
    _, close = _statement(doc.get("close"), "run.close", cp.size, cp.root)
    _, s0 = _statement(doc.get("step0"), "step 0", cp.size, cp.root)
    for st, kind in ((close, "run.close"), (s0, "step")):
        if st.run != o.run or st.kind != kind or st.signer != o.signer:
            raise MembershipProofError(f"the {kind} is not of run {o.run[:16]}… by its signer")
    if s0.seq != 1 or s0.body.get("step") != 0:
        raise MembershipProofError("step 0 is not the run's first step (seq 1)")
    try:
        s_rand = bytes.fromhex(str(close.body.get("s_rand")))
    except ValueError:
        s_rand = b""
    if len(s_rand) != 32 or seed_commitment(s_rand) != o.body.get("seed_commitment"):
        raise MembershipProofError("run.close's s_rand does not open the seed commitment")
    if "beacon" in o.body:
        return "not re-verified offline (drand beacon: run `potd auditor membership`)"
    text = s0.body.get("beacon_checkpoint")
    cons = _obj(doc.get("beacon_consistency"), "beacon_consistency")
    try:
        # of the proof's log: its origin (cp's, checked against the pinned one)
        beacon = beacon_from_checkpoint(str(text), vkey, oi + 1, origin=cp.origin)
        bcp = open_checkpoint(str(text), vkey, origin=cp.origin)
        check_tree(_path(cons.get("proof"), "beacon consistency"), cp.size, cp.root,
                   bcp.size, bcp.root)
    except PotdError as e:
        raise MembershipProofError(f"beacon checkpoint: {e.message}") from None
    seed = derive_seed(_hex32(ds.get("root"), "dataset.root"), s_rand, beacon)
    hp = _obj(o.body.get("hyperparameters"), "hyperparameters")
    bs, ep = _int(hp.get("batch_size"), "batch_size"), _int(hp.get("epochs"), "epochs")
    n = _int(ds.get("size"), "dataset.size")
    if bs < 1 or ep < 1:
        raise MalformedError("the committed batch size and epochs must be positive")
    for k, a in enumerate(answers):
        if a.get("answer") != "included" or a.get("steps") is None:
            continue
        want = derive_steps(seed, n, bs, ep, [int(i) for i in a["indexes"]])
        if a["steps"] != want:
            raise MembershipProofError(f"answer {k}: steps {str(a['steps'])[:80]} are not "
                                       f"the seed-derived steps {want[:20]}")
    return "re-derived from the seed (log beacon)"
