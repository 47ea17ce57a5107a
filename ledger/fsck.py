"""``potd ledger fsck``: recompute the stored tree from the stored entries.

Trusts nothing in the database but the entries and the log's verifier key: every leaf
hash and every stored interior hash is recomputed from the entries (read from the full
entry bundles, which must all be stored and parse, and the partial bundle's rows) and
compared, and every stored
checkpoint must carry the log's signature over the root recomputed at its size. The
first problem found (scanning the log in index order) is reported with the first entry
index it affects, so an operator knows from where to restore.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import PotdError, SignatureError
from .merkle import CompactRange
from .note import Checkpoint, Verifier, open_note
from .storage import BUNDLE


@dataclass
class FsckResult:
    size: int
    checked_entries: int = 0
    checked_checkpoints: int = 0
    checked_bundles: int = 0
    first_bad_index: int | None = None
    problem: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.problem is None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok, "size": self.size,
                               "entries": self.checked_entries,
                               "checkpoints": self.checked_checkpoints,
                               "bundles": self.checked_bundles}
        if not self.ok:
            out.update(first_bad_index=self.first_bad_index, problem=self.problem)
        return out


def fsck(store: Any, progress: Callable[[int], None] | None = None) -> FsckResult:
    """Check ``store`` (any backend) against its own entries; never raises for bad data."""
    # the log's key, and the keys it retired (ledger rotate-key): older checkpoints carry those
    retired = store.retired_vkeys()
    verifier = [Verifier.parse(v) for v in (store.vkey(), *reversed(retired))]
    size = store.size()
    res = FsckResult(size)
    cps = []
    since = 0
    while True:  # every stored checkpoint, by size
        page = store.checkpoints(since, 1000)
        cps.extend(page)
        if len(page) < 1000:
            break
        since = page[-1][0] + 1
    cp_sizes = sorted({c[0] for c in cps if c[0] <= size})
    notes = {c[0]: c[1] for c in cps}
    if any(c[0] > size for c in cps):
        res.problem = f"a checkpoint of size {max(c[0] for c in cps)} is beyond the size {size}"
        res.first_bad_index = size
        return res
    rng = CompactRange()
    if cp_sizes and cp_sizes[0] == 0:
        _check_cp(res, notes[0], 0, rng.root(), verifier)
        res.checked_checkpoints += 1
        if not res.ok:
            return res
    for start in range(0, size, BUNDLE):
        end = min(size, start + BUNDLE)
        try:
            entries = store.read_entries(start, end)
        except PotdError as e:
            return _bad(res, start, f"entries {start}..{end}: {e.message}")
        leaves = [hashlib.sha256(b"\x00" + e).digest() for e in entries]
        # stop at each checkpoint size inside this chunk to check its root
        pos = start
        inside = cp_sizes[bisect.bisect_right(cp_sizes, start):bisect.bisect_right(cp_sizes, end)]
        for cut in [*inside, end]:
            if cut <= pos:
                continue
            old = rng.size
            levels = rng.extend(leaves[pos - start:cut - start])
            where = [(lv, (old >> lv) + i) for lv, hs in enumerate(levels)
                     for i in range(len(hs))]
            want = [h for hs in levels for h in hs]
            try:
                got = store.read_nodes(where) if hasattr(store, "read_nodes") else None
            except PotdError as e:
                return _bad(res, pos, f"stored hashes of entries {pos}..{cut}: {e.message}")
            if got is not None:
                bad = [(lv, n) for (lv, n), w, g in zip(where, want, got, strict=True)
                       if w != g]
                if bad:
                    wrong = set(bad)  # report the lowest wrong hash: where it started
                    lv, n = min(((lv, n) for lv, n in bad if lv == 0 or not (
                        (lv - 1, 2 * n) in wrong or (lv - 1, 2 * n + 1) in wrong)),
                        key=lambda x: x[1] << x[0])
                    where_ = (f" (entries {start}..{end - 1} are stored in entry bundle "
                              f"{start // BUNDLE})" if end - start == BUNDLE else "")
                    return _bad(res, n << lv, f"stored hash (level {lv}, #{n}) does not match "
                                f"the entries{where_}: an entry or the hash was altered")
            pos = cut
            if cut in notes:
                _check_cp(res, notes[cut], cut, rng.root(), verifier)
                res.checked_checkpoints += 1
                if not res.ok:
                    return res
        if end - start == BUNDLE:  # its entries were read from (and parsed in) its bundle
            res.checked_bundles += 1
        res.checked_entries = end
        if progress is not None:
            progress(end)
    return res


def _bad(res: FsckResult, index: int, problem: str) -> FsckResult:
    res.first_bad_index, res.problem = index, problem
    return res


def _check_cp(res: FsckResult, note: str, size: int, root: bytes,
              verifiers: list[Verifier]) -> None:
    try:  # signed by one of the keys, and no key's signature bad (open_note)
        cp = Checkpoint.from_text(open_note(note, verifiers)[0].text)
        if cp.origin != verifiers[0].name:
            raise SignatureError(f"checkpoint origin {cp.origin!r} is not the log's "
                                 f"{verifiers[0].name!r}")
    except PotdError as e:
        _bad(res, max(0, size - 1), f"checkpoint of size {size}: {e.message}")
        return
    if cp.size != size or cp.root != root:
        _bad(res, max(0, size - 1), f"checkpoint of size {size} signs another root than the "
             "one recomputed from the entries")
