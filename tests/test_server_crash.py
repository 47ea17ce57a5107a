"""SIGKILL mid-storm: a storm of concurrent ``POST /add`` (and some ``/add-batch``) against a
real server, which is killed with SIGKILL and restarted on the same database, three times.

After each restart: every statement that got a 200 is in the log at its index; the new
checkpoint is consistent with every checkpoint handed out before the kill; no index was
given to two statements; and each run continues where the log (not the client) says it
stands - a statement that was stored but not acknowledged comes back as a 409 duplicate
naming its index, one that was not stored is accepted.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from server_helpers import LogServer, Trainer, batch_body

from ledger.merkle import check_tree
from ledger.note import SignedCheckpoint, b64decode, open_checkpoint

CLIENTS = 24
ROUNDS = 3


@dataclass
class Client:
    trainer: Trainer
    acked: int = 0  # statements[:acked] are acknowledged
    indexes: list[int] = field(default_factory=list)


@dataclass
class Storm:
    server: LogServer
    clients: list[Client]
    acks: dict[int, bytes] = field(default_factory=dict)  # index -> statement
    checkpoints: list[SignedCheckpoint] = field(default_factory=list)

    def record(self, client: Client, reply: dict[str, object], statement: bytes) -> None:
        index = reply["index"]
        assert isinstance(index, int)
        assert index not in self.acks, f"index {index} handed out twice"
        self.acks[index] = statement
        client.indexes.append(index)
        cp = reply["checkpoint"]
        assert isinstance(cp, str)
        self.checkpoints.append(open_checkpoint(cp, self.server.vkey))


async def _run_client(storm: Storm, client: Client, http: httpx.AsyncClient,
                      rnd: random.Random) -> None:
    t = client.trainer
    try:
        while True:
            if client.acked == len(t.statements):
                t.steps(rnd.choice([1, 1, 1, 5]))
            todo = t.statements[client.acked:]
            if len(todo) > 1:
                r = await http.post("/add-batch", content=batch_body(todo))
                assert r.status_code in (200, 503), r.text
                if r.status_code == 200:
                    for reply, st in zip(r.json(), todo, strict=True):
                        storm.record(client, reply, st)
                    client.acked += len(todo)
            else:
                r = await http.post("/add", content=todo[0])
                assert r.status_code in (200, 503), r.text
                if r.status_code == 200:
                    storm.record(client, r.json(), todo[0])
                    client.acked += 1
    except httpx.TransportError:
        return  # the server died


def _storm(storm: Storm, seconds: float, seed: int) -> None:
    rnd = random.Random(seed)

    async def go() -> None:
        limits = httpx.Limits(max_connections=CLIENTS)
        async with httpx.AsyncClient(base_url=storm.server.url, timeout=10,
                                     limits=limits) as http:
            tasks = [asyncio.create_task(_run_client(storm, c, http, rnd))
                     for c in storm.clients]
            await asyncio.sleep(seconds)
            storm.server.kill()  # SIGKILL mid-storm: no shutdown, no flush
            await asyncio.gather(*tasks)

    asyncio.run(go())


def _resync(storm: Storm, c: httpx.Client) -> None:
    """Each client learns from the log where its run stands, and continues it."""
    for client in storm.clients:
        t = client.trainer
        if client.acked == len(t.statements):
            t.step()
        st = t.statements[client.acked]
        r = c.post("/add", content=st)
        if r.status_code == 409:  # stored before the kill, never acknowledged
            err = r.json()
            assert err["error"] == "duplicate", err
            index = err["index"]
            e = c.get("/entries", params={"start": index, "end": index + 1}).json()
            assert base64.b64decode(e["entries"][0]) == st
            storm.acks[index] = st
            client.indexes.append(index)
            client.acked += 1
            # statements sent in the same lost batch may be stored too
            while client.acked < len(t.statements):
                r = c.post("/add", content=t.statements[client.acked])
                if r.status_code != 409:
                    break
                storm.acks[r.json()["index"]] = t.statements[client.acked]
                client.indexes.append(r.json()["index"])
                client.acked += 1
            else:
                r = c.post("/add", content=t.step())
        assert r.status_code == 200, r.text
        storm.record(client, r.json(), t.statements[client.acked])
        client.acked += 1


def test_sigkill_mid_storm_loses_no_acknowledged_entry(tmp_path: Path) -> None:
    server = LogServer(tmp_path, "--open-registration")
    clients = [Client(Trainer()) for _ in range(CLIENTS)]
    storm = Storm(server, clients)
    t0 = time.monotonic()
    for rnd in range(ROUNDS):
        server.start()
        if rnd:
            with server.client() as c:
                _resync(storm, c)
        _storm(storm, seconds=0.6 + 0.3 * rnd, seed=rnd)
        assert server.proc is not None and server.proc.returncode == -9
        server.start()
        with server.client() as c:
            cp = open_checkpoint(c.get("/checkpoint").text, server.vkey)
            # every acknowledged statement is at its index
            assert storm.acks and max(storm.acks) < cp.size
            for start in range(0, cp.size, 1000):
                page = c.get("/entries", params={"start": start}).json()["entries"]
                for i, e in enumerate(page, start):
                    if i in storm.acks:
                        assert base64.b64decode(e) == storm.acks[i], f"index {i} changed"
            # the new checkpoint is consistent with every one handed out before the kill
            for old in {x.size: x for x in storm.checkpoints}.values():
                p = c.get("/proof/consistency", params={"from": old.size, "to": cp.size})
                check_tree([b64decode(h) for h in p.json()["hashes"]], cp.size, cp.root,
                           old.size, old.root)
            # the run index agrees with what the clients were told
            for client in clients:
                got = c.get(f"/runs/{client.trainer.run}").json()["indexes"]
                assert got[:len(client.indexes)] == client.indexes
        server.stop()
    assert len(storm.acks) > 100, "the storm should have written something"
    assert time.monotonic() - t0 < 60
