"""The example hash of a *document*, per example encoding (docs/protocol.md §4.7).

A run commits its example encoding in ``run.open`` (``dataset.example_hash``; runs that
omit it use ``potd-example-v1/sha256``). To ask "was this document trained on?", the
document must be hashed exactly the way the trainer hashed its examples: this module is
the one registry ``encoding name -> function(document bytes) -> 32-byte example hash``.

* ``potd-example-v1/sha256`` — a document is a safetensors file holding exactly the
  tensors ``x`` and ``y`` of one example (as the recipe's data yields them, e.g.
  ``safetensors.torch.save({"x": xs[i], "y": ys[i]})``); its hash is
  :func:`prover.hashing.example_hash` computed from the file's bytes (no torch needed).

* ``potd-file-v1/sha256`` (a directory of files, one example per file) — a document is
  the file itself: SHA-256 of ``b"potd-file-v1\n"`` followed by its bytes (its name and
  place never matter).
* ``potd-tokens-v1/u16/sha256`` and ``.../u32/...`` (a token file cut into windows) — a
  document is one window exactly as it lies in the token file: its ``block + 1`` token
  ids as little-endian ``uint16`` (``uint32``), e.g. cut out with
  ``dd bs=2 skip=START count=BLOCK+1``. Membership is of windows, not of arbitrary text:
  a passage is "included" only as a whole window at the run's stride.

A document that cannot be encoded this way is a :class:`~ledger.errors.UsageError`
(never "not included"). New dataset adapters register their encoding with
:func:`register`; the function must raise ``UsageError`` or ``MalformedError`` for a
document it cannot encode.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from ledger.errors import PotdError, UsageError

DEFAULT_ENCODING = "potd-example-v1/sha256"
DocumentHasher = Callable[[bytes], bytes]
_REGISTRY: dict[str, DocumentHasher] = {}


def register(name: str, fn: DocumentHasher) -> None:
    """Make ``fn`` the document hasher of encoding ``name``."""
    _REGISTRY[name] = fn


def encodings() -> list[str]:
    return sorted(_REGISTRY)


def document_hash(encoding: str | None, document: bytes) -> bytes:
    """The example hash ``document`` has under ``encoding`` (None: the default)."""
    name = encoding or DEFAULT_ENCODING
    fn = _REGISTRY.get(name)
    if fn is None:
        raise UsageError(f"the run's example encoding {name[:80]!r} is not known here",
                         hint="known encodings: " + ", ".join(encodings())
                         + "; give the example hash itself with --hash HEX")
    try:
        h = fn(document)
    except PotdError as e:
        raise UsageError(f"the document cannot be encoded as {name}: {e.message}",
                         hint=_HINTS.get(name, e.hint)) from None
    if len(h) != 32:
        raise UsageError(f"encoding {name} gave a {len(h)}-byte hash, not 32")
    return h


def _potd_example_v1(document: bytes) -> bytes:
    from prover.hashing import EXAMPLE_HEADER, _frame, parse_safetensors

    start, entries = parse_safetensors(document)
    names = [e[0] for e in entries]
    if names != ["x", "y"]:
        raise UsageError(f"the safetensors file holds tensors {names[:8]}, not exactly "
                         "'x' and 'y'")
    h = hashlib.sha256(EXAMPLE_HEADER)
    body = memoryview(document)[start:]
    for name, dtype, shape, a, b in entries:  # sorted by name, as the framing wants
        h.update(_frame(name, dtype, shape, b - a))
        h.update(body[a:b])
    return h.digest()


def _file_v1(document: bytes) -> bytes:
    from prover.datasets import FILE_HEADER

    return hashlib.sha256(FILE_HEADER + document).digest()


def _tokens_v1(dtype: str) -> DocumentHasher:
    from prover.datasets import TOKEN_WIDTHS, token_header

    width, header = TOKEN_WIDTHS[dtype], token_header(dtype)

    def fn(document: bytes) -> bytes:
        if not document or len(document) % width:
            raise UsageError(f"{len(document)} bytes is not a whole number of {width}-byte "
                             f"{dtype} token ids (and at least one)")
        return hashlib.sha256(header + document).digest()

    return fn


_HINTS = {DEFAULT_ENCODING: "give one example as a safetensors file holding exactly the "
                            "tensors x and y (safetensors.torch.save({'x': x, 'y': y}))"}
_WINDOW_HINT = ("give one window of the token file, block + 1 token ids exactly as stored "
                "(e.g. dd bs=WIDTH skip=START count=BLOCK+1)")
register(DEFAULT_ENCODING, _potd_example_v1)
register("potd-file-v1/sha256", _file_v1)
for _dtype in ("uint16", "uint32"):
    from prover.datasets import token_encoding as _te

    register(_te(_dtype), _tokens_v1(_dtype))
    _HINTS[_te(_dtype)] = _WINDOW_HINT
