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
