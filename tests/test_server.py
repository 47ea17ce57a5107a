"""The log server end to end: a real ``potd ledger serve`` on a loopback port with a real
SQLite file, spoken to with plain httpx. Every endpoint, replies verified against the
pinned log key, client-side proofs from HTTP-fetched tiles equal to the server's, each
bad-input class (status, error code, tree unchanged), pushback, the allow-list commands,
graceful shutdown, and Go's x/mod verifying what the server serves."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_helpers import LogServer, Trainer, batch_body, potd

from ledger.errors import StorageError
from ledger.log import Log
from ledger.merkle import (
    check_record,
    check_tree,
    leaf_hash,
    node_hash,
    prove_record,
    prove_tree,
    split_stored_hash_index,
    tree_hash,
)
from ledger.note import SignedCheckpoint, Signer, b64decode, open_checkpoint
from ledger.sequencer import Rejected, Sequencer
from ledger.statement import canonical_json, parse_statement
from ledger.storage import SQLiteStore
from ledger.tiles import TILE_WIDTH, Tile, TileHashReader, decode_bundle, tiles_for_size

try:  # the Go checker's harness; its fixture builds tests/go/potdcheck
    from test_go_interop import go_ok, potdcheck  # noqa: F401
    HAVE_GO_HARNESS = True
except ImportError:
    HAVE_GO_HARNESS = False


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LogServer]:
    s = LogServer(tmp_path_factory.mktemp("server")).start()
    yield s
    assert s.stop() == 0, s.stderr()
    assert "internal error" not in s.stderr(), s.stderr()


def allow(server: LogServer, *trainers: Trainer) -> None:
    store = SQLiteStore(server.db)
    store.ensure_indexes()
    for t in trainers:
        store.set_signer_allowed(t.vkey, True)
    store.close()


def allowed_trainer(server: LogServer) -> Trainer:
    t = Trainer()
    allow(server, t)
    return t


def check_reply(server: LogServer, reply: dict[str, Any], statement: bytes) -> SignedCheckpoint:
    """A write reply: the checkpoint verifies under the log key and includes the entry."""
    cp = open_checkpoint(reply["checkpoint"], server.vkey)
    leaf = b64decode(reply["leaf_hash"])
    assert leaf == leaf_hash(statement)
    proof = [b64decode(h) for h in reply["inclusion_proof"]]
    check_record(proof, cp.size, cp.root, reply["index"], leaf)
    return cp


def add(c: httpx.Client, statement: bytes) -> httpx.Response:
    return c.post("/add", content=statement, headers={"content-type": "application/json"})


# --- writes ----------------------------------------------------------------------------

def test_health_and_openapi(server: LogServer) -> None:
    with server.client() as c:
        h = c.get("/health").json()
        assert h["status"] == "ok" and h["origin"] == server.vkey.name
        doc = c.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for path in ("/add", "/add-batch", "/proof/inclusion", "/proof/consistency", "/entries",
                 "/runs/{run}", "/health", "/checkpoint"):
        assert path in doc["paths"], path
    # every field /health returns is described
    assert set(h) <= set(doc["components"]["schemas"]["Health"]["properties"]), h
    assert str(server.vkey) in doc["info"]["description"]


def test_run_lifecycle_with_beacon(server: LogServer) -> None:
    t = allowed_trainer(server)
    with server.client() as c:
        r = add(c, t.opened)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"
        opened = r.json()
        cp0 = check_reply(server, opened, t.opened)
        beacon = open_checkpoint(opened["beacon_checkpoint"], server.vkey)
        assert beacon.size == opened["index"] + 1 and beacon.checkpoint.extensions == ()
        assert cp0.size >= beacon.size
        indexes = [opened["index"]]
        for _ in range(3):
            st = t.step()
            r = add(c, st)
            assert r.status_code == 200, r.text
            assert "beacon_checkpoint" not in r.json()
            cp = check_reply(server, r.json(), st)
            indexes.append(r.json()["index"])
        close = t.close()
        r = add(c, close)
        assert r.status_code == 200, r.text
        cp = check_reply(server, r.json(), close)
        indexes.append(r.json()["index"])
        # every checkpoint handed out is consistent with the latest
        p = c.get("/proof/consistency", params={"from": beacon.size, "to": cp.size}).json()
        check_tree([b64decode(h) for h in p["hashes"]], cp.size, cp.root, beacon.size,
                   beacon.root)
        assert c.get(f"/runs/{t.run}").json() == {"run": t.run, "indexes": indexes}
        # the run's statements are the log's entries at those indexes
        for i, st in zip(indexes, t.statements, strict=True):
            e = c.get("/entries", params={"start": i, "end": i + 1}).json()
            assert base64.b64decode(e["entries"][0]) == st
        r = add(c, t.step())
        assert r.status_code == 409 and r.json()["error"] == "run_closed"


def test_add_batch_is_all_or_nothing(server: LogServer) -> None:
    t = allowed_trainer(server)
    good = [t.opened, *t.steps(4)]
    bad = list(good)
    bad[3] = Trainer(t.signer).step()  # a step of another run in the middle
    with server.client() as c:
        before = server.checkpoint()
        r = c.post("/add-batch", content=batch_body(bad))
        assert r.status_code == 409, r.text
        assert r.json()["statement"] == 3 and r.json()["error"] == "unknown_run"
        assert server.checkpoint() == before
        r = c.post("/add-batch", content=batch_body(good))
        assert r.status_code == 200, r.text
        replies = r.json()
        assert [x["index"] for x in replies] == list(range(replies[0]["index"],
                                                           replies[0]["index"] + 5))
        for reply, st in zip(replies, good, strict=True):
            check_reply(server, reply, st)
        assert "beacon_checkpoint" in replies[0] and "beacon_checkpoint" not in replies[1]


def test_concurrent_adds_are_pooled(server: LogServer) -> None:
    trainers = [Trainer() for _ in range(40)]
    allow(server, *trainers)
    flushes0 = httpx.get(server.url + "/health").json()["flushes"]

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            return await asyncio.gather(*[c.post("/add", content=t.opened) for t in trainers])

    rs = asyncio.run(go())
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs if r.status_code != 200]
    indexes = [r.json()["index"] for r in rs]
    assert len(set(indexes)) == len(indexes)
    for r, t in zip(rs, trainers, strict=True):
        check_reply(server, r.json(), t.opened)
    flushes = httpx.get(server.url + "/health").json()["flushes"] - flushes0
    assert flushes < len(trainers), "concurrent submissions should share flushes"


# --- reads -----------------------------------------------------------------------------

def test_read_endpoints(server: LogServer) -> None:
    t = allowed_trainer(server)
    with server.client() as c:
        c.post("/add-batch", content=batch_body([t.opened, *t.steps(9)])).raise_for_status()
        r = c.get("/checkpoint")
        assert r.headers["content-type"] == "text/plain; charset=utf-8"
        assert r.headers["cache-control"] == "no-cache"
        cp = open_checkpoint(r.text, server.vkey)
        n = cp.size
        e = c.get("/entries", params={"start": 0}).json()
        assert e["start"] == 0 and len(e["entries"]) == min(n, 1000)
        entries = [base64.b64decode(x) for x in e["entries"]]
        for i in random.Random(1).sample(range(n), 10):
            by_index = c.get("/proof/inclusion", params={"index": i}).json()
            assert by_index["index"] == i and by_index["size"] == n
            check_record([b64decode(h) for h in by_index["hashes"]], n, cp.root, i,
                         leaf_hash(entries[i]))
            by_leaf = c.get("/proof/inclusion",
                            params={"leaf_hash": leaf_hash(entries[i]).hex(), "size": n}).json()
            assert by_leaf == by_index
        for m in (1, 2, n // 2, n - 1, n):
            p = c.get("/proof/consistency", params={"from": m}).json()
            old = tree_hash(m, _LeafReader(entries))
            check_tree([b64decode(h) for h in p["hashes"]], n, cp.root, m, old)
        assert c.get("/proof/consistency", params={"from": 0, "to": 0}).json()["hashes"] == []
        r = c.get("/runs/" + "0" * 64)
        assert r.status_code == 404 and r.json()["error"] == "not_found"
        for path, params in [
            ("/proof/inclusion", {"index": "-1"}), ("/proof/inclusion", {"index": "01"}),
            ("/proof/inclusion", {"index": str(n)}), ("/proof/inclusion", {}),
            ("/proof/inclusion", {"index": "0", "size": str(n + 1)}),
            ("/proof/inclusion", {"leaf_hash": "AB" * 32}),
            ("/proof/inclusion", {"leaf_hash": "ab" * 32, "index": "0"}),
            ("/proof/consistency", {"from": "3", "to": "2"}),
            ("/proof/consistency", {"from": str(n + 1)}),
            ("/entries", {"start": str(n + 1)}), ("/entries", {"start": "x"}),
            ("/runs/XYZ", {}), ("/tile/0/1", {}), ("/tile/0/000.p/0", {}),
        ]:
            r = c.get(path, params=params)
            assert r.status_code == 400, (path, params, r.text)
            assert set(r.json()) >= {"error", "detail"}
        r = c.get("/proof/inclusion", params={"leaf_hash": "ab" * 32})
        assert r.status_code == 404
        r = c.get("/tile/0/999")
        assert r.status_code == 404 and r.json()["error"] == "not_found"
        assert c.get("/nowhere").status_code == 404
        r = c.put("/add", content=b"{}")
        assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"


class _LeafReader:
    """A HashReader computing stored hashes from a list of entries (test oracle)."""

    def __init__(self, entries: list[bytes]) -> None:
        self.levels = [[leaf_hash(e) for e in entries]]
        while len(self.levels[-1]) > 1:
            lv = self.levels[-1]
            self.levels.append([node_hash(lv[i], lv[i + 1]) for i in range(0, len(lv) - 1, 2)])

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        return [self.levels[lv][n] for lv, n in map(split_stored_hash_index, indexes)]


def test_tiles_give_the_servers_proofs(server: LogServer) -> None:
    """Client-side proofs from HTTP-fetched tiles equal the server-side proofs."""
    t = allowed_trainer(server)
    with server.client() as c:
        sts = [t.opened, *t.steps(TILE_WIDTH * 2 + 40)]
        for k in range(0, len(sts), 200):
            c.post("/add-batch", content=batch_body(sts[k:k + 200])).raise_for_status()
        cp = open_checkpoint(c.get("/checkpoint").text, server.vkey)
        n = cp.size
        fetched: dict[str, httpx.Response] = {}

        def fetch(tile: Tile) -> bytes:
            r = c.get("/" + tile.path())
            assert r.status_code == 200, (tile.path(), r.text)
            assert r.headers["content-type"] == "application/octet-stream"
            fetched[tile.path()] = r
            return r.content

        reader = TileHashReader(fetch)
        assert tree_hash(n, reader) == cp.root
        rnd = random.Random(2)
        for i in [0, n - 1, TILE_WIDTH - 1, TILE_WIDTH, *rnd.sample(range(n), 30)]:
            ours = prove_record(n, i, reader)
            theirs = c.get("/proof/inclusion", params={"index": i}).json()["hashes"]
            assert [base64.b64encode(h).decode() for h in ours] == theirs
        for m in [1, TILE_WIDTH, n - 1, *rnd.sample(range(1, n), 10)]:
            ours = prove_tree(n, m, reader)
            theirs = c.get("/proof/consistency", params={"from": m}).json()["hashes"]
            assert [base64.b64encode(h).decode() for h in ours] == theirs
        for path, r in fetched.items():
            full = ".p/" not in path
            assert (r.headers["cache-control"] == "public, max-age=31536000, immutable") == full
        # entry bundles hold the entries whose leaf hashes the level-0 tiles hold
        for tile in tiles_for_size(n):
            if tile.level != 0:
                continue
            bundle = Tile(-1, tile.n, tile.width)
            r = c.get("/" + bundle.path())
            assert r.status_code == 200
            assert ("immutable" in r.headers["cache-control"]) == bundle.full
            entries = decode_bundle(r.content, expect=tile.width)
            hashes = fetch(tile)
            assert b"".join(leaf_hash(e) for e in entries) == hashes
        # a partial tile of any width up to the tree's is served, and is a prefix
        assert c.get("/tile/0/000.p/5").content == fetch(Tile(0, 0))[:5 * 32]


@pytest.mark.go
@pytest.mark.skipif(not HAVE_GO_HARNESS, reason="tests/test_go_interop.py is not available")
def test_go_verifies_what_the_server_serves(server: LogServer, tmp_path: Path,
                                            potdcheck: Path) -> None:
    """Go's x/mod (tests/go/potdcheck) checks checkpoint, proofs and tiles fetched over HTTP."""
    binary = potdcheck
    t = allowed_trainer(server)
    mirror = tmp_path / "mirror"
    with server.client() as c:
        sts = [t.opened, *t.steps(300)]
        c.post("/add-batch", content=batch_body(sts)).raise_for_status()
        old = open_checkpoint(c.get("/checkpoint").text, server.vkey)
        c.post("/add", content=t.step()).raise_for_status()
        text = c.get("/checkpoint").text
        cp = open_checkpoint(text, server.vkey)
        for tile in tiles_for_size(cp.size):
            for tl in (tile, Tile(-1, tile.n, tile.width)) if tile.level == 0 else (tile,):
                path = mirror / tl.path()
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(c.get("/" + tl.path()).content)
        (mirror / "checkpoint").write_text(text)
        entries = [base64.b64decode(e) for e in
                   c.get("/entries", params={"start": 0, "end": cp.size}).json()["entries"]]
        inclusion = []
        for i in random.Random(3).sample(range(cp.size), 20):
            p = c.get("/proof/inclusion", params={"index": i}).json()
            inclusion.append({"index": i, "size": cp.size, "proof": p["hashes"],
                              "leaf_hash": base64.b64encode(leaf_hash(entries[i])).decode()})
        p = c.get("/proof/consistency", params={"from": old.size}).json()
        consistency = [{"from": old.size, "to": cp.size, "proof": p["hashes"]}]
    out = go_ok(binary, {"vkey": str(server.vkey), "checkpoint": text,
                         "roots": {str(old.size): base64.b64encode(old.root).decode()},
                         "inclusion": inclusion, "consistency": consistency,
                         "tiles_dir": str(mirror)})
    assert out["size"] == cp.size and out["inclusion_checked"] == 20


# --- bad input ---------------------------------------------------------------------------

def _flip_sig(statement: bytes) -> bytes:
    d = json.loads(statement)
    sig = bytearray(base64.b64decode(d["sig"]))
    sig[10] ^= 0x40
    d["sig"] = base64.b64encode(bytes(sig)).decode()
    return canonical_json(d)


def _bad_cases() -> dict[str, Callable[[LogServer], tuple[str, bytes, int, str]]]:
    """name -> (server -> (path, body, status, error code))."""

    def opened(s: LogServer) -> Trainer:
        t = allowed_trainer(s)
        with s.client() as c:
            add(c, t.opened).raise_for_status()
        return t

    def wrong_seq(s: LogServer) -> tuple[str, bytes, int, str]:
        t = opened(s)
        t.step()
        return "/add", t.step(), 409, "wrong_seq"

    def wrong_prev(s: LogServer) -> tuple[str, bytes, int, str]:
        t = opened(s)
        return "/add", t.step(prev="00" * 32), 409, "wrong_prev"

    def wrong_signer(s: LogServer) -> tuple[str, bytes, int, str]:
        t = opened(s)
        other = allowed_trainer(s)
        other.run, other.statements = t.run, list(t.statements)
        return "/add", other.step(), 403, "wrong_signer"

    def closed(s: LogServer) -> tuple[str, bytes, int, str]:
        t = opened(s)
        with s.client() as c:
            add(c, t.close()).raise_for_status()
        return "/add", t.step(), 409, "run_closed"

    def big(s: LogServer) -> tuple[str, bytes, int, str]:
        t = allowed_trainer(s)
        return "/add", Trainer(t.signer, pad="x" * 70000).opened, 413, "too_large"

    def big_in_batch(s: LogServer) -> tuple[str, bytes, int, str]:
        t = allowed_trainer(s)
        return ("/add-batch", batch_body([t.opened, Trainer(t.signer, pad="x" * 66000).opened]),
                413, "too_large")

    def non_canonical(s: LogServer) -> tuple[str, bytes, int, str]:
        t = allowed_trainer(s)
        return "/add", json.dumps(json.loads(t.opened), indent=1).encode(), 400, "non_canonical"

    def batch_bad_sig(s: LogServer) -> tuple[str, bytes, int, str]:
        t = allowed_trainer(s)
        return "/add-batch", batch_body([t.opened, _flip_sig(t.step())]), 401, "bad_signature"

    return {
        "malformed_json": lambda s: ("/add", b'{"body":', 400, "malformed"),
        "empty_body": lambda s: ("/add", b"", 400, "malformed"),
        "not_a_statement": lambda s: ("/add", b'{"a":1}', 400, "malformed"),
        "float": lambda s: ("/add", b'{"a":1.5}', 400, "malformed"),
        "non_canonical": non_canonical,
        "bad_signature": lambda s: ("/add", _flip_sig(allowed_trainer(s).opened), 401,
                                    "bad_signature"),
        "unknown_signer": lambda s: ("/add", Trainer().opened, 403, "signer_not_allowed"),
        "wrong_signer": wrong_signer,
        "wrong_seq": wrong_seq,
        "wrong_prev": wrong_prev,
        "unknown_run": lambda s: ("/add", Trainer(allowed_trainer(s).signer).step(), 409,
                                  "unknown_run"),
        "run_closed": closed,
        "entry_too_large": big,
        "batch_entry_too_large": big_in_batch,
        "batch_malformed": lambda s: ("/add-batch", b"[1,2]", 400, "malformed"),
        "batch_empty": lambda s: ("/add-batch", b"[]", 400, "malformed"),
        "batch_bad_signature": batch_bad_sig,
    }


@pytest.mark.parametrize("case", sorted(_bad_cases()))
def test_bad_input(server: LogServer, case: str) -> None:
    path, body, status, code = _bad_cases()[case](server)
    before, size = server.checkpoint(), server.size()
    with server.client() as c:
        r = c.post(path, content=body)
    assert r.status_code == status, r.text
    err = r.json()
    assert err["error"] == code and err["detail"], err
    assert server.size() == size and server.checkpoint() == before


def test_duplicate_reports_the_existing_index(server: LogServer) -> None:
    t = allowed_trainer(server)
    with server.client() as c:
        first = add(c, t.opened).json()
        size = server.size()
        r = add(c, t.opened)
        assert r.status_code == 409
        assert r.json()["error"] == "duplicate" and r.json()["index"] == first["index"]
        st = t.step()
        add(c, st).raise_for_status()
        r = c.post("/add-batch", content=batch_body([st]))
        assert r.status_code == 409, r.text
        assert r.json()["error"] == "duplicate" and r.json()["statement"] == 0
        assert r.json()["index"] > first["index"]
        assert server.size() == size + 1


def test_limits_and_pushback(tmp_path: Path) -> None:
    with LogServer(tmp_path, "--max-pending", "4", "--max-batch", "20",
                   "--max-request-bytes", "20000", "--open-registration") as s:
        t = Trainer()
        with s.client() as c:
            r = c.post("/add-batch", content=batch_body([t.opened, *t.steps(25)]))
            assert r.status_code == 413 and r.json()["error"] == "too_large"
            r = c.post("/add-batch", content=batch_body([t.opened, *t.statements[1:21]]))
            assert r.status_code == 413  # 21 statements, over the 20-per-request limit
            assert s.size() == 0
        trainers = [Trainer() for _ in range(60)]

        async def go() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=s.url, timeout=30) as ac:
                return await asyncio.gather(*[ac.post("/add", content=x.opened)
                                              for x in trainers])

        rs = asyncio.run(go())
        codes = [r.status_code for r in rs]
        assert set(codes) <= {200, 503}, codes
        assert 503 in codes, "a pool over --max-pending must push back"
        for r in rs:
            if r.status_code == 503:
                assert r.json()["error"] == "pushback" and int(r.headers["retry-after"]) >= 1
        assert s.size() == codes.count(200)
        with s.client() as c:  # retrying later succeeds
            for r, x in zip(rs, trainers, strict=True):
                if r.status_code == 503:
                    assert add(c, x.opened).status_code == 200
        assert s.size() == len(trainers)


def test_allow_and_deny_commands(tmp_path: Path) -> None:
    with LogServer(tmp_path) as s:
        t = Trainer()
        with s.client() as c:
            assert add(c, t.opened).json()["error"] == "signer_not_allowed"
            r = potd("ledger", "allow", "--db", str(s.db), t.vkey)
            assert r.returncode == 0 and "allowed" in r.stdout, r.stderr
            assert add(c, t.opened).status_code == 200
            r = potd("ledger", "deny", "--db", str(s.db), t.vkey)
            assert r.returncode == 0 and "not allowed" in r.stdout, r.stderr
            denied = add(c, t.step())
            assert denied.status_code == 403 and denied.json()["error"] == "signer_not_allowed"
        r = potd("ledger", "allow", "--db", str(s.db), "garbage")
        assert r.returncode != 0 and "verifier key" in r.stderr
        witness = Signer.generate("w.example", 0x04)
        r = potd("ledger", "allow", "--db", str(s.db), str(witness.verifier))
        assert r.returncode == 2 and "Ed25519" in r.stderr


def test_graceful_shutdown_flushes_the_pool(tmp_path: Path) -> None:
    s = LogServer(tmp_path, "--open-registration").start()
    trainers = [Trainer() for _ in range(50)]
    results: list[httpx.Response | Exception] = []

    def storm() -> None:
        async def go() -> list[httpx.Response | BaseException]:
            async with httpx.AsyncClient(base_url=s.url, timeout=30) as ac:
                return await asyncio.gather(*[ac.post("/add", content=x.opened)
                                              for x in trainers], return_exceptions=True)
        results.extend(x if isinstance(x, (httpx.Response, Exception)) else Exception(x)
                       for x in asyncio.run(go()))

    th = threading.Thread(target=storm)
    th.start()
    time.sleep(0.15)
    assert s.proc is not None
    s.proc.send_signal(signal.SIGTERM)
    th.join(60)
    assert s.proc.wait(30) == 0, s.stderr()
    ok = [(r.json()["index"], x.opened) for r, x in zip(results, trainers, strict=True)
          if isinstance(r, httpx.Response) and r.status_code == 200]
    s.start()
    try:
        with s.client() as c:
            for index, st in ok:
                e = c.get("/entries", params={"start": index, "end": index + 1}).json()
                assert base64.b64decode(e["entries"][0]) == st
    finally:
        s.stop()


# --- the sequencer in process: storage failure, batched proofs ------------------------------

class _FailOnce(SQLiteStore):
    fail = False

    def append(self, *a: Any, **kw: Any) -> None:
        if self.fail:
            self.fail = False
            raise StorageError("injected: disk full")
        super().append(*a, **kw)


def test_storage_failure_answers_503_and_stores_nothing(tmp_path: Path) -> None:
    signer = Signer.generate("potd.test/fail")
    Log.create(str(tmp_path / "log.db"), signer).store.close()
    store = _FailOnce(tmp_path / "log.db")
    store.ensure_indexes()
    log = Log(store, signer)
    t, u = Trainer(), Trainer()

    async def go() -> None:
        seq = Sequencer(log, open_registration=True)
        await seq.start()
        await seq.submit([parse_statement(t.opened)], batch=False)
        store.fail = True
        with pytest.raises(StorageError):
            await seq.submit([parse_statement(t.step())], batch=False)
        assert seq.log.size == 1
        # the failed statement was not admitted: its seq is still free
        ok = json.loads(await seq.submit([parse_statement(t.statements[-1])], batch=False))
        assert ok["index"] == 1
        with pytest.raises(Rejected):
            await seq.submit([parse_statement(u.step())], batch=False)
        await seq.close()

    asyncio.run(go())
    assert store.run_indexes(t.run) == [0, 1]


def test_batched_proofs_equal_single_proofs(tmp_path: Path) -> None:
    log = Log.create(str(tmp_path / "log.db"), Signer.generate("potd.test/proofs"))
    rnd = random.Random(4)
    for size in range(1, 140):
        log.append([b"%d" % size])
        want = list(range(size)) if size < 40 else rnd.sample(range(size), 20) + [size - 1] * 2
        assert log.inclusion_proofs(want, size) == [prove_record(size, i, log.store)
                                                    for i in want]
    assert log.inclusion_proofs([], 5) == []


def test_serve_help_documents_the_options() -> None:
    r = potd("ledger", "serve", "--help")
    for opt in ("--flush-ms", "--max-pending", "--max-request-bytes", "--open-registration"):
        assert opt in r.stdout


def test_batch_signatures_verified_in_parallel_name_the_first_bad_one(
        server: LogServer) -> None:
    """A batch large enough to be verified in several parallel chunks: with bad
    signatures in two chunks the error still names the lowest one, and nothing is
    stored; the same batch with good signatures is accepted whole."""
    t = allowed_trainer(server)
    good = [t.opened, *t.steps(599)]
    bad = list(good)
    bad[450] = _flip_sig(bad[450])
    bad[130] = _flip_sig(bad[130])
    with server.client() as c:
        before = server.checkpoint()
        r = c.post("/add-batch", content=batch_body(bad))
        assert r.status_code == 401, r.text
        assert r.json()["error"] == "bad_signature" and r.json()["statement"] == 130
        assert "statement #130" in r.json()["detail"]
        assert server.checkpoint() == before
        r = c.post("/add-batch", content=batch_body(good))
        assert r.status_code == 200, r.text
        assert len(r.json()) == 600
