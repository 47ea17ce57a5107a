"""kill -9 while appending: every batch whose append returned survives, and the newest
checkpoint is consistent with every checkpoint handed out before the kill."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from ledger.log import Log
from ledger.merkle import check_tree, leaf_hash, root_of
from ledger.note import Signer, open_checkpoint

CHILD = r"""
import sys
from ledger.log import Log
from ledger.note import Signer
path, key = sys.argv[1], sys.argv[2]
log = Log.open(path, Signer.parse(open(key).read()))
b = log.size
while True:
    r = log.append([b"batch %d entry %d" % (b, i) for i in range(1 + b % 37)])
    # acknowledged: the append returned, so the batch must survive any crash from now on
    cp = r.checkpoint.to_bytes().hex()
    sys.stdout.write("%d %d %s\n" % (r.first_index, r.checkpoint.size, cp))
    sys.stdout.flush()
    b = r.checkpoint.size
"""


def expected_entries(size: int) -> list[bytes]:
    """Replays the child's deterministic batch contents up to ``size``."""
    out: list[bytes] = []
    b = 0
    while b < size:
        out += [b"batch %d entry %d" % (b, i) for i in range(1 + b % 37)]
        b = len(out)
    return out


def test_sigkill_during_appends(tmp_path: Path) -> None:
    signer = Signer.generate("potd.example/crash")
    key = tmp_path / "log.key"
    key.write_text(signer.private_string())
    path = str(tmp_path / "log.db")
    Log.create(path, signer).store.close()
    rnd = random.Random(7)
    acked: list[tuple[int, int, bytes]] = []
    for _ in range(6):
        p = subprocess.Popen([sys.executable, "-c", CHILD, path, str(key)],
                             stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None
        deadline = time.monotonic() + rnd.uniform(0.3, 0.9)
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            first, size, cp = line.split()
            acked.append((int(first), int(size), bytes.fromhex(cp)))
        p.send_signal(signal.SIGKILL)
        # lines written before the kill but not yet read are acknowledgements too
        for line in p.stdout:
            first, size, cp = line.split()
            acked.append((int(first), int(size), bytes.fromhex(cp)))
        p.wait()
        assert p.returncode == -signal.SIGKILL

        log = Log.open(path, signer)  # opens, verifies its own latest checkpoint
        latest = log.checkpoint()
        assert acked, "the child acknowledged nothing before being killed"
        assert latest.size >= acked[-1][1], "an acknowledged batch was lost"
        want = expected_entries(latest.size)
        assert log.entries(0, latest.size) == want
        assert latest.root == root_of([leaf_hash(e) for e in want])
        for _, size, cp_bytes in acked:
            old = open_checkpoint(cp_bytes, signer.verifier)
            check_tree(log.consistency_proof(size), latest.size, latest.root, old.size, old.root)
        log.store.close()
    assert len({a[0] for a in acked}) == len(acked), "an index was handed out twice"
    assert acked[-1][1] > 100
