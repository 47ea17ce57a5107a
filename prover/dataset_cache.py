"""Example hashes and the dataset root of a :class:`~prover.datasets.Dataset`, cached
on disk (docs/protocol.md §4.6).

The cache lives in ``$POTD_CACHE`` (``off`` disables it), else
``$XDG_CACHE_HOME/potd/datasets`` or ``~/.cache/potd/datasets``. An entry is keyed by
the dataset's :meth:`~prover.datasets.Dataset.cache_key` — the file's resolved path,
size, ``mtime_ns``, inode and device, the adapter's parameters and the encoding — so a
changed file (new size or modification time) misses. Entry layout::

    b"potd-dataset-cache-v1\\n" || u32 BE len(key) || key (canonical JSON)
    || u64 BE n || root (32 bytes) || n x example hash (32 bytes)
    || BLAKE3-256 of everything before

An entry whose checksum, key, length or root does not hold is ignored (and rewritten):
the cache is never trusted past its own checksum. What it does trust is the file's
identity: a file rewritten in place with the same size and modification time (which
takes deliberate effort) keeps its cached hashes; ``POTD_CACHE=off`` rehashes.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prover.datasets import Dataset
from prover.hashing import merkle_root_hex

MAGIC = b"potd-dataset-cache-v1\n"


class HashTable:
    """The example hashes of a dataset (``n`` x 32 bytes in one buffer) and its root."""

    def __init__(self, blob: bytes, root: str) -> None:
        self.blob, self.root = blob, root

    def __len__(self) -> int:
        return len(self.blob) // 32

    def __getitem__(self, i: int) -> bytes:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.blob[32 * i:32 * i + 32]

    def __iter__(self) -> Iterator[bytes]:
        b = self.blob
        return (b[o:o + 32] for o in range(0, len(b), 32))


def cache_dir() -> Path | None:
    env = os.environ.get("POTD_CACHE")
    if env == "off":
        return None
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "potd" / "datasets"


def _key_bytes(key: dict[str, Any]) -> bytes:
    return json.dumps(key, sort_keys=True, separators=(",", ":")).encode()


def _entry_path(directory: Path, kb: bytes) -> Path:
    return directory / (hashlib.sha256(kb).hexdigest() + ".hashes")


def _checksum(data: bytes | memoryview) -> bytes:
    import blake3

    return blake3.blake3(data, max_threads=blake3.blake3.AUTO).digest()


def read_entry(path: Path, kb: bytes) -> HashTable | None:
    """The entry at ``path`` if it is whole and for key ``kb``; else None."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    head = len(MAGIC) + 4 + len(kb)
    if len(data) < head + 8 + 32 + 32 or not data.startswith(MAGIC):
        return None
    mv = memoryview(data)
    if _checksum(mv[:-32]) != data[-32:]:
        return None
    (k,) = struct.unpack_from(">I", data, len(MAGIC))
    if k != len(kb) or data[len(MAGIC) + 4:head] != kb:
        return None
    (n,) = struct.unpack_from(">Q", data, head)
    if len(data) != head + 8 + 32 + 32 * n + 32:
        return None
    root = data[head + 8:head + 40].hex()
    return HashTable(data[head + 40:-32], root)


def write_entry(path: Path, kb: bytes, table: HashTable) -> None:
    body = (MAGIC + struct.pack(">I", len(kb)) + kb + struct.pack(">Q", len(table))
            + bytes.fromhex(table.root) + table.blob)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            f.write(_checksum(body))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def compute(ds: Dataset) -> HashTable:
    """Hash ``ds`` streaming: its hashes in one buffer, then the RFC 6962 root (both with
    the optional native hasher when it is built and the dataset offers ``hash_blob``)."""
    from prover.datasets import _native

    blob_of = getattr(ds, "hash_blob", None)
    if callable(blob_of):
        blob = bytes(blob_of())
    else:
        out = bytearray()
        for h in ds.hashes():
            out += h
        blob = bytes(out)
    table = HashTable(blob, "")
    table.root = (_native.rfc6962_root(blob).hex() if _native is not None and blob
                  else merkle_root_hex(table))
    return table


def dataset_hashes(ds: Dataset, *, cache: bool = True) -> HashTable:
    """The example hashes and root of ``ds``, from the cache when it holds them."""
    key = ds.cache_key() if cache else None
    directory = cache_dir()
    if key is None or directory is None:
        return compute(ds)
    kb = _key_bytes(key)
    path = _entry_path(directory, kb)
    hit = read_entry(path, kb)
    if hit is not None and len(hit) == len(ds):
        return hit
    table = compute(ds)
    try:
        write_entry(path, kb, table)
    except OSError:
        pass  # a read-only or full cache is only slower
    return table
