"""The Python fast path of statement parsing (:mod:`ledger.statement`, docs/protocol.md
§3), used when the native parser (:mod:`ledger.statement_native`) is not built or
declines the input.

A valid statement (or each statement of a batch) is decoded by the C decoder without
Python hooks and re-encoded once; it is accepted only if the re-encoding gives back the
exact input. That one comparison stands in for the strict parser's checks: duplicate
keys (the re-encoding would have fewer members), any whitespace, escape or number
spelled another way, and lone surrogates (JSON escapes that decode to one re-encode as a
raw character) all make it differ. What re-encodes identically but is not allowed is
refused up front: floats, NaN and Infinity by the decoder's hooks (called only for such
numbers), integers of 19 or more digits (possibly outside 64 bits) by a scan of the
input. Anything the fast path does not accept goes through the strict parser, which
finds and names the fault, so errors are the same either way
(tests/test_statement_fast.py).
"""

from __future__ import annotations

import json
import re

JSON = None | bool | int | str | list["JSON"] | dict[str, "JSON"]

# An integer token of 19+ digits: in the canonical form a number follows ':', '[' or ','
# (a string holding such a sequence only sends its batch to the strict parser).
_LONG_INT = re.compile(rb"[:,\[]-?[0-9]{19}")


class _NotFast(Exception):
    pass


def _refuse(s: str) -> JSON:
    raise _NotFast


_WHOLE_MAX = 1 << 20  # larger arrays are decoded element by element

_FAST_DECODER = json.JSONDecoder(parse_float=_refuse, parse_constant=_refuse)
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False)


def canonical_values(data: bytes, *, array: bool) -> list[tuple[JSON, bytes]] | None:
    """``[(value, exact bytes)]`` of the statements in ``data`` (a JSON array of them
    with ``array``, else one), if ``data`` is exactly their canonical encoding - an
    array with no whitespace - and holds no float or long integer; else None.

    An array of up to :data:`_WHOLE_MAX` bytes is decoded in one call (its objects'
    keys decoded once); a larger one element by element (each a C call of a few
    microseconds), so a 16 MiB batch parsed on a worker thread never holds the GIL for
    long."""
    if _LONG_INT.search(data) is not None:
        return None
    decode, encode = _FAST_DECODER.raw_decode, _CANONICAL.encode
    try:
        text = data.decode("utf-8")
        if not array:  # not an object (a bare number, say): the strict parser names it
            value, j = decode(text, 0)
            if type(value) is not dict or j != len(text) or encode(value) != text:
                return None
            return [(value, data)]
        if len(text) <= _WHOLE_MAX:
            values, j = decode(text, 0)
            if type(values) is not list or not values or j != len(text):
                return None
            canon = [encode(v) for v in values]
            if (len(text) != len(canon) + 1 + sum(map(len, canon))
                    or text != "[" + ",".join(canon) + "]"
                    or any(type(v) is not dict for v in values)):
                return None
            return [(v, c.encode("utf-8")) for v, c in zip(values, canon, strict=True)]
        if text[:1] != "[":
            return None
        out: list[tuple[JSON, bytes]] = []
        i, last = 1, len(text) - 1
        while True:
            value, j = decode(text, i)
            c = encode(value)
            if type(value) is not dict or len(c) != j - i or not text.startswith(c, i):
                return None
            out.append((value, c.encode("utf-8")))
            if j < last and text[j] == ",":
                i = j + 1
                continue
            return out if j == last and text[j] == "]" else None
    except (ValueError, RecursionError, _NotFast):  # UnicodeError is a ValueError
        return None

