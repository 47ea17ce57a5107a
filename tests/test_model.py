"""The certified model (issue 11): the potd-state-v1 hash, the checkpoint chain rules
(hostile committed content is a failed check, never a traceback), ``audit --model``, the
quick ``check-model`` command and the replay's end-state comparison."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from e2e import Env, checks

from auditor.chain import certify, check_chain, model_file_hash
from ledger.errors import MalformedError, UsageError
from prover.attacks import CraftedMomentum, _Rewriter
from prover.hashing import state_hash

H = [hashlib.sha256(bytes([i])).hexdigest() for i in range(64)]


def potd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ledger", *args], capture_output=True,
                          text=True, timeout=300)


# -- potd-state-v1 ------------------------------------------------------------------------

def test_state_hash_is_the_documented_framing() -> None:
    w, o = H[1], H[2]
    want = hashlib.sha256(b"potd-state-v1\n" + bytes([9]) + b"optimizer" + bytes([32])
                          + bytes.fromhex(o) + bytes([7]) + b"weights" + bytes([32])
                          + bytes.fromhex(w)).hexdigest()
    assert state_hash({"weights": w, "optimizer": o}) == want
    assert state_hash({"optimizer": o, "weights": w}) == want
    assert state_hash({"weights": o, "optimizer": w}) != want  # parts are named


@pytest.mark.parametrize("parts", [{"weights": "XY"}, {"weights": "abc"}, {"weights": 5},
                                   {"": H[0]}, {"w" * 256: H[0]}, {"wé": H[0]}])
def test_state_hash_rejects_hostile_parts(parts: dict[str, Any]) -> None:
    with pytest.raises(MalformedError):
        state_hash(parts)


# -- the chain rules on statement bodies ----------------------------------------------------

def _ckpt(i: int) -> dict[str, Any]:
    w, o = H[2 * i % 64], H[(2 * i + 1) % 64]
    return {"weights": f"{H[(i + 7) % 64]}.safetensors", "weights_hash": w,
            "optimizer": f"{H[(i + 9) % 64]}.safetensors", "optimizer_hash": o,
            "state": state_hash({"weights": w, "optimizer": o})}


def _run(n: int = 12, k: int = 5) -> tuple[dict[str, Any], list[dict[str, Any]],
                                              dict[str, Any]]:
    o = {"hyperparameters": {"k": k, "steps": n}, "recipe": {"config": {"k": k}}}
    steps: list[dict[str, Any]] = []
    for t in range(n):
        body: dict[str, Any] = {"step": t, "weights": H[(t + 30) % 64]}
        if (t + 1) % k == 0 or t == n - 1:
            body["checkpoint"] = _ckpt(t)
            body["weights"] = body["checkpoint"]["weights_hash"]
        steps.append(body)
    last = steps[-1]["checkpoint"]
    close = {"steps": n, "final_weights": last["weights_hash"], "final_state": last["state"]}
    return o, steps, close


def test_an_honest_chain_certifies_the_last_checkpoint() -> None:
    o, steps, close = _run()
    ch = check_chain(o, steps)
    assert ch.problems == [] and [c["step"] for c in ch.checkpoints] == [4, 9, 11]
    model, problems = certify(close, steps, ch)
    assert problems == [] and model is not None
    assert model["weights_hash"] == steps[-1]["weights"] and model["step"] == 11


def _hostile(name: str, o: dict[str, Any], steps: list[dict[str, Any]],
             close: dict[str, Any]) -> None:
    c = steps[4]["checkpoint"]
    if name == "not an object":
        steps[4]["checkpoint"] = ["x"]
    elif name == "null":
        steps[4]["checkpoint"] = None
    elif name == "missing field":
        del c["optimizer_hash"]
    elif name == "non-hex hash":
        c["weights_hash"] = "Z" * 64
    elif name == "hash not a string":
        c["state"] = 12
    elif name == "bad object name":
        c["weights"] = "../../etc/passwd"
    elif name == "state of other parts":
        c["state"] = H[0]
    elif name == "weights not the step's":
        steps[4]["weights"] = H[63]
    elif name == "missing checkpoint":
        del steps[9]["checkpoint"]
    elif name == "extra checkpoint":
        steps[2]["checkpoint"] = _ckpt(2)
        steps[2]["weights"] = steps[2]["checkpoint"]["weights_hash"]
    elif name == "no tail checkpoint":
        del steps[11]["checkpoint"]
    elif name == "k differs from config":
        o["recipe"]["config"]["k"] = 4
    elif name == "k zero":
        o["hyperparameters"]["k"] = 0
        o["recipe"]["config"]["k"] = 0
    elif name == "k not an int":
        o["hyperparameters"]["k"] = "5"
    elif name == "steps differ":
        o["hyperparameters"]["steps"] = 13


HOSTILE = ["not an object", "null", "missing field", "non-hex hash", "hash not a string",
           "bad object name", "state of other parts", "weights not the step's",
           "missing checkpoint", "extra checkpoint", "no tail checkpoint",
           "k differs from config", "k zero", "k not an int", "steps differ"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_checkpoints_are_problems_not_crashes(name: str) -> None:
    o, steps, close = _run()
    _hostile(name, o, steps, close)
    ch = check_chain(o, steps)
    assert ch.problems, name
    certify(close, steps, ch)  # returns, whatever it finds


@pytest.mark.parametrize("field,value", [("final_weights", H[5]), ("final_state", H[5]),
                                         ("final_state", None), ("steps", 11),
                                         ("final_weights", ["x"])])
def test_run_close_must_name_the_last_checkpoint(field: str, value: Any) -> None:
    o, steps, close = _run()
    close[field] = value
    if value is None:
        del close[field]
    model, problems = certify(close, steps, check_chain(o, steps))
    assert model is None and problems


def test_model_file_hash_refuses_pickle_and_garbage(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from prover.hashing import hash_tensors

    sd = {"a.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    save_file(sd, str(tmp_path / "m.safetensors"))
    assert model_file_hash(str(tmp_path / "m.safetensors"), "blake3") == hash_tensors(sd)
    (tmp_path / "p.bin").write_bytes(pickle.dumps({"x": 1}))
    (tmp_path / "g.bin").write_bytes(b"\xff" * 40)
    for name in ("p.bin", "g.bin", "missing.safetensors"):
        with pytest.raises(UsageError):
            model_file_hash(str(tmp_path / name), "blake3")


# -- end to end: a real log, real training, the real auditor ---------------------------------

class HostileCheckpoints(_Rewriter):
    """Well-signed statements whose checkpoints are hostile JSON."""

    def rewrite(self, steps: list[dict[str, Any]], close: dict[str, Any]) -> None:
        steps[4]["checkpoint"] = {}  # (a non-object the log itself refuses)
        del steps[9]["checkpoint"]["optimizer"]
        steps[14]["checkpoint"]["weights_hash"] = "not hex"
        steps[19]["checkpoint"] = {"weights": 5, "state": [1, 2]}


def test_hostile_checkpoints_fail_the_audit_cleanly(env: Env) -> None:
    s = env.train("hostile", cls=HostileCheckpoints)
    rep = env.audit(s.run_id, env.dir / "ev-hostile")
    assert rep["verdict"] == "fail"
    assert checks(rep)["checkpoints"] == "fail"
    failing = next(c for c in rep["checks"] if c["name"] == "checkpoints")
    assert len(failing["evidence"]["problems"]) == 4


def _final_object(ev: Path) -> Path:
    m = json.loads((ev / "manifest.json").read_text())
    return ev / "objects" / m["checkpoints"][-1]["weights"]


def test_audit_names_and_checks_the_model(env: Env) -> None:
    s = env.train()
    ev = env.dir / "ev-run"
    good, other = env.dir / "model.safetensors", env.dir / "other.safetensors"
    shutil.copyfile(_final_object(ev), good)
    m = json.loads((ev / "manifest.json").read_text())
    shutil.copyfile(ev / "objects" / m["checkpoints"][-2]["weights"], other)
    rep = env.audit(s.run_id, ev, samples=1, model=str(good))
    assert rep["verdict"] == "pass", [c for c in rep["checks"] if c["status"] != "pass"]
    assert rep["model"]["weights_hash"] == s.final_weights == m["checkpoints"][-1]["weights_hash"]
    assert rep["model"]["state"] == s.final_state and rep["model"]["file"]["match"]
    bad = env.audit(s.run_id, ev, samples=1, memorization_segments=1, model=str(other))
    assert bad["verdict"] == "fail" and checks(bad)["model"] == "fail"

    from auditor.render_html import render_html

    assert s.final_weights in render_html(rep)


def test_check_model_command_exit_codes(env: Env) -> None:
    s = env.train()
    ev = env.dir / "ev-run"
    good, other = env.dir / "model.safetensors", env.dir / "other.safetensors"
    shutil.copyfile(_final_object(ev), good)
    m = json.loads((ev / "manifest.json").read_text())
    shutil.copyfile(ev / "objects" / m["checkpoints"][0]["weights"], other)
    (env.dir / "model.pt").write_bytes(pickle.dumps({"x": 1}))
    open_only = env.session("unclosed")
    open_only.open()
    open_only._shutdown()  # run.open logged, never closed
    base = ["auditor", "check-model", "--log", env.url, "--vkey", str(env.log_key.verifier),
            "--state", str(env.dir / "st")]
    yes = potd(*base, "--run", s.run_id, "--model", str(good))
    assert yes.returncode == 0, yes.stdout + yes.stderr
    assert yes.stdout.startswith("yes:") and str(s.final_weights) in yes.stdout
    no = potd(*base, "--run", s.run_id, "--model", str(other), "--json")
    assert no.returncode == 1, no.stdout + no.stderr
    rep = json.loads(no.stdout)
    assert rep["answer"] == "no" and rep["model"]["file"]["match"] is False
    assert potd(*base, "--run", "ab" * 32, "--model", str(good)).returncode == 1
    unknown = potd(*base, "--run", open_only.run_id, "--model", str(good))
    assert unknown.returncode == 3, unknown.stdout + unknown.stderr
    pick = potd(*base, "--run", s.run_id, "--model", str(env.dir / "model.pt"))
    assert pick.returncode == 2 and "pickle" in pick.stderr
    assert potd(*base, "--run", s.run_id).returncode == 2
    audit_pickle = potd("auditor", "audit", "--log", env.url, "--vkey",
                        str(env.log_key.verifier), "--run", s.run_id, "--evidence", str(ev),
                        "--model", str(env.dir / "model.pt"))
    assert audit_pickle.returncode == 2 and "pickle" in audit_pickle.stderr


def test_crafted_momentum_fails_replay_in_tolerance_mode_too(env: Env) -> None:
    s = env.train("crafted", cls=CraftedMomentum)
    rep = env.audit(s.run_id, env.dir / "ev-crafted", tolerance=1e-4,
                    memorization_segments=1)
    assert checks(rep)["replay"] == "fail", checks(rep)
    worst = max(x["optimizer_distance"] or 0 for x in rep["replay"]["segments"])
    assert worst > 1e-4


def test_check_model_is_inconclusive_when_the_log_is_unreachable(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from auditor.model import check_model
    from ledger.client import LogClient
    from ledger.devserver import free_port
    from ledger.note import Signer

    save_file({"w": torch.zeros(2)}, str(tmp_path / "m.safetensors"))
    key = Signer.generate("potd.example/gone").verifier
    with LogClient(f"http://127.0.0.1:{free_port()}", key, retries=0,
                   state_dir=str(tmp_path / "st")) as c:
        rep = check_model(c, "ab" * 32, str(tmp_path / "m.safetensors"))
    assert rep["answer"] == "inconclusive" and rep["reason"]


# -- hostile evidence layouts: a failed check, never a crash --------------------------------

def test_layout_problems() -> None:
    from auditor.chain import optimizer_layout_problem, weights_layout_problem

    want = {"a": ("F32", [2, 3]), "b": ("F32", [3])}
    assert weights_layout_problem(dict(want), want) is None
    assert "not in" in str(weights_layout_problem({**want, "evil": ("F32", [1])}, want))
    assert "missing" in str(weights_layout_problem({"a": want["a"]}, want))
    assert weights_layout_problem({**want, "a": ("F64", [2, 3])}, want)
    assert weights_layout_problem({**want, "a": ("F32", [3, 2])}, want)
    params = [("F32", [2, 3]), ("F32", [3])]
    assert optimizer_layout_problem({"state.0.momentum_buffer": ("F32", [2, 3]),
                                     "state.1.step": ("F32", [])}, params) is None
    for bad in ({"state.2.m": ("F32", [3])}, {"state.x.m": ("F32", [3])},
                {"evil": ("F32", [3])}, {"state.1.m": ("F32", [])},
                {"state.0.m": ("F64", [2, 3])}):
        assert optimizer_layout_problem(bad, params), bad


@pytest.mark.parametrize("variant", ["extra", "shape", "dtype"])
def test_replay_of_a_misfit_state_is_an_error_not_a_crash(variant: str, tmp_path: Path) -> None:
    import torch

    from auditor.replay import SegmentJob, replay_segment
    from prover.evidence import EvidenceStore
    from prover.hashing import hash_tensors
    from prover.recipes import get_recipe

    r = get_recipe("digits-mlp", epochs=1)
    sd = dict(r.model().state_dict())
    if variant == "extra":
        sd["evil"] = torch.zeros(3)
    elif variant == "shape":
        sd["0.weight"] = torch.zeros(3, 3)
    else:
        sd["0.weight"] = sd["0.weight"].double()
    name = EvidenceStore(tmp_path).put(sd)
    job = SegmentJob(recipe=r.name, config=dict(r.config), seed=b"\0" * 32, n_examples=1437,
                     algorithm="blake3", evidence=str(tmp_path), start=0, end=0,
                     start_weights=name, start_weights_hash=hash_tensors(sd),
                     start_optimizer=None, start_optimizer_hash=None,
                     step_hashes=("00" * 32,), step_starts=((0, 0),), batches=((1, 2, 3),))
    res = replay_segment(job)
    assert not res.match and res.error and "fit the recipe" in res.error


class MisfitEvidence(_Rewriter):
    """A checkpoint (weights and step hash consistent, correctly signed) whose weights
    carry an extra tensor."""

    def rewrite(self, steps: list[dict[str, Any]], close: dict[str, Any]) -> None:
        import torch

        from prover.attacks import _splice

        sd = {**self.model.state_dict(), "evil": torch.zeros(4)}
        name, h = self.ship(sd)
        _splice(steps[24]["checkpoint"], name, h)
        steps[24]["weights"] = h


def test_misfit_evidence_fails_the_evidence_check(env: Env) -> None:
    s = env.train("misfit", cls=MisfitEvidence)
    rep = env.audit(s.run_id, env.dir / "ev-misfit")
    assert rep["verdict"] == "fail"
    ev = next(c for c in rep["checks"] if c["name"] == "evidence")
    assert ev["status"] == "fail" and "'evil' is not in the recipe's model" in ev["summary"]


def test_replay_optimizer_hash_is_the_evidence_hash() -> None:
    """The replay's end-state check hashes the live optimizer tensors; it must equal the
    hash of the state as the evidence stores it (flatten_optimizer), step after step."""
    import torch

    from auditor.replay import Trainee
    from prover.evidence import flatten_optimizer
    from prover.hashing import StateHasher
    from prover.recipes import get_recipe

    tr = Trainee(get_recipe("digits-mlp"))
    torch.manual_seed(0)
    model = tr.recipe.model()
    model, opt = tr.load(model.state_dict(), None)
    x, y = torch.rand(8, 64), torch.randint(0, 10, (8,))
    for _ in range(3):
        opt.zero_grad()
        tr.recipe.loss(model, x, y).backward()
        opt.step()
        for alg in ("blake3", "sha256"):
            assert tr.optimizer_hash(opt, alg) == StateHasher(alg).hash(flatten_optimizer(opt))
