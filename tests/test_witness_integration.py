"""The log server with a witness (real processes on loopback): it sends each checkpoint
to the witness and publishes only cosigned ones; auditors require the cosignature."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from test_client import open_statement

from ledger.client import LogClient
from ledger.devserver import ServerProcess, free_port
from ledger.errors import SignatureError
from ledger.log import Log
from ledger.note import ALG_COSIGNATURE_V1, Signer, count_cosignatures, open_checkpoint

# POTD_WITNESS_ROUNDS=200 .venv/bin/python -m pytest -s tests/test_witness_integration.py
# measures the publication delay that witnessing adds (README, performance table)
ROUNDS = int(os.environ.get("POTD_WITNESS_ROUNDS", "20"))


@pytest.mark.parametrize("wait", [False, True], ids=["publish", "wait-for-witnesses"])
def test_server_publishes_only_witnessed_checkpoints(tmp_path: Path, wait: bool) -> None:
    log_key = Signer.generate("potd.example/witnessed")
    (tmp_path / "log.key").write_text(log_key.private_string())
    Log.create(str(tmp_path / "log.db"), log_key).store.close()
    w = Signer.generate("witness.example/w1", ALG_COSIGNATURE_V1)
    (tmp_path / "w.key").write_text(w.private_string())
    wport = free_port()
    wproc = subprocess.Popen([sys.executable, "-m", "ledger", "witness", "serve", "--db",
                              str(tmp_path / "w.db"), "--key", str(tmp_path / "w.key"),
                              "--log", f"{log_key.name}={log_key.verifier}", "--port",
                              str(wport)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wurl = f"http://127.0.0.1:{wport}"
        for _ in range(200):
            try:
                if httpx.get(wurl + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        srv = ServerProcess(str(tmp_path / "log.db"), str(tmp_path / "log.key"),
                            extra=["--open-registration", "--witness",
                                   f"{wurl}={w.verifier}",
                                   *(["--wait-for-witnesses"] if wait else [])]).start()
        try:
            trainer = Signer.generate("trainer.example/t")
            with LogClient(srv.url, log_key.verifier) as c:
                latencies = []
                for i in range(ROUNDS):
                    r = c.add(open_statement(trainer, f"w{i}"))
                    if wait:  # the reply itself carries the witnessed checkpoint
                        assert count_cosignatures(r.checkpoint.note, [w.verifier])
                    t0 = time.monotonic()
                    while True:  # the published checkpoint catches up, cosigned
                        cp = open_checkpoint(httpx.get(srv.url + "/checkpoint").content,
                                             log_key.verifier)
                        if cp.size >= r.index + 1:
                            break
                        assert time.monotonic() - t0 < 10
                        time.sleep(0.002)
                    latencies.append(time.monotonic() - t0)
                    assert count_cosignatures(cp.note, [w.verifier]) == [w.verifier]
            latencies.sort()
            p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * .99)]
            print(f"\nwitnessed publication after the add reply: p50 {p50 * 1e3:.1f} ms, "
                  f"p99 {p99 * 1e3:.1f} ms over {len(latencies)} adds")
            assert p50 < 0.5  # seconds; README has the figure for 200 rounds
            policy = LogClient(srv.url, log_key.verifier, witnesses=[w.verifier], quorum=1)
            assert policy.checkpoint().size == ROUNDS
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
        wproc.terminate()
        wproc.wait(20)
