"""The sequencer over a real SQLite file: appends, proofs at every past size, restarts,
tampering, failure injection."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ledger.errors import StorageError, UsageError
from ledger.log import Log
from ledger.merkle import check_record, check_tree, leaf_hash, root_of, tree_hash
from ledger.note import Signer, open_checkpoint
from ledger.storage import SQLiteStore
from ledger.tiles import ENTRIES_LEVEL, Tile, TileHashReader, decode_bundle, tiles_for_size

ORIGIN = "potd.example/test"


@pytest.fixture
def signer() -> Signer:
    return Signer.generate(ORIGIN)


def entries(a: int, b: int) -> list[bytes]:
    return [f"entry {i}".encode() for i in range(a, b)]


def test_append_proves_every_past_size(tmp_path: Path, signer: Signer) -> None:
    log = Log.create(str(tmp_path / "log.db"), signer)
    sizes = []
    for a, b in [(0, 1), (1, 3), (3, 10), (10, 40), (40, 41), (41, 70)]:
        r = log.append(entries(a, b))
        assert r.first_index == a and r.checkpoint.size == b
        assert list(r.leaf_hashes) == [leaf_hash(e) for e in entries(a, b)]
        sizes.append(r.checkpoint)
    es = entries(0, 70)
    leaves = [leaf_hash(e) for e in es]
    cp = log.checkpoint()
    assert cp.root == root_of(leaves)
    for n in range(1, 71):
        root = root_of(leaves[:n])
        assert log.root_at(n) == root
        for i in range(n):
            check_record(log.inclusion_proof(i, n), n, root, i, leaves[i])
        check_tree(log.consistency_proof(n), cp.size, cp.root, n, root)
    # every checkpoint the log handed out is stored and consistent with the latest
    for old in sizes:
        assert log.store.checkpoint_at(old.size) == str(old)
        check_tree(log.consistency_proof(old.size), cp.size, cp.root, old.size, old.root)


def test_reopen_continues_same_tree(tmp_path: Path, signer: Signer) -> None:
    path = str(tmp_path / "log.db")
    log = Log.create(path, signer)
    log.append(entries(0, 300))
    cp1 = log.checkpoint()
    log.store.close()
    log2 = Log.open(path, signer)
    assert str(log2.checkpoint()) == str(cp1)
    log2.append(entries(300, 600))
    assert log2.checkpoint().root == root_of([leaf_hash(e) for e in entries(0, 600)])
    # read-only open verifies with the recorded verifier key and cannot append
    ro = Log.open(path)
    assert ro.size == 600
    with pytest.raises(UsageError, match="read-only"):
        ro.append([b"x"])


def test_wrong_key_refused(tmp_path: Path, signer: Signer) -> None:
    path = str(tmp_path / "log.db")
    Log.create(path, signer).store.close()
    with pytest.raises(UsageError):
        Log.open(path, Signer.generate("other.example/log"))
    with pytest.raises(UsageError, match="not the key"):
        Log.open(path, Signer.generate(ORIGIN))


def test_create_refuses_existing_and_open_refuses_missing(tmp_path: Path, signer: Signer) -> None:
    path = str(tmp_path / "log.db")
    with pytest.raises(StorageError, match="potd ledger init"):
        Log.open(path, signer)
    Log.create(path, signer).store.close()
    with pytest.raises(StorageError, match="already exists"):
        Log.create(path, signer)


def test_tiles_and_bundles(tmp_path: Path, signer: Signer) -> None:
    log = Log.create(str(tmp_path / "log.db"), signer)
    es = entries(0, 70_000 // 100)
    for k in range(0, len(es), 97):
        log.append(es[k:k + 97])
    cp = log.checkpoint()
    assert tree_hash(cp.size, TileHashReader(log.tile)) == cp.root
    for t in tiles_for_size(cp.size):
        assert len(log.tile(t)) == 32 * t.width
    with pytest.raises(UsageError):
        log.tile(Tile(0, 2, 256))  # level-0 tile 2 is only partial at size 700
    full = decode_bundle(log.tile(Tile(ENTRIES_LEVEL, 1)), expect=256)
    assert full == es[256:512]
    part = decode_bundle(log.tile(Tile(ENTRIES_LEVEL, 2, 700 - 512)))
    assert part == es[512:700]
    with pytest.raises(UsageError):
        log.tile(Tile(ENTRIES_LEVEL, 2, 700 - 511))


def test_oversized_entry_rejected_nothing_stored(tmp_path: Path, signer: Signer) -> None:
    log = Log.create(str(tmp_path / "log.db"), signer)
    log.append([b"a"])
    with pytest.raises(UsageError, match="65535"):
        log.append([b"ok", b"x" * 65536])
    assert log.size == 1 and log.store.size() == 1
    log.append([b"y" * 65535])
    assert log.size == 2


class FailingStore(SQLiteStore):
    """Fault injection: 'write failed' and 'write landed but reported failure'."""

    mode = "ok"

    def append(self, *a, **kw):  # type: ignore[no-untyped-def]
        if self.mode == "fail":
            raise StorageError("injected: disk full")
        super().append(*a, **kw)
        if self.mode == "landed":
            raise StorageError("injected: connection lost after commit")


def test_failed_write_leaves_no_half_state(tmp_path: Path, signer: Signer) -> None:
    path = str(tmp_path / "log.db")
    Log.create(path, signer).store.close()
    store = FailingStore(path)
    log = Log(store, signer)
    log.append(entries(0, 5))
    before = log.checkpoint()
    store.mode = "fail"
    with pytest.raises(StorageError):
        log.append(entries(5, 9))
    assert log.checkpoint() == before and store.size() == 5
    store.mode = "ok"
    log.append(entries(5, 9))  # the in-memory tree was rolled back: same tree as never failed
    assert log.checkpoint().root == root_of([leaf_hash(e) for e in entries(0, 9)])


def test_write_landed_but_reported_failure_is_detected(tmp_path: Path, signer: Signer) -> None:
    path = str(tmp_path / "log.db")
    Log.create(path, signer).store.close()
    store = FailingStore(path)
    log = Log(store, signer)
    store.mode = "landed"
    with pytest.raises(StorageError):
        log.append(entries(0, 3))
    store.mode = "ok"
    # the stale sequencer must not sign over the landed write...
    with pytest.raises(StorageError, match="another process"):
        log.append(entries(3, 4))
    # ...and reopening recovers the landed entries intact
    log2 = Log.open(path, signer)
    assert log2.size == 3
    assert log2.checkpoint().root == root_of([leaf_hash(e) for e in entries(0, 3)])


def test_two_sequencers_cannot_interleave(tmp_path: Path, signer: Signer) -> None:
    path = str(tmp_path / "log.db")
    a = Log.create(path, signer)
    # a second writer is refused at open (the file's writer lock) ...
    with pytest.raises(StorageError, match="already open for writing") as e:
        Log.open(path, signer)
    assert "one writer per log" in e.value.hint
    # ... and one that bypasses the lock still cannot interleave (the size check)
    b = Log(SQLiteStore(path), signer)
    a.append([b"from a"])
    with pytest.raises(StorageError, match="another process"):
        b.append([b"from b"])
    assert Log.open(path).size == 1
    a.store.close()
    Log.open(path, signer).store.close()  # the lock goes with its store


def test_tampered_database_refused_at_open(tmp_path: Path, signer: Signer) -> None:
    path = str(tmp_path / "log.db")
    log = Log.create(path, signer)
    log.append(entries(0, 20))
    log.store.close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE hashes SET data = zeroblob(length(data)) WHERE level = 2")
    conn.commit()
    conn.close()
    with pytest.raises(StorageError, match="altered"):
        Log.open(path, signer)


def test_checkpoint_at_past_size_is_deterministic(tmp_path: Path, signer: Signer) -> None:
    log = Log.create(str(tmp_path / "log.db"), signer)
    log.append(entries(0, 10))
    c1 = log.checkpoint_at(7)
    log.append(entries(10, 20))
    c2 = log.checkpoint_at(7)
    assert str(c1) == str(c2)
    opened = open_checkpoint(str(c2), signer.verifier)
    assert opened.size == 7 and opened.checkpoint.extensions == ()
    assert opened.root == root_of([leaf_hash(e) for e in entries(0, 7)])
    with pytest.raises(UsageError):
        log.checkpoint_at(21)


def test_timestamp_extension(tmp_path: Path, signer: Signer) -> None:
    log = Log.create(str(tmp_path / "log.db"), signer, timestamps=True)
    log.append([b"a"])
    ts = log.checkpoint().checkpoint.timestamp_ms
    assert ts is not None and ts > 1_700_000_000_000


def test_memory_does_not_grow_with_log(tmp_path: Path, signer: Signer) -> None:
    """The sequencer keeps only the right edge in memory: O(log n) hashes."""
    log = Log.create(str(tmp_path / "log.db"), signer)
    for k in range(50):
        log.append([b"%d" % i for i in range(k * 400, (k + 1) * 400)])
    assert len(log._range.edge) == bin(log.size).count("1")
    assert len(log.store._cache) <= log.store._cache_max  # type: ignore[attr-defined]


def test_full_entry_bundles_are_stored_once_across_batches_and_reopens(
        tmp_path: Path, signer: Signer) -> None:
    path = str(tmp_path / "log.db")
    log = Log.create(path, signer)
    es = entries(0, 1000)
    for k in range(0, 600, 97):
        log.append(es[k:min(k + 97, 600)])
    log.store.close()
    log = Log.open(path, signer)  # the partial tail bundle is reloaded at open
    log.append(es[600:1000])
    store = log.store
    assert isinstance(store, SQLiteStore)
    for n in range(3):
        stored = store.read_bundle(n)
        assert stored is not None
        assert decode_bundle(stored, expect=256) == es[n * 256:(n + 1) * 256]
        assert log.tile(Tile(ENTRIES_LEVEL, n)) == stored
    assert store.read_bundle(3) is None  # 1000 = 3 * 256 + 232: the fourth is partial
    assert decode_bundle(log.tile(Tile(ENTRIES_LEVEL, 3, 232))) == es[768:1000]


def test_full_database_reports_its_cause_and_recovers(tmp_path: Path, signer: Signer) -> None:
    """SQLITE_FULL (here from a page limit, as from a full disk) is reported by its cause,
    not as a failed rollback; nothing of the failed append is kept, and appends resume
    once there is room."""
    path = str(tmp_path / "log.db")
    log = Log.create(path, signer)
    log.append(entries(0, 10))
    store = log.store
    assert isinstance(store, SQLiteStore)
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count={pages}")
    with pytest.raises(StorageError) as e:
        log.append([b"x" * 60_000] * 20)
    assert "SQLITE_FULL" in e.value.message and "full" in e.value.message
    assert "cannot rollback" not in e.value.message
    assert "free disk space" in e.value.hint
    with pytest.raises(StorageError, match="cannot take writes.*SQLITE_FULL"):
        store.probe_write()
    assert log.size == 10 and store.size() == 10
    store.conn.execute("PRAGMA max_page_count=1073741823")
    store.probe_write()
    log.append([b"after"])
    log.store.close()
    again = Log.open(path)
    assert again.size == 11 and again.entries(10, 11) == [b"after"]


def test_append_refuses_bad_input_naming_it_and_stores_nothing(tmp_path: Path,
                                                               signer: Signer) -> None:
    from ledger.errors import MalformedError
    log = Log.create(str(tmp_path / "log.db"), signer)
    log.store.ensure_indexes()  # type: ignore[attr-defined]
    with pytest.raises(MalformedError, match="entry #1 is str"):
        log.append([b"a", "b"])  # type: ignore[list-item]
    with pytest.raises(UsageError, match="entry #2 has 65536 bytes"):
        log.append([b"a", b"b", b"x" * 65536])
    with pytest.raises(UsageError, match="outside the batch"):
        log.append([b"a", b"b"], run_rows=[("r", 0, 0), ("r", 1, 2)])
    with pytest.raises(UsageError, match="2 leaf hashes for 1 entries"):
        log.append([b"a"], leaves=[leaf_hash(b"a")] * 2)
    assert log.size == 0
    got = log.append([bytearray(b"a"), b"b"], run_rows=[("r", 0, 0), ("r", 1, 1)])
    assert got.leaf_hashes == (leaf_hash(b"a"), leaf_hash(b"b")) and log.entries(0, 2) == [
        b"a", b"b"]
