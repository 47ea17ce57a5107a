"""Interop with Go's golang.org/x/mod/sumdb/{note,tlog} (docs/protocol.md §2).

A small Go program (tests/go/potdcheck, standard library + x/mod only) opens potd's
signed checkpoints with ``note.Open``, checks potd's inclusion and consistency proofs
with ``tlog.CheckRecord`` / ``tlog.CheckTree``, and reads a static tlog-tiles mirror
written by :func:`ledger.export.export_static` through ``tlog.TileHashReader``, which
authenticates every tile against the signed root. The negative tests show the Go side
really fails on a flipped bit, a tampered tile or bundle, and a foreign key.

Needs ``go`` and Debian's golang-golang-x-mod-dev (/usr/share/gocode); skipped without
them, unless ``POTD_REQUIRE_GO=1`` (set by .ci/run), which turns the skip into a failure.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import random
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ledger.export import bundle_tiles, export_static
from ledger.log import Log
from ledger.merkle import EMPTY_ROOT, leaf_hash
from ledger.note import Checkpoint, Signer, sign_checkpoint
from ledger.tiles import TILE_WIDTH, decode_bundle, encode_bundle, tiles_for_size

GO_SRC = Path(__file__).resolve().parent / "go" / "potdcheck"
GOPATH = Path("/usr/share/gocode")
XMOD = GOPATH / "src" / "golang.org" / "x" / "mod"
ORIGIN = "potd.example/log1"


# --- building and running the Go checker ------------------------------------------------

def _go_cache_env(go: str, env: dict[str, str], tmp: Path) -> dict[str, str]:
    """Keep the user's GOCACHE if it is usable, else use a temporary one."""
    try:
        cache = subprocess.run([go, "env", "GOCACHE"], env=env, capture_output=True,
                               text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        cache = ""
    usable = False
    if cache and cache != "off":
        try:
            os.makedirs(cache, exist_ok=True)
            usable = os.access(cache, os.W_OK)
        except OSError:
            usable = False
    if not usable:
        env = dict(env, GOCACHE=str(tmp / "gocache"))
    return env


@pytest.fixture(scope="session")
def potdcheck(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built Go checker. Skips (or fails, with POTD_REQUIRE_GO=1) without Go."""
    go = shutil.which("go")
    missing = []
    if go is None:
        missing.append("the `go` command (Debian package golang-go)")
    if not XMOD.is_dir():
        missing.append(f"{XMOD} (Debian package golang-golang-x-mod-dev)")
    if missing:
        msg = ("Go interop tests need " + " and ".join(missing)
               + "; install them (.ci/run does) to check potd against Go's sumdb/tlog")
        if os.environ.get("POTD_REQUIRE_GO") == "1":
            pytest.fail(msg + " [POTD_REQUIRE_GO=1 forbids skipping]", pytrace=False)
        pytest.skip(msg)
    assert go is not None
    tmp = tmp_path_factory.mktemp("potdcheck")
    out = tmp / "potdcheck"
    env = dict(os.environ, GOPATH=str(GOPATH), GO111MODULE="off", GOFLAGS="",
               GOPROXY="off", GOTOOLCHAIN="local", CGO_ENABLED="0")
    env = _go_cache_env(go, env, tmp)
    r = subprocess.run([go, "build", "-o", str(out), "."], cwd=GO_SRC, env=env,
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        # A build failure is a broken test program, never a reason to skip.
        pytest.fail(f"go build of {GO_SRC} failed:\n{r.stdout}{r.stderr}", pytrace=False)
    return out


@dataclass
class GoResult:
    returncode: int
    out: dict[str, Any] | None
    stderr: str


def run_go(binary: Path, req: dict[str, Any]) -> GoResult:
    r = subprocess.run([str(binary)], input=json.dumps(req), capture_output=True, text=True,
                       timeout=120)
    out = json.loads(r.stdout) if r.returncode == 0 else None
    return GoResult(r.returncode, out, r.stderr)


def go_ok(binary: Path, req: dict[str, Any]) -> dict[str, Any]:
    r = run_go(binary, req)
    assert r.returncode == 0, f"Go checker rejected potd's data:\n{r.stderr}"
    assert r.out is not None and r.out["ok"] is True
    return r.out


def go_fails(binary: Path, req: dict[str, Any], *expect: str) -> str:
    r = run_go(binary, req)
    assert r.returncode == 1, (f"Go checker should have failed a check (exit 1), got exit "
                               f"{r.returncode}\nstdout: {r.out}\nstderr: {r.stderr}")
    assert r.stderr.startswith("potdcheck: FAIL: "), r.stderr
    for e in expect:
        assert e in r.stderr, f"expected {e!r} in the failure message: {r.stderr}"
    return r.stderr


# --- building logs and requests ---------------------------------------------------------

def b64(h: bytes) -> str:
    return base64.b64encode(h).decode("ascii")


def entry(i: int) -> bytes:
    """Deterministic entries of varied length, including an empty and a maximal one."""
    if i == 0:
        return b""
    if i == 3:
        return bytes([0xAB]) * 0xFFFF  # the largest entry a uint16 length prefix allows
    return json.dumps({"i": i, "pad": "x" * (i % 37)}, sort_keys=True).encode()


def grow(log: Log, to: int, batch: int = 5000) -> None:
    while log.size < to:
        n = min(batch, to - log.size)
        app = log.append([entry(i) for i in range(log.size, log.size + n)])
        assert app.leaf_hashes == tuple(leaf_hash(entry(i)) for i in range(app.first_index,
                                                                            app.first_index + n))


def sample_indexes(size: int, limit: int = 300, seed: int = 0) -> list[int]:
    """All indexes for small trees; else both ends, tile edges and a random sample."""
    if size <= limit:
        return list(range(size))
    want = set(range(8)) | set(range(size - 8, size))
    for t in range(TILE_WIDTH, size, TILE_WIDTH):
        want |= {t - 1, t}
    rng = random.Random(seed)
    want |= {rng.randrange(size) for _ in range(limit)}
    return sorted(i for i in want if 0 <= i < size)


def request(log: Log, *, tiles_dir: Path | None = None, old_sizes: Iterable[int] = (),
            limit: int = 300) -> dict[str, Any]:
    """Checkpoint, inclusion proofs (current size and each old size), consistency proofs
    (each old size to the current one, and between consecutive old sizes)."""
    n = log.size
    olds = sorted({m for m in old_sizes if 0 < m < n})
    inclusion = [{"index": i, "leaf_hash": b64(leaf_hash(entry(i))), "size": n,
                  "proof": [b64(h) for h in log.inclusion_proof(i)]}
                 for i in sample_indexes(n, limit)]
    for m in olds:
        for i in sorted({0, m // 2, m - 1}):
            inclusion.append({"index": i, "leaf_hash": b64(leaf_hash(entry(i))), "size": m,
                              "proof": [b64(h) for h in log.inclusion_proof(i, m)]})
    consistency = [{"from": m, "to": n, "proof": [b64(h) for h in log.consistency_proof(m)]}
                   for m in olds]
    for a, b in itertools.pairwise(olds):
        consistency.append({"from": a, "to": b,
                            "proof": [b64(h) for h in log.consistency_proof(a, b)]})
    req: dict[str, Any] = {
        "vkey": str(log.verifier),
        "checkpoint": str(log.checkpoint()),
        "roots": {str(m): b64(log.root_at(m)) for m in olds},
        "inclusion": inclusion,
        "consistency": consistency,
    }
    if tiles_dir is not None:
        req["tiles_dir"] = str(tiles_dir)
    return req


def expected_files(size: int) -> set[str]:
    return ({"checkpoint"} | {t.path() for t in tiles_for_size(size)}
            | {t.path() for t in bundle_tiles(size)})


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def assert_counts(out: dict[str, Any], log: Log, req: dict[str, Any], *,
                  tiles: bool = True, fallbacks: int | None = 0) -> None:
    n = log.size
    assert out["origin"] == ORIGIN
    assert out["size"] == n
    assert out["root"] == b64(log.checkpoint().root)
    assert out["signatures"] == 1
    assert out["inclusion_checked"] == len(req["inclusion"])
    assert out["consistency_checked"] == len(req["consistency"])
    if not tiles:
        assert out["proofs_matched"] == 0 and out["entries_checked"] == 0
        return
    assert out["proofs_matched"] == len(req["inclusion"]) + len(req["consistency"])
    assert out["tile_tree_hash"] is (n > 0)
    assert out["roots_from_tiles"] == len(req["roots"])
    assert out["tile_record_proofs"] == min(n, 2000)
    assert out["tile_tree_proofs"] > 0 or n == 0
    assert out["entries_checked"] == n
    assert out["bundles_read"] == -(-n // TILE_WIDTH)
    if fallbacks is not None:
        assert out["tile_fallbacks"] == fallbacks


def flip_bit(b64_hash: str, bit: int = 0) -> str:
    raw = bytearray(base64.b64decode(b64_hash))
    raw[bit // 8] ^= 1 << (bit % 8)
    return b64(bytes(raw))


# --- export layout (pure Python) ---------------------------------------------------------

def test_export_writes_exactly_the_static_mirror(tmp_path: Path) -> None:
    log = Log.create(str(tmp_path / "log.db"), Signer.generate(ORIGIN))
    grow(log, 1000)
    out = tmp_path / "mirror"
    export_static(log, out, fsync=False)
    assert files_under(out) == expected_files(1000)
    assert expected_files(1000) == {
        "checkpoint", "tile/0/000", "tile/0/001", "tile/0/002", "tile/0/003.p/232",
        "tile/1/000.p/3", "tile/entries/000", "tile/entries/001", "tile/entries/002",
        "tile/entries/003.p/232"}
    assert (out / "checkpoint").read_bytes() == log.checkpoint().to_bytes()
    assert len((out / "tile/0/003.p/232").read_bytes()) == 232 * 32
    got = []
    for t in bundle_tiles(1000):
        got += decode_bundle((out / t.path()).read_bytes(), expect=t.width)
    assert got == [entry(i) for i in range(1000)]

    # Re-export after growth: the current size's tiles are all there, no temp files;
    # stale partials of the old size stay (they are prefixes of the new data).
    grow(log, 1300)
    export_static(log, out)
    files = files_under(out)
    assert expected_files(1300) <= files
    assert files - expected_files(1300) == {"tile/0/003.p/232", "tile/1/000.p/3",
                                            "tile/entries/003.p/232"}
    assert (out / "tile/0/003").read_bytes()[: 232 * 32] == (out / "tile/0/003.p/232").read_bytes()
    assert not [f for f in files if ".tmp" in f]


# --- Go accepts what potd emits -------------------------------------------------------

@pytest.mark.go
def test_go_verifies_a_growing_log(potdcheck: Path, tmp_path: Path) -> None:
    """Sizes 1, 2, 7, 256, 257, 1000, re-exported into one mirror each time; every stage
    is checked with proofs from all earlier sizes; old checkpoints stay verifiable."""
    log = Log.create(str(tmp_path / "log.db"), Signer.generate(ORIGIN))
    mirror = tmp_path / "mirror"
    seen: list[int] = []
    old_checkpoints: list[str] = []
    for size in (1, 2, 7, 256, 257, 1000):
        grow(log, size)
        export_static(log, mirror, fsync=False)
        assert expected_files(size) <= files_under(mirror)
        req = request(log, tiles_dir=mirror, old_sizes=seen)
        out = go_ok(potdcheck, req)
        assert_counts(out, log, req)
        # Without tiles, Go checks the same proofs by themselves, and authenticates the
        # older roots through the consistency proofs alone.
        req.pop("tiles_dir")
        out = go_ok(potdcheck, req)
        assert_counts(out, log, req, tiles=False)
        assert out["roots_from_consistency"] == len(req["roots"])
        seen.append(size)
        old_checkpoints.append(str(log.checkpoint()))

    # Every earlier checkpoint still verifies against the grown mirror.
    for cp in old_checkpoints:
        go_ok(potdcheck, {"vkey": str(log.verifier), "checkpoint": cp, "tiles_dir": str(mirror)})


@pytest.mark.go
def test_go_reads_wider_tiles_for_an_older_checkpoint(potdcheck: Path, tmp_path: Path) -> None:
    """A fresh mirror of size 1000 has no partial tiles of size 257: Go's reader falls back
    to the full tile/0/001 and the wider tile/1/000.p/3 and truncates them."""
    log = Log.create(str(tmp_path / "log.db"), Signer.generate(ORIGIN))
    grow(log, 257)
    cp257 = str(log.checkpoint())
    grow(log, 1000)
    mirror = tmp_path / "mirror"
    export_static(log, mirror, fsync=False)
    assert not (mirror / "tile/0/001.p/1").exists()
    out = go_ok(potdcheck, {"vkey": str(log.verifier), "checkpoint": cp257,
                            "tiles_dir": str(mirror)})
    assert out["size"] == 257 and out["entries_checked"] == 257
    assert out["tile_fallbacks"] >= 2  # tile/0/001 for .p/1, tile/1/000.p/3 for .p/1


@pytest.mark.go
def test_go_verifies_a_large_log(potdcheck: Path, tmp_path: Path) -> None:
    """70,000 records: three tile levels (70000 > 256**2), sampled proofs, every entry."""
    log = Log.create(str(tmp_path / "log.db"), Signer.generate(ORIGIN))
    grow(log, 65537, batch=20000)
    mid = log.size
    grow(log, 70000, batch=20000)
    mirror = tmp_path / "mirror"
    export_static(log, mirror, fsync=False)
    assert (mirror / "tile/2/000.p/1").exists()
    req = request(log, tiles_dir=mirror, old_sizes=(1, 255, 256, 65535, 65536, mid),
                  limit=200)
    out = go_ok(potdcheck, req)
    assert_counts(out, log, req)


@pytest.mark.go
def test_go_verifies_the_empty_log(potdcheck: Path, tmp_path: Path) -> None:
    log = Log.create(str(tmp_path / "log.db"), Signer.generate(ORIGIN))
    mirror = tmp_path / "mirror"
    export_static(log, mirror, fsync=False)
    assert files_under(mirror) == {"checkpoint"}
    out = go_ok(potdcheck, {"vkey": str(log.verifier), "tiles_dir": str(mirror)})
    assert out["size"] == 0 and out["root"] == b64(EMPTY_ROOT)


# --- Go rejects tampering (the tests above can fail) ---------------------------------

@dataclass
class Fixture:
    log: Log
    signer: Signer
    mirror: Path


@pytest.fixture(scope="module")
def log1000(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    tmp = tmp_path_factory.mktemp("log1000")
    signer = Signer.generate(ORIGIN)
    log = Log.create(str(tmp / "log.db"), signer)
    for size in (7, 256, 1000):
        grow(log, size)
    mirror = tmp / "mirror"
    export_static(log, mirror, fsync=False)
    return Fixture(log, signer, mirror)


@pytest.fixture
def mirror(log1000: Fixture, tmp_path: Path) -> Path:
    """A private copy of the size-1000 mirror, safe to tamper with."""
    return Path(shutil.copytree(log1000.mirror, tmp_path / "mirror"))


def base_request(f: Fixture, mirror: Path | None) -> dict[str, Any]:
    return request(f.log, tiles_dir=mirror, old_sizes=(7, 256), limit=40)


@pytest.mark.go
def test_control_untampered_copy_passes(potdcheck: Path, log1000: Fixture, mirror: Path) -> None:
    req = base_request(log1000, mirror)
    assert_counts(go_ok(potdcheck, req), log1000.log, req)


@pytest.mark.go
@pytest.mark.parametrize("with_tiles", [False, True], ids=["proofs-only", "with-tiles"])
@pytest.mark.parametrize("where", ["inclusion-current", "inclusion-old", "consistency"])
def test_flipped_bit_in_a_proof_fails(potdcheck: Path, log1000: Fixture, mirror: Path,
                                      with_tiles: bool, where: str) -> None:
    req = base_request(log1000, mirror if with_tiles else None)
    if where == "inclusion-current":
        item = next(it for it in req["inclusion"] if it["index"] == 511 and it["size"] == 1000)
        kind = "inclusion["
    elif where == "inclusion-old":
        item = next(it for it in req["inclusion"] if it["size"] == 256)
        kind = "inclusion["
    else:
        item = next(it for it in req["consistency"] if it["from"] == 7 and it["to"] == 1000)
        kind = "consistency["
    item["proof"][1] = flip_bit(item["proof"][1], bit=77)
    msg = go_fails(potdcheck, req, kind)
    # tlog.CheckRecord / CheckTree itself rejects it (checked before the tile comparison).
    assert "invalid transparency proof" in msg


@pytest.mark.go
def test_flipped_leaf_hash_and_dropped_proof_hash_fail(potdcheck: Path, log1000: Fixture) -> None:
    req = base_request(log1000, None)
    req["inclusion"][5]["leaf_hash"] = flip_bit(req["inclusion"][5]["leaf_hash"])
    go_fails(potdcheck, req, "inclusion[5]")
    req = base_request(log1000, None)
    req["consistency"][0]["proof"].pop()
    go_fails(potdcheck, req, "consistency[0]")


@pytest.mark.go
@pytest.mark.parametrize("path", ["tile/0/000", "tile/0/002", "tile/0/003.p/232",
                                  "tile/1/000.p/3"])
def test_tampered_tile_fails(potdcheck: Path, log1000: Fixture, mirror: Path, path: str) -> None:
    f = mirror / path
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    go_fails(potdcheck, base_request(log1000, mirror), "not authenticated")


@pytest.mark.go
def test_coordinated_entry_and_tile_forgery_fails(potdcheck: Path, log1000: Fixture,
                                                  mirror: Path) -> None:
    """Rewrite entry 300 and its leaf hash in tile/0/001 so that they agree with each
    other: the entry check alone would pass. potdcheck authenticates every tile against
    its parent before use (Go's TileHashReader in x/mod < 0.40.0 skips some tiles:
    CVE-2026-56865), so it names the forged tile."""
    bundle = mirror / "tile/entries/001"
    entries = decode_bundle(bundle.read_bytes(), expect=256)
    forged = entries[300 - 256].replace(b'"i": 300', b'"i": 999')
    assert forged != entries[300 - 256] and len(forged) == len(entries[300 - 256])
    entries[300 - 256] = forged
    bundle.write_bytes(encode_bundle(entries))
    tile = mirror / "tile/0/001"
    data = bytearray(tile.read_bytes())
    off = (300 - 256) * 32
    data[off:off + 32] = leaf_hash(forged)
    tile.write_bytes(bytes(data))
    req = {"vkey": str(log1000.log.verifier), "tiles_dir": str(mirror), "sample": 1}
    go_fails(potdcheck, req, "tile/0/001 is not authenticated")


@pytest.mark.go
@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_missing_or_short_tile_fails(potdcheck: Path, log1000: Fixture, mirror: Path,
                                     damage: str) -> None:
    f = mirror / "tile/0/001"
    if damage == "truncate":
        f.write_bytes(f.read_bytes()[:-32])
    else:
        f.unlink()
    go_fails(potdcheck, base_request(log1000, mirror), "tile/0/001")


@pytest.mark.go
def test_tampered_entry_bundle_fails(potdcheck: Path, log1000: Fixture, mirror: Path) -> None:
    f = mirror / "tile/entries/001"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0x01  # the last byte of entry 511, length prefixes intact
    f.write_bytes(bytes(data))
    go_fails(potdcheck, base_request(log1000, mirror), "entry 511", "RecordHash")


@pytest.mark.go
def test_checkpoint_signed_by_another_key_fails(potdcheck: Path, log1000: Fixture) -> None:
    log = log1000.log
    other = Signer.generate(ORIGIN)  # same name, different key (and key ID)
    forged = str(sign_checkpoint(log.checkpoint().checkpoint, other))
    req = base_request(log1000, log1000.mirror)
    req["checkpoint"] = forged
    go_fails(potdcheck, req, "checkpoint signature")
    # ... and the real checkpoint with the other key pinned fails too.
    req = base_request(log1000, log1000.mirror)
    req["vkey"] = str(other.verifier)
    go_fails(potdcheck, req, "checkpoint signature")


@pytest.mark.go
def test_altered_checkpoint_body_fails(potdcheck: Path, log1000: Fixture) -> None:
    req = base_request(log1000, None)
    req["checkpoint"] = req["checkpoint"].replace("\n1000\n", "\n1001\n", 1)
    go_fails(potdcheck, req, "checkpoint signature")


@pytest.mark.go
def test_signed_checkpoint_with_wrong_root_fails_against_tiles(potdcheck: Path,
                                                              log1000: Fixture) -> None:
    """Even a validly signed checkpoint is rejected when the tiles do not support it."""
    bad = Checkpoint(ORIGIN, 1000, leaf_hash(b"not the root"))
    req = base_request(log1000, log1000.mirror)
    req["checkpoint"] = str(sign_checkpoint(bad, log1000.signer))
    req["inclusion"], req["consistency"] = [], []
    go_fails(potdcheck, req, "tiles are not authenticated", "checkpoint root")


@pytest.mark.go
def test_wrong_old_root_fails(potdcheck: Path, log1000: Fixture) -> None:
    req = base_request(log1000, log1000.mirror)
    req["roots"]["256"] = flip_bit(req["roots"]["256"])
    go_fails(potdcheck, req, "roots[256]", "tiles give")
    # Without tiles, the proofs that use it catch it.
    req = base_request(log1000, None)
    req["roots"]["256"] = flip_bit(req["roots"]["256"])
    go_fails(potdcheck, req, "tree size 256", "invalid transparency proof")
    req["inclusion"] = [it for it in req["inclusion"] if it["size"] != 256]
    go_fails(potdcheck, req, "tree 256 -> 1000", "invalid transparency proof")


@pytest.mark.go
def test_unauthenticated_old_root_fails(potdcheck: Path, log1000: Fixture) -> None:
    """Without tiles, a root with no consistency proof to the checkpoint is not trusted."""
    req = base_request(log1000, None)
    req["consistency"] = []
    go_fails(potdcheck, req, "not authenticated")


@pytest.mark.go
def test_wrong_origin_fails(potdcheck: Path, log1000: Fixture) -> None:
    req = base_request(log1000, None)
    req["origin"] = "potd.example/other"
    go_fails(potdcheck, req, "origin")
