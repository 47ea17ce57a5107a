"""Log key rotation: during the window every checkpoint carries the old and the new
key's signatures (C2SP signed notes allow several), so clients pinned to either verify."""

from __future__ import annotations

import json
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


@pytest.fixture(params=["sqlite", "postgres"])
def rot_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return (str(tmp_path / "log.db") if request.param == "sqlite"
            else str(request.getfixturevalue("pg_url")))


def _verifies(text: str, key: Signer) -> bool:
    try:
        open_checkpoint(text, key.verifier)
        return True
    except SignatureError:
        return False


def test_rotate_key_retires_the_old_key(rot_db: str, tmp_path: Path) -> None:
    """Before the window: old key only; at the switch: both; after: new key only. The old
    key can no longer open the log for writing, and fsck accepts the retired signatures."""
    from click.testing import CliRunner

    from ledger.cli import main
    from ledger.fsck import fsck
    from ledger.merkle import check_tree

    old, new = Signer.generate("potd.example/rot"), Signer.generate("potd.example/rot")
    for name, k in (("old.key", old), ("new.key", new)):
        (tmp_path / name).write_text(k.private_string())
    rotate = ["ledger", "rotate-key", "--db", rot_db, "--key", str(tmp_path / "old.key"),
              "--new-key", str(tmp_path / "new.key")]
    log = Log.create(rot_db, old)
    before = str(log.append([b"before"]).checkpoint)
    log.store.close()
    r = CliRunner().invoke(main, rotate)  # the cheapest mistake: no window for clients
    assert r.exit_code == 2 and "no rotation window" in r.output, r.output
    log = Log.open(rot_db, old, also_sign=[new])
    during = str(log.append([b"during"]).checkpoint)
    log.store.close()
    r = CliRunner().invoke(main, rotate)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"size": 2, "retired": str(old.verifier),
                                    "vkey": str(new.verifier)}
    with pytest.raises(UsageError, match="retired"):
        Log.open(rot_db, old)
    log = Log.open(rot_db, new)
    after = str(log.append([b"after"]).checkpoint)
    proof = log.consistency_proof(1)
    log.store.close()
    assert (_verifies(before, old), _verifies(before, new)) == (True, False)
    assert (_verifies(during, old), _verifies(during, new)) == (True, True)
    assert (_verifies(after, old), _verifies(after, new)) == (False, True)
    b, a = open_checkpoint(before, old.verifier), open_checkpoint(after, new.verifier)
    check_tree(proof, a.size, a.root, b.size, b.root)  # one tree across the rotation
    ro = Log.open(rot_db)  # read-only: the recorded key is now the new one
    assert ro.verifier == new.verifier and ro.size == 3
    res = fsck(ro.store)
    assert res.ok and res.checked_checkpoints >= 3, res.to_json()
    ro.store.close()


def test_rotate_key_skip_window_and_stale_frontend(rot_db: str) -> None:
    """--skip-window signs the latest checkpoint with the new key at the switch; a writer
    still holding the old key must not sign after the rotation (PostgreSQL frontends are
    fenced by the recorded key; SQLite has one writer, which is the rotating one)."""
    old, new = Signer.generate("potd.example/rot"), Signer.generate("potd.example/rot")
    log = Log.create(rot_db, old)
    log.append([b"x"])
    with pytest.raises(UsageError, match="not named after"):
        log.retire_key(Signer.generate("other.example/log"), skip_window=True)
    cp = log.retire_key(new, skip_window=True)
    assert _verifies(str(cp), old) and _verifies(str(cp), new)
    assert _verifies(str(log.append([b"y"]).checkpoint), new)
    log.store.close()
    if rot_db.startswith("postgresql://"):
        newer = Signer.generate("potd.example/rot")
        stale = Log.open(rot_db, new)
        other = Log.open(rot_db, new)
        other.retire_key(newer, skip_window=True)
        other.store.close()
        with pytest.raises(UsageError, match="rotated since this frontend started"):
            stale.append([b"z"])
        stale.store.close()
