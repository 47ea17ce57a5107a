"""``potd ledger backup``: a consistent copy of a SQLite log while it serves.

SQLite's online backup API copies the database page by page inside one read
transaction of the source; in WAL mode that transaction never blocks the writer, and the
copy is the database exactly as of one commit (never half an append). The copy is
written to a temporary file next to the target, fsynced and renamed into place, then
opened as a log: its latest checkpoint must match the tree it holds. PostgreSQL logs
are backed up with PostgreSQL's own tools (``pg_dump``, or base backups with WAL
archiving; see the README).
"""

from __future__ import annotations

import os
import sqlite3
import tempfile

from .errors import StorageError, UsageError
from .log import Log
from .storage import is_postgres_url


def backup_sqlite(db: str, out: str) -> int:
    """Copy the log at ``db`` to the new file ``out``; returns the copied tree size."""
    if is_postgres_url(db):
        raise UsageError("`potd ledger backup` copies SQLite logs",
                         hint="back up PostgreSQL with pg_dump or a base backup (README)")
    if os.path.exists(out):
        raise UsageError(f"{out} exists; refusing to overwrite it", hint="choose a new file")
    if not os.path.isfile(db):
        raise StorageError(f"no log database at {db}")
    parent = os.path.dirname(os.path.abspath(out))
    fd, tmp = tempfile.mkstemp(prefix=".backup-", suffix=".db", dir=parent)
    os.close(fd)
    try:
        src = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            dst = sqlite3.connect(tmp)
            try:
                src.backup(dst)  # one step: one read transaction, one consistent snapshot
                dst.execute("PRAGMA journal_mode=DELETE")
            finally:
                dst.close()
        finally:
            src.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        log = Log.open(tmp)  # verifies: the latest checkpoint matches the copied tree
        size = log.size
        log.store.close()
        os.replace(tmp, out)
    except sqlite3.Error as e:
        raise StorageError(f"backup of {db} failed: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return size
