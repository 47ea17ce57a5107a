"""Storage backends of the log: the protocol (:mod:`.base`), the embedded SQLite file
(:mod:`.sqlite`, the default) and PostgreSQL (:mod:`.postgres`, for several frontends on
one log). :func:`open_store` picks the backend from the ``--db`` argument: a
``postgresql://`` URL or a file path."""

from __future__ import annotations

from typing import Any

from .base import BLOCK, BUNDLE, SCHEMA_VERSION, IndexedStore, Store, is_postgres_url
from .sqlite import SQLiteStore

__all__ = ["BLOCK", "BUNDLE", "SCHEMA_VERSION", "IndexedStore", "SQLiteStore", "Store",
           "is_postgres_url", "open_store"]


def open_store(db: str, *, create: tuple[str, str] | None = None, server: bool = False,
               writer: bool = False) -> Any:
    """Open (or with ``create=(origin, vkey)`` create) the log at ``db``.

    ``writer`` takes a SQLite file's single-writer lock (PostgreSQL coordinates writers
    in the database); ``server`` adds SQLite's second connection for concurrent reads."""
    if is_postgres_url(db):
        try:
            import psycopg  # noqa: F401
        except ImportError:
            from ..errors import UsageError
            raise UsageError("PostgreSQL support is not installed",
                             hint="pip install 'potd[pg]'") from None
        from .postgres import PostgresStore
        return PostgresStore(db, create=create, pool_size=16 if server else 4,
                             timeout=2.0 if server else 10.0)
    return SQLiteStore(db, create=create, read_connection=server, writer_lock=writer)
