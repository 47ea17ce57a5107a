"""Log key rotation: during the window every checkpoint carries the old and the new
key's signatures (C2SP signed notes allow several), so clients pinned to either verify."""

from __future__ import annotations

from pathlib import Path

import pytest
from server_helpers import LogServer, Trainer, potd

from ledger.errors import SignatureError, UsageError
from ledger.log import Log
from ledger.note import Signer, open_checkpoint


def test_checkpoints_carry_both_signatures(tmp_path: Path) -> None:
    old = Signer.generate("potd.example/rot")
    new = Signer.generate("potd.example/rot")
    log = Log.create(str(tmp_path / "log.db"), old)
    log.append([b"before"])
    with pytest.raises(SignatureError):
        open_checkpoint(str(log.checkpoint()), new.verifier)  # not yet signed by the new key
    log.store.close()
    log = Log.open(str(tmp_path / "log.db"), old, also_sign=[new])
    log.append([b"during"])
    for cp in (log.checkpoint(), log.checkpoint_at(1)):
        assert open_checkpoint(str(cp), old.verifier).size == cp.size
        assert open_checkpoint(str(cp), new.verifier).size == cp.size
    log.store.close()
    with pytest.raises(UsageError, match="not named after the log origin"):
        Log.open(str(tmp_path / "log.db"), old, also_sign=[Signer.generate("other/x")])


@pytest.mark.slow
def test_served_log_verifies_under_the_new_key(tmp_path: Path) -> None:
    new = Signer.generate("potd.test/log")
    (tmp_path / "new.key").write_text(new.private_string())
    with LogServer(tmp_path, "--open-registration", "--also-sign-with",
                   str(tmp_path / "new.key")) as server:
        t = Trainer()
        with server.client() as c:
            c.post("/add", content=t.opened).raise_for_status()
            c.post("/add", content=t.step()).raise_for_status()
        for k, vkey in enumerate((str(server.vkey), str(new.verifier))):
            r = potd("auditor", "verify-log", "--log", server.url, "--vkey", vkey,
                     "--state", str(tmp_path / f"state{k}"), "--json")
            assert r.returncode == 0, r.stdout + r.stderr
