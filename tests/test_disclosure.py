"""Selective disclosure (docs/protocol.md §4.9): an audit holding no training data, fed
only the sampled segments' examples by the trainer's data server. Real log server, real
training of digits-mlp, a real data server on loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e import Env, checks, make_env

from ledger.errors import UsageError
from prover.attacks import DataSubstitution, ForgedCheckpoint
from prover.dataserver import MAX_INDEXES, Disclosure, load, make_server
from prover.session import TrainingSession


class DataServer:
    """``prover.dataserver`` on a free loopback port, in a thread of this process."""

    def __init__(self, d: Disclosure) -> None:
        self.d = d
        ready = threading.Event()
        self.server, sock = make_server(d, "127.0.0.1", 0, on_ready=lambda h, p: ready.set())
        self.port = sock.getsockname()[1]
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                       daemon=True)
        self.thread.start()
        assert ready.wait(30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def _serve(env: Env, run: str, **kw: Any) -> DataServer:
    with env.client() as c:
        return DataServer(load(c, run, **kw))


def _train(env: Env, tag: str, cls: type[TrainingSession] = TrainingSession) -> str:
    return env.train(tag, cls=cls).run_id


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Env, str, DataServer]]:
    for e in make_env(tmp_path_factory.mktemp("disclosure")):
        run = _train(e, "run")
        srv = _serve(e, run, max_samples=2, max_memorization=1)
        try:
            yield e, run, srv
        finally:
            srv.stop()


def _audit(env: Env, run: str, url: str, tag: str = "run", **kw: Any) -> dict[str, Any]:
    kw.setdefault("samples", 2)
    kw.setdefault("memorization_segments", 1)
    return env.audit(run, env.dir / f"ev-{tag}", state=f"state-{tag}-{kw['samples']}",
                     disclosure=url, public_challenge=True, **kw)


def test_honest_run_passes_with_disclosure_only(honest: Any) -> None:
    env, run, srv = honest
    rep = _audit(env, run, srv.url)
    c = checks(rep)
    assert rep["verdict"] == "pass", [x for x in rep["checks"] if x["status"] != "pass"]
    assert c["hash_list"] == c["order"] == c["disclosure"] == c["replay"] == "pass"
    d = rep["disclosure"]
    assert 0 < d["train"]["disclosed"] < d["train"]["total"]
    assert d["heldout"]["disclosed"] > 0 and d["not_checked"]
    assert 0 < d["train"]["fraction"] < 1


def test_server_refuses_outside_the_challenge_and_over_budget(honest: Any) -> None:
    env, run, srv = honest
    d = srv.d
    allowed = sorted(d.allowed["train"])
    outside = next(i for i in range(d.plan.n) if i not in d.allowed["train"])
    ch = d.plan.challenge.hex()
    url = srv.url + "/v1/disclosure/examples"

    def ask(**body: Any) -> httpx.Response:
        return httpx.post(url, json={"run": run, "challenge": ch, "split": "train",
                                     "indexes": allowed[:2], **body})

    r = ask(indexes=[allowed[0], outside])
    assert r.status_code == 403 and r.json()["error"] == "outside-challenge"
    assert outside in r.json()["indexes"]
    r = ask(challenge="00" * 32)
    assert r.status_code == 403 and r.json()["error"] == "not-the-challenge"
    assert ask(split="heldout", indexes=[10 ** 6]).status_code == 403
    assert ask(run="ab" * 32).status_code == 404
    assert ask(indexes=list(range(MAX_INDEXES + 1))).status_code == 413
    assert httpx.post(url, content=b"x" * (70 << 10)).status_code == 413
    assert httpx.post(url, content=b"{not json").json()["error"] == "malformed"
    # a small budget: spent after two examples, then refused
    small = _serve(env, run, max_samples=2, max_memorization=1, budget_examples=2)
    try:
        body = {"run": run, "challenge": ch, "split": "train", "indexes": allowed[:2]}
        assert httpx.post(small.url + "/v1/disclosure/examples", json=body).status_code == 200
        r = httpx.post(small.url + "/v1/disclosure/examples", json=body)
        assert r.status_code == 429 and r.json()["error"] == "over-budget"
        # the auditor needs more than the budget: refused, the audit is inconclusive
        rep = _audit(env, run, small.url, tag="run")
        assert checks(rep)["disclosure"] == "inconclusive" and rep["verdict"] == "inconclusive"
    finally:
        small.stop()


def test_wrong_bytes_fail_naming_the_example(honest: Any) -> None:
    env, run, srv = honest
    with env.client() as c:
        d = load(c, run, max_samples=2, max_memorization=1)
    victim = sorted(d.allowed["train"])[3]
    real = d.train

    class Lying:
        def __len__(self) -> int:
            return len(real)

        def example_bytes(self, i: int) -> bytes:
            return real.example_bytes(i + 1 if i == victim else i)

    d.train = Lying()
    liar = DataServer(d)
    try:
        rep = _audit(env, run, liar.url)
    finally:
        liar.stop()
    bad = next(x for x in rep["checks"] if x["name"] == "disclosure")
    assert bad["status"] == "fail" and bad["evidence"]["index"] == victim
    assert f"example {victim}" in bad["summary"] and rep["verdict"] == "fail"


def test_unreachable_server_is_inconclusive(honest: Any) -> None:
    env, run, _ = honest
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens
    rep = _audit(env, run, f"http://127.0.0.1:{port}")
    assert checks(rep)["disclosure"] == "inconclusive" and rep["verdict"] == "inconclusive"
    dc = next(x for x in rep["checks"] if x["name"] == "disclosure")
    assert "did not answer" in dc["summary"] and "by design" in dc["summary"]


@pytest.mark.parametrize("cls", [ForgedCheckpoint, DataSubstitution])
def test_attacks_caught_with_disclosure(cls: type[TrainingSession],
                                        tmp_path: Path) -> None:
    for env in make_env(tmp_path):
        run = _train(env, "atk", cls)
        srv = _serve(env, run, max_samples=64)
        try:  # every step drawn: the forged segment is certainly among them
            rep = _audit(env, run, srv.url, tag="atk", samples=64)
        finally:
            srv.stop()
        c = checks(rep)
        assert c["disclosure"] == "pass" and c["replay"] == "fail", rep["checks"]
        assert rep["verdict"] == "fail"


def test_serve_data_refuses_an_open_run_and_has_help(honest: Any) -> None:
    env, _, _ = honest
    s = env.session("open")
    s.open()  # never closed: no public challenge yet
    with env.client() as c, pytest.raises(UsageError, match="no valid public challenge"):
        load(c, s.run_id)
    r = subprocess.run([sys.executable, "-c", "from ledger.cli import main; main()",
                        "prover", "serve-data", "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "--max-samples" in r.stdout


def test_decoded_bytes_equal_the_adapters_batches(tmp_path: Path) -> None:
    """The hook replay uses: each adapter's canonical example bytes decode to exactly the
    tensors its ``batch`` yields (dtype, shape, values); malformed bytes are typed."""
    import torch

    from ledger.errors import MalformedError
    from prover.datasets import TensorDataset, TokenFile, write_tokens
    from prover.disclosure import decode_example

    tds = [TensorDataset(torch.randn(5, 3, 2), torch.arange(5)),
           TensorDataset(torch.randint(0, 255, (4, 7), dtype=torch.uint8),
                         torch.rand(4) > 0.5),
           TokenFile(write_tokens(tmp_path / "t.bin", list(range(300)), "uint16"),
                     "uint16", block=16)]
    for ds in tds:
        for i in range(len(ds)):
            x, y = decode_example(ds.encoding, ds.example_bytes(i))
            bx, by = ds.batch([i])
            assert x.dtype == bx.dtype and torch.equal(x, bx[0])
            assert y.dtype == by.dtype and torch.equal(y, by[0])
    blob = tds[0].example_bytes(0)
    for bad in (blob[:-3], blob[:20], b"nope", blob + b"\x00"):
        with pytest.raises(MalformedError):
            decode_example(tds[0].encoding, bad)
    with pytest.raises(UsageError, match="recipe's transform"):
        decode_example("potd-file-v1/sha256", b"x")  # a file needs the recipe's transform
    with pytest.raises(UsageError, match="cannot be decoded"):
        decode_example("potd-other-v9/sha256", b"x")


def test_data_server_is_guarded_like_the_log_server(honest: Any) -> None:
    """The data server faces hostile auditors: a half-open flood past its connection cap
    does not starve it, a half-open connection is closed after the header deadline, and a
    trickled body gets 408 (ledger.netutil.make_server, read_body)."""
    env, run, srv = honest
    ready = threading.Event()
    server, sock = make_server(srv.d, "127.0.0.1", 0, on_ready=lambda h, p: ready.set(),
                               header_timeout=1.0, body_timeout=1.0, max_connections=16)
    port = sock.getsockname()[1]
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    assert ready.wait(30)
    attackers = []
    try:
        for _ in range(40):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /v1/disclosure HTTP/1.1\r\nHost: x\r\n")
            attackers.append(s)
        r = httpx.get(f"http://127.0.0.1:{port}/v1/disclosure", timeout=5)
        assert r.status_code == 200 and r.json()["run"] == run
        with socket.create_connection(("127.0.0.1", port), timeout=8) as s:
            s.sendall(b"GET /v1/disclosure HTTP/1.1\r\nHost: x\r\n")
            assert s.recv(1024) == b""  # closed by the server's header deadline
        with socket.create_connection(("127.0.0.1", port), timeout=8) as s:
            s.sendall(b"POST /v1/disclosure/examples HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Length: 500\r\n\r\n{")
            reply = s.recv(4096)
            assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
            assert b'"timeout"' in reply or b'"timeout"' in s.recv(4096)
    finally:
        for s in attackers:
            s.close()
        server.should_exit = True
        t.join(30)


def test_audit_cli_caps_the_hash_list_it_fetches(honest: Any, tmp_path: Path) -> None:
    """`audit --disclosure` fetches the published hash list within --max-hash-list-bytes:
    a list over the cap is not fetched and the audit is inconclusive (exit 3), naming the
    option, never a failure."""
    import json

    from click.testing import CliRunner

    from ledger.cli import main

    env, run, srv = honest
    out = tmp_path / "report.json"
    r = CliRunner().invoke(main, [
        "auditor", "audit", "--log", env.url, "--vkey", str(env.log_key.verifier),
        "--run", run, "--evidence", str(env.dir / "ev-run"), "--disclosure", srv.url,
        "--samples", "2", "--memorization-segments", "1", "--max-hash-list-bytes", "64",
        "--state", str(tmp_path / "state"), "--json", str(out), "--quiet"])
    assert r.exit_code == 3, r.output
    rep = json.loads(out.read_text())
    bad = next(c for c in rep["checks"] if c["name"] == "hash_list")
    assert bad["status"] == "inconclusive" and "--max-hash-list-bytes" in (
        bad["summary"] + str(bad.get("evidence", {}))), bad
