"""The example hash of a *document*, per example encoding (docs/protocol.md §4.7).

A run commits its example encoding in ``run.open`` (``dataset.example_hash``; runs that
omit it use ``potd-example-v1/sha256``). To ask "was this document trained on?", the
document must be hashed exactly the way the trainer hashed its examples: this module is
the one registry ``encoding name -> function(document bytes) -> 32-byte example hash``.

* ``potd-example-v1/sha256`` — a document is a safetensors file holding exactly the
  tensors ``x`` and ``y`` of one example (as the recipe's data yields them, e.g.
  ``safetensors.torch.save({"x": xs[i], "y": ys[i]})``); its hash is
  :func:`prover.hashing.example_hash` computed from the file's bytes (no torch needed).

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


_HINTS = {DEFAULT_ENCODING: "give one example as a safetensors file holding exactly the "
                            "tensors x and y (safetensors.torch.save({'x': x, 'y': y}))"}
register(DEFAULT_ENCODING, _potd_example_v1)
