"""``potd ledger fsck`` catches a flipped byte in an entry, a stored hash, a bundle and a
checkpoint, naming the first bad index; ``potd ledger backup`` copies a SQLite log
consistently during a write storm."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from server_helpers import LogServer, Trainer, potd

from ledger.cli import main
from ledger.errors import StorageError
from ledger.log import Log
from ledger.note import Signer
from ledger.tiles import ENTRIES_LEVEL, Tile, decode_bundle


def flip(db: str, table: str, where: str, offset: int) -> None:
    """XOR one byte of ``data`` in the row of ``table`` matching ``where``."""
    q = f"SELECT data FROM {table} WHERE {where}"
    u = f"UPDATE {table} SET data = {{p}} WHERE {where}"
    if db.startswith("postgresql://"):
        import psycopg
        with psycopg.connect(db, autocommit=True) as conn:
            data = bytearray(conn.execute(q).fetchone()[0])  # type: ignore[index]
            data[offset] ^= 1
            conn.execute(u.format(p="%s"), (bytes(data),))  # type: ignore[arg-type]
    else:
        conn = sqlite3.connect(db)
        data = bytearray(conn.execute(q).fetchone()[0])
        data[offset] ^= 1
        conn.execute(u.format(p="?"), (bytes(data),))
        conn.commit()
        conn.close()


def fsck(db: str) -> tuple[int, dict[str, object]]:
    r = CliRunner().invoke(main, ["ledger", "fsck", "--db", db])
    return r.exit_code, json.loads(r.output)


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    path = (str(tmp_path / "log.db") if request.param == "sqlite"
            else str(request.getfixturevalue("pg_url")))
    log = Log.create(path, Signer.generate("potd.example/fsck"))
    for a, b in [(0, 100), (100, 300), (300, 301), (301, 700)]:
        log.append([b"entry %d" % i for i in range(a, b)])
    log.store.close()
    return path


def test_fsck_passes_a_sound_log_and_names_the_first_bad_index(db: str) -> None:
    code, out = fsck(db)
    assert code == 0 and out["ok"] and out["size"] == 700
    assert out["entries"] == 700 and out["bundles"] == 2 and out["checkpoints"] == 5
    # a flipped byte in an entry (of the partial bundle: entries 512..699 are rows)
    flip(db, "entries", "idx = 600", 2)
    code, out = fsck(db)
    assert code == 1 and out["first_bad_index"] == 600 and "entry" in str(out["problem"])
    flip(db, "entries", "idx = 600", 2)
    assert fsck(db)[0] == 0
    # ... in a stored hash (level 0, leaf 10), and one of level 3 (entries 16..23)
    flip(db, "hashes", "level = 0 AND block = 0", 10 * 32 + 5)
    code, out = fsck(db)
    assert code == 1 and out["first_bad_index"] == 10 and "level 0" in str(out["problem"])
    flip(db, "hashes", "level = 0 AND block = 0", 10 * 32 + 5)
    flip(db, "hashes", "level = 3 AND block = 0", 2 * 32)
    code, out = fsck(db)
    assert code == 1 and out["first_bad_index"] == 16
    flip(db, "hashes", "level = 3 AND block = 0", 2 * 32)
    # ... in a bundle (bundle 1, inside entry 256's bytes: 2-byte length prefix first)
    flip(db, "bundles", "n = 1", 3)
    code, out = fsck(db)
    assert code == 1 and out["first_bad_index"] == 256 and "bundle 1" in str(out["problem"])
    flip(db, "bundles", "n = 1", 3)
    flip(db, "bundles", "n = 0", 0)  # ... in a bundle's length prefix: it does not parse
    code, out = fsck(db)
    assert code == 1 and out["first_bad_index"] == 0 and "bundle 0" in str(out["problem"])
    flip(db, "bundles", "n = 0", 0)
    # ... in a checkpoint's signature
    flip_note = ("UPDATE checkpoints SET note = replace(note, '\u2014 ', '\u2014  ') "
                 "WHERE size = 300")
    if db.startswith("postgresql://"):
        import psycopg
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(flip_note)  # type: ignore[arg-type]
    else:
        conn = sqlite3.connect(db)
        conn.execute(flip_note)
        conn.commit()
        conn.close()
    code, out = fsck(db)
    assert code == 1 and out["first_bad_index"] == 299 and "size 300" in str(out["problem"])


@pytest.mark.slow
def test_backup_during_a_write_storm_opens_and_verifies(tmp_path: Path) -> None:
    with LogServer(tmp_path, "--open-registration") as server:
        stop = threading.Event()

        def write() -> None:
            t = Trainer()
            with server.client() as c:
                c.post("/add", content=t.opened).raise_for_status()
                while not stop.is_set():
                    c.post("/add-batch", content=b"[" + b",".join(t.steps(50)) + b"]"
                           ).raise_for_status()

        w = threading.Thread(target=write)
        w.start()
        try:
            sizes = []
            for k in range(3):
                out = tmp_path / f"copy{k}.db"
                r = potd("ledger", "backup", "--db", str(server.db), "--out", str(out))
                assert r.returncode == 0, r.stderr
                sizes.append(json.loads(r.stdout)["size"])
                code, res = fsck(str(out))
                assert code == 0 and res["size"] == sizes[-1], res
        finally:
            stop.set()
            w.join()
        assert sizes == sorted(sizes) and sizes[-1] > 1
        r = potd("ledger", "backup", "--db", str(server.db), "--out", str(out))
        assert r.returncode == 2 and "refusing to overwrite" in r.stderr + r.stdout


def run_sql(db: str, *queries: str) -> None:
    if db.startswith("postgresql://"):
        import psycopg
        with psycopg.connect(db, autocommit=True) as conn:
            for q in queries:
                conn.execute(q)  # type: ignore[arg-type]
    else:
        conn = sqlite3.connect(db)
        for q in queries:
            conn.execute(q)
        conn.commit()
        conn.close()


def test_a_version_1_log_is_refused_with_a_hint_then_migrated(db: str) -> None:

    # make the version-1 layout: every entry also a row; bundle 0 never stored (an older
    # file); PostgreSQL's leaf index written by appends (no leaves_size row)
    log = Log.open(db)
    rows = list(enumerate(log.entries(0, 512)))
    log.store.close()
    if db.startswith("postgresql://"):
        import psycopg
        with psycopg.connect(db, autocommit=True) as conn:
            conn.cursor().executemany("INSERT INTO entries (idx, data) VALUES (%s, %s)", rows)
    else:
        conn = sqlite3.connect(db)
        conn.executemany("INSERT INTO entries (idx, data) VALUES (?, ?)", rows)
        conn.commit()
        conn.close()
    pg = db.startswith("postgresql://")
    run_sql(db, "DELETE FROM bundles WHERE n = 0",
            "UPDATE meta SET value = '1' WHERE key = 'schema'",
            *(["DELETE FROM meta WHERE key = 'leaves_size'"] if pg else []))
    with pytest.raises(StorageError) as e:
        Log.open(db)
    assert "schema version 1" in e.value.message and "potd ledger migrate --db" in str(e.value.hint)
    r = CliRunner().invoke(main, ["ledger", "migrate", "--db", db])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["migrated"] and out["bundles_written"] == 1 and out["entry_rows_deleted"] == 512
    code, res = fsck(db)
    assert code == 0 and res["bundles"] == 2, res
    log = Log.open(db)
    assert log.entries(0, 700) == [b"entry %d" % i for i in range(700)]
    assert decode_bundle(log.tile(Tile(ENTRIES_LEVEL, 0))) == [b"entry %d" % i for i in range(256)]
    log.store.close()
    r = CliRunner().invoke(main, ["ledger", "migrate", "--db", db])
    assert r.exit_code == 0 and not json.loads(r.output)["migrated"]
    run_sql(db, "UPDATE meta SET value = '7' WHERE key = 'schema'")
    r = CliRunner().invoke(main, ["ledger", "migrate", "--db", db])
    assert r.exit_code == 2 and "schema version 7" in r.output
