"""The write path's shared reply building: proofs of a flush's records joined with their
common upper parts shared equal the proofs one by one."""

from __future__ import annotations

import base64
import random
from pathlib import Path

from ledger.log import Log, prove_records_joined
from ledger.merkle import prove_record
from ledger.note import Signer


def quote(h: bytes) -> bytes:
    return b'"' + base64.b64encode(h) + b'"'


def test_joined_proofs_equal_single_proofs(tmp_path: Path) -> None:
    log = Log.create(str(tmp_path / "log.db"), Signer.generate("potd.test/joined"))
    rnd = random.Random(7)
    for size in range(1, 150):
        log.append([b"%d" % size])
        wants = [list(range(size)), [size - 1], list(range(rnd.randrange(size), size))]
        if size > 3:
            wants.append(rnd.sample(range(size), 3) + [0, 0])
        for want in wants:
            expect = [b",".join(map(quote, prove_record(size, i, log.store))) for i in want]
            assert log.inclusion_proofs_joined(want, size, quote) == expect, (size, want)
            assert prove_records_joined(size, want, log.store, quote) == expect
    assert log.inclusion_proofs_joined([], 5, quote) == []


def test_proofs_of_an_append_from_its_own_hashes(tmp_path: Path) -> None:
    """What a flush answers with: the proofs of an append's records at its new size,
    read from the append's in-memory hashes (older ones from the store)."""
    log = Log.create(str(tmp_path / "log.db"), Signer.generate("potd.test/appended"))
    rnd = random.Random(11)
    sizes = [1, 1, 2, 3, 5, 8, 13, 1, 255, 1, 256, 257, 511, 2, 1000, 7, 1024, 3000]
    sizes += [rnd.randrange(1, 300) for _ in range(30)]
    n = 0
    for k in sizes:
        appended = log.append([b"e%d" % (n + i) for i in range(k)])
        size = n + k
        assert appended.first_index == n and appended.checkpoint.size == size
        got = log.appended_proofs_joined(appended, quote)
        sample = range(n, size) if k < 300 else rnd.sample(range(n, size), 60) + [n, size - 1]
        for i in sample:
            assert got[i - n] == b",".join(map(quote, prove_record(size, i, log.store))), (n, k, i)
        n = size
