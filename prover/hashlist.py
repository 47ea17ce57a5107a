"""The published example-hash list and the sorted, de-duplicated set of example hashes
(docs/protocol.md §4.7 "Membership"). Shared by the trainer and the auditor.

Hash-list file ``potd-hashes-v1`` (evidence object ``objects/<sha256 of file>.hashes``)::

    b"potd-hashes-v1\\n" || u64 BE count || count x 32-byte example hash (dataset order)

Two RFC 6962 roots are committed in ``run.open``'s ``dataset``: ``root`` over the list in
dataset order, ``sorted_root`` over its distinct hashes in ascending byte order (``distinct``
of them). Each example hash is a leaf *entry* (leaf hash ``SHA-256(0x00 || h)``). Two
adjacent leaves of the sorted tree prove that no hash between them is in the dataset.

Scale: :func:`external_sort` sorts ``(hash, dataset index)`` records in chunks of at most
``chunk`` records in memory, spills each sorted chunk to disk and merges them; memory is
O(chunk) whatever the dataset size. :class:`MerkleFile` keeps a tree over a file of
32-byte entries (read through ``mmap``) with every node at or above ``cache_level`` in
memory (``2 * n / 2**cache_level`` hashes); a proof recomputes at most one block of
``2**cache_level`` leaves from the file.

Trusts nothing it reads: a malformed hash list is a :class:`MalformedError`.
"""

from __future__ import annotations

import hashlib
import heapq
import mmap
import os
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import cast

from ledger.errors import MalformedError, UsageError
from ledger.merkle import EMPTY_ROOT, Node, prove_record, tree_hash

HEADER = b"potd-hashes-v1\n"
HEADER_SIZE = len(HEADER) + 8
RECORD = 40  # sorted-positions record: hash (32) || u64 BE dataset index
CHUNK = 1 << 18  # records sorted in memory at once (about 25 MB of Python objects)
_sha256 = hashlib.sha256


def encode_header(count: int) -> bytes:
    return HEADER + struct.pack(">Q", count)


def write_hash_list(path: str | os.PathLike[str], hashes: Iterable[bytes]) -> tuple[str, int]:
    """Write ``hashes`` (dataset order) as a ``potd-hashes-v1`` file; return its SHA-256
    (hex) and count. Streams: memory does not grow with the list."""
    h = _sha256()
    n = 0
    with open(path, "wb") as f:
        f.write(encode_header(0))
        for e in hashes:
            if len(e) != 32:
                raise UsageError(f"example hash {n} is {len(e)} bytes, not 32")
            f.write(e)
            n += 1
        f.seek(0)
        f.write(encode_header(n))
        f.flush()
        os.fsync(f.fileno())
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest(), n


def check_hash_list(path: str | os.PathLike[str], expect_count: int | None = None) -> int:
    """The count of a ``potd-hashes-v1`` file after checking its header and exact length;
    MalformedError otherwise."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(HEADER_SIZE)
    if len(head) < HEADER_SIZE or head[:len(HEADER)] != HEADER:
        raise MalformedError("the hash list does not start with the potd-hashes-v1 header",
                             hint="a hash list is b'potd-hashes-v1\\n' || u64 count || hashes")
    n: int = struct.unpack(">Q", head[len(HEADER):])[0]
    if size != HEADER_SIZE + 32 * n:
        raise MalformedError(f"the hash list says {n} hashes but holds {size - HEADER_SIZE} "
                             "bytes of them", hint="32 bytes per example hash, nothing else")
    if expect_count is not None and n != expect_count:
        raise MalformedError(f"the hash list holds {n} hashes; run.open committed a dataset "
                             f"of {expect_count} examples")
    return n


# --- external sort ----------------------------------------------------------------

def _spill(records: list[bytes], d: Path, k: int) -> Path:
    records.sort()
    p = d / f"run-{k:06d}"
    with open(p, "wb") as f:
        f.write(b"".join(records))
    return p


def _read_records(path: Path, size: int = RECORD, block: int = 1 << 16) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while data := f.read(size * block):
            for o in range(0, len(data), size):
                yield data[o:o + size]


def external_sort(hashes: Iterable[bytes], out_dir: str | os.PathLike[str], *,
                  chunk: int = CHUNK, positions: bool = True) -> tuple[Path, Path | None, int]:
    """Sort ``hashes`` (dataset order) in bounded memory into ``out_dir``:

    * ``sorted.bin``: the distinct hashes, ascending (32 bytes each);
    * ``positions.bin`` (if ``positions``): every ``hash || u64 BE index`` record, sorted
      (so all dataset indexes of a hash are one contiguous range).

    Returns the two paths and the number of hashes read. At most ``chunk`` records are in
    memory at once; sorted chunks are spilled to a temporary directory and merged."""
    if chunk < 1:
        raise UsageError("the sort chunk must hold at least one record")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    with tempfile.TemporaryDirectory(dir=out, prefix=".sort-") as tmp:
        runs: list[Path] = []
        buf: list[bytes] = []
        for h in hashes:
            if len(h) != 32:
                raise UsageError(f"example hash {n} is {len(h)} bytes, not 32")
            buf.append(bytes(h) + struct.pack(">Q", n))
            n += 1
            if len(buf) >= chunk:
                runs.append(_spill(buf, Path(tmp), len(runs)))
                buf = []
        merged: Iterable[bytes]
        if not runs:  # everything fit in one chunk: no spill
            buf.sort()
            merged = buf
        else:
            if buf:
                runs.append(_spill(buf, Path(tmp), len(runs)))
            buf = []
            # the merge buffers hold about ``chunk`` records in all, whatever the run count
            block = max(64, chunk // len(runs))
            merged = heapq.merge(*(_read_records(p, block=block) for p in runs))
        sorted_path, pos_path = out / "sorted.bin", out / "positions.bin"
        last = None
        with open(sorted_path, "wb") as fs, (open(pos_path, "wb") if positions
                                              else open(os.devnull, "wb")) as fp:
            w_s, w_p = fs.write, fp.write
            for rec in merged:
                h = rec[:32]
                if h != last:
                    w_s(h)
                    last = h
                if positions:
                    w_p(rec)
    return sorted_path, (pos_path if positions else None), n


# --- a Merkle tree over a file of 32-byte entries -----------------------------------

def _native_root() -> Callable[[bytes], bytes] | None:
    """The optional native RFC 6962 root (``prover._native``, built by setup.py), or None."""
    from prover.datasets import _native

    return None if _native is None else cast(Callable[[bytes], bytes], _native.rfc6962_root)


class MerkleFile:
    """The RFC 6962 tree whose leaf entries are the 32-byte records of a file (from byte
    ``offset``), nodes at or above ``cache_level`` cached in memory (one pass to build).
    """

    def __init__(self, path: str | os.PathLike[str], offset: int = 0, *,
                 cache_level: int = 8, row: bytes | None = None) -> None:
        self.path, self.offset, self.cache_level = Path(path), offset, cache_level
        size = os.path.getsize(self.path) - offset
        if size < 0 or size % 32:
            raise MalformedError(f"{self.path.name}: {size} bytes of entries is not a "
                                 "multiple of 32")
        self.size = size // 32
        self._f = open(self.path, "rb")
        self._mm = (mmap.mmap(self._f.fileno(), 0, access=mmap.ACCESS_READ)
                    if self.size else None)
        self.levels: list[list[bytes]] = []
        if row is None:
            self._build()
        else:  # the ``cache_level`` nodes, as :meth:`row_bytes` gave them (a cache)
            if len(row) != 32 * (self.size >> cache_level):
                self.close()
                raise MalformedError(f"{self.path.name}: a cached node row of {len(row)} "
                                     f"bytes does not fit {self.size} entries")
            self._grow([row[o:o + 32] for o in range(0, len(row), 32)])
        self.root = tree_hash(self.size, self) if self.size else EMPTY_ROOT

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
        self._f.close()

    def __enter__(self) -> MerkleFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def entry(self, i: int) -> bytes:
        if not 0 <= i < self.size or self._mm is None:
            raise UsageError(f"entry {i} is outside the list of {self.size}")
        o = self.offset + 32 * i
        return self._mm[o:o + 32]

    def _leaves(self, lo: int, hi: int) -> list[bytes]:
        assert self._mm is not None
        mm, o = self._mm, self.offset
        return [_sha256(b"\x00" + mm[o + 32 * i:o + 32 * i + 32]).digest()
                for i in range(lo, hi)]

    @staticmethod
    def _perfect(level: list[bytes]) -> bytes:
        while len(level) > 1:
            level = [_sha256(b"\x01" + level[i] + level[i + 1]).digest()
                     for i in range(0, len(level), 2)]
        return level[0]

    def _build(self) -> None:
        # one streamed pass with plain reads: touching every page of the mmap would count
        # the whole file in this process's resident set
        width = 1 << self.cache_level
        blocks = self.size // width
        row: list[bytes] = []
        per_read = max(1, (1 << 20) // (32 * width))  # blocks per read: about 1 MiB
        native = _native_root()
        self._f.seek(self.offset)
        while len(row) < blocks:
            data = self._f.read(32 * width * min(per_read, blocks - len(row)))
            if len(data) % (32 * width):
                raise MalformedError(f"{self.path.name} shrank while it was read")
            for o in range(0, len(data), 32 * width):
                if native is not None:  # the same bytes, one C call per block
                    row.append(native(data[o:o + 32 * width]))
                    continue
                row.append(self._perfect([_sha256(b"\x00" + data[p:p + 32]).digest()
                                          for p in range(o, o + 32 * width, 32)]))
        self._grow(row)

    def row_bytes(self) -> bytes:
        """The nodes at ``cache_level`` (what a cache keeps to skip :meth:`_build`)."""
        return b"".join(self.levels[0]) if self.levels else b""

    def _grow(self, row: list[bytes]) -> None:
        self.levels = [row]
        while len(row) > 1:
            row = [_sha256(b"\x01" + row[i] + row[i + 1]).digest()
                   for i in range(0, len(row) - 1, 2)]
            self.levels.append(row)

    def _node(self, level: int, n: int) -> bytes:
        if level >= self.cache_level:
            return self.levels[level - self.cache_level][n]
        return self._perfect(self._leaves(n << level, (n + 1) << level))

    def read_nodes(self, nodes: Sequence[Node]) -> list[bytes]:
        """:class:`ledger.merkle.HashReader` by (level, n) (``tree_hash``/``prove_record``)."""
        return [self._node(lv, n) for lv, n in nodes]

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        from ledger.merkle import split_stored_hash_index

        return self.read_nodes([split_stored_hash_index(i) for i in indexes])

    def prove(self, i: int) -> list[bytes]:
        """Inclusion proof of entry ``i`` (RFC 9162 audit path)."""
        return prove_record(self.size, i, self)

    def bisect(self, h: bytes) -> int:
        """The first index whose entry is >= ``h`` (the file must be sorted)."""
        lo, hi = 0, self.size
        while lo < hi:
            mid = (lo + hi) // 2
            if self.entry(mid) < h:
                lo = mid + 1
            else:
                hi = mid
        return lo


def positions_of(path: str | os.PathLike[str], h: bytes, limit: int = 1 << 20) -> list[int]:
    """All dataset indexes of ``h`` in a ``positions.bin`` file (binary search; at most
    ``limit`` returned)."""
    n = os.path.getsize(path) // RECORD
    if n == 0:
        return []
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        lo, hi = 0, n
        while lo < hi:
            mid = (lo + hi) // 2
            if mm[mid * RECORD:mid * RECORD + 32] < h:
                lo = mid + 1
            else:
                hi = mid
        out: list[int] = []
        while lo < n and len(out) < limit and mm[lo * RECORD:lo * RECORD + 32] == h:
            (idx,) = struct.unpack_from(">Q", mm, lo * RECORD + 32)
            out.append(idx)
            lo += 1
    return out


def sorted_commitment(hashes: Iterable[bytes], work_dir: str | os.PathLike[str], *,
                      chunk: int = CHUNK) -> tuple[str, int]:
    """``(sorted_root hex, distinct)`` of ``hashes``, in bounded memory (scratch files in
    ``work_dir``, removed)."""
    with tempfile.TemporaryDirectory(dir=work_dir, prefix=".sorted-") as d:
        path, _, _ = external_sort(hashes, d, chunk=chunk, positions=False)
        with MerkleFile(path) as t:
            return t.root.hex(), t.size


def read_entries(path: str | os.PathLike[str], offset: int = HEADER_SIZE,
                 block: int = 1 << 15) -> Iterator[bytes]:
    """The 32-byte entries of a file from ``offset`` (a hash list's hashes), streamed."""
    with open(path, "rb") as f:
        f.seek(offset)
        while data := f.read(32 * block):
            for o in range(0, len(data) - 31, 32):
                yield data[o:o + 32]


def publish(objects_dir: str | os.PathLike[str], hashes: Iterable[bytes], *,
            chunk: int = CHUNK) -> dict[str, str | int]:
    """The trainer's side: write the hash list into the evidence store's ``objects/``
    (content-addressed, atomic) and return the ``run.open`` dataset fields that commit
    it: ``sorted_root``, ``distinct`` and ``hash_list`` (the file's SHA-256).

    ``hashes`` is read once (a stream, e.g. a dataset adapter's ``hashes()``): the sort
    reads the written file back, so memory stays bounded by ``chunk``."""
    d = Path(objects_dir)
    d.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
    os.close(fd)
    try:
        digest, _ = write_hash_list(tmp, hashes)
        os.replace(tmp, d / f"{digest}.hashes")
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    root, distinct = sorted_commitment(read_entries(d / f"{digest}.hashes"), d, chunk=chunk)
    return {"sorted_root": root, "distinct": distinct, "hash_list": digest}
