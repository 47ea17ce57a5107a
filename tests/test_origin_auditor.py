"""``potd auditor`` reading a log whose key is named otherwise than its origin (C2SP
tlog-checkpoint: the key name SHOULD match the origin): a static tile mirror on a
loopback web server, its checkpoint signed by a key of another name. Refused without
``--origin`` (with a hint naming it), accepted with it (and a warning), and a checkpoint
of another origin under the same key refused even so."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from ledger.cli import main
from ledger.log import Log
from ledger.note import Checkpoint, Signer, open_checkpoint, parse_note, sign_checkpoint
from ledger.publish import publish_once

KEY = Signer.generate("operator.example/key-2026")  # signs log.example/a's checkpoints
ORIGIN = "log.example/a"


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[str]:
    """log.example/a (40 entries) published as static tiles, its checkpoint re-signed by
    KEY, served on a loopback port."""
    log = Log.create(str(tmp_path / "log.db"), Signer.generate(ORIGIN))
    log.append([b"entry %d" % i for i in range(40)])
    site = tmp_path / "site"
    publish_once(log, str(site), fsync=False)
    cp = Checkpoint.from_text(parse_note((site / "checkpoint").read_bytes()).text)
    assert cp.origin == ORIGIN and cp.size == 40
    (site / "checkpoint").write_text(str(sign_checkpoint(cp, KEY)))
    (tmp_path / "other").mkdir()  # log.example/b: same key, another origin
    (tmp_path / "other" / "checkpoint").write_text(
        str(sign_checkpoint(Checkpoint("log.example/b", cp.size, cp.root), KEY)))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, ["auditor", *args])
    return r.exit_code, r.stdout, r.stderr


def test_verify_log_and_runs_need_the_origin(mirror: str, tmp_path: Path) -> None:
    common = ["--log", mirror, "--vkey", str(KEY.verifier), "--state", str(tmp_path / "st")]
    code, out, err = run("verify-log", *common)
    assert code == 1, out + err
    assert "checkpoint origin 'log.example/a' differs from the log key name" in err
    assert "--origin" in err and "Traceback" not in out + err
    code, out, err = run("verify-log", *common, "--origin", ORIGIN, "--json")
    assert code == 0, out + err
    res = json.loads(out)
    assert (res["origin"], res["size"], res["ok"]) == (ORIGIN, 40, True)
    assert "warning: origin 'log.example/a' differs from the log key's name" in err
    code, out, err = run("runs", *common, "--origin", ORIGIN)
    assert code == 0, out + err
    assert out.startswith(f"{ORIGIN} at size 40: 0 runs, 40 entries that are not statements")
    # the same (trusted) key's checkpoint of another log is not this log's
    code, out, err = run("verify-log", *common, "--origin", "log.example/b")
    assert code == 1 and "differs from the pinned origin 'log.example/b'" in err, out + err


def test_verify_membership_takes_the_origin(tmp_path: Path) -> None:
    """The proof file's checkpoint is opened under --origin (the proof below is otherwise
    empty, so it fails at the next check: the statements)."""
    doc = {"format": "potd-membership-proof/v1", "run": "ab" * 32,
           "checkpoint": str(sign_checkpoint(Checkpoint(ORIGIN, 1, bytes(32)), KEY))}
    from auditor.membership_proof import FORMAT

    doc["format"] = FORMAT
    (tmp_path / "p.json").write_text(json.dumps(doc))
    args = ["verify-membership", str(tmp_path / "p.json"), "--vkey", str(KEY.verifier)]
    code, out, err = run(*args)
    assert code == 1 and "checkpoint: checkpoint origin 'log.example/a' differs" in err, err
    code, out, err = run(*args, "--origin", ORIGIN)
    assert code == 1 and "checkpoint" not in err.split("\n")[-2], err
    assert "warning: origin" in err
    assert open_checkpoint(doc["checkpoint"], KEY.verifier, origin=ORIGIN).size == 1


@pytest.mark.parametrize("command", ["audit", "check-model", "verify-log", "runs",
                                     "membership", "verify-membership"])
def test_every_log_reading_command_has_origin(command: str) -> None:
    code, out, _ = run(command, "--help")
    assert code == 0 and "--origin" in out and "key is named otherwise" in " ".join(out.split())
