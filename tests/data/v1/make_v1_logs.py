"""How the version-1 logs beside this file were made (tests/test_migrate_v1.py reads them).

They were written by potd as it was before schema 2 — commit fc28114 of this repository,
the last whose storage is version 1 — through its own ``potd ledger serve``, so the
migration is tested on what an old release really wrote, not on a simulation. To make
them again (a different log key and different statements each time)::

    git worktree add /tmp/potd-v1 fc28114
    PYTHONPATH=/tmp/potd-v1:/tmp/potd-v1/tests .venv/bin/python \\
        tests/data/v1/make_v1_logs.py tests/data/v1

Each log holds two runs: run A, a run.open and 270 steps in batches of 90 (one full
entry bundle and a partial one), and run B, a run.open and 12 steps sent one at a time;
one leaf-hash lookup was made. The JSON beside each log names its keys (test keys), its
last checkpoint and what the test needs to continue run B and to retry a statement of
run A. The SQLite log is the database file (xz); the PostgreSQL log a ``pg_dump`` (xz).
"""

import json
import lzma
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

from pgcluster import PgCluster, pg_bindir  # the old checkout's tests/
from server_helpers import LogServer, Trainer

from ledger.merkle import leaf_hash


def fill(server: LogServer) -> dict[str, object]:
    a, b = Trainer(), Trainer()
    with server.client() as c:
        c.post("/add", content=a.opened).raise_for_status()
        for _ in range(3):
            c.post("/add-batch", content=b"[" + b",".join(a.step() for _ in range(90)) + b"]"
                   ).raise_for_status()
        c.post("/add", content=b.opened).raise_for_status()
        for _ in range(12):
            c.post("/add", content=b.step()).raise_for_status()
        c.get("/proof/inclusion", params={"leaf_hash": leaf_hash(a.statements[5]).hex()}
              ).raise_for_status()
        cp = c.get("/checkpoint").text
    return {"log_key": server.signer.private_string(), "vkey": str(server.vkey),
            "checkpoint": cp, "size": 1 + 270 + 13,
            "run_a": {"run": a.run, "statement_5": a.statements[5].decode(), "index_5": 5},
            "run_b": {"run": b.run, "signer_key": b.signer.private_string(),
                      "last": b.statements[-1].decode(), "next_seq": len(b.statements)}}


def main(out: Path) -> None:
    out.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "sqlite"
        d.mkdir()
        with LogServer(d, "--open-registration", origin="potd.test/v1-sqlite") as s:
            meta = fill(s)
        conn = sqlite3.connect(d / "log.db")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0] == "1"
        conn.close()
        (out / "v1-sqlite.db.xz").write_bytes(lzma.compress((d / "log.db").read_bytes(),
                                                            preset=9))
        (out / "v1-sqlite.json").write_text(json.dumps(meta, indent=1))

        bindir = pg_bindir()
        assert bindir is not None, "PostgreSQL binaries not found"
        cl = PgCluster(bindir)
        try:
            url = cl.new_database()
            d = Path(tmp) / "pg"
            d.mkdir()
            with LogServer(d, "--open-registration", origin="potd.test/v1-postgres",
                           db=url) as s:
                meta = fill(s)
            real = os.path.dirname(os.path.realpath(os.path.join(bindir, "initdb")))
            dump = subprocess.run([os.path.join(real, "pg_dump"), "--no-owner",
                                   "--no-privileges", "--no-comments", url],
                                  check=True, capture_output=True).stdout
            (out / "v1-postgres.sql.xz").write_bytes(lzma.compress(dump, preset=9))
            (out / "v1-postgres.json").write_text(json.dumps(meta, indent=1))
        finally:
            cl.close()
    for f in sorted(out.iterdir()):
        print(f.name, f.stat().st_size)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
