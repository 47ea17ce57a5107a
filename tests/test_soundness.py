"""Soundness (issue 11): the replay sample over steps, the memorization sample from the
challenge, grinding evidence per identity, hostile committed content as failed checks."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from e2e import Env, checks

from auditor.audit import sample, step_sample
from auditor.replay import check_layout
from ledger.errors import MalformedError, UsageError
from ledger.note import Signer
from prover import attacks
from prover.evidence import EvidenceError, restore_optimizer
from prover.recipes import get_recipe
from prover.session import TrainingSession


def _uneven_ends(n: int = 45) -> list[int]:
    """Segment ends of the uneven-spacing attack: a checkpoint after every step but in
    one long stretch."""
    long = attacks.long_segment(n)
    return [-1] + [t for t in range(n) if t not in long or t == long[-1]]


def test_step_sample_hits_a_long_segment_as_often_as_its_steps() -> None:
    ends, n, r = _uneven_ends(), 45, 2
    long = ends.index(attacks.long_segment(n)[-1]) - 1   # index of the long segment
    segments = len(ends) - 1
    trials = 4000
    by_steps = by_segments = 0
    for i in range(trials):
        seed = hashlib.sha256(i.to_bytes(4, "big")).digest()
        drawn, picks, uncovered = step_sample(seed, ends, n, r)
        assert len(drawn) == r and not uncovered and len(picks) <= r
        by_steps += long in picks
        by_segments += long in sample(seed, segments, r)
    # exact: 1 - C(14, 2) / C(45, 2) = 0.908 over steps; 1 - C(14, 2) / C(15, 2) = 0.133
    assert by_steps / trials == pytest.approx(1 - 91 / 990, abs=0.025)
    assert by_segments / trials == pytest.approx(1 - 91 / 105, abs=0.025)
    # the attack scenario's fixed auditor seed draws it
    assert long in step_sample(b"\x07" * 32, ends, n, 2)[1]


def test_step_sample_deduplicates_and_reports_uncovered_steps() -> None:
    drawn, picks, uncovered = step_sample(b"s" * 32, [-1, 4, 9], 10, 100)
    assert drawn == list(range(10)) and picks == [0, 1] and uncovered == []
    drawn, picks, uncovered = step_sample(b"s" * 32, [-1, 4], 10, 100)
    assert picks == [0] and uncovered == [5, 6, 7, 8, 9]
    with pytest.raises(UsageError):
        step_sample(b"s" * 32, [-1, 4, 4], 10, 3)


def test_honest_runs_pass_for_several_seeds_and_samples_come_from_the_challenge(
        env: Env) -> None:
    for i in range(3):
        s = env.train(f"h{i}", s_rand=bytes([i + 1]) * 32, per_step_weights=i != 1)
        rep = env.audit(s.run_id, env.dir / f"ev-h{i}", state=f"st{i}", samples=3,
                        seed=bytes([9 + i]) * 32)
        assert rep["verdict"] == "pass", checks(rep)
        assert rep["replay"]["steps_drawn"] == 3
        assert rep["replay"]["detection_probability"]["0.1"] == pytest.approx(0.271,
                                                                              abs=1e-3)
        # earlier complete runs of the same trainer over the same data are listed, not
        # counted (the trainer could have published the one it liked best)
        g = next(c for c in rep["checks"] if c["name"] == "run.grinding")
        assert g["status"] == "pass" and len(g["evidence"]["complete_siblings"]) == i
        assert (f"{i} other complete run(s)" in g["summary"]) == (i > 0)
    # the memorization segments depend on the auditor's challenge, not the training seed
    picks = {tuple(m["start"] for m in env.audit(
        s.run_id, env.dir / "ev-h2", state=f"m{j}", samples=1, memorization_segments=2,
        seed=bytes([40 + j]) * 32)["memorization"]["segments"]) for j in range(4)}
    assert len(picks) > 1


def _ground(env: Env, tag: str, key: Signer, close: bool) -> None:
    s = env.session(tag)
    s.trainer = key
    s.open()
    if close:
        s.close()
    else:
        s._shutdown()


def test_grinding_counts_incomplete_runs_per_identity(env: Env) -> None:
    alice = env.trainer
    _ground(env, "g0", Signer.generate(alice.name), close=True)      # same identity
    _ground(env, "g1", Signer.generate("trainer.example/sybil"), close=False)  # other
    s = env.train()
    _ground(env, "g2", alice, close=False)  # opened after the run closed: no choice
    rep = env.audit(s.run_id, env.dir / "ev-run", samples=1)
    g = next(c for c in rep["checks"] if c["name"] == "run.grinding")
    assert g["status"] == "fail" and rep["verdict"] == "fail"
    assert [r["why"] for r in g["evidence"]["runs"]] == ["closed after 0 of 45 planned steps"]
    assert [r["identity"] for r in g["evidence"]["other_identities"]] == [
        "trainer.example/sybil"]
    assert "fresh identity per attempt" in g["summary"] and "other identities" in g["summary"]
    rep = env.audit(s.run_id, env.dir / "ev-run", state="tolerant", samples=1,
                    max_abandoned=1)
    g = next(c for c in rep["checks"] if c["name"] == "run.grinding")
    assert g["status"] == "warn" and rep["verdict"] == "pass"


def test_cli_fails_a_hostile_config_with_exit_1(env: Env) -> None:
    s = env.train("bs0", cls=attacks.ATTACKS["config-batch-size-0"])
    out = subprocess.run(
        [sys.executable, "-m", "ledger", "auditor", "audit", "--log", env.url, "--vkey",
         str(env.log_key.verifier), "--state", str(env.dir / "st"), "--run", s.run_id,
         "--evidence", str(env.dir / "ev-bs0"), "--json", str(env.dir / "r.json"), "-q"],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    rep = json.loads((env.dir / "r.json").read_text())
    assert checks(rep)["recipe"] == "fail" and "batch_size" in json.dumps(rep["checks"])


@pytest.mark.parametrize("config", [{"batch_size": 0}, {"epochs": -1}, {"k": True},
                                    {"lr": "nan"}, {"lr": [1]}, {"hidden": "big"},
                                    {"dropout": "1e999"}])
def test_recipe_config_is_type_and_range_checked(config: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        get_recipe("digits-mlp", **config)


def test_hostile_state_layouts_are_refused() -> None:
    model = torch.nn.Linear(3, 2)
    sd = model.state_dict()
    check_layout(sd, dict(sd), "weights")
    for bad in ({**sd, "extra": torch.zeros(1)}, {"weight": sd["weight"]},
                {**sd, "bias": torch.zeros(3)}, {**sd, "bias": torch.zeros(1, 2)}):
        with pytest.raises(EvidenceError):
            check_layout(sd, bad, "weights")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    restore_optimizer(opt, {"state.0.momentum_buffer": torch.zeros(2, 3)})
    for bad_opt in ({"state.0.momentum_buffer": torch.zeros(7)},
                    {"state.5.momentum_buffer": torch.zeros(2)},
                    {"state.x.momentum_buffer": torch.zeros(2)}):
        with pytest.raises(MalformedError):
            restore_optimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                              bad_opt)


def test_committed_hyperparameters_are_checked_field_by_field(env: Env) -> None:
    lies = [{"k": 7}, {"per_step_weights": False}, {"steps": 44}, {"lr": "0.5"},
            {"epochs": 2}, {"extra": 1}]
    for i, hp in enumerate(lies):
        s = env.train(f"hp{i}", cls=attacks.claimed("Lie", hyperparameters=hp))
        rep = env.audit(s.run_id, env.dir / f"ev-hp{i}", state=f"s{i}", samples=1,
                        memorization_segments=1)
        assert checks(rep)["hyperparameters"] == "fail", (hp, checks(rep))
        assert rep["verdict"] == "fail"


class _UnknownHash(TrainingSession):
    def open_body(self, body: dict[str, object]) -> dict[str, object]:
        return {**body, "weights_hash": "md5"}


def test_unknown_weights_hash_and_no_samples_are_not_crashes(env: Env) -> None:
    s = env.train("md5", cls=_UnknownHash)
    rep = env.audit(s.run_id, env.dir / "ev-md5", samples=1)
    assert checks(rep)["init"] == "fail" and rep["verdict"] == "fail"
    s = env.train()
    rep = env.audit(s.run_id, env.dir / "ev-run", state="zero", samples=0)
    assert checks(rep)["replay"] == "skip" and rep["verdict"] == "inconclusive"


@pytest.mark.parametrize("numbers", [[0, 2, 3], [1, 2, 3], [0, 1, 3]])
def test_step_numbers_with_gaps_fail_replay(numbers: list[int]) -> None:
    # (the statement format already makes every step number a non-negative int, seq + 1;
    # a statement missing from the log, flagged by run.chain, leaves a gap)
    from auditor.audit import Audit, AuditOptions, _Stop
    from auditor.replay_check import ReplayCheck
    from auditor.runs import RunView
    from ledger.statement import build_statement, parse_statement

    key, h = Signer.generate("trainer.example/alice"), "ab" * 32
    o = parse_statement(build_statement("run.open", None, 0, {
        "seed_commitment": h, "dataset": {"root": h, "size": 3}}, key))
    view = RunView(o.run, [(0, o)] + [(i + 1, parse_statement(build_statement(
        "step", o.run, t + 1, {"step": t, "prev": h, "batch_root": h}, key)))
        for i, t in enumerate(numbers)])
    close = parse_statement(build_statement("run.close", o.run, 5, {"prev": h}, key))
    audit = Audit(None, AuditOptions(run=o.run, evidence="-"))  # type: ignore[arg-type]
    with pytest.raises(_Stop):
        ReplayCheck(audit, view, None, o, close, None).run()  # type: ignore[arg-type]
    assert checks(audit.report) == {"replay": "fail"}


def test_steps_after_the_last_checkpoint_fail_replay_in_both_modes(env: Env) -> None:
    s = env.train("tail", cls=attacks.ATTACKS["no-final-checkpoint"])
    ev = env.dir / "ev-tail"
    # a challenge whose one drawn step lies in the tail (steps 40..44): no segment at all
    seed = next(x for x in (bytes([i]) * 32 for i in range(256))
                if step_sample(x, [-1, 4, 9, 14, 19, 24, 29, 34, 39], 45, 1)[2])
    for i, kw in enumerate([{}, {"tolerance": 1e-4}]):
        rep = env.audit(s.run_id, ev, state=f"s{i}", samples=1, seed=seed, **kw)
        # (a chain check that requires a final checkpoint may fail the evidence first)
        assert checks(rep)["replay"] == "fail" and rep["verdict"] == "fail"


def test_a_committed_manifest_of_the_wrong_shape_fails_evidence(tmp_path: Path) -> None:
    from auditor.audit import Audit, AuditOptions
    from auditor.replay_check import ReplayCheck
    from auditor.runs import RunView
    from ledger.statement import build_statement, parse_statement

    data = b'{"checkpoints":"abc"}\n'
    (tmp_path / "manifest.json").write_bytes(data)
    key, h = Signer.generate("trainer.example/alice"), "ab" * 32
    o = parse_statement(build_statement("run.open", None, 0, {
        "seed_commitment": h, "dataset": {"root": h, "size": 3}}, key))
    close = parse_statement(build_statement("run.close", o.run, 1, {
        "prev": h, "manifest": hashlib.sha256(data).hexdigest()}, key))
    audit = Audit(None, AuditOptions(run=o.run, evidence=str(tmp_path)))  # type: ignore[arg-type]
    rc = ReplayCheck(audit, RunView(o.run, [(0, o), (1, close)]), None, o, close,
                     None)  # type: ignore[arg-type]
    from auditor.chain import check_chain

    assert rc._evidence(check_chain(o.body, []), None) is None  # type: ignore[arg-type]
    assert checks(audit.report) == {"evidence": "fail"}
