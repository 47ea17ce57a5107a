"""ledger.merkle and ledger.tiles against the public vectors in ../shared/vectors (read in place).

* transparency-dev/merkle ``testdata/{inclusion,consistency}/**``: every file is one
  test; ``wantErr`` true means our ``check_*`` raises a :class:`PotdError`, false means
  it passes. Happy paths on the RFC 6962 reference tree must also be exactly what our
  prover emits.
* transparency-dev/merkle RFC 6962 reference roots for sizes 1..8 and the empty tree.
* golang/mod sumdb/tlog tile paths (valid and invalid).
* C2SP tlog-tiles examples (index path, tile sets for 256 and 70000 records).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from ledger.errors import (
    ConsistencyError,
    InclusionError,
    MalformedError,
    PotdError,
)
from ledger.log import Log
from ledger.merkle import (
    EMPTY_ROOT,
    CompactRange,
    check_record,
    check_tree,
    leaf_hash,
    prove_record,
    prove_tree,
    root_of,
    tree_hash,
)
from ledger.note import Signer
from ledger.tiles import ENTRIES_LEVEL, Tile, format_index, parse_go_path, tiles_for_size

try:
    from conftest import vectors_dir
except ImportError:  # tests/ became a package
    from tests.conftest import vectors_dir

TD = "transparency-dev-merkle"


def _load(relpath: str) -> Any:
    return json.loads((vectors_dir() / relpath).read_text(encoding="utf-8"))


def _files(subdir: str) -> list[Any]:
    """One parameter per JSON file under ``<vectors>/<subdir>``, id = its relative path.
    When the vectors are absent: one skipped parameter saying why."""
    try:
        base = vectors_dir() / subdir
    except pytest.skip.Exception as e:
        return [pytest.param(None, id="vectors-absent", marks=pytest.mark.skip(reason=e.msg))]
    files = sorted(p for p in base.rglob("*.json") if p.is_file())
    return [pytest.param(p, id=p.relative_to(base).as_posix(),
                         marks=_DEVIATIONS.get(f"{subdir}/{p.relative_to(base).as_posix()}", ()))
            for p in files]


def _b64(s: str) -> bytes:
    return base64.b64decode(s, validate=True)


def _proof(v: Sequence[str] | None) -> list[bytes]:
    return [_b64(p) for p in v or []]


# Vectors whose expectation we deliberately do not meet, with the reason. Each one is a
# strict xfail: it must keep failing exactly this way, or the marker has to go.
_DEVIATIONS = {
    f"{TD}/testdata/consistency/additional/sizes-are-equal-one-and-proof-is-empty.json":
        pytest.mark.xfail(strict=True, raises=MalformedError, reason=(
            "vector: size1 == size2 == 1, root1 == root2 == the 12-byte 'don't care 1', "
            "empty proof, wantErr false (transparency-dev only compares the bytes when the "
            "sizes are equal). docs/protocol.md §2.1 says to reject any hash that is not exactly "
            "32 bytes, so check_tree raises MalformedError.")),
}


# --- the RFC 6962 reference tree ------------------------------------------------------

class _Stored:
    def __init__(self, leaves: Sequence[bytes]) -> None:
        self.stored: list[bytes] = []
        rng = CompactRange()
        for h in leaves:
            self.stored.extend(rng.append(h))

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        return [self.stored[i] for i in indexes]


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    ref: dict[str, Any] = _load(f"{TD}/rfc6962_reference_tree.json")
    entries = [bytes.fromhex(x) for x in ref["leaf_inputs_hex"]]
    leaves = [leaf_hash(e) for e in entries]
    roots = {i + 1: bytes.fromhex(h)
             for i, h in enumerate(ref["root_hashes_hex_by_tree_size_1_to_8"])}
    roots[0] = bytes.fromhex(ref["empty_root_hex"])
    return {"entries": entries, "leaves": leaves, "roots": roots, "reader": _Stored(leaves)}


def test_reference_roots_in_memory(reference: dict[str, Any]) -> None:
    assert len(reference["entries"]) == 8
    for size in range(0, 9):
        want = reference["roots"][size]
        assert root_of(reference["leaves"][:size]) == want, size
        assert tree_hash(size, reference["reader"]) == want, size


def test_reference_roots_from_sqlite_log(reference: dict[str, Any], tmp_path: Path) -> None:
    log = Log.create(str(tmp_path / "ref.db"), Signer.generate("example.com/rfc6962-ref"))
    try:
        assert log.checkpoint().root == reference["roots"][0]
        for i, e in enumerate(reference["entries"]):
            cp = log.append([e]).checkpoint
            assert cp.root == reference["roots"][i + 1], i + 1
        for size in range(1, 9):
            assert log.root_at(size) == reference["roots"][size]
    finally:
        log.store.close()


def test_empty_tree_hash(reference: dict[str, Any]) -> None:
    assert EMPTY_ROOT == hashlib.sha256(b"").digest() == reference["roots"][0]
    go = _load("golang-x-mod-sumdb/vectors.json")
    assert "SHA-256('')" in go["empty_tree_hash"]  # a statement, not data: TreeHash(0)
    assert tree_hash(0, reference["reader"]) == EMPTY_ROOT
    assert root_of([]) == EMPTY_ROOT


# --- transparency-dev inclusion / consistency cases -----------------------------------

@pytest.mark.parametrize("path", _files(f"{TD}/testdata/inclusion"))
def test_transparency_dev_inclusion(path: Path, reference: dict[str, Any]) -> None:
    v = json.loads(path.read_text(encoding="utf-8"))
    proof = _proof(v["proof"])
    args = (proof, v["treeSize"], _b64(v["root"]), v["leafIdx"], _b64(v["leafHash"]))
    if v["wantErr"]:
        with pytest.raises(PotdError) as e:
            check_record(*args)
        assert isinstance(e.value, (InclusionError, MalformedError)), e.value
        return
    check_record(*args)
    # happy paths over the reference tree: our prover emits exactly the same proof
    size, idx = v["treeSize"], v["leafIdx"]
    if size <= 8 and _b64(v["root"]) == reference["roots"][size]:
        assert prove_record(size, idx, reference["reader"]) == proof


@pytest.mark.parametrize("path", _files(f"{TD}/testdata/consistency"))
def test_transparency_dev_consistency(path: Path, reference: dict[str, Any]) -> None:
    v = json.loads(path.read_text(encoding="utf-8"))
    proof = _proof(v["proof"])
    args = (proof, v["size2"], _b64(v["root2"]), v["size1"], _b64(v["root1"]))
    if v["wantErr"]:
        with pytest.raises(PotdError) as e:
            check_tree(*args)
        assert isinstance(e.value, (ConsistencyError, MalformedError)), e.value
        return
    check_tree(*args)
    size1, size2 = v["size1"], v["size2"]
    roots = reference["roots"]
    if 0 < size1 and size2 <= 8 and _b64(v["root2"]) == roots[size2]:
        assert prove_tree(size2, size1, reference["reader"]) == proof


def test_transparency_dev_corpus_is_complete() -> None:
    """Guard against silently testing nothing: the pinned corpus has these many files."""
    base = vectors_dir() / TD / "testdata"
    inc = list((base / "inclusion").rglob("*.json"))
    con = list((base / "consistency").rglob("*.json"))
    assert len(inc) >= 50 and len(con) >= 50
    assert all(json.loads(p.read_text())["desc"] for p in inc + con)


# --- Go sumdb tile paths ---------------------------------------------------------------

def _go_tile_cases() -> list[Any]:
    try:
        data = _load("golang-x-mod-sumdb/vectors.json")
    except pytest.skip.Exception as e:
        return [pytest.param(None, None, id="vectors-absent", marks=pytest.mark.skip(reason=e.msg))]
    return [pytest.param(path, want, id=path) for path, want in data["sumdb_tile_paths"]]


def _go_invalid_tile_paths() -> list[Any]:
    try:
        data = _load("golang-x-mod-sumdb/vectors.json")
    except pytest.skip.Exception as e:
        return [pytest.param(None, id="vectors-absent", marks=pytest.mark.skip(reason=e.msg))]
    return [pytest.param(p, id=p) for p in data["sumdb_tile_paths_invalid"]]


@pytest.mark.parametrize("path, want", _go_tile_cases())
def test_go_tile_paths(path: str, want: dict[str, int]) -> None:
    tile = parse_go_path(path)
    assert (tile.height, tile.level, tile.n, tile.width) == (want["H"], want["L"], want["N"],
                                                             want["W"])
    assert tile == Tile(want["L"], want["N"], want["W"], want["H"])
    assert tile.go_path() == path
    assert (tile.level == ENTRIES_LEVEL) == ("/data/" in path)


@pytest.mark.parametrize("path", _go_invalid_tile_paths())
def test_go_tile_paths_invalid(path: str) -> None:
    with pytest.raises(MalformedError):
        parse_go_path(path)


# --- C2SP tlog-tiles examples ----------------------------------------------------------

@pytest.fixture(scope="module")
def tlog_tiles() -> dict[str, str]:
    section: dict[str, str] = _load("c2sp/examples.json")["tlog_tiles_examples"]
    return section


def test_c2sp_index_path(tlog_tiles: dict[str, str]) -> None:
    key = "index_1234067_path"
    n = int(re.fullmatch(r"index_(\d+)_path", key).group(1))  # type: ignore[union-attr]
    assert format_index(n) == tlog_tiles[key] == "x001/x234/067"
    assert Tile(0, n).path() == f"tile/0/{tlog_tiles[key]}"


def _describe(tiles: list[Tile]) -> dict[int, tuple[int, list[int]]]:
    """level -> (number of full tiles, widths of partial tiles)."""
    out: dict[int, tuple[int, list[int]]] = {}
    for t in tiles:
        full, partial = out.get(t.level, (0, []))
        out[t.level] = (full + 1, partial) if t.full else (full, [*partial, t.width])
    return out


def _parse_description(text: str) -> dict[int, tuple[int, list[int]]]:
    """Parse the prose of examples.json, e.g. '273 full level-0 tiles, partial level-0
    width 112, ...' / '1 full level-0 tile + partial level-1 tile width 1'."""
    out: dict[int, tuple[int, list[int]]] = {}
    for part in re.split(r",\s*|\s*\+\s*", text):
        if m := re.fullmatch(r"(\d+) full level-(\d+) tiles?", part):
            full, partial = out.get(int(m[2]), (0, []))
            out[int(m[2])] = (full + int(m[1]), partial)
        elif m := re.fullmatch(r"partial level-(\d+)(?: tile)? width (\d+)", part):
            full, partial = out.get(int(m[1]), (0, []))
            out[int(m[1])] = (full, [*partial, int(m[2])])
        else:
            raise AssertionError(f"cannot read tile description part {part!r}")
    return out


@pytest.mark.parametrize("key, size", [("tree_256", 256), ("tree_70000", 70000)])
def test_c2sp_tile_sets(tlog_tiles: dict[str, str], key: str, size: int) -> None:
    want = _parse_description(tlog_tiles[key])
    tiles = tiles_for_size(size)
    assert _describe(tiles) == want
    # and every tile is addressed as the spec writes it
    for t in tiles:
        assert t.path() == f"tile/{t.level}/{format_index(t.n)}" + (
            "" if t.full else f".p/{t.width}")


def test_c2sp_tree_70000_explicit() -> None:
    tiles = tiles_for_size(70000)
    assert [t for t in tiles if not t.full] == [Tile(0, 273, 112), Tile(1, 1, 17),
                                                Tile(2, 0, 1)]
    assert sum(t.full for t in tiles if t.level == 0) == 273
    assert [t for t in tiles if t.level == 1 and t.full] == [Tile(1, 0)]
    assert Tile(0, 273, 112).path() == "tile/0/273.p/112"
