"""ledger.note against the public vectors in ../shared/vectors (read in place).

* golang/mod ``sumdb/note`` tests: keys, a deterministic signature, multi-signer notes,
  the 100-signature limit, keys that must be rejected.
* C2SP signed-note / tlog-checkpoint / tlog-cosignature examples, and the
  transparency-dev/formats checkpoint marshal case.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from ledger.cosignature import cosignature_message, verify_cosignature
from ledger.errors import MalformedError, SignatureError
from ledger.note import (
    ALG_COSIGNATURE_V1,
    ALG_ED25519,
    Checkpoint,
    Signer,
    Verifier,
    b64decode,
    b64encode,
    key_id,
    open_checkpoint,
    open_note,
    parse_note,
    sign_note,
)

try:
    from conftest import vectors_dir
except ImportError:  # tests/ became a package
    from tests.conftest import vectors_dir


@pytest.fixture(scope="module")
def go() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (vectors_dir() / "golang-x-mod-sumdb" / "vectors.json").read_text("utf-8"))
    return data


@pytest.fixture(scope="module")
def gonote(go: dict[str, Any]) -> dict[str, Any]:
    section: dict[str, Any] = go["signed_note"]
    return section


@pytest.fixture(scope="module")
def c2sp() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((vectors_dir() / "c2sp" / "examples.json").read_text("utf-8"))
    return data


@pytest.fixture(scope="module")
def peter(gonote: dict[str, Any]) -> Verifier:
    return Verifier.parse(gonote["vkeys"]["PeterNeumann"])


@pytest.fixture(scope="module")
def enoch(gonote: dict[str, Any]) -> Verifier:
    return Verifier.parse(gonote["vkeys"]["EnochRoot"])


# --- golang.org/x/mod/sumdb/note ----------------------------------------------------

def test_go_vkeys_parse_and_print_back(gonote: dict[str, Any]) -> None:
    for name, vkey in gonote["vkeys"].items():
        v = Verifier.parse(vkey)
        assert v.name == name
        assert v.alg == ALG_ED25519
        assert str(v) == vkey
        assert v.key_id == key_id(name, ALG_ED25519, v.public_key)


def test_go_peter_note_opens_with_its_vkey(gonote: dict[str, Any], peter: Verifier) -> None:
    note, good = open_note(gonote["signed_note_PeterNeumann"], [peter])
    assert note.text == gonote["text"]
    assert good == [peter]
    # bytes in, same result
    note_b, good_b = open_note(gonote["signed_note_PeterNeumann"].encode("utf-8"), [peter])
    assert note_b == note and good_b == good
    # and the parsed note serialises back byte for byte
    assert note.to_bytes() == gonote["signed_note_PeterNeumann"].encode("utf-8")


def test_go_signing_reproduces_peter_note_exactly(gonote: dict[str, Any]) -> None:
    signer = Signer.parse(gonote["skey_PeterNeumann"])
    assert signer.name == "PeterNeumann"
    assert signer.private_string() == gonote["skey_PeterNeumann"]
    note = sign_note(gonote["text"], signer)
    assert note.to_bytes() == gonote["signed_note_PeterNeumann"].encode("utf-8")
    assert str(note) == gonote["signed_note_PeterNeumann"]


def test_go_signer_verifier_string_is_the_vkey(gonote: dict[str, Any], peter: Verifier) -> None:
    signer = Signer.parse(gonote["skey_PeterNeumann"])
    assert str(signer.verifier) == gonote["vkeys"]["PeterNeumann"]
    assert signer.verifier == peter


def test_go_two_signers(gonote: dict[str, Any], peter: Verifier, enoch: Verifier) -> None:
    both = gonote["signed_note_PeterNeumann"] + gonote["sig_line_EnochRoot"]
    note, good = open_note(both, [peter, enoch])
    assert good == [peter, enoch]
    assert [s.name for s in note.signatures] == ["PeterNeumann", "EnochRoot"]
    assert note.to_bytes() == both.encode("utf-8")
    # the verifier order given does not matter; the signature order is kept
    assert open_note(both, [enoch, peter])[1] == [peter, enoch]
    # each alone: the other signature is unknown and ignored
    assert open_note(both, [peter])[1] == [peter]
    assert open_note(both, [enoch])[1] == [enoch]


def test_go_unknown_signatures_ignored(gonote: dict[str, Any], peter: Verifier) -> None:
    stranger = Signer.generate("Stranger").verifier
    both = gonote["signed_note_PeterNeumann"] + gonote["sig_line_EnochRoot"]
    assert open_note(both, [stranger, peter])[1] == [peter]
    # a known name with a different key ID is a different key: also ignored
    same_name = Signer.generate("EnochRoot").verifier
    assert open_note(both, [same_name, peter])[1] == [peter]


def test_go_no_known_signer_rejected(gonote: dict[str, Any]) -> None:
    stranger = Signer.generate("Stranger").verifier
    with pytest.raises(SignatureError):
        open_note(gonote["signed_note_PeterNeumann"], [stranger])
    with pytest.raises(SignatureError):
        open_note(gonote["signed_note_PeterNeumann"], [])


def test_go_enoch_signature_on_other_text_rejected(gonote: dict[str, Any],
                                                   enoch: Verifier) -> None:
    forged = "Some other text.\n\n" + gonote["sig_line_EnochRoot"]
    with pytest.raises(SignatureError):
        open_note(forged, [enoch])
    # unknown to the caller: not an invalid-signature error, just untrusted
    assert parse_note(forged).signatures[0].name == "EnochRoot"


def test_go_more_than_100_signatures_rejected(gonote: dict[str, Any], peter: Verifier) -> None:
    text = gonote["text"]
    peter_sig = gonote["signed_note_PeterNeumann"][len(text) + 1:]
    assert peter_sig.startswith("\u2014 PeterNeumann ")
    with pytest.raises(MalformedError):
        open_note(text + "\n" + peter_sig * 101, [peter])
    with pytest.raises(MalformedError):
        parse_note(text + "\n" + peter_sig * 101)
    # exactly 100 is fine; repeated lines by one key count once
    assert open_note(text + "\n" + peter_sig * 100, [peter])[1] == [peter]


def test_go_16_distinct_signers_one_known(gonote: dict[str, Any]) -> None:
    signers = [Signer.generate(f"key{i}.example/w") for i in range(16)]
    note = sign_note(gonote["text"], *signers)
    data = note.to_bytes()
    assert len(parse_note(data).signatures) == 16
    for i in (0, 7, 15):
        assert open_note(data, [signers[i].verifier])[1] == [signers[i].verifier]
    assert open_note(data, [s.verifier for s in signers])[1] == [s.verifier for s in signers]


@pytest.mark.parametrize("i", [0, 1])
def test_go_bad_vkeys_rejected(gonote: dict[str, Any], i: int) -> None:
    with pytest.raises(MalformedError):
        Verifier.parse(gonote["bad_vkeys_must_reject"][i])


def test_go_tree_note_parses_as_checkpoint(go: dict[str, Any]) -> None:
    tree = go["tlog_tree_note"]
    cp = Checkpoint.from_text(tree["text"])
    assert cp.origin == "go.sum database tree"
    assert cp.size == tree["tree_size"]
    assert cp.root == hashlib.sha256(b"\x00hello world").digest()
    assert cp.extensions == ()
    assert cp.to_text() == tree["text"]


# --- C2SP ------------------------------------------------------------------------------

def test_c2sp_signed_note_example_verifies(c2sp: dict[str, Any]) -> None:
    ex = c2sp["signed_note_example"]
    v = Verifier.parse(ex["vkey"])
    note, good = open_note(ex["note"], [v])
    assert good == [v]
    assert note.text == "This is an example message.\n"
    assert note.to_bytes() == ex["note"].encode("utf-8")


def test_c2sp_signed_note_key_id_recomputed(c2sp: dict[str, Any]) -> None:
    vkey = c2sp["signed_note_example"]["vkey"]
    name, hex8, b64 = vkey.split("+", 2)
    raw = b64decode(b64)
    assert raw[0] == ALG_ED25519
    h = hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4]
    assert h.hex() == hex8 == "530d903a"
    assert key_id(name, raw[0], raw[1:]) == 0x530D903A
    assert Verifier.parse(vkey).key_id == 0x530D903A


def test_c2sp_checkpoint_example_parses(c2sp: dict[str, Any]) -> None:
    data = c2sp["checkpoint_example_unverifiable_no_key"]
    note = parse_note(data)
    cp = Checkpoint.from_text(note.text)
    assert cp.origin == "example.com/behind-the-sofa"
    assert cp.size == 20852163
    assert cp.root == b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert cp.extensions == ()
    assert cp.to_text() == note.text
    assert [s.name for s in note.signatures] == ["example.com/behind-the-sofa"]


def test_c2sp_checkpoint_example_with_other_key_rejected(c2sp: dict[str, Any]) -> None:
    data = c2sp["checkpoint_example_unverifiable_no_key"]
    for name in ("example.com/behind-the-sofa", "other.example/log"):
        with pytest.raises(SignatureError):
            open_checkpoint(data, Signer.generate(name).verifier)


def _cosig_note(c2sp: dict[str, Any]) -> tuple[str, str]:
    full = c2sp["checkpoint_example_unverifiable_no_key"]
    body = parse_note(full).text
    return body, full + c2sp["cosignature_v1_example_line"]


def test_c2sp_cosignature_line_decodes(c2sp: dict[str, Any]) -> None:
    dec = c2sp["cosignature_v1_example_decoded"]
    body, full = _cosig_note(c2sp)
    line = c2sp["cosignature_v1_example_line"]
    raw = b64decode(line.rstrip("\n").split(" ")[-1])
    assert len(raw) == dec["len"] == 76  # key ID (4) || u64 timestamp (8) || Ed25519 sig (64)

    note = parse_note(full)
    assert note.text == body
    log_sig, cosig = note.signatures
    assert cosig.name == "witness.example.com/w1"
    assert f"{cosig.key_id:08x}" == dec["key_id_hex"] == "8d66cf3f"
    assert len(cosig.signature) == 72
    ts = int.from_bytes(cosig.signature[:8], "big")
    assert ts == dec["timestamp"] == 1679315147
    assert cosignature_message(body, ts) == dec["signed_message"].encode("utf-8")
    assert cosig.line() == line
    assert note.to_bytes() == full.encode("utf-8")


def test_c2sp_cosignature_not_by_random_witness(c2sp: dict[str, Any]) -> None:
    body, full = _cosig_note(c2sp)
    cosig = parse_note(full).signatures[1]
    w = Signer.generate("witness.example.com/w1", ALG_COSIGNATURE_V1).verifier
    with pytest.raises(SignatureError):
        verify_cosignature(body, cosig, w)
    # same name and key ID but a different key cannot be built: the key ID binds the key
    with pytest.raises(MalformedError):
        Verifier(w.name, cosig.key_id, ALG_COSIGNATURE_V1, w.public_key)


def test_formats_checkpoint_marshal(c2sp: dict[str, Any]) -> None:
    (origin, size, root_str, want), = c2sp["formats_checkpoint_test"]["marshal"]
    # potd checkpoints carry SHA-256 roots: the 7-byte "bananas" root is refused both ways
    with pytest.raises(MalformedError):
        Checkpoint(origin, size, root_str.encode())
    with pytest.raises(MalformedError):
        Checkpoint.from_text(want)
    # the same layout with a 32-byte root
    root = hashlib.sha256(root_str.encode()).digest()
    want32 = want.replace(b64encode(root_str.encode()), b64encode(root))
    assert want32 == f"Log\n123\n{b64encode(root)}\n"
    cp = Checkpoint(origin, size, root)
    assert cp.to_text() == want32
    assert Checkpoint.from_text(want32) == cp
