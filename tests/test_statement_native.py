"""The native statement path (ledger/_fastpath.c) against the strict Python parser, on a
generated corpus: random valid statements of every kind with random bodies, the same
with one field fault each (signed, canonical JSON: only the field checks refuse them),
and random byte mutations of them. The C path may decline anything (the Python path
then decides), but it must never take what the strict parser refuses, and what it takes
must have exactly the strict parser's fields and leaf hash. Signatures: the first bad
one is found at the right index, with the Python path's error."""

from __future__ import annotations

import base64
import json
import random
import re
from typing import Any

import pytest

from ledger import fastjson, statement_native
from ledger.errors import SignatureError
from ledger.merkle import leaf_hash
from ledger.note import Signer, Verifier, b64encode, key_id
from ledger.sequencer import verify_signatures
from ledger.statement import (
    JSON,
    Statement,
    _parse_array_strict,
    canonical_json,
    parse_statement,
    parse_statement_array,
    run_id,
    signing_message,
)
from tests.test_statement_fast import fields, native_agrees, outcome, require_native, strict_single

TRAINER = Signer.generate("trainer.example")
OTHER = Signer.generate("other.example")

CHARS = ["a", "z", "A", "0", "é", "ü", "κ", "\u2028", "\ufeff", "\U0001f600", "\U0001d11e",
         "\x00", "\x08", "\x1f", "\n", "\t", "\r", "\f", '"', "\\", "/", "\x7f", " ", "~"]


def hexs(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


class Gen:
    """Random statements; ``exotic`` is set when one holds something the C grammar
    leaves to Python by design (an integer of 19 digits, a non-ASCII decimal string)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.exotic = False

    def text(self, n: int = 6) -> str:
        return "".join(self.rng.choice(CHARS) for _ in range(self.rng.randrange(n)))

    def integer(self) -> int:
        r = self.rng
        k = r.choice([1, 1, 2, 5, 9, 17, 18, 18, 19])
        if k == 19:
            self.exotic = True
            return r.choice([-(2**63), 2**63 - 1, 10**18, -(10**18) - 7])
        v = r.randrange(10 ** (k - 1) if k > 1 else 0, 10**k)
        return -v if r.random() < 0.3 else v

    def value(self, depth: int = 0) -> JSON:
        r = self.rng.random()
        if depth > 3 or r < 0.45:
            return self.rng.choice([None, True, False, self.integer(), self.text(),
                                    self.text(12), 0, ""])
        if r < 0.7:
            return [self.value(depth + 1) for _ in range(self.rng.randrange(4))]
        return {self.text(4): self.value(depth + 1) for _ in range(self.rng.randrange(4))}

    def decimal(self) -> str:
        s: str = self.rng.choice(["2.5", "0", "-1e-5", "1E+3", "7", "NaN", "-Infinity",
                                  "inf", "iNf", "0.000", "12.5e7"])
        return s

    def extra(self, body: dict[str, JSON]) -> None:
        for _ in range(self.rng.randrange(4)):
            body[self.text(5) or "x"] = self.value()

    def body(self, kind: str, seq: int) -> dict[str, JSON]:
        r, rng = self.rng, self.rng
        b: dict[str, JSON]
        if kind == "run.open":
            ds: dict[str, JSON] = {"root": hexs(rng, 64), "size": r.randrange(10**9)}
            if r.random() < 0.5:
                ds.update(example_hash=self.text(), sorted_root=hexs(rng, 64),
                          distinct=r.randrange(99), hash_list=hexs(rng, 64))
            b = {"seed_commitment": hexs(rng, 64), "dataset": ds}
            if r.random() < 0.5:
                b.update(recipe={"name": self.text()}, hyperparameters={"lr": "0.1"},
                         weights_hash=self.text(), beacon={}, environment={"x": self.value()})
        elif kind == "step":
            b = {"prev": hexs(rng, 64), "step": seq - 1, "batch_root": hexs(rng, 64)}
            if r.random() < 0.6:
                b.update(epoch=r.randrange(9), batch_size=r.randrange(1, 512),
                         loss=self.decimal(), lr=self.decimal(),
                         weights=hexs(rng, 2 * r.randrange(16, 65)), checkpoint={},
                         beacon_checkpoint=self.text(), open_checkpoint=self.text())
        else:
            b = {"prev": hexs(rng, 64)}
            if r.random() < 0.6:
                b.update(steps=r.randrange(99), weights=hexs(rng, 64), s_rand=self.text(),
                         manifest=hexs(rng, 96), final_weights=hexs(rng, 128),
                         final_state=hexs(rng, 64), challenge_beacon={}, reason=self.text())
        self.extra(b)
        return b

    def fault(self, d: dict[str, Any]) -> None:
        """One field fault that only Statement's checks (or _from_json's) catch."""
        r, body = self.rng, d["body"]
        bad_values: list[JSON] = [None, True, False, -1, 1, "", "AB" * 32, "ab" * 31 + "a",
                                  "ab" * 33, "g" * 64, {}, [], "1.", ".5", "01", "1e",
                                  "\u0661", "nan ", "\uff12", "a" * 258, "ab" * 15]
        choice = r.randrange(12)
        if choice <= 4 and body:
            name = r.choice(sorted(body))
            body[name] = r.choice(bad_values)
        elif choice == 5:
            body.pop(r.choice(sorted(body)), None)
        elif choice == 6:
            d["seq"] = r.choice([0, 1, 2, 2**62, d["seq"] + 1])
        elif choice == 7:
            d["kind"] = r.choice(["step", "run.open", "run.close", "Step", "run", ""])
        elif choice == 8:
            d["run"] = r.choice([hexs(r, 64), hexs(r, 63), "A" * 64, run_id(body)
                                 if "dataset" in body else hexs(r, 64)])
        elif choice == 9:
            d["v"] = r.choice([0, 2, True, "1"])
        elif choice == 10:
            if "dataset" in body and isinstance(body["dataset"], dict):
                body["dataset"][r.choice(["root", "size", "distinct", "hash_list"])] = \
                    r.choice(bad_values)
            else:
                body["prev"] = r.choice(bad_values)
        else:
            d[r.choice(["extra", "sig2", "Body"])] = 1

    def statement(self, faulty: bool = False) -> bytes:
        self.exotic = False
        kind = self.rng.choice(["run.open", "step", "step", "run.close"])
        seq = 0 if kind == "run.open" else self.rng.randrange(1, 10**6)
        body = self.body(kind, seq)
        run = run_id(body) if kind == "run.open" else hexs(self.rng, 64)
        if kind == "step" and self.rng.random() < 0.2:  # decimals only Python takes
            body["loss"] = self.rng.choice(["\u0131nf", "-\u0130NF"])
            self.exotic = True
        d: dict[str, Any] = {"body": body, "kind": kind, "run": run, "seq": seq,
                             "signer": str(TRAINER.verifier), "v": 1}
        if faulty:
            self.fault(d)
            self.exotic |= isinstance(d["seq"], int) and d["seq"] >= 10**18
        d["sig"] = b64encode(TRAINER.sign(signing_message(d)))
        return canonical_json(d)


def test_generated_statements_same_outcome_as_the_strict_parser() -> None:
    require_native()
    gen, took, valid = Gen(1), 0, 0
    for i in range(3000):
        raw = gen.statement(faulty=i % 3 == 2)
        ok = outcome(strict_single, raw)[0] == "ok"
        valid += ok
        c = native_agrees(raw)
        took += c
        assert c or not ok or gen.exotic, raw  # C takes every plain valid statement
        assert outcome(parse_statement, raw) == outcome(strict_single, raw)
    assert valid > 1800 and took > 1400  # the corpus exercised both sides


MUTATIONS = [b" ", b"\n", b"0", b"-", b"-0", b"01", b".5", b"1.0", b"e5", b"1234567890123456789",
             b",", b":", b"}", b"]", b'"', b"\\", b"\\u0041", b"\\ud800", b"\\ud83d\\ude00",
             b"\\U0041", b"\\/", b"\\u001F", b"\\u000a", b"\xed\xa0\x80", b"\xc0\xaf",
             b"\xe0\x80\xaf", b"\xf4\x90\x80\x80", b"\xc3", b"\xff", b"\x00", b"\x1f",
             b'"a":1,', b"null", b"true", b"[]", b"{}", b"NaN"]


def mutate(rng: random.Random, raw: bytes) -> bytes:
    b = bytearray(raw)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(7)
        i = rng.randrange(len(b)) if b else 0
        if op == 0 and b:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[i:i] = rng.choice(MUTATIONS)
        elif op == 2 and b:
            del b[i:i + rng.randrange(1, 4)]
        elif op == 3:  # duplicate an object's first key
            m = [x for x in re.finditer(rb'\{"([^"\\]*)":', bytes(b))]
            if m:
                x = rng.choice(m)
                b[x.start() + 1:x.start() + 1] = b'"' + x.group(1) + b'":0,'
        elif op == 4:  # swap two members of an object (keys out of order)
            m = [x for x in re.finditer(rb'([{,])("[a-z_]*":"[^"\\]*")(,"[a-z_]*":"[^"\\]*")',
                                        bytes(b))]
            if m:
                x = rng.choice(m)
                b[x.start():x.end()] = x.group(1) + x.group(3)[1:] + b"," + x.group(2)
        elif op == 5:  # truncate
            del b[i:]
        else:  # replace a digit run with a long, negative zero or leading-zero number
            m = list(re.finditer(rb":[0-9]+", bytes(b)))
            if m:
                x = rng.choice(m)
                b[x.start() + 1:x.end()] = rng.choice([b"-0", b"00", b"1" * 19, b"-" + b"9" * 18,
                                                       b"1.0", b"1e2", b"9" * 18])
    return bytes(b)


def test_mutated_statements_never_taken_unless_valid() -> None:
    require_native()
    gen, rng = Gen(2), random.Random(3)
    corpus = [gen.statement(faulty=i % 4 == 3) for i in range(300)]
    taken = 0
    for _ in range(8000):
        m = mutate(rng, rng.choice(corpus))
        c = native_agrees(m)  # C's result, if any, is exactly the strict parser's
        taken += c
        if not c and outcome(strict_single, m)[0] == "ok":  # left to Python by design
            assert fastjson._LONG_INT.search(m) or b"\xc4\xb1" in m or b"\xc4\xb0" in m
        sts = statement_native.parse_batch(b"[" + m + b"]")
        if sts is not None:
            assert [fields(s) for s in sts] == [fields(strict_single(m))]
    assert taken > 20  # some mutations stay valid (inside strings and numbers)


def test_generated_batches_same_statements_as_the_strict_parser(
        monkeypatch: pytest.MonkeyPatch) -> None:
    require_native()
    gen, rng = Gen(4), random.Random(5)
    corpus = [gen.statement() for _ in range(60)]
    for trial in range(150):
        monkeypatch.setattr(statement_native, "BATCH_CHUNK", rng.choice([1, 2, 3, 256]))
        items = [rng.choice(corpus) for _ in range(rng.randrange(1, 12))]
        if trial % 3 == 0:
            k = rng.randrange(len(items))
            items[k] = mutate(rng, items[k])
        body = b"[" + b",".join(items) + b"]"
        sts = statement_native.parse_batch(body)
        if sts is None:
            continue
        assert [fields(s) for s in sts] == [fields(s) for s in _parse_array_strict(body)]
        assert [s.leaf_hash() for s in sts] == [leaf_hash(x) for x in items]


def _with_sig(raw: bytes, sig: bytes) -> bytes:
    d = json.loads(raw)
    d["sig"] = base64.b64encode(sig).decode()
    return canonical_json(d)


def _python_error(sts: list[Statement], start: int) -> tuple[str, object]:
    try:
        for k, st in enumerate(sts, start):  # the Python path, statement by statement
            try:
                from ledger.statement import verify_statement_signature
                verify_statement_signature(st)
            except SignatureError as e:
                e.message = f"statement #{k}: {e.message}"
                setattr(e, "statement", k)  # noqa: B010
                raise
    except SignatureError as e:
        return e.message, getattr(e, "statement", None)
    return "", None


def test_native_verification_finds_the_first_bad_signature() -> None:
    require_native()
    gen, rng = Gen(6), random.Random(7)
    good = [gen.statement() for _ in range(40)]
    good = [g for g in good if outcome(strict_single, g)[0] == "ok"]
    for _ in range(30):
        raws = [rng.choice(good) for _ in range(rng.randrange(1, 20))]
        bad = sorted(rng.sample(range(len(raws)), rng.randrange(0, min(3, len(raws)) + 1)))
        for k in bad:
            st = parse_statement(raws[k])
            sig = bytearray(st.sig)
            sig[rng.randrange(64)] ^= 1 << rng.randrange(8)
            raws[k] = _with_sig(raws[k], bytes(sig))
        sts = [parse_statement(r) for r in raws]
        want = bad[0] if bad else len(sts)
        assert statement_native.first_bad_signature(sts) == want
        assert statement_native.first_bad_signature(sts, want) == want
        start = rng.randrange(100)
        msg, at = _python_error(sts, start)
        if not bad:
            verify_signatures(sts, True, start)
            assert msg == ""
            continue
        with pytest.raises(SignatureError) as e:
            verify_signatures(sts, True, start)
        assert (e.value.message, getattr(e.value, "statement", None)) == (msg, at)
        assert at == start + bad[0]


def _raw_signer(name: str, pub: bytes) -> str:
    return f"{name}+{key_id(name, 1, pub):08x}+" + base64.b64encode(b"\x01" + pub).decode()


def test_native_and_pynacl_refuse_the_same_edge_signatures() -> None:
    """The cheapest forgeries: a small-order key with an identity signature (verifies
    any message under cofactorless math), a non-canonical S (S + L), an all-zero
    signature. libsodium refuses them in C exactly as PyNaCl (libsodium) does."""
    require_native()
    good = parse_statement(Gen(8).statement())
    ell = 2**252 + 27742317777372353535851937790883648493
    r_, s_ = good.sig[:32], int.from_bytes(good.sig[32:], "little")
    cases = [(good.signer, r_ + (s_ + ell).to_bytes(32, "little")),
             (good.signer, bytes(64))]
    ident = b"\x01" + bytes(31)
    for pub in (ident, bytes(32), b"\xec" + b"\xff" * 30 + b"\x7f"):
        cases.append((_raw_signer("small.example", pub), ident + bytes(32)))
    for signer, sig in cases:
        d = json.loads(good.raw)
        d["signer"] = signer
        d["sig"] = base64.b64encode(sig).decode()
        raw = canonical_json(d)
        st = parse_statement(raw)
        assert Verifier.parse(signer).public_key  # a parsable key, so parsing took it
        assert statement_native.first_bad_signature([st]) == 0
        with pytest.raises(SignatureError):
            verify_signatures([st], False)


def test_a_signer_key_python_refuses_is_never_taken() -> None:
    require_native()
    good = json.loads(Gen(9).statement())
    pub = Verifier.parse(good["signer"]).public_key
    bad_signers = [
        good["signer"].replace("+", "+0", 1),                      # key id altered
        "x+" + good["signer"].split("+", 1)[1],                    # name changed: id mismatch
        str(OTHER.verifier)[:-2] + "==",                           # base64 damaged
        f"c+{key_id('c', 4, pub):08x}+" + base64.b64encode(b"\x04" + pub).decode(),  # alg 0x04
        "PRIVATE+KEY+" + good["signer"], "", " ",
        " " + good["signer"],                                      # Python strips: accepted
    ]
    for signer in bad_signers:
        d = dict(good, signer=signer)
        d["sig"] = b64encode(TRAINER.sign(signing_message(d)))
        raw = canonical_json(d)
        native_agrees(raw)
        assert outcome(parse_statement, raw) == outcome(strict_single, raw)


def test_without_the_extension_the_python_path_does_it_all(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An install without a C compiler or the headers: same statements, same errors."""
    gen = Gen(10)
    raws = [gen.statement() for _ in range(6)]
    raws = [r for r in raws if outcome(strict_single, r)[0] == "ok"]
    body = b"[" + b",".join(raws) + b"]"
    bad = _with_sig(raws[-1], bytes(64))
    with_native = [fields(s) for s in parse_statement_array(body)]
    monkeypatch.setattr(statement_native, "_native", None)
    monkeypatch.setattr(statement_native, "_verify", None)
    assert statement_native.parse_batch(body) is None
    assert statement_native.first_bad_signature([]) is None
    sts = parse_statement_array(body)
    assert [fields(s) for s in sts] == with_native
    assert all("_leaf" not in vars(s) for s in sts)
    verify_signatures(sts, True)
    with pytest.raises(SignatureError) as e:
        verify_signatures([*sts, parse_statement(bad)], True, 3)
    assert getattr(e.value, "statement", None) == 3 + len(sts)
