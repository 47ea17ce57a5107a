"""The drand path through the CLI: `potd beacon keygen/info/serve/get`, `potd prover train
--beacon`, `potd auditor audit --beacon-chain --require-drand --public-challenge`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2e import Env, make_env

from ledger.devserver import free_port


def potd(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ledger", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def tenv(tmp_path: Path) -> Iterator[Env]:
    yield from make_env(tmp_path, "--timestamps")


def test_drand_run_through_the_cli(tenv: Env) -> None:
    d = tenv.dir
    r = potd("beacon", "keygen", "-o", str(d / "beacon.key"), "--period", "1",
             "--genesis", str(int(time.time()) - 10))
    assert r.returncode == 0, r.stderr
    info = potd("beacon", "info", "--key", str(d / "beacon.key"))
    (d / "chain.json").write_text(info.stdout)
    chain = json.loads(info.stdout)["hash"]
    assert chain in r.stdout
    port = free_port()
    srv = subprocess.Popen([sys.executable, "-m", "ledger", "beacon", "serve", "--key",
                            str(d / "beacon.key"), "--port", str(port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(f"{url}/{chain}/info", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        got = potd("beacon", "get", "--beacon", url, "--beacon-chain", str(d / "chain.json"),
                   "3")
        assert got.returncode == 0 and json.loads(got.stdout)["round"] == 3, got.stderr
        bad = potd("beacon", "get", "--beacon", url, "--beacon-chain", "quicknet", "3")
        assert bad.returncode == 1 and "pinned" in bad.stderr  # another chain than pinned
        (d / "alice.key").write_text(tenv.trainer.private_string())
        t = potd("prover", "train", "--recipe", "digits-mlp", "--epochs", "1", "--log", tenv.url,
                 "--vkey", str(tenv.log_key.verifier), "--key", str(d / "alice.key"),
                 "--evidence", str(d / "ev"), "--beacon", url, "--beacon-chain",
                 str(d / "chain.json"), "--beacon-lead", "4", "--json", str(d / "t.json"))
        assert t.returncode == 0, t.stdout + t.stderr
        run = json.loads((d / "t.json").read_text())["run"]
        assert (d / "ev" / "challenge.json").exists()
        base = ["auditor", "audit", "--log", tenv.url, "--vkey", str(tenv.log_key.verifier),
                "--run", run, "--evidence", str(d / "ev"), "--samples", "2",
                "--public-challenge", "--require-drand"]
        ok = potd(*base, "--state", str(d / "s1"), "--beacon-chain", str(d / "chain.json"),
                  "--beacon", url, "--json", str(d / "a.json"), "-q")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        rep = json.loads((d / "a.json").read_text())
        assert rep["beacon"]["mode"] == "drand" and rep["replay"]["challenge"]["mode"] == "drand"
        # without the chain pinned (and not a known public chain): inconclusive, exit 3
        unpinned = potd(*base, "--state", str(d / "s2"), "-q")
        assert unpinned.returncode == 3, unpinned.stdout + unpinned.stderr
    finally:
        srv.terminate()
        srv.wait(20)
