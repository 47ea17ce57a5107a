"""Statements, the log's entries (docs/protocol.md §3): canonical JSON, trainer signatures, run ids.

A statement is the UTF-8 canonical JSON of one object with exactly the keys
``body, kind, run, seq, sig, signer, v``::

    {"body":{...},"kind":"step","run":"<hex>","seq":17,"sig":"<b64>","signer":"<vkey>","v":1}

Canonical JSON here means: object keys sorted by code point (Python ``sort_keys``, which
is also UTF-8 byte order), no whitespace, ``ensure_ascii=False`` (non-ASCII characters as
raw UTF-8, control characters escaped the way Python's encoder escapes them), integers
only (no floats, NaN or Infinity; real numbers are decimal strings), no duplicate keys,
integers within signed 64 bits, nesting within the interpreter's recursion limit (deeper
input is rejected as malformed, never a crash). A parser accepts
exactly the bytes this module's encoder produces: it decodes, re-encodes and compares.

``sig`` is base64 std of the Ed25519 signature, by the key named in ``signer`` (a Go note
verifier key string, algorithm 0x01), over ``potd-statement-v1\\n`` || the canonical JSON
of the statement without ``sig``. ``run`` is the hex SHA-256 of the canonical JSON of the
run's ``run.open`` body; every later statement of the run carries in ``body.prev`` the hex
leaf hash (RFC 6962, ``SHA-256(0x00 || statement)``) of the run's previous statement.

What this module checks is everything a single statement can show by itself: format,
field types, ``run`` of a ``run.open``, ``seq`` of a ``step``, and the signature. Whether
``seq``/``prev`` continue the run and whether the signer may write needs the log's state;
the sequencer checks that. Trusts nothing: every input is parsed strictly.

Parsing tries, in order, the native parser (:mod:`ledger.statement_native`, optional C),
the decode-and-re-encode fast path (:mod:`ledger.fastjson`) and the strict parser here.
The first two only ever accept, and only exactly what the strict parser accepts; anything
they decline goes on to the strict parser, which names the fault. Signatures are checked
by libsodium either way (PyNaCl's, or the extension's).
"""

from __future__ import annotations

import hashlib
import json
import re
from binascii import a2b_base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

import nacl.exceptions
import nacl.signing

from . import statement_native as native
from .errors import MalformedError, SignatureError
from .fastjson import canonical_values
from .note import ALG_ED25519, Signer, Verifier, b64decode, b64encode

JSON = None | bool | int | str | list["JSON"] | dict[str, "JSON"]

STATEMENT_VERSION = 1
SIGNING_PREFIX = b"potd-statement-v1\n"
KINDS = ("run.open", "step", "run.close")
FIELDS = ("body", "kind", "run", "seq", "sig", "signer", "v")
MAX_INT = 2**63 - 1
MIN_INT = -(2**63)
SIG_SIZE = 64


class NonCanonicalError(MalformedError):
    """Well-formed JSON that is not in canonical form (key order, spacing, escapes, ...)."""

    code = "non_canonical"
    hint = ("encode the statement as canonical JSON: keys sorted, no whitespace, integers "
            "only, UTF-8 (e.g. Python json.dumps(sort_keys=True, separators=(',', ':'), "
            "ensure_ascii=False)) and send exactly those bytes")


# --- canonical JSON ---------------------------------------------------------------

def _valid(v: object) -> bool:
    """True if ``v`` is allowed in canonical JSON (the fast path of :func:`_check_value`:
    no error paths are built unless something is wrong)."""
    t = type(v)
    if t is str:
        return v.isascii() or _utf8(v)  # type: ignore[attr-defined, arg-type]
    if t is int:
        return MIN_INT <= v <= MAX_INT  # type: ignore[operator]
    if t is dict:
        return all(type(k) is str and (k.isascii() or _utf8(k)) and _valid(x)
                   for k, x in v.items())  # type: ignore[attr-defined]
    if t is list:
        return all(_valid(x) for x in v)  # type: ignore[attr-defined]
    return v is None or t is bool


def _utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def _check_value(v: object, where: str) -> None:
    if _valid(v):
        return
    _explain(v, where)


def _explain(v: object, where: str) -> None:
    """Raise MalformedError naming where ``v`` breaks the canonical JSON rules."""
    if v is None or isinstance(v, bool):
        return
    if isinstance(v, int):
        if not MIN_INT <= v <= MAX_INT:
            raise MalformedError(f"{where}: integer {v} is outside the signed 64-bit range")
        return
    if isinstance(v, str):
        if not _utf8(v):
            raise MalformedError(f"{where}: string holds a lone surrogate (not UTF-8)")
        return
    if isinstance(v, float):
        raise MalformedError(f"{where}: floats are not allowed ({v!r})",
                             hint="write real numbers as decimal strings, e.g. \"0.001\"")
    if isinstance(v, list):
        for i, x in enumerate(v):
            _explain(x, f"{where}[{i}]")
        return
    if isinstance(v, dict):
        for k, x in v.items():
            if not isinstance(k, str):
                raise MalformedError(f"{where}: object key {k!r} is not a string")
            _explain(k, f"{where} key")
            _explain(x, f"{where}.{k}")
        return
    raise MalformedError(f"{where}: {type(v).__name__} is not a JSON value")


def canonical_json(value: object) -> bytes:
    """Canonical JSON bytes of ``value``; raises MalformedError for anything not allowed."""
    try:
        _check_value(value, "$")
        return json.dumps(value, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False, allow_nan=False).encode("utf-8")
    except RecursionError:
        raise MalformedError("JSON nested too deeply") from None


def _no_duplicates(pairs: list[tuple[str, JSON]]) -> dict[str, JSON]:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise MalformedError(f"duplicate object key {dup!r}",
                             hint="each key may appear once per JSON object")
    return d


def _no_float(s: str) -> JSON:
    raise MalformedError(f"number {s[:40]} is not an integer",
                         hint="floats are not allowed; write real numbers as decimal strings")


def _int_in_range(s: str) -> JSON:
    if len(s) > 20:
        raise MalformedError(f"integer {s[:24]}... is outside the signed 64-bit range")
    v = int(s)
    if not MIN_INT <= v <= MAX_INT:
        raise MalformedError(f"integer {v} is outside the signed 64-bit range")
    return v


def _no_constant(s: str) -> JSON:
    raise MalformedError(f"{s} is not valid JSON", hint="NaN and Infinity are not JSON numbers")


def loads_strict(data: bytes | str) -> JSON:
    """Parse JSON strictly: UTF-8, no duplicate keys, no floats/NaN, 64-bit integers."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise MalformedError(f"not valid UTF-8 at byte {e.start}",
                                 hint="statements are UTF-8 JSON") from None
    else:
        text = data
    try:
        value: JSON = json.loads(text, object_pairs_hook=_no_duplicates, parse_int=_int_in_range,
                                 parse_float=_no_float, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise MalformedError(f"invalid JSON: {e.msg} at line {e.lineno} column {e.colno}",
                             hint="send one JSON value encoded as UTF-8") from None
    except RecursionError:
        raise MalformedError("JSON nested too deeply") from None
    return value


def parse_canonical(data: bytes) -> JSON:
    """Parse ``data`` and require that it is exactly the canonical encoding of its value."""
    value = loads_strict(data)
    _require_canonical(value, data)
    return value


def _require_canonical(value: JSON, data: bytes) -> None:
    try:  # loads_strict already checked the value
        canon = json.dumps(value, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedError("a JSON string holds a lone surrogate (not UTF-8)") from None
    except RecursionError:
        raise MalformedError("JSON nested too deeply") from None
    if canon != data:
        at = next((i for i, (a, b) in enumerate(zip(canon, data, strict=False)) if a != b),
                  min(len(canon), len(data)))
        raise NonCanonicalError(f"JSON is not canonical: it differs from its canonical "
                                f"encoding at byte {at} (canonical {len(canon)} bytes, "
                                f"got {len(data)})")


# --- field checks -------------------------------------------------------------------

_HEX_DIGITS = "0123456789abcdef"
_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
                      r"|(?i:-?(?:nan|inf|infinity))")

Check = Callable[[JSON], bool]


def _is_int(v: JSON) -> bool:
    return type(v) is int and v >= 0


def _is_hash(v: JSON) -> bool:
    """64 lowercase hex digits (``strip`` leaves nothing iff every character is one)."""
    return isinstance(v, str) and len(v) == 64 and not v.strip(_HEX_DIGITS)


def _is_hex(v: JSON) -> bool:
    """32 to 128 lowercase hex digits, an even number of them."""
    return (isinstance(v, str) and 32 <= len(v) <= 128 and not len(v) % 2
            and not v.strip(_HEX_DIGITS))


def _is_decimal(v: JSON) -> bool:
    return isinstance(v, str) and _DECIMAL.fullmatch(v) is not None


def _is_str(v: JSON) -> bool:
    return isinstance(v, str)


def _is_obj(v: JSON) -> bool:
    return isinstance(v, dict)


_WHAT: dict[Check, str] = {
    _is_int: "a non-negative integer", _is_hash: "64 lowercase hex digits (a SHA-256 hash)",
    _is_hex: "lowercase hex (a hash, 32 to 128 digits)", _is_decimal: "a decimal string",
    _is_str: "a string", _is_obj: "a JSON object",
}

# kind -> field -> (check, required). Bodies may carry more keys than these.
BODY_FIELDS: dict[str, dict[str, tuple[Check, bool]]] = {
    "run.open": {
        "seed_commitment": (_is_hash, True), "dataset": (_is_obj, True),
        "recipe": (_is_obj, False), "hyperparameters": (_is_obj, False),
        "environment": (_is_obj, False), "weights_hash": (_is_str, False),
        "beacon": (_is_obj, False), "data_parallel": (_is_obj, False),
    },
    "step": {
        "prev": (_is_hash, True), "step": (_is_int, True), "batch_root": (_is_hash, True),
        "epoch": (_is_int, False), "batch_size": (_is_int, False), "loss": (_is_decimal, False),
        "lr": (_is_decimal, False), "weights": (_is_hex, False), "checkpoint": (_is_obj, False),
        "beacon_checkpoint": (_is_str, False), "beacon_round": (_is_obj, False),
        "open_checkpoint": (_is_str, False),
    },
    "run.close": {
        "prev": (_is_hash, True), "steps": (_is_int, False), "weights": (_is_hex, False),
        "s_rand": (_is_str, False), "manifest": (_is_hex, False),
        "final_weights": (_is_hex, False), "final_state": (_is_hash, False),
        "challenge_beacon": (_is_obj, False), "reason": (_is_str, False),
    },
}
DATASET_FIELDS: dict[str, tuple[Check, bool]] = {
    "root": (_is_hash, True), "size": (_is_int, True), "example_hash": (_is_str, False),
    "sorted_root": (_is_hash, False), "distinct": (_is_int, False),
    "hash_list": (_is_hash, False),
}


def _check_fields(obj: Mapping[str, JSON], rules: Mapping[str, tuple[Check, bool]],
                  where: str) -> None:
    for name, (check, required) in rules.items():
        if name not in obj:
            if required:
                raise MalformedError(f"{where} has no {name!r} field",
                                     hint=f"{name!r} must be {_WHAT[check]}")
            continue
        if not check(obj[name]):
            raise MalformedError(f"{where}.{name} must be {_WHAT[check]}, got "
                                 f"{json.dumps(obj[name])[:60]}")


def run_id(open_body: Mapping[str, object]) -> str:
    """The run id: hex SHA-256 of the canonical JSON of the ``run.open`` body."""
    return hashlib.sha256(canonical_json(dict(open_body))).hexdigest()


@lru_cache(maxsize=4096)
def _signer_key(signer: str) -> tuple[Verifier, nacl.signing.VerifyKey]:
    v = Verifier.parse(signer)
    if v.alg != ALG_ED25519:
        raise MalformedError(f"signer key {signer[:60]!r} is not an Ed25519 (0x01) note key",
                             hint="trainers sign statements with a key from `potd ledger keygen`")
    return v, nacl.signing.VerifyKey(v.public_key)


# --- the statement value ------------------------------------------------------------

_NO_PREV: JSON = []  # a marker: "not set by the native parser"


@dataclass(frozen=True)
class Statement:
    """One parsed, well-formed statement. ``raw`` is its canonical encoding (the entry)."""

    kind: str
    run: str
    seq: int
    signer: str
    sig: bytes
    body: dict[str, JSON]
    v: int = STATEMENT_VERSION
    raw: bytes = field(default=b"", repr=False, compare=False)

    def __post_init__(self) -> None:
        if type(self.v) is not int or self.v != STATEMENT_VERSION:
            raise MalformedError(f"statement version v={self.v!r} is not supported",
                                 hint=f"this log accepts v={STATEMENT_VERSION}")
        if self.kind not in KINDS:
            raise MalformedError(f"unknown statement kind {self.kind!r}",
                                 hint="kind is one of " + ", ".join(KINDS))
        if not _is_hash(self.run):
            raise MalformedError("'run' must be 64 lowercase hex digits (the run id)",
                                 hint="run = hex SHA-256 of canonical JSON of the run.open body")
        if type(self.seq) is not int or not 0 <= self.seq <= MAX_INT:
            raise MalformedError(f"'seq' must be a non-negative integer, got {self.seq!r}")
        if not isinstance(self.signer, str):
            raise MalformedError("'signer' must be a verifier key string")
        _signer_key(self.signer)
        if not isinstance(self.sig, bytes) or len(self.sig) != SIG_SIZE:
            raise MalformedError(f"'sig' must hold a {SIG_SIZE}-byte Ed25519 signature")
        if not isinstance(self.body, dict):
            raise MalformedError("'body' must be a JSON object")
        _check_fields(self.body, BODY_FIELDS[self.kind], "body")
        if self.kind == "run.open":
            if self.seq != 0:
                raise MalformedError(f"a run.open has seq 0, not {self.seq}")
            if "prev" in self.body:
                raise MalformedError("a run.open body must not have 'prev' (it starts the chain)")
            assert isinstance(self.body["dataset"], dict)
            _check_fields(self.body["dataset"], DATASET_FIELDS, "body.dataset")
            rid = run_id(self.body)
            if self.run != rid:
                raise MalformedError(f"run.open 'run' is {self.run}, but the hash of its body "
                                     f"is {rid}", hint="run = hex SHA-256 of canonical(body)")
        elif self.seq == 0:
            raise MalformedError(f"seq 0 is the run.open; a {self.kind} has seq >= 1")
        if self.kind == "step" and self.body["step"] != self.seq - 1:
            raise MalformedError(f"a step statement has seq = step + 1; got step "
                                 f"{self.body['step']} with seq {self.seq}")
        if not self.raw:
            object.__setattr__(self, "raw", canonical_json(self.to_json()))

    @property
    def prev(self) -> str | None:
        p: JSON = getattr(self, "_prev", _NO_PREV)  # the native parser's, without a body
        if p is _NO_PREV:
            p = self.body.get("prev")
        return p if isinstance(p, str) else None

    def unsigned_json(self) -> dict[str, JSON]:
        return {"body": self.body, "kind": self.kind, "run": self.run, "seq": self.seq,
                "signer": self.signer, "v": self.v}

    def to_json(self) -> dict[str, JSON]:
        d = self.unsigned_json()
        d["sig"] = b64encode(self.sig)
        return d

    def to_bytes(self) -> bytes:
        return self.raw

    def signing_message(self) -> bytes:
        """``potd-statement-v1\\n`` || canonical JSON without ``sig``."""
        # raw is canonical with keys sorted, so the top-level "sig" member is the last
        # ',"sig":"' in it (the body comes first; signer and v hold no unescaped quote).
        raw = self.raw
        i = raw.rfind(b',"sig":"')
        j = raw.index(b'"', i + 8) + 1
        return SIGNING_PREFIX + raw[:i] + raw[j:]

    def leaf_hash(self) -> bytes:
        """RFC 6962 leaf hash of the statement as a log entry (the native parser hands
        it over already computed)."""
        h: bytes | None = getattr(self, "_leaf", None)
        return h if h is not None else hashlib.sha256(b"\x00" + self.raw).digest()

    @classmethod
    def from_bytes(cls, data: bytes) -> Statement:
        return parse_statement(data)


# the body of a statement the native parser validated without building it
setattr(Statement, "body", native.LazyBody())  # noqa: B010 (a class attribute after @dataclass)


def parse_statement(data: bytes, *, lazy: bool = False) -> Statement:
    """Parse one statement from its exact canonical bytes (signature not verified).
    ``lazy``: if the native parser takes it, its body is validated but decoded only on
    first use (for callers that do not read it: the log server's write path)."""
    if not isinstance(data, (bytes, bytearray)):
        raise MalformedError("a statement is bytes")
    data = bytes(data)
    st = native.parse_one(data, lazy)
    if st is not None:
        return st
    fast = canonical_values(data, array=False)
    if fast is not None:
        return _from_json(fast[0][0], data)
    return _from_json(parse_canonical(data), data)


_WS = " \t\n\r"

def parse_statement_array(data: bytes, *, lazy: bool = False) -> list[Statement]:
    """Parse a JSON array of statements (``POST /add-batch``).

    Whitespace may separate the array's elements, but each element must be the exact
    canonical encoding of its statement: those bytes become the log entry. Errors name
    the failing statement's position (``error.statement``, 0-based). ``lazy``: as for
    :func:`parse_statement`.
    """
    data = bytes(data)
    sts = native.parse_batch(data, lazy)
    if sts is not None:
        return sts
    fast = canonical_values(data, array=True)
    if fast is not None:
        out: list[Statement] = []
        for k, (obj, raw) in enumerate(fast):
            try:
                out.append(_from_json(obj, raw))
            except MalformedError as e:
                _name_statement(e, k)
                raise
        return out
    return _parse_array_strict(data)


def _name_statement(e: MalformedError, k: int) -> None:
    e.message = f"statement #{k}: {e.message}"
    e.args = (e.message,)
    setattr(e, "statement", k)  # noqa: B010 (reported to the client as "statement")


def _parse_array_strict(data: bytes) -> list[Statement]:
    """:func:`parse_statement_array` by the strict parser, element by element."""
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        raise MalformedError(f"not valid UTF-8 at byte {e.start}") from None
    dec = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_int=_int_in_range,
                           parse_float=_no_float, parse_constant=_no_constant)
    n = len(text)

    def skip(i: int) -> int:
        while i < n and text[i] in _WS:
            i += 1
        return i

    i = skip(0)
    if i >= n or text[i] != "[":
        raise MalformedError("a batch is a JSON array of statements",
                             hint="send [statement,statement,...]")
    i = skip(i + 1)
    out: list[Statement] = []
    if i < n and text[i] == "]":
        raise MalformedError("the batch is empty", hint="send at least one statement")
    while True:
        k = len(out)
        try:
            try:
                obj, j = dec.raw_decode(text, i)
            except json.JSONDecodeError as e:
                raise MalformedError(f"invalid JSON: {e.msg} at line {e.lineno} column "
                                     f"{e.colno}") from None
            except RecursionError:
                raise MalformedError("JSON nested too deeply") from None
            raw = text[i:j].encode("utf-8")
            _require_canonical(obj, raw)
            out.append(_from_json(obj, raw))
        except MalformedError as e:
            _name_statement(e, k)
            raise
        i = skip(j)
        if i < n and text[i] == ",":
            i = skip(i + 1)
            continue
        if i < n and text[i] == "]" and skip(i + 1) == n:
            return out
        raise MalformedError(f"after statement #{k}: expected ',' or a final ']'")


def _from_json(obj: JSON, data: bytes) -> Statement:
    if not isinstance(obj, dict):
        raise MalformedError("a statement is a JSON object",
                             hint="keys: " + ", ".join(FIELDS))
    if obj.keys() != _FIELD_SET:
        keys = set(obj)
        missing, extra = sorted(set(FIELDS) - keys), sorted(keys - set(FIELDS))
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unexpected {', '.join(repr(k) for k in extra)}"] if extra else [])
        raise MalformedError("statement fields: " + "; ".join(parts),
                             hint="a statement has exactly the keys " + ", ".join(FIELDS))
    for name, kind in (("kind", str), ("run", str), ("signer", str), ("sig", str),
                       ("body", dict)):
        if not isinstance(obj[name], kind):
            raise MalformedError(f"statement field {name!r} must be a {kind.__name__}")
    for name in ("seq", "v"):
        if type(obj[name]) is not int:
            raise MalformedError(f"statement field {name!r} must be an integer")
    sig_s = obj["sig"]
    assert isinstance(sig_s, str)
    if _SIG_B64.fullmatch(sig_s):  # the canonical spelling of 64 bytes
        sig = a2b_base64(sig_s)
    else:
        sig = b64decode(sig_s, "statement 'sig'")
        if b64encode(sig) != sig_s:  # set padding bits: a second spelling of one statement
            raise MalformedError("statement 'sig' is not canonical base64 (unused bits set)",
                                 hint="encode the 64 signature bytes with standard base64")
    body = obj["body"]
    assert isinstance(body, dict)
    kind_s, run, signer = obj["kind"], obj["run"], obj["signer"]
    seq, v = obj["seq"], obj["v"]
    assert isinstance(kind_s, str) and isinstance(run, str) and isinstance(signer, str)
    assert isinstance(seq, int) and isinstance(v, int)
    return Statement(kind=kind_s, run=run, seq=seq, signer=signer, sig=sig, body=body, v=v,
                     raw=data)


_FIELD_SET = frozenset(FIELDS)
# standard base64 of 64 bytes with the 4 unused bits of its last character zero
_SIG_B64 = re.compile(r"[A-Za-z0-9+/]{85}[AQgw]==")


def verify_statement_signature(stmt: Statement) -> None:
    """Check the trainer's Ed25519 signature; raises SignatureError, else returns None."""
    _, key = _signer_key(stmt.signer)
    try:
        key.verify(stmt.signing_message(), stmt.sig)
    except (nacl.exceptions.BadSignatureError, ValueError):
        raise SignatureError(f"statement seq {stmt.seq} of run {stmt.run[:16]}...: the signature "
                             f"does not verify under its signer key",
                             hint="sign potd-statement-v1\\n || canonical JSON without 'sig' "
                                  "with the private key of 'signer'") from None


def _public_key(signer: str) -> bytes:
    return _signer_key(signer)[0].public_key


native.configure(Statement, _public_key)


# --- building (the prover's side) ---------------------------------------------------

def signing_message(fields: Mapping[str, object]) -> bytes:
    """The signed message for statement ``fields`` (any ``sig`` among them is ignored)."""
    return SIGNING_PREFIX + canonical_json({k: v for k, v in fields.items() if k != "sig"})


def sign_statement(fields: Mapping[str, object], signer: Signer) -> bytes:
    """Sign ``fields`` (``body, kind, run, seq``; ``signer`` and ``v`` are filled in) and
    return the canonical statement bytes, checked by :func:`parse_statement`."""
    if signer.alg != ALG_ED25519:
        raise MalformedError(f"key {signer.name!r} is not an Ed25519 (0x01) signing key")
    d: dict[str, object] = {k: v for k, v in fields.items() if k != "sig"}
    d.setdefault("signer", str(signer.verifier))
    d.setdefault("v", STATEMENT_VERSION)
    if d["signer"] != str(signer.verifier):
        raise MalformedError("'signer' does not name the signing key")
    d["sig"] = b64encode(signer.sign(signing_message(d)))
    raw = canonical_json(d)
    parse_statement(raw)
    return raw


def build_statement(kind: str, run: str | None, seq: int, body: Mapping[str, object],
                    signer: Signer) -> bytes:
    """Build and sign one statement. For ``run.open``, ``run`` may be None (computed)."""
    body_d = dict(body)
    if run is None:
        if kind != "run.open":
            raise MalformedError(f"a {kind} statement needs its run id")
        run = run_id(body_d)
    return sign_statement({"body": body_d, "kind": kind, "run": run, "seq": seq}, signer)
