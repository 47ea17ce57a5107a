"""Resuming a data-parallel run (kill -9 of a real 2-rank gloo run, then `potd prover
resume --train`: bit-identical to an uninterrupted run, exact audit with `--device cpu`),
the world-size refusal, the device and backend selection of the ranks (pure functions:
this machine may have no GPU), and the CUDA refusals (docs/protocol.md §4.8)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from e2e import Env

from ledger.errors import UsageError
from prover.distributed import backend_for, committed_world, rank_device
from prover.spool import Spool

no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_backend_and_rank_devices() -> None:
    cpu, cuda1 = torch.device("cpu"), torch.device("cuda", 1)
    assert backend_for(cpu) == backend_for("cpu") == "gloo"
    assert backend_for("cuda") == backend_for(cuda1) == "nccl"
    # a CPU run: every rank on the CPU, whatever the launcher says
    assert [rank_device(cpu, r, None, None) for r in range(3)] == [cpu] * 3
    assert rank_device(cpu, 1, local=5) == cpu
    # local ranks from cuda:i on cuda:i+r; under torchrun on cuda:LOCAL_RANK
    assert [rank_device("cuda:1", r, None, 4) for r in range(3)] == [
        torch.device("cuda", i) for i in (1, 2, 3)]
    assert rank_device("cuda", 1, None, 2) == torch.device("cuda", 1)
    assert rank_device("cuda:1", 5, local=0, count=1) == torch.device("cuda", 0)
    with pytest.raises(UsageError, match="rank 2 would train on cuda:3, but this machine "
                                         "has 3 CUDA devices") as e:
        rank_device("cuda:1", 2, None, 3)
    assert "--nproc" in (e.value.hint or "")
    with pytest.raises(UsageError, match=r"has 1 CUDA device \(hint: start at most one"):
        rank_device("cuda", 0, local=1, count=1)


def test_committed_world() -> None:
    assert committed_world({}) == 1
    assert committed_world({"data_parallel": {"world_size": 2}}) == 2
    for junk in ({"data_parallel": "2"}, {"data_parallel": {"world_size": "2"}},
                 {"data_parallel": {"world_size": 0}}, None):
        assert committed_world(junk) == 1


def test_resume_needs_the_committed_world_size(tmp_path: Path) -> None:
    """--nproc must be the world size run.open commits; the spool's record must agree."""
    from ledger.note import Signer
    from ledger.statement import build_statement, parse_statement
    from prover.resume import SpooledRun, _world

    key = Signer.generate("trainer.example/t")

    def run(world: int | None, meta: dict[str, str]) -> SpooledRun:
        body: dict[str, Any] = {"seed_commitment": "00" * 32,
                                "dataset": {"root": "11" * 32, "size": 1437}}
        if world is not None:
            body["data_parallel"] = {"world_size": world, "split": "potd-shard-v1"}
        opened = parse_statement(build_statement("run.open", None, 0, body, key))
        return SpooledRun(Spool(tmp_path / "s.db"), meta, [opened])

    dp = run(2, {"world_size": "2"})
    assert _world(dp, None) == _world(dp, 2) == 2
    for n in (1, 3):
        with pytest.raises(UsageError, match=f"--nproc {n}: .* trained data-parallel with "
                                             "2 processes") as e:
            _world(dp, n)
        assert "--nproc 2" in (e.value.hint or "")
    single = run(None, {})
    assert _world(single, None) == _world(single, 1) == 1
    with pytest.raises(UsageError, match="trained in one process"):
        _world(single, 2)
    with pytest.raises(UsageError, match="the spool records world size 3"):
        _world(run(2, {"world_size": "3"}), None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_data_parallel_refused_here(tmp_path: Path) -> None:
    """`train --device cuda --nproc 2` and the replay ranks' devices: "not available",
    a usage error with a hint, before any process starts."""
    from click.testing import CliRunner

    from auditor.replay_dp import rank_devices
    from ledger.cli import main

    os.chdir(tmp_path)
    r = CliRunner()
    assert r.invoke(main, ["prover", "keygen", "potd.example/t", "-o", "t.key"]).exit_code == 0
    vkey = Path("t.key.pub").read_text().strip()
    out = r.invoke(main, ["prover", "train", "--recipe", "digits-mlp", "--log",
                          "http://127.0.0.1:9", "--vkey", vkey, "--key", "t.key",
                          "--evidence", "ev", "--device", "cuda:0", "--nproc", "2"])
    assert out.exit_code == 2, out.output
    assert "not available" in out.output and "--device cpu" in out.output
    assert "Traceback" not in out.output
    with pytest.raises(UsageError, match="not available"):
        rank_devices("cuda:0", 2)
    assert rank_devices("cpu", 2) == [torch.device("cpu")] * 2


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="no CUDA device" if not
                    torch.cuda.is_available() else "fewer than 2 CUDA devices")
@pytest.mark.slow
def test_nccl_two_rank_run_audits_exactly_on_cuda(env: Env) -> None:
    """On a machine with 2 GPUs: a 2-rank NCCL run commits every step; an audit on CUDA
    replays it exactly with 2 NCCL ranks."""
    run, ev = _train_cli(env, "nccl", "--device", "cuda:0")
    rep = env.audit(run, ev, samples=2, device="cuda:0")
    assert rep["replay"]["mode"] == "exact", rep["replay"]["mode_reason"]
    assert "2 nccl processes" in rep["replay"]["mode_reason"]
    assert rep["verdict"] == "pass"


def _train_cli(env: Env, tag: str, *extra: str) -> tuple[str, Path]:
    tkey = env.dir / "trainer.key"
    tkey.write_text(env.trainer.private_string())
    t = subprocess.run([sys.executable, "-m", "ledger", "prover", "train", "--nproc", "2",
                        "--recipe", "digits-mlp", "--epochs", "1", "--log", env.url,
                        "--vkey", str(env.log_key.verifier), "--key", str(tkey),
                        "--evidence", str(env.dir / f"ev-{tag}"), "--json",
                        str(env.dir / f"{tag}.json"), *extra],
                       capture_output=True, text=True, timeout=600)
    assert t.returncode == 0, t.stderr
    return json.loads((env.dir / f"{tag}.json").read_text())["run"], env.dir / f"ev-{tag}"


TRAIN_DP_AND_DIE = r"""
import os, sys
from ledger.client import LogClient
from ledger.note import Signer
from prover.distributed import DataParallelSession, start_local
from prover.recipes import get_recipe
url, vkey, tkey, d = sys.argv[1:5]
recipe = get_recipe("digits-mlp", epochs=1)
procs = start_local(recipe, 2)
print(" ".join(str(p.pid) for p in procs), flush=True)
s = DataParallelSession(recipe, LogClient(url, vkey), Signer.parse(open(tkey).read()),
                        d + "/ev", d + "/run.spool")
s.open()
print(s.run_id, flush=True)
for b in s.batches():
    s.train_step(b)
    if b.step == 31:  # step 30 spooled past the checkpoint at 29 (31 in flight)
        s.flush()
        os.kill(os.getpid(), 9)
"""


def _reap(pids: list[int], timeout: float = 60) -> None:
    """The killed rank 0's workers notice the lost peer and exit; stop stragglers."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists() and \
                "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]:
            time.sleep(0.1)
        if Path(f"/proc/{pid}").exists():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


PLAIN_RANK = r"""
import json, sys
import torch
from prover.distributed import DataParallelWorker, _send, init_process_group
from prover.hashing import hash_tensors
from prover.recipes import get_recipe
rank, address, seed = int(sys.argv[1]), sys.argv[2], bytes.fromhex(sys.argv[3])
torch.set_num_threads(int(sys.argv[4]))
init_process_group(rank, 2, address)
w = DataParallelWorker(get_recipe("digits-mlp", epochs=1))
if rank == 0:
    _send([seed, json.dumps({"step": 0})])
    w.begin(seed, {"step": 0})
else:
    w.open()
for b in w.batches():
    w.train_step(b)
if rank == 0:
    print(hash_tensors(w.model.state_dict(), "blake3"))
"""


def uninterrupted_dp_final(spool: Path) -> str:
    """The final weights of an uninterrupted 2-rank run with the spooled seed: plain DDP
    training (the ranks' own code, nothing committed) from the initial weights."""
    from prover.derive import derive_seed
    from prover.distributed import free_address
    from prover.hashing import example_hashes, merkle_root_hex
    from prover.recipes.digits_mlp import DigitsMLP

    sp = Spool(spool)
    m = sp.meta()
    sp.close()
    data = DigitsMLP(**json.loads(m["config"])).data()
    root = merkle_root_hex(example_hashes(data.x, data.y))
    seed = derive_seed(bytes.fromhex(root), bytes.fromhex(m["s_rand"]),
                       bytes.fromhex(m["beacon"]))
    address = free_address()
    threads = str(torch.get_num_threads())
    ps = [subprocess.Popen([sys.executable, "-c", PLAIN_RANK, str(r), address, seed.hex(),
                            threads], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=300) for p in ps]
    assert all(p.returncode == 0 for p in ps), [e for _, e in outs]
    return outs[0][0].strip()


@pytest.mark.slow
def test_killed_two_rank_run_resumes_bit_identically_and_audits(env: Env) -> None:
    tkey = env.dir / "trainer.key"
    tkey.write_text(env.trainer.private_string())
    p = subprocess.run([sys.executable, "-c", TRAIN_DP_AND_DIE, env.url,
                        str(env.log_key.verifier), str(tkey), str(env.dir)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr
    pids, run = p.stdout.split("\n")[:2]
    _reap([int(x) for x in pids.split()])
    spool = env.dir / "run.spool"
    sp = Spool(spool)
    assert sp.meta()["world_size"] == "2"
    sp.close()

    def resume(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ledger", "prover", "resume", "--train",
                               "--spool", str(spool), "--key", str(tkey), *extra],
                              capture_output=True, text=True, timeout=300)

    bad = resume("--nproc", "1")  # refused before any process starts or anything is built
    assert bad.returncode == 2, bad.stderr
    assert "trained data-parallel with 2 processes" in bad.stderr
    assert "--nproc 2" in bad.stderr and "Traceback" not in bad.stderr

    r = resume("--nproc", "2")
    assert r.returncode == 0, r.stderr
    assert "resuming at step 30 of 45 with 2 processes" in r.stdout
    sp = Spool(spool)
    last: Any = json.loads(sp.statements()[-1][1])
    sp.close()
    assert last["kind"] == "run.close" and last["body"]["steps"] == 45
    assert last["body"]["final_weights"] == uninterrupted_dp_final(spool)

    # replayed exactly by 2 gloo ranks on the device given explicitly: the drawn segments
    # and the final one (trained after the resume)
    a = subprocess.run([sys.executable, "-m", "ledger", "auditor", "audit", "--log", env.url,
                        "--vkey", str(env.log_key.verifier), "--run", run.strip(),
                        "--evidence", str(env.dir / "ev"), "--samples", "2",
                        "--device", "cpu", "--replay-mode", "exact",
                        "--state", str(env.dir / "state"),
                        "--json", str(env.dir / "audit.json")],
                       capture_output=True, text=True, timeout=600)
    assert a.returncode == 0, a.stdout + a.stderr
    rep = json.loads((env.dir / "audit.json").read_text())
    assert rep["verdict"] == "pass"
    assert rep["replay"]["mode"] == "exact" and rep["replay"]["segments"][-1]["end"] == 44
    assert "2 gloo processes on cpu" in rep["replay"]["mode_reason"]
