"""The auditor's view of a log: fetched through public formats only, verified end to end.

:func:`fetch_entries` downloads every entry bundle up to a verified checkpoint (in
parallel) and recomputes the tree root from the entries: if it equals the signed root,
every entry is proven included at once. :func:`verify_tiles` additionally recomputes
every hash tile from the entries and compares it byte for byte with what the log serves
(``potd auditor verify-log``). The auditor never imports the log's storage or server.

Work and memory follow what is verified, never what the log claims: a checkpoint larger
than :data:`MAX_TREE_SIZE` is refused before anything is fetched, fetches go through a
bounded window, and every answer is capped and timed by :mod:`ledger.peer`.

Trusts: the pinned log key (and the checkpoint state kept by :class:`LogClient`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from ledger.client import LogClient
from ledger.errors import LimitError, VerificationError
from ledger.merkle import CompactRange
from ledger.note import SignedCheckpoint
from ledger.tiles import ENTRIES_LEVEL, TILE_WIDTH, Tile, decode_bundle, tiles_for_size

Progress = Callable[[int], None]
_T = TypeVar("_T")
_sha256 = hashlib.sha256


@dataclass
class LogSnapshot:
    checkpoint: SignedCheckpoint
    entries: list[bytes]
    leaf_hashes: list[bytes]
    levels: list[list[bytes]]  # levels[l]: every complete node hash of tree level l


MAX_TREE_SIZE = 1 << 32
"""The largest tree :func:`fetch_entries` downloads. It keeps every entry and leaf hash in
memory (at least ~100 bytes per entry), so 2^32 entries already need ~0.5 TB: a larger
claim cannot be verified on one machine and is refused before any work (the largest
public transparency logs hold about 2^31 entries)."""


def _bundles(size: int) -> Iterator[Tile]:
    full, rem = divmod(size, TILE_WIDTH)
    for n in range(full):
        yield Tile(ENTRIES_LEVEL, n)
    if rem:
        yield Tile(ENTRIES_LEVEL, full, rem)


def _windowed(pool: concurrent.futures.Executor, fn: Callable[[Tile], _T],
              items: Iterable[Tile], window: int) -> Iterator[_T]:
    """``pool.map(fn, items)`` in order, with at most ``window`` calls queued or running:
    work and memory follow what has been verified, not what the log claims."""
    pending: collections.deque[concurrent.futures.Future[_T]] = collections.deque()
    it = iter(items)
    try:
        for item in it:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()


def check_size(cp: SignedCheckpoint, max_size: int) -> None:
    """Refuse a checkpoint larger than this auditor verifies (before any allocation)."""
    if cp.size > max_size:
        raise LimitError(f"the log's checkpoint claims {cp.size} entries, more than the "
                         f"{max_size} this auditor downloads and verifies",
                         hint="a log this large cannot be recomputed in memory here; if you "
                              "expect it, raise the bound (verify-log and runs: "
                              "--max-tree-size)")


def fetch_entries(client: LogClient, cp: SignedCheckpoint, *, workers: int = 4,
                  progress: Progress | None = None,
                  max_size: int = MAX_TREE_SIZE) -> LogSnapshot:
    """Every entry of the tree ``cp``, proven by recomputing ``cp``'s root from them.

    Refuses (LimitError) a tree larger than ``max_size`` up front; fetches bundles
    through a window of ``4 * workers`` requests."""
    check_size(cp, max_size)
    fetch = client.tile

    def get(t: Tile) -> tuple[list[bytes], list[bytes], bytes | None]:
        """A bundle's entries, their leaf hashes and, for a full bundle, its subtree root
        (hashing here overlaps with the other threads' network waits)."""
        es = decode_bundle(fetch(t), expect=t.width)
        lh = [_sha256(b"\x00" + e).digest() for e in es]
        return es, lh, (_perfect_root(lh) if t.full else None)

    entries: list[bytes] = []
    leaves: list[bytes] = []
    roots: list[bytes] = []  # tree level 8: the root of every full bundle
    tail: list[bytes] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for es, lh, root in _windowed(pool, get, _bundles(cp.size), 4 * workers):
            entries.extend(es)
            leaves.extend(lh)
            if root is not None:
                roots.append(root)
            else:
                tail = lh
            if progress:
                progress(len(es))
    # the tree = compact range of the bundle roots (levels 8 and up) + the partial tail
    top = CompactRange()
    upper = top.extend(roots)
    rest = CompactRange()
    rest.extend(tail)
    rng = CompactRange(cp.size, top.edge + rest.edge)
    levels: list[list[bytes]] = [leaves] + [[] for _ in range(7)] + upper
    if rng.root() != cp.root:
        raise VerificationError(
            f"the log's entries do not hash to the signed root of size {cp.size}",
            hint="the log serves entry bundles that differ from what it signed",
            checkpoint=str(cp), computed_root=rng.root().hex())
    return LogSnapshot(cp, entries, leaves, levels)


def _perfect_root(row: list[bytes]) -> bytes:
    """Root of a perfect subtree (len(row) a power of two), level by level."""
    while len(row) > 1:
        row = [_sha256(b"\x01" + a + b).digest() for a, b in zip(row[::2], row[1::2],
                                                                  strict=True)]
    return row[0]


def verify_tiles(client: LogClient, snap: LogSnapshot, *, workers: int = 4,
                 progress: Progress | None = None) -> int:
    """Recompute every hash tile of the tree from the entries and compare with the log's.

    Returns the number of tiles checked; raises VerificationError naming the first tile
    that differs.
    """
    size = snap.checkpoint.size
    # tile level L holds the node hashes of tree level 8L, all computed while rehashing
    rows = snap.levels[::8]
    tiles = tiles_for_size(size)  # a few per 256 entries already fetched and held
    fetch = client.tile

    def check(t: Tile) -> None:
        want = b"".join(rows[t.level][t.n * TILE_WIDTH:t.n * TILE_WIDTH + t.width])
        got = fetch(t)
        if got != want:
            raise VerificationError(f"tile {t.path()} served by the log differs from the tile "
                                    "recomputed from its entries", tile=t.path())

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in _windowed(pool, check, tiles, 4 * workers):
            if progress:
                progress(1)
    return len(tiles)
