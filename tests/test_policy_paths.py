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
    bad = Note(forged.note.text, (*forged.note.signatures, fake,
                                  cosign(forged.note.text, Signer.generate("w9.test/w", ALG_COSIGNATURE_V1), 10)))
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
