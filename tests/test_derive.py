"""Seed commitment, beacon, seed and the data-order permutation (documented vector)."""

from __future__ import annotations

import hashlib
import struct

import pytest

from ledger.errors import MalformedError, SignatureError
from ledger.merkle import EMPTY_ROOT
from ledger.note import Checkpoint, Signer, sign_checkpoint
from prover.derive import (
    beacon_from_checkpoint,
    derive_seed,
    init_seed,
    permutation,
    schedule,
    seed_commitment,
    step_seed,
)

SEED = bytes(range(32))
# The documented vector (README "Data order"): seed 00 01 .. 1f, n = 10.
VECTOR = {0: [4, 9, 3, 5, 0, 2, 6, 8, 7, 1], 1: [2, 0, 9, 1, 4, 8, 3, 6, 7, 5]}


def independent_permutation(seed: bytes, n: int, epoch: int) -> list[int]:
    """Written from the module docstring only, to pin the algorithm down."""
    buf = b""
    counter = 0

    def u64() -> int:
        nonlocal buf, counter
        if not buf:
            buf = hashlib.sha256(seed + b"order" + struct.pack(">Q", epoch)
                                 + struct.pack(">Q", counter)).digest()
            counter += 1
        r, buf = int.from_bytes(buf[:8], "big"), buf[8:]
        return r

    a = list(range(n))
    for i in range(n - 1, 0, -1):
        while True:
            r = u64()
            if r < 2**64 - 2**64 % (i + 1):
                break
        j = r % (i + 1)
        a[i], a[j] = a[j], a[i]
    return a


@pytest.mark.parametrize("epoch", [0, 1])
def test_permutation_vector(epoch: int) -> None:
    assert permutation(SEED, 10, epoch) == VECTOR[epoch]
    assert independent_permutation(SEED, 10, epoch) == VECTOR[epoch]


def test_permutation_properties() -> None:
    for n in (1, 2, 3, 100, 1437):
        p = permutation(SEED, n, 3)
        assert sorted(p) == list(range(n))
        assert p == independent_permutation(SEED, n, 3)
    assert permutation(SEED, 100, 0) != permutation(SEED, 100, 1)
    assert permutation(SEED, 100, 0) != permutation(b"\x01" * 32, 100, 0)


def test_seed_depends_on_every_input() -> None:
    root, s, b = b"r" * 32, b"s" * 32, b"b" * 32
    base = derive_seed(root, s, b)
    assert base == hashlib.sha256(b"potd-seed-v1\n" + root + s + b).digest()
    assert len({base, derive_seed(b"R" * 32, s, b), derive_seed(root, b"S" * 32, b),
                derive_seed(root, s, b"B" * 32)}) == 4
    assert seed_commitment(s) == hashlib.sha256(b"potd-seed-v1\n" + s).hexdigest()
    assert 0 <= init_seed(base) < 2**63 and init_seed(base) != step_seed(base, 0)
    assert step_seed(base, 1) != step_seed(base, 2)


def test_beacon_checks_signature_size_and_extensions() -> None:
    log = Signer.generate("potd.example/log")
    cp = sign_checkpoint(Checkpoint(log.name, 5, EMPTY_ROOT), log)
    beacon = beacon_from_checkpoint(str(cp), log.verifier, 5)
    assert beacon == hashlib.sha256(cp.note.signatures[0].signature).digest()
    # an honest (RFC 8032) signer re-signs deterministically; a dishonest one may pick
    # any nonce, which is why the drand mode exists (docs/protocol.md §4.1)
    assert beacon_from_checkpoint(str(sign_checkpoint(cp.checkpoint, log)), log.verifier,
                                  5) == beacon
    with pytest.raises(MalformedError, match="size"):
        beacon_from_checkpoint(str(cp), log.verifier, 6)
    ext = sign_checkpoint(Checkpoint(log.name, 5, EMPTY_ROOT, ("timestamp 1",)), log)
    with pytest.raises(MalformedError, match="extension"):
        beacon_from_checkpoint(str(ext), log.verifier, 5)
    with pytest.raises(SignatureError):
        beacon_from_checkpoint(str(cp), Signer.generate("potd.example/log").verifier, 5)


def test_schedule_covers_every_example_each_epoch() -> None:
    s = schedule(10, 4, 2)
    assert s == [(0, 0, 0), (1, 0, 4), (2, 0, 8), (3, 1, 0), (4, 1, 4), (5, 1, 8)]


def independent_choose(seed: bytes, label: bytes, n: int, r: int) -> list[int]:
    """Written from choose()'s docstring only: a forward Fisher–Yates over a full list."""
    stream = (hashlib.sha256(seed + label + struct.pack(">Q", c)).digest()
              for c in range(1 << 62))
    values = (int.from_bytes(b[k:k + 8], "big") for b in stream for k in range(0, 32, 8))
    a = list(range(n))
    for i in range(min(r, n)):
        m = n - i
        v = next(values)
        while v >= 2**64 - 2**64 % m:
            v = next(values)
        j = i + v % m
        a[i], a[j] = a[j], a[i]
    return sorted(a[:min(r, n)])


def test_choose_is_the_documented_sparse_shuffle() -> None:
    from prover.derive import choose

    # vectors (docs/protocol.md §5): seed 00 01 .. 1f
    assert choose(SEED, b"challenge", 10, 3) == [0, 1, 9]
    assert choose(SEED, b"challenge", 45, 5) == [3, 6, 33, 34, 40]
    assert choose(SEED, b"memorization", 9, 4) == [0, 2, 3, 4]
    for n, r in ((1, 1), (5, 5), (5, 9), (100, 7), (1437, 40), (3, 0), (0, 3)):
        got = choose(SEED, b"challenge", n, r)
        assert got == independent_choose(SEED, b"challenge", n, r)
        assert len(set(got)) == len(got) == min(n, r) and all(0 <= x < n for x in got)
    assert choose(SEED, b"challenge", 100, 5) != choose(SEED, b"memorization", 100, 5)
