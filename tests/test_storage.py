"""One contract for every storage backend: the same tests over a SQLite file and a real
PostgreSQL database (a throwaway cluster, see tests/pgcluster.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ledger.errors import StorageError, UsageError
from ledger.log import Log
from ledger.merkle import check_record, check_tree, leaf_hash, root_of, tree_hash
from ledger.note import Signer
from ledger.storage import open_store
from ledger.tiles import ENTRIES_LEVEL, Tile, TileHashReader, decode_bundle, tiles_for_size

ORIGIN = "potd.example/storage"


@pytest.fixture
def signer() -> Signer:
    return Signer.generate(ORIGIN)


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new (not yet created) log location of each backend."""
    if request.param == "sqlite":
        return str(tmp_path / "log.db")
    return str(request.getfixturevalue("pg_url"))


def sql(db: str) -> Callable[[str], None]:
    """Run one raw SQL statement against the backend, as an attacker with DB access."""
    def run(q: str) -> None:
        if db.startswith("postgresql://"):
            import psycopg
            with psycopg.connect(db, autocommit=True) as conn:
                conn.execute(q)
        else:
            conn = sqlite3.connect(db)
            conn.execute(q)
            conn.commit()
            conn.close()
    return run


def query(db: str, q: str) -> list[tuple[Any, ...]]:
    """The rows of one raw SQL query against the backend."""
    if db.startswith("postgresql://"):
        import psycopg
        with psycopg.connect(db, autocommit=True) as conn:
            return [tuple(r) for r in conn.execute(q).fetchall()]
    conn = sqlite3.connect(db)
    try:
        return conn.execute(q).fetchall()
    finally:
        conn.close()


def entries(a: int, b: int) -> list[bytes]:
    return [f"entry {i}".encode() for i in range(a, b)]


def test_append_proves_every_past_size(db: str, signer: Signer) -> None:
    log = Log.create(db, signer)
    handed = []
    for a, b in [(0, 1), (1, 3), (3, 10), (10, 40), (40, 41), (41, 300)]:
        r = log.append(entries(a, b))
        assert r.first_index == a and r.checkpoint.size == b
        handed.append(r.checkpoint)
    leaves = [leaf_hash(e) for e in entries(0, 300)]
    cp = log.checkpoint()
    assert cp.root == root_of(leaves)
    for n in [1, 2, 3, 7, 40, 41, 255, 256, 257, 299]:
        root = root_of(leaves[:n])
        assert log.root_at(n) == root
        for i in {0, n // 2, n - 1}:
            check_record(log.inclusion_proof(i, n), n, root, i, leaves[i])
        check_tree(log.consistency_proof(n), cp.size, cp.root, n, root)
    for old in handed:
        assert log.store.checkpoint_at(old.size) == str(old)
    log.store.close()


def test_reopen_continues_and_read_only(db: str, signer: Signer) -> None:
    log = Log.create(db, signer)
    log.append(entries(0, 300))
    cp1 = log.checkpoint()
    log.store.close()
    log2 = Log.open(db, signer)
    assert str(log2.checkpoint()) == str(cp1)
    log2.append(entries(300, 600))
    assert log2.checkpoint().root == root_of([leaf_hash(e) for e in entries(0, 600)])
    log2.store.close()
    ro = Log.open(db)
    assert ro.size == 600
    with pytest.raises(UsageError, match="read-only"):
        ro.append([b"x"])
    ro.store.close()


def test_wrong_key_refused(db: str, signer: Signer) -> None:
    Log.create(db, signer).store.close()
    with pytest.raises(UsageError):
        Log.open(db, Signer.generate("other.example/log"))
    with pytest.raises(UsageError, match="not the key"):
        Log.open(db, Signer.generate(ORIGIN))


def test_create_refuses_existing_and_open_refuses_missing(db: str, signer: Signer) -> None:
    with pytest.raises(StorageError, match="potd ledger init"):
        Log.open(db, signer)
    Log.create(db, signer).store.close()
    with pytest.raises(StorageError, match="already"):
        Log.create(db, signer)


def test_other_schema_version_refused(db: str, signer: Signer) -> None:
    Log.create(db, signer).store.close()
    sql(db)("UPDATE meta SET value='99' WHERE key='schema'")
    with pytest.raises(StorageError, match="schema version 99") as e:
        Log.open(db)
    assert "release that wrote it" in (e.value.hint or "")


def test_tiles_and_bundles_stored_once_across_reopens(db: str, signer: Signer) -> None:
    log = Log.create(db, signer)
    es = entries(0, 1000)
    for k in range(0, 600, 97):
        log.append(es[k:min(k + 97, 600)])
    log.store.close()
    log = Log.open(db, signer)
    log.append(es[600:1000])
    cp = log.checkpoint()
    assert tree_hash(cp.size, TileHashReader(log.tile)) == cp.root
    for t in tiles_for_size(cp.size):
        assert len(log.tile(t)) == 32 * t.width
    with pytest.raises(UsageError):
        log.tile(Tile(0, 3, 256))  # level-0 tile 3 is only partial at size 1000
    store = log.store
    for n in range(3):
        stored = store.read_bundle(n)  # type: ignore[attr-defined]
        assert stored is not None and decode_bundle(stored, expect=256) == es[n * 256:][:256]
        assert log.tile(Tile(ENTRIES_LEVEL, n)) == stored
    assert store.read_bundle(3) is None  # type: ignore[attr-defined]
    assert decode_bundle(log.tile(Tile(ENTRIES_LEVEL, 3, 232))) == es[768:1000]
    store.close()


def test_oversized_entry_rejected_nothing_stored(db: str, signer: Signer) -> None:
    log = Log.create(db, signer)
    log.append([b"a"])
    with pytest.raises(UsageError, match="65535"):
        log.append([b"ok", b"x" * 65536])
    assert log.size == 1 and log.store.size() == 1
    log.store.close()


def test_stale_writer_cannot_interleave(db: str, signer: Signer) -> None:
    a = Log.create(db, signer)
    b = Log(open_store(db), signer)  # bypasses SQLite's writer lock on purpose
    a.append([b"from a"])
    with pytest.raises(StorageError, match="another"):
        b.append([b"from b"])
    a.store.close()
    b.store.close()
    ro = Log.open(db)
    assert ro.size == 1 and ro.entries(0, 1) == [b"from a"]
    ro.store.close()


def test_tampered_hashes_refused_at_open(db: str, signer: Signer) -> None:
    log = Log.create(db, signer)
    log.append(entries(0, 20))
    log.store.close()
    zero = ("decode(repeat('00', length(data)), 'hex')" if db.startswith("postgresql")
            else "zeroblob(length(data))")
    sql(db)(f"UPDATE hashes SET data = {zero} WHERE level = 2")
    with pytest.raises(StorageError, match="altered"):
        Log.open(db, signer)


def test_server_indexes(db: str, signer: Signer) -> None:
    log = Log.create(db, signer)
    store = log.store
    store.ensure_indexes()  # type: ignore[attr-defined]
    log.append([b"a", b"b", b"a"], run_rows=[("r1", 0, 0), ("r1", 1, 1), ("r2", 0, 2)])
    assert store.leaf_index(leaf_hash(b"a")) == 0  # type: ignore[attr-defined]
    assert store.leaf_index(leaf_hash(b"zz")) is None  # type: ignore[attr-defined]
    assert store.run_indexes("r1") == [0, 1]  # type: ignore[attr-defined]
    assert store.run_last("r1") == (1, 1)  # type: ignore[attr-defined]
    assert store.run_index("r2", 0) == 2  # type: ignore[attr-defined]
    assert store.run_last("nope") is None  # type: ignore[attr-defined]
    assert store.set_signer_allowed("k1", True)  # type: ignore[attr-defined]
    assert not store.set_signer_allowed("k1", True)  # type: ignore[attr-defined]
    assert store.allowed_signers(["k1", "k2"]) == {"k1"}  # type: ignore[attr-defined]
    assert store.set_signer_allowed("k1", False)  # type: ignore[attr-defined]
    assert store.allowed_signers() == set()  # type: ignore[attr-defined]
    store.close()


def test_run_spans_store_one_row_each_and_keep_the_unique_check(db: str,
                                                                 signer: Signer) -> None:
    """A run span (run, first seq, first index, count) is written as that many rows,
    made inside the database; a span that repeats a stored (run, seq) fails the whole
    append (the primary key still refuses it), and nothing of that append is stored."""
    log = Log.create(db, signer)
    store: Any = log.store
    store.ensure_indexes()
    log.append([b"e%d" % i for i in range(7)], run_rows=[("r2", 0, 5)],
               run_spans=[("r1", 0, 0, 4), ("r3", 3, 4, 1), ("r2", 1, 6, 1)])
    assert store.run_indexes("r1") == [0, 1, 2, 3]
    assert store.run_last("r1") == (3, 3) and store.run_index("r3", 3) == 4
    assert store.run_indexes("r2") == [5, 6]
    assert query(db, "SELECT count(*) FROM run_entries") == [(7,)]
    log.append([b"f%d" % i for i in range(3)], run_spans=[("r1", 4, 7, 3)])
    assert store.run_indexes("r1", 3) == [3, 7, 8, 9]
    for spans in ([("r1", 6, 10, 3)], [("r9", 0, 10, 1), ("r2", 1, 11, 2)]):
        with pytest.raises(StorageError):  # (r1, 6) and (r2, 1) are taken
            log.append([b"g%d" % i for i in range(3)], run_spans=spans)
        log = Log(store, signer)  # as the sequencer does after a failed commit
        assert log.size == 10
        assert query(db, "SELECT count(*) FROM run_entries") == [(10,)]
    with pytest.raises(UsageError, match="outside the batch"):
        log.append([b"h"], run_spans=[("r5", 0, 10, 2)])
    with pytest.raises(UsageError, match="outside the batch"):
        log.append([b"h"], run_spans=[("r5", 0, 10, 0)])
    assert log.size == 10
    store.close()


def test_leaf_index_is_kept_off_the_commit_path_and_caught_up_by_lookups(
        db: str, signer: Signer, monkeypatch: pytest.MonkeyPatch) -> None:
    import ledger.storage.sqlite_indexes as idx
    monkeypatch.setattr(idx, "CATCH_UP", 7)  # several catch-up transactions per lookup
    log = Log.create(db, signer)
    store: Any = log.store
    store.ensure_indexes()
    log.append([b"x%d" % (i % 20) for i in range(30)])  # 10..29 repeat 0..9
    assert query(db, "SELECT count(*) FROM leaves") == [(0,)]  # the append did not index
    assert store.leaf_index(leaf_hash(b"x3")) == 3  # the first index of a repeated leaf
    assert store.leaf_index(leaf_hash(b"x19")) == 19
    assert query(db, "SELECT count(*) FROM leaves") == [(20,)]
    log.append([b"later", b"x5"])
    assert store.leaf_index(leaf_hash(b"later")) == 30  # appended after a lookup
    assert store.leaf_index(leaf_hash(b"x5")) == 5
    assert store.leaf_index(leaf_hash(b"never")) is None
    assert store.index_leaves() == 0  # up to date
    store.close()


# -- PostgreSQL only: several writers, lost connections -----------------------------


def test_postgres_writers_take_turns_through_the_coordination_row(
        pg_url: str, signer: Signer) -> None:
    a = Log.create(pg_url, signer)
    b = Log.open(pg_url, signer)  # no file lock: the database serialises writers
    a.append(entries(0, 10))
    with b.store.writing() as stored:  # type: ignore[attr-defined]
        assert stored == 10 and b.size == 0
        assert b.refresh() and b.size == 10
        b.append(entries(10, 25))
    assert not b.refresh()
    assert a.refresh() and a.checkpoint().root == b.checkpoint().root
    assert a.checkpoint().root == root_of([leaf_hash(e) for e in entries(0, 25)])
    a.store.close()
    b.store.close()


def test_postgres_lost_connection_is_a_storage_error_then_recovers(
        pg_url: str, signer: Signer) -> None:
    import psycopg

    log = Log.create(pg_url, signer)
    log.append(entries(0, 5))
    with psycopg.connect(pg_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = %s AND pid <> pg_backend_pid()",
                      (pg_url.rsplit("/", 1)[1],))
    with pytest.raises(StorageError, match="failed") as e:
        log.entries(0, 5)
    assert "reconnects by itself" in (e.value.hint or "")
    for _ in range(20):  # the pool discards dead connections and opens new ones
        try:
            log.append(entries(5, 6))
            break
        except StorageError:
            continue
    assert log.entries(0, 6) == entries(0, 6)
    log.store.close()


def test_postgres_unreachable_is_refused_with_a_hint(signer: Signer) -> None:
    import socket
    pytest.importorskip("psycopg")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StorageError, match="cannot connect") as e:
        open_store(f"postgresql://u:secret@127.0.0.1:{port}/x")
    assert "secret" not in e.value.message
