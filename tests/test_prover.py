"""The prover against a real log server: determinism, outages, crashes, resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from e2e import Env, checks, make_env

from ledger.client import LogClient
from ledger.devserver import ServerProcess
from ledger.errors import PotdError
from ledger.log import Log
from ledger.merkle import leaf_hash
from prover.spool import Spool, Submitter


def log_entries(e: Env) -> list[bytes]:
    with e.client() as c:
        cp = c.checkpoint()
        return c.entries(0, cp.size, cp)


def test_honest_run_logs_every_statement_with_verified_receipts(env: Env) -> None:
    s = env.train()
    n = len(s.plan)
    assert len(s.receipts) == n + 2  # run.open, one per step, run.close
    assert [r.index for r in s.receipts] == list(range(n + 2))
    entries = log_entries(env)
    kinds = [json.loads(e)["kind"] for e in entries]
    assert kinds == ["run.open"] + ["step"] * n + ["run.close"]
    # the hash chain links every statement to the previous leaf
    for prev, cur in zip(entries, entries[1:], strict=False):
        assert json.loads(cur)["body"]["prev"] == leaf_hash(prev).hex()
    with httpx.Client() as h:
        assert h.get(f"{env.url}/runs/{s.run_id}").json()["indexes"] == list(range(n + 2))
    report = env.audit(s.run_id, env.dir / "ev-run")
    assert report["verdict"] == "pass", checks(report)


def test_large_model_path_hashes_on_a_thread_and_audits(env: Env) -> None:
    """Above SMALL_STATE bytes the weights are hashed on the hasher thread, overlapped
    with the next step, and checkpoints go through a snapshot file: the run must still
    log every step with the true weights (the audit replays every segment exactly)."""
    from prover.session import SMALL_STATE

    s = env.session("big", overrides={"hidden": 4096, "epochs": 1, "k": 9})
    s.open()
    state = s.model.state_dict()
    assert sum(t.numel() * t.element_size() for t in state.values()) > SMALL_STATE
    assert not s._inline and s._hasher is not None
    for b in s.batches():
        s.train_step(b)
    s.close()
    assert not list((env.dir / "ev-big").glob(".snapshot-*"))  # snapshots cleaned up
    report = env.audit(s.run_id, env.dir / "ev-big")
    assert report["verdict"] == "pass", checks(report)
    replay = next(c for c in report["checks"] if c["name"] == "replay")
    assert "bit-exactly" in replay["summary"], replay


def test_dead_commit_process_is_reported_not_hung(env: Env) -> None:
    s = env.session("dead")
    s.open()
    batches = list(s.batches())
    s.train_step(batches[0])
    assert s._committer is not None
    s._committer.proc.kill()
    s._committer.proc.wait()
    t0 = time.perf_counter()
    with pytest.raises(PotdError, match="commit process"):
        for b in batches[1:]:
            s.train_step(b)
        s.flush()
    assert time.perf_counter() - t0 < 10
    s._shutdown()


def test_same_s_rand_and_beacon_give_identical_statements(tmp_path: Path) -> None:
    """Two fresh logs with the same key hand out the same beacon; with the same s_rand
    and trainer key, every statement of the two runs is byte-identical."""
    logs = []
    key = None
    for i in range(2):
        d = tmp_path / f"log{i}"
        d.mkdir()
        gen = make_env(d)
        e = next(gen)
        if key is None:
            key, trainer = e.log_key, e.trainer
        else:  # same log key and trainer as the first
            e.server.stop()
            (d / "log.db").unlink()
            (d / "log.key").write_text(key.private_string())
            Log.create(str(d / "log.db"), key).store.close()
            e.server = ServerProcess(str(d / "log.db"), str(d / "log.key"),
                                     extra=["--open-registration"]).start()
            e.log_key, e.trainer = key, trainer
        try:
            e.train(s_rand=b"\x42" * 32)
            logs.append(log_entries(e))
        finally:
            e.server.stop()
            gen.close()
    assert logs[0] == logs[1]
    assert len(logs[0]) == 47


def test_log_outage_mid_run(env: Env) -> None:
    s = env.session()
    s.open()
    batches = list(s.batches())
    for b in batches[:10]:
        s.train_step(b)
    port = env.server.port
    env.server.stop()  # the log goes away; training must go on
    t0 = time.perf_counter()
    for b in batches[10:30]:
        s.train_step(b)
    assert time.perf_counter() - t0 < 20
    s.flush()  # statements are spooled asynchronously; flush() waits for that, not the log
    total, acked = s.spool.counts()
    assert acked < total  # statements are waiting in the spool
    env.server = ServerProcess(str(env.dir / "log.db"), str(env.dir / "log.key"), port=port,
                               extra=["--open-registration"]).start()
    for b in batches[30:]:
        s.train_step(b)
    s.close()
    with httpx.Client() as h:
        idx = h.get(f"{env.url}/runs/{s.run_id}").json()["indexes"]
    assert idx == list(range(len(s.plan) + 2))  # every statement exactly once
    report = env.audit(s.run_id, env.dir / "ev-run")
    assert report["verdict"] == "pass", checks(report)


TRAIN_AND_DIE = r"""
import sys, os
from ledger.client import LogClient
from ledger.note import Signer
from prover.recipes import get_recipe
from prover.session import TrainingSession
url, vkey, tkey, d = sys.argv[1:5]
s = TrainingSession(get_recipe("digits-mlp", epochs=1), LogClient(url, vkey),
                    Signer.parse(open(tkey).read()), d + "/ev", d + "/run.spool")
s.open()
for b in s.batches():
    s.train_step(b)
    if b.step == 30:
        s.flush()
        print(s.run_id, flush=True)
        os.kill(os.getpid(), 9)
"""


def test_trainer_killed_then_resumed_submits_exactly_once(env: Env) -> None:
    tkey = env.dir / "trainer.key"
    tkey.write_text(env.trainer.private_string())
    env.server.stop()  # nothing gets acknowledged before the crash...
    port = env.server.port
    env.server = ServerProcess(str(env.dir / "log.db"), str(env.dir / "log.key"), port=port,
                               extra=["--open-registration"]).start()
    p = subprocess.run([sys.executable, "-c", TRAIN_AND_DIE, env.url, str(env.log_key.verifier),
                        str(tkey), str(env.dir)], capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr
    run = p.stdout.split()[0]
    sp = Spool(env.dir / "run.spool")
    total, acked = sp.counts()
    assert total == 32  # run.open + steps 0..30, all durably spooled before the kill
    sp.close()
    r = subprocess.run([sys.executable, "-m", "ledger", "prover", "resume", "--spool",
                        str(env.dir / "run.spool")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "32/32 acknowledged" in r.stdout
    with httpx.Client() as h:
        idx = h.get(f"{env.url}/runs/{run}").json()["indexes"]
    assert idx == list(range(32))
    # running resume again submits nothing more
    r = subprocess.run([sys.executable, "-m", "ledger", "prover", "resume", "--spool",
                        str(env.dir / "run.spool")], capture_output=True, text=True, timeout=60)
    assert "0 statements submitted now" in r.stdout
    with httpx.Client() as h:
        assert h.get(f"{env.url}/runs/{run}").json()["indexes"] == list(range(32))


KILLED_UNFLUSHED = r"""
import sys, os
from ledger.client import LogClient
from ledger.note import Signer
from prover.recipes import get_recipe
from prover.session import TrainingSession
url, vkey, tkey, d = sys.argv[1:5]
s = TrainingSession(get_recipe("digits-mlp", epochs=1), LogClient(url, vkey),
                    Signer.parse(open(tkey).read()), d + "/ev", d + "/run.spool")
s.open()
print(s.run_id, s._committer.proc.pid, flush=True)
for b in s.batches():
    s.train_step(b)
    if b.step == 40:  # no flush: records are in flight to the commit process
        os.kill(os.getpid(), 9)
"""


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_trainer_killed_unflushed_leaves_a_chained_prefix(env: Env) -> None:
    """SIGKILL without flush: the commit process sees EOF, spools every complete record
    it received (a prefix of the run, chained, its evidence on disk) and exits; resume
    then logs exactly that prefix."""
    tkey = env.dir / "trainer.key"
    tkey.write_text(env.trainer.private_string())
    p = subprocess.run([sys.executable, "-c", KILLED_UNFLUSHED, env.url,
                        str(env.log_key.verifier), str(tkey), str(env.dir)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr
    run, child = p.stdout.split()[0], int(p.stdout.split()[1])
    deadline = time.monotonic() + 30
    while not _gone(child):
        assert time.monotonic() < deadline, "the commit process outlived its parent"
        time.sleep(0.05)
    sp = Spool(env.dir / "run.spool")
    rows = sp.conn.execute("SELECT seq, data FROM statements ORDER BY seq").fetchall()
    sp.close()
    seqs = [r[0] for r in rows]
    # a prefix, no gap, at most run.open + steps 0..40. How many records reached the
    # pipe before the kill depends on timing (the parent writes every 32 records or
    # 5 ms), so only a lower bound of run.open and one step is certain under load
    assert seqs == list(range(len(seqs))) and 2 <= len(seqs) <= 42
    prev = None
    for seq, data in rows:
        st = json.loads(data)
        if seq:
            assert st["body"]["prev"] == prev and st["body"]["step"] == seq - 1
            ck = st["body"].get("checkpoint")
            if ck:  # evidence named by a spooled statement is durable
                for name in (ck["weights"], ck["optimizer"]):
                    assert (env.dir / "ev" / "objects" / name).is_file()
        prev = leaf_hash(data).hex()
    r = subprocess.run([sys.executable, "-m", "ledger", "prover", "resume", "--spool",
                        str(env.dir / "run.spool")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with httpx.Client() as h:
        assert h.get(f"{env.url}/runs/{run}").json()["indexes"] == list(range(len(seqs)))


def test_lost_acknowledgment_is_reconciled_not_duplicated(env: Env) -> None:
    """The log stored a batch but the trainer died before recording the 200: on resume
    the log answers 409 and the submitter matches the statements by leaf hash."""
    s = env.session()
    s.open()
    for b in list(s.batches())[:6]:
        s.train_step(b)
    s._wait_hashed()
    s.submitter.stop()
    s.submitter.join()
    sp = s.spool
    pending = sp.pending()
    if pending:  # deliver them behind the spool's back: the acknowledgment is "lost"
        LogClient(env.url, env.log_key.verifier).add_batch([d for _, d in pending])
    with sp.conn:
        sp.conn.execute("UPDATE statements SET log_index = NULL, receipt = NULL WHERE seq > 0")
    sub = Submitter(sp, LogClient(env.url, env.log_key.verifier), s.run_id)
    sub.start()
    sub.drain(60)
    sub.stop()
    total, acked = sp.counts()
    assert total == acked == 7
    with httpx.Client() as h:
        assert h.get(f"{env.url}/runs/{s.run_id}").json()["indexes"] == list(range(7))
