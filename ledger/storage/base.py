"""What every storage backend of the log provides, and the helpers they share.

Layout (the same in every backend). Each entry is stored once: inside its full entry
bundle (C2SP tlog-tiles ``tile/entries/N``: 256 entries, each uint16 length || bytes),
or, while its bundle is partial, as a row ``(idx, data)`` of ``entries``; the append
that completes a bundle writes it and deletes those rows. Stored hashes (Go tlog's
stored hashes, addressed by :func:`~ledger.merkle.stored_hash_index`) are kept per tree
level in blocks of 256: block ``c`` of level ``l`` holds level-``l`` hashes
``256c .. 256c+255``, so a tlog-tiles tile at level ``L`` is exactly the prefix of block
``(8L, N)`` and a proof reads each hash it needs by (level, n) with no recomputation.
Checkpoint history keeps every signed checkpoint by size. ``meta`` holds the schema
version, the origin, the verifier key and the size (the writers' coordination row).

Invariants: one append = one transaction (entries, bundles, hashes, checkpoint, size and
run index rows advance together or not at all; the leaf-hash index is caught up later,
see :mod:`.sqlite_indexes`); ``entries`` holds exactly the partial bundle's entries; a
read of entries is one query, so it sees one snapshot; a writer checks, inside its write
transaction, that the stored size is the one it expects, so two writers can never
interleave; stored hashes only ever grow (a block row is replaced by a longer one with
the same prefix), so any snapshot a reader sees holds at least the tree committed before
it asked. A database whose recorded schema version is not :data:`SCHEMA_VERSION` is
refused at open; version 1 (every entry also a row, the leaf index written by appends)
is upgraded in place by ``potd ledger migrate`` (:mod:`.migrate`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from ..errors import MalformedError, StorageError, UsageError
from ..merkle import native
from ..tiles import decode_bundle, encode_bundle

# (run, first seq, first index, count): the run-index rows (run, seq + k, index + k) for
# k < count - a submission's consecutive statements of one run, written as one span
RunSpan = tuple[str, int, int, int]


def split_spans(run_rows: Sequence[tuple[str, int, int]], run_spans: Sequence[RunSpan]
                ) -> tuple[list[tuple[str, int, int]], list[RunSpan]]:
    """``(rows, spans)`` to store: ``run_rows`` with every one-row span as a row, and
    the spans of several rows (one statement each, making its rows in the database)."""
    rows = list(run_rows)
    spans = []
    for span in run_spans:
        if span[3] == 1:
            rows.append(span[:3])
        elif span[3] > 1:
            spans.append(span)
    return rows, spans

BLOCK = 256  # stored hashes per block row
BUNDLE = 256  # entries per entry bundle (tlog-tiles)
SCHEMA_VERSION = 2
# the C helper's encoder where built (entries are already checked by Log.append)
_bundle = native.bundle if native is not None else encode_bundle


def check_schema(where: str, meta: Mapping[str, Any]) -> None:
    """Refuse a database of another schema version (or none: not a potd log)."""
    got = meta.get("schema")
    if got is None or str(got) != str(SCHEMA_VERSION):
        hint = ("upgrade it in place (one transaction, with no log server running on it): "
                f"`potd ledger migrate --db {where}`" if str(got) == "1" else
                "open it with the potd release that wrote it, or publish it "
                "(`potd ledger export`) and serve that directory read-only")
        raise StorageError(f"{where} has schema version {got}, this potd reads version "
                           f"{SCHEMA_VERSION}", hint=hint)


def is_postgres_url(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


def full_bundles(first: int, tail: Sequence[bytes], entries: Sequence[bytes]
                 ) -> tuple[list[bytes], list[tuple[int, bytes]]]:
    """The entry bundles completed by appending ``entries`` at index ``first`` after the
    partial bundle ``tail`` (entries ``first - len(tail) .. first``), and the new tail."""
    if len(tail) != first % BUNDLE:
        raise StorageError(f"entry bundle tail has {len(tail)} entries at size {first}, "
                           f"expected {first % BUNDLE}: the database is damaged")
    rest = list(tail)
    out = []
    n = first // BUNDLE
    pos = 0
    while pos < len(entries):
        take = min(BUNDLE - len(rest), len(entries) - pos)
        rest.extend(entries[pos:pos + take])
        pos += take
        if len(rest) == BUNDLE:
            out.append((n, _bundle(rest)))
            n += 1
            rest = []
    return rest, out


def bundled_entries(start: int, end: int, rows: Iterable[tuple[int, int, bytes]]
                    ) -> list[bytes]:
    """Entries ``start..end-1`` from the rows of one query, in order: ``(0, n, bundle)``
    for full bundles, then ``(1, idx, entry)`` for entries of the partial one."""
    out: list[bytes] = []
    at = start
    for kind, key, data in rows:
        first = key * BUNDLE if kind == 0 else key
        if first > at:
            break
        if kind == 0:
            try:
                got = decode_bundle(bytes(data), expect=BUNDLE)
            except MalformedError as e:
                raise StorageError(f"entry bundle {key} is damaged: {e.message}",
                                   hint="run `potd ledger fsck`; restore from a backup"
                                   ) from None
            hi = min(end, first + BUNDLE)
            out.extend(got[at - first:hi - first])
            at = hi
        elif first == at:
            out.append(bytes(data))
            at += 1
    if at != max(start, end):
        raise UsageError(f"entries {start}..{end} are not all in the log")
    return out


def entry_spans(start: int, end: int, step: int = BUNDLE) -> Iterator[tuple[int, int]]:
    """``[start, end)`` cut at bundle boundaries (at most ``step`` entries each)."""
    while start < end:
        stop = min(end, (start // step + 1) * step)
        yield start, stop
        start = stop


class Store(Protocol):
    """What the sequencer needs from storage. Reads may run concurrently with an append."""

    def origin(self) -> str: ...

    def vkey(self) -> str: ...

    def retired_vkeys(self) -> list[str]:
        """Verifier keys the log signed with before key rotations, oldest first."""
        ...

    def rotate_vkey(self, new_vkey: str, size: int, note: str) -> None:
        """Make ``new_vkey`` the log's key (the current one retired) and replace the note
        of checkpoint ``size`` (the latest), in one transaction."""
        ...

    def size(self) -> int: ...

    def append(self, old_size: int, entries: Sequence[bytes],
               level_hashes: Sequence[Sequence[bytes]], checkpoint: tuple[int, str, int],
               run_rows: Sequence[tuple[str, int, int]] = (),
               run_spans: Sequence[RunSpan] = ()) -> None:
        """Atomically add ``entries`` (indexes ``old_size..``), the new stored hashes
        (``level_hashes[l]`` = new level-``l`` hashes in order) and a signed checkpoint
        ``(size, note, created_ms)``, and any run-index rows ``(run, seq, index)``, given
        one by one (``run_rows``) or as spans of consecutive ones (``run_spans``, each
        stored as its rows: the database still refuses a (run, seq) twice).
        Raises StorageError if the stored size is not ``old_size``; on any error nothing
        is stored."""
        ...

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]: ...

    def level_hashes(self, level: int, start: int, end: int) -> bytes: ...

    def read_entries(self, start: int, end: int) -> list[bytes]: ...

    def latest_checkpoint(self) -> str | None: ...

    def checkpoint_at(self, size: int) -> str | None: ...

    def checkpoints(self, since: int = 0, limit: int = 1000) -> list[tuple[int, str, int]]: ...

    def replace_checkpoint(self, size: int, note: str) -> None: ...

    def close(self) -> None: ...


class IndexedStore(Store, Protocol):
    """A store with the log server's indexes: leaf hashes, runs and allowed signers."""

    def ensure_indexes(self) -> None: ...

    def leaf_index(self, leaf: bytes) -> int | None: ...

    def run_indexes(self, run: str, start_seq: int = 0, limit: int = -1) -> list[int]: ...

    def run_last(self, run: str) -> tuple[int, int] | None: ...

    def run_index(self, run: str, seq: int) -> int | None: ...

    def allowed_signers(self, vkeys: Iterable[str] | None = None) -> set[str]: ...

    def set_signer_allowed(self, vkey: str, allowed: bool) -> bool: ...
