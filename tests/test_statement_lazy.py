"""The native parser's validation-only mode (ledger/_fastpath.c, ``lazy=True``: the log
server's write path): the body is checked in C without being built, and
``Statement.body`` is decoded from ``raw`` on first use. Against the native
parser that builds the body and against the strict Python parser: the same statements
taken, the same fields, body, prev and leaf hash, the same refusals (named by the Python
path either way) - on generated valid, faulty and mutated statements, and on bodies
whose keys hold escapes (their order is by code point of the decoded key)."""

from __future__ import annotations

import json
import random

import pytest

from ledger import statement_native
from ledger.merkle import leaf_hash
from ledger.note import b64encode
from ledger.statement import Statement, parse_statement, parse_statement_array
from tests.test_statement_fast import fields, native_agrees, outcome, require_native, strict_single
from tests.test_statement_native import OTHER, TRAINER, Gen, hexs, mutate


def _native(raw: bytes, lazy: bool) -> object:
    """What C makes of ``raw`` alone and inside a batch of two, in one mode."""
    one = statement_native.parse_one(raw, lazy)
    two = statement_native.parse_batch(b"[" + raw + b"," + raw + b"]", lazy)
    return (None if one is None else fields(one),
            None if two is None else [fields(s) for s in two])


def lazy_agrees(data: bytes) -> bool:
    """:func:`native_agrees` for the lazy mode: C takes ``data`` only if the strict
    parser does, with the same fields (the body decoded on use) and leaf hash."""
    st = statement_native.parse_one(data, True)
    if st is None:
        return False
    ref = strict_single(data)
    assert isinstance(ref, Statement)
    assert fields(st) == fields(ref) and st.prev == ref.prev
    assert st.leaf_hash() == leaf_hash(data)
    return True


def test_lazy_and_built_bodies_take_the_same_statements() -> None:
    require_native()
    gen, rng = Gen(21), random.Random(22)
    took = 0
    for i in range(2500):
        raw = gen.statement(faulty=i % 3 == 2)
        if i % 2:
            raw = mutate(rng, raw)
        lazy = _native(raw, True)
        assert lazy == _native(raw, False), raw
        took += lazy[0] is not None
        assert lazy_agrees(raw) == (lazy[0] is not None)  # and the strict parser agrees
        assert outcome(lambda d: parse_statement(d, lazy=True), raw) == \
            outcome(strict_single, raw)
    assert took > 700  # a third faulty, half mutated: both sides exercised


def test_the_body_is_built_on_first_use_only() -> None:
    require_native()
    gen = Gen(23)
    raws = [r for r in (gen.statement() for _ in range(40))  # those C takes
            if statement_native.parse_one(r) is not None]
    batch = b"[" + b",".join(raws) + b"]"
    assert all("body" in vars(s) for s in parse_statement_array(batch))  # eager: default
    sts = parse_statement_array(batch, lazy=True)
    assert len(raws) > 20 and len(sts) == len(raws)
    for st, raw in zip(sts, raws, strict=True):
        ref = strict_single(raw)
        assert isinstance(ref, Statement)
        assert "body" not in vars(st) and "_leaf" in vars(st)
        assert st.prev == ref.prev and st.leaf_hash() == leaf_hash(raw)
        body = st.body
        assert vars(st)["body"] is body and st.body is body  # decoded once, then kept
        assert body == ref.body and list(body) == list(ref.body)
        assert st == ref and st.signing_message() == ref.signing_message()
    with pytest.raises(AttributeError):  # the class has no body of its own
        Statement.body  # noqa: B018


# keys that need escapes or sort differently once decoded ("\\" is 0x5c, '"' is 0x22)
KEYS = ["\n", "\x1f", "\x00", "\t", '"', "\\", "a", "a\\", 'a"', "a\n", "é", "\x7f", "b\tc",
        "", "~", "prev0", "\U0001f600", "\ufeff"]


def _statement(members: list[tuple[str, object]], seq: int = 5) -> bytes:
    """A step statement whose body has exactly these members in this order."""
    body = "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" +
                          json.dumps(v, ensure_ascii=False, separators=(",", ":"))
                          for k, v in members) + "}"
    return ('{"body":' + body + ',"kind":"step","run":"' + "ab" * 32 + f'","seq":{seq},'
            f'"sig":"{b64encode(bytes(range(64)))}","signer":"{TRAINER.verifier}","v":1}}'
            ).encode()


def test_escaped_keys_are_ordered_by_code_point() -> None:
    require_native()
    rng = random.Random(24)
    for _ in range(400):
        d: dict[str, object] = {"prev": hexs(rng, 64), "step": 4, "batch_root": hexs(rng, 64)}
        for k in rng.sample(KEYS, rng.randrange(1, 6)):
            d[k] = rng.choice([0, "x", {}, [1], None])
        members = sorted(d.items())
        raw = _statement(members)
        assert native_agrees(raw) and lazy_agrees(raw), raw  # canonical: C takes it
        i = rng.randrange(len(members) - 1)  # two members swapped: never canonical
        members[i], members[i + 1] = members[i + 1], members[i]
        swapped = _statement(members)
        assert not native_agrees(swapped) and not lazy_agrees(swapped)
        assert outcome(parse_statement, swapped) == outcome(strict_single, swapped)
        assert outcome(strict_single, swapped)[0] == "error"


def test_body_checks_on_bytes_refuse_as_python_does() -> None:
    """Each field check of the validation-only parse, at its edges."""
    require_native()
    rng = random.Random(25)
    base = {"prev": hexs(rng, 64), "step": 4, "batch_root": hexs(rng, 64)}
    edits: list[dict[str, object]] = [
        {"prev": "A" * 64}, {"prev": "a" * 63}, {"prev": "\\u0061" * 64}, {"prev": 1},
        {"step": 5}, {"step": -4}, {"step": "4"}, {"step": True}, {"step": 10**18 - 1},
        {"weights": "ab" * 15}, {"weights": "ab" * 16}, {"weights": "ab" * 64},
        {"weights": "ab" * 64 + "a"}, {"weights": "ab" * 65}, {"loss": "1e5"},
        {"loss": "-Infinity"}, {"loss": "infinit"}, {"loss": "1."}, {"loss": "\u0661"},
        {"loss": "nan\n"}, {"lr": ""}, {"lr": 2}, {"checkpoint": []}, {"checkpoint": {}},
        {"beacon_checkpoint": 3}, {"epoch": 0}, {"epoch": None}, {"batch_root": None},
    ]
    for edit in edits:
        d = {**base, **edit}
        d = {k: v for k, v in d.items() if v is not None}
        raw = _statement(sorted(d.items()))
        assert native_agrees(raw) == lazy_agrees(raw)  # if C takes it, as strict does
        assert outcome(lambda d: parse_statement(d, lazy=True), raw) == \
            outcome(strict_single, raw), edit


def test_a_batch_shares_run_and_signer_objects_only_where_equal() -> None:
    """The native parser reuses the previous statement's run and signer string when the
    bytes are the same token: alternating signers (one a prefix of the other's name) and
    runs give exactly the strict parser's fields."""
    require_native()
    rng = random.Random(26)
    signers = [str(TRAINER.verifier), str(OTHER.verifier)]
    runs = ["ab" * 32, "ab" * 31 + "ac", "cd" * 32]
    items = []
    for _ in range(40):
        seq = rng.randrange(1, 99)
        raw = _statement([("batch_root", hexs(rng, 64)), ("prev", hexs(rng, 64)),
                          ("step", seq - 1)], seq)
        raw = raw.replace(b"ab" * 32, rng.choice(runs).encode(), 1)
        raw = raw.replace(signers[0].encode(), rng.choice(signers).encode())
        items.append(raw)
    sts = statement_native.parse_batch(b"[" + b",".join(items) + b"]", True)
    assert sts is not None
    assert [fields(s) for s in sts] == [fields(strict_single(x)) for x in items]  # type: ignore[arg-type]
    for a, b in zip(sts, sts[1:]):
        assert (a.signer is b.signer) == (a.signer == b.signer)
        assert (a.run is b.run) == (a.run == b.run)


def test_without_the_extension_lazy_parsing_is_the_python_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``lazy`` only tells C not to build bodies: without C, the same statements."""
    gen = Gen(27)
    raws = [r for r in (gen.statement() for _ in range(12)) if outcome(strict_single, r)[0] == "ok"]
    batch = b"[" + b",".join(raws) + b"]"
    want = [fields(s) for s in parse_statement_array(batch)]
    monkeypatch.setattr(statement_native, "_native", None)
    assert [fields(s) for s in parse_statement_array(batch, lazy=True)] == want
    assert [fields(parse_statement(r, lazy=True)) for r in raws] == want
