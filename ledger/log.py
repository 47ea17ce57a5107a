"""The sequencer: the only place where Merkle math, storage and signing meet.

``Log.append(entries)`` hashes the entries onto the in-memory right edge of the tree
(O(log n) per entry, never a rebuild), signs a checkpoint for the new size after
checking it is consistent with the previous signed checkpoint, and commits entries,
hashes and checkpoint in one storage transaction. It returns only after that commit, so
an acknowledged entry survives a crash. If anything fails, the in-memory state is rolled
back with the transaction.

Checkpoints carry no extension lines unless ``timestamps=True``; then a given tree size
has exactly one checkpoint without extensions (Ed25519 is deterministic), which
:meth:`Log.checkpoint_at` can re-sign for any past size (the prover's beacon uses that).
"""

from __future__ import annotations

import bisect
import hashlib
import threading
import time
from binascii import b2a_base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import MalformedError, PotdError, StorageError, UsageError
from .merkle import (
    CompactRange,
    HashReader,
    check_hash,
    check_tree,
    native,
    node_hash,
    prove_record,
    prove_tree,
    split_stored_hash_index,
    stored_hash_index,
    tree_hash,
)
from .note import (
    Checkpoint,
    SignedCheckpoint,
    Signer,
    Verifier,
    open_checkpoint,
    sign_note,
)
from .storage import Store, open_store
from .storage.base import RunSpan
from .tiles import ENTRIES_LEVEL, MAX_ENTRY_SIZE, TILE_HEIGHT, TILE_WIDTH, Tile, encode_bundle


@dataclass(frozen=True)
class Appended:
    """Result of one append: the first index, the leaf hashes, the new signed checkpoint."""

    first_index: int
    leaf_hashes: tuple[bytes, ...]
    checkpoint: SignedCheckpoint
    # the stored hashes the append wrote: levels[l] starts at level-l hash first_index >> l
    levels: tuple[Sequence[bytes], ...] = field(default=(), repr=False, compare=False)
    # the tree's right edge before the append (CompactRange.edge at first_index)
    old_edge: tuple[bytes, ...] = field(default=(), repr=False, compare=False)


class _Overlay:
    """HashReader over a batch's not-yet-committed hashes on top of the store.

    ``levels[l]`` holds the batch's new level-``l`` hashes, the first being hash number
    ``old_size >> l`` of that level.
    """

    def __init__(self, store: Store, old_size: int, levels: Sequence[Sequence[bytes]],
                 old_edge: Sequence[bytes] = ()) -> None:
        self.store, self.old_size, self.levels = store, old_size, levels
        # the old tree's right edge (its complete subtrees, largest first), from memory:
        # the left siblings of every new record's path, so proofs need no store reads
        self.edge: dict[tuple[int, int], bytes] = {}
        if old_edge:
            lo = 0
            for level, h in zip([b for b in range(old_size.bit_length() - 1, -1, -1)
                                 if old_size >> b & 1], old_edge, strict=True):
                self.edge[(level, lo >> level)] = h
                lo += 1 << level

    def _pending(self, index: int) -> bytes | None:
        level, n = split_stored_hash_index(index)
        k = n - (self.old_size >> level)
        if k >= 0 and level < len(self.levels) and k < len(self.levels[level]):
            return self.levels[level][k]
        return self.edge.get((level, n))

    def node(self, level: int, n: int) -> bytes:
        """Stored hash ``n`` of level ``level``: the batch's, else read from the store."""
        k = n - (self.old_size >> level)
        if k >= 0 and level < len(self.levels) and k < len(self.levels[level]):
            return self.levels[level][k]
        h = self.edge.get((level, n))
        if h is not None:
            return h
        return check_hash(self.store.read_hashes([stored_hash_index(level, n)])[0],
                          "stored hash")

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        got = [self._pending(i) for i in indexes]
        missing = [i for i, h in zip(indexes, got, strict=True) if h is None]
        old = iter(self.store.read_hashes(missing))
        return [h if h is not None else next(old) for h in got]


class Log:
    """A signed, append-only Merkle log over a :class:`~ledger.storage.base.Store`."""

    def __init__(self, store: Store, signer: Signer | None, *, timestamps: bool = False,
                 also_sign: Sequence[Signer] = ()) -> None:
        """Open a log. With ``signer=None`` the log is read-only and its checkpoints are
        verified against the verifier key recorded at creation. ``also_sign``: keys of
        the same origin that sign every new checkpoint too (a key rotation window:
        clients pinned to either key verify the same checkpoints)."""
        for extra in also_sign:
            if extra.name != store.origin():
                raise UsageError(f"rotation key {extra.name!r} is not named after the log "
                                 f"origin {store.origin()!r}",
                                 hint=f"generate it with `potd ledger keygen {store.origin()}`")
        self.also_sign = tuple(also_sign)
        if signer is not None and signer.name != store.origin():
            raise UsageError(f"key {signer.name!r} does not match the log origin "
                             f"{store.origin()!r}", hint="use the key this log was created with")
        self.store = store
        self.signer = signer
        self.verifier = signer.verifier if signer is not None else Verifier.parse(store.vkey())
        if signer is not None and str(self.verifier) != store.vkey():
            if str(self.verifier) in store.retired_vkeys():
                raise UsageError(f"key {self.verifier} was retired by `potd ledger rotate-key`; "
                                 f"the log's key is now {store.vkey()}",
                                 hint="use the log's new private key file")
            raise UsageError(f"key {self.verifier} is not the key of this log ({store.vkey()})",
                             hint="use the log's own private key file")
        self.timestamps = timestamps
        self._lock = threading.Lock()
        latest = store.latest_checkpoint()
        size = store.size()
        if latest is not None and getattr(store, "shared", False):
            # other writers may have moved on since: the tree at the checkpoint read first
            size = open_checkpoint(latest, self.verifier).size
        edge = store.read_hashes(CompactRange.edge_indexes(size))
        self._range = CompactRange(size, edge)
        if latest is None:
            if signer is None:
                raise StorageError("the log has no checkpoint yet; open it once with its key")
            self._checkpoint = self._sign(0, self._range.root())
            store.append(0, [], [], (0, str(self._checkpoint), _now_ms()))
        else:
            self._checkpoint = open_checkpoint(latest, self.verifier)
            if self._checkpoint.size != size or self._checkpoint.root != self._range.root():
                raise StorageError(
                    f"latest checkpoint (size {self._checkpoint.size}) does not match the stored "
                    f"tree (size {size}): the database was altered",
                    hint="restore the database from a backup; do not sign over it")

    @classmethod
    def create(cls, path: str, signer: Signer, **kw: Any) -> Log:
        """Create a log at ``path`` (a SQLite file or a ``postgresql://`` URL)."""
        store = open_store(path, create=(signer.name, str(signer.verifier)), writer=True)
        try:
            return cls(store, signer, **kw)
        except BaseException:
            store.close()
            raise

    @classmethod
    def open(cls, path: str, signer: Signer | None = None, **kw: Any) -> Log:
        """Open the log at ``path``; with ``signer`` for writing, which takes the file's
        writer lock (one writer per log, see :class:`~ledger.storage.sqlite.SQLiteStore`)."""
        store = open_store(path, writer=signer is not None)
        try:
            return cls(store, signer, **kw)
        except BaseException:
            store.close()
            raise

    @property
    def origin(self) -> str:
        return self.verifier.name

    def refresh(self) -> bool:
        """Catch up with checkpoints other writers committed to a shared store (the
        newest stored checkpoint, verified, and the tree edge at its size). Never moves
        back. True if the tree grew."""
        latest = self.store.latest_checkpoint()
        if latest is None:
            return False
        cp = open_checkpoint(latest, self.verifier)
        if cp.size <= self._checkpoint.size:
            return False
        forget = getattr(self.store, "forget_tail", None)
        if forget is not None:  # blocks another process extended since we read them
            forget()
        edge = self.store.read_hashes(CompactRange.edge_indexes(cp.size))
        rng = CompactRange(cp.size, edge)
        if rng.root() != cp.root:
            raise StorageError(f"checkpoint of size {cp.size} does not match the stored tree: "
                               "the database was altered",
                               hint="run `potd ledger fsck`; restore from a backup")
        if self._checkpoint.size:
            check_tree(prove_tree(cp.size, self._checkpoint.size, self.store), cp.size,
                       cp.root, self._checkpoint.size, self._checkpoint.root)
        with self._lock:
            if cp.size > self._checkpoint.size:
                self._range, self._checkpoint = rng, cp
        return True

    def _signer(self) -> Signer:
        if self.signer is None:
            raise UsageError("this log was opened read-only", hint="pass the log's private key")
        return self.signer

    @property
    def size(self) -> int:
        return self._checkpoint.size

    def checkpoint(self) -> SignedCheckpoint:
        return self._checkpoint

    def _sign(self, size: int, root: bytes) -> SignedCheckpoint:
        ext = (f"timestamp {_now_ms()}",) if self.timestamps else ()
        return self._sign_cp(Checkpoint(self.origin, size, root, ext))

    def _sign_cp(self, cp: Checkpoint) -> SignedCheckpoint:
        return SignedCheckpoint(cp, sign_note(cp.to_text(), self._signer(), *self.also_sign))

    # -- writing --------------------------------------------------------------

    def append(self, entries: Sequence[bytes], *,
               run_rows: Sequence[tuple[str, int, int]] = (),
               run_spans: Sequence[RunSpan] = (),
               leaves: Sequence[bytes] | None = None) -> Appended:
        """Sequence, integrate, sign and durably store ``entries`` as one batch.

        ``run_rows`` (``(run, seq, index)``, from the log server) and ``run_spans``
        (``(run, first seq, first index, count)``: that many consecutive rows) are stored
        in the same transaction as the entries; each index must fall inside this batch.
        ``leaves``:
        the entries' RFC 6962 leaf hashes if the caller computed them already (the log
        server does, admitting statements); they are trusted to match."""
        types = set(map(type, entries))  # the checks in C; the loop names the entry
        if not types <= {bytes, bytearray} or (entries and max(map(len, entries))
                                                > MAX_ENTRY_SIZE):
            for i, e in enumerate(entries):
                if not isinstance(e, (bytes, bytearray)):
                    raise MalformedError(f"entry #{i} is {type(e).__name__}, not bytes")
                if len(e) > MAX_ENTRY_SIZE:
                    raise UsageError(f"entry #{i} has {len(e)} bytes; the limit is "
                                     f"{MAX_ENTRY_SIZE}", hint="tlog-tiles entry bundles "
                                     "length-prefix entries with 16 bits")
        stored = list(entries) if types <= {bytes} else [bytes(e) for e in entries]
        self._signer()
        with self._lock:
            old = self._checkpoint
            old_edge = self._range.edge
            rng = CompactRange(self._range.size, old_edge)
            if leaves is None:
                sha = hashlib.sha256
                leaves = [sha(b"\x00" + e).digest() for e in entries]
            elif len(leaves) != len(entries):
                raise UsageError(f"{len(leaves)} leaf hashes for {len(entries)} entries")
            levels = rng.extend(leaves)
            if not entries:
                return Appended(old.size, (), old)
            if run_rows and not old.size <= min(r[2] for r in run_rows) <= max(
                    r[2] for r in run_rows) < rng.size:
                raise UsageError(f"a run row points outside the batch [{old.size}, {rng.size})")
            for _, _, first, n in run_spans:
                if not (n >= 1 and old.size <= first and first + n <= rng.size):
                    raise UsageError(f"a run span points outside the batch [{old.size}, "
                                     f"{rng.size})")
            new = self._sign(rng.size, rng.root())
            if old.size:
                proof = prove_tree(new.size, old.size,
                                   _Overlay(self.store, old.size, levels, old_edge))
                check_tree(proof, new.size, new.root, old.size, old.root)
            cp_row = (new.size, str(new), _now_ms())
            self.store.append(old.size, stored, levels, cp_row, run_rows=run_rows,
                              run_spans=run_spans)
            self._range = rng
            self._checkpoint = new
            return Appended(old.size, tuple(leaves), new, tuple(levels), tuple(old_edge))

    def add_cosignatures(self, signed: SignedCheckpoint) -> None:
        """Store a checkpoint note with extra cosignatures (same body as the stored one)."""
        stored = self.store.checkpoint_at(signed.size)
        if stored is None or open_checkpoint(stored, self.verifier).checkpoint != signed.checkpoint:
            raise UsageError(f"no checkpoint with that body at size {signed.size}")
        open_checkpoint(signed.to_bytes(), self.verifier)
        self.store.replace_checkpoint(signed.size, str(signed))
        with self._lock:
            if self._checkpoint.size == signed.size:
                self._checkpoint = signed

    def retire_key(self, new: Signer, *, skip_window: bool = False) -> SignedCheckpoint:
        """Make ``new`` the log's key and retire the current one (``potd ledger rotate-key``).

        The latest checkpoint must already carry ``new``'s signature, i.e. a rotation
        window ran (``serve --also-sign-with``) in which clients could move their pin;
        ``skip_window`` adds that signature now instead. That checkpoint is stored with
        both signatures, so clients pinned to either key verify the checkpoint the switch
        happens at; later checkpoints carry only ``new``'s. Returns that checkpoint."""
        self._signer()
        if new.name != self.origin:
            raise UsageError(f"new key {new.name!r} is not named after the log origin "
                             f"{self.origin!r}", hint=f"potd ledger keygen {self.origin}")
        if str(new.verifier) == str(self.verifier):
            raise UsageError("the new key is already the log's key")
        with self._lock:
            latest = self._checkpoint
            note = latest.note
            try:
                open_checkpoint(str(note), new.verifier)
            except PotdError:
                if not skip_window:
                    raise UsageError(
                        f"the latest checkpoint (size {latest.size}) is not signed by the new "
                        "key: no rotation window ran, so clients pinned to the new key have "
                        "nothing to verify yet",
                        hint="serve with --also-sign-with NEW.key until a new checkpoint is "
                             "signed by both keys, or pass --skip-window") from None
                note = sign_note(note.text, new, existing=note.signatures)
            self.store.rotate_vkey(str(new.verifier), latest.size, str(note))
            self.signer, self.verifier, self.also_sign = new, new.verifier, ()
            self._checkpoint = open_checkpoint(str(note), new.verifier)
            return self._checkpoint

    # -- reading --------------------------------------------------------------

    def checkpoint_at(self, size: int) -> SignedCheckpoint:
        """The log's signed checkpoint (no extension lines) for any size up to the current."""
        self._check_size(size)
        return self._sign_cp(Checkpoint(self.origin, size, self.root_at(size)))

    def root_at(self, size: int) -> bytes:
        self._check_size(size)
        return tree_hash(size, self.store)

    def _check_size(self, size: int) -> int:
        current = self._checkpoint.size
        if not 0 <= size <= current:
            raise UsageError(f"tree size {size} is beyond the current size {current}")
        return current

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        size = self._checkpoint.size if size is None else size
        self._check_size(size)
        return prove_record(size, index, self.store)

    def inclusion_proofs(self, indexes: Sequence[int], size: int | None = None
                         ) -> list[list[bytes]]:
        """Inclusion proofs of several records at one tree size, sharing the work.

        Equal to ``[self.inclusion_proof(i, size) for i in indexes]``; the log server uses
        it to answer a whole flush (all at the new checkpoint's size) at once."""
        size = self._checkpoint.size if size is None else size
        self._check_size(size)
        return prove_records(size, indexes, self.store)

    def inclusion_proofs_joined(self, indexes: Sequence[int], size: int,
                                quote: Callable[[bytes], bytes]) -> list[bytes]:
        """``[b",".join(map(quote, p)) for p in self.inclusion_proofs(indexes, size)]``,
        built in time linear in the number of records (:func:`prove_records_joined`)."""
        self._check_size(size)
        return prove_records_joined(size, indexes, self.store, quote)

    def appended_proofs_joined(self, appended: Appended, quote: Callable[[bytes], bytes]
                               ) -> list[bytes]:
        """The joined inclusion proofs (as :meth:`inclusion_proofs_joined`) of the records
        of ``appended`` at its checkpoint's size; the append's own hashes come from memory
        (:func:`prove_range_joined`)."""
        size = appended.checkpoint.size
        self._check_size(size)
        overlay = _Overlay(self.store, appended.first_index, appended.levels,
                           appended.old_edge)
        return prove_range_joined(size, appended.first_index, overlay.node, quote)

    def appended_proofs_quoted(self, appended: Appended) -> list[bytes]:
        """:meth:`appended_proofs_joined` with each hash quoted as a JSON base64 string
        (``"..."``), built by the C helper when it is there."""
        size = appended.checkpoint.size
        self._check_size(size)
        overlay = _Overlay(self.store, appended.first_index, appended.levels,
                           appended.old_edge)
        if native is not None and appended.first_index < size:
            return list(native.range_proofs(size, appended.first_index,
                                             list(appended.levels), overlay.node))
        return prove_range_joined(size, appended.first_index, overlay.node, _quote)

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        size2 = self._checkpoint.size if size2 is None else size2
        self._check_size(size2)
        if size1 == 0:
            return []
        return prove_tree(size2, size1, self.store)

    def entries(self, start: int, end: int, max_bytes: int | None = None) -> list[bytes]:
        """Entries [start, end); with ``max_bytes``, a prefix of them (at least one) whose
        total size stays within it, if the store can read so (else all of them)."""
        current = self._checkpoint.size
        if not 0 <= start <= end <= current:
            raise UsageError(f"entries [{start}, {end}) are outside the log of size {current}")
        capped = getattr(self.store, "read_entries_capped", None)
        if max_bytes is not None and capped is not None:
            return list(capped(start, end, max_bytes))
        return self.store.read_entries(start, end)

    def tile(self, tile: Tile) -> bytes:
        """Tile contents as served by tlog-tiles; the width must exist in the current tree."""
        if tile.height != TILE_HEIGHT:
            raise UsageError(f"this log serves tiles of height {TILE_HEIGHT}")
        size = self._checkpoint.size
        start = tile.n * TILE_WIDTH
        if tile.level == ENTRIES_LEVEL:
            if start + tile.width > size:
                raise UsageError(f"entry bundle {tile.path()} is beyond the tree size {size}")
            if tile.full:
                read_bundle = getattr(self.store, "read_bundle", None)
                stored = read_bundle(tile.n) if read_bundle is not None else None
                if stored is not None:
                    return bytes(stored)
            return encode_bundle(self.store.read_entries(start, start + tile.width))
        available = size >> (TILE_HEIGHT * tile.level)
        if start + tile.width > available:
            raise UsageError(f"tile {tile.path()} is beyond the tree size {size}")
        return self.store.level_hashes(TILE_HEIGHT * tile.level, start, start + tile.width)


def _quote(h: bytes) -> bytes:
    return b'"' + b2a_base64(h, newline=False) + b'"'


def _now_ms() -> int:
    return int(time.time() * 1000)


_Split = tuple[int, int, int, int, int, int]  # (lo, mid, hi, a, m, b)


def prove_records(t: int, indexes: Sequence[int], reader: HashReader) -> list[list[bytes]]:
    """Inclusion proofs (RFC 9162 audit paths, as :func:`~ledger.merkle.prove_record`) of
    several records in the tree of size ``t``, reading every stored hash once.

    Walks RFC 6962's recursive split once for all targets: a target in the left half
    gets the right half's hash appended after its own path, and vice versa. Hashes of
    complete, aligned subtrees are stored hashes; the others are computed and memoised.
    """
    targets, splits, mth = _plan(t, indexes, reader)
    if not targets:
        return []
    # splits were recorded top-down; appending bottom-up gives leaf-sibling-first.
    proofs: list[list[bytes]] = [[] for _ in targets]
    for lo, mid, hi, a, m, b in reversed(splits):
        if a < m:
            h = mth(mid, hi)
            for j in range(a, m):
                proofs[j].append(h)
        if m < b:
            h = mth(lo, mid)
            for j in range(m, b):
                proofs[j].append(h)
    if len(indexes) == len(targets) and all(
            a == b for a, b in zip(indexes, targets, strict=True)):
        return proofs
    pos = {n: j for j, n in enumerate(targets)}
    return [list(proofs[pos[n]]) for n in indexes]


def prove_records_joined(t: int, indexes: Sequence[int], reader: HashReader,
                         quote: Callable[[bytes], bytes]) -> list[bytes]:
    """The proofs of :func:`prove_records`, each as ``b",".join(map(quote, proof))``.

    Records under one subtree share the upper part of their paths, which comes last in
    a proof: each subtree's joined tail is built once and extended downwards, so the
    work is linear in the number of records rather than in records times path length
    (the log server answers a whole flush this way)."""
    targets, splits, mth = _plan(t, indexes, reader)
    if not targets:
        return []
    tails: dict[tuple[int, int], bytes] = {(0, t): b""}
    for lo, mid, hi, a, m, b in splits:  # top-down: a parent's tail before its children's
        up = tails.pop((lo, hi))
        sep = b"," + up if up else b""
        if a < m:
            tails[(lo, mid)] = quote(mth(mid, hi)) + sep
        if m < b:
            tails[(mid, hi)] = quote(mth(lo, mid)) + sep
    return [tails[(n, n + 1)] for n in indexes]


def prove_range_joined(size: int, first: int, node: Callable[[int, int], bytes],
                       quote: Callable[[bytes], bytes]) -> list[bytes]:
    """The proofs of :func:`prove_records_joined` for the records ``first..size-1`` (the
    tail of the tree, as a flush appends it), with ``node(level, n)`` giving stored
    hashes: one walk down RFC 6962's splits, each subtree's joined tail built once, no
    planning pass (the log server answers each flush with these)."""
    if not 0 <= first < size:
        raise UsageError(f"cannot prove records {first}..{size - 1} in a tree of size {size}")
    computed: dict[tuple[int, int], bytes] = {}

    def mth(lo: int, hi: int) -> bytes:
        n = hi - lo
        if n & (n - 1) == 0:  # splits keep subtrees aligned: complete means stored
            level = n.bit_length() - 1
            return node(level, lo >> level)
        h = computed.get((lo, hi))
        if h is None:
            k = 1 << ((n - 1).bit_length() - 1)
            h = computed[(lo, hi)] = node_hash(mth(lo, lo + k), mth(lo + k, hi))
        return h

    out: list[bytes] = [b""] * (size - first)
    todo = [(0, size, b"")]
    while todo:
        lo, hi, tail = todo.pop()
        if hi - lo == 1:
            out[lo - first] = tail
            continue
        mid = lo + (1 << ((hi - lo - 1).bit_length() - 1))
        sep = b"," + tail if tail else b""
        if first < mid:  # records on the left: the right half is their sibling
            todo.append((lo, mid, quote(mth(mid, hi)) + sep))
        todo.append((mid, hi, quote(mth(lo, mid)) + sep))  # [mid, hi) holds hi - 1
    return out


def _plan(t: int, indexes: Sequence[int], reader: HashReader
          ) -> tuple[list[int], list[_Split], Callable[[int, int], bytes]]:
    """The sorted distinct targets, RFC 6962's splits that separate them (top-down), and
    the subtree hash function over the stored hashes the proofs need (read at once)."""
    for n in indexes:
        if not 0 <= n < t:
            raise UsageError(f"cannot prove inclusion of index {n} in a tree of size {t}",
                             hint="the index must be below the tree size")
    targets = sorted(set(indexes))
    if not targets:
        return [], [], lambda lo, hi: b""
    stored: dict[tuple[int, int], tuple[int, int]] = {}  # complete (lo, hi) -> (level, n)

    def need(lo: int, hi: int) -> None:
        while lo < hi:  # the complete subtrees of [lo, hi), largest first
            k = 1 << ((hi - lo).bit_length() - 1)
            level = k.bit_length() - 1
            stored[(lo, lo + k)] = (level, lo >> level)
            lo += k

    # Pass 1: which stored hashes the proofs need. targets[a:b] lie in [lo, hi).
    splits: list[_Split] = []
    todo = [(0, t, 0, len(targets))]
    while todo:
        lo, hi, a, b = todo.pop()
        if a == b:
            need(lo, hi)
            continue
        if hi - lo == 1:
            continue
        mid = lo + (1 << ((hi - lo - 1).bit_length() - 1))
        m = bisect.bisect_left(targets, mid, a, b)
        if a < m < b:  # each side's hash is a sibling on the other side's paths
            need(lo, mid)
            need(mid, hi)
        splits.append((lo, mid, hi, a, m, b))
        todo.append((lo, mid, a, m))
        todo.append((mid, hi, m, b))
    keys = list(stored)
    nodes = [stored[k] for k in keys]
    read_nodes = getattr(reader, "read_nodes", None)
    hashes = (read_nodes(nodes) if read_nodes is not None
              else reader.read_hashes([stored_hash_index(lv, n) for lv, n in nodes]))
    got = dict(zip(keys, hashes, strict=True))
    for h in got.values():
        check_hash(h, "stored hash")

    def mth(lo: int, hi: int) -> bytes:
        h = got.get((lo, hi))
        if h is None:
            k = 1 << ((hi - lo - 1).bit_length() - 1)
            h = got[(lo, hi)] = node_hash(mth(lo, lo + k), mth(lo + k, hi))
        return h

    return targets, splits, mth
