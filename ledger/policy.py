"""C2SP tlog-policy: which logs are trusted and which witness cosignatures a checkpoint needs.

Lines (space/tab separated; ``#`` comments and blank lines ignored)::

    log <vkey> [<url>]
    witness <name> <vkey> [<url>]
    group <name> all|any|<k> <member>...     members defined on earlier lines, once each
    quorum <name>|none                       exactly once

A group is satisfied when at least k of its members are (a witness is satisfied by its
valid cosignature). Names are opaque bytes; ``none`` is predefined (no cosignature
needed) and cannot be a member. Two keys wrapping the same public key are duplicates,
refused like duplicate names. Witness keys may be Ed25519 note keys (0x01, read as
cosignature/v1), cosignature/v1 (0x04) or ML-DSA-44 (0x06) keys.

Bounds: at most :data:`MAX_POLICY_BYTES` and :data:`MAX_ITEMS` logs, witnesses and
groups each (the spec asks for at least 32); errors name the line.

Trusts: nothing; the file is the caller's configuration, still parsed defensively.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from .errors import MalformedError
from .note import Verifier

MAX_POLICY_BYTES = 1 << 20
MAX_ITEMS = 1000
_WS = re.compile(rb"[ \t]+")
_BAD_CHAR = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True)
class _Group:
    k: int
    members: tuple[bytes, ...]


@dataclass
class Policy:
    logs: list[Verifier] = field(default_factory=list)
    witnesses: list[Verifier] = field(default_factory=list)
    quorum: bytes = b"none"
    urls: dict[Verifier, str] = field(default_factory=dict)  # witnesses' submission URLs
    _names: dict[bytes, Verifier | _Group] = field(default_factory=dict, repr=False)

    def satisfied(self, cosigned: Iterable[Verifier]) -> bool:
        """Whether witnesses ``cosigned`` (each with a valid cosignature) meet the quorum."""
        have = set(cosigned)

        def ok(name: bytes) -> bool:
            node = self._names[name]
            if isinstance(node, Verifier):
                return node in have
            return sum(ok(m) for m in node.members) >= node.k

        return self.quorum == b"none" or ok(self.quorum)

    def log_key(self, origin: str) -> Verifier | None:
        return next((v for v in self.logs if v.name == origin), None)


def parse_policy(data: bytes) -> Policy:
    """Parse a tlog-policy file; MalformedError naming the line on any fault."""
    if len(data) > MAX_POLICY_BYTES:
        raise MalformedError(f"policy file of {len(data)} bytes; at most {MAX_POLICY_BYTES}")
    p = Policy()
    quorum: bytes | None = None
    keys: set[bytes] = set()
    for no, raw in enumerate(data.split(b"\n"), 1):
        def bad(why: str, no: int = no) -> MalformedError:
            return MalformedError(f"policy line {no}: {why}", hint="see c2sp.org/tlog-policy")

        if _BAD_CHAR.search(raw):
            raise bad("control character (only tab and newline are allowed)")
        words = [w for w in _WS.split(raw.strip(b" \t")) if w]
        if not words or words[0].startswith(b"#"):
            continue
        kind, args = words[0], words[1:]

        def vkey(b: bytes) -> Verifier:
            try:
                v = Verifier.parse(b.decode("utf-8"))
            except UnicodeDecodeError:
                raise bad("the key is not UTF-8") from None
            except MalformedError as e:
                raise bad(e.message) from None
            if v.public_key in keys:
                raise bad(f"duplicate key {v.name}+{v.key_id:08x} (same public key)")
            keys.add(v.public_key)
            return v

        def new_name(n: bytes) -> bytes:
            if n == b"none" or n in p._names:
                raise bad(f"name {n[:60]!r} is already defined (or reserved)")
            return n

        if kind == b"log" and len(args) in (1, 2):
            v = vkey(args[0])
            if v.alg != 0x01:
                raise bad(f"log key {v.name} is not an Ed25519 note key (0x01)")
            p.logs.append(v)
        elif kind == b"witness" and len(args) in (2, 3):
            name, v = new_name(args[0]), vkey(args[1])
            p._names[name] = v
            p.witnesses.append(v)
            if len(args) == 3:
                if not re.fullmatch(rb"https?://[\x21-\x7e]{1,2000}", args[2]):
                    raise bad(f"witness URL {args[2][:60]!r} is not an http(s) URL")
                p.urls[v] = args[2].decode("ascii")
        elif kind == b"group" and len(args) >= 3:
            name, rule, members = new_name(args[0]), args[1], args[2:]
            for m in members:
                if m not in p._names:
                    raise bad(f"group member {m[:60]!r} is not defined on an earlier line")
            if len(set(members)) != len(members):
                raise bad("a group lists a member twice")
            n = len(members)
            if rule == b"all":
                k = n
            elif rule == b"any":
                k = 1
            elif re.fullmatch(rb"[1-9][0-9]{0,5}", rule) and int(rule) <= n:
                k = int(rule)
            else:
                raise bad(f"group threshold {rule[:20]!r} is not all, any or 1..{n}")
            p._names[name] = _Group(k, tuple(members))
        elif kind == b"quorum" and len(args) == 1:
            if quorum is not None:
                raise bad("a second quorum line")
            if args[0] != b"none" and args[0] not in p._names:
                raise bad(f"quorum {args[0][:60]!r} is not defined on an earlier line")
            quorum = args[0]
        else:
            raise bad(f"unknown or malformed line {raw[:60]!r}")
        if max(len(p.logs), len(p.witnesses), len(p._names)) > MAX_ITEMS:
            raise bad(f"more than {MAX_ITEMS} logs, witnesses or groups")
    if quorum is None:
        raise MalformedError("policy file has no quorum line",
                             hint="add 'quorum <name>' (or 'quorum none')")
    p.quorum = quorum
    return p
