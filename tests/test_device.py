"""Devices (``--device cpu|cuda[:i]``): parsing and refusal, the environment record in
``run.open``, and the auditor's replay mode when the run's device type is not its own.
CUDA parts skip without a GPU ("no CUDA device")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from e2e import Env, checks

from ledger.cli import main
from ledger.errors import UsageError
from prover.attacks import ForgedCheckpoint
from prover.device import device_environment, parse_device
from prover.session import TrainingSession, environment

ROOT = Path(__file__).resolve().parents[1]
no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CUDA_CLAIM = {"device": "cuda", "device_name": "NVIDIA H100 80GB HBM3", "cuda": "12.8",
              "cudnn": 91002}


class ClaimsCuda(TrainingSession):
    """Trains on the CPU but records a CUDA environment in run.open (test-only override):
    what a run trained on a GPU looks like to a CPU auditor."""

    def environment(self) -> dict[str, Any]:
        return {**super().environment(), **CUDA_CLAIM}


class ForgedClaimsCuda(ForgedCheckpoint):
    """The cheapest attack on exact replay: claim another device type, so the auditor
    must compare distances, and slip a perturbed checkpoint in."""

    def environment(self) -> dict[str, Any]:
        return {**super().environment(), **CUDA_CLAIM}


class Capture(TrainingSession):
    """Keeps the run.open body it logs."""

    def open_body(self, body: dict[str, Any]) -> dict[str, Any]:
        self.opened = body
        return body


def test_parse_device() -> None:
    assert parse_device(None) == parse_device("cpu") == parse_device(" CPU ") == torch.device("cpu")
    for bad, why in (("tpu", "unknown device"), ("cuda:x", "unknown device"),
                     ("cpu:1", "no index"), ("cuda:1234", "unknown device"), ("", "unknown")):
        with pytest.raises(UsageError, match=why) as e:
            parse_device(bad)
        assert e.value.hint and "--device" in e.value.hint


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_unavailable_cuda_is_a_usage_error_with_a_hint() -> None:
    for spec in ("cuda", "cuda:0", "cuda:3"):
        with pytest.raises(UsageError, match="not available") as e:
            parse_device(spec)
        assert "--device cpu" in (e.value.hint or "")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cli_refuses_unavailable_device_without_traceback(tmp_path: Path) -> None:
    """`prover train` and `auditor audit` refuse --device cuda before any work: exit 2,
    the reason and the hint, no traceback (nothing is logged: no log server is even
    needed)."""
    os.chdir(tmp_path)
    r = CliRunner()
    assert r.invoke(main, ["prover", "keygen", "potd.example/t", "-o", "t.key"]).exit_code == 0
    vkey = Path("t.key.pub").read_text().strip()
    for args in (["prover", "train", "--recipe", "digits-mlp", "--log", "http://127.0.0.1:9",
                  "--vkey", vkey, "--key", "t.key", "--evidence", "ev", "--device", "cuda"],
                 ["auditor", "audit", "--log", "http://127.0.0.1:9", "--vkey", vkey,
                  "--run", "00" * 32, "--evidence", "ev", "--device", "cuda:1"],
                 ["prover", "train", "--recipe", "digits-mlp", "--log", "http://127.0.0.1:9",
                  "--vkey", vkey, "--key", "t.key", "--evidence", "ev", "--device", "gpu"]):
        out = r.invoke(main, args)
        assert out.exit_code == 2, (args, out.output, out.exception)
        assert "Traceback" not in out.output
        assert "--device cpu" in out.output or "--device cpu, cuda" in out.output
    assert not Path("ev", "spool.db").exists()


def test_environment_record_fields() -> None:
    env = environment()
    assert {"torch", "numpy", "python", "device", "device_name", "dtype", "threads",
            "deterministic"} <= env.keys()
    assert env["device"] == "cpu" and env["torch"] == torch.__version__
    assert env["dtype"] == "float32" and isinstance(env["device_name"], str)
    assert "cuda" not in env and "cudnn" not in env  # only on CUDA
    assert environment("cpu") == env


@no_cuda
def test_cuda_environment_record() -> None:
    env = environment("cuda")
    assert env["device"] == "cuda" and env["cuda"] == torch.version.cuda
    assert env["device_name"] == torch.cuda.get_device_name(0)
    assert device_environment(torch.device("cuda", 0))["cudnn"] is not None


def test_run_records_its_device_and_resume_meta(env: Env) -> None:
    s: Any = env.session("dev", cls=Capture, device="cpu")
    s.open()
    assert s.spool.meta()["device"] == "cpu"  # resume --train trains there again
    assert s.opened["environment"] == environment("cpu") == s.environment()
    s.abort("test")


def test_mode_reason_names_the_device_type() -> None:
    from auditor.audit import AuditOptions
    from auditor.calibration import mode_reason, same_environment

    mine = environment()
    run = {**mine, **CUDA_CLAIM}
    assert not same_environment(run, mine)
    why = mode_reason(AuditOptions(run="r", evidence="e"), False, run, mine)
    assert why.startswith("the run trained on device type 'cuda', the auditor replays on 'cpu'")
    assert "device 'cuda' vs 'cpu'" in why


@pytest.mark.slow
def test_auditor_replays_a_cuda_run_in_tolerance_mode(env: Env) -> None:
    """A run whose run.open records CUDA, audited on the CPU: tolerance mode (auto), the
    reason in the report; the honest run does not fail, a forged checkpoint behind the
    same claim does not pass."""
    s = env.train("gpu", cls=ClaimsCuda)
    rep = env.audit(s.run_id, env.dir / "ev-gpu", samples=2)
    assert rep["replay"]["mode"] == "tolerance"
    assert "device type 'cuda'" in rep["replay"]["mode_reason"]
    assert rep["replay"]["environment"]["run"]["cuda"] == "12.8"
    assert rep["replay"]["environment"]["auditor"]["device"] == "cpu"
    assert rep["verdict"] == "pass", checks(rep)

    f = env.train("forged", cls=ForgedClaimsCuda)
    rep = env.audit(f.run_id, env.dir / "ev-forged", samples=1000)
    assert rep["replay"]["mode"] == "tolerance"
    assert rep["verdict"] != "pass" and checks(rep)["replay"] != "pass", checks(rep)


@no_cuda
@pytest.mark.slow
def test_cuda_training_and_replay(env: Env) -> None:
    """On a GPU: a run trained on CUDA records it; a CUDA audit replays it exactly, a CPU
    audit in tolerance mode; both pass."""
    s = env.train("cuda", device="cuda")
    rep = env.audit(s.run_id, env.dir / "ev-cuda", samples=2, device="cuda")
    assert rep["replay"]["mode"] == "exact" and rep["verdict"] == "pass", checks(rep)
    rep = env.audit(s.run_id, env.dir / "ev-cuda", samples=2)
    assert rep["replay"]["mode"] == "tolerance" and rep["verdict"] != "fail", checks(rep)


@pytest.mark.slow
def test_gpu_check_smoke_without_cuda() -> None:
    """scripts/gpu_check.sh parses, and without CUDA runs its CPU smoke version, exit 0."""
    subprocess.run(["bash", "-n", str(ROOT / "scripts/gpu_check.sh")], check=True)
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the full check is not a test")
    r = subprocess.run(["bash", str(ROOT / "scripts/gpu_check.sh")], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "PYTHON": sys.executable})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no CUDA device" in r.stdout
    assert "overhead" in r.stdout and "replay" in r.stdout and "ratio" in r.stdout
    assert "2-rank NCCL smoke: skipped (no CUDA device" in r.stdout
