"""``potd ledger migrate`` on logs an old release really wrote (tests/data/v1: a SQLite file
and a PostgreSQL dump made by potd before schema 2 through its own server; see
make_v1_logs.py there): refused with the hint first, then migrated in place, fsck-clean,
the same tree under the same signed checkpoint, and served by today's server — a retried
old statement gets its existing index, the old leaf index answers, and an old run goes
on where it stopped, consistent with the old checkpoint."""

from __future__ import annotations

import json
import lzma
import os
import shutil
import subprocess
from base64 import b64decode
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pgcluster import PgCluster
from server_helpers import LogServer

from ledger.cli import main
from ledger.errors import StorageError
from ledger.log import Log
from ledger.merkle import check_tree, leaf_hash
from ledger.note import Signer, Verifier, open_checkpoint
from ledger.statement import build_statement

DATA = Path(__file__).parent / "data" / "v1"


def restore(kind: str, tmp: Path, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        db = tmp / "log.db"
        db.write_bytes(lzma.decompress((DATA / "v1-sqlite.db.xz").read_bytes()))
        return str(db)
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    url = cluster.new_database()
    real = os.path.dirname(os.path.realpath(os.path.join(cluster.bindir, "initdb")))
    psql = os.path.join(real, "psql")
    psql = psql if os.path.exists(psql) else shutil.which("psql") or "psql"
    dump = lzma.decompress((DATA / "v1-postgres.sql.xz").read_bytes())
    r = subprocess.run([psql, "-q", "-v", "ON_ERROR_STOP=1", "-d", url], input=dump,
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    return url


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_log_written_by_the_old_release_migrates_and_serves(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    meta: dict[str, Any] = json.loads((DATA / f"v1-{kind}.json").read_text())
    db = restore(kind, tmp_path, request)
    vkey = Verifier.parse(meta["vkey"])
    old = open_checkpoint(meta["checkpoint"], vkey)
    assert old.size == meta["size"]

    with pytest.raises(StorageError) as e:
        Log.open(db)
    assert "schema version 1" in e.value.message and "potd ledger migrate" in str(e.value.hint)
    r = CliRunner().invoke(main, ["ledger", "migrate", "--db", db])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["migrated"]
    r = CliRunner().invoke(main, ["ledger", "fsck", "--db", db])
    res = json.loads(r.output)
    assert r.exit_code == 0 and res["ok"] and res["size"] == old.size, res

    log = Log.open(db)
    try:  # the same tree: the old signed checkpoint's root, every entry readable
        assert log.size == old.size and log.root_at(old.size) == old.root
        entries = log.entries(0, old.size)
        assert entries[meta["run_a"]["index_5"]] == meta["run_a"]["statement_5"].encode()
        assert entries[-1] == meta["run_b"]["last"].encode()
    finally:
        log.store.close()

    (tmp_path / "log.key").write_text(meta["log_key"])
    with LogServer(tmp_path, "--open-registration", db=db) as server, \
            server.client() as c:
        # a statement retried after the upgrade gets its existing index (run index)
        again = c.post("/add", content=meta["run_a"]["statement_5"].encode())
        assert again.status_code == 409 and again.json()["index"] == meta["run_a"]["index_5"]
        assert again.json()["error"] == "duplicate"
        # the leaf-hash index built by the old release answers
        lh = leaf_hash(meta["run_a"]["statement_5"].encode()).hex()
        p = c.get("/proof/inclusion", params={"leaf_hash": lh, "size": old.size})
        assert p.status_code == 200 and p.json()["index"] == meta["run_a"]["index_5"]
        # run B goes on where it stopped (run state from the migrated log)
        signer = Signer.parse(meta["run_b"]["signer_key"])
        seq = meta["run_b"]["next_seq"]
        nxt = build_statement("step", meta["run_b"]["run"], seq,
                              {"step": seq - 1, "epoch": 0, "batch_root": "ab" * 32,
                               "batch_size": 4, "loss": "1.5",
                               "prev": leaf_hash(meta["run_b"]["last"].encode()).hex()},
                              signer)
        ok = c.post("/add", content=nxt)
        assert ok.status_code == 200, ok.text
        assert ok.json()["index"] == old.size
        new = open_checkpoint(c.get("/checkpoint").text, vkey)
        assert new.size == old.size + 1
        proof = c.get("/proof/consistency", params={"from": old.size, "to": new.size})
        assert proof.status_code == 200, proof.text
        check_tree([b64decode(h) for h in proof.json()["hashes"]], new.size, new.root,
                   old.size, old.root)
