"""The PostgreSQL backend: one database shared by any number of log frontends.

Same layout and invariants as every backend (:mod:`ledger.storage.base`); the server's
indexes (leaf hashes, run entries, allowed signers) always exist; the leaf-hash index is
kept off the commit path as in SQLite (:meth:`PostgresStore.index_leaves`). Connections come from
a pool (psycopg 3 + psycopg_pool); a connection lost mid-request raises StorageError
(the server answers 503 with ``Retry-After``) and the pool opens a fresh one for the
next request, so the frontend recovers without a restart.

Several writers. The ``meta`` row ``size`` is the coordination row: a writer takes it
``SELECT ... FOR UPDATE`` for the whole of an integration round (:meth:`writing`), so
rounds of different frontends are serialised by the database, and each round starts
from the tree the previous one committed. Only full hash blocks are cached (they are
immutable); partial blocks and the partial entry bundle are read inside the writer's
transaction, because another frontend may have extended them.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..errors import StorageError, UsageError
from ..merkle import HASH_SIZE, split_stored_hash_index
from . import sqlite_indexes
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

_SCHEMA = (
    "CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL)",
    "CREATE TABLE entries (idx bigint PRIMARY KEY, data bytea NOT NULL)",
    "CREATE TABLE hashes (level integer NOT NULL, block bigint NOT NULL, data bytea NOT NULL, "
    "PRIMARY KEY (level, block))",
    "CREATE TABLE bundles (n bigint PRIMARY KEY, data bytea NOT NULL)",
    "CREATE TABLE checkpoints (size bigint PRIMARY KEY, note text NOT NULL, "
    "created_ms bigint NOT NULL)",
    "CREATE TABLE leaves (hash bytea PRIMARY KEY, idx bigint NOT NULL)",
    "CREATE TABLE run_entries (run text NOT NULL, seq bigint NOT NULL, idx bigint NOT NULL, "
    "PRIMARY KEY (run, seq))",
    "CREATE TABLE allowed_signers (vkey text PRIMARY KEY, added_ms bigint NOT NULL)",
)


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    head, sep, tail = url.partition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, user = head.partition("//")
    return f"{scheme}//{user.split(':', 1)[0]}:***@{tail}"


class PostgresStore:
    """A log in a PostgreSQL database, shareable by several frontends."""

    shared = True  # other processes may write: the sequencer takes :meth:`writing`

    def __init__(self, url: str, *, create: tuple[str, str] | None = None,
                 cache_blocks: int = 4096, pool_size: int = 8, timeout: float = 10.0) -> None:
        import psycopg
        import psycopg_pool

        self._psycopg = psycopg
        self._local = threading.local()  # .conn: this thread's writing() connection
        self.path = _redact(url)
        kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": max(1, int(timeout))}
        try:  # one direct attempt first: a wrong URL fails now, not after the pool's retries
            psycopg.connect(url, **kwargs).close()
        except psycopg.Error as e:
            raise StorageError(f"cannot connect to {self.path}: {str(e).strip()}",
                               hint="check that PostgreSQL runs and the URL (host, port, "
                                    "user, database) is right") from None
        self._pool = psycopg_pool.ConnectionPool(
            url, min_size=1, max_size=max(2, pool_size), timeout=timeout, open=False,
            kwargs=kwargs, name="potd")
        try:
            self._pool.open(wait=True, timeout=timeout)
        except (psycopg_pool.PoolTimeout, psycopg.Error) as e:
            self._pool.close()
            raise StorageError(f"cannot connect to {self.path}: {e}") from None
        try:
            with self._conn("open") as conn:
                exists = conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()[0]
                if create is not None:
                    if exists:
                        raise StorageError(f"{self.path} already holds a log; refusing to "
                                           "overwrite it", hint="use a new, empty database")
                    with conn.transaction():
                        for sql in _SCHEMA:
                            conn.execute(sql)
                        conn.cursor().executemany(
                            "INSERT INTO meta (key, value) VALUES (%s, %s)",
                            [("schema", str(SCHEMA_VERSION)), ("origin", create[0]),
                             ("vkey", create[1]), ("size", "0"), ("leaves_size", "0")])
                elif not exists:
                    raise StorageError(f"no log in {self.path}",
                                       hint="create one with `potd ledger init --db URL "
                                            "--key KEYFILE`")
                meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            check_schema(self.path, meta)
        except BaseException:
            self._pool.close()
            raise
        self._origin = str(meta["origin"])
        self._vkey = str(meta["vkey"])
        self._cache: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._cache_max = cache_blocks
        self._cache_lock = threading.Lock()

    # -- connections ----------------------------------------------------------------

    @contextmanager
    def _conn(self, what: str) -> Iterator[Any]:
        """A connection: the current thread's write transaction if inside
        :meth:`writing`, else one from the pool. Database errors become StorageError."""
        held = getattr(self._local, "conn", None)
        try:
            if held is not None:
                yield held
            else:
                with self._pool.connection() as conn:
                    yield conn
        except self._psycopg.Error as e:
            raise self._failure(what, e) from None
        except TimeoutError as e:  # the pool had no connection in time
            raise self._failure(what, e) from None

    def _failure(self, what: str, e: BaseException) -> StorageError:
        return StorageError(f"{what} on {self.path} failed: {str(e).strip() or type(e).__name__}",
                            hint="the database is unreachable or refused the operation; "
                                 "retry shortly: the frontend reconnects by itself and "
                                 "nothing acknowledged is lost")

    @contextmanager
    def writing(self) -> Iterator[int]:
        """Hold the coordination row for one integration round; yields the stored size.

        Appends from this thread join the round's transaction, which commits when the
        block exits normally (rolls back on an exception)."""
        if getattr(self._local, "conn", None) is not None:
            raise UsageError("writing() does not nest")
        try:
            with self._pool.connection() as conn, conn.transaction():
                row: Any = conn.execute("SELECT value FROM meta WHERE key='size' FOR UPDATE"
                                        ).fetchone()
                vkey = conn.execute("SELECT value FROM meta WHERE key='vkey'").fetchone()
                if vkey is None or str(vkey[0]) != self._vkey:
                    raise UsageError("the log's key was rotated since this frontend started "
                                     "(potd ledger rotate-key): it must not sign",
                                     hint="restart it with the log's new key")
                self._local.conn = conn
                try:
                    yield int(row[0])
                finally:
                    self._local.conn = None
        except (self._psycopg.Error, TimeoutError) as e:
            raise self._failure("integration round", e) from None

    # -- reads -----------------------------------------------------------------------

    def origin(self) -> str:
        return self._origin

    def vkey(self) -> str:
        return self._vkey

    def size(self) -> int:
        with self._conn("reading the size") as conn:
            return int(conn.execute("SELECT value FROM meta WHERE key='size'").fetchone()[0])

    def _cache_get(self, key: tuple[int, int]) -> bytes | None:
        with self._cache_lock:
            data = self._cache.get(key)
            if data is not None:
                self._cache.move_to_end(key)
            return data

    def _cache_put(self, key: tuple[int, int], data: bytes) -> None:
        """Cache a full block read from committed data (never one read or written inside
        a write transaction: that may still roll back)."""
        if len(data) != BLOCK * HASH_SIZE or getattr(self._local, "conn", None) is not None:
            return
        with self._cache_lock:
            self._cache[key] = data
            if len(self._cache) > self._cache_max:
                self._cache.popitem(last=False)

    def _blocks(self, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        got: dict[tuple[int, int], bytes] = {}
        missing = []
        for key in dict.fromkeys(keys):
            data = self._cache_get(key)
            if data is None:
                missing.append(key)
            else:
                got[key] = data
        if missing:
            with self._conn("reading hashes") as conn:
                for level, block, data in conn.execute(
                        "SELECT h.level, h.block, h.data FROM hashes h JOIN unnest("
                        "%s::integer[], %s::bigint[]) AS k(level, block) "
                        "ON h.level = k.level AND h.block = k.block",
                        ([k[0] for k in missing], [k[1] for k in missing])):
                    data = bytes(data)
                    got[(level, block)] = data
                    self._cache_put((level, block), data)
        return got

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        return self.read_nodes([split_stored_hash_index(i) for i in indexes])

    def read_nodes(self, where: Sequence[tuple[int, int]]) -> list[bytes]:
        """Stored hashes by ``(level, n)``: node ``n`` of tree level ``level``."""
        blocks = self._blocks([(level, n // BLOCK) for level, n in where])
        out = []
        for level, n in where:
            data = blocks.get((level, n // BLOCK), b"")
            off = (n % BLOCK) * HASH_SIZE
            if off + HASH_SIZE > len(data):
                raise UsageError(f"stored hash (level {level}, #{n}) is not in the log yet")
            out.append(data[off:off + HASH_SIZE])
        return out

    def level_hashes(self, level: int, start: int, end: int) -> bytes:
        """Concatenated level-``level`` hashes ``start..end-1`` (within one block)."""
        if not (0 <= start <= end and start // BLOCK == (end - 1) // BLOCK):
            raise UsageError("level_hashes reads within one block")
        data = self._blocks([(level, start // BLOCK)]).get((level, start // BLOCK), b"")
        lo, hi = (start % BLOCK) * HASH_SIZE, ((end - 1) % BLOCK + 1) * HASH_SIZE
        if hi > len(data):
            raise UsageError(f"level {level} hashes up to {end} are not in the log yet")
        return data[lo:hi]

    def read_entries(self, start: int, end: int) -> list[bytes]:
        """Entries ``start..end-1``: from their full bundles, and the partial bundle's
        rows, in one query (one snapshot, whatever an append does meanwhile)."""
        if end <= start:
            return []
        with self._conn("reading entries") as conn:
            rows = conn.execute(
                "SELECT 0, n, data FROM bundles WHERE n >= %s AND n <= %s UNION ALL "
                "SELECT 1, idx, data FROM entries WHERE idx >= %s AND idx < %s ORDER BY 1, 2",
                (start // BUNDLE, (end - 1) // BUNDLE, start, end)).fetchall()
        return bundled_entries(start, end, rows)

    def read_entries_capped(self, start: int, end: int, max_bytes: int) -> list[bytes]:
        """Entries from ``start`` on, stopping before ``end`` or before their total size
        passes ``max_bytes`` (at least one entry)."""
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

    def read_bundle(self, n: int) -> bytes | None:
        with self._conn("reading a bundle") as conn:
            row = conn.execute("SELECT data FROM bundles WHERE n=%s", (n,)).fetchone()
        return bytes(row[0]) if row else None

    def latest_checkpoint(self) -> str | None:
        with self._conn("reading the checkpoint") as conn:
            row = conn.execute("SELECT note FROM checkpoints ORDER BY size DESC LIMIT 1"
                               ).fetchone()
        return str(row[0]) if row else None

    def checkpoint_at(self, size: int) -> str | None:
        with self._conn("reading a checkpoint") as conn:
            row = conn.execute("SELECT note FROM checkpoints WHERE size=%s", (size,)).fetchone()
        return str(row[0]) if row else None

    def checkpoints(self, since: int = 0, limit: int = 1000) -> list[tuple[int, str, int]]:
        with self._conn("reading checkpoints") as conn:
            return [(int(r[0]), str(r[1]), int(r[2])) for r in conn.execute(
                "SELECT size, note, created_ms FROM checkpoints WHERE size >= %s ORDER BY size "
                "LIMIT %s", (since, limit)).fetchall()]

    # -- writes ------------------------------------------------------------------------

    def append(self, old_size: int, entries: Sequence[bytes],
               level_hashes: Sequence[Sequence[bytes]], checkpoint: tuple[int, str, int],
               run_rows: Sequence[tuple[str, int, int]] = (),
               run_spans: Sequence[RunSpan] = ()) -> None:
        """As :meth:`~ledger.storage.base.Store.append`, in the current integration
        round's transaction if there is one (else in a round of its own). A run span
        of several rows is one INSERT that makes its rows in the database
        (generate_series), each still checked against the primary key (run, seq)."""
        if getattr(self._local, "conn", None) is None:
            with self.writing():
                self.append(old_size, entries, level_hashes, checkpoint, run_rows, run_spans)
            return
        with self._conn("append") as conn, conn.transaction():
            stored = int(conn.execute("SELECT value FROM meta WHERE key='size' FOR UPDATE"
                                      ).fetchone()[0])
            if stored != old_size:
                raise StorageError(f"log size in {self.path} is {stored}, the sequencer "
                                   f"expected {old_size}: another writer got there first",
                                   hint="writers take the coordination row with writing(); "
                                        "retry, the frontend reloads the tree")
            cur = conn.cursor()
            writes = []
            heads = self._blocks([(level, (old_size >> level) // BLOCK)  # one query
                                  for level, new in enumerate(level_hashes)
                                  if new and (old_size >> level) % BLOCK])
            for level, new in enumerate(level_hashes):
                if new:
                    writes.extend(self._merge_level(heads, level, old_size >> level, new))
            cur.executemany("INSERT INTO hashes (level, block, data) VALUES (%s, %s, %s) "
                            "ON CONFLICT (level, block) DO UPDATE SET data = EXCLUDED.data",
                            writes)
            start = old_size - old_size % BUNDLE
            old_tail = [bytes(r[0]) for r in conn.execute(
                "SELECT data FROM entries WHERE idx >= %s AND idx < %s ORDER BY idx",
                (start, old_size))]
            tail, bundles = full_bundles(old_size, old_tail, entries)
            keep = old_size + len(entries) - len(tail)  # the new partial bundle
            if bundles:  # their entries now live in the bundles
                cur.execute("DELETE FROM entries WHERE idx < %s", (keep,))
                cur.executemany("INSERT INTO bundles (n, data) VALUES (%s, %s)", bundles)
            rows = (zip(range(keep, keep + len(tail)), tail, strict=True) if keep >= old_size
                    else zip(range(old_size, keep + len(tail)), entries, strict=True))
            if entries:
                with cur.copy("COPY entries (idx, data) FROM STDIN") as cp:
                    for row in rows:
                        cp.write_row(row)
            cur.execute("INSERT INTO checkpoints (size, note, created_ms) VALUES (%s, %s, %s)",
                        checkpoint)
            cur.execute("UPDATE meta SET value=%s WHERE key='size'",
                        (str(old_size + len(entries)),))
            single, spans = split_spans(run_rows, run_spans)
            if spans:
                cur.executemany("INSERT INTO run_entries (run, seq, idx) SELECT %s, %s + k, "
                                "%s + k FROM generate_series(0, %s - 1) AS k", spans)
            if single:  # COPY: an executemany costs the frontend ~8 µs of CPU per row
                with cur.copy("COPY run_entries (run, seq, idx) FROM STDIN") as cp:
                    for run_row in single:
                        cp.write_row(run_row)

    def _merge_level(self, heads: dict[tuple[int, int], bytes], level: int, first: int,
                     new: Sequence[bytes]) -> list[tuple[int, int, bytes]]:
        """Blocks to write so that level ``level`` gains ``new`` from hash ``first`` on;
        ``heads`` holds the partial blocks it extends (read in the write transaction)."""
        out = []
        pos = 0
        n = first
        while pos < len(new):
            block, off = divmod(n, BLOCK)
            take = min(BLOCK - off, len(new) - pos)
            head = b""
            if off:
                head = heads.get((level, block), b"")
                if len(head) != off * HASH_SIZE:
                    raise StorageError(f"hash block ({level}, {block}) has {len(head)} bytes, "
                                       f"expected {off * HASH_SIZE}: the database is damaged")
            out.append((level, block, head + b"".join(new[pos:pos + take])))
            pos += take
            n += take
        return out

    def retired_vkeys(self) -> list[str]:
        """Verifier keys this log signed with before its key rotations, oldest first."""
        with self._conn("reading retired keys") as conn:
            row = conn.execute("SELECT value FROM meta WHERE key='retired_vkeys'").fetchone()
        return str(row[0]).split("\n") if row else []

    def rotate_vkey(self, new_vkey: str, size: int, note: str) -> None:
        """Make ``new_vkey`` the log's key, the current one retired, and store ``note`` (the
        latest checkpoint, also signed by the new key) at ``size``: one transaction, under
        the coordination row, so no frontend integrates meanwhile."""
        with self.writing() as stored:
            if stored != size:
                raise UsageError(f"the log grew to {stored} during the rotation (from {size})",
                                 hint="stop every frontend, then rotate")
            with self._conn("rotating the log key") as conn:
                retired = [*self.retired_vkeys(), self._vkey]
                cur = conn.execute("UPDATE checkpoints SET note=%s WHERE size=%s", (note, size))
                if cur.rowcount != 1:
                    raise UsageError(f"no checkpoint of size {size} to update")
                conn.execute("UPDATE meta SET value=%s WHERE key='vkey'", (new_vkey,))
                conn.execute("INSERT INTO meta (key, value) VALUES ('retired_vkeys', %s) ON "
                             "CONFLICT (key) DO UPDATE SET value=EXCLUDED.value",
                             ("\n".join(retired),))
        self._vkey = new_vkey

    def replace_checkpoint(self, size: int, note: str) -> None:
        with self._conn("updating a checkpoint") as conn:
            cur = conn.execute("UPDATE checkpoints SET note=%s WHERE size=%s", (note, size))
        if cur.rowcount != 1:
            raise UsageError(f"no checkpoint of size {size} to update")

    def probe_write(self) -> None:
        """Commit a no-op write: raises StorageError while the database cannot take one."""
        with self._conn("probe write") as conn:
            conn.execute("UPDATE meta SET value=value WHERE key='schema'")

    def close(self) -> None:
        self._pool.close()

    # -- server indexes ------------------------------------------------------------------

    def ensure_indexes(self) -> None:
        """The indexes exist from ``init`` on and every append maintains them."""

    def index_leaves(self) -> int:
        """Index the leaves appended since the leaf index was last brought up to date
        (see :mod:`.sqlite_indexes`: off the commit path, caught up by lookups); return
        how many. Catch-ups of several frontends are serialised by the ``leaves_size``
        row, so each starts where the previous one ended and keeps first indexes."""
        done = 0
        while True:
            with self._conn("updating the leaf index") as conn, conn.transaction():
                row = conn.execute("SELECT value FROM meta WHERE key='leaves_size' FOR UPDATE"
                                   ).fetchone()
                first = int(row[0])
                size = int(conn.execute("SELECT value FROM meta WHERE key='size'"
                                        ).fetchone()[0])
                end = min(size, first + sqlite_indexes.CATCH_UP)
                if first < end:
                    b0, b1 = first // BLOCK, (end - 1) // BLOCK
                    data = b"".join(bytes(r[0]) for r in conn.execute(
                        "SELECT data FROM hashes WHERE level=0 AND block>=%s AND block<=%s "
                        "ORDER BY block", (b0, b1)))
                    lo, hi = (first - b0 * BLOCK) * HASH_SIZE, (end - b0 * BLOCK) * HASH_SIZE
                    if len(data) < hi:
                        raise StorageError(f"the stored leaf hashes of {self.path} end before "
                                           f"{end}: the database is damaged",
                                           hint="run `potd ledger fsck`")
                    # first index per leaf hash: insert only the hashes not yet indexed
                    conn.execute("INSERT INTO leaves (hash, idx) SELECT DISTINCT ON (h) h, i "
                                 "FROM unnest(%s::bytea[], %s::bigint[]) AS u(h, i) "
                                 "ORDER BY h, i ON CONFLICT (hash) DO NOTHING",
                                 ([data[i:i + HASH_SIZE] for i in range(lo, hi, HASH_SIZE)],
                                  list(range(first, end))))
                    conn.execute("UPDATE meta SET value=%s WHERE key='leaves_size'", (str(end),))
            done += max(0, end - first)
            if end >= size:
                return done

    def leaf_index(self, leaf: bytes) -> int | None:
        """The first log index whose leaf hash is ``leaf``, or None (the index is first
        brought up to the committed tree)."""
        with self._conn("reading the leaf index") as conn:
            behind = conn.execute("SELECT (SELECT value FROM meta WHERE key='size') != "
                                  "(SELECT value FROM meta WHERE key='leaves_size')").fetchone()
        if behind is None or behind[0] is not False:
            self.index_leaves()
        with self._conn("reading the leaf index") as conn:
            row = conn.execute("SELECT idx FROM leaves WHERE hash=%s", (leaf,)).fetchone()
        return int(row[0]) if row else None

    def run_indexes(self, run: str, start_seq: int = 0, limit: int = -1) -> list[int]:
        with self._conn("reading the run index") as conn:
            return [int(r[0]) for r in conn.execute(
                "SELECT idx FROM run_entries WHERE run=%s AND seq>=%s ORDER BY seq LIMIT %s",
                (run, start_seq, None if limit < 0 else limit))]

    def run_last(self, run: str) -> tuple[int, int] | None:
        with self._conn("reading the run index") as conn:
            row = conn.execute("SELECT seq, idx FROM run_entries WHERE run=%s ORDER BY seq "
                               "DESC LIMIT 1", (run,)).fetchone()
        return (int(row[0]), int(row[1])) if row else None

    def run_index(self, run: str, seq: int) -> int | None:
        with self._conn("reading the run index") as conn:
            row = conn.execute("SELECT idx FROM run_entries WHERE run=%s AND seq=%s",
                               (run, seq)).fetchone()
        return int(row[0]) if row else None

    def allowed_signers(self, vkeys: Iterable[str] | None = None) -> set[str]:
        with self._conn("reading the allow-list") as conn:
            if vkeys is None:
                return {str(r[0]) for r in conn.execute("SELECT vkey FROM allowed_signers")}
            return {str(r[0]) for r in conn.execute(
                "SELECT vkey FROM allowed_signers WHERE vkey = ANY(%s)", (list(set(vkeys)),))}

    def set_signer_allowed(self, vkey: str, allowed: bool) -> bool:
        with self._conn("updating the allow-list") as conn:
            if allowed:
                cur = conn.execute("INSERT INTO allowed_signers (vkey, added_ms) VALUES (%s, %s) "
                                   "ON CONFLICT DO NOTHING", (vkey, int(time.time() * 1000)))
            else:
                cur = conn.execute("DELETE FROM allowed_signers WHERE vkey=%s", (vkey,))
        return bool(cur.rowcount == 1)
