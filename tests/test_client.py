"""LogClient against a real server: it verifies everything, computes proofs from tiles,
remembers the last checkpoint per origin on disk, and backs off on pushback."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path
from typing import Any

import pytest
from e2e import Env

from ledger.client import LogClient, LogUnavailable
from ledger.errors import ConsistencyError, PeerUnreachable, SignatureError, UsageError
from ledger.log import Log
from ledger.merkle import leaf_hash
from ledger.note import Signer
from ledger.statement import build_statement


def open_statement(trainer: Signer, tag: str) -> bytes:
    body = {"seed_commitment": "00" * 32, "dataset": {"root": "11" * 32, "size": 1,
            "example_hash": "x"}, "recipe": {"name": tag, "code_hash": "22" * 32,
            "config": {}}, "hyperparameters": {}, "environment": {}, "weights_hash": "blake3"}
    return build_statement("run.open", None, 0, body, trainer)


def test_add_returns_verified_receipt_and_beacon(env: Env) -> None:
    with env.client() as c:
        st = open_statement(env.trainer, "a")
        r = c.add(st)
        assert r.index == 0 and r.leaf_hash == leaf_hash(st)
        assert r.beacon_checkpoint is not None and "\n1\n" in r.beacon_checkpoint
        assert c.latest is not None and c.latest.size == 1


def test_proofs_from_tiles_equal_server_proofs(env: Env) -> None:
    with env.client() as c:
        for i in range(40):
            c.add(open_statement(env.trainer, f"r{i}"))
        cp = c.checkpoint()
        entries = c.entries(0, cp.size, cp)  # every entry checked by inclusion
    with env.client(proofs="tiles") as t, env.client() as s:
        for i in (0, 1, 17, 39):
            lh = leaf_hash(entries[i])
            assert t.inclusion_proof(i, lh, cp) == s.inclusion_proof(i, lh, cp)
        old = t.checkpoint()
        assert t.consistency_proof(old, cp) == []


def test_wrong_log_key_is_refused(env: Env) -> None:
    other = Signer.generate(env.log_key.name)
    with LogClient(env.url, other.verifier) as c, pytest.raises(SignatureError) as e:
        c.checkpoint()
    # no signature line of the pinned key at all: a mistake of the caller (exit 2)
    assert isinstance(e.value, UsageError) and "--vkey" in e.value.hint


def test_state_on_disk_detects_a_rewritten_log(env: Env, tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    with env.client(state_dir=state) as c:
        for i in range(5):
            c.add(open_statement(env.trainer, f"r{i}"))
        c.checkpoint()
    # the operator replaces the log with another history of the same size
    port = env.server.port
    env.server.stop()
    db = tmp_path / "forked.db"
    log = Log.create(str(db), env.log_key)
    log.append([b"other %d" % i for i in range(5)])
    log.store.close()
    from ledger.devserver import ServerProcess
    env.server = ServerProcess(str(db), str(env.dir / "log.key"), port=port).start()
    with env.client(state_dir=state) as c, pytest.raises(ConsistencyError) as e:
        c.checkpoint()  # a new process: the stored checkpoint comes from disk
    assert "old_checkpoint" in e.value.evidence and "new_checkpoint" in e.value.evidence


class Pushback(http.server.BaseHTTPRequestHandler):
    """A stand-in that always pushes back (503 + Retry-After): there is no real log
    behaviour to exercise here, only the client's retry policy."""

    hits = 0

    def do_POST(self) -> None:  # noqa: N802
        Pushback.hits += 1
        self.send_response(503)
        self.send_header("Retry-After", "0.05")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error":"pushback","detail":"busy"}')

    def log_message(self, *a: object) -> None:
        pass


def test_pushback_is_retried_with_backoff_then_reported() -> None:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Pushback)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        c = LogClient(f"http://127.0.0.1:{srv.server_address[1]}",
                      Signer.generate("x.example/log").verifier, retries=3, backoff=0.01)
        with pytest.raises(LogUnavailable, match="4 tries"):
            c.add(b"{}")
        assert Pushback.hits == 4
    finally:
        srv.shutdown()


# -- retry policy: fail fast where no retry helps (issue 14, item 5) -----------------------

def _refused_url() -> str:
    from ledger.devserver import free_port

    return f"http://127.0.0.1:{free_port()}"


def test_refused_connection_is_retried_briefly_and_the_hint_speaks_to_the_role() -> None:
    """Nothing listens: a read gives up after about REFUSED_FOR seconds (not the whole
    retry budget: 8 retries took 25-50 s), and only a write's hint mentions the spool."""
    import time

    from ledger.client import REFUSED_FOR

    key = Signer.generate("x.example/log").verifier
    with LogClient(_refused_url(), key) as c:
        t0 = time.monotonic()
        with pytest.raises(LogUnavailable) as read:
            c.checkpoint()
        took = time.monotonic() - t0
        with pytest.raises(LogUnavailable) as write:
            c.add(b"{}")
    assert REFUSED_FOR <= took < REFUSED_FOR + 2, took
    assert "nothing listens" in read.value.message
    assert "spool" not in str(read.value).lower()  # an auditor has no spool
    assert "spool" in write.value.hint and "potd prover resume" in write.value.hint


def test_url_without_a_scheme_is_a_usage_error_at_once() -> None:
    key = Signer.generate("x.example/log").verifier
    for url in ("localhost:8080", "127.0.0.1:8080", "log.example/tiles"):
        with pytest.raises(UsageError, match="not an http"):
            LogClient(url, key)


def test_bad_tls_certificate_fails_on_the_first_try(tmp_path: Path) -> None:
    """A self-signed certificate: retrying cannot make it verify, so one connection is
    made and the error says what to check."""
    import ssl
    import subprocess
    import time

    cert, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days",
                        "1", "-subj", "/CN=localhost", "-keyout", str(key_file), "-out",
                        str(cert)], check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("openssl is not available to make a self-signed certificate")

    class Hits(http.server.BaseHTTPRequestHandler):
        hits = 0

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a: object) -> None:
            pass

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key_file))
    handshakes = []

    class TLSServer(http.server.ThreadingHTTPServer):
        def get_request(self) -> tuple[Any, Any]:
            conn, addr = self.socket.accept()
            handshakes.append(addr)
            return ctx.wrap_socket(conn, server_side=True,
                                   do_handshake_on_connect=False), addr

    srv = TLSServer(("127.0.0.1", 0), Hits)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"https://localhost:{srv.server_address[1]}"
        with LogClient(url, Signer.generate("x.example/log").verifier) as c:
            t0 = time.monotonic()
            with pytest.raises(PeerUnreachable) as e:
                c.checkpoint()
        assert time.monotonic() - t0 < 2.0
        assert "certificate" in e.value.hint and "spool" not in str(e.value).lower()
        assert len(handshakes) == 1
    finally:
        srv.shutdown()
