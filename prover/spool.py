"""Durable local spool of signed statements, and the background submitter that drains it.

A statement is written to the spool (SQLite, WAL, synchronous=FULL) *before* training goes
on, so a log outage or a trainer crash loses nothing. The :class:`Submitter` thread sends
spooled statements in ``seq`` order, in batches, one batch in flight; on success it
records each verified receipt. If the log is down it keeps retrying with backoff while
training continues. If the log answers 409 for a batch (it already holds some of these
statements: the process died between the log's 200 and our record of it), it reconciles
against the log's run index by leaf hash, so every statement ends up logged exactly once.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ledger.client import LogClient, LogRejected, LogUnavailable, Receipt
from ledger.errors import PotdError, StorageError, VerificationError
from ledger.merkle import leaf_hash


class Spool:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        try:
            self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            self.conn.execute("CREATE TABLE IF NOT EXISTS statements (seq INTEGER PRIMARY KEY, "
                              "data BLOB NOT NULL, leaf_hash BLOB NOT NULL, log_index INTEGER, "
                              "receipt TEXT)")
        except sqlite3.Error as e:
            raise StorageError(f"cannot open spool {self.path}: {e}") from None

    def set_meta(self, **kv: str) -> None:
        with self._lock:
            self.conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", kv.items())

    def meta(self) -> dict[str, str]:
        with self._lock:
            return dict(self.conn.execute("SELECT key, value FROM meta").fetchall())

    def put(self, seq: int, data: bytes) -> None:
        """Durably spool statement ``seq`` (idempotent for identical bytes)."""
        with self._lock:
            row = self.conn.execute("SELECT data FROM statements WHERE seq=?", (seq,)).fetchone()
            if row is not None:
                if row[0] != data:
                    raise StorageError(f"spool already holds a different statement #{seq}")
                return
            self.conn.execute("INSERT INTO statements (seq, data, leaf_hash) VALUES (?, ?, ?)",
                              (seq, data, leaf_hash(data)))

    def put_many(self, rows: list[tuple[int, bytes]]) -> None:
        """Durably spool several statements in one transaction (one fsync)."""
        with self._lock:
            self.conn.execute("BEGIN")
            try:
                for seq, data in rows:
                    row = self.conn.execute("SELECT data FROM statements WHERE seq=?",
                                            (seq,)).fetchone()
                    if row is not None:
                        if row[0] != data:
                            raise StorageError(
                                f"spool already holds a different statement #{seq}",
                                hint="a resumed run re-derives the statements spooled after "
                                     "its checkpoint and must reproduce them exactly: same "
                                     "recipe code, data, torch and environment (threads) as "
                                     "the interrupted run")
                        continue
                    self.conn.execute("INSERT INTO statements (seq, data, leaf_hash) "
                                      "VALUES (?, ?, ?)", (seq, data, leaf_hash(data)))
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise

    def statements(self) -> list[tuple[int, bytes]]:
        """Every spooled statement, in ``seq`` order."""
        with self._lock:
            return [(r[0], r[1]) for r in self.conn.execute(
                "SELECT seq, data FROM statements ORDER BY seq")]

    def pending(self, limit: int = 1000) -> list[tuple[int, bytes]]:
        with self._lock:
            return [(r[0], r[1]) for r in self.conn.execute(
                "SELECT seq, data FROM statements WHERE log_index IS NULL ORDER BY seq LIMIT ?",
                (limit,))]

    def ack(self, acks: list[tuple[int, Receipt]]) -> None:
        with self._lock:
            self.conn.execute("BEGIN")
            self.conn.executemany("UPDATE statements SET log_index=?, receipt=? WHERE seq=?",
                                  [(r.index, json.dumps(r.to_json()), seq) for seq, r in acks])
            self.conn.execute("COMMIT")

    def receipts(self) -> list[tuple[int, int, dict[str, Any]]]:
        with self._lock:
            return [(r[0], r[1], json.loads(r[2])) for r in self.conn.execute(
                "SELECT seq, log_index, receipt FROM statements WHERE log_index IS NOT NULL "
                "ORDER BY seq")]

    def counts(self) -> tuple[int, int]:
        with self._lock:
            total, acked = self.conn.execute(
                "SELECT count(*), count(log_index) FROM statements").fetchone()
        return int(total), int(acked)

    def close(self) -> None:
        with self._lock:
            self.conn.close()


class Submitter(threading.Thread):
    """Background thread draining a spool into a log."""

    def __init__(self, spool: Spool, client: LogClient, run: str, *, batch: int = 256,
                 idle: float = 0.05, interval: float = 0.25,
                 on_error: Callable[[Exception], None] | None = None) -> None:
        super().__init__(name="potd-submitter", daemon=True)
        self.spool, self.client, self.run_id = spool, client, run
        self.batch, self.idle, self.interval = batch, idle, interval
        self.on_error = on_error
        self._wake = threading.Event()
        self._halt = threading.Event()
        self.fatal: Exception | None = None
        self.outages = 0

    def notify(self) -> None:
        """New statements were spooled (the submitter picks them up within ``interval``)."""

    def stop(self) -> None:
        self._halt.set()
        self._wake.set()

    def drain(self, timeout: float | None = None) -> None:
        """Block until every spooled statement is acknowledged (or raise the fatal error)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.fatal is not None:
                raise self.fatal
            total, acked = self.spool.counts()
            if acked == total:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise LogUnavailable(f"{total - acked} statements still unacknowledged after "
                                     f"{timeout}s", hint="they stay in the spool; run "
                                                         "`potd prover resume` later")
            self._wake.set()  # drain() wants them now
            time.sleep(0.02)

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                sent = self.submit_once()
                if sent < self.batch:
                    # let statements accumulate: one request (and one receipt check per
                    # checkpoint) for many steps keeps this thread off the trainer's GIL
                    self._wake.wait(self.interval if sent else self.idle)
                    self._wake.clear()
            except LogUnavailable as e:
                self.outages += 1
                if self.on_error:
                    self.on_error(e)
                self._halt.wait(0.5)
            except (PotdError, OSError) as e:
                self.fatal = e
                if self.on_error:
                    self.on_error(e)
                return

    def submit_once(self) -> int:
        """Send one batch; return how many statements it held (0: nothing to send)."""
        pending = self.spool.pending(self.batch)
        if not pending:
            return 0
        try:
            receipts = self.client.add_batch([d for _, d in pending])
        except LogRejected as e:
            if e.status != 409:
                raise
            self.reconcile()
            return len(pending)
        self.spool.ack([(seq, r) for (seq, _), r in zip(pending, receipts, strict=True)])
        return len(pending)

    def reconcile(self) -> None:
        """Mark statements the log already holds (matched by leaf hash) as acknowledged."""
        cp = self.client.checkpoint()
        indexes = self.client.run_indexes(self.run_id)
        pending = self.spool.pending(1 << 30)
        if not pending or not indexes:
            raise VerificationError("the log refused our statements with 409 but holds none of "
                                    "this run's statements", hint="another trainer may be "
                                    "writing this run; inspect the log")
        want = {leaf_hash(d): seq for seq, d in pending}
        acks = []
        for idx in indexes:
            e = self.client.entries(idx, idx + 1, cp)[0]
            lh = leaf_hash(e)
            if lh in want:
                proof = self.client.inclusion_proof(idx, lh, cp)
                acks.append((want[lh], Receipt(idx, lh, cp, tuple(proof))))
        if not acks:
            raise VerificationError("the log holds different statements at this run's places "
                                    "(409 without a match): the run has diverged",
                                    hint="inspect `GET /runs/<run>` against the spool")
        self.spool.ack(acks)
