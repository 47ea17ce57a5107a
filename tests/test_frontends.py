"""Several frontends, one tree: two real ``potd ledger serve`` processes on one real
PostgreSQL database, concurrent clients writing through both.

Checked: every acknowledged statement is in the one tree at its index, exactly once; a
statement retried through the other frontend after a lost reply gets its existing index
(409 duplicate), never a second leaf; every checkpoint either frontend served is
consistent with the final tree, and each frontend's /checkpoint never goes back; a
``kill -9`` of one frontend mid-storm loses nothing acknowledged and the other keeps
serving; a PostgreSQL restart gives 503 with Retry-After, then recovery, no restart.
"""

from __future__ import annotations

import asyncio
import base64
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from pgcluster import PgCluster
from server_helpers import LogServer, Trainer, batch_body
from test_go_interop import b64, go_ok
from test_go_interop import potdcheck as _go_checker  # noqa: F401 (the fixture)

from ledger.log import Log
from ledger.merkle import check_tree, leaf_hash
from ledger.note import SignedCheckpoint, b64decode, open_checkpoint
from ledger.publish import publish_once

CLIENTS = 16


def _frontends(tmp: Path, url: str, n: int) -> list[LogServer]:
    (tmp / "f0").mkdir()
    first = LogServer(tmp / "f0", "--open-registration", "--flush-ms", "5", db=url)
    out = [first]
    for k in range(1, n):
        d = tmp / f"f{k}"
        d.mkdir()
        shutil.copy(first.keyfile, d / "log.key")
        out.append(LogServer(d, "--open-registration", "--flush-ms", "5", db=url))
    return out


@dataclass
class Client:
    trainer: Trainer
    acked: int = 0


@dataclass
class Storm:
    servers: list[LogServer]
    acks: dict[int, bytes] = field(default_factory=dict)
    served: list[SignedCheckpoint] = field(default_factory=list)
    duplicates: int = 0
    dead: set[int] = field(default_factory=set)
    statuses: dict[int, int] = field(default_factory=dict)

    def record(self, index: int, st: bytes, cp: str | None) -> None:
        old = self.acks.get(index)
        assert old is None or old == st, f"index {index} handed to two statements"
        self.acks[index] = st
        if cp is not None:
            self.served.append(open_checkpoint(cp, self.servers[0].vkey))


async def _client(storm: Storm, c: Client, https: list[httpx.AsyncClient],
                  rnd: random.Random, until: float) -> None:
    t = c.trainer
    while time.monotonic() < until or c.acked < len(t.statements):
        if c.acked == len(t.statements):
            t.steps(rnd.choice([1, 1, 4]))
        alive = [k for k in range(len(https)) if k not in storm.dead]
        k = rnd.choice(alive)
        todo = t.statements[c.acked:]
        try:
            if len(todo) > 1:
                r = await https[k].post("/add-batch", content=batch_body(todo))
            else:
                r = await https[k].post("/add", content=todo[0])
        except httpx.TransportError:
            await asyncio.sleep(0.05)  # lost reply (the frontend died): retry elsewhere
            continue
        storm.statuses[r.status_code] = storm.statuses.get(r.status_code, 0) + 1
        if r.status_code == 200:
            replies = r.json() if len(todo) > 1 else [r.json()]
            for reply, st in zip(replies, todo, strict=True):
                storm.record(reply["index"], st, reply["checkpoint"])
            c.acked += len(todo)
        elif r.status_code == 409:
            err = r.json()
            assert err["error"] == "duplicate", err  # stored, its reply was lost
            storm.record(err["index"], todo[0], None)
            storm.duplicates += 1
            c.acked += 1
        else:
            assert r.status_code == 503, r.text
            assert "Retry-After" in r.headers
            await asyncio.sleep(0.05)


def _run_storm(storm: Storm, clients: list[Client], seconds: float, kill_at: float | None,
               seed: int, event: tuple[float, Callable[[], None]] | None = None) -> None:
    rnd = random.Random(seed)

    async def go() -> None:
        https = [httpx.AsyncClient(base_url=s.url, timeout=20) for s in storm.servers]
        until = time.monotonic() + seconds
        tasks = [asyncio.create_task(_client(storm, c, https, rnd, until)) for c in clients]
        if kill_at is not None:
            await asyncio.sleep(kill_at)
            storm.servers[0].kill()  # SIGKILL mid-storm
            storm.dead.add(0)
        if event is not None:
            await asyncio.sleep(event[0])
            await asyncio.to_thread(event[1])
        await asyncio.gather(*tasks)
        for h in https:
            await h.aclose()

    asyncio.run(go())


def _check_tree(storm: Storm, server: LogServer) -> SignedCheckpoint:
    with server.client() as c:
        cp = open_checkpoint(c.get("/checkpoint").text, server.vkey)
        assert storm.acks and max(storm.acks) < cp.size
        seen: dict[bytes, int] = {}
        for start in range(0, cp.size, 1000):
            page = c.get("/entries", params={"start": start}).json()["entries"]
            for i, e in enumerate(page, start):
                raw = base64.b64decode(e)
                assert raw not in seen, f"statement at {seen.get(raw)} logged again at {i}"
                seen[raw] = i
                if i in storm.acks:
                    assert raw == storm.acks[i], f"index {i} changed"
        assert len(seen) == cp.size
        for old in {x.size: x for x in storm.served}.values():
            p = c.get("/proof/consistency", params={"from": old.size, "to": cp.size})
            check_tree([b64decode(h) for h in p.json()["hashes"]], cp.size, cp.root,
                       old.size, old.root)
    return cp


@pytest.mark.slow
def test_two_frontends_one_tree_survive_kill9(tmp_path: Path, pg_url: str) -> None:
    servers = _frontends(tmp_path, pg_url, 2)
    for s in servers:
        s.start()
    try:
        storm = Storm(servers)
        clients = [Client(Trainer()) for _ in range(CLIENTS)]
        _run_storm(storm, clients, seconds=4.0, kill_at=2.0, seed=1)
        assert servers[0].proc is not None and servers[0].proc.returncode == -9
        cp = _check_tree(storm, servers[1])
        assert len(storm.acks) == sum(c.acked for c in clients) > 200
        # the killed frontend comes back on the same tree
        servers[0].start()
        again = open_checkpoint(servers[0].checkpoint(), servers[0].vkey)
        assert again.size >= cp.size
        # each frontend's /checkpoint never goes back, and the two agree
        sizes: list[list[int]] = [[], []]
        t = Trainer()
        with servers[0].client() as a, servers[1].client() as b:
            assert a.post("/add", content=t.opened).status_code == 200
            for st in t.steps(20):
                (a if len(sizes[0]) % 2 else b).post("/add", content=st).raise_for_status()
                for k, h in enumerate((a, b)):
                    sizes[k].append(open_checkpoint(h.get("/checkpoint").text,
                                                    servers[0].vkey).size)
            # a retry through the other frontend gets the existing index
            dup = a.post("/add", content=t.statements[5])
            assert dup.status_code == 409 and dup.json()["error"] == "duplicate"
            assert b.post("/add", content=t.statements[5]).json()["index"] == \
                dup.json()["index"]
        for seq in sizes:
            assert seq == sorted(seq)
        time.sleep(0.5)  # an idle frontend catches up within its poll interval
        assert servers[0].checkpoint() == servers[1].checkpoint()
    finally:
        for s in servers:
            s.kill()


@pytest.mark.slow
def test_postgres_restart_gives_503_then_recovers(tmp_path: Path, pg_cluster: PgCluster
                                                  ) -> None:
    url = pg_cluster.new_database()
    (server,) = _frontends(tmp_path, url, 1)
    server.start()
    t = Trainer()
    try:
        with server.client() as c:
            assert c.post("/add", content=t.opened).status_code == 200
            pg_cluster.stop()
            try:
                r = c.post("/add", content=t.step())
                assert r.status_code == 503, r.text
                assert r.headers["Retry-After"] == "1"
                assert r.json()["error"] == "storage"
            finally:
                pg_cluster.start()
            deadline = time.monotonic() + 20
            while True:
                r = c.post("/add", content=t.statements[-1])
                if r.status_code == 200 or time.monotonic() > deadline:
                    break
                assert r.status_code == 503
                time.sleep(0.2)
            assert r.status_code == 200, r.text
            assert r.json()["index"] == 1
        # and mid-storm, through two frontends: 503s, recovery, nothing acknowledged lost
        (tmp_path / "f1").mkdir()
        shutil.copy(server.keyfile, tmp_path / "f1" / "log.key")
        other = LogServer(tmp_path / "f1", "--open-registration", "--flush-ms", "5", db=url)
        other.start()
        storm = Storm([server, other])
        clients = [Client(Trainer()) for _ in range(8)]

        def restart() -> None:
            pg_cluster.stop()
            time.sleep(0.5)
            pg_cluster.start()

        _run_storm(storm, clients, seconds=3.0, kill_at=None, seed=3, event=(0.7, restart))
        _check_tree(storm, other)
        assert storm.statuses.get(503, 0) > 0, "the restart should have been seen"
        other.kill()
    finally:
        server.kill()


@pytest.mark.slow
def test_go_verifies_the_tree_two_frontends_wrote(tmp_path: Path, pg_url: str,
                                                 request: pytest.FixtureRequest) -> None:
    """Go's tlog (tests/go) authenticates every tile and entry of the published tree and
    the consistency of every checkpoint either frontend served with the final one."""
    potdcheck: Path = request.getfixturevalue("_go_checker")  # skips without Go
    servers = _frontends(tmp_path, pg_url, 2)
    for s in servers:
        s.start()
    try:
        storm = Storm(servers)
        _run_storm(storm, [Client(Trainer()) for _ in range(8)], seconds=2.0, kill_at=None,
                   seed=2)
    finally:
        for s in servers:
            s.stop()
    log = Log.open(pg_url)
    try:
        mirror = tmp_path / "mirror"
        publish_once(log, str(mirror), fsync=False)
        n = log.size
        olds = sorted({c.size for c in storm.served if 0 < c.size < n})[:50]
        inclusion = []
        for i in sorted({0, n // 2, n - 1}):
            inclusion.append({"index": i, "leaf_hash": b64(leaf_hash(log.entries(i, i + 1)[0])),
                              "size": n, "proof": [b64(h) for h in log.inclusion_proof(i)]})
        req = {"vkey": str(log.verifier), "checkpoint": str(log.checkpoint()),
               "tiles_dir": str(mirror), "inclusion": inclusion,
               "roots": {str(m): b64(log.root_at(m)) for m in olds},
               "consistency": [{"from": m, "to": n,
                                "proof": [b64(h) for h in log.consistency_proof(m)]}
                               for m in olds]}
        out = go_ok(potdcheck, req)
    finally:
        log.store.close()
    assert out["size"] == n == len(storm.acks) and out["entries_checked"] == n
    assert out["consistency_checked"] == len(olds) > 0
