"""C2SP tlog-tiles coordinates, paths and entry bundles. Pure: no I/O.

A tile at level ``L`` (height ``H``, 8 for tlog-tiles) holds up to ``2**H`` consecutive
hashes of tree level ``L*H``; tile ``N`` starts at hash ``N * 2**H`` of that level, and a
partial tile of width ``W`` holds the first ``W``. The hashes of the levels inside a tile
are recomputed from its bottom row (Go ``tlog.TileHashReader`` does the same).

Paths: ``tile/<L>/<N>[.p/<W>]`` and ``tile/entries/<N>[.p/<W>]``, with ``N`` written in
3-digit groups, all but the last prefixed by ``x`` (1234067 -> ``x001/x234/067``). Go's
sumdb paths put the height in: ``tile/8/<L>/<N>`` and ``tile/8/data/<N>``;
:func:`parse_go_path` maps those.

Entry bundle: each entry as ``uint16 big-endian length || bytes``.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .errors import MalformedError, UsageError
from .merkle import HASH_SIZE, node_hash, split_stored_hash_index

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
MAX_ENTRY_SIZE = 0xFFFF
ENTRIES_LEVEL = -1


@dataclass(frozen=True)
class Tile:
    """One tile: ``level`` (-1 for an entry bundle), index ``n``, ``width`` 1..2**height."""

    level: int
    n: int
    width: int = TILE_WIDTH
    height: int = TILE_HEIGHT

    def __post_init__(self) -> None:
        if not 1 <= self.height <= 30:
            raise MalformedError(f"tile height {self.height} out of range 1..30")
        if self.level < ENTRIES_LEVEL or self.n < 0:
            raise MalformedError(f"tile level {self.level} / index {self.n} out of range")
        if not 1 <= self.width <= 1 << self.height:
            raise MalformedError(f"tile width {self.width} out of range 1..{1 << self.height}")

    @property
    def full(self) -> bool:
        return self.width == 1 << self.height

    def path(self) -> str:
        """The C2SP tlog-tiles path (no height)."""
        lv = "entries" if self.level == ENTRIES_LEVEL else str(self.level)
        return f"tile/{lv}/{format_index(self.n)}" + ("" if self.full else f".p/{self.width}")

    def go_path(self) -> str:
        """Go sumdb's path, with the height: ``tile/H/L/N`` or ``tile/H/data/N``."""
        lv = "data" if self.level == ENTRIES_LEVEL else str(self.level)
        return (f"tile/{self.height}/{lv}/{format_index(self.n)}"
                + ("" if self.full else f".p/{self.width}"))


def format_index(n: int) -> str:
    """``1234067 -> 'x001/x234/067'``, ``5 -> '005'``."""
    if n < 0:
        raise UsageError(f"tile index {n} is negative")
    groups = []
    while True:
        groups.append(f"{n % 1000:03d}")
        n //= 1000
        if n == 0:
            break
    groups.reverse()
    return "/".join(["x" + g for g in groups[:-1]] + [groups[-1]])


_TILE_RE = re.compile(r"((?:x[0-9]{3}/)*)([0-9]{3})(?:\.p/([0-9]+))?", re.ASCII)
_LEVEL_RE = re.compile(r"0|[1-9][0-9]{0,2}", re.ASCII)


def _parse_index_width(rest: str, height: int, path: str) -> tuple[int, int]:
    m = _TILE_RE.fullmatch(rest)
    if not m:
        raise MalformedError(f"malformed tile path {path!r}",
                             hint="expected N as 3-digit groups, e.g. x001/x234/067[.p/W]")
    if len(m.group(1)) > 5 * 6:  # N < 2**64 has at most 20 digits: 7 groups
        raise MalformedError(f"tile index in {path[:60]!r}... has too many x000 groups",
                             hint="a tile index has at most 7 three-digit groups")
    groups = [g[1:4] for g in m.group(1).split("/") if g] + [m.group(2)]
    n = int("".join(groups))
    width = 1 << height
    if m.group(3) is not None:
        w = m.group(3)
        if w.startswith("0") or len(w) > 10 or not 1 <= int(w) < width:
            raise MalformedError(f"malformed partial tile width in {path!r}",
                                 hint=f"a partial width is 1..{width - 1} without leading zeros")
        width = int(w)
    return n, width


def parse_path(path: str) -> Tile:
    """Parse a tlog-tiles path ``tile/<L>/<N>[.p/<W>]`` or ``tile/entries/...``."""
    parts = path.split("/", 2)
    if len(parts) != 3 or parts[0] != "tile":
        raise MalformedError(f"malformed tile path {path!r}", hint="expected tile/<L>/<N>[.p/<W>]")
    lv = parts[1]
    if lv == "entries":
        level = ENTRIES_LEVEL
    elif _LEVEL_RE.fullmatch(lv) and int(lv) <= 63:
        level = int(lv)
    else:
        raise MalformedError(f"malformed tile level in {path!r}",
                             hint="the level is a decimal number 0..63 or 'entries'")
    n, width = _parse_index_width(parts[2], TILE_HEIGHT, path)
    tile = Tile(level, n, width)
    if tile.path() != path:
        raise MalformedError(f"non-canonical tile path {path!r}; the canonical form is "
                             f"{tile.path()!r}", hint="no leading x000 groups or zero padding")
    return tile


def parse_go_path(path: str) -> Tile:
    """Parse Go sumdb's ``tile/H/L/N[.p/W]`` / ``tile/H/data/N[.p/W]``."""
    parts = path.split("/", 3)
    if len(parts) != 4 or parts[0] != "tile" or not _LEVEL_RE.fullmatch(parts[1]):
        raise MalformedError(f"malformed Go tile path {path!r}", hint="expected tile/H/L/N[.p/W]")
    height = int(parts[1])
    if not 1 <= height <= 30:
        raise MalformedError(f"tile height out of range in {path!r}")
    if parts[2] == "data":
        level = ENTRIES_LEVEL
    elif _LEVEL_RE.fullmatch(parts[2]):
        level = int(parts[2])
    else:
        raise MalformedError(f"malformed tile level in {path!r}")
    n, width = _parse_index_width(parts[3], height, path)
    tile = Tile(level, n, width, height)
    if tile.go_path() != path:
        raise MalformedError(f"non-canonical Go tile path {path!r} (canonical: "
                             f"{tile.go_path()!r})")
    return tile


def tiles_for_size(size: int, height: int = TILE_HEIGHT) -> list[Tile]:
    """Every hash tile (full and the partial right edge) of a tree of ``size`` records."""
    out: list[Tile] = []
    level = 0
    count = size  # hashes at tree level level*height
    while count > 0:
        full, rem = divmod(count, 1 << height)
        out.extend(Tile(level, i, 1 << height, height) for i in range(full))
        if rem:
            out.append(Tile(level, full, rem, height))
        count >>= height
        level += 1
    return out


def tile_for_stored_hash(index: int, height: int = TILE_HEIGHT) -> tuple[Tile, int, int]:
    """The smallest tile holding stored hash ``index`` (Go tileForIndex).

    Returns ``(tile, level_in_tile, n_in_tile)``: the hash is node ``n_in_tile`` at
    ``level_in_tile`` levels above the tile's bottom row.
    """
    level, n = split_stored_hash_index(index)
    tl = level // height
    lin = level - tl * height
    tn = (n << lin) >> height
    nin = n - ((tn << height) >> lin)
    width = (nin + 1) << lin
    return Tile(tl, tn, width, height), lin, nin


def hash_in_tile(data: bytes, level_in_tile: int, n_in_tile: int) -> bytes:
    """Compute node ``n_in_tile`` at ``level_in_tile`` from a tile's bottom row ``data``."""
    lo = (n_in_tile << level_in_tile) * HASH_SIZE
    hi = ((n_in_tile + 1) << level_in_tile) * HASH_SIZE
    if hi > len(data):
        raise MalformedError("tile too short for the requested hash")
    row = [data[i:i + HASH_SIZE] for i in range(lo, hi, HASH_SIZE)]
    while len(row) > 1:
        row = [node_hash(row[i], row[i + 1]) for i in range(0, len(row), 2)]
    return row[0]


class TileHashReader:
    """A :class:`~ledger.merkle.HashReader` over tiles fetched by ``fetch(tile) -> bytes``.

    It does not authenticate tiles by itself: callers check what they compute from it
    (a tree hash against a signed checkpoint, a proof against a verified root).
    With ``size``, tiles are fetched at the width they have in the tree of that size (full
    tiles, or the one partial tile per level that a tlog-tiles log or static mirror
    publishes for that size), as Go's reader does; without it, at the smallest width
    that holds each hash. ``fetch`` may return a longer tile, which is truncated. Tiles
    already fetched are reused for the lifetime of the reader.
    """

    def __init__(self, fetch: Callable[[Tile], bytes], size: int | None = None, *,
                 height: int = TILE_HEIGHT) -> None:
        self._fetch = fetch
        self.size = size
        self.height = height
        self._tiles: dict[tuple[int, int], bytes] = {}

    def _width(self, level: int, n: int, at_least: int) -> int:
        if self.size is None:
            return at_least
        count = self.size >> (self.height * level)  # hashes at this tile level
        w = min(1 << self.height, count - (n << self.height))
        if w < at_least:
            raise MalformedError(f"hash requested beyond the tree of size {self.size}")
        return w

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        wants = [tile_for_stored_hash(i, self.height) for i in indexes]
        need: dict[tuple[int, int], int] = {}
        for t, _, _ in wants:
            key = (t.level, t.n)
            need[key] = max(need.get(key, 0), t.width)
        data = self._tiles
        for (lv, n), w in need.items():
            if len(data.get((lv, n), b"")) >= w * HASH_SIZE:
                continue
            w = self._width(lv, n, w)
            raw = self._fetch(Tile(lv, n, w, self.height))
            if len(raw) < w * HASH_SIZE:
                raise MalformedError(f"tile {Tile(lv, n, w, self.height).path()} has "
                                     f"{len(raw)} bytes, expected {w * HASH_SIZE}")
            data[(lv, n)] = raw[: w * HASH_SIZE]
        return [hash_in_tile(data[(t.level, t.n)], lin, nin) for t, lin, nin in wants]


def encode_bundle(entries: Iterable[bytes]) -> bytes:
    """Entry bundle: each entry as uint16 BE length || bytes."""
    out = bytearray()
    for e in entries:
        if len(e) > MAX_ENTRY_SIZE:
            raise UsageError(f"entry of {len(e)} bytes exceeds the {MAX_ENTRY_SIZE}-byte limit",
                             hint="entries are length-prefixed with 16 bits; split or shrink it")
        out += struct.pack(">H", len(e))
        out += e
    return bytes(out)


def decode_bundle(data: bytes, expect: int | None = None) -> list[bytes]:
    """Parse an entry bundle; with ``expect``, require exactly that many entries."""
    data = bytes(data)
    entries: list[bytes] = []
    append = entries.append
    i, n = 0, len(data)
    while i < n:
        if i + 2 > n:
            raise MalformedError(f"entry bundle truncated in a length prefix at byte {i}")
        j = i + 2 + (data[i] << 8 | data[i + 1])
        if j > n:
            raise MalformedError(f"entry bundle truncated: entry #{len(entries)} claims "
                                 f"{j - i - 2} bytes, {n - i - 2} remain")
        append(data[i + 2:j])
        i = j
    if expect is not None and len(entries) != expect:
        raise MalformedError(f"entry bundle holds {len(entries)} entries, expected {expect}")
    return entries
