"""The auditor's view of a log: fetched through public formats only, verified end to end.

:func:`fetch_entries` downloads every entry bundle up to a verified checkpoint (in
parallel) and recomputes the tree root from the entries: if it equals the signed root,
every entry is proven included at once. :func:`verify_tiles` additionally recomputes
every hash tile from the entries and compares it byte for byte with what the log serves
(``potd auditor verify-log``). The auditor never imports the log's storage or server.

Trusts: the pinned log key (and the checkpoint state kept by :class:`LogClient`).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from ledger.client import LogClient
from ledger.errors import MalformedError, VerificationError
from ledger.merkle import CompactRange
from ledger.note import SignedCheckpoint
from ledger.tiles import ENTRIES_LEVEL, TILE_WIDTH, Tile, decode_bundle, tiles_for_size

Progress = Callable[[int], None]
_sha256 = hashlib.sha256


@dataclass
class LogSnapshot:
    checkpoint: SignedCheckpoint
    entries: list[bytes]
    leaf_hashes: list[bytes]
    levels: list[list[bytes]]  # levels[l]: every complete node hash of tree level l


class TileFetcher:
    """Bulk GETs of tiles over keep-alive connections, one per thread.

    ``http.client`` costs about a third of ``httpx`` per request, which dominates a
    full-log verification (two requests per 256 entries). Falls back to the client's own
    ``tile()`` for anything but plain http(s) URLs.
    """

    def __init__(self, client: LogClient) -> None:
        self.client = client
        u = urllib.parse.urlsplit(client.url)
        self.scheme, self.host, self.port = u.scheme, u.hostname or "", u.port
        self.prefix = u.path.rstrip("/")
        self._local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        c = getattr(self._local, "conn", None)
        if c is None:
            cls = (http.client.HTTPSConnection if self.scheme == "https"
                   else http.client.HTTPConnection)
            c = cls(self.host, self.port, timeout=60)
            self._local.conn = c
        return c

    def __call__(self, tile: Tile) -> bytes:
        if self.scheme not in ("http", "https"):
            return self.client.tile(tile)
        for attempt in range(3):
            conn = self._conn()
            try:
                conn.request("GET", f"{self.prefix}/{tile.path()}")
                r = conn.getresponse()
                data = r.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
                continue
            if r.status != 200:
                return self.client.tile(tile)  # the client turns errors into typed ones
            if tile.level != ENTRIES_LEVEL and len(data) != 32 * tile.width:
                raise MalformedError(f"{tile.path()}: {len(data)} bytes, expected "
                                     f"{32 * tile.width}")
            return data
        raise MalformedError("unreachable")


def _bundles(size: int) -> list[Tile]:
    full, rem = divmod(size, TILE_WIDTH)
    out = [Tile(ENTRIES_LEVEL, n) for n in range(full)]
    if rem:
        out.append(Tile(ENTRIES_LEVEL, full, rem))
    return out


def fetch_entries(client: LogClient, cp: SignedCheckpoint, *, workers: int = 4,
                  progress: Progress | None = None) -> LogSnapshot:
    """Every entry of the tree ``cp``, proven by recomputing ``cp``'s root from them."""
    bundles = _bundles(cp.size)
    fetch = TileFetcher(client)

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
        for es, lh, root in pool.map(get, bundles):
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
    tiles = tiles_for_size(size)
    fetch = TileFetcher(client)

    def check(t: Tile) -> None:
        want = b"".join(rows[t.level][t.n * TILE_WIDTH:t.n * TILE_WIDTH + t.width])
        got = fetch(t)
        if got != want:
            raise VerificationError(f"tile {t.path()} served by the log differs from the tile "
                                    "recomputed from its entries", tile=t.path())

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(check, tiles):
            if progress:
                progress(1)
    return len(tiles)
