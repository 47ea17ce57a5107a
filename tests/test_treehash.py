"""The optional C helper of the flush (ledger/_treehash.c) gives the same bytes as the
pure-Python paths: compact-range extension (every split of every tree size up to 70)
and the joined, quoted inclusion proofs of a batch (checked against RFC 9162 proofs)."""

from __future__ import annotations

import os
from binascii import b2a_base64

import pytest

from ledger import merkle
from ledger.log import prove_range_joined
from ledger.merkle import CompactRange, leaf_hash, prove_record

native = merkle.native


@pytest.fixture(autouse=True)
def built() -> None:
    if native is None:
        if os.environ.get("POTD_REQUIRE_NATIVE"):
            pytest.fail("ledger._treehash is not built (needs Debian libssl-dev and a C "
                        "compiler; POTD_REQUIRE_NATIVE is set)")
        pytest.skip("ledger._treehash is not built (optional: needs OpenSSL's headers)")


def quote(h: bytes) -> bytes:
    return b'"' + b2a_base64(h, newline=False) + b'"'


class Store:
    """A HashReader over every stored hash of a tree, by (level, n)."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.nodes: dict[tuple[int, int], bytes] = {}
        rng = CompactRange()
        for level, hs in enumerate(python_extend(rng, leaves)):
            for n, h in enumerate(hs):
                self.nodes[(level, n)] = h

    def node(self, level: int, n: int) -> bytes:
        return self.nodes[(level, n)]

    def read_hashes(self, indexes: list[int]) -> list[bytes]:
        return [self.node(*merkle.split_stored_hash_index(i)) for i in indexes]


def python_extend(rng: CompactRange, leaves: list[bytes]) -> list[list[bytes]]:
    saved, merkle.native = merkle.native, None
    try:
        return rng.extend(leaves)
    finally:
        merkle.native = saved


def test_extend_equals_the_python_path_for_every_split() -> None:
    leaves = [leaf_hash(b"%d" % i) for i in range(70)]
    for size in range(70):
        for count in (0, 1, 2, 3, 7, 70 - size):
            a, b = CompactRange(), CompactRange()
            python_extend(a, leaves[:size])
            b.extend(leaves[:size])
            assert a.edge == b.edge and a.size == b.size == size
            want = python_extend(a, leaves[size:size + count])
            got = b.extend(leaves[size:size + count])
            assert got == want and b.edge == a.edge and b.size == a.size
            assert b.root() == a.root()


def test_range_proofs_equal_the_python_path_and_rfc9162() -> None:
    leaves = [leaf_hash(b"%d" % i) for i in range(70)]
    for size in range(1, 70):
        store = Store(leaves[:size])
        for first in sorted({0, 1, size // 2, size - 1} & set(range(size))):
            rng = CompactRange()
            python_extend(rng, leaves[:first])
            levels = python_extend(rng, leaves[first:size])

            def node(level: int, n: int, store: Store = store) -> bytes:
                return store.node(level, n)
            got = native.range_proofs(size, first, levels, node)
            assert got == prove_range_joined(size, first, node, quote)
            for i in range(first, size):
                assert got[i - first] == b",".join(
                    quote(h) for h in prove_record(size, i, store))


def test_bad_inputs_raise_instead_of_reading_out_of_bounds() -> None:
    h = leaf_hash(b"x")
    with pytest.raises(ValueError):
        native.extend([h], 3, [h])  # an edge of 1 hash for size 3 (needs 2)
    with pytest.raises(ValueError):
        native.extend([], 0, [b"short"])
    with pytest.raises(ValueError):
        native.range_proofs(3, 3, [[h]], lambda lv, n: h)  # first must be < size
    with pytest.raises(ValueError):
        native.range_proofs(4, 0, [[h]], lambda lv, n: b"short")
    with pytest.raises(KeyError):
        native.range_proofs(4, 2, [[h, h]], lambda lv, n: {}[lv])


def test_replies_equal_the_python_path() -> None:
    from ledger.sequencer import _python_replies
    leaves = tuple(leaf_hash(b"%d" % i) for i in range(9))
    proofs = [b"", *(quote(h) + b"," + quote(leaves[0]) for h in leaves[1:])]
    head = b'{"checkpoint":"x\\n","inclusion_proof":['
    for start, end in [(0, 0), (0, 1), (0, 9), (3, 7), (8, 9)]:
        for base in (0, 5, 2**40):
            assert native.replies(head, proofs, leaves, base, start, end) == _python_replies(
                head, proofs, leaves, base, start, end)
    with pytest.raises(ValueError):
        native.replies(head, proofs, leaves, 0, 0, 10)
    with pytest.raises(ValueError):
        native.replies(head, proofs, (b"short",), 0, 0, 1)


def test_bundle_equals_encode_bundle() -> None:
    from ledger.tiles import encode_bundle
    for entries in ([], [b""], [b"a", b"bc" * 300, b"x" * 65535]):
        assert native.bundle(entries) == encode_bundle(entries)
    with pytest.raises(ValueError):
        native.bundle([b"x" * 65536])
    with pytest.raises(ValueError):
        native.bundle(["str"])
