"""Upgrade a log database from schema version 1 to 2, in place, in one transaction.

Version 1 stored every entry twice (a row of ``entries`` and, once full, inside its entry
bundle) and indexed leaf hashes in every append. Version 2 (:mod:`.base`) keeps rows only
for the partial bundle and catches the leaf index up on lookups. The upgrade writes any
full bundle a version-1 file lacks (files older than stored bundles), deletes the rows of
full bundles, records how far the leaf index goes, and sets the version: one transaction,
so a failure leaves the version-1 database as it was. Run it with no log server on the
database (SQLite: the writer lock is taken; PostgreSQL: the coordination row).
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from ..errors import StorageError, UsageError
from ..tiles import encode_bundle
from .base import BUNDLE, SCHEMA_VERSION, is_postgres_url
from .dbfile import lock_writer, rollback


def migrate(db: str) -> dict[str, Any]:
    """Upgrade ``db`` (a SQLite file or ``postgresql://`` URL) to :data:`SCHEMA_VERSION`;
    return what was done (JSON-ready). A database already at it is left alone."""
    if is_postgres_url(db):
        return _migrate_postgres(db)
    return _migrate_sqlite(db)


def _plan(version: str | None, where: str) -> bool:
    """True if a migration is needed; refuses versions it cannot upgrade."""
    if version == str(SCHEMA_VERSION):
        return False
    if version != "1":
        raise UsageError(f"{where} has schema version {version}; `potd ledger migrate` "
                         f"upgrades version 1 to {SCHEMA_VERSION}",
                         hint="is this a potd log? open it with the potd release that wrote it")
    return True


def _migrate_sqlite(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        raise StorageError(f"no log database at {path}")
    fd = lock_writer(path, False)  # no sequencer may run meanwhile
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
                if not _plan(meta.get("schema"), path):
                    conn.execute("ROLLBACK")
                    return {"db": path, "schema": SCHEMA_VERSION, "migrated": False}
                conn.execute("CREATE TABLE IF NOT EXISTS bundles (n INTEGER PRIMARY KEY, "
                             "data BLOB NOT NULL)")
                size = int(meta["size"])
                written = _bundles(conn, size, "?")
                keep = size - size % BUNDLE
                moved = conn.execute("DELETE FROM entries WHERE idx < ?", (keep,)).rowcount
                if conn.execute("SELECT 1 FROM sqlite_master WHERE name='leaves'").fetchone():
                    # version 1 indexed leaves in appends (or at serve start): as far as
                    # its leaves_size says
                    conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES "
                                 "('leaves_size', '0')")
                conn.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION),))
                conn.execute("COMMIT")
            except BaseException:
                rollback(conn)
                raise
        except sqlite3.Error as e:
            raise StorageError(f"cannot migrate {path} (nothing was changed): {e}") from None
        finally:
            conn.close()
    finally:
        os.close(fd)
    return {"db": path, "schema": SCHEMA_VERSION, "migrated": True, "size": size,
            "bundles_written": written, "entry_rows_deleted": moved}


def _bundles(conn: Any, size: int, p: str) -> int:
    """Write every full bundle the database lacks, from the entry rows; return how many."""
    have = {int(r[0]) for r in conn.execute("SELECT n FROM bundles").fetchall()}
    written = 0
    for n in range(size // BUNDLE):
        if n in have:
            continue
        rows = conn.execute(f"SELECT idx, data FROM entries WHERE idx >= {p} AND idx < {p} "
                            "ORDER BY idx", (n * BUNDLE, (n + 1) * BUNDLE)).fetchall()
        if len(rows) != BUNDLE:
            raise StorageError(f"entries of bundle {n} are missing: the database is damaged",
                               hint="run `potd ledger fsck` with the potd release that wrote it")
        conn.execute(f"INSERT INTO bundles (n, data) VALUES ({p}, {p})",
                     (n, encode_bundle(bytes(r[1]) for r in rows)))
        written += 1
    return written


def _migrate_postgres(url: str) -> dict[str, Any]:
    import psycopg

    from .postgres import _redact
    where = _redact(url)
    try:
        with psycopg.connect(url) as conn, conn.transaction():
            size = int(conn.execute("SELECT value FROM meta WHERE key='size' FOR UPDATE"
                                    ).fetchone()[0])  # type: ignore[index]
            row = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if not _plan(str(row[0]) if row else None, where):
                return {"db": where, "schema": SCHEMA_VERSION, "migrated": False}
            written = _bundles(conn, size, "%s")
            keep = size - size % BUNDLE
            moved = conn.execute("DELETE FROM entries WHERE idx < %s", (keep,)).rowcount
            # version 1 indexed every append's leaves: the index is complete
            conn.execute("INSERT INTO meta (key, value) VALUES ('leaves_size', %s) "
                         "ON CONFLICT (key) DO NOTHING", (str(size),))
            conn.execute("UPDATE meta SET value=%s WHERE key='schema'", (str(SCHEMA_VERSION),))
    except psycopg.Error as e:
        raise StorageError(f"cannot migrate {where} (nothing was changed): {e}") from None
    return {"db": where, "schema": SCHEMA_VERSION, "migrated": True, "size": size,
            "bundles_written": written, "entry_rows_deleted": moved}
