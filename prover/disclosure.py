"""Selective disclosure, the protocol part (docs/protocol.md §4.9): which examples a
public challenge of a closed run discloses, and how disclosed example bytes become the
tensors a recipe trains on
(:func:`decode_example`, the default of :meth:`prover.recipes.Recipe.decode`).

Both sides compute the set from public values only — the run's seed, the committed
dataset size and schedule, the committed checkpoint steps and the public challenge fixed
at ``run.close`` — so the trainer's data server (:mod:`prover.dataserver`) and the
auditor (:mod:`auditor.disclosure`) arrive at the same set without talking. The set for
``R`` replay samples and ``M`` memorization segments is a subset of the set for any
``R' >= R``, ``M' >= M`` (:func:`prover.derive.choose` draws the first positions of one
shuffle), so a server allowing ``R'`` answers every audit drawing at most ``R'``.

The segments are exactly those the audit replays and tests for memorization
(:func:`auditor.audit.step_sample`, the final segment, and the memorization sample), and
the held-out examples are those the memorization test reads: the first
:data:`HELDOUT_SAMPLE`.

Decoding trusts nothing: a blob is decoded only after its SHA-256 under the committed
encoding equals the committed example hash (the caller checks), and a blob that still
does not parse as its encoding is a :class:`~ledger.errors.MalformedError` (the trainer
committed something that is not an example); a recipe transform failing on it is a
:class:`TransformError` (recipe code in the decoder's environment: no evidence).
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ledger.errors import MalformedError, PotdError, UsageError

from .derive import batch_indexes, choose, schedule

if TYPE_CHECKING:
    import torch

class TransformError(PotdError):
    """The recipe's transform failed on an example here: recipe code in this
    environment (the trainer ran the same code on the same bytes in its own), so it says
    nothing about the example."""

    code = "transform_failed"


HELDOUT_SAMPLE = 256  # held-out examples the memorization test reads (replay.memorization)
MAX_EXAMPLE_BYTES = 64 << 20  # one disclosed example, at most


@dataclass(frozen=True)
class RunPlan:
    """What the log fixes about a closed run, as far as disclosure needs it."""

    seed: bytes                # the run's data-order seed
    challenge: bytes           # the public challenge fixed at run.close
    n: int                     # committed training examples
    heldout: int               # committed held-out examples
    batch_size: int
    epochs: int
    steps: int                 # logged steps
    ends: tuple[int, ...]      # -1, then every committed checkpoint step (increasing)

    def __post_init__(self) -> None:
        if any(b >= a for a, b in zip(self.ends[1:], self.ends, strict=False)) or \
                not self.ends or self.ends[0] != -1:
            raise UsageError("segment ends must start at -1 and increase")


def segments(plan: RunPlan, samples: int, memorization: int) -> list[int]:
    """Indexes of the segments an audit with ``samples`` replay draws and
    ``memorization`` memorization segments reads (sorted)."""
    ends, nseg = list(plan.ends), len(plan.ends) - 1
    picks: set[int] = set()
    for t in choose(plan.challenge, b"challenge", plan.steps, max(0, samples)):
        i = bisect.bisect_left(ends, t) - 1
        if i + 1 < len(ends):
            picks.add(i)
    if nseg and ends[-1] == plan.steps - 1:
        picks.add(nseg - 1)  # the final segment is always replayed
    m = max(0, min(memorization, nseg))
    picks.update(choose(plan.challenge, b"memorization", nseg, m))
    return sorted(picks)


def train_indexes(plan: RunPlan, segs: Sequence[int]) -> list[int]:
    """Dataset indexes of every batch of the segments ``segs`` (sorted, distinct)."""
    sched = schedule(plan.n, plan.batch_size, plan.epochs)
    cache: dict[tuple[bytes, int, int], list[int]] = {}
    out: set[int] = set()
    for i in segs:
        for t in range(plan.ends[i] + 1, min(plan.ends[i + 1], len(sched) - 1) + 1):
            step, epoch, off = sched[t]
            out.update(batch_indexes(plan.seed, plan.n, plan.batch_size, step, epoch, off,
                                     cache))
    return sorted(out)


def heldout_indexes(plan: RunPlan, memorization: int) -> list[int]:
    """The held-out examples the memorization test reads (none without it)."""
    return list(range(min(HELDOUT_SAMPLE, plan.heldout))) if memorization > 0 else []


# -- bytes to tensors ----------------------------------------------------------------

_TORCH_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                 "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
                 "U8": "uint8", "BOOL": "bool"}


def decode_tensors(blob: bytes, header: bytes) -> dict[str, torch.Tensor]:
    """The tensors of one ``potd-tensors``-framed blob (:func:`prover.hashing.feed_tensors`
    with ``header``): per tensor ``>H`` name length, name, ``>B`` dtype length, dtype,
    ``>B`` rank, ``>Q`` per dimension, ``>Q`` byte count, raw little-endian bytes."""
    import torch

    if not blob.startswith(header):
        raise MalformedError("the example does not start with its encoding's header")
    out: dict[str, torch.Tensor] = {}
    p = len(header)
    try:
        while p < len(blob):
            (ln,) = struct.unpack_from(">H", blob, p)
            name = blob[p + 2:p + 2 + ln].decode()
            p += 2 + ln
            dl = blob[p]
            dtype = blob[p + 1:p + 1 + dl].decode()
            p += 1 + dl
            rank = blob[p]
            dims = struct.unpack_from(f">{rank}Q", blob, p + 1)
            p += 1 + 8 * rank
            (nbytes,) = struct.unpack_from(">Q", blob, p)
            p += 8
            raw = blob[p:p + nbytes]
            p += nbytes
            tdt = getattr(torch, _TORCH_DTYPES[dtype])
            count = 1
            for d in dims:
                count *= d
            if len(raw) != nbytes or nbytes != count * torch.empty((), dtype=tdt).element_size():
                raise MalformedError(f"tensor {name!r}: {nbytes} bytes for shape {list(dims)}")
            t = (torch.frombuffer(bytearray(raw), dtype=torch.uint8).bool() if dtype == "BOOL"
                 else torch.frombuffer(bytearray(raw), dtype=tdt) if nbytes else
                 torch.empty(0, dtype=tdt))
            out[name] = t.reshape(dims)
    except (struct.error, IndexError, KeyError, UnicodeDecodeError, RuntimeError) as e:
        raise MalformedError(f"the example's tensor framing is malformed ({e})") from None
    return out


Transform = Callable[[bytes], "tuple[torch.Tensor, torch.Tensor]"]


def decode_example(encoding: str, blob: bytes, transform: Transform | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """One example's ``(x, y)`` from its canonical bytes (the adapter's
    ``example_bytes``), exactly what the adapter's ``batch`` yields for it unstacked:
    ``potd-example-v1`` framing (TensorDataset), a token window (TokenFile: ``x`` the
    first ``block`` tokens, ``y`` the next ones, int64), or a file (FileDir: the file's
    bytes after the ``potd-file-v1`` header, through the recipe's ``transform`` — the
    function the recipe gave :class:`~prover.datasets.FileDir`; without it a file example
    is a :class:`UsageError`: it cannot be decoded without the recipe). The default of
    :meth:`prover.recipes.Recipe.decode`.

    A blob that does not parse as its encoding is a :class:`MalformedError`; one the
    transform refuses (any exception of recipe code) or turns into something other than
    two tensors, a :class:`TransformError`."""
    import numpy as np
    import torch

    from .datasets import (
        FILE_ENCODING,
        FILE_HEADER,
        TENSOR_ENCODING,
        TOKEN_WIDTHS,
        token_encoding,
        token_header,
    )
    from .hashing import EXAMPLE_HEADER

    if encoding == TENSOR_ENCODING:
        t = decode_tensors(blob, EXAMPLE_HEADER)
        if set(t) != {"x", "y"}:
            raise MalformedError(f"the example holds tensors {sorted(t)[:4]}, not x and y")
        return t["x"], t["y"]
    if encoding == FILE_ENCODING and transform is not None:
        if not blob.startswith(FILE_HEADER):
            raise MalformedError("the example does not start with the potd-file-v1 header")
        try:
            got = transform(blob[len(FILE_HEADER):])
            x, y = got
        except Exception as e:  # noqa: BLE001 — recipe code on a (committed) file
            raise TransformError(f"the recipe's transform refuses the file "
                                 f"({type(e).__name__}: {str(e)[:200]})") from None
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
            raise TransformError(f"the recipe's transform made {type(x).__name__} and "
                                 f"{type(y).__name__} of the file, not two tensors")
        return x, y
    for dtype, width in TOKEN_WIDTHS.items():
        if encoding == token_encoding(dtype):
            head = token_header(dtype)
            body = blob[len(head):]
            if not blob.startswith(head) or len(body) % width or len(body) < 2 * width:
                raise MalformedError("the example is not a token window of this encoding")
            win = torch.from_numpy(np.frombuffer(body, dtype=f"<u{width}").astype(np.int64))
            return win[:-1].contiguous(), win[1:].contiguous()
    if encoding == FILE_ENCODING:
        raise UsageError("examples encoded as potd-file-v1/sha256 (one file each) become "
                         "tensors only through the recipe's transform, which this recipe "
                         "does not define", hint="the recipe defines transform(content) and "
                         "passes it to FileDir(path, self.transform) (docs/protocol.md "
                         "§4.6); else audit with the full data (--data-dir)")
    raise UsageError(f"examples encoded as {encoding!r} cannot be decoded without the "
                     "recipe's data", hint="selective disclosure supports the encodings of "
                     "docs/protocol.md §4.6 (tensors, token windows, files through the "
                     "recipe's transform); audit with the full data (--data-dir) instead")
