"""A run's life outside the happy path: checks before run.open (nothing logged when they
fail), an honest abort and what auditors make of it, and a killed run resumed by
retraining from its last checkpoint (docs/protocol.md §4.4, §4.5, §5)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from e2e import Env, checks
from torch import nn

from ledger.client import LogClient
from ledger.devserver import ServerProcess
from ledger.errors import StorageError
from ledger.note import Signer
from ledger.statement import build_statement
from prover import preflight as pf
from prover.derive import derive_seed, init_seed, permutation, schedule
from prover.hashing import hash_tensors
from prover.recipes import seed_rng, train_step
from prover.recipes.digits_mlp import DigitsMLP
from prover.resume import abort_run, resume_session
from prover.session import TrainingSession
from prover.spool import Spool


def log_size(e: Env) -> int:
    with e.client() as c:
        return c.checkpoint().size


class NamedGroups(DigitsMLP):
    """Builds parameter groups from named parameters: crashed the old optimizer probe
    (run on ``nn.Linear(1, 1)``), which has no ``0.weight``."""

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        named = dict(model.named_parameters())
        first = [named["0.weight"], named["0.bias"]]
        rest = [p for n, p in named.items() if not n.startswith("0.")]
        return torch.optim.SGD([{"params": first}, {"params": rest}],
                               lr=float(self.config["lr"]), momentum=0.9)


class CrashesInLoss(DigitsMLP):
    def per_example_loss(self, model: nn.Module, x: torch.Tensor,
                         y: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("shape mismatch in my loss")


def test_wrong_log_key_fails_before_anything_is_logged(env: Env) -> None:
    wrong = Signer.generate("potd.example/test-log")  # same name, another key
    s = TrainingSession(DigitsMLP(epochs=1), LogClient(env.url, wrong.verifier), env.trainer,
                        env.dir / "ev", env.dir / "run.spool")
    with pytest.raises(pf.PreflightError, match="does not verify") as e:
        s.open()
    assert "--vkey" in (e.value.hint or "")
    assert log_size(env) == 0


def test_signer_not_allowed_fails_before_anything_is_logged(env: Env, tmp_path: Path) -> None:
    closed = ServerProcess(str(env.dir / "log.db"), str(env.dir / "log.key"),
                           log_file=str(tmp_path / "closed.log"))
    env.server.stop()
    env.server = closed.start()  # the same log, without open registration
    s = env.session()
    with pytest.raises(pf.PreflightError, match="does not let") as e:
        s.open()
    assert "potd ledger allow" in (e.value.hint or "")
    assert log_size(env) == 0


def test_recipe_crash_fails_before_anything_is_logged(env: Env) -> None:
    s = TrainingSession(CrashesInLoss(epochs=1), env.client(), env.trainer, env.dir / "ev",
                        env.dir / "run.spool")
    with pytest.raises(pf.PreflightError, match="shape mismatch in my loss"):
        s.open()
    assert log_size(env) == 0


def test_optimizer_built_on_the_real_model_and_init_unchanged(env: Env) -> None:
    """Parameter groups by name work; the dry step leaves the RNG alone, so the committed
    initial weights are those the seed gives (checked by the audit's ``init``)."""
    s = TrainingSession(NamedGroups(epochs=1), env.client(), env.trainer, env.dir / "ev",
                        env.dir / "run.spool")
    with s:
        for b in s.batches():
            s.train_step(b)
    assert s.final_weights
    torch.manual_seed(init_seed(s.seed))
    assert hash_tensors(NamedGroups(epochs=1).model().state_dict(), "blake3") == s.init_weights


def test_evidence_dir_and_disk_space(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    (env.dir / "file").write_text("x")
    with pytest.raises(pf.PreflightError, match="evidence directory"):
        env.session().__class__(DigitsMLP(epochs=1), env.client(), env.trainer,
                                env.dir / "file" / "ev", env.dir / "run.spool")
    monkeypatch.setattr(pf, "DISK_MARGIN", 1 << 60)
    with pytest.raises(pf.PreflightError, match="needs about"):
        env.session().open()
    assert log_size(env) == 0
    probe = pf.check_recipe(DigitsMLP(epochs=1))
    assert probe.optimizer == "SGD" and probe.weights_bytes > 4 * 64 * 128
    assert probe.optimizer_bytes == probe.weights_bytes  # SGD: a momentum per parameter
    assert pf.evidence_bytes(probe, 45, 5) == probe.weights_bytes * 19  # init + 9 x 2


def test_exception_in_the_loop_leaves_the_run_open_and_says_how_to_go_on(env: Env) -> None:
    with pytest.raises(ValueError) as e, env.session() as s:
        for b in s.batches():
            s.train_step(b)
            if b.step == 3:
                raise ValueError("my logging code broke")
    notes = "\n".join(getattr(e.value, "__notes__", []))
    assert "left open" in notes and "resume --train" in notes and "prover abort" in notes
    run = s.run_id
    # aborting it afterwards is honest and final
    st = abort_run(env.dir / "run.spool", env.trainer, "logging bug", client=env.client())
    assert st.kind == "run.close" and st.body["reason"] == "logging bug"
    assert st.body["steps"] == 4 and st.body["s_rand"] == s._s_rand.hex()
    r = env.audit(run, env.dir / "ev-run")
    assert checks(r)["run.closed"] == "fail" and r["verdict"] == "fail"


def test_abort_then_new_run_is_flagged_as_grinding(env: Env) -> None:
    s = env.session("aborted")
    s.open()
    for b in s.batches():
        s.train_step(b)
        if b.step == 6:
            break
    s.abort("loss diverged")
    done = env.train("second")
    r = env.audit(done.run_id, env.dir / "ev-second")
    g = next(c for c in r["checks"] if c["name"] == "run.grinding")
    assert g["status"] == "fail" and r["verdict"] == "fail"
    assert g["evidence"]["aborted"] == 1
    row = g["evidence"]["runs"][0]
    assert row["status"] == "aborted" and row["reason"] == "loss diverged"
    assert row["steps_logged"] == 7 and row["s_rand_revealed"] is True
    assert "1 aborted" in g["summary"]
    r = env.audit(done.run_id, env.dir / "ev-second", state="state2", max_abandoned=1)
    assert checks(r)["run.grinding"] == "warn" and r["verdict"] == "pass"


TRAIN_AND_DIE = r"""
import sys, os
from ledger.client import LogClient
from ledger.note import Signer
from prover.recipes import get_recipe
from prover.session import TrainingSession
url, vkey, tkey, d, flush = sys.argv[1:6]
s = TrainingSession(get_recipe("digits-mlp", epochs=1), LogClient(url, vkey),
                    Signer.parse(open(tkey).read()), d + "/ev", d + "/run.spool")
s.open()
print(s.run_id, flush=True)
for b in s.batches():
    s.train_step(b)
    if b.step == 31:  # flushed: steps 30 and 31 are spooled past the checkpoint at 29;
        if flush == "1":  # else whatever prefix reached the commit process
            s.flush()
        os.kill(os.getpid(), 9)
"""


def uninterrupted_final(spool: Path) -> str:
    """The final weights of an uninterrupted run with the spooled seed: the recipe's own
    steps, in one process, from the initial weights."""
    sp = Spool(spool)
    m = sp.meta()
    sp.close()
    r = DigitsMLP(**json.loads(m["config"]))
    from prover.hashing import example_hashes, merkle_root_hex

    data = r.data()
    root = merkle_root_hex(example_hashes(data.x, data.y))
    seed = derive_seed(bytes.fromhex(root), bytes.fromhex(m["s_rand"]), bytes.fromhex(m["beacon"]))
    seed_rng(init_seed(seed))
    model = r.model()
    opt = r.optimizer(model)
    orders: dict[int, list[int]] = {}
    for step, epoch, off in schedule(len(data.x), r.batch_size, r.epochs):
        order = orders.setdefault(epoch, permutation(seed, len(data.x), epoch))
        idx = torch.tensor(order[off:off + r.batch_size])
        train_step(r, model, opt, data.x[idx], data.y[idx], seed, step)
    return hash_tensors(model.state_dict(), "blake3")


def _kill_mid_run(env: Env, flush: bool = True) -> tuple[str, Path]:
    tkey = env.dir / "trainer.key"
    tkey.write_text(env.trainer.private_string())
    p = subprocess.run([sys.executable, "-c", TRAIN_AND_DIE, env.url, str(env.log_key.verifier),
                        str(tkey), str(env.dir), "1" if flush else "0"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr
    return p.stdout.split()[0], tkey


@pytest.mark.parametrize("flushed", [True, False])
def test_killed_run_resumed_with_train_is_bit_identical_and_audits(env: Env,
                                                                   flushed: bool) -> None:
    run, tkey = _kill_mid_run(env, flushed)
    spool = env.dir / "run.spool"
    r = subprocess.run([sys.executable, "-m", "ledger", "prover", "resume", "--train",
                        "--spool", str(spool), "--key", str(tkey)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    if flushed:
        assert "resuming at step 30 of 45" in r.stdout
    sp = Spool(spool)
    last: Any = json.loads(sp.statements()[-1][1])
    sp.close()
    assert last["kind"] == "run.close" and last["body"]["steps"] == 45
    assert last["body"]["final_weights"] == uninterrupted_final(spool)
    rep = env.audit(run, env.dir / "ev", samples=1000)  # every segment replayed, exact
    assert rep["verdict"] == "pass", [c for c in rep["checks"] if c["status"] != "pass"]
    assert checks(rep)["replay"] == "pass"


def test_resume_refuses_to_contradict_a_spooled_statement(env: Env) -> None:
    """A spooled statement past the checkpoint that retraining does not reproduce (here:
    forged into the spool) stops the resume before anything different is built on it."""
    run, _ = _kill_mid_run(env)
    spool = env.dir / "run.spool"
    sp = Spool(spool)
    seq, data = sp.statements()[-1]
    st = json.loads(data)
    body = {**st["body"], "loss": "0.5"}
    forged = build_statement("step", run, seq, body, env.trainer)
    sp.conn.execute("UPDATE statements SET data=?, log_index=NULL WHERE seq=?", (forged, seq))
    sp.close()
    sess = resume_session(spool, env.trainer, client=env.client())
    with pytest.raises(StorageError, match="different statement"):
        for b in sess.batches():
            sess.train_step(b)
        sess.close()


def test_cli_train_with_a_wrong_vkey_logs_nothing(env: Env) -> None:
    tkey = env.dir / "trainer.key"
    tkey.write_text(env.trainer.private_string())
    wrong = Signer.generate("potd.example/test-log").verifier
    r = subprocess.run([sys.executable, "-m", "ledger", "prover", "train", "--recipe",
                        "digits-mlp", "--epochs", "1", "--log", env.url, "--vkey", str(wrong),
                        "--key", str(tkey), "--evidence", str(env.dir / "ev")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "--vkey" in r.stderr and "nothing was logged" in r.stderr
    assert log_size(env) == 0


def test_cli_abort_of_a_killed_run(env: Env) -> None:
    run, tkey = _kill_mid_run(env)
    r = subprocess.run([sys.executable, "-m", "ledger", "prover", "abort", "--spool",
                        str(env.dir / "run.spool"), "--key", str(tkey), "--reason",
                        "node lost"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "aborted after 32 steps (node lost)" in r.stdout
    with env.client() as c:
        cp = c.checkpoint()
        last = json.loads(c.entries(cp.size - 1, cp.size, cp)[0])
    assert last["kind"] == "run.close" and last["run"] == run
    assert last["body"]["reason"] == "node lost" and last["body"]["steps"] == 32
    # a second abort, or a resume, of the closed run is refused
    r = subprocess.run([sys.executable, "-m", "ledger", "prover", "resume", "--train",
                        "--spool", str(env.dir / "run.spool"), "--key", str(tkey)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "already closed" in r.stderr


def test_resume_after_the_last_step_only_closes(env: Env) -> None:
    """Killed between the last step and run.close: nothing to retrain; the close names
    the last checkpoint, as an uninterrupted run's would."""
    s = env.session()
    s.open()
    for b in s.batches():
        s.train_step(b)
    s.flush()
    s._shutdown()
    r = resume_session(env.dir / "run.spool", env.trainer, client=env.client())
    assert r.start_step == 45 and not list(r.batches())
    r.close()
    assert r.final_weights == uninterrupted_final(env.dir / "run.spool")
    rep = env.audit(r.run_id, env.dir / "ev-run", samples=3)
    assert rep["verdict"] == "pass", [c for c in rep["checks"] if c["status"] != "pass"]


@pytest.fixture
def tenv(tmp_path: Path) -> Any:
    from e2e import make_env

    yield from make_env(tmp_path, "--timestamps")


def test_drand_run_resumed_keeps_its_beacon_and_public_challenge(tenv: Env) -> None:
    import time

    from ledger.beacon_client import BeaconClient
    from ledger.beacon_server import BeaconServer
    from ledger.drand import BeaconKey

    srv = BeaconServer(BeaconKey.generate(1, int(time.time()) - 5)).start()
    try:
        s = tenv.session(beacon=BeaconClient(srv.url, srv.info), beacon_lead=3.0)
        s.open()
        for b in s.batches():
            s.train_step(b)
            if b.step == 22:
                break
        s.flush()
        s._shutdown()
        with pytest.raises(Exception, match="drand beacon"):
            resume_session(tenv.dir / "run.spool", tenv.trainer, client=tenv.client())
        r = resume_session(tenv.dir / "run.spool", tenv.trainer, client=tenv.client(),
                           beacon=BeaconClient(srv.url, srv.info), beacon_lead=3.0)
        for b in r.batches():
            r.train_step(b)
        r.close()
        rep = tenv.audit(r.run_id, tenv.dir / "ev-run", beacon_chain=srv.info,
                         public_challenge=True, require_drand=True)
        assert rep["verdict"] == "pass", [c for c in rep["checks"] if c["status"] != "pass"]
    finally:
        srv.stop()
