"""RFC 6962 / RFC 9162 Merkle tree math. Pure: no I/O, no storage, no clocks.

Hashing (RFC 6962 §2.1): leaf ``SHA-256(0x00 || entry)``, node ``SHA-256(0x01 || l || r)``,
empty tree ``SHA-256("")``.

Proof *production* follows Go's ``golang.org/x/mod/sumdb/tlog`` exactly: the tree is a
sequence of "stored hashes" addressed by :func:`stored_hash_index`; a prover first
computes which stored hashes it needs, then reads them in one batch through a
:class:`HashReader` (one method, ``read_hashes``). Proof *verification* follows RFC 9162
§2.1.3.2 (inclusion) and §2.1.4.2 (consistency), which accept exactly the proofs the
Go prover emits (leaf sibling first).

Invariants: every hash handled here is exactly 32 bytes (anything else raises
:class:`~ledger.errors.MalformedError`); ``check_*`` return ``None`` or raise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Protocol

from .errors import ConsistencyError, InclusionError, MalformedError, UsageError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256

native: Any  # the optional C helper (ledger/_treehash.c, setup.py): same hashes, fewer calls
try:
    from . import _treehash as _built  # type: ignore[attr-defined, unused-ignore]
    native = _built
except ImportError:  # built by setup.py where OpenSSL's headers exist
    native = None


def leaf_hash(entry: bytes) -> bytes:
    """RFC 6962 §2.1 leaf hash: ``SHA-256(0x00 || entry)``."""
    return _sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 §2.1 interior node hash: ``SHA-256(0x01 || left || right)``."""
    return _sha256(b"\x01" + left + right).digest()


def check_hash(h: bytes, what: str = "hash") -> bytes:
    """Return ``h`` if it is exactly 32 bytes, else raise MalformedError."""
    if not isinstance(h, (bytes, bytearray)) or len(h) != HASH_SIZE:
        n = len(h) if isinstance(h, (bytes, bytearray)) else type(h).__name__
        raise MalformedError(f"{what} must be exactly 32 bytes, got {n}",
                             hint="hashes are SHA-256 digests; check the encoding "
                                  "(base64 std or hex)")
    return bytes(h)


class HashReader(Protocol):
    """Reads stored hashes by their :func:`stored_hash_index`, in the order asked."""

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]: ...


# --- stored-hash layout (Go tlog) -------------------------------------------------

def stored_hash_index(level: int, n: int) -> int:
    """Index of the ``n``-th hash at ``level`` in the stored-hash sequence (Go StoredHashIndex).

    Level-0 hash ``n`` is stored right after all hashes of the complete subtrees of
    leaves ``0..n-1``; each level-``L`` hash right after its right child. Go sums
    ``n + n/2 + n/4 + ...`` after mapping to the rightmost leaf; that sum is
    ``2n - popcount(n)``.
    """
    m = ((n + 1) << level) - 1
    return 2 * m - m.bit_count() + level


def split_stored_hash_index(index: int) -> tuple[int, int]:
    """Inverse of :func:`stored_hash_index`: ``index -> (level, n)``."""
    if index < 0:
        raise UsageError(f"stored hash index {index} is negative")
    n = index // 2
    index_n = stored_hash_index(0, n)
    while True:
        x = index_n + 1 + _trailing_zeros(n + 1)
        if x > index:
            break
        n += 1
        index_n = x
    level = index - index_n
    return level, n >> level


def _trailing_zeros(x: int) -> int:
    return (x & -x).bit_length() - 1


def stored_hash_count(n: int) -> int:
    """Number of stored hashes in a tree of ``n`` records (Go StoredHashCount)."""
    if n == 0:
        return 0
    count = stored_hash_index(0, n - 1) + 1
    i = n - 1
    while i & 1:
        count += 1
        i >>= 1
    return count


# --- tree hash and proofs, Go tlog algorithms -------------------------------------

def _maxpow2(n: int) -> tuple[int, int]:
    """Largest power of two strictly less than ``n`` (``n >= 2``), and its log2."""
    level = (n - 1).bit_length() - 1
    return 1 << level, level


Node = tuple[int, int]  # (level, n): node n of tree level ``level``


def _subtree_index(lo: int, hi: int, need: list[Node]) -> list[Node]:
    """The maximal complete subtrees covering ``[lo, hi)``, as (level, n) nodes."""
    while lo < hi:
        k, level = _maxpow2(hi - lo + 1)
        need.append((level, lo >> level))
        lo += k
    return need


def _subtree_hash(lo: int, hi: int, hashes: list[bytes], pos: int) -> tuple[bytes, int]:
    num = 0
    while lo < hi:
        k, _ = _maxpow2(hi - lo + 1)
        lo += k
        num += 1
    th = hashes[pos + num - 1]
    for i in range(num - 2, -1, -1):
        th = node_hash(hashes[pos + i], th)
    return th, pos + num


def _read(reader: HashReader, nodes: list[Node]) -> list[bytes]:
    """Read nodes through ``reader``: by stored-hash index (Go's HashReader), or by
    (level, n) directly when the reader offers ``read_nodes`` (saves the index round
    trip for stores laid out by level)."""
    read_nodes = getattr(reader, "read_nodes", None)
    if read_nodes is not None:
        hashes = read_nodes(nodes)
    else:
        hashes = reader.read_hashes([stored_hash_index(lv, n) for lv, n in nodes])
    if len(hashes) != len(nodes):
        raise MalformedError(f"hash reader returned {len(hashes)} hashes for {len(nodes)} "
                             "indexes")
    for h in hashes:
        if len(h) != HASH_SIZE:
            check_hash(h, "stored hash")
    return list(hashes)


def tree_hash(n: int, reader: HashReader) -> bytes:
    """Root hash of the tree of the first ``n`` records (RFC 6962 MTH)."""
    if n < 0:
        raise UsageError(f"tree size {n} is negative")
    if n == 0:
        return EMPTY_ROOT
    hashes = _read(reader, _subtree_index(0, n, []))
    th, _ = _subtree_hash(0, n, hashes, 0)
    return th


def tree_hash_indexes(n: int) -> list[int]:
    """Stored-hash indexes that :func:`tree_hash` reads for size ``n``."""
    return [stored_hash_index(lv, i) for lv, i in _subtree_index(0, n, [])] if n > 0 else []


def _leaf_proof_index(lo: int, hi: int, n: int, need: list[Node]) -> list[Node]:
    if lo + 1 == hi:
        return need
    k, _ = _maxpow2(hi - lo)
    if n < lo + k:
        _leaf_proof_index(lo, lo + k, n, need)
        _subtree_index(lo + k, hi, need)
    else:
        _subtree_index(lo, lo + k, need)
        _leaf_proof_index(lo + k, hi, n, need)
    return need


def _leaf_proof(lo: int, hi: int, n: int, hashes: list[bytes], pos: int) -> tuple[list[bytes], int]:
    if lo + 1 == hi:
        return [], pos
    k, _ = _maxpow2(hi - lo)
    if n < lo + k:
        p, pos = _leaf_proof(lo, lo + k, n, hashes, pos)
        th, pos = _subtree_hash(lo + k, hi, hashes, pos)
    else:
        th, pos = _subtree_hash(lo, lo + k, hashes, pos)
        p, pos = _leaf_proof(lo + k, hi, n, hashes, pos)
    p.append(th)
    return p, pos


def prove_record(t: int, n: int, reader: HashReader) -> list[bytes]:
    """Inclusion proof of record ``n`` in the tree of size ``t`` (RFC 9162 audit path)."""
    if not 0 <= n < t:
        raise UsageError(f"cannot prove inclusion of index {n} in a tree of size {t}",
                         hint="the index must be below the tree size")
    indexes = _leaf_proof_index(0, t, n, [])
    if not indexes:
        return []
    proof, _ = _leaf_proof(0, t, n, _read(reader, indexes), 0)
    return proof


def _tree_proof_index(lo: int, hi: int, n: int, need: list[Node]) -> list[Node]:
    if n == hi:
        if lo == 0:
            return need
        return _subtree_index(lo, hi, need)
    k, _ = _maxpow2(hi - lo)
    if n <= lo + k:
        _tree_proof_index(lo, lo + k, n, need)
        _subtree_index(lo + k, hi, need)
    else:
        _subtree_index(lo, lo + k, need)
        _tree_proof_index(lo + k, hi, n, need)
    return need


def _tree_proof(lo: int, hi: int, n: int, hashes: list[bytes], pos: int) -> tuple[list[bytes], int]:
    if n == hi:
        if lo == 0:
            return [], pos
        th, pos = _subtree_hash(lo, hi, hashes, pos)
        return [th], pos
    k, _ = _maxpow2(hi - lo)
    if n <= lo + k:
        p, pos = _tree_proof(lo, lo + k, n, hashes, pos)
        th, pos = _subtree_hash(lo + k, hi, hashes, pos)
    else:
        th, pos = _subtree_hash(lo, lo + k, hashes, pos)
        p, pos = _tree_proof(lo + k, hi, n, hashes, pos)
    p.append(th)
    return p, pos


def prove_tree(t: int, n: int, reader: HashReader) -> list[bytes]:
    """Consistency proof from size ``n`` to size ``t`` (RFC 9162 §2.1.4), ``0 < n <= t``."""
    if not 0 < n <= t:
        raise UsageError(f"cannot prove consistency from size {n} to size {t}",
                         hint="need 0 < from <= to; every tree is consistent with the empty tree")
    indexes = _tree_proof_index(0, t, n, [])
    if not indexes:
        return []
    proof, _ = _tree_proof(0, t, n, _read(reader, indexes), 0)
    return proof


# --- verification, RFC 9162 --------------------------------------------------------

def _check_proof_hashes(proof: Sequence[bytes]) -> None:
    for i, p in enumerate(proof):
        check_hash(p, f"proof hash #{i}")


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """RFC 9162 §2.1.3.2: the root implied by an audit path, or InclusionError."""
    check_hash(leaf, "leaf hash")
    _check_proof_hashes(proof)
    if not 0 <= index < size:
        raise InclusionError(f"index {index} is not inside a tree of size {size}",
                             index=index, size=size)
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise InclusionError(f"inclusion proof for index {index} in size {size} is too long",
                                 index=index, size=size, proof=list(proof))
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise InclusionError(f"inclusion proof for index {index} in size {size} is too short",
                             index=index, size=size, proof=list(proof))
    return r


def check_record(proof: Sequence[bytes], size: int, root: bytes, index: int, leaf: bytes) -> None:
    """Verify that ``leaf`` is record ``index`` of the tree (``size``, ``root``).

    Raises InclusionError on failure."""
    check_hash(root, "root hash")
    got = root_from_inclusion_proof(index, size, leaf, proof)
    if got != root:
        raise InclusionError(f"inclusion proof for index {index} does not lead to the root of "
                             f"the tree of size {size}", index=index, size=size, root=root,
                             computed=got, proof=list(proof))


def check_tree(proof: Sequence[bytes], size2: int, root2: bytes, size1: int, root1: bytes) -> None:
    """Verify that tree (``size1``, ``root1``) is a prefix of (``size2``, ``root2``).

    RFC 9162 §2.1.4.2, with the second size fully consumed. ``size1 == size2`` needs an
    empty proof and equal roots; ``size1 == 0`` needs an empty proof (every tree
    extends the empty tree). Raises :class:`ConsistencyError` carrying the evidence.
    """
    check_hash(root1, "first root hash")
    check_hash(root2, "second root hash")
    _check_proof_hashes(proof)
    ev: dict[str, Any] = dict(size1=size1, root1=root1, size2=size2, root2=root2,
                              proof=list(proof))
    if not 0 <= size1 <= size2:
        raise ConsistencyError(f"sizes {size1} -> {size2} go backwards: a rollback", **ev)
    if size1 == 0:
        if proof:
            raise ConsistencyError("a consistency proof from the empty tree must be empty", **ev)
        if root1 != EMPTY_ROOT or (size2 == 0 and root2 != EMPTY_ROOT):
            raise ConsistencyError("a tree of size 0 must have the empty-tree root SHA-256(\"\")",
                                   **ev)
        return
    if size1 == size2:
        if proof:
            raise ConsistencyError("a consistency proof between equal sizes must be empty", **ev)
        if root1 != root2:
            raise ConsistencyError(f"two different roots for the same tree size {size1}: a fork",
                                   **ev)
        return
    if not proof:
        raise ConsistencyError(f"empty consistency proof for sizes {size1} -> {size2}", **ev)
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ConsistencyError(f"consistency proof {size1} -> {size2} is too long", **ev)
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ConsistencyError(f"consistency proof {size1} -> {size2} is too short", **ev)
    if fr != root1:
        raise ConsistencyError(f"consistency proof does not match the root of size {size1}", **ev)
    if sr != root2:
        raise ConsistencyError(f"consistency proof does not match the root of size {size2}", **ev)


# --- in-memory helpers --------------------------------------------------------------

def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """RFC 6962 MTH over a list of leaf hashes, O(n) time.

    Computed level by level, an odd last node moving up unchanged: the same tree as
    RFC 6962's split at the largest power of two below n (a left-balanced tree), with
    one C call per node and no per-node Python frames."""
    level = [check_hash(h, "leaf hash") for h in leaf_hashes]
    if not level:
        return EMPTY_ROOT
    while len(level) > 1:
        up = [_sha256(b"\x01" + level[i] + level[i + 1]).digest()
              for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            up.append(level[-1])
        level = up
    return bytes(level[0])


class CompactRange:
    """The right edge of a tree: one hash per set bit of ``size`` (largest subtree first).

    Appending a leaf is O(1) amortised; :meth:`append` returns the hashes Go's layout
    stores for that leaf (the leaf hash, then each newly completed parent), so a store
    can write them without ever reading the tree back.
    """

    __slots__ = ("size", "_stack")

    def __init__(self, size: int = 0, edge: Sequence[bytes] = ()) -> None:
        if bin(size).count("1") != len(edge):
            raise MalformedError(f"a compact range of size {size} needs {bin(size).count('1')} "
                                 f"hashes, got {len(edge)}")
        self.size = size
        self._stack = [check_hash(h) for h in edge]

    @staticmethod
    def edge_indexes(size: int) -> list[int]:
        """Stored-hash indexes of the right edge of a tree of ``size`` records."""
        return [stored_hash_index(lv, n) for lv, n in _subtree_index(0, size, [])]

    @property
    def edge(self) -> list[bytes]:
        return list(self._stack)

    def append(self, leaf: bytes) -> list[bytes]:
        stack = self._stack
        out = [leaf]
        h = leaf
        n = self.size
        while n & 1:
            h = node_hash(stack.pop(), h)
            out.append(h)
            n >>= 1
        stack.append(h)
        self.size += 1
        return out

    def extend(self, leaves: Sequence[bytes]) -> list[list[bytes]]:
        """Append many leaf hashes; return the new stored hashes grouped by level.

        ``result[l]`` lists the new level-``l`` hashes in order; the first is hash
        number ``old_size >> l`` of that level. Same effect as repeated :meth:`append`.
        """
        if native is not None:
            levels: list[list[bytes]] = native.extend(self._stack, self.size, leaves)
            self.size += len(levels[0])
            return levels
        stack = self._stack
        levels = [list(leaves)]
        n = self.size
        sha = _sha256
        for h in leaves:
            level = 0
            m = n
            while m & 1:
                h = sha(b"\x01" + stack.pop() + h).digest()
                level += 1
                if level == len(levels):
                    levels.append([])
                levels[level].append(h)
                m >>= 1
            stack.append(h)
            n += 1
        self.size = n
        return levels

    def root(self) -> bytes:
        if not self._stack:
            return EMPTY_ROOT
        stack = self._stack
        h = stack[-1]
        for i in range(len(stack) - 2, -1, -1):
            h = node_hash(stack[i], h)
        return h
