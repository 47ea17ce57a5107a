"""The evidence store: weights and optimizer state as safetensors, content-addressed.

Layout of an evidence directory (also servable as-is over HTTP)::

    objects/<sha256 of file bytes>.safetensors
    manifest.json            {"run": ..., "checkpoints": [{"step": t, "weights": name,
                              "weights_hash": h, "optimizer": name, "optimizer_hash": h,
                              "state": s}]}

``state`` is the ``potd-state-v1`` hash over the checkpoint's parts (see
:mod:`prover.hashing`).

Object names are the SHA-256 of the file, so any transport is untrusted: a reader
checks every byte it gets against the name (and the caller checks the tensors' hash
against the log). Only safetensors are ever parsed (header validated field by field,
:func:`prover.hashing.parse_safetensors`): a pickle payload is rejected as malformed,
never loaded. Reads are bounded in size and time (see :class:`EvidenceSource`).
Writes are atomic (temporary file + rename + fsync).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ledger.errors import (
    LimitError,
    MalformedError,
    PotdError,
    PushbackError,
    ResponseTooLarge,
    VerificationError,
)
from ledger.peer import Peer, parse_json

if TYPE_CHECKING:
    import torch

_NAME = re.compile(r"^[0-9a-f]{64}\.safetensors$")
MAX_OBJECT = 4 << 30  # bytes per evidence object (EvidenceSource(max_object=...))
MAX_MANIFEST = 64 << 20  # about 200k checkpoints
MANIFEST_DEPTH = 16  # the manifest nests 3 deep
DEADLINE = 600.0  # seconds per HTTP request for evidence, in total (4 GiB at ~7 MB/s)


class EvidenceError(VerificationError):
    """An evidence file is missing, altered, not safetensors, or does not match the log."""

    code = "bad_evidence"
    hint = "the evidence does not match what the log committed; do not trust it"


_BUSY = (429, 502, 503, 504)  # the server shedding load or its backend away


def _http_error(where: str, status: int, rel: str) -> EvidenceError:
    """The error for an answer other than 200. A busy or unreachable server (429, 502,
    503, 504) says nothing about the evidence: its error carries a PushbackError as
    context, as a transport failure does, so the auditor's checks are inconclusive."""
    e = EvidenceError(f"evidence {where}: HTTP {status}", file=rel)
    if status in _BUSY:
        e.__context__ = PushbackError(f"the evidence server answered HTTP {status}")
    return e


def sync_dir(path: Path) -> None:
    """fsync a directory, making the renames in it durable (POSIX; a no-op elsewhere)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes, *, durable_name: bool = True) -> None:
    """Write ``path`` atomically and durably: data fsynced before the rename, and the
    directory fsynced after it (``durable_name=False``: the caller syncs the directory
    once for several files with :func:`sync_dir`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable_name:
            sync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def flatten_optimizer(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Optimizer state as named tensors ``state.<param index>.<key>`` (scalars as 0-d)."""
    import torch

    out = {}
    for pid, st in opt.state_dict()["state"].items():
        for key, v in st.items():
            t = v if isinstance(v, torch.Tensor) else torch.tensor(v)
            out[f"state.{pid}.{key}"] = t.detach().clone()
    return out


def restore_optimizer(opt: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor]) -> None:
    """Load state written by :func:`flatten_optimizer` into a freshly built optimizer.

    The tensors may be hostile (committed by the trainer): each must name a parameter
    of ``opt`` and be a 0-d scalar (e.g. Adam's ``step``) or have its parameter's shape
    and dtype (momentum, moments); :class:`MalformedError` otherwise."""
    sd = opt.state_dict()
    params = [p for g in opt.param_groups for p in g["params"]]
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        parts = name.split(".")
        if len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit():
            raise MalformedError(f"unexpected optimizer tensor {name[:80]!r}")
        i = int(parts[1])
        if i >= len(params):
            raise MalformedError(f"optimizer tensor {name!r} names parameter {i}; the "
                                 f"optimizer has {len(params)}")
        p = params[i]
        if t.dim() != 0 and (t.shape != p.shape or t.dtype != p.dtype):
            raise MalformedError(f"optimizer tensor {name!r} is {t.dtype} "
                                 f"{tuple(t.shape)}; its parameter is {p.dtype} "
                                 f"{tuple(p.shape)}")
        state.setdefault(i, {})[parts[2]] = t.clone()
    sd["state"] = state
    opt.load_state_dict(sd)


class EvidenceStore:
    """Writer side: a local directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        (self.root / "objects").mkdir(parents=True, exist_ok=True)
        self._deferred: dict[str, str] = {}  # object name -> temporary file, see sync()

    def put(self, tensors: Mapping[str, torch.Tensor]) -> str:
        from safetensors.torch import save

        data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
        name = hashlib.sha256(data).hexdigest() + ".safetensors"
        path = self.root / "objects" / name
        if not path.exists():
            _atomic_write(path, data)
        return name

    def put_bytes_deferred(self, name: str, data: bytes) -> None:
        """Queue a content-addressed object for :meth:`sync` (written to a temporary file
        now; durable and visible under its name only after ``sync``)."""
        path = self.root / "objects" / name
        if name in self._deferred or path.exists():
            return
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except BaseException:
            os.unlink(tmp)
            raise
        self._deferred[name] = tmp

    def sync(self) -> None:
        """Make every deferred object durable under its name: the contents (an fdatasync
        per file, issued only after all were written, so the file system commits them
        together: the first sync does the work, the rest find it done), then the
        renames, then one fsync of the directory. A crash in between leaves only
        ``.tmp-`` files, never a named object with incomplete contents."""
        if not self._deferred:
            return
        objects = self.root / "objects"
        for tmp in self._deferred.values():
            fd = os.open(tmp, os.O_RDONLY)
            try:
                getattr(os, "fdatasync", os.fsync)(fd)
            finally:
                os.close(fd)
        for name, tmp in self._deferred.items():
            os.replace(tmp, objects / name)
        sync_dir(objects)
        self._deferred.clear()

    def write_manifest(self, manifest: Mapping[str, Any]) -> str:
        """Write manifest.json; return its SHA-256 (hex) for ``run.close``."""
        data = manifest_bytes(manifest)
        _atomic_write(self.root / "manifest.json", data)
        return hashlib.sha256(data).hexdigest()


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode() + b"\n"


class EvidenceSource:
    """Reader side: a directory path or an http(s) URL. Untrusted: everything is checked.

    Bounded: an object is at most ``max_object`` bytes and the manifest ``max_manifest``
    (over HTTP both counted decoded, each request within ``deadline`` seconds in total,
    :mod:`ledger.peer`); a local file must be a regular file (checked on the opened
    descriptor: a symlink to a device or a FIFO is refused, never read) and is read no
    further than the size it had when opened.
    """

    def __init__(self, location: str, *, max_object: int = MAX_OBJECT,
                 max_manifest: int = MAX_MANIFEST, deadline: float = DEADLINE) -> None:
        self.location = location
        self.is_url = urllib.parse.urlparse(location).scheme in ("http", "https")
        self.max_object, self.max_manifest, self.deadline = max_object, max_manifest, deadline
        self._peer: Peer | None = None

    def _fetch(self, rel: str, limit: int) -> bytes:
        where = f"{self.location.rstrip('/')}/{rel}"
        if self.is_url:
            if self._peer is None:
                self._peer = Peer(deadline=self.deadline)
            try:
                r = self._peer.get(where, limit=limit)
            except PotdError as e:
                raise EvidenceError(f"cannot fetch evidence {where}: {e.message}", file=rel,
                                    hint=e.hint) from None
            if r.status != 200:
                raise _http_error(where, r.status, rel)
            return r.body
        return _read_regular(Path(self.location) / rel, rel, limit)

    def download(self, rel: str, dest: str | os.PathLike[str], limit: int) -> tuple[str, int]:
        """Copy a named file of the evidence directory to ``dest`` in blocks, hashing as
        it goes (memory stays flat whatever its size); return its SHA-256 (hex) and size,
        unchecked. More than ``limit`` bytes: :class:`~ledger.errors.ResponseTooLarge`
        (nothing past the limit is written); over HTTP the whole transfer is bounded by
        the source's ``deadline`` (:class:`~ledger.errors.DeadlineExceeded`); anything
        else that stops the copy: :class:`EvidenceError`. An error of ``dest`` itself
        (the disk filling up) propagates as OSError, with ``dest`` removed."""
        h = hashlib.sha256()
        n = 0
        try:
            with open(dest, "wb") as out:
                def sink(block: bytes) -> None:
                    nonlocal n
                    h.update(block)
                    out.write(block)
                    n += len(block)

                if self.is_url:
                    self._stream(rel, limit, sink)
                else:
                    _copy_regular(Path(self.location) / rel, rel, limit, sink)
        except BaseException:
            Path(dest).unlink(missing_ok=True)
            raise
        return h.hexdigest(), n

    def _stream(self, rel: str, limit: int, sink: Callable[[bytes], object]) -> None:
        where = f"{self.location.rstrip('/')}/{rel}"
        if self._peer is None:
            self._peer = Peer(deadline=self.deadline)
        try:
            r = self._peer.get(where, limit=limit, sink=sink)
        except LimitError:
            raise
        except PotdError as e:
            raise EvidenceError(f"cannot fetch evidence {where}: {e.message}", file=rel,
                                hint=e.hint) from None
        if r.status != 200:
            raise _http_error(where, r.status, rel)

    def read(self, rel: str, limit: int = 1 << 20) -> bytes:
        """A named file of the evidence directory (e.g. ``challenge.json``, at most
        ``limit`` bytes), unchecked: the caller verifies what it holds."""
        return self._fetch(rel, limit)

    def manifest(self) -> tuple[dict[str, Any], str]:
        """The manifest and its SHA-256 (the caller compares it with ``run.close``)."""
        data = self._fetch("manifest.json", self.max_manifest)
        try:
            m = parse_json(data, "manifest.json", max_depth=MANIFEST_DEPTH)
        except MalformedError as e:
            raise EvidenceError(e.message, file="manifest.json") from None
        if not isinstance(m, dict):
            raise EvidenceError("manifest.json is not a JSON object", file="manifest.json")
        return m, hashlib.sha256(data).hexdigest()

    def get_bytes(self, name: str) -> bytes:
        """The object's bytes, checked against its content address."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise EvidenceError(f"evidence object name {str(name)[:80]!r} is not "
                                "<sha256>.safetensors", file=str(name))
        data = self._fetch(f"objects/{name}", self.max_object)
        got = hashlib.sha256(data).hexdigest()
        if got != name[:64]:
            raise EvidenceError(f"evidence file objects/{name} has SHA-256 {got}: its content "
                                "is not what its name says", file=name)
        return data

    def verify(self, name: str, expect_hash: str, algorithm: str) -> bytes:
        """The object's bytes, after checking them against its content address and its
        tensors against ``expect_hash`` (the hash the log committed); nothing parsed but
        the safetensors header. The format is recognised by parsing that header, never
        by magic bytes; a pickle or a zip (``torch.save``) is refused by name and never
        unpickled."""
        from prover.hashing import hash_safetensors_bytes

        data = self.get_bytes(name)
        try:
            got = hash_safetensors_bytes(data, algorithm)
        except PotdError as e:
            if _looks_pickled(data):
                raise EvidenceError(f"evidence file objects/{name} is a pickle/zip, not "
                                    "safetensors; refusing to load it", file=name) from None
            raise EvidenceError(f"evidence file objects/{name} is not valid safetensors: "
                                f"{e.message}", file=name) from None
        if got != expect_hash:
            raise EvidenceError(f"evidence file objects/{name} holds tensors with hash {got}, "
                                f"the log committed {expect_hash}", file=name)
        return data

    def load(self, name: str, expect_hash: str, algorithm: str) -> dict[str, torch.Tensor]:
        """Load a safetensors object after checking its bytes and its tensor hash.

        ``expect_hash`` is the hash the log committed to (weights or optimizer state).
        """
        data = self.verify(name, expect_hash, algorithm)
        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            return load(data)
        except (SafetensorError, ValueError, RuntimeError) as e:
            raise EvidenceError(f"evidence file objects/{name} is not valid safetensors: {e}",
                                file=name) from None


def _looks_pickled(data: bytes) -> bool:
    """A pickle (protocol 2+ opens with PROTO) or a zip archive (``torch.save``)."""
    return (len(data) > 1 and data[0] == 0x80 and 2 <= data[1] <= 5) or data[:4] == b"PK\x03\x04"


def _open_regular(path: Path, rel: str) -> tuple[int, os.stat_result]:
    """An open descriptor on the regular file ``path`` and its stat: the type is taken from
    the opened descriptor (no race with a swap), and opening never blocks (a FIFO)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise EvidenceError(f"evidence file {path} is missing", file=rel,
                            hint="the trainer must publish every object the log "
                                 "names") from None
    except OSError as e:
        raise EvidenceError(f"cannot read evidence file {path}: {e.strerror}",
                            file=rel) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise EvidenceError(f"evidence file {path} is not a regular file; refusing to "
                                "read it", file=rel,
                                hint="an evidence directory holds plain files only (no "
                                     "devices, FIFOs or links to them)")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _read_regular(path: Path, rel: str, limit: int) -> bytes:
    """A regular file's bytes, at most ``limit`` (:func:`_open_regular`)."""
    fd, st = _open_regular(path, rel)
    try:
        if st.st_size > limit:
            raise EvidenceError(f"evidence file {path} has {st.st_size} bytes, more than "
                                f"the {limit} allowed", file=rel)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(st.st_size)
        return data
    except OSError as e:
        raise EvidenceError(f"cannot read evidence file {path}: {e.strerror}",
                            file=rel) from None
    finally:
        os.close(fd)


def _copy_regular(path: Path, rel: str, limit: int, sink: Callable[[bytes], object]) -> None:
    """Hand a regular file's bytes to ``sink`` in 1 MiB blocks, no further than the size
    it had when opened and at most ``limit`` (more: ResponseTooLarge, nothing read)
    (:func:`_open_regular`)."""
    fd, st = _open_regular(path, rel)
    try:
        if st.st_size > limit:
            raise ResponseTooLarge(f"evidence file {path} has {st.st_size} bytes, more "
                                   f"than the {limit} allowed")
        left = st.st_size
        while left > 0:
            try:
                block = os.read(fd, min(1 << 20, left))
            except OSError as e:
                raise EvidenceError(f"cannot read evidence file {path}: {e.strerror}",
                                    file=rel) from None
            if not block:
                raise EvidenceError(f"evidence file {path} shrank while it was read",
                                    file=rel)
            sink(block)
            left -= len(block)
    finally:
        os.close(fd)
