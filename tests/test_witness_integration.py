"""The log server with witnesses (real processes on loopback): it sends each checkpoint
to its witnesses and publishes only cosigned ones; clients and auditors require the
cosignatures; an unreachable witness delays publication but never sequencing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from test_client import open_statement

from ledger.client import LogClient
from ledger.cosignature import count_cosignatures
from ledger.devserver import ServerProcess, free_port
from ledger.errors import SignatureError
from ledger.log import Log
from ledger.note import (
    ALG_COSIGNATURE_V1,
    SignedCheckpoint,
    Signer,
    open_checkpoint,
)

# POTD_WITNESS_ROUNDS=200 .venv/bin/python -m pytest -s tests/test_witness_integration.py
# prints the delay a client sees; scripts/bench_witness.py --only publish measures it
# properly (flush -> published, by the server)
ROUNDS = int(os.environ.get("POTD_WITNESS_ROUNDS", "20"))


class WitnessProc:
    """``potd witness serve`` on a fixed loopback port; restartable on the same port and
    database (its state survives)."""

    def __init__(self, d: Path, name: str, log_key: Signer) -> None:
        self.d, self.name, self.log_key = d, name, log_key
        self.signer = Signer.generate(f"witness.example/{name}", ALG_COSIGNATURE_V1)
        (d / f"{name}.key").write_text(self.signer.private_string())
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def spec(self) -> str:
        return f"{self.url}={self.signer.verifier}"

    def start(self) -> WitnessProc:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ledger", "witness", "serve", "--db",
             str(self.d / f"{self.name}.db"), "--key", str(self.d / f"{self.name}.key"),
             "--log", f"{self.log_key.name}={self.log_key.verifier}", "--port",
             str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        until(lambda: _up(self.url), what=f"witness {self.name} to start")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(20)


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def until(cond: Callable[[], object], *, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def new_log(d: Path) -> Signer:
    log_key = Signer.generate("potd.example/witnessed")
    (d / "log.key").write_text(log_key.private_string())
    Log.create(str(d / "log.db"), log_key).store.close()
    return log_key


def published(url: str, log_key: Signer) -> SignedCheckpoint | None:
    r = httpx.get(url + "/checkpoint", timeout=10)
    return open_checkpoint(r.content, log_key.verifier) if r.status_code == 200 else None


@pytest.mark.parametrize("wait", [False, True], ids=["publish", "wait-for-witnesses"])
def test_server_publishes_only_witnessed_checkpoints(tmp_path: Path, wait: bool) -> None:
    log_key = new_log(tmp_path)
    w = WitnessProc(tmp_path, "w1", log_key).start()
    wv = w.signer.verifier
    try:
        srv = ServerProcess(str(tmp_path / "log.db"), str(tmp_path / "log.key"),
                            extra=["--open-registration", "--witness", w.spec,
                                   *(["--wait-for-witnesses"] if wait else [])],
                            log_file=str(tmp_path / "server.log")).start()
        try:
            trainer = Signer.generate("trainer.example/t")
            with LogClient(srv.url, log_key.verifier) as c:
                latencies = []
                for i in range(ROUNDS):
                    r = c.add(open_statement(trainer, f"w{i}"))
                    if wait:  # the reply itself carries the witnessed checkpoint
                        assert count_cosignatures(r.checkpoint.note, [wv]) == [wv]
                    # reading right after writing: /checkpoint may still serve an older
                    # (witnessed) tree than the receipt's; proven a prefix, not a rollback
                    assert c.checkpoint().size >= r.index + 1
                    t0 = time.monotonic()
                    while True:  # the published checkpoint catches up, cosigned
                        cp = published(srv.url, log_key)
                        if cp is not None and cp.size >= r.index + 1:
                            break
                        assert time.monotonic() - t0 < 10
                        time.sleep(0.002)
                    latencies.append(time.monotonic() - t0)
                    assert count_cosignatures(cp.note, [wv]) == [wv]
            latencies.sort()
            p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * .99)]
            print(f"\nwitnessed publication after the add reply: p50 {p50 * 1e3:.1f} ms, "
                  f"p99 {p99 * 1e3:.1f} ms over {len(latencies)} adds")
            assert p50 < 0.5  # seconds (bench_witness.py has the real figure)
            health = httpx.get(srv.url + "/health").json()["witnessing"]
            assert health["published_size"] == ROUNDS and health["quorum"] == 1
            schemas = httpx.get(srv.url + "/openapi.json").json()["components"]["schemas"]
            described = schemas["Witnessing"]["properties"]
            assert set(health) <= set(described), health  # the document covers /health
            assert set(health["witnesses"][0]) <= set(
                described["witnesses"]["items"]["properties"])
            assert health["witnesses"][0]["failures"] == 0
            policy = LogClient(srv.url, log_key.verifier, witnesses=[wv], quorum=1)
            assert policy.checkpoint().size == ROUNDS
            # a client with a witness policy writes only through a log that waits
            if wait:
                r = policy.add(open_statement(trainer, "policy"))
                assert count_cosignatures(r.checkpoint.note, [wv]) == [wv]
            else:
                with pytest.raises(SignatureError, match="0 of the 1 required") as e:
                    policy.add(open_statement(trainer, "policy"))
                assert "--wait-for-witnesses" in e.value.hint
            # a checkpoint without the cosignature is refused under the policy
            bare = Log.open(str(tmp_path / "log.db")).store.checkpoint_at(1)
            assert bare is not None
            lone = open_checkpoint(bare.split("\n\n")[0] + "\n\n" + bare.split("\n\n")[1]
                                   .splitlines(keepends=True)[0], log_key.verifier)
            with pytest.raises(SignatureError, match="0 of the 1 required"):
                policy.check_witnesses(lone)
        finally:
            srv.stop()
    finally:
        w.stop()


def test_witness_outage_delays_publication_never_sequencing(tmp_path: Path) -> None:
    """Quorum 2 of 2: one witness down -> writes still succeed, the last witnessed
    checkpoint stays published; it comes back -> publication catches up. A restarted log
    server serves its last witnessed checkpoint from the database at once."""
    log_key = new_log(tmp_path)
    w1 = WitnessProc(tmp_path, "w1", log_key).start()
    w2 = WitnessProc(tmp_path, "w2", log_key).start()
    keys = [w1.signer.verifier, w2.signer.verifier]
    args = ["--open-registration", "--witness", w1.spec, "--witness", w2.spec,
            "--witness-quorum", "2"]
    srv = ServerProcess(str(tmp_path / "log.db"), str(tmp_path / "log.key"), extra=args,
                        log_file=str(tmp_path / "server.log")).start()
    trainer = Signer.generate("trainer.example/t")
    try:
        with LogClient(srv.url, log_key.verifier) as c:
            for i in range(3):
                c.add(open_statement(trainer, f"a{i}"))
            until(lambda: (p := published(srv.url, log_key)) is not None and p.size == 3,
                  what="size 3 to be published")
            cp = published(srv.url, log_key)
            assert cp is not None and count_cosignatures(cp.note, keys) == keys

            w2.stop(signal.SIGKILL)
            for i in range(3):  # sequencing does not wait for the missing witness
                t = time.monotonic()
                assert c.add(open_statement(trainer, f"b{i}")).index == 3 + i
                assert time.monotonic() - t < 2
            time.sleep(0.5)
            cp = published(srv.url, log_key)
            assert cp is not None and cp.size == 3  # the last checkpoint with a quorum
            # proofs default to the served (witnessed) size, not the newest: they match
            # the checkpoint a client just fetched; larger sizes only when asked for
            p = httpx.get(srv.url + "/proof/inclusion", params={"index": 0}).json()
            assert p["size"] == 3
            p = httpx.get(srv.url + "/proof/consistency", params={"from": 1}).json()
            assert p["to"] == 3
            p = httpx.get(srv.url + "/proof/inclusion", params={"index": 4, "size": 6}).json()
            assert p["size"] == 6
            health = httpx.get(srv.url + "/health").json()
            assert health["size"] == 6
            by_url = {x["url"]: x for x in health["witnessing"]["witnesses"]}
            assert by_url[w2.url]["failures"] >= 1 and by_url[w2.url]["last_error"]
            assert by_url[w1.url]["failures"] == 0
            assert f"witness {w2.url} did not cosign" in (tmp_path / "server.log").read_text()

            w2.start()  # same database: it resumes from the size it cosigned
            until(lambda: (p := published(srv.url, log_key)) is not None and p.size == 6,
                  what="publication to catch up once the witness is back")
            cp = published(srv.url, log_key)
            assert cp is not None and count_cosignatures(cp.note, keys) == keys

        w2.stop()
        srv.stop()
        srv = ServerProcess(str(tmp_path / "log.db"), str(tmp_path / "log.key"), port=srv.port,
                            extra=args, log_file=str(tmp_path / "server.log")).start()
        cp = published(srv.url, log_key)  # no 503: recovered from the stored cosignatures
        assert cp is not None and cp.size == 6
        assert count_cosignatures(cp.note, keys) == keys
        with LogClient(srv.url, log_key.verifier, witnesses=keys, quorum=2) as auditor:
            assert auditor.checkpoint().size == 6
    finally:
        srv.stop()
        w1.stop()
        w2.stop()


def test_hung_witness_does_not_delay_a_quorum_of_the_others(tmp_path: Path) -> None:
    """Quorum 1 of 2, one witness accepts connections and never answers: each round
    publishes as soon as the live witness cosigned, not after the hung request's
    timeout (10 s); the hung witness has one request in flight at a time."""
    import socket

    log_key = new_log(tmp_path)
    w1 = WitnessProc(tmp_path, "w1", log_key).start()
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)  # the kernel completes handshakes; nobody ever reads or answers
    dead = Signer.generate("witness.example/hung", ALG_COSIGNATURE_V1).verifier
    hung = f"http://127.0.0.1:{hole.getsockname()[1]}={dead}"
    srv = ServerProcess(str(tmp_path / "log.db"), str(tmp_path / "log.key"),
                        extra=["--open-registration", "--witness", w1.spec, "--witness", hung,
                               "--witness-quorum", "1"],
                        log_file=str(tmp_path / "server.log")).start()
    trainer = Signer.generate("trainer.example/t")
    try:
        with LogClient(srv.url, log_key.verifier) as c:
            for i in range(4):
                size = c.add(open_statement(trainer, f"h{i}")).index + 1
                t0 = time.monotonic()
                until(lambda n=size: (p := published(srv.url, log_key)) is not None
                      and p.size >= n, what=f"entry {i} to be published", timeout=3)
                assert time.monotonic() - t0 < 2
        cp = published(srv.url, log_key)
        assert cp is not None and count_cosignatures(cp.note, [w1.signer.verifier, dead]) == [
            w1.signer.verifier]
        health = httpx.get(srv.url + "/health").json()["witnessing"]
        by_key = {x["key"]: x for x in health["witnesses"]}
        assert by_key[f"{dead.name}+{dead.key_id:08x}"]["in_flight"] is True
    finally:
        srv.stop()
        w1.stop()
        hole.close()


def test_serve_rejects_bad_witness_options(tmp_path: Path) -> None:
    new_log(tmp_path)
    cmd = [sys.executable, "-m", "ledger", "ledger", "serve", "--db", str(tmp_path / "log.db"),
           "--key", str(tmp_path / "log.key"), "--port", "0"]
    wkey = Signer.generate("witness.example/w", ALG_COSIGNATURE_V1).verifier
    for extra, msg in [
        (["--witness", f"http://127.0.0.1:1={wkey}", "--witness-quorum", "2"],
         "between 1 and the number of witnesses"),
        (["--witness", "127.0.0.1:1"], "is not URL=VKEY"),
        (["--wait-for-witnesses"], "need --witness"),
    ]:
        r = subprocess.run(cmd + extra, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (extra, r.stderr)
        assert msg in r.stderr, (extra, r.stderr)
