"""The SQLite backend: the embedded default, one file in WAL mode.

Layout: as every backend (:mod:`.base`): each entry stored once (in its full entry
bundle, or a row while its bundle is partial), stored hashes per level in blocks of 256,
every signed checkpoint by size. New files use 16 KiB pages (a hash block fits one page;
a commit writes a third fewer WAL frames than with 4 KiB).

Invariants: one append = one transaction (entries, bundles, hashes, checkpoint and size
advance together or not at all); only full blocks are cached in memory (they are immutable), so
memory stays flat as the log grows; a writer checks, inside its write transaction, that
the stored size is the one it expects, so two sequencers on one file cannot interleave.

Server indexes (created by :meth:`SQLiteStore.ensure_indexes`, which the log server
calls; :mod:`.sqlite_indexes`): run rows are written in the append's own transaction,
the leaf-hash index is brought up to date by lookups, off the commit path.

Concurrency: with ``read_connection=True`` reads from threads other than the one inside
``append`` use a second connection (WAL readers never wait for the writer), so a server
can answer proofs and tiles while a batch commits. Stored data only ever grows (a block
row is replaced by a longer one with the same prefix), so any snapshot a reader sees
holds at least the tree that was committed before the reader asked.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlite_utils

from ..errors import StorageError, UsageError
from ..merkle import HASH_SIZE, split_stored_hash_index
from .base import (
    BLOCK,
    BUNDLE,
    SCHEMA_VERSION,
    RunSpan,
    bundled_entries,
    check_schema,
    entry_spans,
    full_bundles,
    split_spans,
)
from .dbfile import lock_writer, rollback, storage_failure
from .sqlite_indexes import SQLiteIndexes

# Full entry bundles (tlog-tiles tile/entries/N), written once, in the same transaction
# as the entries that complete them: serving one is a single blob read.
_BUNDLES_TABLE = "CREATE TABLE bundles (n INTEGER PRIMARY KEY, data BLOB NOT NULL)"


# the rows of a run span (run, seq, idx, count): (run, seq + k, idx + k) for k < count
_SPAN_INSERT = ("WITH RECURSIVE k(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM k "
                "WHERE i + 1 < ?4) INSERT INTO run_entries (run, seq, idx) "
                "SELECT ?1, ?2 + i, ?3 + i FROM k")


def _tune_reads(conn: sqlite3.Connection) -> None:
    """A bounded page cache (16 MiB): proofs read a few 8 KiB hash blocks at random
    places in the file."""
    conn.execute("PRAGMA cache_size=-16384")


class SQLiteStore(SQLiteIndexes):
    """The embedded default backend: one SQLite file in WAL mode, via sqlite-utils."""

    def __init__(self, path: str | os.PathLike[str], *, create: tuple[str, str] | None = None,
                 cache_blocks: int = 4096, synchronous: str = "FULL",
                 read_connection: bool = False, writer_lock: bool = False) -> None:
        self.path = os.fspath(path)
        exists = os.path.exists(self.path) and os.path.getsize(self.path) > 0
        if create is None and not exists:
            raise StorageError(f"no log database at {self.path}",
                               hint="create one with `potd ledger init --db FILE --key KEYFILE`")
        if create is not None and exists:
            raise StorageError(f"{self.path} already exists; refusing to overwrite a log",
                               hint="choose a new file name, or open the existing log")
        self._lock_fd: int | None = None
        if writer_lock:
            self._lock_fd = lock_writer(self.path, create is not None)
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=30)
            if create is not None:
                conn.execute("PRAGMA page_size=16384")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={synchronous}")
            _tune_reads(conn)
            self.db = sqlite_utils.Database(conn)
            if create is not None:
                self._create(*create)
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as e:
            self._unlock()
            raise StorageError(f"cannot open log database {self.path}: {e}") from None
        try:
            check_schema(self.path, meta)
        except StorageError:
            self._unlock()
            raise
        self.conn = conn
        self._origin = str(meta["origin"])
        self._vkey = str(meta["vkey"])
        self._lock = threading.RLock()
        self._cache: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        # The last (partial) block of each level, as this process last wrote or read it.
        self._tail: dict[tuple[int, int], bytes] = {}
        self._cache_max = cache_blocks
        self._cache_lock = threading.Lock()
        self._writer: int | None = None  # thread id inside append()
        self._rconn: sqlite3.Connection | None = None
        self._rlock = threading.Lock()
        if read_connection:
            try:
                self._rconn = sqlite3.connect(self.path, isolation_level=None,
                                              check_same_thread=False, timeout=30)
                self._rconn.execute("PRAGMA query_only=1")
                _tune_reads(self._rconn)
            except sqlite3.DatabaseError as e:
                self._unlock()
                raise StorageError(f"cannot open a reader on {self.path}: {e}") from None
        self._indexing = self._has_table("leaves")
        self._preload()
        try:
            size = self.size()
            # entries of the current partial bundle: with them, appends write full bundles
            self._bundle_tail = self.read_entries(size - size % BUNDLE, size)
        except sqlite3.DatabaseError as e:
            raise StorageError(f"cannot read {self.path}: {e}") from None

    def _preload(self) -> None:
        """Warm the block cache with the full blocks above level 0, highest levels first
        (they are shared by most proofs), up to the cache bound."""
        try:
            rows = self.conn.execute(
                "SELECT level, block, data FROM hashes WHERE level > 0 AND length(data) = ? "
                "ORDER BY level DESC, block DESC LIMIT ?", (BLOCK * HASH_SIZE, self._cache_max))
            for level, block, data in rows:
                self._cache[(level, block)] = data
            for level, block, data in self.conn.execute(
                    "SELECT level, block, data FROM hashes WHERE length(data) < ?",
                    (BLOCK * HASH_SIZE,)):
                self._tail[(level, block)] = data
        except sqlite3.DatabaseError as e:
            raise StorageError(f"cannot read {self.path}: {e}") from None

    def _has_table(self, name: str) -> bool:
        return self.conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                                 (name,)).fetchone() is not None

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The connection (under its lock) that a read from this thread should use."""
        if self._rconn is None or self._writer == threading.get_ident():
            with self._lock:
                yield self.conn
        else:
            with self._rlock:
                yield self._rconn

    def _cache_put(self, key: tuple[int, int], data: bytes) -> None:
        """Cache a full (immutable) block. Level-0 blocks are not cached: a random proof
        touches one of them and it is a single B-tree read, while the blocks of the
        levels above are shared by many proofs (there are half as many of them in all)."""
        if key[0] == 0 and self._cache_max < 1 << 20:
            return
        with self._cache_lock:
            self._cache[key] = data
            if len(self._cache) > self._cache_max:
                self._cache.popitem(last=False)

    def _cache_get(self, key: tuple[int, int]) -> bytes | None:
        with self._cache_lock:
            data = self._cache.get(key)
            if data is not None:
                self._cache.move_to_end(key)
            return data

    def _create(self, origin: str, vkey: str) -> None:
        db = self.db
        with db.conn:
            db.table("meta").create({"key": str, "value": str}, pk="key")
            db.table("entries").create({"idx": int, "data": bytes}, pk="idx", not_null={"data"})
            db.execute("CREATE TABLE hashes (level INTEGER NOT NULL, block INTEGER NOT NULL, "
                       "data BLOB NOT NULL, PRIMARY KEY (level, block)) WITHOUT ROWID")
            db.execute(_BUNDLES_TABLE)
            db.table("checkpoints").create({"size": int, "note": str, "created_ms": int}, pk="size",
                                     not_null={"note", "created_ms"})
            db.table("meta").insert_all([{"key": "schema", "value": str(SCHEMA_VERSION)},
                                   {"key": "origin", "value": origin},
                                   {"key": "vkey", "value": vkey},
                                   {"key": "size", "value": "0"}])

    # -- reads ------------------------------------------------------------------

    def origin(self) -> str:
        return self._origin

    def vkey(self) -> str:
        """The log's verifier key string, recorded at creation."""
        return self._vkey

    def size(self) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key='size'").fetchone()
        return int(row[0])

    def _block(self, level: int, block: int, conn: sqlite3.Connection | None = None) -> bytes:
        key = (level, block)
        data = self._cache_get(key)
        if data is not None:
            return data
        data = self._tail.get(key)
        if data is not None:
            return data
        row = (conn or self.conn).execute("SELECT data FROM hashes WHERE level=? AND block=?",
                                          key).fetchone()
        data = row[0] if row else b""
        if len(data) == BLOCK * HASH_SIZE:
            self._cache_put(key, data)
        return data

    def forget_tail(self) -> None:
        """Drop the cached partial blocks: another process (the writer, when this store
        only reads) may have extended them. Full blocks stay cached (immutable)."""
        with self._cache_lock:
            self._tail.clear()

    def _note_written(self, writes: list[tuple[int, int, bytes]]) -> None:
        """After a commit: remember the new tail block of each written level, and cache
        the blocks above level 0 that just became full (immutable from now on)."""
        for level, block, data in writes:
            for k in [k for k in self._tail if k[0] == level and k[1] <= block]:
                del self._tail[k]
            if len(data) < BLOCK * HASH_SIZE:
                self._tail[(level, block)] = data
            else:
                self._cache_put((level, block), data)

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        return self.read_nodes([split_stored_hash_index(i) for i in indexes])

    def read_nodes(self, where: Sequence[tuple[int, int]]) -> list[bytes]:
        """Stored hashes by ``(level, n)``: node ``n`` of tree level ``level``."""
        blocks: dict[tuple[int, int], bytes] = {}
        missing = []
        with self._cache_lock:
            for level, n in where:
                key = (level, n // BLOCK)
                if key in blocks:
                    continue
                data = self._cache.get(key) or self._tail.get(key)
                if data is None:
                    missing.append(key)
                    blocks[key] = b""
                else:
                    blocks[key] = data
        if missing:
            with self._reading() as conn:
                blocks.update(self._fetch_blocks(missing, conn))
        out = []
        for level, n in where:
            data = blocks[(level, n // BLOCK)]
            off = (n % BLOCK) * HASH_SIZE
            if off + HASH_SIZE > len(data):
                raise UsageError(f"stored hash (level {level}, #{n}) is not in the log yet")
            out.append(data[off:off + HASH_SIZE])
        return out

    def _fetch_blocks(self, keys: list[tuple[int, int]], conn: sqlite3.Connection
                      ) -> dict[tuple[int, int], bytes]:
        """Read several blocks in one query; cache the full ones."""
        got: dict[tuple[int, int], bytes] = {}
        for k in range(0, len(keys), 100):
            chunk = keys[k:k + 100]
            # OR of primary-key equalities: SQLite's multi-index OR does one B-tree
            # search per term ((level, block) IN (VALUES ...) would scan the table)
            q = ("SELECT level, block, data FROM hashes WHERE "
                 + " OR ".join(["(level=? AND block=?)"] * len(chunk)))
            for level, block, data in conn.execute(q, [x for key in chunk for x in key]):
                got[(level, block)] = data
                if len(data) == BLOCK * HASH_SIZE:
                    self._cache_put((level, block), data)
        return got

    def level_hashes(self, level: int, start: int, end: int) -> bytes:
        """Concatenated level-``level`` hashes ``start..end-1`` (within one block)."""
        if not (0 <= start <= end and start // BLOCK == (end - 1) // BLOCK):
            raise UsageError("level_hashes reads within one block")
        with self._reading() as conn:
            data = self._block(level, start // BLOCK, conn)
        lo, hi = (start % BLOCK) * HASH_SIZE, ((end - 1) % BLOCK + 1) * HASH_SIZE
        if hi > len(data):
            raise UsageError(f"level {level} hashes up to {end} are not in the log yet")
        return data[lo:hi]

    def read_entries(self, start: int, end: int) -> list[bytes]:
        """Entries ``start..end-1``: from their full bundles, and the partial bundle's
        rows, in one query (one snapshot, whatever an append does meanwhile)."""
        if end <= start:
            return []
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT 0, n, data FROM bundles WHERE n >= ? AND n <= ? UNION ALL "
                "SELECT 1, idx, data FROM entries WHERE idx >= ? AND idx < ? ORDER BY 1, 2",
                (start // BUNDLE, (end - 1) // BUNDLE, start, end)).fetchall()
        return bundled_entries(start, end, rows)

    def read_entries_capped(self, start: int, end: int, max_bytes: int) -> list[bytes]:
        """Entries from ``start`` on, stopping before ``end`` or before their total size
        passes ``max_bytes`` (at least one entry): a page that is bounded in memory."""
        out: list[bytes] = []
        total = 0
        for lo, hi in entry_spans(start, end):
            for data in self.read_entries(lo, hi):
                if out and total + len(data) > max_bytes:
                    return out
                out.append(data)
                total += len(data)
        if len(out) < min(end - start, 1):
            raise UsageError(f"entries {start}..{end} are not all in the log")
        return out

    def latest_checkpoint(self) -> str | None:
        with self._reading() as conn:
            row = conn.execute("SELECT note FROM checkpoints ORDER BY size DESC LIMIT 1"
                               ).fetchone()
        return row[0] if row else None

    def checkpoint_at(self, size: int) -> str | None:
        with self._reading() as conn:
            row = conn.execute("SELECT note FROM checkpoints WHERE size=?", (size,)).fetchone()
        return row[0] if row else None

    def checkpoints(self, since: int = 0, limit: int = 1000) -> list[tuple[int, str, int]]:
        with self._reading() as conn:
            return [(r[0], r[1], r[2]) for r in conn.execute(
                "SELECT size, note, created_ms FROM checkpoints WHERE size >= ? ORDER BY size "
                "LIMIT ?", (since, limit)).fetchall()]

    # -- writes -----------------------------------------------------------------

    def append(self, old_size: int, entries: Sequence[bytes],
               level_hashes: Sequence[Sequence[bytes]], checkpoint: tuple[int, str, int],
               run_rows: Sequence[tuple[str, int, int]] = (),
               run_spans: Sequence[RunSpan] = ()) -> None:
        """As :meth:`Store.append`; ``run_rows`` (``(run, seq, index)``) and ``run_spans``
        are rows of the run index, written in the same transaction (needs
        :meth:`ensure_indexes`). A span of several rows is one statement that makes its
        rows inside SQLite (a recursive CTE), each row still checked against the
        primary key (run, seq)."""
        conn = self.conn
        with self._lock:
            self._writer = threading.get_ident()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    stored = int(conn.execute("SELECT value FROM meta WHERE key='size'"
                                              ).fetchone()[0])
                    if stored != old_size:
                        raise StorageError(
                            f"log size in {self.path} is {stored}, the sequencer expected "
                            f"{old_size}: another process is writing to this log",
                            hint="run exactly one sequencer (potd ledger serve/append) per file")
                    tail, bundles = self._bundles(old_size, entries)
                    keep = old_size + len(entries) - len(tail)  # the new partial bundle
                    if bundles:  # their entries now live in the bundles
                        conn.execute("DELETE FROM entries WHERE idx < ?", (keep,))
                        conn.executemany("INSERT INTO bundles (n, data) VALUES (?, ?)",
                                         bundles)
                    conn.executemany("INSERT INTO entries (idx, data) VALUES (?, ?)",
                                     zip(range(keep, keep + len(tail)), tail, strict=True)
                                     if keep >= old_size else
                                     zip(range(old_size, keep + len(tail)), entries,
                                         strict=True))
                    writes = []
                    for level, new in enumerate(level_hashes):
                        if new:
                            writes.extend(self._merge_level(level, old_size >> level, new))
                    conn.executemany("INSERT OR REPLACE INTO hashes (level, block, data) "
                                     "VALUES (?, ?, ?)", writes)
                    conn.execute("INSERT INTO checkpoints (size, note, created_ms) "
                                 "VALUES (?, ?, ?)", checkpoint)
                    conn.execute("UPDATE meta SET value=? WHERE key='size'",
                                 (str(old_size + len(entries)),))
                    single, spans = split_spans(run_rows, run_spans)
                    for span in spans:
                        conn.execute(_SPAN_INSERT, span)
                    if single:
                        conn.executemany("INSERT INTO run_entries (run, seq, idx) "
                                         "VALUES (?, ?, ?)", single)
                    conn.execute("COMMIT")
                    self._note_written(writes)
                    self._bundle_tail = tail
                except BaseException:
                    rollback(conn)  # SQLite may have rolled back already (disk full)
                    raise
            except sqlite3.Error as e:
                raise storage_failure(f"append to {self.path} failed and was rolled back", e
                                      ) from None
            finally:
                self._writer = None

    def probe_write(self, size: int = 256 << 10) -> None:
        """Commit (then delete) a ``size``-byte scratch row: raises StorageError with the
        cause while the database cannot take writes (disk full, read-only, I/O error)."""
        conn = self.conn
        with self._lock:
            try:
                for sql, args in (("INSERT OR REPLACE INTO meta (key, value) VALUES "
                                   "('probe', zeroblob(?))", (size,)),
                                  ("DELETE FROM meta WHERE key='probe'", ())):
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        conn.execute(sql, args)
                        conn.execute("COMMIT")
                    except BaseException:
                        rollback(conn)
                        raise
            except sqlite3.Error as e:
                raise storage_failure(f"{self.path} cannot take writes", e) from None

    def _bundles(self, old_size: int, entries: Sequence[bytes]
                 ) -> tuple[list[bytes], list[tuple[int, bytes]]]:
        """The entry bundles that ``entries`` complete, and the new partial tail."""
        return full_bundles(old_size, self._bundle_tail, entries)

    def read_bundle(self, n: int) -> bytes | None:
        """Full entry bundle ``n`` as stored, or None (not full yet)."""
        with self._reading() as conn:
            row = conn.execute("SELECT data FROM bundles WHERE n=?", (n,)).fetchone()
        return bytes(row[0]) if row else None

    def _merge_level(self, level: int, first: int, new: Sequence[bytes]
                     ) -> list[tuple[int, int, bytes]]:
        """Blocks to write so that level ``level`` gains ``new`` starting at hash ``first``."""
        out = []
        pos = 0
        n = first
        while pos < len(new):
            block, off = divmod(n, BLOCK)
            take = min(BLOCK - off, len(new) - pos)
            head = b""
            if off:
                head = self._block(level, block, self.conn)
                if len(head) != off * HASH_SIZE:
                    raise StorageError(f"hash block ({level}, {block}) has {len(head)} bytes, "
                                       f"expected {off * HASH_SIZE}: the database is damaged")
            data = head + b"".join(new[pos:pos + take])
            out.append((level, block, data))
            pos += take
            n += take
        return out

    def retired_vkeys(self) -> list[str]:
        """Verifier keys this log signed with before its key rotations, oldest first."""
        with self._lock:
            row = self.conn.execute("SELECT value FROM meta WHERE key='retired_vkeys'").fetchone()
        return str(row[0]).split("\n") if row else []

    def rotate_vkey(self, new_vkey: str, size: int, note: str) -> None:
        """Make ``new_vkey`` the log's key, the current one retired, and store ``note`` (the
        latest checkpoint, also signed by the new key) at ``size``, in one transaction."""
        retired = [*self.retired_vkeys(), self._vkey]
        conn = self.conn
        with self._lock:
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    stored = int(conn.execute("SELECT value FROM meta WHERE key='size'"
                                              ).fetchone()[0])
                    if stored != size:
                        raise UsageError(f"the log grew to {stored} during the rotation")
                    cur = conn.execute("UPDATE checkpoints SET note=? WHERE size=?", (note, size))
                    if cur.rowcount != 1:
                        raise UsageError(f"no checkpoint of size {size} to update")
                    conn.execute("UPDATE meta SET value=? WHERE key='vkey'", (new_vkey,))
                    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES "
                                 "('retired_vkeys', ?)", ("\n".join(retired),))
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as e:
                raise StorageError(f"cannot rotate the key of {self.path}: {e}") from None
        self._vkey = new_vkey

    def replace_checkpoint(self, size: int, note: str) -> None:
        """Replace the note of checkpoint ``size`` (same body, more cosignatures)."""
        with self._lock:
            try:
                cur = self.conn.execute("UPDATE checkpoints SET note=? WHERE size=?", (note, size))
            except sqlite3.Error as e:
                raise StorageError(f"cannot update checkpoint {size}: {e}") from None
            if cur.rowcount != 1:
                raise UsageError(f"no checkpoint of size {size} to update")

    def close(self) -> None:
        with self._lock:
            self.conn.close()
        if self._rconn is not None:
            with self._rlock:
                self._rconn.close()
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
