"""The auditor: CLI and exit codes, public challenge, tolerance mode, workers, recipe
tampering, tampered SQLite logs, full-log verification."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from e2e import Env, checks  # noqa: F401

from auditor.audit import sample
from ledger.devserver import ServerProcess
from ledger.log import Log
from prover import recipes
from prover.attacks import ForgedCheckpoint
from prover.session import Batch, TrainingSession


def potd(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ledger", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_cli_audit_exit_codes_json_and_html(env: Env) -> None:
    s = env.train()
    forged = env.train("forged", cls=ForgedCheckpoint)
    vkey = str(env.log_key.verifier)
    base = ["auditor", "audit", "--log", env.url, "--vkey", vkey, "--state",
            str(env.dir / "st"), "--samples", "100"]
    ok = potd(*base, "--run", s.run_id, "--evidence", str(env.dir / "ev-run"),
              "--json", str(env.dir / "r.json"), "--html", str(env.dir / "r.html"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    rep = json.loads((env.dir / "r.json").read_text())
    assert rep["verdict"] == "pass" and rep["run"] == s.run_id
    assert "PASS" in ok.stdout.upper() and "r.html" in ok.stdout
    assert (env.dir / "r.html").read_text().count("<") > 50
    bad = potd(*base, "--run", forged.run_id, "--evidence", str(env.dir / "ev-forged"),
               "--json", str(env.dir / "f.json"))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert json.loads((env.dir / "f.json").read_text())["verdict"] == "fail"
    usage = potd("auditor", "audit", "--log", env.url)
    assert usage.returncode == 2


def test_public_challenge_is_rederivable(env: Env) -> None:
    s = env.train()
    a = env.audit(s.run_id, env.dir / "ev-run", samples=3, public_challenge=True)
    b = env.audit(s.run_id, env.dir / "ev-run", state="other", samples=3,
                  public_challenge=True)
    seg = [[x["start"] for x in r["replay"]["segments"]] for r in (a, b)]
    # 3 steps drawn, their segments, and the final segment (always replayed)
    assert seg[0] == seg[1] and 1 <= len(seg[0]) <= 4
    assert seg[0][-1] == a["replay"]["segments_total"] * 5 - 5  # digits-mlp: k = 5
    assert a["replay"]["steps_sampled"] == b["replay"]["steps_sampled"]
    assert a["replay"]["steps_drawn"] == 3
    assert a["replay"]["challenge"]["kind"] == "public"
    # auditor randomness differs between audits (with overwhelming probability)
    picks = {tuple(x["start"] for x in env.audit(s.run_id, env.dir / "ev-run", samples=2,
                                                 state=f"s{i}")["replay"]["segments"])
             for i in range(6)}
    assert len(picks) > 1
    assert a["replay"]["detection_probability"]["0.1"] == pytest.approx(1 - 0.9 ** 3, abs=1e-4)


def test_tolerance_mode_and_parallel_workers(env: Env) -> None:
    s = env.train()
    forged = env.train("forged", cls=ForgedCheckpoint)
    rep = env.audit(s.run_id, env.dir / "ev-run", tolerance=1e-4, workers=2, samples=4)
    assert rep["verdict"] == "pass", checks(rep)
    assert rep["replay"]["mode"] == "tolerance"
    for seg in rep["replay"]["segments"]:
        assert seg["distance"] is not None and seg["distance"] <= seg["tolerance"]
    bad = env.audit(forged.run_id, env.dir / "ev-forged", tolerance=1e-4)
    assert checks(bad)["replay"] == "fail"
    worst = max(x["distance"] for x in bad["replay"]["segments"] if x["distance"] is not None)
    assert worst > 1e-4


def test_recipe_changed_since_run_open_is_refused(env: Env, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "custom_recipes"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    src = Path(recipes.__file__).parent / "digits_mlp.py"
    (pkg / "mine.py").write_text(src.read_text().replace('name = "digits-mlp"',
                                                         'name = "mine"'))
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = "custom_recipes.mine:DigitsMLP"
    s = env.train(recipe=spec)
    assert env.audit(s.run_id, env.dir / "ev-run", samples=2, recipe=spec)["verdict"] == "pass"
    with (pkg / "mine.py").open("a") as f:
        f.write("\n# a later edit: the training code is not what was committed\n")
    rep = env.audit(s.run_id, env.dir / "ev-run", state="fresh", recipe=spec)
    assert checks(rep)["recipe"] == "fail" and rep["verdict"] == "fail"
    assert "changed since run.open" in next(c for c in rep["checks"]
                                             if c["name"] == "recipe")["summary"]


def _rewrite_log(env: Env, entries: list[bytes], name: str) -> None:
    db = env.dir / name
    log = Log.create(str(db), env.log_key)
    log.append(entries)
    log.store.close()
    port = env.server.port
    env.server.stop()
    env.server = ServerProcess(str(db), str(env.dir / "log.key"), port=port,
                               extra=["--open-registration"]).start()


def _entries(env: Env) -> list[bytes]:
    log = Log.open(str(env.dir / "log.db"))
    e = log.entries(0, log.size)
    log.store.close()
    return e


def test_truncated_and_regrown_log_is_caught(env: Env) -> None:
    s = env.train()
    assert env.audit(s.run_id, env.dir / "ev-run", samples=1)["verdict"] == "pass"
    entries = _entries(env)
    # truncate the tree and regrow it past its old size with other entries
    _rewrite_log(env, entries[:-5] + [b"other %d" % i for i in range(20)], "regrown.db")
    rep = env.audit(s.run_id, env.dir / "ev-run", samples=1)
    c = next(c for c in rep["checks"] if c["name"] == "log.checkpoint")
    assert c["status"] == "fail" and rep["verdict"] == "fail"
    assert c["evidence"]["old_checkpoint"] != c["evidence"]["new_checkpoint"]


def test_verify_log_and_runs_commands(env: Env) -> None:
    s = env.train()
    vkey = str(env.log_key.verifier)
    st = str(env.dir / "st")
    r = potd("auditor", "verify-log", "--log", env.url, "--vkey", vkey, "--state", st,
             "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["ok"] and res["size"] == len(s.plan) + 2
    r = potd("auditor", "runs", "--log", env.url, "--vkey", vkey, "--state", st, "--json")
    runs: list[dict[str, Any]] = json.loads(r.stdout)["runs"]
    assert [(x["run"], x["status"], x["steps"]) for x in runs] == [
        (s.run_id, "closed", len(s.plan))]
    # a tampered hash tile (not on the right edge, so the server still starts) is caught
    port = env.server.port
    env.server.stop()
    bad_db = env.dir / "tampered.db"
    with sqlite3.connect(env.dir / "log.db") as src, sqlite3.connect(bad_db) as dst:
        src.backup(dst)
    conn = sqlite3.connect(bad_db)
    row = conn.execute("SELECT data FROM hashes WHERE level = 0 AND block = 0").fetchone()
    data = bytearray(row[0])
    data[40] ^= 1  # leaf hash #1
    conn.execute("UPDATE hashes SET data = ? WHERE level = 0 AND block = 0", (bytes(data),))
    conn.commit()
    conn.close()
    env.server = ServerProcess(str(bad_db), str(env.dir / "log.key"), port=port,
                               extra=["--open-registration"]).start()
    r = potd("auditor", "verify-log", "--log", env.url, "--vkey", vkey, "--state", st)
    assert r.returncode == 1
    assert "tile/0/000" in r.stderr


def test_replay_reuses_one_model_without_carrying_state(env: Env) -> None:
    """One process replays the segments of an honest and a forged run, interleaved: the
    model is built once and refilled in place, yet every segment starts from exactly its
    own checked evidence (no state leaks from the run replayed before)."""
    honest = env.train()
    forged = env.train("forged", cls=ForgedCheckpoint)
    for i, (s, tag, verdict) in enumerate([(forged, "forged", "fail"), (honest, "run", "pass"),
                                           (forged, "forged", "fail"),
                                           (honest, "run", "pass")]):
        rep = env.audit(s.run_id, env.dir / f"ev-{tag}", state=f"st{i}")
        assert rep["verdict"] == verdict, checks(rep)
        assert checks(rep)["replay"] == ("fail" if verdict == "fail" else "pass")
        segs = rep["replay"]["segments"]
        assert len(segs) == rep["replay"]["segments_total"] == 9
        if verdict == "pass":
            assert all(x["match"] and x["steps_checked"] == 1 for x in segs)


def test_trainee_refills_in_place_and_rebuilds_for_other_layouts() -> None:
    import torch

    from auditor.replay import Trainee
    from prover.evidence import flatten_optimizer
    from prover.hashing import hash_tensors

    r = recipes.get_recipe("digits-mlp")
    data = r.data()
    states = []
    for seed in (0, 1):  # two real (model, optimizer) states a few SGD steps apart
        torch.manual_seed(seed)
        model = r.model()
        opt = r.optimizer(model)
        for step in range(2 + seed):
            recipes.train_step(r, model, opt, data.x[:32], data.y[:32], bytes(32), step)
        states.append(({k: v.clone() for k, v in model.state_dict().items()},
                       flatten_optimizer(opt)))
    (a, oa), (b, ob) = states
    kept = {k: v.clone() for k, v in {**a, **oa}.items()}
    tr = Trainee(r)
    m, o = tr.load(a, oa)
    assert all(torch.equal(m.state_dict()[k], a[k]) for k in a)
    assert tr.weights_hash("blake3") == hash_tensors(a) and tr.weights_hash("sha256") == \
        hash_tensors(a, "sha256")
    recipes.train_step(r, m, o, data.x[32:64], data.y[32:64], bytes(32), 9)
    assert all(torch.equal(v, kept[k]) for k, v in {**a, **oa}.items())  # evidence intact
    assert tr.weights_hash("blake3") == hash_tensors(m.state_dict())
    o.param_groups[0]["momentum"] = 0.0  # a stray change must not survive a refill
    m2, o2 = tr.load(b, ob)
    assert m2 is m and o2 is o and o.param_groups[0]["momentum"] == 0.9
    assert all(torch.equal(m.state_dict()[k], b[k]) for k in b)
    assert all(torch.equal(flatten_optimizer(o)[k], ob[k]) for k in ob)
    assert tr.weights_hash("blake3") == hash_tensors(b)
    m3, o3 = tr.load(a, None)  # a run's first segment: no optimizer state at all
    assert m3 is m and o3 is not o and flatten_optimizer(o3) == {}
    wide = {k: v.double() for k, v in a.items()}
    m4, o4 = tr.load(wide, None)
    assert m4 is not m and all(v.dtype == torch.float64 for v in m4.state_dict().values())
    assert all(torch.equal(m4.state_dict()[k], wide[k]) for k in a)
    assert tr.weights_hash("blake3") == hash_tensors(wide)


def test_calibrated_tolerance_compares_one_thread_with_the_default(env: Env) -> None:
    """A run trained with another thread count is replayed under a tolerance calibrated
    from the default vs the trainer's 1 thread (two different counts), and the auditor's
    thread count is left as it was."""
    import torch

    default = torch.get_num_threads()
    if default < 2:
        pytest.skip("needs 2 or more torch threads for the environments to differ")
    torch.set_num_threads(1)
    try:
        s = env.train("onethread")
    finally:
        torch.set_num_threads(default)
    rep = env.audit(s.run_id, env.dir / "ev-onethread", samples=2)
    assert rep["replay"]["mode"] == "tolerance"
    # the replay's own thread count against the trainer's recorded one (1)
    assert [t["threads"] for t in rep["calibration"]["replays"]] == [[default, 1]]
    assert torch.get_num_threads() == default
    assert rep["verdict"] == "pass", checks(rep)


class _ForgedLastSegment(ForgedCheckpoint):
    """Perturbs the weights at the last step: the certified model is not what the final
    segment's committed steps produce (every hash consistent with that lie)."""

    def _record(self, batch: Batch, loss: float) -> None:
        if batch.step == len(self.plan) - 1:
            with torch.no_grad():
                for p in self.model.parameters():
                    p.add_(torch.randn_like(p) * 1e-3)
        TrainingSession._record(self, batch, loss)


def test_the_final_segment_is_always_replayed(env: Env) -> None:
    s = env.train("last", cls=_ForgedLastSegment)
    # an auditor seed whose one drawn step lies outside the final segment (steps 40..44)
    seed = next(x for x in (bytes([i]) * 32 for i in range(256))
                if sample(x, 45, 1)[0] < 40)
    rep = env.audit(s.run_id, env.dir / "ev-last", samples=1, seed=seed)
    assert rep["replay"]["final_segment_added"] is True
    assert checks(rep)["replay"] == "fail" and rep["verdict"] == "fail"
    assert any(x["start"] == 40 and not x["match"] for x in rep["replay"]["segments"])
