"""Subtrees and subtree consistency proofs (draft-ietf-plants-merkle-tree-certs-03 §4),
as C2SP tlog-witness ``sign-subtree`` uses them. Pure math, no I/O.

A subtree ``[start, end)`` of a tree of size ``n`` is valid when ``0 <= start < end <= n``
and ``start`` is a multiple of BIT_CEIL(end - start) (§4.1): it is then either one node
of the tree or the left-aligned part of one. Its hash is MTH(D[start:end]) (RFC 9162).

:func:`prove_subtree` builds SUBTREE_PROOF (§4.4.1) from a function giving MTH of any
range; :func:`check_subtree` is the verification of §4.4.3: it recomputes, from the
subtree's hash and the proof, both the subtree's hash and the tree's root, and raises
:class:`~ledger.errors.ConsistencyError` unless both match.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .errors import ConsistencyError
from .merkle import node_hash

MAX_PROOF = 63  # tlog-witness: at most 63 consistency proof lines


def valid_subtree(start: int, end: int) -> bool:
    """§4.1: ``0 <= start < end`` and ``start`` a multiple of BIT_CEIL(end - start)."""
    if not 0 <= start < end:
        return False
    ceil = 1 << (end - start - 1).bit_length()
    return start % ceil == 0


def _split(lo: int, hi: int) -> int:
    """Where [lo, hi) (hi - lo >= 2) splits: its left part is the largest power of two
    smaller than its size (RFC 9162 §2.1.1)."""
    return lo + (1 << ((hi - lo - 1).bit_length() - 1))


def prove_subtree(start: int, end: int, n: int, mth: Callable[[int, int], bytes]
                  ) -> list[bytes]:
    """SUBTREE_PROOF(start, end, D_n) (§4.4.1); ``mth(lo, hi)`` is MTH(D[lo:hi])."""
    if not valid_subtree(start, end) or end > n:
        raise ConsistencyError(f"[{start}, {end}) is not a valid subtree of a tree of "
                               f"size {n}")

    def sub(lo: int, hi: int, wlo: int, whi: int, known: bool) -> list[bytes]:
        if (lo, hi) == (wlo, whi):
            return [] if known else [mth(wlo, whi)]
        mid = _split(wlo, whi)
        if hi <= mid:
            return sub(lo, hi, wlo, mid, known) + [mth(mid, whi)]
        if mid <= lo:
            return sub(lo, hi, mid, whi, known) + [mth(wlo, mid)]
        # straddles the split: only when lo == wlo; the right part is not a known node
        return sub(mid, hi, mid, whi, False) + [mth(wlo, mid)]

    return sub(start, end, 0, n, True)


def check_subtree(start: int, end: int, n: int, proof: Sequence[bytes], subtree: bytes,
                  root: bytes) -> None:
    """Verify that ``subtree`` is MTH(D[start:end]) of the tree of size ``n`` whose root
    is ``root`` (§4.4.3). Raises ConsistencyError."""
    if not valid_subtree(start, end) or end > n:
        raise ConsistencyError(f"[{start}, {end}) is not a valid subtree of a tree of "
                               f"size {n}")
    if len(proof) > MAX_PROOF:
        raise ConsistencyError(f"subtree proof of {len(proof)} hashes; at most {MAX_PROOF}")
    fn, sn, tn = start, end - 1, n - 1
    if sn == tn:  # flush with the tree's right edge: climb to the subtree's root
        while fn != sn:
            fn, sn, tn = fn >> 1, sn >> 1, tn >> 1
    else:  # climb while sn is a right child
        while fn != sn and sn & 1:
            fn, sn, tn = fn >> 1, sn >> 1, tn >> 1
    if fn == sn:
        fr = sr = subtree
        rest = list(proof)
    else:
        if not proof:
            raise ConsistencyError("subtree proof is empty but the subtree is not one node")
        fr = sr = proof[0]
        rest = list(proof[1:])
    for c in rest:
        if tn == 0:
            raise ConsistencyError("subtree proof is longer than the tree is tall")
        if sn & 1 or sn == tn:
            if fn < sn:
                fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not sn & 1:
                fn, sn, tn = fn >> 1, sn >> 1, tn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn, tn = fn >> 1, sn >> 1, tn >> 1
    if tn != 0 or fr != subtree or sr != root:
        raise ConsistencyError(f"subtree [{start}, {end}) is not consistent with the tree "
                               f"of size {n}: the proof does not verify")
