"""Canonical hashing of tensors, examples, datasets and batches (docs/protocol.md §4 "Hashes").

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

Training state ``potd-state-v1`` — the one hash a checkpoint commits for the whole
training state (``state`` in a step's ``checkpoint``, ``final_state`` in ``run.close``):

    state = hex SHA-256( b"potd-state-v1\\n"
                         for each part, names in sorted (ASCII byte) order:
                             u8 len(name) || name (ASCII)
                             u8 len(digest) || digest (the part's hash as raw bytes) )

Parts in version 1: ``optimizer`` (the optimizer-state hash) and ``weights`` (the
weights hash), each the run's tensor hash above as 32 raw bytes. There is no scheduler
or RNG state today (the learning rate is a function of the step, the step's RNG is
reset from (seed, step)); a later version adds such parts under new names and the
framing stays unambiguous. SHA-256 whatever the tensor hash algorithm.

This module imports torch lazily: the framing also works from raw safetensors bytes
(:func:`hash_safetensors_bytes`), which is what an auditor with no torch can use.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ledger.errors import MalformedError, UsageError
from ledger.merkle import root_of

if TYPE_CHECKING:
    import torch

TENSORS_HEADER = b"potd-tensors-v1\n"
STATE_HEADER = b"potd-state-v1\n"
STATE_PARTS = ("optimizer", "weights")  # the parts a version-1 checkpoint commits
EXAMPLE_HEADER = b"potd-example-v1\n"
HASH_ALGORITHMS = ("blake3", "sha256")
_LOWER_HEX = re.compile(r"(?:[0-9a-f]{2})+")

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


def new_hasher(algorithm: str, threads: int | None = None) -> _Hasher:
    """A hasher for ``algorithm``; BLAKE3 on ``threads`` threads (default: as many as
    help; 1 is faster below about a megabyte)."""
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "blake3":
        import blake3

        hasher: _Hasher = blake3.blake3(
            max_threads=blake3.blake3.AUTO if threads is None else threads)
        return hasher
    raise UsageError(f"unknown hash algorithm {algorithm!r}",
                     hint=f"use one of {', '.join(HASH_ALGORITHMS)}")


def dtype_name(t: torch.Tensor) -> str:
    return dtype_name_of(t.dtype)


def dtype_name_of(dtype: torch.dtype) -> str:
    try:
        return _DTYPE_NAMES[str(dtype)]
    except KeyError:
        raise UsageError(f"tensor dtype {dtype} has no safetensors name") from None


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


Parts = list[tuple[bytes, memoryview]]  # (frame, raw bytes) per tensor, in stream order


def stream_size(parts: Parts) -> int:
    """Length of the ``potd-tensors-v1`` stream made of ``parts``."""
    return len(TENSORS_HEADER) + sum(len(f) + r.nbytes for f, r in parts)


def write_stream(parts: Parts, dest: memoryview) -> int:
    """Write the stream into ``dest`` (at least :func:`stream_size` bytes); return its size.
    The stream's hash is the weights hash: ``new_hasher(alg).update(stream)``."""
    o = len(TENSORS_HEADER)
    dest[:o] = TENSORS_HEADER
    for frame, raw in parts:
        n = len(frame)
        dest[o:o + n] = frame
        o += n
        n = raw.nbytes
        dest[o:o + n] = raw
        o += n
    return o


def parse_stream(data: bytes | memoryview) -> list[tuple[str, str, list[int], int, int]]:
    """The tensors of a ``potd-tensors-v1`` stream: ``(name, dtype code, shape, offset of
    the raw bytes, their length)``. Raises MalformedError unless the stream is exact."""
    mv = memoryview(data)
    if bytes(mv[:len(TENSORS_HEADER)]) != TENSORS_HEADER:
        raise MalformedError("not a potd-tensors-v1 stream")
    out = []
    o = len(TENSORS_HEADER)
    try:
        while o < len(mv):
            (n,) = struct.unpack_from(">H", mv, o)
            name = bytes(mv[o + 2:o + 2 + n]).decode("utf-8")
            o += 2 + n
            dt = bytes(mv[o + 1:o + 1 + mv[o]]).decode("ascii")
            o += 1 + mv[o]
            nd = mv[o]
            shape = list(struct.unpack_from(f">{nd}Q", mv, o + 1))
            (nb,) = struct.unpack_from(">Q", mv, o + 1 + 8 * nd)
            o += 9 + 8 * nd
            if o + nb > len(mv):
                raise MalformedError(f"tensor {name!r} runs past the end of the stream")
            out.append((name, dt, shape, o, nb))
            o += nb
    except (struct.error, IndexError, UnicodeDecodeError):
        raise MalformedError("truncated or garbled potd-tensors-v1 stream") from None
    return out


class StateHasher:
    """:func:`hash_tensors` for the successive states of the same tensors (a model's
    weights after every step), with the per-step work cut down to the bytes themselves.

    * A tensor's framing and its byte view are computed once and reused while the same
      tensor object keeps the same storage, dtype and shape, contiguously (in-place
      updates, which is how optimizers change weights, keep all of these).
    * Below ``contiguous_limit`` bytes the stream is assembled in one reusable buffer and
      hashed in one call: BLAKE3 hashes one long input several times faster than many
      short ones, whose odd boundaries break its SIMD batching.

    BLAKE3 runs on ``threads`` threads (1: leave the other cores to training). The hash
    is exactly :func:`hash_tensors` of the same tensors (tests/test_hashing.py).
    """

    def __init__(self, algorithm: str = "blake3", *, threads: int = 1,
                 contiguous_limit: int = 1 << 20) -> None:
        new_hasher(algorithm)  # reject an unknown algorithm now
        self.algorithm, self.threads, self.contiguous_limit = algorithm, threads, contiguous_limit
        self._views: dict[str, tuple[Any, ...]] = {}
        self._buf = bytearray()

    def new(self) -> _Hasher:
        if self.algorithm == "blake3":
            import blake3

            h: _Hasher = blake3.blake3(max_threads=self.threads)
            return h
        return new_hasher(self.algorithm)

    def _part(self, name: str, t: torch.Tensor) -> tuple[bytes, memoryview]:
        e = self._views.get(name)
        if (e is not None and e[0] is t and t.data_ptr() == e[1] and t.dtype is e[2]
                and t.shape == e[3] and t.is_contiguous()):
            return e[4], e[5]
        import torch

        raw = tensor_bytes(t)
        frame = _frame(name, dtype_name(t), t.shape, raw.nbytes)
        # cache only a view that aliases the tensor's own memory (not a converted copy)
        if t.device.type == "cpu" and t.is_contiguous() and t.dtype != torch.bool and (
                sys.byteorder == "little" or t.element_size() == 1):
            self._views[name] = (t, t.data_ptr(), t.dtype, t.shape, frame, raw)
        else:
            self._views.pop(name, None)
        return frame, raw

    def parts(self, tensors: Mapping[str, torch.Tensor]) -> Parts:
        """Frames and byte views of ``tensors`` in stream order. The views alias the
        tensors: use them before the tensors change."""
        names = sorted(tensors, key=lambda k: k.encode("utf-8"))
        out = [self._part(n, tensors[n]) for n in names]
        if len(self._views) > len(names):
            for stale in set(self._views) - set(names):
                del self._views[stale]
        return out

    def hash(self, tensors: Mapping[str, torch.Tensor] | Parts) -> str:
        parts = self.parts(tensors) if isinstance(tensors, Mapping) else tensors
        h = self.new()
        size = stream_size(parts)
        if size > self.contiguous_limit:
            h.update(TENSORS_HEADER)
            for frame, raw in parts:
                h.update(frame)
                h.update(raw)
        else:
            if len(self._buf) != size:
                self._buf = bytearray(size)
            mv = memoryview(self._buf)
            write_stream(parts, mv)
            h.update(mv)
        return h.digest().hex()


# safetensors dtype -> bytes per element (the byte-sized ones the format defines)
SAFETENSORS_DTYPES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2,
    "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8,
    "F64": 8,
}
MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors library's own bound
MAX_NAME = 0xFFFF  # UTF-8 bytes: a u16 in the framing
MAX_NDIM = 0xFF  # a u8 in the framing

SafetensorsEntry = tuple[str, str, list[int], int, int]  # name, dtype, shape, start, end


def _bad(msg: str) -> MalformedError:
    return MalformedError(f"safetensors: {msg}",
                          hint="the file is not a well-formed safetensors file")


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise _bad("the header names a key twice")
    return d


def parse_safetensors(data: bytes | memoryview) -> tuple[int, list[SafetensorsEntry]]:
    """Parse and validate an untrusted safetensors file: ``(start of the data section,
    tensors sorted by name's UTF-8 bytes)``; MalformedError for anything else.

    The format is recognised by its structure (u64 LE header length, then a JSON object),
    not by magic bytes. Checked: the header length against the file; the header is UTF-8
    JSON, an object without repeated keys, nested no deeper than the format uses; each
    tensor name is valid UTF-8 (no lone surrogates) of 1 to 65535 bytes; its entry holds
    exactly ``dtype`` (a known safetensors dtype), ``shape`` (at most 255 non-negative
    integers) and ``data_offsets`` (two integers); the tensors' byte ranges have the
    length their dtype and shape imply and tile the data section exactly, in order.
    """
    if len(data) < 8:
        raise _bad("shorter than its 8-byte header length")
    (n,) = struct.unpack_from("<Q", data, 0)
    if n > len(data) - 8 or n > MAX_SAFETENSORS_HEADER:
        raise _bad(f"header length {n} exceeds the file ({len(data)} bytes)")
    raw = bytes(data[8:8 + n])
    if not raw.startswith(b"{"):
        raise _bad("header is not a JSON object")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_pairs)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise _bad("header is not valid UTF-8 JSON") from None
    if not isinstance(header, dict):
        raise _bad("header is not a JSON object")
    meta = header.pop("__metadata__", {})
    if not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise _bad("__metadata__ is not an object of strings")
    body_len = len(data) - 8 - n
    out: list[tuple[bytes, SafetensorsEntry]] = []
    for name, info in header.items():
        try:
            nb = name.encode("utf-8")
        except UnicodeEncodeError:
            raise _bad(f"tensor name {name[:40]!r} is not valid UTF-8") from None
        if not 1 <= len(nb) <= MAX_NAME:
            raise _bad(f"a tensor name has {len(nb)} bytes (1 to {MAX_NAME} allowed)")
        label = repr(name[:80])
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise _bad(f"tensor {label} is not {{dtype, shape, data_offsets}}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
            raise _bad(f"tensor {label} has unknown dtype {str(dtype)[:20]!r}")
        if not isinstance(shape, list) or len(shape) > MAX_NDIM:
            raise _bad(f"tensor {label}: shape is not a list of at most {MAX_NDIM} dimensions")
        if not all(type(d) is int and 0 <= d < 1 << 63 for d in shape):
            raise _bad(f"tensor {label}: a dimension is not a non-negative integer")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(type(o) is int for o in offsets)):
            raise _bad(f"tensor {label}: data_offsets is not two integers")
        a, b = offsets
        count = 1
        for d in shape:
            count *= d
        if not (0 <= a <= b <= body_len and b - a == count * SAFETENSORS_DTYPES[dtype]):
            raise _bad(f"tensor {label}: data_offsets [{a}, {b}] do not hold its "
                       f"{dtype} x {shape[:8]} within {body_len} bytes")
        out.append((nb, (name, dtype, shape, a, b)))
    at = 0
    for _, (name, _dt, _sh, a, b) in sorted(out, key=lambda e: (e[1][3], e[1][4])):
        if a != at:
            raise _bad(f"tensor {name[:80]!r} starts at {a}, not {at}: the tensors must "
                       "fill the data section in order, without gaps or overlaps")
        at = b
    if at != body_len:
        raise _bad(f"the tensors end at {at}, the data section at {body_len}")
    out.sort(key=lambda e: e[0])
    return 8 + n, [e for _, e in out]


def hash_safetensors_bytes(data: bytes, algorithm: str = "blake3",
                           contiguous_limit: int = 1 << 20) -> str:
    """The same hash as :func:`hash_tensors`, computed from a safetensors file's bytes.

    Parses and validates the header itself (:func:`parse_safetensors`; never unpickles,
    needs no torch).
    """
    start, entries = parse_safetensors(data)
    body = memoryview(data)[start:]
    parts: Parts = [(_frame(name, dtype, shape, b - a), body[a:b])
                    for name, dtype, shape, a, b in entries]
    size = stream_size(parts)
    h = new_hasher(algorithm, 1 if size <= contiguous_limit else None)
    if size <= contiguous_limit:  # one long input hashes faster than many short ones
        buf = memoryview(bytearray(size))
        write_stream(parts, buf)
        h.update(buf)
    else:
        h.update(TENSORS_HEADER)
        for frame, raw in parts:
            h.update(frame)
            h.update(raw)
    return h.digest().hex()


def state_hash(parts: Mapping[str, str]) -> str:
    """The ``potd-state-v1`` hash of a training state's parts (name -> hex hash).

    Raises :class:`MalformedError` for a name that is not 1..255 ASCII characters or a
    hash that is not lowercase hex of 1..255 bytes (committed content is untrusted).
    """
    h = hashlib.sha256(STATE_HEADER)
    for name in sorted(parts, key=lambda n: n.encode() if isinstance(n, str) else b""):
        value = parts[name]
        if not (isinstance(name, str) and name.isascii() and 0 < len(name) < 256):
            raise MalformedError(f"state part name {str(name)[:40]!r} is not 1..255 ASCII "
                                 "characters")
        if not (isinstance(value, str) and _LOWER_HEX.fullmatch(value)
                and 0 < len(value) // 2 < 256):
            raise MalformedError(f"state part {name!r}: {str(value)[:80]!r} is not a "
                                 "lowercase hex hash")
        digest = bytes.fromhex(value)
        h.update(bytes([len(name)]) + name.encode() + bytes([len(digest)]) + digest)
    return h.hexdigest()


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
    return root_of([hashlib.sha256(b"\x00" + h).digest() for h in example_hashes_]).hex()
