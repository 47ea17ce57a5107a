"""The optional native fast path of statements (``ledger/_fastpath.c``), and its fallback.

With the extension built (setup.py; needs OpenSSL's and libsodium's headers), a
statement or a batch that is exactly in canonical form is parsed and checked in C into
:class:`~ledger.statement.Statement` objects carrying their leaf hash, and signatures are
verified in C with the GIL released. The C code accepts only what it has fully
validated; for anything else :func:`parse_one` / :func:`parse_batch` return None and the
caller runs the Python parser, which accepts it or raises the named error. With
``lazy`` (the log server's write path, which reads only kind, run, seq, signer, prev,
the signature and the leaf hash) C validates a statement's body without building it:
the Statement carries its ``prev`` and decodes ``body`` from ``raw`` on first use
(:class:`LazyBody`; readers of every body, such as the auditor, parse eagerly). A signature
that fails in C is checked again by the Python path, which raises the exact
:class:`~ledger.errors.SignatureError`. Without the extension every function here says
"not fast" and the Python paths do all the work (tests/test_statement_fast.py checks
that both agree).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .statement import Statement

_native: Any
try:
    from . import _fastpath as _native  # type: ignore[attr-defined, no-redef]
except ImportError:  # not built: the pure-Python path
    _native = None

BATCH_CHUNK = 256  # statements per C call: the GIL is free between chunks

# the native calls, by name, so that scripts/stage_clock.py can time them
_verify: Callable[[list[Any], int], int] | None = _native.verify if _native else None


def available() -> bool:
    return _native is not None


def configure(statement_cls: type, resolve: Callable[[str], bytes]) -> None:
    """Tell the extension which class to build and how to resolve a signer key (to
    its 32-byte Ed25519 public key; raising for any key the Python path refuses)."""
    if _native is not None:
        _native.configure(statement_cls, resolve)


def parse_one(data: bytes, lazy: bool = False) -> Statement | None:
    """The statement ``data`` encodes, if C accepts it; None means "use Python".
    ``lazy``: its body validated, built on first use."""
    if _native is None or type(data) is not bytes:
        return None
    st: Statement | None = _native.parse_one(data, lazy)
    return st


def parse_batch(data: bytes, lazy: bool = False) -> list[Statement] | None:
    """The statements of the batch ``data`` (a JSON array with no whitespace), if C
    accepts every one of them; None means "use Python" for the whole batch. ``lazy``:
    their bodies validated, built on first use."""
    if _native is None or type(data) is not bytes or data[:1] != b"[":
        return None
    out: list[Statement] = []
    pos = 1
    while pos > 0:
        got = _native.parse_batch(data, pos, BATCH_CHUNK, lazy)
        if got is None:
            return None
        sts, pos = got
        out += sts
    return out


def first_bad_signature(statements: Sequence[Statement], start: int = 0) -> int | None:
    """Index of the first statement from ``start`` whose signature C cannot verify
    (``len(statements)`` if all verify), or None without the extension."""
    if _verify is None:
        return None
    return _verify(statements if type(statements) is list else list(statements), start)


class LazyBody:
    """``Statement.body`` of a statement the native parser validated without building
    its body (``lazy``; such a statement carries ``_prev``): decoded from
    ``raw`` on first use and kept. C accepted ``raw`` as canonical JSON, so ``json.loads``
    gives the very dict it would have built. A non-data descriptor: an instance's own
    ``body`` (every statement the Python paths make) is found first, and attribute reads
    stay plain (a ``__getattr__`` hook would slow every one of them)."""

    def __get__(self, st: Statement | None, owner: type | None = None) -> Any:
        if st is None:
            raise AttributeError("body")
        if not hasattr(st, "_prev"):  # not from the native parser: a body was never set
            raise AttributeError("body")
        body = json.loads(st.raw)["body"]
        object.__setattr__(st, "body", body)  # kept: found before this descriptor
        return body
