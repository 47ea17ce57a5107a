"""The log server's indexes in a SQLite log: leaf hashes, runs, allowed signers.

``run_entries`` maps ``(run, seq)`` to the index of that statement; its rows are written
in the append's own transaction (the sequencer admits by it, and a retried statement
finds its index there), so it never disagrees with the tree. ``allowed_signers`` is the
operator's allow-list.

``leaves`` maps each leaf hash to its first index. It answers only
``GET /proof/inclusion?leaf_hash=``, so it is kept off the commit path: appends do not
touch it (its random keys cost about a third of a commit), and a lookup first indexes
the leaves appended since the previous one - read from the stored level-0 hashes, sorted,
in transactions of at most :data:`CATCH_UP` leaves - so every lookup sees the whole tree
committed before it asked. ``meta.leaves_size`` is how far it goes.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from ..errors import StorageError
from ..merkle import HASH_SIZE
from .base import BLOCK
from .dbfile import rollback

CATCH_UP = 16384  # leaves indexed per transaction (the writer waits at most for one)


class SQLiteIndexes:
    """Mixin of :class:`~ledger.storage.sqlite.SQLiteStore`: the server's indexes."""

    path: str
    conn: sqlite3.Connection
    _lock: threading.RLock
    _indexing: bool

    if TYPE_CHECKING:
        def _reading(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def ensure_indexes(self) -> None:
        """Create the server's index tables if missing and index any unindexed leaves."""
        conn = self.conn
        with self._lock:
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.execute("CREATE TABLE IF NOT EXISTS leaves (hash BLOB PRIMARY KEY, "
                                 "idx INTEGER NOT NULL) WITHOUT ROWID")
                    conn.execute("CREATE TABLE IF NOT EXISTS run_entries (run TEXT NOT NULL, "
                                 "seq INTEGER NOT NULL, idx INTEGER NOT NULL, "
                                 "PRIMARY KEY (run, seq)) WITHOUT ROWID")
                    conn.execute("CREATE TABLE IF NOT EXISTS allowed_signers (vkey TEXT "
                                 "PRIMARY KEY, added_ms INTEGER NOT NULL)")
                    conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES "
                                 "('leaves_size', '0')")
                    conn.execute("COMMIT")
                except BaseException:
                    rollback(conn)
                    raise
            except sqlite3.Error as e:
                raise StorageError(f"cannot create the server indexes in {self.path}: {e}"
                                   ) from None
            self._indexing = True
        self.index_leaves()

    def index_leaves(self) -> int:
        """Index the leaves appended since the leaf index was last brought up to date;
        return how many."""
        self._require_indexes()
        done = 0
        while True:
            with self._lock:
                conn = self.conn
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        size = int(conn.execute("SELECT value FROM meta WHERE key='size'"
                                                ).fetchone()[0])
                        first = _leaves_size(conn)
                        end = min(size, first + CATCH_UP)
                        if first < end:
                            _index(conn, first, _level0(conn, first, end, self.path))
                        conn.execute("COMMIT")
                    except BaseException:
                        rollback(conn)
                        raise
                except sqlite3.Error as e:
                    raise StorageError(f"cannot update the leaf index of {self.path}: {e}",
                                       hint="retry; the index catches up by itself") from None
            done += end - first
            if end >= size:
                return done

    def _require_indexes(self) -> None:
        if not self._indexing:
            raise StorageError(f"{self.path} has no server indexes yet",
                               hint="start `potd ledger serve` once on it, or run "
                                    "`potd ledger allow`, which create them")

    def leaf_index(self, leaf: bytes) -> int | None:
        """The first log index whose leaf hash is ``leaf``, or None (the index is first
        brought up to the committed tree)."""
        self._require_indexes()
        with self._reading() as conn:
            behind = conn.execute("SELECT (SELECT value FROM meta WHERE key='size') != "
                                  "(SELECT value FROM meta WHERE key='leaves_size')").fetchone()
        if behind is None or behind[0] != 0:
            self.index_leaves()
        with self._reading() as conn:
            row = conn.execute("SELECT idx FROM leaves WHERE hash=?", (leaf,)).fetchone()
        return int(row[0]) if row else None

    def run_indexes(self, run: str, start_seq: int = 0, limit: int = -1) -> list[int]:
        """Log indexes of a run's statements from ``start_seq`` on, in seq order."""
        self._require_indexes()
        with self._reading() as conn:
            return [r[0] for r in conn.execute(
                "SELECT idx FROM run_entries WHERE run=? AND seq>=? ORDER BY seq LIMIT ?",
                (run, start_seq, limit))]

    def run_last(self, run: str) -> tuple[int, int] | None:
        """``(seq, index)`` of a run's latest statement, or None for an unknown run."""
        self._require_indexes()
        with self._reading() as conn:
            row = conn.execute("SELECT seq, idx FROM run_entries WHERE run=? ORDER BY seq "
                               "DESC LIMIT 1", (run,)).fetchone()
        return (int(row[0]), int(row[1])) if row else None

    def run_index(self, run: str, seq: int) -> int | None:
        """The log index of statement ``seq`` of ``run``, or None."""
        self._require_indexes()
        with self._reading() as conn:
            row = conn.execute("SELECT idx FROM run_entries WHERE run=? AND seq=?",
                               (run, seq)).fetchone()
        return int(row[0]) if row else None

    def allowed_signers(self, vkeys: Iterable[str] | None = None) -> set[str]:
        """The allow-listed signer keys (all, or those among ``vkeys``)."""
        self._require_indexes()
        with self._reading() as conn:
            if vkeys is None:
                return {r[0] for r in conn.execute("SELECT vkey FROM allowed_signers")}
            want = list(set(vkeys))
            got: set[str] = set()
            for k in range(0, len(want), 500):
                chunk = want[k:k + 500]
                got.update(r[0] for r in conn.execute(
                    "SELECT vkey FROM allowed_signers WHERE vkey IN ("
                    + ",".join("?" * len(chunk)) + ")", chunk))
            return got

    def set_signer_allowed(self, vkey: str, allowed: bool) -> bool:
        """Add ``vkey`` to (or remove it from) the allow-list; True if that changed it."""
        self._require_indexes()
        with self._lock:
            try:
                if allowed:
                    cur = self.conn.execute("INSERT OR IGNORE INTO allowed_signers (vkey, "
                                            "added_ms) VALUES (?, ?)",
                                            (vkey, int(time.time() * 1000)))
                else:
                    cur = self.conn.execute("DELETE FROM allowed_signers WHERE vkey=?", (vkey,))
            except sqlite3.Error as e:
                raise StorageError(f"cannot update the allow-list in {self.path}: {e}") from None
            return cur.rowcount == 1


def _leaves_size(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key='leaves_size'").fetchone()
    return int(row[0]) if row else 0


def _level0(conn: sqlite3.Connection, start: int, end: int, path: str) -> list[bytes]:
    """The stored leaf hashes ``start..end-1`` (level 0 of the stored hashes)."""
    first, last = start // BLOCK, (end - 1) // BLOCK
    data = b"".join(r[0] for r in conn.execute(
        "SELECT data FROM hashes WHERE level=0 AND block>=? AND block<=? ORDER BY block",
        (first, last)))
    lo, hi = (start - first * BLOCK) * HASH_SIZE, (end - first * BLOCK) * HASH_SIZE
    if len(data) < hi:
        raise StorageError(f"the stored leaf hashes of {path} end before {end}: the database "
                           "is damaged", hint="run `potd ledger fsck`")
    return [data[i:i + HASH_SIZE] for i in range(lo, hi, HASH_SIZE)]


def _index(conn: sqlite3.Connection, first: int, leaves: Sequence[bytes]) -> None:
    """Inside a write transaction: index the leaf hashes of entries ``first..``, sorted
    (neighbouring keys share B-tree pages), the first index of a repeated hash kept."""
    conn.executemany("INSERT OR IGNORE INTO leaves (hash, idx) VALUES (?, ?)",
                     sorted(zip(leaves, range(first, first + len(leaves)), strict=True)))
    conn.execute("UPDATE meta SET value=? WHERE key='leaves_size'",
                 (str(first + len(leaves)),))

