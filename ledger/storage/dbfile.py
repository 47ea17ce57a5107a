"""The SQLite database file: its single-writer lock, and its failures told by cause.

One writer per log file: a sequencer keeps the tree's edge and the last partial blocks
in memory, so a second writing process would work from a stale tail (and be refused, or
worse). :func:`lock_writer` takes an exclusive ``flock`` on the file for the writer's
life; the kernel drops it when the process ends, even by SIGKILL.

A failed write must say why: :func:`storage_failure` turns SQLite's error into a
StorageError naming the cause (disk full, read-only, I/O error) with what to do, and
:func:`rollback` never lets a rollback after an automatic one (SQLite rolls back by
itself on SQLITE_FULL, for instance) replace that cause with "no transaction is active".
"""

from __future__ import annotations

import os
import sqlite3

from ..errors import StorageError

_CAUSES = {
    "SQLITE_FULL": "the disk (or the file system's quota) is full",
    "SQLITE_READONLY": "the database file or its directory is read-only",
    "SQLITE_IOERR": "an I/O error from the operating system",
    "SQLITE_CANTOPEN": "a journal file cannot be opened (permissions, missing directory)",
    "SQLITE_BUSY": "another connection holds the write lock",
    "SQLITE_CORRUPT": "the database file is damaged",
}


def storage_failure(what: str, e: sqlite3.Error) -> StorageError:
    """A StorageError that names the cause of a failed SQLite write and how to fix it."""
    name = getattr(e, "sqlite_errorname", "") or ""
    cause = next((c for k, c in _CAUSES.items() if name.startswith(k)), "")
    return StorageError(f"{what}: {e} ({name}{': ' + cause if cause else ''})" if name
                        else f"{what}: {e}",
                        hint="free disk space / fix permissions or the device; writes resume "
                             "by themselves once the database can take them, and nothing "
                             "acknowledged is lost")


def rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the original error is the one to report


def lock_writer(path: str, create: bool) -> int:
    """Take the writer's exclusive lock on the database file (``flock``, held until the
    store is closed or the process ends; SQLite's own locks are POSIX locks and do not
    interact with it). A second writer (a server or ``Log.open`` with a key) would keep a
    stale tree in memory and fail, or worse, on its first append; it is refused here."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT if create else os.O_RDONLY, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StorageError(f"{path} is already open for writing by another process (a running "
                           "`potd ledger serve`, or a program holding Log.open with the key)",
                           hint="run one writer per log: stop the other one, or submit through "
                                "its HTTP API; reads need no key and no lock") from None
    except OSError as e:
        os.close(fd)
        raise StorageError(f"cannot lock {path} for writing: {e}") from None
    return fd
