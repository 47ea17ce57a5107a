"""LogClient against a real server: it verifies everything, computes proofs from tiles,
remembers the last checkpoint per origin on disk, and backs off on pushback."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest
from e2e import Env

from ledger.client import LogClient, LogUnavailable
from ledger.errors import ConsistencyError, SignatureError
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
    with LogClient(env.url, other.verifier) as c, pytest.raises(SignatureError):
        c.checkpoint()


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
