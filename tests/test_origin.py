"""A checkpoint whose origin differs from its key's name (C2SP tlog-checkpoint: the key
name SHOULD match the origin): refused by default, accepted when the origin is pinned
explicitly (with a warning on the command line), and never for another origin."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ledger.cli import main
from ledger.errors import SignatureError
from ledger.merkle import leaf_hash
from ledger.note import Checkpoint, Signer, open_checkpoint, sign_checkpoint

KEY = Signer.generate("operator.example/key-2026")
ENTRY = b"entry zero"


def _cp(origin: str, signer: Signer = KEY) -> str:
    return str(sign_checkpoint(Checkpoint(origin, 1, leaf_hash(ENTRY)), signer))


def test_origin_other_than_key_name_needs_explicit_pin() -> None:
    text = _cp("log.example/a")
    with pytest.raises(SignatureError, match="differs from the log key name"):
        open_checkpoint(text, KEY.verifier)
    cp = open_checkpoint(text, KEY.verifier, origin="log.example/a")
    assert (cp.origin, cp.size) == ("log.example/a", 1)


def test_same_key_other_log_is_refused() -> None:
    """The cheapest attack: hand a client of log A a checkpoint of log B signed by the same
    (trusted) key. The pinned origin catches it."""
    with pytest.raises(SignatureError, match="differs from the pinned origin"):
        open_checkpoint(_cp("log.example/b"), KEY.verifier, origin="log.example/a")
    with pytest.raises(SignatureError, match="not signed by any trusted key"):  # key still checked
        open_checkpoint(_cp("log.example/a", Signer.generate(KEY.name)), KEY.verifier,
                        origin="log.example/a")


def test_cli_verify_inclusion_warns_and_accepts(tmp_path: Path) -> None:
    proof = {"index": 0, "size": 1, "hashes": [], "checkpoint": _cp("log.example/a"),
             "leaf_hash": base64.b64encode(leaf_hash(ENTRY)).decode()}
    (tmp_path / "p.json").write_text(json.dumps(proof))
    args = ["ledger", "verify", "inclusion", "--vkey", str(KEY.verifier), "--proof",
            str(tmp_path / "p.json")]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and "--origin" in r.output, r.output
    r = CliRunner().invoke(main, [*args, "--origin", "log.example/a"])
    assert r.exit_code == 0, r.output
    assert "OK: entry 0 is in log.example/a" in r.stdout
    assert "warning: origin 'log.example/a' differs from the log key's name" in r.stderr
    r = CliRunner().invoke(main, [*args, "--origin", "log.example/b"])
    assert r.exit_code == 1 and "pinned origin" in r.output, r.output
