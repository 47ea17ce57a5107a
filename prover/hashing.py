"""Canonical hashing of tensors, examples, datasets and batches (DESIGN §4 "Hashes").

Tensor framing ``potd-tensors-v1`` — language-independent, so any implementation can
recompute a weights hash from a safetensors file:

    b"potd-tensors-v1\\n"
    for each tensor, names in sorted (UTF-8 byte) order:
        u16 BE  len(name)   || name (UTF-8)
        u8      len(dtype)  || dtype (ASCII, safetensors names: F32, BF16, I64, ...)
        u8      ndim        || ndim x u64 BE dimension
        u64 BE  nbytes      || the tensor's raw little-endian C-contiguous bytes

The weights hash is BLAKE3-256 (default) or SHA-256 of that stream; the algorithm's name
is committed in ``run.open``. An example hash is SHA-256 of the framing of its tensors
(``x``, ``y``) with the header ``potd-example-v1\\n``; the dataset root is the RFC 6962
root over example hashes in dataset order; a batch root likewise in batch order.

This module imports torch lazily: the framing also works from raw safetensors bytes
(:func:`hash_safetensors_bytes`), which is what an auditor with no torch can use.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ledger.errors import MalformedError, UsageError
from ledger.merkle import leaf_hash, root_of

if TYPE_CHECKING:
    import torch

TENSORS_HEADER = b"potd-tensors-v1\n"
EXAMPLE_HEADER = b"potd-example-v1\n"
HASH_ALGORITHMS = ("blake3", "sha256")

# torch dtype -> safetensors dtype name
_DTYPE_NAMES = {
    "torch.float64": "F64", "torch.float32": "F32", "torch.float16": "F16",
    "torch.bfloat16": "BF16", "torch.int64": "I64", "torch.int32": "I32",
    "torch.int16": "I16", "torch.int8": "I8", "torch.uint8": "U8", "torch.bool": "BOOL",
    "torch.float8_e4m3fn": "F8_E4M3", "torch.float8_e5m2": "F8_E5M2",
}


class _Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> object: ...

    def digest(self) -> bytes: ...


def new_hasher(algorithm: str) -> _Hasher:
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "blake3":
        import blake3

        hasher: _Hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        return hasher
    raise UsageError(f"unknown hash algorithm {algorithm!r}",
                     hint=f"use one of {', '.join(HASH_ALGORITHMS)}")


def dtype_name(t: torch.Tensor) -> str:
    try:
        return _DTYPE_NAMES[str(t.dtype)]
    except KeyError:
        raise UsageError(f"tensor dtype {t.dtype} has no safetensors name") from None


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """Raw little-endian C-contiguous bytes of ``t`` (any device, any dtype)."""
    import torch

    c = t.detach()
    if c.device.type != "cpu":
        c = c.to("cpu")
    c = c.contiguous().reshape(-1)
    if sys.byteorder != "little" and c.element_size() > 1:
        c = c.view(torch.uint8).reshape(-1, c.element_size()).flip(1).reshape(-1)
    raw = c.view(torch.uint8) if c.dtype != torch.bool else c.to(torch.uint8)
    arr: Any = raw.numpy()
    return memoryview(arr).cast("B")


def _frame(name: str, dtype: str, shape: Iterable[int], nbytes: int) -> bytes:
    nb = name.encode("utf-8")
    dims = list(shape)
    return (struct.pack(">H", len(nb)) + nb + struct.pack(">B", len(dtype)) + dtype.encode()
            + struct.pack(">B", len(dims)) + b"".join(struct.pack(">Q", d) for d in dims)
            + struct.pack(">Q", nbytes))


def feed_tensors(h: _Hasher, tensors: Mapping[str, torch.Tensor], header: bytes) -> None:
    h.update(header)
    for name in sorted(tensors, key=lambda k: k.encode("utf-8")):
        t = tensors[name]
        raw = tensor_bytes(t)
        h.update(_frame(name, dtype_name(t), t.shape, raw.nbytes))
        h.update(raw)


def hash_tensors(tensors: Mapping[str, torch.Tensor], algorithm: str = "blake3") -> str:
    """Hex hash of a state dict (weights or flattened optimizer state)."""
    h = new_hasher(algorithm)
    feed_tensors(h, tensors, TENSORS_HEADER)
    return h.digest().hex()


def hash_safetensors_bytes(data: bytes, algorithm: str = "blake3") -> str:
    """The same hash as :func:`hash_tensors`, computed from a safetensors file's bytes.

    Parses the safetensors header itself (never unpickles, needs no torch).
    """
    if len(data) < 8:
        raise MalformedError("safetensors file is shorter than its 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8 or n > 100_000_000:
        raise MalformedError("safetensors header length exceeds the file")
    try:
        header = json.loads(data[8:8 + n])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise MalformedError("safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise MalformedError("safetensors header is not a JSON object")
    body = memoryview(data)[8 + n:]
    h = new_hasher(algorithm)
    h.update(TENSORS_HEADER)
    for name in sorted((k for k in header if k != "__metadata__"), key=lambda k: k.encode()):
        info = header[name]
        try:
            dtype, shape, (a, b) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise MalformedError(f"safetensors entry {name!r} is malformed") from None
        if not (isinstance(a, int) and isinstance(b, int) and 0 <= a <= b <= len(body)):
            raise MalformedError(f"safetensors entry {name!r} has bad offsets")
        h.update(_frame(name, str(dtype), [int(d) for d in shape], b - a))
        h.update(body[a:b])
    return h.digest().hex()


def example_hash(x: torch.Tensor, y: torch.Tensor) -> bytes:
    """SHA-256 over the framing of one example's tensors ``x`` and ``y``."""
    h = hashlib.sha256()
    feed_tensors(h, {"x": x, "y": y}, EXAMPLE_HEADER)
    return h.digest()


def example_hashes(xs: torch.Tensor, ys: torch.Tensor,
                   progress: Callable[[int], Any] | None = None) -> list[bytes]:
    """Per-example hashes for a dataset given as stacked tensors (row ``i`` = example ``i``)."""
    if len(xs) != len(ys):
        raise UsageError(f"{len(xs)} inputs but {len(ys)} labels")
    out = []
    for i in range(len(xs)):
        out.append(example_hash(xs[i], ys[i]))
        if progress is not None:
            progress(i)
    return out


def merkle_root_hex(example_hashes_: Iterable[bytes]) -> str:
    """RFC 6962 root (hex) over example hashes taken as leaf *entries*."""
    return root_of([leaf_hash(h) for h in example_hashes_]).hex()
