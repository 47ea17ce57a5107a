"""Statements (docs/protocol.md §3): canonical JSON, field checks, signatures, run ids, batches."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.errors import MalformedError, SignatureError
from ledger.merkle import leaf_hash
from ledger.note import ALG_COSIGNATURE_V1, Signer
from ledger.statement import (
    JSON,
    NonCanonicalError,
    Statement,
    build_statement,
    canonical_json,
    loads_strict,
    parse_canonical,
    parse_statement,
    parse_statement_array,
    run_id,
    sign_statement,
    signing_message,
    verify_statement_signature,
)

TRAINER = Signer.generate("trainer.example")
OTHER = Signer.generate("other.example")
OPEN_BODY: dict[str, JSON] = {
    "seed_commitment": "ab" * 32,
    "dataset": {"root": "cd" * 32, "size": 100, "example_hash": "potd-example-v1"},
    "recipe": {"name": "tiny", "code_hash": "ef" * 32, "config": {"lr": "0.1"}},
    "weights_hash": "blake3",
}


def opened() -> bytes:
    return build_statement("run.open", None, 0, OPEN_BODY, TRAINER)


def step(prev: bytes, t: int, **extra: JSON) -> bytes:
    body: dict[str, JSON] = {"step": t, "epoch": 0, "batch_root": "12" * 32, "batch_size": 8,
                             "loss": "2.302585", "lr": "0.1", "prev": leaf_hash(prev).hex()}
    body.update(extra)
    return build_statement("step", run_id(OPEN_BODY), t + 1, body, TRAINER)


def resign(fields: dict[str, JSON], signer: Signer = TRAINER) -> bytes:
    """Sign arbitrary fields without build_statement's checks (to make bad statements)."""
    d = {k: v for k, v in fields.items() if k != "sig"}
    d["sig"] = base64.b64encode(signer.sign(signing_message(d))).decode()
    return canonical_json(d)


# --- canonical JSON ------------------------------------------------------------------

def test_canonical_form() -> None:
    want = '{"a":[true,null,"é"],"b":1}'.encode()
    assert canonical_json({"b": 1, "a": [True, None, "é"]}) == want
    for bad in (1.5, float("nan"), {1: 2}, {"a": {"b": 2**63}}, "\ud800", b"bytes"):
        with pytest.raises(MalformedError):
            canonical_json(bad)


@pytest.mark.parametrize("data, why", [
    (b'{"a":1,"a":2}', "duplicate"),
    (b'{"a":1.0}', "not an integer"),
    (b'{"a":1e3}', "not an integer"),
    (b'{"a":NaN}', "NaN"),
    (b'{"a":Infinity}', "Infinity"),
    (b'{"a":99999999999999999999}', "64-bit"),
    (b'{"a":"\\ud800"}', "surrogate"),
    (b'\xff{"a":1}', "UTF-8"),
    (b'{"a":', "invalid JSON"),
    (b"[" * 100000 + b"]" * 100000, "deeply"),
])
def test_strict_parser_rejects(data: bytes, why: str) -> None:
    with pytest.raises(MalformedError, match=why):
        parse_canonical(data)


@pytest.mark.parametrize("data", [
    b'{"b":1,"a":2}', b'{"a": 1}', b'{"a":1}\n', b'{"a":"\\u00e9"}', b'{"a":-0}',
    b'{"a":"\\/"}', b' {"a":1}',
])
def test_non_canonical_rejected(data: bytes) -> None:
    loads_strict(data)  # well-formed JSON ...
    with pytest.raises(NonCanonicalError) as e:  # ... but not in canonical form
        parse_canonical(data)
    assert e.value.code == "non_canonical"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_canonical_round_trip(v: JSON) -> None:
    data = canonical_json(v)
    assert parse_canonical(data) == v
    assert canonical_json(json.loads(data)) == data


# --- statements --------------------------------------------------------------------

def test_build_parse_verify_round_trip() -> None:
    o = opened()
    s = parse_statement(o)
    assert (s.kind, s.seq, s.signer, s.run) == ("run.open", 0, str(TRAINER.verifier),
                                               run_id(OPEN_BODY))
    assert s.to_bytes() == o and s.leaf_hash() == leaf_hash(o)
    assert s.signing_message() == signing_message(json.loads(o))
    verify_statement_signature(s)
    s2 = parse_statement(step(o, 0))
    verify_statement_signature(s2)
    assert s2.prev == leaf_hash(o).hex() and s2.seq == 1
    assert Statement.from_bytes(o) == s
    # the dataclass re-encodes to the same bytes when built from fields
    rebuilt = Statement(s.kind, s.run, s.seq, s.signer, s.sig, s.body)
    assert rebuilt.raw == o


def test_run_id_is_hash_of_canonical_open_body() -> None:
    assert run_id(OPEN_BODY) == hashlib.sha256(canonical_json(OPEN_BODY)).hexdigest()
    # key order of the input does not matter: the body is canonicalised
    assert run_id(dict(reversed(list(OPEN_BODY.items())))) == run_id(OPEN_BODY)


def test_signature_checks() -> None:
    fields = json.loads(opened())
    with pytest.raises(SignatureError):  # signed by another key than 'signer'
        verify_statement_signature(parse_statement(resign(fields, OTHER)))
    fields["body"]["weights_hash"] = "sha256"  # edited after signing (run id changes too)
    fields["run"] = run_id(fields["body"])
    with pytest.raises(SignatureError):
        verify_statement_signature(parse_statement(canonical_json(fields)))
    sig = bytearray(base64.b64decode(json.loads(opened())["sig"]))
    sig[0] ^= 1
    f2 = json.loads(opened())
    f2["sig"] = base64.b64encode(bytes(sig)).decode()
    with pytest.raises(SignatureError):
        verify_statement_signature(parse_statement(canonical_json(f2)))


def _mutated(**changes: JSON) -> bytes:
    f = json.loads(step(opened(), 0))
    for k, v in changes.items():
        if k.startswith("body_"):
            if v is None:
                del f["body"][k[5:]]
            else:
                f["body"][k[5:]] = v
        elif v is None:
            del f[k]
        else:
            f[k] = v
    return resign(f)


@pytest.mark.parametrize("changes, why", [
    ({"v": 2}, "version"),
    ({"v": True}, "'v' must be an integer"),
    ({"kind": "run.reopen"}, "unknown statement kind"),
    ({"run": "AB" * 32}, "64 lowercase hex"),
    ({"seq": -1}, "non-negative"),
    ({"seq": "1"}, "'seq' must be an integer"),
    ({"seq": True}, "'seq' must be an integer"),
    ({"seq": 0}, "seq 0 is the run.open"),
    ({"seq": 5}, "seq = step \\+ 1"),
    ({"signer": "not a key"}, "verifier key"),
    ({"body": []}, "'body' must be a dict"),
    ({"extra": 1}, "unexpected 'extra'"),
    ({"body_prev": None}, "no 'prev'"),
    ({"body_prev": "AB" * 32}, "prev must be 64"),
    ({"body_step": "0"}, "body.step must be a non-negative integer"),
    ({"body_step": True}, "body.step must be"),
    ({"body_batch_root": "12" * 31}, "batch_root"),
    ({"body_loss": "2,3"}, "decimal"),
    ({"body_batch_size": -1}, "batch_size"),
    ({"body_checkpoint": "x"}, "JSON object"),
])
def test_malformed_statements(changes: dict[str, JSON], why: str) -> None:
    with pytest.raises(MalformedError, match=why):
        parse_statement(_mutated(**changes))


def test_missing_fields_and_bad_sig_encoding() -> None:
    f = json.loads(opened())
    del f["sig"]
    with pytest.raises(MalformedError, match="missing sig"):
        parse_statement(canonical_json(f))
    f["sig"] = "not base64!"
    with pytest.raises(MalformedError, match="base64"):
        parse_statement(canonical_json(f))
    f["sig"] = base64.b64encode(b"x" * 63).decode()
    with pytest.raises(MalformedError, match="64-byte"):
        parse_statement(canonical_json(f))
    with pytest.raises(MalformedError, match="JSON object"):
        parse_statement(b"[]")


def test_run_open_rules() -> None:
    f = json.loads(opened())
    f["run"] = "00" * 32
    with pytest.raises(MalformedError, match="hash of its body"):
        parse_statement(resign(f))
    body = dict(OPEN_BODY, prev="00" * 32)
    with pytest.raises(MalformedError, match="must not have 'prev'"):
        build_statement("run.open", None, 0, body, TRAINER)
    with pytest.raises(MalformedError, match="seq 0"):
        build_statement("run.open", None, 1, OPEN_BODY, TRAINER)
    bad_ds = dict(OPEN_BODY, dataset={"root": "cd" * 32})
    with pytest.raises(MalformedError, match="body.dataset has no 'size'"):
        build_statement("run.open", None, 0, bad_ds, TRAINER)
    with pytest.raises(MalformedError, match="seed_commitment"):
        build_statement("run.open", None, 0, {"dataset": OPEN_BODY["dataset"]}, TRAINER)


def test_prover_like_bodies_pass() -> None:
    """Extra keys are allowed; decimal strings include the non-finite spellings."""
    o = opened()
    for loss in ("NaN", "Infinity", "-Infinity", "0.000001", "-0.0", "1e-7"):
        parse_statement(step(o, 0, loss=loss, custom={"any": ["thing", 1, None]}))
    close = build_statement("run.close", run_id(OPEN_BODY), 2, {
        "prev": "00" * 32, "steps": 1, "final_weights": "11" * 32, "s_rand": "22" * 32,
        "manifest": "33" * 32}, TRAINER)
    assert parse_statement(close).kind == "run.close"


def test_builder_refuses_wrong_keys() -> None:
    with pytest.raises(MalformedError, match="Ed25519"):
        build_statement("run.open", None, 0, OPEN_BODY,
                        Signer.generate("w.example", ALG_COSIGNATURE_V1))
    with pytest.raises(MalformedError, match="does not name the signing key"):
        sign_statement({"body": OPEN_BODY, "kind": "run.open", "run": run_id(OPEN_BODY),
                        "seq": 0, "signer": str(OTHER.verifier)}, TRAINER)
    with pytest.raises(MalformedError, match="needs its run id"):
        build_statement("step", None, 1, {}, TRAINER)


def test_signing_message_excludes_only_top_level_sig() -> None:
    # a body key named "sig" must stay in the signed message
    o = build_statement("run.open", None, 0, dict(OPEN_BODY, sig="body field"), TRAINER)
    s = parse_statement(o)
    assert b'"sig":"body field"' in s.signing_message()
    assert s.signing_message() == signing_message(json.loads(o))
    verify_statement_signature(s)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_bit_flips_never_escape_as_raw_errors(data: st.DataObject) -> None:
    raw = bytearray(step(opened(), 0))
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] ^= 1 << data.draw(st.integers(0, 7))
    try:
        s = parse_statement(bytes(raw))
    except MalformedError:
        return
    with pytest.raises(SignatureError):
        verify_statement_signature(s)


# --- batches -----------------------------------------------------------------------

def test_statement_arrays() -> None:
    o = opened()
    s1 = step(o, 0)
    got = parse_statement_array(b"[" + o + b"," + s1 + b"]")
    assert [g.raw for g in got] == [o, s1]
    got = parse_statement_array(b" [\n  " + o + b" ,\n  " + s1 + b"\n]\n")
    assert [g.raw for g in got] == [o, s1]
    for bad, why in [(b"[]", "empty"), (b"{}", "JSON array"), (b"[" + o, "expected ','"),
                     (b"[" + o + b"]]", "expected ','"), (b"[" + o + b",]", "statement #1"),
                     (b"\xff", "UTF-8")]:
        with pytest.raises(MalformedError, match=why):
            parse_statement_array(bad)
    spaced = json.dumps(json.loads(s1), indent=1).encode()
    with pytest.raises(NonCanonicalError, match="statement #1") as e:
        parse_statement_array(b"[" + o + b"," + spaced + b"]")
    assert getattr(e.value, "statement") == 1  # noqa: B009


def test_a_signature_spelled_with_set_padding_bits_is_refused() -> None:
    """The last base64 character of a 64-byte signature carries 2 unused bits: setting
    them gives the same bytes under another spelling — two log entries for one statement
    (found by hypothesis flipping bit 1 of the last signature character)."""
    import base64
    import json

    from ledger.note import Signer
    from ledger.statement import build_statement, parse_statement

    key = Signer.generate("trainer.example/alice")
    data = build_statement("run.open", None, 0, {"seed_commitment": "ab" * 32,
                                                 "dataset": {"root": "cd" * 32, "size": 3}}, key)
    obj = json.loads(data)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    # 64 bytes -> 88 characters ending "X==": X carries 2 bits of the last byte and 4
    # unused bits; set the lowest unused one
    assert len(obj["sig"]) == 88 and obj["sig"].endswith("==")
    twin = alphabet[alphabet.index(obj["sig"][-3]) | 1]
    obj["sig"] = obj["sig"][:-3] + twin + "=="
    forged = data.replace(json.loads(data)["sig"].encode(), obj["sig"].encode())
    assert forged != data and base64.b64decode(obj["sig"]) == base64.b64decode(
        json.loads(data)["sig"])  # the same signature bytes
    with pytest.raises(MalformedError, match="canonical"):
        parse_statement(forged)
