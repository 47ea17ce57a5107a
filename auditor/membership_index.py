"""The published hash list, fetched within bounds, and the membership index over it (the
ordered and sorted trees and the positions file), cached by the list's SHA-256
(docs/protocol.md §4.7 "Fetching and caching").

Fetching: the list is streamed to disk in blocks while it is hashed (memory stays flat
whatever the committed size), after two checks that cost nothing: the committed size
must fit the operator's byte cap (``max_bytes``, :data:`MAX_HASH_LIST_BYTES` by default)
and the work directory must have room for the list and its index
(:data:`BYTES_PER_EXAMPLE` per example). Either failing is *inconclusive* with a hint,
never a failure of the run (the trainer's list may be honest and merely large) and
never an allocation.

Cache (``cache_dir``; None = none): one directory per hash list, named by its SHA-256
(which ``run.open`` commits): ``list.hashes``, ``sorted.bin``, ``positions.bin``, the
ordered tree's cached node row (level 8) and ``index.json`` with the SHA-256 of every
other file and the roots computed when the entry was built. Entries are built in a
temporary directory and renamed into place (atomic). On a hit, every file is re-hashed
against ``index.json`` (the list against its own name), the sorted tree is rebuilt from
``sorted.bin`` and the ordered root recomputed from the row, and any mismatch
(corruption, an edited file) discards the entry and rebuilds it. The roots are then
compared with ``run.open`` exactly as for a fresh download. What a hit skips is the
download, the sort and the ordered tree's leaf hashing. The cache is bounded
(``cache_max_bytes``, :data:`CACHE_MAX_BYTES` by default): each use marks its entry
(``index.json``'s modification time) and then the least recently used other entries are
removed until the cache fits, sparing any used in the last :data:`IN_USE_S` seconds
(another audit may be reading it); build directories a killed audit left behind are
removed once :data:`STALE_TMP_S` old.

Trusts: the pinned log key (through the caller's checks); the evidence location is
hostile. The cache directory is the auditor's own disk: the re-hashing catches
corruption and edits, not an adversary who can write files there and rewrite
``index.json`` to match (whoever can do that can also replace the auditor's program).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.errors import LimitError, PotdError, ResponseTooLarge
from prover.evidence import DEADLINE
from prover.hashlist import HEADER_SIZE, MerkleFile, check_hash_list, external_sort

INDEX_FORMAT = "potd-membership-index-v1"
MAX_HASH_LIST_BYTES = 1 << 30  # about 33.5M examples (32 bytes each)
# list 32 + sorted 32 + positions 40 + the sort's spilled runs 40 (removed after)
BYTES_PER_EXAMPLE = 144
_FILES = ("list.hashes", "sorted.bin", "positions.bin", "ordered.row")
CACHE_MAX_BYTES = 8 << 30  # about 58M cached examples' lists and indexes
IN_USE_S = 600.0           # an entry used this recently is never pruned
STALE_TMP_S = 86400.0      # a build directory this old was left by a killed audit


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/potd/membership`` (default ``~/.cache/potd/membership``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "potd" / "membership"


class Unavailable(Exception):
    """The list cannot be had within the operator's bounds (inconclusive, not a fail)."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


class Corrupt(Exception):
    """The list fetched is not the one committed, or is malformed (a failed check)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class Index:
    """The verified list's trees and positions; ``source`` says where they came from
    ("fetched", "cache", or "cache rebuilt: <why>")."""

    ordered: MerkleFile
    srt: MerkleFile
    positions: Path
    source: str

    def close(self) -> None:
        self.ordered.close()
        self.srt.close()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _need(size: int) -> int:
    return HEADER_SIZE + BYTES_PER_EXAMPLE * size


def _check_room(where: Path, size: int) -> None:
    where.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(where).free
    if free < _need(size):
        raise Unavailable(
            f"the work directory {where} has {free:,} bytes free; the hash list of "
            f"{size:,} examples and its index need {_need(size):,}",
            "free space there, or point --cache-dir (or TMPDIR with --no-cache) at a "
            "file system with room")


def fetch(evidence: str, name: str, size: int, dest: Path, *,
          deadline: float = DEADLINE) -> None:
    """Stream ``objects/<name>.hashes`` to ``dest`` and check its SHA-256 and framing
    (Corrupt: also a body longer than ``size`` hashes take), within ``deadline`` seconds
    (Unavailable, as is any failure to read it)."""
    from prover.evidence import EvidenceSource

    want = HEADER_SIZE + 32 * size
    try:
        digest, _ = EvidenceSource(evidence, deadline=deadline).download(
            f"objects/{name}.hashes", dest, want)
    except ResponseTooLarge as e:
        raise Corrupt(f"the published hash list is longer than the {want:,} bytes "
                      f"{size:,} committed examples take: {e.message}") from None
    except LimitError as e:  # the deadline
        raise Unavailable(f"the published hash list cannot be fetched: {e.message}",
                          e.hint or "retry later, or from a faster mirror") from None
    except PotdError as e:
        raise Unavailable(f"the published hash list cannot be read: {e.message}",
                          e.hint or "the trainer must publish the hash list run.open "
                          "names") from None
    except OSError as e:
        raise Unavailable(f"the hash list cannot be written to {dest.parent}: "
                          f"{e.strerror}", "free space there, or point --cache-dir "
                          "elsewhere") from None
    if digest != name:
        raise Corrupt(f"the published hash list objects/{name[:16]}….hashes does not have "
                      "the SHA-256 its name and run.open commit")
    try:
        check_hash_list(dest, size)
    except PotdError as e:
        raise Corrupt(f"the published hash list is malformed: {e.message}") from None


def build(d: Path) -> dict[str, Any]:
    """Sort the list in ``d`` and build both trees; write their rows and return the
    ``index.json`` content (roots, distinct, every file's SHA-256)."""
    with MerkleFile(d / "list.hashes", HEADER_SIZE) as ordered:
        external_sort((ordered.entry(i) for i in range(ordered.size)), d)
        (d / "ordered.row").write_bytes(ordered.row_bytes())
        root, size = ordered.root.hex(), ordered.size
    with MerkleFile(d / "sorted.bin") as srt:
        sroot, distinct = srt.root.hex(), srt.size
    return {"format": INDEX_FORMAT, "size": size, "root": root, "sorted_root": sroot,
            "distinct": distinct, "files": {f: _sha256_file(d / f) for f in _FILES}}


def _open(d: Path, meta: dict[str, Any], source: str) -> Index:
    ordered = MerkleFile(d / "list.hashes", HEADER_SIZE, row=(d / "ordered.row").read_bytes())
    try:  # rebuilt from its leaves: the sorted root is re-verified from the file itself
        srt = MerkleFile(d / "sorted.bin")
    except BaseException:
        ordered.close()
        raise
    idx = Index(ordered, srt, d / "positions.bin", source)
    if (ordered.root.hex(), ordered.size, srt.root.hex(), srt.size) != (
            meta.get("root"), meta.get("size"), meta.get("sorted_root"), meta.get("distinct")):
        idx.close()
        raise Corrupt("the roots recomputed from the cached files differ from index.json")
    return idx


def _load(d: Path, name: str, size: int) -> Index:
    """A cache entry after re-hashing every file and recomputing both roots; Corrupt
    (with the reason) if anything does not match."""
    try:
        meta = json.loads((d / "index.json").read_bytes())
    except (OSError, ValueError, UnicodeDecodeError):
        raise Corrupt("index.json is missing or not JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT \
            or meta.get("size") != size or not isinstance(meta.get("files"), dict):
        raise Corrupt("index.json is not an index of this list")
    for f in _FILES:
        try:
            got = _sha256_file(d / f)
        except OSError as e:
            raise Corrupt(f"{f}: {e.strerror}") from None
        if got != (name if f == "list.hashes" else meta["files"].get(f)):
            raise Corrupt(f"{f} does not have the SHA-256 recorded for it")
    try:
        return _open(d, meta, "cache")
    except PotdError as e:
        raise Corrupt(e.message) from None


def _entry_bytes(d: Path) -> int:
    total = 0
    for root, _, files in os.walk(d):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def prune(cache_dir: Path, max_bytes: int, keep: str = "", *,
          now: float | None = None) -> list[str]:
    """Remove least recently used entries of ``cache_dir`` (never ``keep``, nor one used
    in the last :data:`IN_USE_S` seconds) until it holds at most ``max_bytes``, and build
    directories older than :data:`STALE_TMP_S`; the names removed, oldest first."""
    now = time.time() if now is None else now
    entries: list[tuple[float, int, str]] = []
    try:
        listing = list(os.scandir(cache_dir))
    except OSError:
        return []
    for e in listing:
        if not e.is_dir(follow_symlinks=False):
            continue
        try:
            used = os.stat(os.path.join(e.path, "index.json")).st_mtime
        except OSError:  # no index: a build in progress (.tmp-) or a broken entry
            used = e.stat(follow_symlinks=False).st_mtime
        if e.name.startswith(".tmp-"):
            if now - used > STALE_TMP_S:
                shutil.rmtree(e.path, ignore_errors=True)
            continue
        if len(e.name) == 64 and not e.name.strip("0123456789abcdef"):
            entries.append((used, _entry_bytes(Path(e.path)), e.name))
    total = sum(b for _, b, _ in entries)
    removed = []
    for used, size, name in sorted(entries):
        if total <= max_bytes:
            break
        if name == keep or now - used < IN_USE_S:
            continue
        shutil.rmtree(cache_dir / name, ignore_errors=True)
        total -= size
        removed.append(name)
    return removed


def _used(cache_dir: Path, name: str, max_bytes: int | None) -> None:
    """Mark entry ``name`` used now, then prune the cache to ``max_bytes`` (None: no
    bound). Failing to do either only costs disk space, never the answer."""
    try:
        os.utime(cache_dir / name / "index.json")
    except OSError:
        pass
    if max_bytes is not None:
        prune(cache_dir, max_bytes, keep=name)


def index(evidence: str, name: str, size: int, *, max_bytes: int = MAX_HASH_LIST_BYTES,
          cache_dir: Path | None = None, cache_max_bytes: int | None = CACHE_MAX_BYTES,
          work: Path, deadline: float = DEADLINE) -> Index:
    """The verified index of hash list ``name`` of ``size`` examples: from ``cache_dir``
    when a valid entry is there, else fetched from ``evidence`` and built (into the
    cache when there is one, pruned to ``cache_max_bytes`` after, else into ``work``).
    Unavailable or Corrupt otherwise."""
    if len(name) != 64 or name.strip("0123456789abcdef") or size < 0:
        raise Corrupt(f"{name[:80]!r} is not a hash list's SHA-256 (64 lowercase hex "
                      "digits), or the size is negative")
    want = HEADER_SIZE + 32 * size
    if want > max_bytes:
        raise Unavailable(
            f"run.open commits {size:,} examples: its hash list takes {want:,} bytes, more "
            f"than the {max_bytes:,} this auditor accepts",
            "raise --max-hash-list-bytes if you mean to fetch and index a list that large")
    why = ""
    if cache_dir is not None:
        entry = cache_dir / name
        if entry.is_dir():
            try:
                got = _load(entry, name, size)
                _used(cache_dir, name, cache_max_bytes)
                return got
            except Corrupt as e:
                why = e.message
                shutil.rmtree(entry, ignore_errors=True)
        if cache_max_bytes is not None:  # make room for this entry first
            prune(cache_dir, max(0, cache_max_bytes - _need(size)), keep=name)
        _check_room(cache_dir, size)
        tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".tmp-"))
        try:
            fetch(evidence, name, size, tmp / "list.hashes", deadline=deadline)
            meta = build(tmp)
            (tmp / "index.json").write_text(json.dumps(meta, sort_keys=True) + "\n")
            try:
                os.rename(tmp, entry)
            except OSError:  # another process placed it first: use ours, drop it after
                shutil.rmtree(entry, ignore_errors=True)
                os.rename(tmp, entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        got = _open(entry, meta, f"cache rebuilt: {why}" if why else "fetched")
        _used(cache_dir, name, cache_max_bytes)
        return got
    _check_room(work, size)
    fetch(evidence, name, size, work / "list.hashes", deadline=deadline)
    meta = build(work)
    return _open(work, meta, "fetched")
