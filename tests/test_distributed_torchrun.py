"""A data-parallel run under real torchrun (2 gloo ranks on the CPU, a real loopback log):
trained with ``data_parallel_session`` on every rank, killed by a SIGKILL of torchrun's
process group (its ranks, which torchrun starts in sessions of their own, must stop
too), resumed the documented way (``torchrun ... -m ledger prover resume --train``) and
audited exactly; and the launcher checks that run before any process group is joined."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from e2e import Env

from ledger.errors import UsageError

TRAIN = r"""
import os, sys, time
from ledger.client import LogClient
from ledger.note import Signer
from prover.distributed import data_parallel_session
from prover.recipes import get_recipe
url, vkey, tkey, ev = sys.argv[1:5]
rank = int(os.environ["RANK"])
print(f"rank {rank} pid {os.getpid()}", flush=True)
with data_parallel_session(get_recipe("digits-mlp", epochs=1), LogClient(url, vkey),
                           Signer.parse(open(tkey).read()), ev, ev + "/spool.db") as run:
    for b in run.batches():
        run.train_step(b)
        if rank == 0 and b.step == 31:  # step 30 spooled past the checkpoint at 29
            run.flush()
            print("spooled", flush=True)
            time.sleep(600)  # killed here
"""


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", "2", *args]


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return True
    return state == "Z"


@pytest.mark.slow
def test_torchrun_run_killed_resumes_under_torchrun_and_audits(env: Env) -> None:
    tkey, ev = env.dir / "trainer.key", env.dir / "ev"
    tkey.write_text(env.trainer.private_string())
    (env.dir / "train.py").write_text(TRAIN)
    penv = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.Popen(torchrun(str(env.dir / "train.py"), env.url,
                                  str(env.log_key.verifier), str(tkey), str(ev)),
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         start_new_session=True, env=penv)
    pids: list[int] = []
    try:
        assert p.stdout is not None
        for line in p.stdout:
            if " pid " in line:
                pids.append(int(line.split()[-1]))
            if line.strip() == "spooled":
                break
        else:
            pytest.fail(f"the torchrun training ended early (exit {p.wait()})")
        os.killpg(p.pid, signal.SIGKILL)  # the launcher's process group: not its ranks'
        p.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(map(_gone, pids)):
            time.sleep(0.1)
        alive = [pid for pid in pids if not _gone(pid)]
        assert not alive, f"ranks {alive} outlived their torchrun"
    finally:
        for pid in pids:  # a failed test must not leave ranks behind
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    assert len(pids) == 2

    # the documented resume: the same launcher, every rank running the CLI
    r = subprocess.run(torchrun("-m", "ledger", "prover", "resume", "--train", "--spool",
                                str(ev / "spool.db"), "--key", str(tkey)),
                       capture_output=True, text=True, timeout=300, env=penv)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming at step 30 of 45 with 2 processes (launched)" in r.stdout
    assert r.stdout.count("closed after 45 steps") == 1  # rank 0 alone reports
    assert "terminate called" not in r.stderr  # every rank tore its process group down
    run = r.stdout.split()[1].rstrip(":")

    # torchrun runs its ranks on OMP_NUM_THREADS=1, which run.open records: an auditor on
    # as many threads replays exactly (2 gloo ranks) of its own accord
    a = subprocess.run([sys.executable, "-m", "ledger", "auditor", "audit", "--log", env.url,
                        "--vkey", str(env.log_key.verifier), "--run", run, "--evidence",
                        str(ev), "--samples", "2", "--device", "cpu",
                        "--state", str(env.dir / "state"), "--json",
                        str(env.dir / "audit.json")],
                       capture_output=True, text=True, timeout=600,
                       env={**penv, "OMP_NUM_THREADS": "1"})
    assert a.returncode == 0, a.stdout + a.stderr
    rep = json.loads((env.dir / "audit.json").read_text())
    assert rep["verdict"] == "pass"
    assert rep["replay"]["mode"] == "exact" and rep["replay"]["segments"][-1]["end"] == 44
    assert "2 gloo processes on cpu" in rep["replay"]["mode_reason"], rep["replay"]


def test_launched_resume_checks_the_world_first(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a launcher, every rank refuses a world size other than the spooled one (and
    a file that is not a spool) before joining any process group."""
    import sqlite3

    import torch.distributed as dist

    from ledger.note import Signer
    from prover.resume import launched, resume_data_parallel

    key = Signer.generate("trainer.example/t")
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert not launched()
    with pytest.raises(UsageError, match="not started by a launcher"):
        resume_data_parallel(tmp_path / "x.db", key)
    spool = tmp_path / "s.db"
    with sqlite3.connect(spool) as c:
        c.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        c.executemany("INSERT INTO meta VALUES (?, ?)", [
            ("run", "ab" * 32), ("weights_hash", "blake3"), ("world_size", "2")])
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not launched()  # one process is no data-parallel launch
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert launched()
    with pytest.raises(UsageError, match="the launcher started 3 processes; run abababab"
                                         r"abababab\.\.\. was trained by 2") as e:
        resume_data_parallel(spool, key)
    assert "--nproc-per-node" in (e.value.hint or "")
    (tmp_path / "junk.db").write_bytes(b"not sqlite" * 100)
    for junk in (tmp_path / "junk.db", tmp_path / "missing.db"):
        with pytest.raises(UsageError, match="cannot read the spool"):
            resume_data_parallel(junk, key)
    assert not dist.is_initialized()


@pytest.mark.slow
def test_a_session_leaves_the_process_group_it_joined(env: Env,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """data_parallel_session joins the launcher's group for the run and leaves it when the
    run closes (a process exiting with its gloo group up may abort: "terminate called
    without an active exception"); a group the caller initialized stays the caller's."""
    import torch.distributed as dist

    from prover.distributed import data_parallel_session, free_address, init_process_group
    from prover.recipes import get_recipe

    host, port = free_address().split(":")
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": host,
                 "MASTER_PORT": port}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    recipe = get_recipe("digits-mlp", epochs=1)
    try:
        with data_parallel_session(recipe, env.client(), env.trainer, env.dir / "ev",
                                   env.dir / "ev" / "spool.db") as run:
            assert dist.is_initialized() and run.owns_group
            for b in run.batches():
                run.train_step(b)
        assert not dist.is_initialized()
        init_process_group(0, 1, free_address())
        run = data_parallel_session(recipe, env.client(), env.trainer, env.dir / "ev2",
                                    env.dir / "ev2" / "spool.db")
        assert not run.owns_group
        run._leave_group()
        assert dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
