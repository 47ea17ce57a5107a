"""C2SP tlog-proof@v1 and tlog-policy: round trips through the CLI (`potd ledger prove
inclusion --format tlog-proof`, `potd ledger verify inclusion` with --witness/--quorum or
--policy), the example from the C2SP text, and hostile files."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from test_witness import body, new_log

from ledger.cli import main
from ledger.cosignature import cosign
from ledger.errors import InclusionError, MalformedError, SignatureError
from ledger.merkle import leaf_hash
from ledger.note import (
    ALG_COSIGNATURE_V1,
    ALG_ED25519,
    ALG_MLDSA44,
    Note,
    SignedCheckpoint,
    Signer,
    parse_note,
)
from ledger.policy import parse_policy
from ledger.tlog_proof import HEADER, TlogProof, verify_tlog_proof
from ledger.witness import Witness, WitnessState

# The example in C2SP tlog-proof.md (signatures elided with "[...]" there, and its five
# hashes are illustrative: a real proof for index 73894 of 109482 has 17).
C2SP_EXAMPLE = """c2sp.org/tlog-proof@v1
extra YWdlLXYxLjIuMS1kYXJ3aW4tYXJtNjQudGFyLmd6kYXJ3aW4tYXJ
index 73894
gSKyXoYZUgZ6jduWYrkDOARinOMGJveXjgMkBTcdPlQ=
B95lDa8R83lS8n0eG+o0buTxRKQTYFi//1U8anccXmA=
EKNzoDWG8LGC0Yp9o+sv3qllpMP9uHQ9B20KNL+Q1zs=
RoopEkOdqkYqMB4MJXrbt/hMjOxsVn0IrWjpz1ZMMes=
AHCioX9nLjsrse6YhjRRmk1WUEirVOLLRoOQ6vfO5vk=

example.com/fancylog
109482
sFodV/vSp5O8n9a8QpW6PRY97tfOSW5bsc2Xl/EQi08=

\u2014 example.com/fancylog hI2DJw[...]1roloI=
\u2014 witness1.example mJirIklj[...]qY9v2B/5bg==
"""


def test_c2sp_example_parses_and_its_elided_signatures_do_not_verify() -> None:
    tp = TlogProof.from_bytes(C2SP_EXAMPLE.encode())
    assert tp.index == 73894 and len(tp.hashes) == 5
    assert tp.extra is not None and tp.extra.startswith(b"age-v1.2.1-darwin-arm64.tar.gz")
    assert tp.to_bytes() == C2SP_EXAMPLE.encode()
    with pytest.raises(MalformedError, match="base64"):  # "[...]" is not a signature
        parse_note(tp.checkpoint)


@pytest.fixture
def cosigned(tmp_path: Path) -> tuple[object, SignedCheckpoint, list[Signer]]:
    log = new_log(tmp_path, None)
    log.append([b"entry %d" % i for i in range(13)])
    cp = log.checkpoint()
    ws = [Signer.generate("w1.example/w", ALG_ED25519),  # a 0x01 key: cosigns as 0x04
          Signer.generate("w2.example/w", ALG_MLDSA44),
          Signer.generate("w3.example/w", ALG_COSIGNATURE_V1)]
    lines = b""
    for i, w in enumerate(ws[:2]):  # each witness with its own state
        state = WitnessState(str(tmp_path / f"w{i}.db"))
        state.add_log(log.origin, log.signer.verifier)
        lines += Witness(state, w).add_checkpoint(body(0, [], str(cp)))
        state.close()
    note = parse_note(cp.to_bytes() + lines)
    return log, SignedCheckpoint(cp.checkpoint, note), ws


def test_round_trip_and_witness_policy(cosigned: tuple, tmp_path: Path) -> None:
    log, cp, ws = cosigned
    tp = TlogProof(7, tuple(log.inclusion_proof(7, cp.size)), cp.to_bytes(), b"ctx")
    again = TlogProof.from_bytes(tp.to_bytes())
    assert again == tp and again.to_bytes().startswith(HEADER.encode() + b"\nextra Y3R4\n")
    leaf = leaf_hash(b"entry 7")
    vs = [w.verifier for w in ws]
    assert verify_tlog_proof(again, leaf, log.signer.verifier, witnesses=vs, quorum=2).size == 13
    with pytest.raises(SignatureError):  # w3 never cosigned
        verify_tlog_proof(again, leaf, log.signer.verifier, witnesses=vs, quorum=3)
    with pytest.raises(InclusionError):
        verify_tlog_proof(again, leaf_hash(b"entry 8"), log.signer.verifier)
    with pytest.raises(InclusionError):
        verify_tlog_proof(TlogProof(8, tp.hashes, tp.checkpoint), leaf, log.signer.verifier)
    with pytest.raises(SignatureError):
        verify_tlog_proof(again, leaf, Signer.generate(log.origin).verifier)

    # the CLI: prove from the database, verify with --witness/--quorum and with --policy
    (tmp_path / "e7").write_bytes(b"entry 7")
    f = tmp_path / "p.tlog-proof"
    f.write_bytes(tp.to_bytes())
    base = ["ledger", "verify", "inclusion", "--proof", str(f), "--entry", str(tmp_path / "e7")]
    vk = ["--vkey", str(log.signer.verifier)]
    wit = [x for v in vs for x in ("--witness", str(v))]
    r = CliRunner().invoke(main, [*base, *vk, *wit, "--quorum", "2"])
    assert r.exit_code == 0 and "OK: entry 7" in r.output, r.output
    r = CliRunner().invoke(main, [*base, *vk, *wit])  # all three: w3 is missing
    assert r.exit_code == 1, r.output
    pol = tmp_path / "policy"
    pol.write_text(f"# test\nlog {log.signer.verifier}\n\twitness A {vs[0]} https://a.example\n"
                   f"witness B {vs[1]}\nwitness C {vs[2]}\ngroup AB all A B\n"
                   "group any-of 1 AB C\nquorum any-of\n")
    r = CliRunner().invoke(main, [*base, "--policy", str(pol)])  # the log key from the policy
    assert r.exit_code == 0, r.output
    pol.write_text(f"log {log.signer.verifier}\nwitness A {vs[0]}\nwitness C {vs[2]}\n"
                   "group AC all A C\nquorum AC\n")
    r = CliRunner().invoke(main, [*base, "--policy", str(pol)])
    assert r.exit_code == 1 and "quorum" in r.output, r.output
    r = CliRunner().invoke(main, [*base[:-2], *vk])
    assert r.exit_code == 2 and "--entry" in r.output


def test_prove_inclusion_tlog_proof_from_the_database(tmp_path: Path) -> None:
    log = new_log(tmp_path, None)
    log.append([b"a", b"b", b"c"])
    db = next(str(p) for p in tmp_path.glob("log*.db"))
    r = CliRunner().invoke(main, ["ledger", "prove", "inclusion", "--db", db, "--index", "1",
                                  "--format", "tlog-proof"])
    assert r.exit_code == 0, r.output
    tp = TlogProof.from_bytes(r.stdout.encode())
    assert tp.index == 1 and tp.extra is None
    assert verify_tlog_proof(tp, leaf_hash(b"b"), log.signer.verifier).size == 3


def test_hostile_proof_files_are_malformed() -> None:
    cp = b"o\n1\n" + b"A" * 43 + b"=\n\n"
    good = f"{HEADER}\nindex 0\n\n".encode() + cp
    assert TlogProof.from_bytes(good).index == 0
    h = "A" * 43 + "="
    for bad in (
        b"c2sp.org/tlog-proof@v2\nindex 0\n\n" + cp,       # other version
        f"{HEADER}\nindex 01\n\n".encode() + cp,           # leading zero
        f"{HEADER}\nindex 0\n".encode() + cp,              # no empty line after the proof
        f"{HEADER}\nindex 0\n{h[:-2]}\n\n".encode() + cp,  # short hash
        f"{HEADER}\nindex 0\n".encode() + (h + "\n").encode() * 65 + b"\n" + cp,
        f"{HEADER}\nextra !!\nindex 0\n\n".encode() + cp,
        f"{HEADER}\nindex 18446744073709551616\n\n".encode() + cp,
        f"{HEADER}\nindex 0\n\n".encode() + b"x" * (1 << 20),
    ):
        with pytest.raises(MalformedError):
            TlogProof.from_bytes(bad)


def test_policy_files() -> None:
    ks = [Signer.generate(f"w{i}.example", ALG_COSIGNATURE_V1).verifier for i in range(6)]
    text = "\n".join([*(f"witness X{i} {ks[i]}" for i in range(3)), "group X 2 X0 X1 X2",
                      *(f"witness Y{i} {ks[3 + i]}" for i in range(3)), "group Y any Y0 Y1 Y2",
                      "group XY all X Y", "quorum XY", ""])
    p = parse_policy(text.encode())
    assert p.satisfied([ks[0], ks[2], ks[4]])
    assert not p.satisfied([ks[0], ks[3], ks[4]])  # one X only
    assert not p.satisfied([ks[0], ks[1]])  # no Y
    assert parse_policy(b"quorum none\n").satisfied([])
    log = Signer.generate("log.example").verifier
    for bad, why in [
        (b"witness A " + str(ks[0]).encode() + b"\n", "no quorum"),
        (f"witness A {ks[0]}\nwitness B {ks[0]}\nquorum A\n".encode(), "duplicate key"),
        (f"witness A {ks[0]}\nwitness A {ks[1]}\nquorum A\n".encode(), "already defined"),
        (f"witness A {ks[0]}\ngroup G 2 A\nquorum G\n".encode(), "threshold"),
        (f"witness A {ks[0]}\ngroup G any A A\nquorum G\n".encode(), "twice"),
        (b"group G any A\nquorum G\n", "not defined"),
        (f"witness A {ks[0]}\ngroup G any none\nquorum G\n".encode(), "not defined"),
        (b"quorum none\nquorum none\n", "second quorum"),
        (b"quorum B\n", "not defined"),
        (b"quorum none\x0b\n", "control character"),
        (f"log {ks[0]}\nquorum none\n".encode(), "not an Ed25519"),
        (f"logg {log}\nquorum none\n".encode(), "unknown"),
        (b"witness A not-a-key\nquorum A\n", "line 1"),
    ]:
        with pytest.raises(MalformedError, match=why):
            parse_policy(bad)


def test_cosignature_on_the_proof_checkpoint_is_by_the_right_witness(cosigned: tuple) -> None:
    """A tlog-proof carrying another checkpoint's cosignature does not count it."""
    log, cp, ws = cosigned
    log.append([b"more"])
    other = log.checkpoint()
    moved = Note(cp.note.text, (*cp.note.signatures[:1],
                                cosign(other.checkpoint.to_text(), ws[2], 5)))
    tp = TlogProof(0, tuple(log.inclusion_proof(0, cp.size)), moved.to_bytes())
    with pytest.raises(SignatureError):
        verify_tlog_proof(tp, leaf_hash(b"entry 0"), log.signer.verifier,
                          witnesses=[ws[2].verifier], quorum=1)
