"""tlog-cosignature as at C2SP HEAD: ML-DSA-44 cosignatures (alg 0x06), Ed25519 witness
keys in either form (0x01 or 0x04), timestamp sanity, and a real witness server running
on a 0x01 key or an ML-DSA-44 key.

ML-DSA-44 is cross-checked with ``dilithium-py`` (a pure-Python FIPS 204 implementation
by others) when installed: it verifies what potd signs and potd verifies what it signs,
each over a ``cosigned_message`` built here byte by byte from the spec's struct.
"""

from __future__ import annotations

import hashlib
import struct
import time
from pathlib import Path

import httpx
import pytest
from test_witness import Server, body, new_log, post

from ledger.client import LogClient
from ledger.cosignature import (
    MAX_CLOCK_SKEW,
    as_cosigner,
    as_cosigning_key,
    cosign,
    count_cosignatures,
    explain_missing,
    mldsa_message,
    verify_cosignature,
)
from ledger.errors import MalformedError, SignatureError
from ledger.note import (
    ALG_COSIGNATURE_V1,
    ALG_ED25519,
    ALG_MLDSA44,
    Checkpoint,
    Note,
    NoteSignature,
    Signer,
    Verifier,
    b64encode,
    key_id,
    parse_note,
    sign_checkpoint,
)
from ledger.witness import Witness, WitnessState

LOG = Signer.generate("example.com/behind-the-sofa")
CP = Checkpoint("example.com/behind-the-sofa", 20852163,
                hashlib.sha256(b"root").digest(), ("timestamp 1700000000000",))
CP_TEXT = CP.to_text()
MLDSA = Signer.generate("witness.example/pq", ALG_MLDSA44)


def spec_message(name: str, ts: int, origin: str, start: int, end: int, root: bytes) -> bytes:
    """The spec's ``cosigned_message``, written out from its struct (RFC 8446 syntax)."""
    n, o = name.encode(), origin.encode()
    return (b"subtree/v1\n\x00" + bytes([len(n)]) + n + ts.to_bytes(8, "big")
            + bytes([len(o)]) + o + start.to_bytes(8, "big") + end.to_bytes(8, "big") + root)


# --- ML-DSA-44 ------------------------------------------------------------------------

def test_mldsa_key_strings_round_trip() -> None:
    v = MLDSA.verifier
    assert len(v.public_key) == 1312
    assert v.key_id == key_id(v.name, ALG_MLDSA44, v.public_key)
    assert Verifier.parse(str(v)) == v
    assert Signer.parse(MLDSA.private_string()).verifier == v
    with pytest.raises(MalformedError, match="expected 1313"):
        Verifier.parse(f"{v.name}+{v.key_id:08x}+" + b64encode(bytes([6]) + v.public_key[1:]))
    with pytest.raises(MalformedError, match="expected 33"):  # an Ed25519 key cut short
        Verifier.parse(f"w+{0:08x}+" + b64encode(bytes([ALG_COSIGNATURE_V1]) + bytes(31)))


def test_mldsa_cosignature_verifies_and_tampering_fails() -> None:
    sig = cosign(CP_TEXT, MLDSA, 1679315147)
    assert len(sig.signature) == 8 + 2420
    assert MLDSA.verifier.verify(spec_message(MLDSA.name, 1679315147, CP.origin, 0, CP.size,
                                              CP.root), sig.signature[8:])
    assert mldsa_message(CP_TEXT, MLDSA.name, 5) == spec_message(MLDSA.name, 5, CP.origin, 0,
                                                                 CP.size, CP.root)
    w = MLDSA.verifier
    note = parse_note(Note(CP_TEXT, (*sign_checkpoint(CP, LOG).note.signatures, sig)).to_bytes())
    assert verify_cosignature(note.text, note.signatures[1], w) == 1679315147
    assert count_cosignatures(note, [w]) == [w]
    # extension lines are not covered by an ML-DSA-44 cosignature (the spec says so)
    other_ext = Checkpoint(CP.origin, CP.size, CP.root, ("other",)).to_text()
    assert verify_cosignature(other_ext, sig, w) == 1679315147
    flip = bytearray(sig.signature)
    flip[100] ^= 1
    bad = [
        (CP_TEXT.replace("20852163", "20852164"), sig),                      # size
        (Checkpoint(CP.origin, CP.size, bytes(32)).to_text(), sig),          # root
        (CP_TEXT, NoteSignature(sig.name, sig.key_id, bytes(flip))),          # signature
        (CP_TEXT, NoteSignature(sig.name, sig.key_id,
                                struct.pack(">Q", 1679315148) + sig.signature[8:])),  # time
        (CP_TEXT, NoteSignature(sig.name, sig.key_id, sig.signature[:-1])),   # length
    ]
    for text, s in bad:
        with pytest.raises(SignatureError):
            verify_cosignature(text, s, w)
    # the same ML-DSA key under another name: the name is in the signed message
    renamed = Verifier("witness.example/other", key_id("witness.example/other", ALG_MLDSA44,
                                                       w.public_key), ALG_MLDSA44, w.public_key)
    with pytest.raises(SignatureError):
        verify_cosignature(CP_TEXT, NoteSignature(renamed.name, renamed.key_id, sig.signature),
                           renamed)


def test_mldsa_cross_checked_with_dilithium_py() -> None:
    dpy = pytest.importorskip("dilithium_py.ml_dsa", reason="dilithium-py not installed")
    ml = dpy.ML_DSA_44
    seed = bytes(range(32))
    pk, sk = ml.key_derive(seed)
    name = "witness.example/dpy"
    ours = Signer(name, key_id(name, ALG_MLDSA44, pk), ALG_MLDSA44, seed)
    assert ours.public_key == pk
    msg = spec_message(name, 1700000000, CP.origin, 0, CP.size, CP.root)
    # theirs -> ours
    line = NoteSignature(name, ours.key_id, struct.pack(">Q", 1700000000) + ml.sign(sk, msg))
    assert verify_cosignature(CP_TEXT, line, ours.verifier) == 1700000000
    # ours -> theirs
    mine = cosign(CP_TEXT, ours, 1700000000)
    assert ml.verify(pk, msg, mine.signature[8:])
    assert not ml.verify(pk, msg.replace(b"behind", b"BEHIND"), mine.signature[8:])


# --- Ed25519 key forms ----------------------------------------------------------------

def test_ed25519_witness_key_in_either_form() -> None:
    note_key = Signer.generate("witness.example/w1", ALG_ED25519)  # transparency-dev's form
    sig = cosign(CP_TEXT, as_cosigning_key(note_key), 1000)
    v04 = as_cosigner(note_key.verifier)
    assert (v04.alg, v04.public_key) == (ALG_COSIGNATURE_V1, note_key.public_key)
    assert sig.key_id == v04.key_id == key_id(note_key.name, ALG_COSIGNATURE_V1,
                                               note_key.public_key)
    for form in (note_key.verifier, v04, Verifier.parse(str(note_key.verifier))):
        assert verify_cosignature(CP_TEXT, sig, form) == 1000
        assert count_cosignatures(Note(CP_TEXT, (sig,)), [form]) == [form]


def test_missing_cosignature_explains_a_key_in_another_form() -> None:
    pq = MLDSA
    # the witness signs with ML-DSA, the auditor was given some other key of that name
    ed = Signer.generate(pq.name, ALG_ED25519)
    note = Note(CP_TEXT, (cosign(CP_TEXT, pq, 1),))
    assert count_cosignatures(note, [ed.verifier]) == []
    why = explain_missing(note, [ed.verifier])
    assert "Ed25519 note key (0x01)" in why and f"{pq.key_id:08x}" in why
    assert explain_missing(note, [Signer.generate("w.example/x", 4).verifier]) == ""


# --- timestamps -------------------------------------------------------------------------

def test_timestamps_at_2_63_or_far_in_the_future_are_refused() -> None:
    w = Signer.generate("witness.example/t", ALG_COSIGNATURE_V1)
    for ts in (2**63, 2**64 - 1):
        raw = struct.pack(">Q", ts) + w.sign(f"cosignature/v1\ntime {ts}\n{CP_TEXT}".encode())
        with pytest.raises(SignatureError, match="2\\^63"):
            verify_cosignature(CP_TEXT, NoteSignature(w.name, w.key_id, raw), w.verifier)
    with pytest.raises(MalformedError):
        cosign(CP_TEXT, w, 2**63)
    now = time.time()
    ahead = cosign(CP_TEXT, w, int(now) + MAX_CLOCK_SKEW + 60)
    with pytest.raises(SignatureError, match="future"):
        verify_cosignature(CP_TEXT, ahead, w.verifier, now=now)
    assert verify_cosignature(CP_TEXT, cosign(CP_TEXT, w, int(now) + 60), w.verifier, now=now)


# --- a real witness server: 0x01 key, ML-DSA key; 422 and the monitoring API --------------

@pytest.mark.parametrize("alg", [ALG_ED25519, ALG_MLDSA44])
def test_witness_serves_on_a_note_key_or_an_mldsa_key(tmp_path: Path, alg: int) -> None:
    key = Signer.generate("witness.example/served", alg)
    (tmp_path / "w.key").write_text(key.private_string() + "\n")
    db = tmp_path / "w.db"
    WitnessState(str(db)).close()
    log = new_log(tmp_path, db)
    log.append([b"e%d" % i for i in range(5)])
    srv = Server(db, tmp_path / "w.key", tmp_path / "err")
    try:
        with httpx.Client(timeout=10) as http:
            cp = log.checkpoint()
            r = post(http, srv.url, body(0, [], str(cp)))
            assert r.status_code == 200, r.text
            cosig = parse_note(cp.to_bytes() + r.content).signatures[-1]
            # verifies under the key as generated and, for 0x01, under its 0x04 form
            for form in {key.verifier, as_cosigner(key.verifier)}:
                assert verify_cosignature(cp.checkpoint.to_text(), cosig, form) > 0
            # monitoring API: the checkpoint with the log's signature and the cosignature
            h = hashlib.sha256(cp.origin.encode()).hexdigest()
            m = http.get(f"{srv.url}/{h}/checkpoint")
            assert m.status_code == 200
            got = parse_note(m.content)
            assert got.text == cp.note.text and cosig in got.signatures
            assert http.get(f"{srv.url}/{'0' * 64}/checkpoint").status_code == 404
            # a second root for the cosigned size: 422 (C2SP tlog-witness HEAD)
            other = sign_checkpoint(Checkpoint(cp.origin, cp.size, bytes(32)), log.signer)
            assert post(http, srv.url, body(cp.size, [], str(other))).status_code == 422
        if alg == ALG_ED25519:
            assert "Ed25519 note key (0x01)" in (tmp_path / "err").read_text()
    finally:
        srv.stop()


def test_size_zero_with_a_non_empty_root_is_422(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    state = WitnessState(str(db))
    log = new_log(tmp_path, db)
    w = Witness(state, Signer.generate("witness.example/z", ALG_COSIGNATURE_V1))
    bad = sign_checkpoint(Checkpoint(log.origin, 0, bytes(32)), log.signer)
    with pytest.raises(Exception) as e:
        w.add_checkpoint(body(0, [], str(bad)))
    assert getattr(e.value, "status", None) == 422
    state.close()


def test_auditor_names_a_witness_key_in_the_wrong_form(tmp_path: Path) -> None:
    """A client pinned to a key that is not the witness's cosigning key is told so, not
    accused of a split view."""
    db = tmp_path / "w.db"
    state = WitnessState(str(db))
    log = new_log(tmp_path, db)
    log.append([b"x"])
    pq = Signer.generate("witness.example/pq2", ALG_MLDSA44)
    cp = log.checkpoint()
    sig = Witness(state, pq).add_checkpoint(body(0, [], str(cp)))
    cosigned = parse_note(cp.to_bytes() + sig)
    wrong = Signer.generate(pq.name, ALG_ED25519).verifier
    client = LogClient("http://127.0.0.1:1", log.signer.verifier, witnesses=[wrong], quorum=1)
    with pytest.raises(SignatureError) as e:
        client.check_witnesses(type(cp)(cp.checkpoint, cosigned))
    assert "another form or of another algorithm" in (e.value.hint or "")
    assert count_cosignatures(cosigned, [pq.verifier]) == [pq.verifier]
    state.close()
