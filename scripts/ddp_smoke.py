#!/usr/bin/env python3
"""A data-parallel smoke run end to end: a log server on a loopback port, ``potd prover
train --nproc N --device DEVICE`` (gloo on the CPU, NCCL on CUDA: rank r on cuda:i+r),
then ``potd auditor audit --replay-mode exact --device DEVICE`` (N ranks again). Prints
the backend the run committed, the replay mode and reason, and the verdict; exit 0 only
when the exact audit passes. ``scripts/gpu_check.sh`` runs it with ``--device cuda:0``
on a machine with at least 2 GPUs.

    .venv/bin/python scripts/ddp_smoke.py --device cpu          # gloo, 2 ranks
    .venv/bin/python scripts/ddp_smoke.py --device cuda:0       # NCCL, cuda:0 and cuda:1
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ledger.devserver import ServerProcess  # noqa: E402
from ledger.log import Log  # noqa: E402
from ledger.note import Signer  # noqa: E402
from prover.spool import Spool  # noqa: E402


def potd(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "ledger", *args], check=True, timeout=1800)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:INDEX (rank 0's)")
    ap.add_argument("--nproc", type=int, default=2, help="ranks (default 2)")
    ap.add_argument("--recipe", default="digits-mlp")
    ap.add_argument("--epochs", default="1")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory "
                    "(log, evidence, reports) after a passing run")
    a = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="potd-ddp-smoke-"))
    log_key = Signer.generate("potd.example/ddp-smoke")
    (d / "log.key").write_text(log_key.private_string())
    Log.create(str(d / "log.db"), log_key).store.close()
    trainer = Signer.generate("trainer.example/ddp-smoke")
    (d / "t.key").write_text(trainer.private_string())
    srv = ServerProcess(str(d / "log.db"), str(d / "log.key"), extra=["--open-registration"],
                        log_file=str(d / "server.log")).start()
    try:
        t0 = time.perf_counter()
        potd("prover", "train", "--recipe", a.recipe, "--epochs", a.epochs, "--nproc",
             str(a.nproc), "--device", a.device, "--log", srv.url, "--vkey",
             str(log_key.verifier), "--key", str(d / "t.key"), "--evidence", str(d / "ev"),
             "--json", str(d / "train.json"))
        train_s = time.perf_counter() - t0
        run = json.loads((d / "train.json").read_text())["run"]
        t0 = time.perf_counter()
        audit = subprocess.run([sys.executable, "-m", "ledger", "auditor", "audit", "--log",
                                srv.url, "--vkey", str(log_key.verifier), "--run", run,
                                "--evidence", str(d / "ev"), "--samples", "2",
                                "--replay-mode", "exact", "--device", a.device,
                                "--state", str(d / "state"), "--json",
                                str(d / "audit.json")], timeout=1800, capture_output=True)
        audit_s = time.perf_counter() - t0
        rep = json.loads((d / "audit.json").read_text())
    finally:
        srv.stop()
    sp = Spool(d / "ev" / "spool.db")
    dp = json.loads(sp.statements()[0][1])["body"]["data_parallel"]
    sp.close()
    replay = rep.get("replay", {})
    print(f"ddp_smoke: {a.nproc} ranks on {a.device}, backend {dp['backend']} (committed "
          f"world size {dp['world_size']}): trained in {train_s:.1f} s, audited in "
          f"{audit_s:.1f} s; replay {replay.get('mode')} ({replay.get('mode_reason')}); "
          f"verdict {rep['verdict']}")
    ok = audit.returncode == 0 and rep["verdict"] == "pass" and replay.get("mode") == "exact"
    if ok and not a.keep:
        shutil.rmtree(d, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
