"""Hostile load against a real ``potd ledger serve`` (issue 13): every case gets a clear
answer within bounded time and memory, and ``/health`` keeps answering.

Each test is bounded in requests and wall time and talks to 127.0.0.1 only. Memory is
the server's RSS from /proc (Linux); the bounds are generous, the failures they catch
are not (hundreds of MiB).
"""

from __future__ import annotations

import concurrent.futures
import json
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ledger.log import Log
from tests.server_helpers import POTD, REPO, LogServer, Trainer, batch_body

MiB = 1 << 20

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads the server's RSS from /proc")


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def pid_of(srv: LogServer) -> int:
    assert srv.proc is not None
    return srv.proc.pid


def health(srv: LogServer, timeout: float = 5) -> httpx.Response:
    return httpx.get(srv.url + "/health", timeout=timeout)


def allow(srv: LogServer, *trainers: Trainer) -> None:
    store = Log.open(str(srv.db)).store  # read-only: no writer lock
    for t in trainers:
        store.set_signer_allowed(t.vkey, True)  # type: ignore[attr-defined]
    store.close()


def test_request_bodies_share_a_budget_and_memory_comes_back(tmp_path: Path) -> None:
    """16 clients each hold an 8 MiB body open (all but its last byte): only the 32 MiB
    budget is buffered, the others get 503 + Retry-After at once; RSS stays near the
    budget and drops back once they leave."""
    with LogServer(tmp_path, "--max-request-bytes", str(8 * MiB),
                   "--max-buffered-bytes", str(32 * MiB)) as srv:
        pid = pid_of(srv)
        base = rss(pid)
        head = (f"POST /add-batch HTTP/1.1\r\nHost: x\r\nContent-Length: {8 * MiB}\r\n"
                "Content-Type: application/json\r\n\r\n").encode()

        def hold(_: int) -> tuple[socket.socket, bytes]:
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            s.sendall(head)
            s.settimeout(3)
            try:
                s.sendall(b" " * (8 * MiB - 1))
            except OSError:  # a refused request is not read further
                pass
            s.settimeout(1)
            try:
                return s, s.recv(4096)
            except OSError:
                return s, b""  # still held: the server waits for the last byte

        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(16) as ex:
            held = list(ex.map(hold, range(16)))
        refused = [r for _, r in held if r.startswith(b"HTTP/1.1 503")]
        assert len(refused) >= 11, [r[:40] for _, r in held]
        assert all(b"retry-after: 1" in r.lower() for r in refused)
        assert b"bytes of request bodies" in refused[0]
        h = health(srv)
        assert h.status_code == 200 and h.json()["buffered_bytes"] <= 32 * MiB
        t = Trainer()  # single writes are not shut out by the held budget
        r = httpx.post(srv.url + "/add", content=t.opened, timeout=10)
        assert r.status_code == 403, r.text  # (not allow-listed: but read and judged)
        grown = rss(pid) - base
        assert grown < 90 * MiB, f"RSS grew {grown / MiB:.0f} MiB with 32 MiB budgeted"
        for s, _ in held:
            s.close()
        deadline = time.monotonic() + 10
        while health(srv).json()["buffered_bytes"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert health(srv).json()["buffered_bytes"] == 0
        time.sleep(0.2)
        after = rss(pid) - base
        assert after < 40 * MiB, f"RSS still {after / MiB:.0f} MiB above the start"
        assert time.monotonic() - t0 < 30


def test_slow_body_gets_408(tmp_path: Path) -> None:
    with LogServer(tmp_path, "--body-timeout", "1") as srv:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        s.sendall(b"POST /add HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        t0 = time.monotonic()
        reply = b""
        while b"}" not in reply and time.monotonic() - t0 < 5:
            reply += s.recv(4096)
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert b"request_timeout" in reply and time.monotonic() - t0 < 5
        s.close()
        assert health(srv).json()["buffered_bytes"] == 0


def _fd_limit_1024() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


def test_slowloris_cannot_starve_health(tmp_path: Path) -> None:
    """1,100 connections that never finish their headers, on a server limited to 1,024
    open files: /health and reads still answer, each within a second or two."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1300:
        pytest.skip(f"this test process may open only {soft} files; it needs 1,300")
    srv = LogServer(tmp_path)
    srv.preexec = _fd_limit_1024
    with srv:
        attackers: list[socket.socket] = []
        try:
            for _ in range(1100):
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the end
                attackers.append(s)
            t0 = time.monotonic()
            worst = 0.0
            for _ in range(6):  # a fresh client each time, as a monitor would
                t = time.monotonic()
                r = httpx.get(srv.url + "/health", timeout=5)
                assert r.status_code == 200
                assert httpx.get(srv.url + "/checkpoint", timeout=5).status_code == 200
                worst = max(worst, time.monotonic() - t)
                for s in attackers[:50]:  # keep dribbling header bytes
                    try:
                        s.send(b"X")
                    except OSError:
                        pass
                time.sleep(0.3)
            assert worst < 2.0, f"/health took {worst:.2f} s under the attack"
            assert time.monotonic() - t0 < 20
        finally:
            for s in attackers:
                s.close()


def test_half_open_connection_is_closed_after_the_header_deadline(tmp_path: Path) -> None:
    with LogServer(tmp_path, "--header-timeout", "1") as srv:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        t0 = time.monotonic()
        assert s.recv(100) == b""  # closed by the server
        assert 0.5 < time.monotonic() - t0 < 4
        s.close()
        quiet = socket.create_connection(("127.0.0.1", srv.port), timeout=5)  # sends nothing
        assert quiet.recv(100) == b""
        quiet.close()


def test_big_batch_is_parsed_off_the_event_loop(tmp_path: Path) -> None:
    """16 MiB add-batches (the limit) take a while to receive and parse: /health answers
    meanwhile, quickly, and each batch gets its 413 (too many statements)."""
    with LogServer(tmp_path) as srv:
        t = Trainer()
        one = t.opened
        body = batch_body([one] * ((16 * MiB - 2) // (len(one) + 1)))
        assert len(body) <= 16 * MiB

        def post() -> httpx.Response:
            return httpx.post(srv.url + "/add-batch", content=body, timeout=30)

        lat: list[float] = []
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            futs = [ex.submit(post) for _ in range(4)]
            time.sleep(0.05)  # the bodies are being sent and parsed
            while not all(f.done() for f in futs) and len(lat) < 200:
                t0 = time.monotonic()
                assert health(srv).status_code == 200
                lat.append(time.monotonic() - t0)
                time.sleep(0.02)
            replies = [f.result() for f in futs]
        assert all(r.status_code == 413 for r in replies), replies[0].text
        assert "at most 10000 per request" in replies[0].json()["detail"]
        assert lat and max(lat) < 0.5, f"/health latencies {lat}"


def test_entries_pages_are_capped_in_bytes(tmp_path: Path) -> None:
    srv = LogServer(tmp_path)
    log = Log.open(str(srv.db), srv.signer)
    big = [bytes([i % 251]) * 60_000 for i in range(120)]
    log.append(big)
    log.store.close()
    with srv:
        pid = pid_of(srv)
        base = rss(pid)
        r = httpx.get(srv.url + "/entries", params={"start": 0, "end": 120}, timeout=10)
        page = r.json()
        assert r.status_code == 200 and len(r.content) < 1.5 * MiB
        assert page["end"] == page["start"] + len(page["entries"]) < 120
        got, start = [], 0  # paging with "end" returns everything, in order
        while start < 120:
            page = httpx.get(srv.url + "/entries", params={"start": start, "end": 120},
                             timeout=10).json()
            got += page["entries"]
            start = page["end"]
        assert len(got) == 120
        with concurrent.futures.ThreadPoolExecutor(24) as ex:
            sizes = list(ex.map(lambda _: len(httpx.get(
                srv.url + "/entries", params={"start": 0}, timeout=20).content), range(24)))
        assert max(sizes) < 1.5 * MiB
        assert rss(pid) - base < 150 * MiB


@pytest.mark.parametrize("path", [
    "/tile/0/" + "x001/" * 1500 + "000",
    "/tile/entries/" + "x001/" * 1500 + "000.p/5",
    "/tile/0/x999/x999/x999/x999/x999/x999/x999/999",
    "/tile/0/" + "9" * 5000,
    "/tile/" + "1" * 5000 + "/000",
    "/entries?start=" + "9" * 5000,
    "/proof/inclusion?index=" + "1" * 5000 + "&size=1",
    "/runs/" + "a" * 5000,
])
def test_malformed_paths_get_400(shared: LogServer, path: str) -> None:
    t0 = time.monotonic()
    r = httpx.get(shared.url + path, timeout=10)
    assert r.status_code == 400, (r.status_code, r.text[:300])
    assert r.json()["error"] in ("malformed", "bad_request") and len(r.content) < 2000
    assert time.monotonic() - t0 < 2
    assert "Traceback" not in shared.stderr() and "internal error" not in shared.stderr()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LogServer]:
    with LogServer(tmp_path_factory.mktemp("shared")) as srv:
        yield srv


def test_second_server_on_the_same_database_is_refused(tmp_path: Path) -> None:
    with LogServer(tmp_path, "--open-registration") as srv:
        second = subprocess.run(
            [*POTD, "ledger", "serve", "--db", str(srv.db), "--key", str(srv.keyfile),
             "--port", "0"], capture_output=True, text=True, cwd=REPO, timeout=30)
        assert second.returncode != 0
        assert "already open for writing by another process" in second.stderr
        assert "one writer per log" in second.stderr
        t = Trainer()
        r = httpx.post(srv.url + "/add", content=t.opened, timeout=10)  # still writing
        assert r.status_code == 200, r.text
        assert json.loads(r.content)["index"] == 0


def test_a_batch_names_its_statement_over_the_entry_limit(tmp_path: Path) -> None:
    """A statement longer than an entry may be (tlog-tiles bundles prefix entries with
    16 bits) is refused with 413 and its position in the batch; nothing is stored."""
    with LogServer(tmp_path) as srv:
        t = Trainer()
        small = t.step()
        big = t.step(note="x" * 70_000)
        r = httpx.post(srv.url + "/add-batch", content=batch_body([t.opened, small, big]),
                       timeout=30)
        assert r.status_code == 413, r.text
        assert r.json()["detail"] == f"statement #2 has {len(big)} bytes; the limit is 65535"
        assert r.json()["statement"] == 2
        assert httpx.get(srv.url + "/health", timeout=10).json()["size"] == 0
