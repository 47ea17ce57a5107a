"""Seed commitment, beacon, seed, and everything derived from the seed (docs/protocol.md §4).

Pure functions over bytes and ints (no torch), so any implementation in any language
can recompute them. All byte strings below are ASCII; integers are big-endian.

* commitment  ``SHA-256("potd-seed-v1\\n" || s_rand)`` (hex in ``run.open``)
* beacon      ``SHA-256(sig)`` where ``sig`` is the 64-byte Ed25519 signature of the log
              key on the checkpoint of size index(run.open)+1 with no extension lines
              (log mode, grindable by a colluding operator); in drand mode the beacon is
              ``SHA-256(drand signature of the committed round)`` (see prover.beacon)
* seed        ``SHA-256("potd-seed-v1\\n" || dataset_root32 || s_rand32 || beacon32)``
* stream(label)  ``SHA-256(seed || label || u64 counter)`` for counter = 0, 1, 2, ...
  concatenated: an unbounded pseudo-random byte stream per label.
* epoch order ``permutation(seed, n, e)``: Fisher–Yates over ``[0, n)`` driven by the
  stream with label ``"order" || u64 e``: for ``i`` from ``n-1`` down to ``1``, read
  u64 values ``r`` (8 bytes at a time) until ``r < 2**64 - (2**64 mod (i+1))``, set
  ``j = r mod (i+1)`` and swap positions ``i`` and ``j``.
* init seed   first 8 bytes of stream ``"init"`` as u64, masked to 63 bits
  (``torch.manual_seed`` before building the model)
* step seed   first 8 bytes of stream ``"step" || u64 step``, masked to 63 bits
  (``torch.manual_seed`` before each step's forward pass: dropout, augmentation)
* shards      a data-parallel run of world size ``N`` (``run.open``'s ``data_parallel``)
  splits each step's batch of ``b`` indexes, in batch order, into ``N`` contiguous shards:
  rank ``r`` trains on positions ``[floor(r*b/N), floor((r+1)*b/N))``; every step's
  ``b`` must be at least ``N`` (no empty shard). E.g. ``b = 10, N = 3``: ``[0,3) [3,6)
  [6,10)``. Each rank's gradient is weighted by its share ``len(shard)/b`` before the
  sum over ranks, so the update is the global batch's (mean loss) in exact arithmetic.

A fixed vector for the permutation is in tests/test_derive.py and in the README.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator

from ledger.errors import MalformedError, UsageError
from ledger.note import SignedCheckpoint, Verifier, open_checkpoint

SEED_DOMAIN = b"potd-seed-v1\n"


def new_s_rand() -> bytes:
    return os.urandom(32)


def seed_commitment(s_rand: bytes) -> str:
    if len(s_rand) != 32:
        raise UsageError("s_rand must be 32 bytes")
    return hashlib.sha256(SEED_DOMAIN + s_rand).hexdigest()


def beacon_from_checkpoint(note_text: str | bytes, log_key: Verifier, expect_size: int, *,
                           origin: str | None = None) -> bytes:
    """Verify the beacon checkpoint and return ``SHA-256(log signature)``.

    The checkpoint must be signed by ``log_key``, be of the log's origin (``origin``, by
    default the key's name: :func:`ledger.note.open_checkpoint`), have exactly
    ``expect_size`` entries and no extension lines (so exactly one such checkpoint exists).
    """
    cp: SignedCheckpoint = open_checkpoint(note_text, log_key, origin=origin)
    if cp.size != expect_size:
        raise MalformedError(f"beacon checkpoint has size {cp.size}, expected {expect_size} "
                             "(index of run.open + 1)")
    if cp.checkpoint.extensions:
        raise MalformedError("beacon checkpoint must have no extension lines")
    for s in cp.note.signatures:
        if (s.name, s.key_id) == (log_key.name, log_key.key_id):
            return hashlib.sha256(s.signature).digest()
    raise MalformedError("beacon checkpoint carries no log signature")  # unreachable


def derive_seed(dataset_root: bytes, s_rand: bytes, beacon: bytes) -> bytes:
    for what, v in (("dataset root", dataset_root), ("s_rand", s_rand), ("beacon", beacon)):
        if len(v) != 32:
            raise UsageError(f"{what} must be 32 bytes, got {len(v)}")
    return hashlib.sha256(SEED_DOMAIN + dataset_root + s_rand + beacon).digest()


def stream(seed: bytes, label: bytes) -> Iterator[bytes]:
    """SHA-256 in counter mode: blocks of 32 bytes."""
    counter = 0
    while True:
        yield hashlib.sha256(seed + label + struct.pack(">Q", counter)).digest()
        counter += 1


def _u64s(seed: bytes, label: bytes) -> Iterator[int]:
    for block in stream(seed, label):
        for k in range(0, 32, 8):
            yield int.from_bytes(block[k:k + 8], "big")


def permutation(seed: bytes, n: int, epoch: int) -> list[int]:
    """The data order of ``epoch``: a permutation of ``range(n)`` (see module doc)."""
    order = list(range(n))
    rnd = _u64s(seed, b"order" + struct.pack(">Q", epoch))
    two64 = 1 << 64
    for i in range(n - 1, 0, -1):
        m = i + 1
        limit = two64 - (two64 % m)
        r = next(rnd)
        while r >= limit:
            r = next(rnd)
        j = r % m
        order[i], order[j] = order[j], order[i]
    return order


def choose(seed: bytes, label: bytes, n: int, r: int) -> list[int]:
    """``min(r, n)`` distinct values of ``range(n)``, sorted: the first ``r`` positions of
    a forward Fisher–Yates shuffle of ``[0, n)`` driven by the stream with ``label`` —
    for ``i`` from 0 to ``r - 1``, draw ``j`` uniform in ``[i, n)`` (u64 values ``v``
    rejected while ``v >= 2**64 - (2**64 mod (n - i))``, ``j = i + v mod (n - i)``) and
    swap positions ``i`` and ``j``. O(r) time and memory (a sparse shuffle), so a
    public challenge is re-derivable in any language. Used for the audit's replay and
    memorization samples (labels ``"challenge"`` and ``"memorization"``)."""
    if n < 0 or r < 0:
        raise UsageError("choose: n and r must be non-negative")
    r = min(r, n)
    swapped: dict[int, int] = {}
    rnd = _u64s(seed, label)
    two64 = 1 << 64
    for i in range(r):
        m = n - i
        limit = two64 - (two64 % m)
        v = next(rnd)
        while v >= limit:
            v = next(rnd)
        j = i + v % m
        swapped[i], swapped[j] = swapped.get(j, j), swapped.get(i, i)
    return sorted(swapped[i] for i in range(r))


def _seed63(seed: bytes, label: bytes) -> int:
    return int.from_bytes(next(stream(seed, label))[:8], "big") & ((1 << 63) - 1)


def init_seed(seed: bytes) -> int:
    return _seed63(seed, b"init")


def step_seed(seed: bytes, step: int) -> int:
    return _seed63(seed, b"step" + struct.pack(">Q", step))


def schedule(n_examples: int, batch_size: int, epochs: int) -> list[tuple[int, int, int]]:
    """Steps as ``(step, epoch, start offset in the epoch order)``; the last batch of an
    epoch may be short (no example is dropped)."""
    if batch_size < 1 or epochs < 1 or n_examples < 1:
        raise UsageError("batch size, epochs and dataset size must be positive")
    per_epoch = -(-n_examples // batch_size)
    return [(e * per_epoch + b, e, b * batch_size) for e in range(epochs) for b in range(per_epoch)]


def batch_indexes(seed: bytes, n_examples: int, batch_size: int, step: int,
                  epoch: int, offset: int, _cache: dict[tuple[bytes, int, int], list[int]] | None
                  = None) -> list[int]:
    """Dataset indexes of one step's batch."""
    key = (seed, n_examples, epoch)
    if _cache is not None and key in _cache:
        order = _cache[key]
    else:
        order = permutation(seed, n_examples, epoch)
        if _cache is not None:
            _cache.clear()
            _cache[key] = order
    return order[offset:offset + batch_size]


SHARD_SPLIT = "potd-shard-v1"


def shard_bounds(batch: int, world: int) -> list[tuple[int, int]]:
    """``[start, end)`` positions in a batch of ``batch`` indexes of each rank's shard
    (contiguous, sizes differing by at most one; see the module docstring)."""
    if world < 1 or batch < world:
        raise UsageError(f"a batch of {batch} examples cannot be split over {world} ranks",
                         hint="every step's batch must hold at least one example per rank")
    return [(r * batch // world, (r + 1) * batch // world) for r in range(world)]


def check_world(n_examples: int, batch_size: int, world: int) -> None:
    """Every step of :func:`schedule` has at least ``world`` examples (raises
    :class:`~ledger.errors.UsageError` otherwise)."""
    last = n_examples % batch_size or batch_size
    if world < 1 or min(batch_size, last, n_examples) < world:
        raise UsageError(f"world size {world}: some step's batch (batch size {batch_size}, "
                         f"last batch of an epoch {min(last, n_examples)}) has fewer examples "
                         "than ranks", hint="use fewer processes or another batch size")
