"""Datasets: how the prover and the auditor read training data (docs/protocol.md §4.6).

A :class:`Dataset` is an ordered list of examples. The protocol needs four things of it:

* ``len(ds)``: the number of examples;
* :meth:`Dataset.example_bytes` ``(i)``: the canonical bytes of example ``i``, whose
  SHA-256 is its *example hash* (a leaf of the dataset root), and :meth:`Dataset.hashes`,
  which yields every example hash in order in bounded memory;
* :meth:`Dataset.batch` ``(indexes)``: the tensors ``(x, y)`` of those examples, stacked;
* :attr:`Dataset.encoding`: the name of the canonical encoding, committed in ``run.open``
  as ``dataset.example_hash``; the auditor compares it before it compares roots.

Adapters: :class:`TensorDataset` (stacked tensors: the ``potd-example-v1`` encoding of
every recipe returning :class:`prover.recipes.Data`), :class:`TokenFile` (a flat
little-endian ``uint16``/``uint32`` token file, nanoGPT's ``train.bin``, cut into
windows) and :class:`FileDir` (one example per file). Each encoding depends on the
example's content only: not on where the data lives, nor (for files) on the file's name.
Where the data lives is the recipe's business (``Recipe.data_dir``), never committed.

Hashing a file-backed dataset is cached on disk (:mod:`prover.dataset_cache`), keyed by
the file's identity; the cache is checked against its own checksum and never trusted
past it. Invariants: a token file is read in chunks of at most :data:`CHUNK_BUDGET`
bytes (memory-mapped for batches, never read whole); errors in the data are
:class:`~ledger.errors.UsageError` with a hint.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ledger.errors import UsageError

if TYPE_CHECKING:
    import torch

_native: Any  # the optional native hasher (setup.py; same bytes as the Python path)
try:
    from prover import _native as _built  # type: ignore[attr-defined, unused-ignore]

    _native = _built
except ImportError:  # pragma: no cover - depends on the build
    _native = None

Indexes = Any  # a sequence of ints, or a 1-d integer tensor
CHUNK_BUDGET = 16 << 20  # bytes of data read at once while hashing
TENSOR_ENCODING = "potd-example-v1/sha256"
FILE_ENCODING = "potd-file-v1/sha256"
FILE_HEADER = b"potd-file-v1\n"
TOKEN_WIDTHS = {"uint16": 2, "uint32": 4}


def token_encoding(dtype: str) -> str:
    return f"potd-tokens-v1/{_short(dtype)}/sha256"


def token_header(dtype: str) -> bytes:
    return f"potd-tokens-v1 {_short(dtype)}\n".encode()


def _short(dtype: str) -> str:
    return "u16" if dtype == "uint16" else "u32"


KNOWN_ENCODINGS = (TENSOR_ENCODING, FILE_ENCODING, token_encoding("uint16"),
                   token_encoding("uint32"))


class Dataset:
    """Base class of the adapters (see the module docstring). Subclasses implement
    ``__len__``, :meth:`example_bytes` and :meth:`batch`, and may override
    :meth:`hashes` (faster, still bounded) and :meth:`cache_key` (to be cached)."""

    encoding: str

    def __len__(self) -> int:
        raise NotImplementedError

    def example_bytes(self, i: int) -> bytes:
        raise NotImplementedError

    def batch(self, indexes: Indexes) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def example_hash(self, i: int) -> bytes:
        return hashlib.sha256(self.example_bytes(i)).digest()

    def hashes(self) -> Iterator[bytes]:
        """Every example hash, in order, in bounded memory."""
        for i in range(len(self)):
            yield self.example_hash(i)

    def cache_key(self) -> dict[str, Any] | None:
        """What identifies this data on disk for the hash cache; None: not cached."""
        return None

    def split(self, heldout: int) -> tuple[Dataset, Dataset]:
        """``(all but the last heldout examples, the last heldout examples)``."""
        n = len(self)
        if not 0 < heldout < n:
            raise UsageError(f"cannot hold out {heldout} of {n} examples",
                             hint="hold out at least one example and keep at least one")
        return Subset(self, 0, n - heldout), Subset(self, n - heldout, n)


class Subset(Dataset):
    """Examples ``start..stop-1`` of ``parent``, renumbered from 0 (same encoding)."""

    def __init__(self, parent: Dataset, start: int, stop: int) -> None:
        if not 0 <= start <= stop <= len(parent):
            raise UsageError(f"subset {start}..{stop} is outside 0..{len(parent)}")
        self.parent, self.start, self.stop = parent, start, stop
        self.encoding = parent.encoding

    def __len__(self) -> int:
        return self.stop - self.start

    def _at(self, i: int) -> int:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.start + i

    def example_bytes(self, i: int) -> bytes:
        return self.parent.example_bytes(self._at(i))

    def example_hash(self, i: int) -> bytes:
        return self.parent.example_hash(self._at(i))

    def batch(self, indexes: Indexes) -> tuple[torch.Tensor, torch.Tensor]:
        return self.parent.batch([self._at(int(i)) for i in indexes])

    def hashes(self) -> Iterator[bytes]:
        if isinstance(self.parent, TokenFile):
            yield from self.parent.hashes(self.start, self.stop)
            return
        for i in range(self.start, self.stop):
            yield self.parent.example_hash(i)

    def hash_blob(self) -> bytes:
        if isinstance(self.parent, TokenFile):
            return self.parent.hash_blob(self.start, self.stop)
        return b"".join(self.hashes())

    def cache_key(self) -> dict[str, Any] | None:
        key = self.parent.cache_key()
        return None if key is None else {**key, "subset": [self.start, self.stop]}


class TensorDataset(Dataset):
    """Stacked tensors: example ``i`` is ``(x[i], y[i])``. Encoding ``potd-example-v1``
    (:func:`prover.hashing.example_hash`): SHA-256 of the ``potd-tensors-v1`` framing of
    the tensors ``x`` and ``y`` under the header ``potd-example-v1\\n``. Not cached (the
    tensors are in memory already)."""

    encoding = TENSOR_ENCODING

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if len(x) != len(y):
            raise UsageError(f"{len(x)} inputs but {len(y)} labels")
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def example_bytes(self, i: int) -> bytes:
        from prover.hashing import EXAMPLE_HEADER, feed_tensors

        out = bytearray()

        class _Sink:
            def update(self, b: bytes | memoryview, /) -> None:
                out.extend(b)

            def digest(self) -> bytes:
                return b""

        feed_tensors(_Sink(), {"x": self.x[i], "y": self.y[i]}, EXAMPLE_HEADER)
        return bytes(out)

    def example_hash(self, i: int) -> bytes:
        from prover.hashing import example_hash

        return example_hash(self.x[i], self.y[i])

    def batch(self, indexes: Indexes) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        t = indexes if isinstance(indexes, torch.Tensor) else torch.tensor(list(indexes),
                                                                          dtype=torch.int64)
        return self.x[t], self.y[t]


def _stat_key(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "inode": st.st_ino, "dev": st.st_dev}


class TokenFile(Dataset):
    """A flat little-endian token file (nanoGPT's ``train.bin``: ``uint16`` or ``uint32``
    token ids, no header), cut into windows of ``block + 1`` tokens starting every
    ``stride`` tokens (default ``block``: neighbouring windows share one token, so every
    token but the first is a target once). Window ``i`` is tokens
    ``[i*stride, i*stride + block + 1)``; there are ``(n - block - 1) // stride + 1`` of
    them (a tail shorter than a window is not used). Its example is
    ``x = window[:-1], y = window[1:]`` as ``int64``.

    Encoding ``potd-tokens-v1/u16`` (or ``u32``): SHA-256 of ``b"potd-tokens-v1 u16\\n"``
    followed by the window's ``block + 1`` token ids as little-endian ``uint16`` (or
    ``uint32``) — the window's bytes exactly as in the file.

    The file is memory-mapped for batches and read in chunks for hashing, never whole.
    """

    def __init__(self, path: str | os.PathLike[str], dtype: str = "uint16", block: int = 128,
                 stride: int | None = None) -> None:
        if dtype not in TOKEN_WIDTHS:
            raise UsageError(f"token dtype {dtype!r} is not supported",
                             hint="use uint16 (token ids < 65536) or uint32")
        stride = block if stride is None else stride
        if type(block) is not int or type(stride) is not int or block < 1 or stride < 1:
            raise UsageError(f"block {block!r} and stride {stride!r} must be positive integers")
        self.path = Path(path).resolve()
        if not self.path.is_file():
            raise UsageError(f"token file {path} does not exist (or is not a file)",
                             hint="check the path, or --data-dir")
        self.dtype, self.block, self.stride = dtype, block, stride
        self.width = TOKEN_WIDTHS[dtype]
        self.encoding = token_encoding(dtype)
        self.header = token_header(dtype)
        size = self.path.stat().st_size
        if size % self.width:
            raise UsageError(f"token file {path} has {size} bytes, not a multiple of the "
                             f"{self.width}-byte {dtype} token",
                             hint="the file is truncated or not a flat token file of this "
                                  "dtype (uint16 vs uint32)")
        self.tokens = size // self.width
        if self.tokens < block + 1:
            raise UsageError(f"token file {path} holds {self.tokens} tokens, fewer than one "
                             f"window of block + 1 = {block + 1}",
                             hint="use a smaller block or a larger file")
        self.windows = (self.tokens - block - 1) // stride + 1
        self._mm: np.memmap[Any, Any] | None = None

    def __len__(self) -> int:
        return self.windows

    def cache_key(self) -> dict[str, Any]:
        return {**_stat_key(self.path), "adapter": "token-file", "dtype": self.dtype,
                "block": self.block, "stride": self.stride, "encoding": self.encoding}

    def _memmap(self) -> np.memmap[Any, Any]:
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype="<u2" if self.width == 2 else "<u4",
                                 mode="r")
        return self._mm

    def _check(self, i: int) -> int:
        if not 0 <= i < self.windows:
            raise IndexError(i)
        return i * self.stride

    def example_bytes(self, i: int) -> bytes:
        s = self._check(i)
        return self.header + self._memmap()[s:s + self.block + 1].tobytes()

    def batch(self, indexes: Indexes) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        starts = np.fromiter((self._check(int(i)) for i in indexes), dtype=np.int64)
        win = self._memmap()[starts[:, None] + np.arange(self.block + 1)].astype(np.int64)
        t = torch.from_numpy(win)
        return t[:, :-1].contiguous(), t[:, 1:].contiguous()

    def _chunks(self, start: int, stop: int | None) -> Iterator[tuple[memoryview, int]]:
        """Windows ``start..stop-1`` as ``(bytes of n consecutive windows, n)``, reading at
        most :data:`CHUNK_BUDGET` bytes at a time (one ``readinto`` per chunk)."""
        stop = self.windows if stop is None else stop
        wb, sb = (self.block + 1) * self.width, self.stride * self.width
        per = max(1, (CHUNK_BUDGET - wb) // sb + 1)  # windows per chunk
        buf = bytearray(min(CHUNK_BUDGET, (per - 1) * sb + wb) if per > 1 else wb)
        mv = memoryview(buf)
        with open(self.path, "rb") as f:
            i = start
            while i < stop:
                n = min(per, stop - i)
                span = (n - 1) * sb + wb
                f.seek(i * sb)
                if f.readinto(mv[:span]) != span:
                    raise UsageError(f"token file {self.path} shrank while it was hashed",
                                     hint="do not change the data while training")
                yield mv[:span], n
                i += n

    def hashes(self, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        """Hashes of windows ``start..stop-1``, in bounded memory (one C call per
        window)."""
        wb, sb = (self.block + 1) * self.width, self.stride * self.width
        sha, hd = hashlib.sha256, self.header
        for mv, n in self._chunks(start, stop):
            yield from [sha(hd + mv[o:o + wb]).digest() for o in range(0, n * sb, sb)]

    def hash_blob(self, start: int = 0, stop: int | None = None) -> bytes:
        """The hashes of windows ``start..stop-1`` concatenated: with the optional native
        hasher (``prover._native``) one C call per chunk, else :meth:`hashes`."""
        if _native is None:
            return b"".join(self.hashes(start, stop))
        wb, sb = (self.block + 1) * self.width, self.stride * self.width
        return b"".join(_native.window_hashes(mv, self.header, wb, sb, n)
                        for mv, n in self._chunks(start, stop))


class FileDir(Dataset):
    """A directory of files, one example per regular file (recursively; hidden files
    and directories, whose names start with ``.``, are skipped), in the order of their
    relative POSIX paths' UTF-8 bytes. ``transform(content) -> (x, y)`` makes an
    example's tensors from the file's bytes; a batch stacks them.

    Encoding ``potd-file-v1``: SHA-256 of ``b"potd-file-v1\\n"`` followed by the file's
    bytes. The name and place of the file are not part of it (only of the order)."""

    encoding = FILE_ENCODING

    def __init__(self, path: str | os.PathLike[str],
                 transform: Callable[[bytes], tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.path = Path(path).resolve()
        if not self.path.is_dir():
            raise UsageError(f"data directory {path} does not exist (or is not a directory)",
                             hint="check the path, or --data-dir")
        self.transform = transform
        found: list[tuple[bytes, Path, os.stat_result]] = []
        for dirpath, dirnames, filenames in os.walk(self.path):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith("."):
                    continue
                p = Path(dirpath) / name
                st = p.stat()
                if stat.S_ISREG(st.st_mode):
                    rel = p.relative_to(self.path).as_posix()
                    found.append((rel.encode("utf-8", "surrogateescape"), p, st))
        if not found:
            raise UsageError(f"data directory {path} holds no files",
                             hint="one example per file; hidden files are skipped")
        found.sort(key=lambda e: e[0])
        self.files = [p for _, p, _ in found]
        listing = hashlib.sha256()
        for key, _, st in found:
            listing.update(b"%d %d %d %d %d " % (len(key), st.st_size, st.st_mtime_ns,
                                                 st.st_ino, st.st_dev) + key)
        self._listing = listing.hexdigest()

    def __len__(self) -> int:
        return len(self.files)

    def cache_key(self) -> dict[str, Any]:
        return {"path": str(self.path), "listing": self._listing, "adapter": "file-dir",
                "encoding": self.encoding}

    def example_bytes(self, i: int) -> bytes:
        return FILE_HEADER + self.files[i].read_bytes()

    def example_hash(self, i: int) -> bytes:
        h = hashlib.sha256(FILE_HEADER)
        with open(self.files[i], "rb") as f:
            while chunk := f.read(CHUNK_BUDGET):
                h.update(chunk)
        return h.digest()

    def batch(self, indexes: Indexes) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        pairs = [self.transform(self.files[int(i)].read_bytes()) for i in indexes]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


class Take(Dataset):
    """The examples ``indexes`` of ``parent`` (any order, e.g. every 10th for a held-out
    split), renumbered from 0; same encoding."""

    def __init__(self, parent: Dataset, indexes: Indexes) -> None:
        self.parent, self.indexes = parent, [int(i) for i in indexes]
        n = len(parent)
        if any(not 0 <= i < n for i in self.indexes):
            raise UsageError(f"an index of the selection is outside 0..{n - 1}")
        self.encoding = parent.encoding

    def __len__(self) -> int:
        return len(self.indexes)

    def example_bytes(self, i: int) -> bytes:
        return self.parent.example_bytes(self.indexes[i])

    def example_hash(self, i: int) -> bytes:
        return self.parent.example_hash(self.indexes[i])

    def batch(self, indexes: Indexes) -> tuple[torch.Tensor, torch.Tensor]:
        return self.parent.batch([self.indexes[int(i)] for i in indexes])

    def hashes(self) -> Iterator[bytes]:
        for i in self.indexes:
            yield self.parent.example_hash(i)

    def cache_key(self) -> dict[str, Any] | None:
        key = self.parent.cache_key()
        if key is None:
            return None
        sel = hashlib.sha256(np.asarray(self.indexes, dtype="<i8").tobytes()).hexdigest()
        return {**key, "take": sel}


@dataclass(frozen=True)
class Datasets:
    """What a recipe's ``data()`` returns for data beyond stacked tensors: the training
    set and the held-out set (see :meth:`Dataset.split`)."""

    train: Dataset
    heldout: Dataset

    def __post_init__(self) -> None:
        for name in ("train", "heldout"):
            if not isinstance(getattr(self, name), Dataset):
                raise UsageError(f"Datasets.{name} is a {type(getattr(self, name)).__name__}, "
                                 "not a prover.datasets.Dataset")


def as_datasets(data: Any) -> Datasets:
    """A recipe's ``data()`` as :class:`Datasets`: stacked-tensor ``Data`` becomes two
    :class:`TensorDataset` (the ``potd-example-v1`` hashes of today)."""
    if isinstance(data, Datasets):
        return data
    if all(hasattr(data, a) for a in ("x", "y", "heldout_x", "heldout_y")):
        return Datasets(TensorDataset(data.x, data.y),
                        TensorDataset(data.heldout_x, data.heldout_y))
    raise UsageError(f"the recipe's data() returned a {type(data).__name__}",
                     hint="return prover.recipes.Data (stacked tensors) or "
                          "prover.datasets.Datasets(train, heldout)")


def call_data(recipe: Any) -> Any:
    """``recipe.data()``; a failure of the recipe's own code (a missing ``data_dir``, a
    bug) is a :class:`UsageError` naming the recipe, not a traceback (the original
    exception is chained)."""
    from ledger.errors import PotdError

    try:
        return recipe.data()
    except PotdError:
        raise
    except Exception as e:  # user code: any failure is the recipe's (or its data's)
        where = f" (data_dir {recipe.data_dir})" if getattr(recipe, "data_dir", None) else \
            " (no --data-dir given)"
        raise UsageError(f"recipe {recipe.name}: data() failed{where}: "
                         f"{type(e).__name__}: {e}",
                         hint="check --data-dir and the recipe's data()") from e


def write_tokens(path: str | os.PathLike[str], tokens: Any, dtype: str = "uint16") -> Path:
    """Write ``tokens`` (bytes — one token per byte —, a sequence or an array of ids) as a
    flat little-endian token file of ``dtype``; refuses ids that do not fit."""
    if dtype not in TOKEN_WIDTHS:
        raise UsageError(f"token dtype {dtype!r} is not supported", hint="uint16 or uint32")
    arr = (np.frombuffer(tokens, dtype=np.uint8) if isinstance(tokens, bytes | bytearray)
           else np.asarray(tokens))
    if arr.size and (arr.min() < 0 or int(arr.max()) >= 1 << (8 * TOKEN_WIDTHS[dtype])):
        raise UsageError(f"token ids do not fit {dtype}", hint="use uint32")
    p = Path(path)
    arr.astype("<u2" if dtype == "uint16" else "<u4").tofile(p)
    return p
