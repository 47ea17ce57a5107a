"""Honest verdicts when a replay cannot be carried out (brief: fail only on evidence of a
false claim). An evidence server that stops answering mid-audit, or a replay worker
that dies, leaves segments *not replayed*: the replay check is inconclusive, never a
failure of the trainer; evidence that is there but wrong still fails."""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2e import Env, LoopbackServer, checks, env  # noqa: F401 (the env fixture)

from auditor.audit import Audit, AuditOptions, pool_map


class _Evidence(LoopbackServer):
    """A loopback HTTP server over an evidence directory; once ``refuse`` is set it drops
    every connection asking for an object, without an answer (a server gone away), or
    answers ``status`` (a server shedding load)."""

    def __init__(self, root: Path, status: int = 0) -> None:
        self.refuse = threading.Event()
        self.corrupt = 0  # the next ``corrupt`` objects are served with a byte flipped
        self.dropped = 0
        self.corrupted: list[str] = []

        def body(h: http.server.BaseHTTPRequestHandler) -> None:
            rel = h.path.lstrip("/")
            if self.corrupt and rel.startswith("objects/") and (root / rel).is_file():
                self.corrupt -= 1
                self.corrupted.append(rel)
                data = bytearray((root / rel).read_bytes())
                data[len(data) // 2] ^= 1
                h.send_response(200)
                h.send_header("Content-Length", str(len(data)))
                h.end_headers()
                h.wfile.write(bytes(data))
                return
            if self.refuse.is_set() and rel.startswith("objects/"):
                self.dropped += 1
                if status:  # a busy server: an error status, no evidence
                    h.send_error(status)
                h.close_connection = True
                return
            p = root / rel
            if ".." in rel or not p.is_file():
                h.send_error(404)
                return
            data = p.read_bytes()
            h.send_response(200)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)

        super().__init__(body)


def _audit(env: Env, ev: _Evidence,  # noqa: F811
           on_segment: Callable[[int], None]) -> dict[str, Any]:
    """Train a run and audit it against ``ev`` (every step drawn), calling
    ``on_segment(done)`` after each replayed segment; the server is closed after."""
    s = env.train()
    try:
        def progress(what: str, done: int, total: int) -> None:
            if what == "replay":
                on_segment(done)

        with env.client(state_dir=str(env.dir / "state"), proofs="tiles") as c:
            return Audit(c, AuditOptions(run=s.run_id, evidence=ev.url, samples=1000),
                         progress).run()
    finally:
        ev.close()


@pytest.mark.parametrize("status", [0, 503])
def test_evidence_server_gone_mid_replay_is_inconclusive(env: Env,  # noqa: F811
                                                         status: int) -> None:
    ev = _Evidence(env.dir / "ev-run", status)

    def on_segment(done: int) -> None:
        if done == 1:  # after the first segment: server gone
            ev.refuse.set()

    rep = _audit(env, ev, on_segment)
    assert ev.dropped > 0
    got = checks(rep)
    assert got["replay"] == "inconclusive", rep["checks"]
    assert rep["verdict"] == "inconclusive", [c for c in rep["checks"] if c["status"] == "fail"]
    segs = rep["replay"]["segments"]
    assert segs[0]["match"] and not segs[0]["unavailable"]
    gone = [x for x in segs if x["unavailable"]]
    assert gone and all(("HTTP 503" if status else "cannot fetch evidence") in x["error"]
                        for x in gone)
    replay = next(c for c in rep["checks"] if c["name"] == "replay")
    assert "could not be replayed" in replay["summary"] and "retry" in replay["evidence"]["hint"]


def test_wrong_evidence_fails_even_when_later_segments_are_unavailable(
        env: Env) -> None:  # noqa: F811
    """A trainer cannot turn evidence of a false claim into "inconclusive" by making its
    server drop the rest of the audit: a segment whose evidence is wrong fails the replay,
    whatever happens to the segments after it."""
    ev = _Evidence(env.dir / "ev-run")

    def on_segment(done: int) -> None:
        if done == 1:  # the next object is wrong, then silence
            ev.corrupt = 1
        if done == 2:
            ev.refuse.set()

    rep = _audit(env, ev, on_segment)
    assert ev.corrupted and ev.dropped > 0
    segs = rep["replay"]["segments"]
    assert segs[0]["match"] and not segs[0]["unavailable"]
    assert not segs[1]["match"] and not segs[1]["unavailable"], segs[1]
    assert any(x["unavailable"] for x in segs[2:]), segs
    assert checks(rep)["replay"] == "fail", rep["checks"]
    assert rep["verdict"] == "fail"
    replay = next(c for c in rep["checks"] if c["name"] == "replay")
    assert f"steps {segs[1]['start']}..{segs[1]['end']}" in replay["summary"]
    # the check lists the failed segment only, not the ones that were never replayed
    assert [x["start"] for x in replay["evidence"]["segments"]] == [segs[1]["start"]]


def _die_on_one(job: int) -> int:
    if job == 1:
        os._exit(3)  # a worker killed mid-replay (out of memory, say)
    return job * 10


def test_a_dead_replay_worker_is_reported_not_raised() -> None:
    got = pool_map(_die_on_one, [0, 1, 2, 3], 2, lost=lambda job, why: ("lost", job, why))
    assert got[1][:2] == ("lost", 1) and "died" in got[1][2]
    # the jobs the broken pool took down with it are lost too, never a traceback
    assert all(g == j * 10 or (g[0] == "lost" and g[1] == j) for j, g in enumerate(got))
