"""A C2SP tlog-policy file wherever --witness/--quorum is taken: the prover's attested time
(`potd prover train/resume --policy`) and the log server's witness quorum (`potd ledger
serve --policy`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from ledger.cli import main
from ledger.cosignature import cosign
from ledger.errors import VerificationError
from ledger.note import (
    ALG_COSIGNATURE_V1,
    Checkpoint,
    Note,
    NoteSignature,
    SignedCheckpoint,
    Signer,
    sign_checkpoint,
)
from ledger.policy import parse_policy
from prover.beacon import attested_ms

LOG = Signer.generate("potd.test/log")
WS = [Signer.generate(f"w{i}.test/w", ALG_COSIGNATURE_V1) for i in range(4)]


def _policy(quorum_lines: str) -> bytes:
    ws = "".join(f"witness w{i} {w.verifier}\n" for i, w in enumerate(WS))
    return f"log {LOG.verifier}\n{ws}{quorum_lines}".encode()


def _cosigned(times: dict[int, int]) -> SignedCheckpoint:
    plain = sign_checkpoint(Checkpoint(LOG.name, 5, bytes(32)), LOG)
    text = plain.note.text
    sigs = (*plain.note.signatures, *(cosign(text, WS[i], t) for i, t in times.items()))
    return SignedCheckpoint(plain.checkpoint, Note(text, sigs))


def test_attested_time_under_a_policy() -> None:
    """The earliest time by which the cosigners meet the policy's rule."""
    cp = _cosigned({0: 100, 1: 50, 2: 300, 3: 70})
    flat = parse_policy(_policy("group g 2 w0 w1 w2 w3\nquorum g\n"))
    assert attested_ms(cp, [], 0, flat)[0] == attested_ms(
        cp, [w.verifier for w in WS], 2)[0] == 71_000  # the flat rule: k-th smallest
    # two operators, each its own pair: both groups must be met
    nested = parse_policy(_policy("group a any w0 w1\ngroup b any w2 w3\n"
                                  "group both all a b\nquorum both\n"))
    assert attested_ms(cp, [], 0, nested)[0] == 71_000  # w1 at 50 (a), w3 at 70 (b)
    strict = parse_policy(_policy("group a all w0 w2\nquorum a\n"))
    assert attested_ms(cp, [], 0, strict)[0] == 301_000
    # the cheapest attack: cosignatures by keys not in the policy, or forged ones
    forged = _cosigned({1: 50})
    fake = NoteSignature(WS[3].name, WS[3].verifier.key_id, bytes(72))  # w3's line, forged
    stranger = Signer.generate("w9.test/w", ALG_COSIGNATURE_V1)  # not in the policy
    bad = Note(forged.note.text, (*forged.note.signatures, fake,
                                  cosign(forged.note.text, stranger, 10)))
    with pytest.raises(VerificationError, match="not enough for its quorum"):
        attested_ms(SignedCheckpoint(forged.checkpoint, bad), [], 0, nested)
    none = parse_policy(_policy("quorum none\n"))
    with pytest.raises(VerificationError, match="timestamp"):  # no witnesses: the log's word
        attested_ms(cp, [], 0, none)


@pytest.mark.parametrize("command", ["train", "resume"])
def test_prover_policy_replaces_witness_and_quorum(tmp_path: Path, command: str) -> None:
    (tmp_path / "p.txt").write_bytes(_policy("quorum w0\n"))
    (tmp_path / "x").write_text(Signer.generate("trainer.test/t").private_string())
    args = (["prover", "train", "--recipe", "digits-mlp", "--log", "http://127.0.0.1:9", "--vkey",
             str(LOG.verifier), "--key", str(tmp_path / "x"), "--evidence", str(tmp_path / "e")]
            if command == "train" else
            ["prover", "resume", "--spool", str(tmp_path / "x"), "--train", "--key",
             str(tmp_path / "x")])
    r = CliRunner().invoke(main, [*args, "--policy", str(tmp_path / "p.txt"), "--witness",
                                  str(WS[0].verifier)])
    assert r.exit_code == 2 and "--policy replaces --witness/--quorum" in r.output, r.output
    assert "--policy" in CliRunner().invoke(main, [*args[:2], "--help"]).output


@pytest.mark.slow
def test_serve_publishes_checkpoints_meeting_a_policy(tmp_path: Path) -> None:
    """`potd ledger serve --policy`: witnesses (and their URLs) from the policy file; a
    checkpoint is published once the cosigners meet its quorum rule."""
    from test_client import open_statement
    from test_witness_integration import WitnessProc, new_log, published, until

    from ledger.client import LogClient
    from ledger.cosignature import count_cosignatures
    from ledger.devserver import ServerProcess

    log_key = new_log(tmp_path)
    w1, w2 = (WitnessProc(tmp_path, n, log_key).start() for n in ("w1", "w2"))
    absent = Signer.generate("witness.example/gone", ALG_COSIGNATURE_V1).verifier
    policy = (f"log {log_key.verifier}\nwitness a {w1.signer.verifier} {w1.url}\n"
              f"witness b {w2.signer.verifier} {w2.url}\nwitness c {absent}\n"
              "group g 2 a b c\nquorum g\n")
    (tmp_path / "policy.txt").write_text(policy)
    try:
        srv = ServerProcess(str(tmp_path / "log.db"), str(tmp_path / "log.key"),
                            extra=["--open-registration", "--policy",
                                   str(tmp_path / "policy.txt")],
                            log_file=str(tmp_path / "server.log")).start()
        try:
            trainer = Signer.generate("trainer.example/t")
            with LogClient(srv.url, log_key.verifier) as plain:
                r = plain.add(open_statement(trainer, "p0"))
            until(lambda: (cp := published(srv.url, log_key)) is not None
                  and cp.size >= r.index + 1, what="a published checkpoint meeting the policy")
            cp = published(srv.url, log_key)
            assert cp is not None
            ws = [w1.signer.verifier, w2.signer.verifier]
            assert sorted(count_cosignatures(cp.note, ws), key=str) == sorted(ws, key=str)
            with LogClient(srv.url, log_key.verifier, policy=parse_policy(policy.encode())) as c:
                assert c.checkpoint().size == cp.size  # an auditor under the same policy
        finally:
            srv.stop()
    finally:
        w1.stop()
        w2.stop()


def test_serve_policy_refused_when_it_cannot_be_met(tmp_path: Path) -> None:
    from ledger.errors import UsageError
    from ledger.log import Log
    from ledger.server import create_app

    log = Log.create(str(tmp_path / "log.db"), LOG)
    url = "http://127.0.0.1:1"
    for text, extra, msg in [
        (_policy("group g all w0 w1\nquorum g\n"), {}, "cannot meet the policy's quorum"),
        (_policy("quorum none\n"), {}, "quorum is none"),
        (_policy("quorum w0\n"), {"witness_quorum": 1}, "--policy replaces --witness-quorum"),
    ]:
        with pytest.raises(UsageError, match=msg):
            create_app(log, witnesses=[f"{url}={WS[0].verifier}"],
                       witness_policy=parse_policy(text), **extra)
    with pytest.raises(Exception, match="not an http"):
        parse_policy(b"witness a " + str(WS[0].verifier).encode() + b" ftp://x\nquorum a\n")
    log.store.close()
