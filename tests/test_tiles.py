"""ledger.tiles: paths, entry bundles, and TileHashReader against the store.

Tile reads are checked two ways: over an in-memory fetcher at small tile heights (so a
64-leaf tree spans several tile levels), and over a real :class:`ledger.log.Log` on a
SQLite file at the tlog-tiles height 8, at sizes around tile boundaries (255, 256, 257,
511, 512, 513, 65536 + 3), where partial right-edge tiles appear and disappear.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.errors import MalformedError, PotdError, UsageError
from ledger.log import Log
from ledger.merkle import (
    HASH_SIZE,
    CompactRange,
    check_record,
    check_tree,
    leaf_hash,
    prove_record,
    prove_tree,
    root_of,
    stored_hash_count,
    stored_hash_index,
    tree_hash,
)
from ledger.note import Signer
from ledger.tiles import (
    ENTRIES_LEVEL,
    MAX_ENTRY_SIZE,
    TILE_WIDTH,
    Tile,
    TileHashReader,
    decode_bundle,
    encode_bundle,
    format_index,
    hash_in_tile,
    parse_go_path,
    parse_path,
    tile_for_stored_hash,
    tiles_for_size,
)

PROPS = settings(max_examples=80, deadline=None)


# --- paths ----------------------------------------------------------------------------

@pytest.mark.parametrize("n, want", [
    (0, "000"), (5, "005"), (999, "999"), (1000, "x001/000"), (1234067, "x001/x234/067"),
    (123456078, "x123/x456/078"), (10**9, "x001/x000/x000/000"),
])
def test_format_index(n: int, want: str) -> None:
    assert format_index(n) == want
    assert parse_path(f"tile/0/{want}").n == n


def test_format_index_negative() -> None:
    with pytest.raises(UsageError):
        format_index(-1)


@given(n=st.integers(0, 10**18))
@PROPS
def test_format_index_round_trip(n: int) -> None:
    s = format_index(n)
    assert re.fullmatch(r"(x\d{3}/)*\d{3}", s)
    assert parse_path(f"tile/3/{s}") == Tile(3, n)
    assert parse_path(f"tile/entries/{s}") == Tile(ENTRIES_LEVEL, n)


tiles8 = st.builds(Tile, level=st.integers(ENTRIES_LEVEL, 63), n=st.integers(0, 10**15),
                   width=st.integers(1, TILE_WIDTH))


@st.composite
def any_height_tile(draw: st.DrawFn) -> Tile:
    h = draw(st.integers(1, 30))
    return Tile(draw(st.integers(ENTRIES_LEVEL, 63)), draw(st.integers(0, 10**15)),
                draw(st.integers(1, 1 << h)), h)


@given(tile=tiles8)
@PROPS
def test_tile_path_round_trip(tile: Tile) -> None:
    path = tile.path()
    assert parse_path(path) == tile
    assert path.endswith(f".p/{tile.width}") == (not tile.full)
    assert ("/entries/" in path) == (tile.level == ENTRIES_LEVEL)


@given(tile=any_height_tile())
@PROPS
def test_go_path_round_trip(tile: Tile) -> None:
    path = tile.go_path()
    assert path.startswith(f"tile/{tile.height}/")
    assert parse_go_path(path) == tile


@pytest.mark.parametrize("path", [
    "", "tile", "tile/0", "tile/0/", "tiles/0/000", "/tile/0/000", "tile/0/000/",
    "tile/0/1", "tile/0/01", "tile/0/0000", "tile/0/00a", "tile/0/x001", "tile/0/001/x002",
    "tile/0/x1/000", "tile/0/x0001/000", "tile/0/y001/000", "tile/0/x001//000",
    "tile/0/000.p/0", "tile/0/000.p/256", "tile/0/000.p/300", "tile/0/000.p/007",
    "tile/0/000.p/", "tile/0/000.p", "tile/0/000.p/x", "tile/0/000.p/-1", "tile/0/000.p/1/2",
    "tile/0/000.q/5", "tile/00/000", "tile/01/000", "tile/-1/000", "tile/64/000",
    "tile//000", "tile/a/000", "tile/data/000", "tile/entries/", "tile/entries/1",
    "tile/ 0/000", "tile/0/000 ", "tile/0/+01", "tile/+1/000",
])
def test_malformed_paths(path: str) -> None:
    with pytest.raises(MalformedError):
        parse_path(path)


@pytest.mark.parametrize("path", [
    "tile/8/0", "tile/0/0/000", "tile/31/0/000", "tile/x/0/000", "tile/8/00/000",
    "tile/8/-1/000", "tile/8/entries/000", "tile/8/0/1", "tile/8/0/000.p/256",
    "tile/2/0/000.p/4", "tile/8/0/000.p/08", "tile/8/data/x001",
])
def test_malformed_go_paths(path: str) -> None:
    with pytest.raises(MalformedError):
        parse_go_path(path)


any_path = (st.text(alphabet="tile/entrsdax0123456789.p-+ \n\u00b2\u0661", max_size=30)
            | st.text(max_size=25).map(lambda s: "tile/" + s))


@given(path=any_path)
@settings(max_examples=200, deadline=None)
def test_parse_path_never_raises_raw_errors(path: str) -> None:
    """Arbitrary text either parses to a tile whose canonical path is exactly the input,
    or raises MalformedError: never ValueError, never a crash."""
    try:
        tile = parse_path(path)
    except MalformedError:
        pass
    else:
        assert tile.path() == path
    try:
        go = parse_go_path(path)
    except MalformedError:
        pass
    else:
        assert go.go_path() == path


# Regressions: each of these was once accepted (or raised a raw ValueError).

@pytest.mark.parametrize("path, go", [
    # non-canonical index groups: Go tlog.ParseTilePath rejects any path that is not
    # t.Path() of the tile it parses to
    ("tile/0/x000/001", False), ("tile/entries/x000/x001/000", False),
    ("tile/8/0/x000/001", True), ("tile/8/data/x000/000", True),
    # non-ASCII decimal digits (\\d and str.isdigit() match them): paths are [0-9] only
    ("tile/0/\u0661\u0662\u0663", False), ("tile/\u0661/000", False),
    ("tile/0/000.p/\u0661\u0662", False), ("tile/8/\u0660/000", True),
    ("tile/\u0668/0/000", True),
    # a regex '$' also matches before a trailing newline
    ("tile/0/000\n", False), ("tile/0/000.p/5\n", False), ("tile/8/0/000\n", True),
    # superscript digits pass str.isdigit() but int() rejects them: must not be ValueError
    ("tile/\u00b2/000", False), ("tile/\u00b2/0/000", True), ("tile/8/\u00b2/000", True),
])
def test_non_canonical_paths_rejected(path: str, go: bool) -> None:
    with pytest.raises(MalformedError):
        parse_go_path(path) if go else parse_path(path)


def test_tile_validation() -> None:
    for args in [(0, 0, 0), (0, 0, TILE_WIDTH + 1), (-2, 0), (0, -1), (0, 0, 1, 0),
                 (0, 0, 1, 31)]:
        with pytest.raises(MalformedError):
            Tile(*args)


# --- tile coordinates -----------------------------------------------------------------

@pytest.mark.parametrize("size, want", [
    (0, []),
    (1, [Tile(0, 0, 1)]),
    (255, [Tile(0, 0, 255)]),
    (256, [Tile(0, 0), Tile(1, 0, 1)]),
    (257, [Tile(0, 0), Tile(0, 1, 1), Tile(1, 0, 1)]),
    (512, [Tile(0, 0), Tile(0, 1), Tile(1, 0, 2)]),
    (65536, [*(Tile(0, i) for i in range(256)), Tile(1, 0), Tile(2, 0, 1)]),
])
def test_tiles_for_size(size: int, want: list[Tile]) -> None:
    assert tiles_for_size(size) == want


@pytest.mark.parametrize("height", [1, 2, 3, 8])
def test_tile_for_every_stored_hash(height: int) -> None:
    """Every stored hash of a 600-leaf tree can be recomputed from the smallest tile that
    holds it (Go tileForIndex + tileHash)."""
    mem = MemTiles(600, height)
    for idx in range(stored_hash_count(600)):
        tile, lin, nin = tile_for_stored_hash(idx, height)
        assert tile.height == height and 0 <= lin < height
        assert hash_in_tile(mem.fetch(tile), lin, nin) == mem.stored[idx], idx


def test_hash_in_tile_too_short() -> None:
    with pytest.raises(MalformedError):
        hash_in_tile(b"\x00" * (3 * HASH_SIZE), 2, 0)


# --- TileHashReader over an in-memory fetcher, small heights ---------------------------

class MemTiles:
    """Tiles of a tree of ``size`` leaves (entries ``b'leaf %d'``) at tile height ``height``."""

    def __init__(self, size: int, height: int) -> None:
        self.height = height
        self.leaves = [leaf_hash(b"leaf %d" % i) for i in range(size)]
        self.stored: list[bytes] = []
        rng = CompactRange()
        for h in self.leaves:
            self.stored.extend(rng.append(h))
        self.fetched: list[Tile] = []

    def level_hash(self, level: int, n: int) -> bytes:
        return self.stored[stored_hash_index(level, n)]

    def fetch(self, tile: Tile) -> bytes:
        assert tile.height == self.height and tile.level >= 0
        self.fetched.append(tile)
        base = tile.n << tile.height
        return b"".join(self.level_hash(tile.level * tile.height, base + k)
                        for k in range(tile.width))

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        return [self.stored[i] for i in indexes]


@pytest.mark.parametrize("height", [1, 2, 3])
def test_tile_reader_small_heights_every_proof(height: int) -> None:
    size = 40
    mem = MemTiles(size, height)
    for t in range(1, size + 1):
        reader = TileHashReader(mem.fetch, height=height)
        root = tree_hash(t, reader)
        assert root == root_of(mem.leaves[:t])
        for i in range(t):
            proof = prove_record(t, i, reader)
            assert proof == prove_record(t, i, mem)
            check_record(proof, t, root, i, mem.leaves[i])
        for n in range(1, t + 1):
            proof = prove_tree(t, n, reader)
            assert proof == prove_tree(t, n, mem)
            check_tree(proof, t, root, n, root_of(mem.leaves[:n]))
        # a tree of size t never needs a tile (or a width) that size t does not have yet
        assert mem.fetched
        for tile in mem.fetched:
            assert tile.width <= tiles_width(t, tile), (t, tile)
        mem.fetched.clear()


@pytest.mark.parametrize("height", [1, 2, 3])
def test_tile_reader_with_size_fetches_only_published_tiles(height: int) -> None:
    """With ``size=``, the reader asks only for the tiles a log of that size publishes
    (exact widths, as Go's TileHashReader does), each at most once."""
    size = 40
    mem = MemTiles(size, height)
    for t in range(1, size + 1):
        published = set(tiles_for_size(t, height))
        reader = TileHashReader(mem.fetch, size=t, height=height)
        root = tree_hash(t, reader)
        assert root == root_of(mem.leaves[:t])
        for i in range(t):
            assert prove_record(t, i, reader) == prove_record(t, i, mem)
        for n in range(1, t + 1):
            assert prove_tree(t, n, reader) == prove_tree(t, n, mem)
        assert set(mem.fetched) <= published, t
        assert len(mem.fetched) == len(set(mem.fetched)), "each tile fetched once"
        mem.fetched.clear()


def test_tile_reader_with_size_rejects_hashes_beyond_it() -> None:
    mem = MemTiles(300, 8)
    reader = TileHashReader(mem.fetch, size=5)
    with pytest.raises(MalformedError):
        reader.read_hashes([stored_hash_index(0, 7)])
    with pytest.raises(MalformedError):
        tree_hash(6, reader)
    assert tree_hash(5, reader) == root_of(mem.leaves[:5])


def tiles_width(size: int, tile: Tile) -> int:
    """Width of the tile at (level, n) in a tree of ``size``, 0 if it does not exist."""
    for t in tiles_for_size(size, tile.height):
        if (t.level, t.n) == (tile.level, tile.n):
            return t.width
    return 0


def test_tile_reader_truncates_long_tiles_and_rejects_short_ones() -> None:
    mem = MemTiles(300, 8)
    root = root_of(mem.leaves[:37])

    def full_width(tile: Tile) -> bytes:
        return mem.fetch(Tile(tile.level, tile.n, min(TILE_WIDTH, tiles_width(300, tile)),
                              tile.height))

    assert tree_hash(37, TileHashReader(full_width)) == root

    def short(tile: Tile) -> bytes:
        return mem.fetch(tile)[:-1]

    with pytest.raises(MalformedError):
        tree_hash(37, TileHashReader(short))


# --- TileHashReader over a real Log (height 8) ----------------------------------------

BOUNDARY_SIZES = [1, 2, 255, 256, 257, 511, 512, 513]


def _entries(start: int, end: int) -> list[bytes]:
    return [b"tile entry %d" % i for i in range(start, end)]


def _check_log_via_tiles(log: Log, size: int, sample_from: Sequence[int]) -> None:
    """Tree hash and proofs for ``size`` computed from tiles equal the store's, both with
    smallest-width fetches and with ``size=`` (only the tiles published for ``size``)."""
    published = set(tiles_for_size(size))
    fetched: list[Tile] = []

    def fetch(tile: Tile) -> bytes:
        fetched.append(tile)
        return log.tile(tile)

    _check_log_reader(log, size, sample_from, TileHashReader(log.tile))
    _check_log_reader(log, size, sample_from, TileHashReader(fetch, size=size))
    assert fetched and set(fetched) <= published
    assert len(fetched) == len(set(fetched)), "a reader fetches each tile once"


def _check_log_reader(log: Log, size: int, sample_from: Sequence[int],
                      reader: TileHashReader) -> None:
    root = tree_hash(size, reader)
    assert root == log.root_at(size)
    for i in sorted({i for i in sample_from if 0 <= i < size}):
        proof = prove_record(size, i, reader)
        assert proof == log.inclusion_proof(i, size)
        leaf = leaf_hash(log.entries(i, i + 1)[0])
        check_record(proof, size, root, i, leaf)
    for n in sorted({n for n in sample_from if 0 < n <= size}):
        proof = prove_tree(size, n, reader)
        assert proof == log.consistency_proof(n, size)
        check_tree(proof, size, root, n, log.root_at(n))


def _interesting(size: int) -> list[int]:
    pts = {0, 1, 2, size // 2, size - 2, size - 1, size}
    for b in (255, 256, 257, 511, 512, 513, 65535, 65536, 65537):
        pts.update({b - 1, b, b + 1})
    return [p for p in pts if 0 <= p <= size]


@pytest.fixture(scope="module")
def tile_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Log]:
    path = tmp_path_factory.mktemp("tiles") / "log.db"
    log = Log.create(str(path), Signer.generate("example.com/tiles-test"))
    yield log
    log.store.close()


def test_tile_reader_over_log_at_boundaries(tile_log: Log) -> None:
    """Grow the log through each boundary; at each current size the right-edge partial
    tiles served by Log.tile give the signed root and the store's proofs."""
    log = tile_log
    assert log.size == 0
    for size in BOUNDARY_SIZES:
        log.append(_entries(log.size, size))
        assert log.size == size
        _check_log_via_tiles(log, size, _interesting(size))
        # the tiles the spec says exist for this size are all servable, no more
        for tile in tiles_for_size(size):
            assert len(log.tile(tile)) == tile.width * HASH_SIZE
        for tile in tiles_for_size(size):
            if not tile.full:
                with pytest.raises(UsageError):
                    log.tile(Tile(tile.level, tile.n, tile.width + 1))
        # entry bundles hold exactly the entries
        for tile in tiles_for_size(size):
            if tile.level == 0:
                bundle = log.tile(Tile(ENTRIES_LEVEL, tile.n, tile.width))
                start = tile.n * TILE_WIDTH
                assert decode_bundle(bundle, expect=tile.width) == _entries(
                    start, start + tile.width)
    # past sizes, read from the final tiles
    for size in range(1, log.size + 1, 37):
        assert tree_hash(size, TileHashReader(log.tile)) == log.root_at(size)
        assert tree_hash(size, TileHashReader(log.tile, size=size)) == log.root_at(size)


def test_tile_reader_over_log_past_65536(tile_log: Log) -> None:
    """A level-2 tile appears at 65536 leaves."""
    log = tile_log
    if log.size < max(BOUNDARY_SIZES):
        log.append(_entries(log.size, max(BOUNDARY_SIZES)))
    target = 65536 + 3
    log.append(_entries(log.size, target))
    assert Tile(2, 0, 1) in tiles_for_size(target)
    assert len(log.tile(Tile(2, 0, 1))) == HASH_SIZE
    _check_log_via_tiles(log, target, [0, 1, 255, 256, 40000, 65535, 65536, 65537, 65538])
    _check_log_via_tiles(log, 65536, [0, 65535, 65536])


# --- entry bundles --------------------------------------------------------------------

entries_st = st.lists(st.binary(max_size=300), max_size=20)


@given(entries=entries_st)
@PROPS
def test_bundle_round_trip(entries: list[bytes]) -> None:
    data = encode_bundle(entries)
    assert len(data) == sum(2 + len(e) for e in entries)
    assert decode_bundle(data) == entries
    assert decode_bundle(data, expect=len(entries)) == entries


@given(entries=entries_st.filter(bool), data=st.data())
@PROPS
def test_bundle_truncated(entries: list[bytes], data: st.DataObject) -> None:
    blob = encode_bundle(entries)
    cut = data.draw(st.integers(0, len(blob) - 1))
    boundaries = set()
    pos = 0
    for e in entries:
        boundaries.add(pos)
        pos += 2 + len(e)
    with pytest.raises(MalformedError):
        decode_bundle(blob[:cut], expect=len(entries))
    if cut not in boundaries:
        with pytest.raises(MalformedError):
            decode_bundle(blob[:cut])


@given(entries=entries_st, extra=st.binary(min_size=1, max_size=3))
@PROPS
def test_bundle_with_trailing_bytes(entries: list[bytes], extra: bytes) -> None:
    blob = encode_bundle(entries) + extra
    with pytest.raises(MalformedError):
        decode_bundle(blob, expect=len(entries))


@given(data=st.binary(max_size=64))
@PROPS
def test_decode_bundle_never_raises_raw_errors(data: bytes) -> None:
    try:
        entries = decode_bundle(data)
    except MalformedError:
        return
    assert encode_bundle(entries) == data


def test_bundle_limits() -> None:
    big = b"\xff" * MAX_ENTRY_SIZE
    assert decode_bundle(encode_bundle([big, b""])) == [big, b""]
    with pytest.raises(UsageError):
        encode_bundle([b"\x00" * (MAX_ENTRY_SIZE + 1)])
    assert decode_bundle(b"") == []
    with pytest.raises(MalformedError):
        decode_bundle(b"", expect=1)
    with pytest.raises(MalformedError):
        decode_bundle(b"\x00\x05abc")
    with pytest.raises(MalformedError):
        decode_bundle(b"\x00")
    assert issubclass(MalformedError, PotdError)
