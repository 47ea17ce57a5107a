"""Every potd server is guarded like the log server (ledger.guard, ledger.netutil): a
header deadline, a connection cap, a body deadline. Here the witness (``potd witness
serve``, a real subprocess on loopback); the data server's guard is tested in
test_disclosure.py and the log server's in test_server_limits.py."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from ledger.note import ALG_COSIGNATURE_V1, Signer
from ledger.witness import WitnessState

POTD = [sys.executable, "-m", "ledger"]


@pytest.fixture(scope="module")
def witness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("guarded-witness")
    key = d / "w.key"
    key.write_text(Signer.generate("witness.example/g", ALG_COSIGNATURE_V1)
                   .private_string() + "\n")
    key.chmod(0o600)
    WitnessState(str(d / "w.db")).close()
    err = d / "serve.err"
    with err.open("wb") as f:
        proc = subprocess.Popen([*POTD, "witness", "serve", "--db", str(d / "w.db"),
                                 "--key", str(key), "--port", "0", "--header-timeout", "1",
                                 "--body-timeout", "1", "--max-connections", "16"],
                                stderr=f)
    try:
        deadline = time.monotonic() + 30
        while not (m := re.search(r"listening on (http://[\d.]+:\d+)", err.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text()
            time.sleep(0.05)
        yield m.group(1)
    finally:
        proc.terminate()
        proc.wait(10)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_witness_half_open_flood_cannot_starve_health(witness: str) -> None:
    """60 connections that never finish their headers, on a witness capped at 16: health
    and state still answer promptly (the oldest half-open ones are evicted)."""
    attackers = []
    try:
        for _ in range(60):
            s = socket.create_connection(("127.0.0.1", _port(witness)), timeout=5)
            s.sendall(b"POST /add-checkpoint HTTP/1.1\r\nHost: x\r\n")
            attackers.append(s)
        for _ in range(3):
            t = time.monotonic()
            assert httpx.get(witness + "/health", timeout=5).status_code == 200
            assert httpx.get(witness + "/state", timeout=5).status_code == 200
            assert time.monotonic() - t < 2.0
    finally:
        for s in attackers:
            s.close()


def test_witness_closes_a_half_open_connection_after_the_header_deadline(
        witness: str) -> None:
    with socket.create_connection(("127.0.0.1", _port(witness)), timeout=8) as s:
        s.sendall(b"POST /add-checkpoint HTTP/1.1\r\nHost: x\r\n")
        t = time.monotonic()
        assert s.recv(1024) == b""  # closed by the witness, not by our timeout
        assert time.monotonic() - t < 4.0


def test_witness_answers_a_trickled_body_408(witness: str) -> None:
    """A body announced as 1,000 bytes that trickles in: 408 after the body deadline,
    never a connection held for as long as the peer likes."""
    with socket.create_connection(("127.0.0.1", _port(witness)), timeout=10) as s:
        s.sendall(b"POST /add-checkpoint HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: 1000\r\n\r\nold 0\n")
        t = time.monotonic()
        reply = b""
        while b"\r\n\r\n" not in reply:
            try:
                s.sendall(b"x")
            except OSError:
                break
            s.settimeout(0.3)
            try:
                chunk = s.recv(4096)
            except TimeoutError:
                continue
            if not chunk:
                break
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert time.monotonic() - t < 5.0
