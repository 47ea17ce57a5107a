"""ledger.merkle: exhaustive small trees, a real SQLite log, and hypothesis properties.

Every inclusion and consistency proof for every tree size 1..64 is produced twice (from
an in-memory stored-hash array and from a real :class:`ledger.log.Log` on a SQLite file),
compared with a naive recursive RFC 6962 §2.1 implementation written here, and verified
with ``check_record`` / ``check_tree``. The properties then check that any damage to a
proof, leaf, root, index or size is rejected with the typed error, never accepted and
never a raw ``ValueError``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.errors import (
    ConsistencyError,
    InclusionError,
    MalformedError,
    PotdError,
    UsageError,
)
from ledger.log import Log
from ledger.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    CompactRange,
    check_hash,
    check_record,
    check_tree,
    leaf_hash,
    node_hash,
    prove_record,
    prove_tree,
    root_from_inclusion_proof,
    root_of,
    split_stored_hash_index,
    stored_hash_count,
    stored_hash_index,
    tree_hash,
    tree_hash_indexes,
)
from ledger.note import Signer, open_checkpoint

MAX = 64
PROPS = settings(max_examples=60, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


# --- a naive RFC 6962 §2.1 reference, straight from the text ----------------------------

def _k(n: int) -> int:
    """Largest power of two strictly less than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(leaves: Sequence[bytes]) -> bytes:
    """RFC 6962 §2.1 MTH over leaf *hashes*."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaves[0]
    k = _k(n)
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


def rfc_path(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    """RFC 6962 §2.1.1 PATH(m, D[n])."""
    n = len(leaves)
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return rfc_path(m, leaves[:k]) + [mth(leaves[k:])]
    return rfc_path(m - k, leaves[k:]) + [mth(leaves[:k])]


def rfc_subproof(m: int, leaves: Sequence[bytes], b: bool) -> list[bytes]:
    """RFC 6962 §2.1.2 SUBPROOF(m, D[n], b)."""
    n = len(leaves)
    if m == n:
        return [] if b else [mth(leaves)]
    k = _k(n)
    if m <= k:
        return rfc_subproof(m, leaves[:k], b) + [mth(leaves[k:])]
    return rfc_subproof(m - k, leaves[k:], False) + [mth(leaves[:k])]


def rfc_proof(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    """RFC 6962 §2.1.2 PROOF(m, D[n]) for 0 < m <= n."""
    return rfc_subproof(m, leaves, True)


# --- an in-memory stored-hash array (Go tlog layout) -------------------------------------

class MemoryTree:
    """Stored hashes written exactly where CompactRange.append says they belong."""

    def __init__(self, entries: Sequence[bytes]) -> None:
        self.entries = list(entries)
        self.leaves: list[bytes] = []
        self.stored: list[bytes] = []
        rng = CompactRange()
        for i, e in enumerate(entries):
            out = rng.append(leaf_hash(e))
            base = stored_hash_index(0, i)
            assert base == len(self.stored), "stored hashes must be written contiguously"
            for level, h in enumerate(out):
                assert stored_hash_index(level, i >> level) == base + level
                self.stored.append(h)
            self.leaves.append(out[0])
        self.roots = [mth(self.leaves[:t]) for t in range(len(self.leaves) + 1)]

    def reader(self, t: int) -> SizedReader:
        return SizedReader(self.stored, t)


class SizedReader:
    """A HashReader that only holds the hashes of a tree of size ``t``.

    A proof or tree hash for size ``t`` must never need a hash written later; reading one
    fails the test. Every batch is recorded.
    """

    def __init__(self, stored: list[bytes], t: int) -> None:
        self.stored = stored
        self.limit = stored_hash_count(t)
        self.calls: list[list[int]] = []

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        self.calls.append(list(indexes))
        for i in indexes:
            assert 0 <= i < self.limit, f"read stored hash {i}, beyond the tree ({self.limit})"
        return [self.stored[i] for i in indexes]


ENTRIES = [b"entry %d" % i for i in range(MAX)]
TREE = MemoryTree(ENTRIES)


def _flip(b: bytes, bit: int) -> bytes:
    out = bytearray(b)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# --- hashing --------------------------------------------------------------------------

def test_hash_functions_are_rfc6962() -> None:
    assert EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()
    # domain separation: a leaf never hashes like a node over the same bytes
    assert leaf_hash(a + b) != node_hash(a, b)


def test_check_hash() -> None:
    h = bytes(range(32))
    assert check_hash(h) == h
    assert check_hash(bytearray(h)) == h  # type: ignore[arg-type]
    for bad in (b"", b"x" * 31, b"x" * 33, "a" * 32, None, 32):
        with pytest.raises(MalformedError):
            check_hash(bad)  # type: ignore[arg-type]


# --- stored-hash layout ---------------------------------------------------------------

def test_stored_hash_index_known_values() -> None:
    # Go tlog: leaves 0,1 -> 0,1; their parent -> 2; leaves 2,3 -> 3,4; parents 5, 6; leaf 4 -> 7
    want = {(0, 0): 0, (0, 1): 1, (1, 0): 2, (0, 2): 3, (0, 3): 4, (1, 1): 5, (2, 0): 6,
            (0, 4): 7, (0, 5): 8, (1, 2): 9, (0, 6): 10, (0, 7): 11, (1, 3): 12, (2, 1): 13,
            (3, 0): 14}
    for (level, n), idx in want.items():
        assert stored_hash_index(level, n) == idx
        assert split_stored_hash_index(idx) == (level, n)


def test_split_stored_hash_index_inverts_every_index() -> None:
    seen = set()
    for idx in range(stored_hash_count(2048)):
        level, n = split_stored_hash_index(idx)
        assert stored_hash_index(level, n) == idx
        seen.add((level, n))
    assert len(seen) == stored_hash_count(2048)


def test_stored_hash_index_grid_round_trip() -> None:
    for level in range(12):
        for n in range(300):
            assert split_stored_hash_index(stored_hash_index(level, n)) == (level, n)


@given(level=st.integers(0, 62), n=st.integers(0, 2**40))
@PROPS
def test_stored_hash_index_round_trip_large(level: int, n: int) -> None:
    assert split_stored_hash_index(stored_hash_index(level, n)) == (level, n)


def test_split_stored_hash_index_negative() -> None:
    with pytest.raises(UsageError):
        split_stored_hash_index(-1)


@pytest.mark.parametrize("n", [*range(0, 70), 255, 256, 257, 1 << 20, (1 << 40) + 12345])
def test_stored_hash_count(n: int) -> None:
    assert stored_hash_count(n) == 2 * n - bin(n).count("1")
    assert stored_hash_count(n) == stored_hash_index(0, n)
    if n <= MAX:
        assert len(MemoryTree(ENTRIES[:n]).stored) == stored_hash_count(n)


def test_every_stored_hash_is_its_subtree_hash() -> None:
    for idx, h in enumerate(TREE.stored):
        level, n = split_stored_hash_index(idx)
        assert h == mth(TREE.leaves[n << level:(n + 1) << level]), (idx, level, n)


# --- tree hashes ----------------------------------------------------------------------

@pytest.mark.parametrize("t", range(0, MAX + 1))
def test_tree_hash_every_size(t: int) -> None:
    reader = TREE.reader(t)
    root = tree_hash(t, reader)
    assert root == TREE.roots[t] == root_of(TREE.leaves[:t])
    assert reader.calls == ([tree_hash_indexes(t)] if t else [])
    assert tree_hash_indexes(t) == CompactRange.edge_indexes(t)
    rng = CompactRange()
    for h in TREE.leaves[:t]:
        rng.append(h)
    assert rng.size == t and rng.root() == root
    assert rng.edge == [TREE.stored[i] for i in CompactRange.edge_indexes(t)]
    # a compact range restored from its edge continues identically
    again = CompactRange(t, rng.edge)
    assert again.root() == root


def test_tree_hash_negative_size() -> None:
    with pytest.raises(UsageError):
        tree_hash(-1, TREE.reader(0))


def test_compact_range_rejects_wrong_edge() -> None:
    h = leaf_hash(b"x")
    with pytest.raises(MalformedError):
        CompactRange(3, [h])
    with pytest.raises(MalformedError):
        CompactRange(1, [b"short"])


def test_reader_returning_garbage_is_malformed() -> None:
    class Short:
        def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
            return [b"\x00" * 31 for _ in indexes]

    class Few:
        def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
            return [b"\x00" * 32 for _ in indexes][:-1]

    for reader in (Short(), Few()):
        with pytest.raises(MalformedError):
            tree_hash(5, reader)
        with pytest.raises(MalformedError):
            prove_record(5, 1, reader)
        with pytest.raises(MalformedError):
            prove_tree(5, 3, reader)


# --- every proof for every size, in memory --------------------------------------------

@pytest.mark.parametrize("t", range(1, MAX + 1))
def test_every_inclusion_proof_in_memory(t: int) -> None:
    root = TREE.roots[t]
    for i in range(t):
        reader = TREE.reader(t)
        proof = prove_record(t, i, reader)
        assert len(reader.calls) <= 1, "a proof reads its hashes in one batch"
        assert proof == rfc_path(i, TREE.leaves[:t])
        check_record(proof, t, root, i, TREE.leaves[i])
        assert root_from_inclusion_proof(i, t, TREE.leaves[i], proof) == root


@pytest.mark.parametrize("t", range(1, MAX + 1))
def test_every_consistency_proof_in_memory(t: int) -> None:
    root = TREE.roots[t]
    for n in range(1, t + 1):
        reader = TREE.reader(t)
        proof = prove_tree(t, n, reader)
        assert len(reader.calls) <= 1, "a proof reads its hashes in one batch"
        assert proof == rfc_proof(n, TREE.leaves[:t])
        check_tree(proof, t, root, n, TREE.roots[n])
    # every tree extends the empty tree, with an empty proof
    check_tree([], t, root, 0, EMPTY_ROOT)


def test_prove_rejects_impossible_requests() -> None:
    r = TREE.reader(8)
    for t, n in [(8, 8), (8, 9), (8, -1), (0, 0)]:
        with pytest.raises(UsageError):
            prove_record(t, n, r)
    for t, n in [(8, 0), (8, 9), (8, -1), (0, 0)]:
        with pytest.raises(UsageError):
            prove_tree(t, n, r)


# --- the same, through a real Log on a SQLite file ------------------------------------

@pytest.fixture(scope="module")
def sqlite_log_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("merkle") / "log.db")


@pytest.fixture(scope="module")
def sqlite_log(sqlite_log_path: str) -> Iterator[Log]:
    log = Log.create(sqlite_log_path, Signer.generate("example.com/merkle-test"))
    prev = log.checkpoint()
    for i, e in enumerate(ENTRIES):
        got = log.append([e])
        assert got.first_index == i and got.leaf_hashes == (TREE.leaves[i],)
        cp = got.checkpoint
        assert (cp.size, cp.root) == (i + 1, TREE.roots[i + 1])
        check_tree(log.consistency_proof(prev.size, cp.size), cp.size, cp.root,
                   prev.size, prev.root)
        prev = cp
    yield log
    log.store.close()


@pytest.mark.parametrize("t", range(1, MAX + 1))
def test_every_proof_from_sqlite_log(sqlite_log: Log, t: int) -> None:
    log = sqlite_log
    root = log.root_at(t)
    assert root == TREE.roots[t]
    stored = log.store.checkpoint_at(t)
    assert stored is not None
    assert open_checkpoint(stored, log.verifier).root == root
    for i in range(t):
        proof = log.inclusion_proof(i, t)
        assert proof == prove_record(t, i, TREE.reader(t))
        check_record(proof, t, root, i, TREE.leaves[i])
    for n in range(0, t + 1):
        proof = log.consistency_proof(n, t)
        assert proof == (prove_tree(t, n, TREE.reader(t)) if n else [])
        check_tree(proof, t, root, n, TREE.roots[n])


def test_sqlite_log_reopened_read_only(sqlite_log: Log, sqlite_log_path: str) -> None:
    assert sqlite_log.size == MAX
    ro = Log.open(sqlite_log_path)
    try:
        assert ro.size == MAX and ro.checkpoint().root == TREE.roots[MAX]
        for t in (1, 7, 32, 33, MAX):
            assert ro.root_at(t) == TREE.roots[t]
            check_record(ro.inclusion_proof(t - 1, t), t, TREE.roots[t], t - 1, TREE.leaves[t - 1])
            check_tree(ro.consistency_proof(t // 2 + 1, MAX), MAX, TREE.roots[MAX], t // 2 + 1,
                       TREE.roots[t // 2 + 1])
    finally:
        ro.store.close()


# --- check_tree / check_record edge cases ---------------------------------------------

def test_check_tree_edge_cases() -> None:
    r = TREE.roots
    check_tree([], 5, r[5], 5, r[5])
    check_tree([], 0, EMPTY_ROOT, 0, EMPTY_ROOT)
    with pytest.raises(ConsistencyError) as e:
        check_tree([], 5, r[5], 5, r[4])  # same size, two roots: a fork
    assert e.value.evidence["root1"] == r[4] and e.value.evidence["root2"] == r[5]
    assert e.value.evidence["size1"] == 5 and e.value.evidence["size2"] == 5
    with pytest.raises(ConsistencyError):
        check_tree([], 4, r[4], 5, r[5])  # rollback
    with pytest.raises(ConsistencyError):
        check_tree([r[1]], 5, r[5], 5, r[5])  # equal sizes need an empty proof
    with pytest.raises(ConsistencyError):
        check_tree([], 5, r[5], 3, r[3])  # different sizes need a proof
    with pytest.raises(ConsistencyError):
        check_tree([r[1]], 5, r[5], 0, EMPTY_ROOT)  # from empty: proof must be empty
    # a size-0 tree has exactly one root, SHA-256("")
    with pytest.raises(ConsistencyError):
        check_tree([], 5, r[5], 0, r[1])
    with pytest.raises(ConsistencyError):
        check_tree([], 0, r[1], 0, r[1])
    with pytest.raises(ConsistencyError):
        check_tree([], 0, r[1], 0, EMPTY_ROOT)


def test_consistency_error_carries_evidence() -> None:
    proof = prove_tree(9, 4, TREE.reader(9))
    bad_root = _flip(TREE.roots[9], 0)
    with pytest.raises(ConsistencyError) as e:
        check_tree(proof, 9, bad_root, 4, TREE.roots[4])
    ev = e.value.evidence
    assert ev == {"size1": 4, "root1": TREE.roots[4], "size2": 9, "root2": bad_root,
                  "proof": proof}
    assert e.value.hint


def test_check_record_edge_cases() -> None:
    leaf, root = TREE.leaves[0], TREE.roots[1]
    check_record([], 1, root, 0, leaf)
    for index, size in [(1, 1), (-1, 1), (0, 0), (5, 3)]:
        with pytest.raises(InclusionError):
            check_record([], size, root, index, leaf)
    with pytest.raises(InclusionError):
        check_record([], 1, EMPTY_ROOT, 0, leaf)
    with pytest.raises(InclusionError):  # size 1 needs an empty path
        check_record([leaf], 1, root, 0, leaf)


# --- hypothesis: damage is always caught, with the typed error ------------------------

@st.composite
def record_case(draw: st.DrawFn, min_size: int = 1) -> tuple[int, int, list[bytes]]:
    t = draw(st.integers(min_size, MAX))
    i = draw(st.integers(0, t - 1))
    return t, i, prove_record(t, i, TREE.reader(t))


@st.composite
def tree_case(draw: st.DrawFn, strict: bool = False) -> tuple[int, int, list[bytes]]:
    t = draw(st.integers(2 if strict else 1, MAX))
    n = draw(st.integers(1, t - 1 if strict else t))
    return t, n, prove_tree(t, n, TREE.reader(t))


hash32 = st.binary(min_size=HASH_SIZE, max_size=HASH_SIZE)
bad_len = st.integers(0, 2 * HASH_SIZE).filter(lambda n: n != HASH_SIZE)


@given(case=record_case(min_size=2), data=st.data())
@PROPS
def test_inclusion_proof_bit_flip(case: tuple[int, int, list[bytes]], data: st.DataObject) -> None:
    t, i, proof = case
    k = data.draw(st.integers(0, len(proof) - 1))
    bit = data.draw(st.integers(0, 8 * HASH_SIZE - 1))
    proof[k] = _flip(proof[k], bit)
    with pytest.raises(InclusionError):
        check_record(proof, t, TREE.roots[t], i, TREE.leaves[i])


@given(case=record_case(), bit=st.integers(0, 8 * HASH_SIZE - 1), which=st.sampled_from(
    ["leaf", "root"]))
@PROPS
def test_inclusion_leaf_or_root_bit_flip(case: tuple[int, int, list[bytes]], bit: int,
                                         which: str) -> None:
    t, i, proof = case
    leaf, root = TREE.leaves[i], TREE.roots[t]
    if which == "leaf":
        leaf = _flip(leaf, bit)
    else:
        root = _flip(root, bit)
    with pytest.raises(InclusionError):
        check_record(proof, t, root, i, leaf)


@given(case=record_case(min_size=2), data=st.data())
@PROPS
def test_inclusion_proof_truncated(case: tuple[int, int, list[bytes]], data: st.DataObject) -> None:
    t, i, proof = case
    k = data.draw(st.integers(0, len(proof) - 1))
    cut = data.draw(st.sampled_from(["drop-one", "prefix"]))
    short = proof[:k] + proof[k + 1:] if cut == "drop-one" else proof[:k]
    with pytest.raises(InclusionError):
        check_record(short, t, TREE.roots[t], i, TREE.leaves[i])


@given(case=record_case(), data=st.data())
@PROPS
def test_inclusion_proof_extended(case: tuple[int, int, list[bytes]], data: st.DataObject) -> None:
    t, i, proof = case
    k = data.draw(st.integers(0, len(proof)))
    extra = data.draw(st.sampled_from([*TREE.stored[:8], EMPTY_ROOT]) | hash32)
    with pytest.raises(InclusionError):
        check_record(proof[:k] + [extra] + proof[k:], t, TREE.roots[t], i, TREE.leaves[i])


@given(case=record_case(), t2=st.integers(1, MAX), data=st.data())
@PROPS
def test_inclusion_wrong_index_or_size(case: tuple[int, int, list[bytes]], t2: int,
                                       data: st.DataObject) -> None:
    """A proof for (i, t) proves nothing about any other (i2, t2), even with t2's real root."""
    t, i, proof = case
    i2 = data.draw(st.integers(-2, t2 + 2))
    if (i2, t2) == (i, t):
        i2 = i + 1
    with pytest.raises(InclusionError):
        check_record(proof, t2, TREE.roots[t2], i2, TREE.leaves[i])


def test_inclusion_wrong_index_or_size_exhaustive_small() -> None:
    for t in range(1, 11):
        for i in range(t):
            proof = prove_record(t, i, TREE.reader(t))
            for t2 in range(1, 11):
                for i2 in range(t2):
                    if (i2, t2) != (i, t):
                        with pytest.raises(InclusionError):
                            check_record(proof, t2, TREE.roots[t2], i2, TREE.leaves[i])


@given(case=record_case(), data=st.data())
@PROPS
def test_inclusion_malformed_hashes(case: tuple[int, int, list[bytes]],
                                    data: st.DataObject) -> None:
    t, i, proof = case
    leaf, root = TREE.leaves[i], TREE.roots[t]
    bad = b"\xab" * data.draw(bad_len)
    where = data.draw(st.sampled_from(["leaf", "root", "proof"] if proof else ["leaf", "root"]))
    if where == "leaf":
        leaf = bad
    elif where == "root":
        root = bad
    else:
        proof[data.draw(st.integers(0, len(proof) - 1))] = bad
    with pytest.raises(MalformedError):
        check_record(proof, t, root, i, leaf)


@given(case=tree_case(strict=True), data=st.data())
@PROPS
def test_consistency_proof_bit_flip(case: tuple[int, int, list[bytes]],
                                    data: st.DataObject) -> None:
    t, n, proof = case
    k = data.draw(st.integers(0, len(proof) - 1))
    proof[k] = _flip(proof[k], data.draw(st.integers(0, 8 * HASH_SIZE - 1)))
    with pytest.raises(ConsistencyError):
        check_tree(proof, t, TREE.roots[t], n, TREE.roots[n])


@given(case=tree_case(), bit=st.integers(0, 8 * HASH_SIZE - 1),
       which=st.sampled_from(["root1", "root2"]))
@PROPS
def test_consistency_root_bit_flip(case: tuple[int, int, list[bytes]], bit: int,
                                   which: str) -> None:
    t, n, proof = case
    r1, r2 = TREE.roots[n], TREE.roots[t]
    if which == "root1":
        r1 = _flip(r1, bit)
    else:
        r2 = _flip(r2, bit)
    with pytest.raises(ConsistencyError):
        check_tree(proof, t, r2, n, r1)


@given(case=tree_case(strict=True), data=st.data())
@PROPS
def test_consistency_proof_truncated(case: tuple[int, int, list[bytes]],
                                     data: st.DataObject) -> None:
    t, n, proof = case
    k = data.draw(st.integers(0, len(proof) - 1))
    cut = data.draw(st.sampled_from(["drop-one", "prefix"]))
    short = proof[:k] + proof[k + 1:] if cut == "drop-one" else proof[:k]
    with pytest.raises(ConsistencyError):
        check_tree(short, t, TREE.roots[t], n, TREE.roots[n])


@given(case=tree_case(), data=st.data())
@PROPS
def test_consistency_proof_extended(case: tuple[int, int, list[bytes]],
                                    data: st.DataObject) -> None:
    t, n, proof = case
    k = data.draw(st.integers(0, len(proof)))
    extra = data.draw(st.sampled_from([*TREE.stored[:8], TREE.roots[n], EMPTY_ROOT]) | hash32)
    with pytest.raises(ConsistencyError):
        check_tree(proof[:k] + [extra] + proof[k:], t, TREE.roots[t], n, TREE.roots[n])


@given(case=tree_case(strict=True), t2=st.integers(0, MAX), data=st.data())
@PROPS
def test_consistency_wrong_sizes(case: tuple[int, int, list[bytes]], t2: int,
                                 data: st.DataObject) -> None:
    """A proof for n -> t proves nothing about any other n2 -> t2, even with real roots."""
    t, n, proof = case
    n2 = data.draw(st.integers(0, t2))
    if (n2, t2) == (n, t):
        n2 -= 1
    with pytest.raises(ConsistencyError):
        check_tree(proof, t2, TREE.roots[t2], n2, TREE.roots[n2])


def test_consistency_wrong_sizes_exhaustive_small() -> None:
    for t in range(2, 11):
        for n in range(1, t):
            proof = prove_tree(t, n, TREE.reader(t))
            for t2 in range(0, 11):
                for n2 in range(0, t2 + 1):
                    if (n2, t2) != (n, t):
                        with pytest.raises(ConsistencyError):
                            check_tree(proof, t2, TREE.roots[t2], n2, TREE.roots[n2])


@given(case=tree_case(), data=st.data())
@PROPS
def test_consistency_malformed_hashes(case: tuple[int, int, list[bytes]],
                                      data: st.DataObject) -> None:
    t, n, proof = case
    r1, r2 = TREE.roots[n], TREE.roots[t]
    bad = b"\xcd" * data.draw(bad_len)
    where = data.draw(st.sampled_from(["root1", "root2", "proof"] if proof else ["root1", "root2"]))
    if where == "root1":
        r1 = bad
    elif where == "root2":
        r2 = bad
    else:
        proof[data.draw(st.integers(0, len(proof) - 1))] = bad
    with pytest.raises(MalformedError):
        check_tree(proof, t, r2, n, r1)


@pytest.mark.parametrize("bad", ["00" * 32, None, 7, [b"\x00" * 32]])
def test_non_bytes_hashes_are_malformed(bad: object) -> None:
    t, i = 5, 2
    proof = prove_record(t, i, TREE.reader(t))
    for args in ([proof, t, bad, i, TREE.leaves[i]], [proof, t, TREE.roots[t], i, bad],
                 [[*proof[:-1], bad], t, TREE.roots[t], i, TREE.leaves[i]]):
        with pytest.raises(MalformedError):
            check_record(*args)  # type: ignore[arg-type]
    cproof = prove_tree(t, 3, TREE.reader(t))
    for args in ([cproof, t, bad, 3, TREE.roots[3]], [cproof, t, TREE.roots[t], 3, bad],
                 [[bad, *cproof[1:]], t, TREE.roots[t], 3, TREE.roots[3]]):
        with pytest.raises(MalformedError):
            check_tree(*args)  # type: ignore[arg-type]


def test_errors_share_the_base_class() -> None:
    for cls in (InclusionError, ConsistencyError, MalformedError, UsageError):
        assert issubclass(cls, PotdError)
    assert not issubclass(MalformedError, ValueError)



def test_root_of_equals_the_rfc_definition() -> None:
    leaves = [hashlib.sha256(bytes([i])).digest() for i in range(130)]
    for n in range(131):
        assert root_of(leaves[:n]) == mth(leaves[:n]), n
    with pytest.raises(MalformedError):
        root_of([leaves[0], b"short"])
