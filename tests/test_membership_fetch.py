"""Membership against hostile peers and at rest (docs/protocol.md §4.7 "Fetching and
caching", "Open runs"): the hash list is streamed within the operator's byte cap and the
evidence deadline (real loopback HTTP servers that lie about sizes, trickle, cut off or
inflate), memory stays flat, the index cache is verified on every use, and a run that is
still open is answered from its run.open without steps."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e import Env, LoopbackServer, make_env

from auditor.membership import membership
from auditor.membership_index import (
    IN_USE_S,
    STALE_TMP_S,
    Corrupt,
    Unavailable,
    fetch,
    index,
    prune,
)
from auditor.membership_proof import verify_proof
from prover.hashing import example_hash
from prover.hashlist import HEADER_SIZE, encode_header, publish
from prover.session import TrainingSession

ROOT = Path(__file__).resolve().parents[1]
NAME = "ab" * 32  # a hash-list name no body below has


@pytest.fixture
def serve() -> Iterator[Callable[..., LoopbackServer]]:
    made: list[LoopbackServer] = []

    def start(body: Callable[[http.server.BaseHTTPRequestHandler], None]) -> LoopbackServer:
        made.append(LoopbackServer(body))
        return made[-1]

    yield start
    for s in made:
        s.close()


def _endless(h: http.server.BaseHTTPRequestHandler) -> None:
    """Headers, then zeros for as long as the client reads (no length announced)."""
    h.send_response(200)
    h.end_headers()
    block = bytes(1 << 20)
    while True:
        h.wfile.write(block)


def _exact(n: int, announce: int | None = None, pause: float = 0.0
           ) -> Callable[[http.server.BaseHTTPRequestHandler], None]:
    """``n`` bytes (a valid header, then a pattern); ``announce`` a Content-Length
    (default ``n``); ``pause`` seconds between 4 KiB writes (a trickle)."""
    def body(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(n if announce is None else announce))
        h.end_headers()
        data = encode_header((n - HEADER_SIZE) // 32)
        h.wfile.write(data)
        left = n - len(data)
        block = bytes(range(256)) * (4096 if not pause else 1)
        while left > 0:
            part = block[:left]
            h.wfile.write(part)
            left -= len(part)
            if pause:
                time.sleep(pause)
        h.wfile.flush()
    return body


# --- fetching within bounds -------------------------------------------------------------

def test_over_the_cap_is_inconclusive_and_nothing_is_fetched(
        serve: Callable[..., LoopbackServer], tmp_path: Path) -> None:
    """The cheapest attack: commit 2^34 examples and serve an endless list. The committed
    size alone exceeds the cap: inconclusive with a hint naming the option; the server
    is never asked and nothing is allocated or written."""
    srv = serve(_endless)
    with pytest.raises(Unavailable) as e:
        index(srv.url, NAME, 1 << 34, work=tmp_path)
    assert "--max-hash-list-bytes" in e.value.hint and "17,179,869,184" in e.value.message
    assert srv.paths == [] and list(tmp_path.iterdir()) == []
    # room on disk is checked before writing: 2^40 examples (144 TiB) under a huge cap
    with pytest.raises(Unavailable, match="bytes free") as e:
        index(srv.url, NAME, 1 << 40, max_bytes=1 << 62, work=tmp_path)
    assert "--cache-dir" in e.value.hint and srv.paths == []


def test_longer_truncated_slow_and_inflated_bodies(serve: Callable[..., LoopbackServer],
                                                   tmp_path: Path) -> None:
    size = 1000
    want = HEADER_SIZE + 32 * size
    dest = tmp_path / "list.hashes"
    # endless body, no length: cut at the committed length (a list that long is wrong)
    with pytest.raises(Corrupt, match="longer than"):
        fetch(serve(_endless).url, NAME, size, dest)
    assert not dest.exists()
    # announces more than the committed length: refused before reading
    with pytest.raises(Corrupt, match="announces"):
        fetch(serve(_exact(want + 32)).url, NAME, size, dest)
    # announces the right length, then hangs up half way: inconclusive
    with pytest.raises(Unavailable, match="cannot be read"):
        fetch(serve(_exact(want // 2, announce=want)).url, NAME, size, dest)
    assert not dest.exists()
    # trickles: the whole transfer is bounded by the deadline
    t0 = time.monotonic()
    with pytest.raises(Unavailable, match="within"):
        fetch(serve(_exact(want, pause=0.05)).url, NAME, size, dest, deadline=1.0)
    assert time.monotonic() - t0 < 10
    # a gzip bomb sent although identity was asked for: inflated no further than allowed
    bomb = gzip.compress(bytes(64 << 20))

    def gz(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Encoding", "gzip")
        h.send_header("Content-Length", str(len(bomb)))
        h.end_headers()
        h.wfile.write(bomb)
    with pytest.raises(Corrupt, match="decoded"):
        fetch(serve(gz).url, NAME, size, dest)
    # the right length but not the committed list: its SHA-256 differs (a failed check)
    with pytest.raises(Corrupt, match="SHA-256"):
        fetch(serve(_exact(want)).url, NAME, size, dest)


def test_memory_stays_flat_while_a_large_list_streams(serve: Callable[..., LoopbackServer],
                                                      tmp_path: Path) -> None:
    """96 MiB through the fetch in a fresh process: its peak RSS grows by a few MiB at
    most (the list goes to disk in blocks, hashed on the way)."""
    size = 3 << 20
    srv = serve(_exact(HEADER_SIZE + 32 * size))
    code = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "from auditor.membership_index import Corrupt, fetch\n"
        "r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        f"    fetch({srv.url!r}, {NAME!r}, {size}, Path(sys.argv[1]))\n"
        "except Corrupt as e:\n"
        "    assert 'SHA-256' in e.message, e.message\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - r0)\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "l")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    grew_kib = int(r.stdout.strip())
    assert grew_kib < 16 << 10, f"peak RSS grew by {grew_kib} KiB for a 96 MiB list"


# --- the cache --------------------------------------------------------------------------

def test_index_cache_hit_and_corruption_rebuilt(tmp_path: Path) -> None:
    hs = [hashlib.sha256(str(i % 700).encode()).digest() for i in range(1000)]
    ev = tmp_path / "ev"
    fields = publish(ev / "objects", hs)
    name = str(fields["hash_list"])
    cache = tmp_path / "cache"

    def get() -> tuple[str, str, str, bytes]:
        w = tmp_path / "w"
        w.mkdir(exist_ok=True)
        got = index(str(ev), name, len(hs), cache_dir=cache, work=w)
        try:
            return (got.source, got.ordered.root.hex(), got.srt.root.hex(),
                    got.positions.read_bytes())
        finally:
            got.close()

    cold = get()
    assert cold[0] == "fetched" and cold[2] == fields["sorted_root"]
    assert [p.name for p in cache.iterdir()] == [name]  # no temporary left behind
    # a hit does not need the evidence any more: the list is content-addressed
    (ev / "objects" / f"{name}.hashes").rename(tmp_path / "moved")
    warm = get()
    assert warm[0] == "cache" and warm[1:] == cold[1:]
    (tmp_path / "moved").rename(ev / "objects" / f"{name}.hashes")
    # every file of an entry, altered by one bit, is caught and the entry rebuilt
    for f in ("positions.bin", "sorted.bin", "list.hashes", "ordered.row", "index.json"):
        p = cache / name / f
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 1
        p.write_bytes(bytes(data))
        again = get()
        assert again[0].startswith("cache rebuilt: "), (f, again[0])
        assert again[1:] == cold[1:]
        assert get()[0] == "cache"
    # files swapped for others with index.json rewritten to match: the roots recomputed
    # from the entry (the sorted tree from its leaves) give them away
    for f, other in (("ordered.row", lambda b: bytes(len(b))),
                     ("sorted.bin", lambda b: b[32:] + b"\xff" * 32)):
        p = cache / name / f
        p.write_bytes(other(p.read_bytes()))
        meta = json.loads((cache / name / "index.json").read_text())
        meta["files"][f] = hashlib.sha256(p.read_bytes()).hexdigest()
        (cache / name / "index.json").write_text(json.dumps(meta))
        again = get()
        assert again[0].startswith("cache rebuilt: the roots recomputed"), (f, again[0])
        assert again[1:] == cold[1:]


def test_cache_is_bounded_least_recently_used_first(tmp_path: Path) -> None:
    """The cache stays under its byte bound: after each use the least recently used
    entries go (never the one just used, nor one used in the last IN_USE_S seconds, which
    another audit may be reading); a killed audit's build directory goes once stale."""
    ev, cache, w = tmp_path / "ev", tmp_path / "cache", tmp_path / "w"
    w.mkdir()
    names = []
    for k in range(3):
        hs = [hashlib.sha256(f"{k}/{i}".encode()).digest() for i in range(2000)]
        names.append(str(publish(ev / "objects", hs)["hash_list"]))

    def use(name: str, bound: int | None) -> str:
        got = index(str(ev), name, 2000, cache_dir=cache, cache_max_bytes=bound, work=w)
        got.close()
        return got.source

    for n in names:
        assert use(n, None) == "fetched"
    one = sum(f.stat().st_size for f in (cache / names[0]).iterdir())
    assert sorted(p.name for p in cache.iterdir()) == sorted(names)
    # all three were used just now: a bound of one entry removes nothing yet
    assert use(names[0], one) == "cache"
    assert sorted(p.name for p in cache.iterdir()) == sorted(names)
    # age them (names[1] least recently used, then names[2], then names[0])
    now = time.time()
    for n, age in zip(names, (2, 4, 3), strict=True):
        t = now - IN_USE_S - age * 60
        os.utime(cache / n / "index.json", (t, t))
    stale = cache / ".tmp-killed"
    stale.mkdir()
    (stale / "list.hashes").write_bytes(b"x" * 100)
    os.utime(stale, (now - STALE_TMP_S - 1, now - STALE_TMP_S - 1))
    fresh = cache / ".tmp-building"
    fresh.mkdir()
    assert use(names[2], 2 * one) == "cache"  # a hit prunes: names[1] (oldest) goes
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [names[0], names[2], ".tmp-building"])
    # the bound below one entry: everything but the entry in use goes
    assert prune(cache, 0, keep=names[2]) == [names[0]]
    assert sorted(p.name for p in cache.iterdir()) == sorted([names[2], ".tmp-building"])
    # a fetch into a full cache makes room for itself (names[2] no longer in use)
    t = time.time() - IN_USE_S - 1
    os.utime(cache / names[2] / "index.json", (t, t))
    assert use(names[1], one) == "fetched"
    assert sorted(p.name for p in cache.iterdir()) == sorted([names[1], ".tmp-building"])


# --- open runs and the whole path -------------------------------------------------------

class _Huge(TrainingSession):
    """Commits 2^34 examples and a hash list it serves endlessly."""

    def open_body(self, body: dict[str, Any]) -> dict[str, Any]:
        body["dataset"].update(size=1 << 34, hash_list=NAME)
        return body


@pytest.fixture(scope="module")
def open_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Env, Any]]:
    for e in make_env(tmp_path_factory.mktemp("membership-open")):
        s = e.session("open")
        s.open()
        for k, b in enumerate(s.batches()):  # a few steps, never closed
            s.train_step(b)
            if k == 2:
                break
        yield e, s


def test_open_run_is_answered_without_steps(open_env: Any, tmp_path: Path) -> None:
    env, s = open_env
    inside = example_hash(s.data.x[5], s.data.y[5])
    outside = hashlib.sha256(b"not an example").digest()
    with env.client(state_dir=str(tmp_path / "st")) as c:
        rep = membership(c, s.run_id, [inside, outside], str(env.dir / "ev-open"),
                         cache_dir=str(tmp_path / "cache"))
    got = {c["name"]: c for c in rep["checks"]}
    assert rep["answer"] == "mixed", rep.get("reason")
    assert rep["run_state"] == "open" and "unknown until the run closes" in rep["steps"]
    assert got["hash_list"]["status"] == "pass"
    assert got["membership.steps"]["status"] == "skip"
    assert "unknown until the run closes" in got["membership.steps"]["summary"]
    inc, out = rep["answers"]
    assert inc["answer"] == "included" and inc["indexes"] == [5] and "steps" not in inc
    assert out["answer"] == "absent"
    proof = json.loads(json.dumps(rep["proof"]))
    assert proof["run_state"] == "open" and "close" not in proof
    res = verify_proof(proof, env.log_key.verifier)
    assert res["steps_verified"].startswith("unknown until the run closes")
    assert [a["answer"] for a in res["answers"]] == ["included", "absent"]


@pytest.mark.slow
def test_cli_open_run_over_the_cap_and_cached(open_env: Any, tmp_path: Path,
                                              serve: Callable[..., LoopbackServer]) -> None:
    """The CLI: a hostile open run committing 2^34 examples served endlessly is
    inconclusive (exit 3) with the hint and no request for the list; an honest open
    run's answer names no steps, and a second ask is answered from the cache."""
    env, honest = open_env
    s = env.session("huge", cls=_Huge)
    s.open()
    srv = serve(_endless)
    base = [sys.executable, "-m", "ledger", "auditor", "membership", "--log", env.url,
            "--vkey", str(env.log_key.verifier), "--state", str(tmp_path / "st"),
            "--cache-dir", str(tmp_path / "cache")]
    r = subprocess.run([*base, "--run", s.run_id, "--evidence", srv.url, "--hash", NAME],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "hint: raise --max-hash-list-bytes" in r.stdout and "Traceback" not in r.stderr
    assert not [p for p in srv.paths if p.endswith(".hashes")]
    h = example_hash(honest.data.x[7], honest.data.y[7]).hex()
    ask = [*base, "--run", honest.run_id, "--evidence", str(env.dir / "ev-open"),
           "--hash", h, "--json"]
    for source in ("fetched", "cache"):
        r = subprocess.run(ask, capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert r.returncode == 0, r.stdout + r.stderr
        rep = json.loads(r.stdout)
        assert rep["run_state"] == "open" and rep["answers"][0]["indexes"] == [7]
        hl = next(c for c in rep["checks"] if c["name"] == "hash_list")
        assert hl["evidence"]["index"] == source
    r = subprocess.run(ask[:-1], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert "steps unknown until the run closes" in r.stdout, r.stdout
    assert len(os.listdir(tmp_path / "cache")) == 1  # the honest list; nothing of the huge


def test_merkle_file_native_and_python_rows_agree(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The level-8 row hashed by the native module (when built) is the pure-Python one."""
    from ledger.merkle import root_of
    from prover import hashlist
    from prover.hashing import merkle_root_hex

    for n in (0, 1, 255, 256, 257, 1000, 4096 + 3):
        p = tmp_path / f"e{n}"
        hs = [hashlib.sha256(str(i).encode()).digest() for i in range(n)]
        p.write_bytes(b"".join(hs))
        with hashlist.MerkleFile(p) as a:
            row, root = a.row_bytes(), a.root
        monkeypatch.setattr(hashlist, "_native_root", lambda: None)
        with hashlist.MerkleFile(p) as b:
            assert (b.row_bytes(), b.root) == (row, root)
        monkeypatch.undo()
        assert root.hex() == (merkle_root_hex(hs) if n else root_of([]).hex())


def test_local_evidence_fifo_and_oversize(tmp_path: Path) -> None:
    """From an evidence directory: a FIFO in the list's place is refused unread (never
    blocks), a file longer than the committed list is cut off and fails."""
    objects = tmp_path / "ev" / "objects"
    objects.mkdir(parents=True)
    os.mkfifo(objects / f"{NAME}.hashes")
    with pytest.raises(Unavailable, match="not a regular file"):
        fetch(str(tmp_path / "ev"), NAME, 10, tmp_path / "l")
    os.unlink(objects / f"{NAME}.hashes")
    (objects / f"{NAME}.hashes").write_bytes(encode_header(10) + bytes(32 * 11))
    with pytest.raises(Corrupt, match="longer than"):
        fetch(str(tmp_path / "ev"), NAME, 10, tmp_path / "l")
    assert not (tmp_path / "l").exists()


def test_an_index_naming_a_wrong_position_is_never_used(tmp_path: Path) -> None:
    """The positions file is derived (and may come from the cache): an index it names for
    a hash must hold that hash in the verified ordered list, else the answer is refused
    (the membership command then answers inconclusive with a hint), never a proof of the
    wrong dataset index."""
    from auditor.membership import answer
    from ledger.errors import MalformedError

    hs = [hashlib.sha256(str(i).encode()).digest() for i in range(300)]
    ev = tmp_path / "ev"
    fields = publish(ev / "objects", hs)
    got = index(str(ev), str(fields["hash_list"]), len(hs), cache_dir=None, work=tmp_path)
    try:
        q = hs[17]
        assert answer(q, got.ordered, got.srt, got.positions)["indexes"] == [17]
        data = bytearray(got.positions.read_bytes())
        rec = next(k for k in range(0, len(data), 40) if bytes(data[k:k + 32]) == q)
        data[rec + 32:rec + 40] = (18).to_bytes(8, "big")  # claims q sits at index 18
        got.positions.write_bytes(bytes(data))
        with pytest.raises(MalformedError, match="does not hold it"):
            answer(q, got.ordered, got.srt, got.positions)
    finally:
        got.close()
