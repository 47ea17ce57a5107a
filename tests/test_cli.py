"""The `potd` command line: help everywhere, key files, and the ledger commands end to end."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from ledger.cli import main


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out += all_commands(cmd, prefix + (name,))
        else:
            out.append(prefix + (name,))
    return out


@pytest.mark.parametrize("path", all_commands(main), ids=lambda p: " ".join(p) or "potd")
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    r = CliRunner().invoke(main, [*path, "--help"])
    assert r.exit_code == 0, r.output
    assert "Usage:" in r.output
    cmd: click.Command = main
    for name in path:
        assert isinstance(cmd, click.Group)
        cmd = cmd.commands[name]
    assert cmd.help and len(cmd.help.strip()) > 20, f"{' '.join(path)} needs real help text"


@pytest.fixture
def runner(tmp_path: Path) -> CliRunner:
    os.chdir(tmp_path)
    return CliRunner()


def run(runner: CliRunner, *args: str, input: str | None = None, code: int = 0) -> str:
    r = runner.invoke(main, list(args), input=input)
    assert r.exit_code == code, (args, r.output, r.exception)
    return r.output


def test_keygen_writes_0600_and_refuses_overwrite(runner: CliRunner) -> None:
    vkey = run(runner, "ledger", "keygen", "potd.example/log1", "-o", "log.key").strip()
    assert vkey.startswith("potd.example/log1+")
    assert stat.S_IMODE(os.stat("log.key").st_mode) == 0o600
    assert Path("log.key").read_text().startswith("PRIVATE+KEY+potd.example/log1+")
    assert Path("log.key.pub").read_text().strip() == vkey
    secret = Path("log.key").read_text().strip().split("+", 4)[4]
    out = run(runner, "ledger", "keygen", "potd.example/log1", "-o", "log.key", code=2)
    assert "refusing" in out and secret not in out


def test_ledger_workflow(runner: CliRunner) -> None:
    run(runner, "ledger", "keygen", "potd.example/log1", "-o", "log.key")
    run(runner, "ledger", "init", "--db", "log.db", "--key", "log.key")
    out = json.loads(run(runner, "ledger", "append", "--db", "log.db", "--key", "log.key",
                         input="alpha\nbeta\ngamma\n"))
    assert out["first_index"] == 0 and out["count"] == 3
    Path("e.bin").write_bytes(b"\x00binary\xff")
    out = json.loads(run(runner, "ledger", "append", "--db", "log.db", "--key", "log.key",
                         "e.bin"))
    assert out["first_index"] == 3
    cp = run(runner, "ledger", "checkpoint", "--db", "log.db")
    assert cp.splitlines()[:2] == ["potd.example/log1", "4"]
    Path("cp4").write_text(cp)

    proof = run(runner, "ledger", "prove", "inclusion", "--db", "log.db", "--index", "3")
    Path("p.json").write_text(proof)
    ok = run(runner, "ledger", "verify", "inclusion", "--vkey", "log.key.pub", "--proof",
             "p.json", "--entry", "e.bin", "--checkpoint", "cp4")
    assert ok.startswith("OK")
    # the wrong entry bytes fail with exit 1 and a reason
    Path("other.bin").write_bytes(b"other")
    bad = run(runner, "ledger", "verify", "inclusion", "--vkey", "log.key.pub", "--proof",
              "p.json", "--entry", "other.bin", code=1)
    assert "does not hash" in bad
    # a tampered proof fails
    d = json.loads(proof)
    d["hashes"][0] = d["hashes"][1]
    Path("bad.json").write_text(json.dumps(d))
    out = run(runner, "ledger", "verify", "inclusion", "--vkey", "log.key.pub", "--proof",
              "bad.json", code=1)
    assert "error:" in out
    # a checkpoint under another key fails
    run(runner, "ledger", "keygen", "potd.example/log1", "-o", "evil.key")
    out = run(runner, "ledger", "verify", "inclusion", "--vkey", "evil.key.pub", "--proof",
              "p.json", code=1)
    assert "not signed by any trusted key" in out

    run(runner, "ledger", "append", "--db", "log.db", "--key", "log.key", input="delta\n")
    c = run(runner, "ledger", "prove", "consistency", "--db", "log.db", "--from", "4")
    Path("c.json").write_text(c)
    ok = run(runner, "ledger", "verify", "consistency", "--vkey", "log.key.pub", "--proof",
             "c.json", "--old", "cp4")
    assert "consistent with size 4" in ok
    # a proof that does not connect the two roots: exit 1
    d = json.loads(c)
    d["hashes"] = [d["hashes"][0][:-4] + "AAA="]
    Path("c2.json").write_text(json.dumps(d))
    run(runner, "ledger", "verify", "consistency", "--vkey", "log.key.pub", "--proof", "c2.json",
        code=1)


def test_usage_errors_exit_2(runner: CliRunner) -> None:
    run(runner, "ledger", "keygen", "potd.example/log1", "-o", "log.key")
    run(runner, "ledger", "init", "--db", "log.db", "--key", "log.key")
    out = run(runner, "ledger", "prove", "inclusion", "--db", "log.db", "--index", "5", code=2)
    assert "tree of size 0" in out
    run(runner, "ledger", "init", "--db", "log.db", "--key", "log.key", code=1)
    Path("junk.json").write_text("{not json")
    out = run(runner, "ledger", "verify", "inclusion", "--vkey", "log.key.pub", "--proof",
              "junk.json", code=1)
    assert "not valid JSON" in out
    Path("garbage.key").write_text("PRIVATE+KEY+x+0000+!!!!")
    out = run(runner, "ledger", "init", "--db", "x.db", "--key", "garbage.key", code=1)
    assert "!!!!" not in out


def test_ledger_commands_on_postgresql(runner: CliRunner, pg_url: str) -> None:
    """Every command that takes ``--db FILE`` takes a ``postgresql://`` URL too."""
    vkey = run(runner, "ledger", "keygen", "potd.example/pg", "-o", "log.key").strip()
    run(runner, "ledger", "init", "--db", pg_url, "--key", "log.key")
    out = run(runner, "ledger", "init", "--db", pg_url, "--key", "log.key", code=1)
    assert "already holds a log" in out
    out = json.loads(run(runner, "ledger", "append", "--db", pg_url, "--key", "log.key",
                         input="alpha\nbeta\ngamma\n"))
    assert out["first_index"] == 0 and out["count"] == 3
    cp = run(runner, "ledger", "checkpoint", "--db", pg_url)
    assert cp.splitlines()[:2] == ["potd.example/pg", "3"]
    Path("cp3").write_text(cp)
    Path("p.json").write_text(run(runner, "ledger", "prove", "inclusion", "--db", pg_url,
                                  "--index", "1"))
    Path("e.bin").write_bytes(b"beta")
    assert run(runner, "ledger", "verify", "inclusion", "--vkey", vkey, "--proof", "p.json",
               "--entry", "e.bin", "--checkpoint", "cp3").startswith("OK")
    run(runner, "ledger", "append", "--db", pg_url, "--key", "log.key", input="delta\n")
    Path("c.json").write_text(run(runner, "ledger", "prove", "consistency", "--db", pg_url,
                                  "--from", "3"))
    assert "consistent with size 3" in run(runner, "ledger", "verify", "consistency", "--vkey",
                                           vkey, "--proof", "c.json", "--old", "cp3")
    run(runner, "ledger", "export", "--db", pg_url, "--out", "mirror")
    assert Path("mirror/checkpoint").read_text().splitlines()[1] == "4"
    trainer = run(runner, "ledger", "keygen", "trainer.example", "-o", "t.key").strip()
    assert "allowed" in run(runner, "ledger", "allow", "--db", pg_url, trainer)
    assert "not allowed" in run(runner, "ledger", "deny", "--db", pg_url, trainer)
    # a URL without a server behind it: a storage error with a hint, exit 1
    out = run(runner, "ledger", "checkpoint", "--db", "postgresql://x@127.0.0.1:1/none", code=1)
    assert "cannot connect" in out
