#!/usr/bin/env python3
"""The attack suite: one adversary per row of docs/protocol.md §6, each against a real log server
(SQLite, loopback port), a real training run and the real auditor.

Prints a table (attack, expected check, verdict, the check that caught it) and exits
non-zero if the honest run does not pass or any attack is not caught.

    .venv/bin/python scripts/attacks.py            # all scenarios
    .venv/bin/python scripts/attacks.py -k pickle  # those whose name contains "pickle"
    .venv/bin/python scripts/attacks.py --json attacks.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from auditor.audit import Audit, AuditOptions  # noqa: E402
from ledger.beacon_client import BeaconClient  # noqa: E402
from ledger.beacon_server import BeaconServer  # noqa: E402
from ledger.client import LogClient, LogRejected  # noqa: E402
from ledger.cosignature import count_cosignatures  # noqa: E402
from ledger.devserver import ServerProcess, free_port  # noqa: E402
from ledger.drand import BeaconKey  # noqa: E402
from ledger.log import Log  # noqa: E402
from ledger.merkle import leaf_hash  # noqa: E402
from ledger.note import (  # noqa: E402
    ALG_COSIGNATURE_V1,
    SignedCheckpoint,
    Signer,
    open_checkpoint,
)
from ledger.statement import build_statement, run_id  # noqa: E402
from ledger.witness import WitnessError  # noqa: E402
from ledger.witness_client import request_cosignature  # noqa: E402
from prover.attacks import (  # noqa: E402
    ATTACKS,
    OperatorGroundBeacon,
    OperatorGroundDrand,
    StaleChallengeRound,
    StaleDrandRound,
    StaleRoundBackdated,
    trigger_rate,
)
from prover.recipes import get_recipe  # noqa: E402
from prover.session import TrainingSession  # noqa: E402

AUDITOR_SEED = b"\x07" * 32  # the auditor's randomness in every scenario (reproducible)
RECIPE = {"epochs": 1}  # digits-mlp, 45 steps, a checkpoint every 5


class Bench:
    """A log operator, a trainer and an auditor, in one temporary directory."""

    def __init__(self, root: Path, name: str, log_flags: Sequence[str] = ()) -> None:
        self.dir = root / name
        self.log_flags = list(log_flags)
        self.beacon: BeaconServer | None = None
        self.witness: WitnessProcess | None = None
        self.dir.mkdir(parents=True)
        self.log_key = Signer.generate("potd.example/attack-log")
        (self.dir / "log.key").write_text(self.log_key.private_string())
        self.db = str(self.dir / "log.db")
        Log.create(self.db, self.log_key).store.close()
        self.trainer = Signer.generate("trainer.example/alice")
        self.server = ServerProcess(self.db, str(self.dir / "log.key"),
                                    extra=["--open-registration", *self.log_flags],
                                    log_file=str(self.dir / "server.log")).start()
        self.state = str(self.dir / "auditor-state")

    def client(self) -> LogClient:
        return LogClient(self.server.url, self.log_key.verifier)

    def beacon_client(self) -> BeaconClient:
        """A local drand-compatible beacon (1 s rounds), started on first use."""
        if self.beacon is None:
            self.beacon = BeaconServer(BeaconKey.generate(1, int(time.time()) - 5)).start()
        return BeaconClient(self.beacon.url, self.beacon.info)

    def train(self, cls: type[TrainingSession] = TrainingSession, tag: str = "run",
              trainer: Signer | None = None, drand: bool = False) -> tuple[str, str]:
        ev = str(self.dir / f"evidence-{tag}")
        beacon: dict[str, Any] = {}
        if drand:
            beacon = {"beacon": self.beacon_client(), "beacon_lead": 3.0}
            if self.witness is not None:
                beacon.update(time_witnesses=[self.witness.key.verifier], time_quorum=1)
        sess = cls(get_recipe("digits-mlp", **RECIPE), self.client(), trainer or self.trainer,
                   ev, str(self.dir / f"{tag}.spool"), **beacon)
        sess.open()
        for b in sess.batches():
            sess.train_step(b)
        sess.close()
        self.session = sess
        return sess.run_id, ev

    def audit(self, run: str, evidence: str, *, public: bool = False,
              require_drand: bool = False, samples: int = 1000, **policy: Any
              ) -> dict[str, Any]:
        client = LogClient(self.server.url, self.log_key.verifier, state_dir=self.state,
                           proofs="tiles", **policy)
        chain = self.beacon.info if self.beacon else None
        with client:
            return Audit(client, AuditOptions(
                run=run, evidence=evidence, samples=samples, seed=AUDITOR_SEED,
                public_challenge=public, beacon_chain=chain,
                require_drand=require_drand)).run()

    def restart_with(self, db: str, extra: Sequence[str] = ()) -> None:
        """The operator swaps the database behind the same URL (port)."""
        self.server.stop()
        self.server = ServerProcess(db, str(self.dir / "log.key"), port=self.server.port,
                                    extra=["--open-registration", *self.log_flags, *extra],
                                    log_file=str(self.dir / "server.log")).start()

    def rebuild(self, entries: list[bytes], name: str) -> str:
        """A new log with the same key holding ``entries``: a rewritten history."""
        db = str(self.dir / name)
        log = Log.create(db, self.log_key)
        log.append(entries)
        log.store.close()
        return db

    def close(self) -> None:
        self.server.stop()
        if self.beacon is not None:
            self.beacon.stop()
        if self.witness is not None:
            self.witness.stop()

    def with_witness(self) -> dict[str, Any]:
        """Start a witness, restart the log sending it every checkpoint; the auditor's
        policy that goes with it."""
        self.witness = WitnessProcess(self.dir, self.log_key)
        self.restart_with(self.db, ["--witness", f"{self.witness.url}={self.witness.key.verifier}"])
        return {"witnesses": [self.witness.key.verifier], "quorum": 1}


@dataclass
class Scenario:
    name: str
    threat: str
    expect: tuple[str, ...]          # checks that should catch it (any of them)
    run: Callable[[Bench], dict[str, Any]]
    log_flags: tuple[str, ...] = ()  # extra `potd ledger serve` flags


def _entries(b: Bench) -> list[bytes]:
    log = Log.open(b.db)
    out = log.entries(0, log.size)
    log.store.close()
    return out


def honest(b: Bench) -> dict[str, Any]:
    return b.audit(*b.train())


def trainer_attack(name: str) -> Callable[[Bench], dict[str, Any]]:
    def go(b: Bench) -> dict[str, Any]:
        return b.audit(*b.train(ATTACKS[name]))
    return go


def shipped_attack(name: str) -> Callable[[Bench], dict[str, Any]]:
    """A trainer that ships another model than it trained; the report records how well
    the shipped model's backdoor works (2x2 trigger patch -> class 0)."""
    def go(b: Bench) -> dict[str, Any]:
        rep = b.audit(*b.train(ATTACKS[name]))
        shipped = getattr(b.session, "shipped", None)
        if shipped is not None:
            s = b.session
            rep["backdoor_trigger_rate"] = trigger_rate(s.recipe, shipped, s.data)
        return rep
    return go


def other_runs_model(b: Bench) -> dict[str, Any]:
    _, other = b.train(tag="other")  # an honest run whose final model the attacker ships
    cls = type("OtherRunsModelFrom", (ATTACKS["other-runs-model"],), {"source": other})
    return b.audit(*b.train(cls))


UNEVEN_SAMPLES = 2


def uneven_checkpoints(b: Bench) -> dict[str, Any]:
    # a small sample (2 steps): drawn over steps, it lands in the long forged segment
    # with probability 1 - C(14,2)/C(45,2) = 0.91 (uniform over the 15 segments: 0.13);
    # the fixed auditor seed makes this run deterministic
    return b.audit(*b.train(ATTACKS["uneven-checkpoints"]), samples=UNEVEN_SAMPLES)


def seed_grinding(b: Bench) -> dict[str, Any]:
    # open runs, look at the seed, abandon the ones the trainer does not like
    for i in range(2):
        s = TrainingSession(get_recipe("digits-mlp", **RECIPE), b.client(), b.trainer,
                            str(b.dir / f"ev-ground-{i}"), str(b.dir / f"ground-{i}.spool"))
        s.open()
        s._shutdown()
    return b.audit(*b.train())


def _ground(b: Bench, tag: str, trainer: Signer, close: bool) -> None:
    """Open a run (its seed is then fixed and visible), and abandon it: closed at once
    with no step, or left open."""
    s = TrainingSession(get_recipe("digits-mlp", **RECIPE), b.client(), trainer,
                        str(b.dir / f"ev-{tag}"), str(b.dir / f"{tag}.spool"))
    s.open()
    if close:
        s.close()
    else:
        s._shutdown()


def grinding_closed_early(b: Bench) -> dict[str, Any]:
    # the runs whose seed the trainer did not like are closed properly, with 0 steps
    for i in range(2):
        _ground(b, f"ground-{i}", b.trainer, close=True)
    return b.audit(*b.train())


def grinding_second_key(b: Bench) -> dict[str, Any]:
    # each attempt under a fresh key of the same identity (same key name, new key id)
    for i in range(2):
        _ground(b, f"ground-{i}", Signer.generate(b.trainer.name), close=i == 0)
    return b.audit(*b.train())


def aborted_run(b: Bench) -> dict[str, Any]:
    # an honest abort: a few steps (init and order seen), a reason, s_rand revealed; then
    # a new run over the same data by the same identity
    s = TrainingSession(get_recipe("digits-mlp", **RECIPE), b.client(), b.trainer,
                        str(b.dir / "ev-aborted"), str(b.dir / "aborted.spool"))
    s.open()
    for batch in s.batches():
        s.train_step(batch)
        if batch.step == 2:
            break
    s.abort("loss curve looked bad")
    return b.audit(*b.train())


def resumed_run(b: Bench) -> dict[str, Any]:
    # the trainer dies after step 22 (its spool and evidence survive) and the run is
    # continued from its last checkpoint (step 19) with `potd prover resume --train`
    from prover.resume import resume_session

    ev, spool = str(b.dir / "evidence-resumed"), str(b.dir / "resumed.spool")
    s = TrainingSession(get_recipe("digits-mlp", **RECIPE), b.client(), b.trainer, ev, spool)
    s.open()
    for batch in s.batches():
        s.train_step(batch)
        if batch.step == 22:
            break
    s.flush()
    s._shutdown()  # the process is gone: the run stays open
    r = resume_session(spool, b.trainer, client=b.client())
    for batch in r.batches():
        r.train_step(batch)
    r.close()
    return b.audit(r.run_id, ev)


def forged_statement(b: Bench) -> dict[str, Any]:
    run, ev = b.train()
    entries = _entries(b)
    mallory = Signer.generate("trainer.example/mallory")
    victim = str(b.trainer.verifier)
    # a statement for alice's run, signed by mallory but claiming alice as the signer:
    # a copy of one of alice's steps with a better loss, appended after her run.close
    step = json.loads(entries[len(entries) // 2])["body"]
    step["loss"] = "0.001"
    step["step"] = len(entries) - 2  # seq = step + 1
    step["prev"] = leaf_hash(entries[-1]).hex()
    forged = json.loads(build_statement("step", run, len(entries) - 1, step, mallory))
    forged["signer"] = victim
    data = json.dumps(forged, sort_keys=True, separators=(",", ":")).encode()
    try:
        b.client().add(data)
        refused = None
    except LogRejected as e:
        refused = e.status
    # an honest log refuses it; a colluding operator writes it anyway
    db = b.rebuild(entries + [data], "colluding.db")
    b.restart_with(db)
    rep = b.audit(run, ev)
    rep["log_refused_with"] = refused
    return rep


def operator_edit(b: Bench) -> dict[str, Any]:
    run, ev = b.train()
    first = b.audit(run, ev)  # the auditor stores the checkpoint it verified
    entries = _entries(b)
    i = len(entries) // 2
    entries[i] = entries[i].replace(b'"loss":"', b'"loss":"0')
    b.restart_with(b.rebuild(entries, "edited.db"))
    rep = b.audit(run, ev)
    rep["first_verdict"] = first["verdict"]
    return rep


def operator_remove(b: Bench) -> dict[str, Any]:
    run, ev = b.train()
    first = b.audit(run, ev)
    entries = _entries(b)
    del entries[len(entries) // 2]
    b.restart_with(b.rebuild(entries, "removed.db"))
    rep = b.audit(run, ev)
    rep["first_verdict"] = first["verdict"]
    return rep


def operator_rollback(b: Bench) -> dict[str, Any]:
    run, ev = b.train()
    entries = _entries(b)
    first = b.audit(run, ev)
    b.restart_with(b.rebuild(entries[: len(entries) - 3], "rolled-back.db"))
    rep = b.audit(run, ev)
    rep["first_verdict"] = first["verdict"]
    return rep


class _Payload:
    """Unpickling this would run code: it would create a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def evidence_pickle(b: Bench) -> dict[str, Any]:
    import pickle

    run, ev = b.train()
    manifest = json.loads((Path(ev) / "manifest.json").read_text())
    target = Path(ev) / "objects" / manifest["checkpoints"][2]["weights"]
    marker = b.dir / "PWNED"
    target.write_bytes(pickle.dumps({"weights": _Payload(str(marker))}))
    rep = b.audit(run, ev)
    rep["code_executed"] = marker.exists()
    return rep


def evidence_wrong_hash(b: Bench) -> dict[str, Any]:
    run, ev = b.train()
    manifest = json.loads((Path(ev) / "manifest.json").read_text())
    target = Path(ev) / "objects" / manifest["checkpoints"][3]["weights"]
    data = bytearray(target.read_bytes())
    data[-5] ^= 0x01
    target.write_bytes(bytes(data))
    return b.audit(run, ev)


def evidence_withheld(b: Bench) -> dict[str, Any]:
    # the optimizer state of an early checkpoint is never published; the auditor draws
    # one step, far from it, so no replay would ever load the object
    from auditor.audit import sample

    run, ev = b.train()
    ckpts = json.loads((Path(ev) / "manifest.json").read_text())["checkpoints"]
    [drawn] = sample(AUDITOR_SEED, ckpts[-1]["step"] + 1, 1)
    # a checkpoint the replay never starts from: neither the drawn step's segment nor
    # the final one (always replayed) begins there
    victim = next(c for c, nxt in zip(ckpts, ckpts[1:-1], strict=False)
                  if not c["step"] < drawn <= nxt["step"])
    (Path(ev) / "objects" / victim["optimizer"]).unlink()
    rep = b.audit(run, ev, samples=1)
    rep["withheld_step"], rep["drawn_step"] = victim["step"], drawn
    return rep


class WitnessProcess:
    """A real `potd witness serve` on a loopback port that knows the log's key."""

    def __init__(self, root: Path, log_key: Signer) -> None:
        self.key = Signer.generate("witness.example/w1", ALG_COSIGNATURE_V1)
        (root / "witness.key").write_text(self.key.private_string())
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ledger", "witness", "serve", "--db",
             str(root / "witness.db"), "--key", str(root / "witness.key"), "--log",
             f"{log_key.name}={log_key.verifier}", "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"
        for _ in range(300):
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("witness did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


def _published(b: Bench, size: int, w: WitnessProcess) -> SignedCheckpoint:
    """The checkpoint of ``size`` once the log server publishes it, cosigned by ``w``."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = httpx.get(b.server.url + "/checkpoint", timeout=10)
        if r.status_code == 200:  # 503 until the witness has cosigned a checkpoint
            cp = open_checkpoint(r.content, b.log_key.verifier)
            if cp.size == size and count_cosignatures(cp.note, [w.key.verifier]):
                return cp
        time.sleep(0.02)
    raise RuntimeError(f"the log did not publish a witnessed checkpoint of size {size}")


def _seed_check(rep: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in rep["checks"] if c["name"] == "seed")


def drand_honest(b: Bench) -> dict[str, Any]:
    """drand beacon, timestamped log; audited with the public challenge and a policy that
    requires drand: must pass, and report the trust assumption."""
    return b.audit(*b.train(drand=True), public=True, require_drand=True)


def operator_grinds_log_beacon(b: Bench) -> dict[str, Any]:
    """Log mode: the operator re-signs the beacon checkpoint with chosen nonces until the
    seed puts example 0 in the first batch. Undetectable in log mode (the audit without
    policy passes — the weakness); an auditor requiring drand fails the seed."""
    cls = type("Ground", (OperatorGroundBeacon,), {"operator": b.log_key})
    run, ev = b.train(cls)
    plain = b.audit(run, ev, samples=2)
    rep = b.audit(run, ev, samples=2, require_drand=True)
    rep["without_policy"] = plain["verdict"]
    return rep


def operator_grinds_drand_run(b: Bench) -> dict[str, Any]:
    """drand mode, same collusion: the trainer trains with the operator-ground seed. The
    auditor's seed comes from drand alone, so the ground order is caught."""
    cls = type("Ground", (OperatorGroundDrand,), {"operator": b.log_key})
    return b.audit(*b.train(cls, drand=True), samples=2)


def stale_drand_round(b: Bench) -> dict[str, Any]:
    return b.audit(*b.train(StaleDrandRound, drand=True), samples=2)


def stale_challenge_round(b: Bench) -> dict[str, Any]:
    return b.audit(*b.train(StaleChallengeRound, drand=True), public=True, samples=2)


def drand_witnessed(b: Bench) -> dict[str, Any]:
    """drand beacon, time attested by a witness's cosignatures (no log timestamps)."""
    policy = b.with_witness()
    return b.audit(*b.train(drand=True), public=True, require_drand=True, samples=2, **policy)


def stale_round_backdated(b: Bench) -> dict[str, Any]:
    """A stale round made to look fresh by an operator-backdated timestamp: passes when the
    log's timestamp is the clock (the stated trust assumption), fails under witnesses."""
    policy = b.with_witness()
    cls = type("Backdated", (StaleRoundBackdated,), {"operator": b.log_key})
    run, ev = b.train(cls, drand=True)
    plain = b.audit(run, ev, samples=2)
    rep = b.audit(run, ev, samples=2, **policy)
    rep["without_witnesses"] = plain["verdict"]
    return rep


def _junk_entry(b: Bench, i: int) -> None:
    body = {"seed_commitment": f"{i:064x}", "dataset": {"root": "00" * 32, "size": 1}}
    mallory = Signer.generate("trainer.example/mallory")
    b.client().add(build_statement("run.open", run_id(body), 0, body, mallory))


def challenge_reroll(b: Bench) -> dict[str, Any]:
    """After the run, entries are appended to re-roll the public challenge: the sample
    must not change (drand mode, and log mode whose point is fixed at run.close)."""
    same: dict[str, bool] = {}
    rep: dict[str, Any] = {}
    for i, drand in enumerate((True, False)):
        run, ev = b.train(tag=f"run-{i}", drand=drand)
        first = b.audit(run, ev, public=True, samples=2)
        _junk_entry(b, i)
        rep = b.audit(run, ev, public=True, samples=2)
        pick = [(s["start"], s["end"]) for s in first["replay"]["segments"]]
        same["drand" if drand else "log"] = (
            first["replay"]["challenge"]["seed"] == rep["replay"]["challenge"]["seed"]
            and pick == [(s["start"], s["end"]) for s in rep["replay"]["segments"]]
            and first["verdict"] == "pass")
    rep["same_sample"] = same
    rep["violations"] = [f"{m} mode: the challenge changed" for m, ok in same.items()
                         if not ok]
    return rep


def split_view(b: Bench) -> dict[str, Any]:
    """The operator shows auditor A one tree and auditor B another of the same size.
    Both trees hold alice's run intact; they differ in one later entry."""
    run, ev = b.train()
    entries = _entries(b)
    w = WitnessProcess(b.dir, b.log_key)
    try:
        b.server.stop()
        log = Log.open(b.db, b.log_key)
        log.append([b"operator note: A"])
        log.store.close()
        # the honest log sends its checkpoints to the witness itself and publishes them
        # only once cosigned
        b.restart_with(b.db, ["--witness", f"{w.url}={w.key.verifier}"])
        honest = _published(b, len(entries) + 1, w)
        policy = {"witnesses": [w.key.verifier], "quorum": 1}
        rep_a = b.audit(run, ev, **policy)
        forked_db = b.rebuild(entries + [b"operator note: B"], "forked.db")
        forked = Log.open(forked_db).checkpoint()  # read-only: the fork server writes
        try:
            request_cosignature(w.url, honest.size, [], forked.to_bytes())
            refused = None
        except WitnessError as e:
            refused = e.status
        fork_server = ServerProcess(forked_db, str(b.dir / "log.key"),
                                    log_file=str(b.dir / "fork.log")).start()
        try:
            b_state = str(b.dir / "auditor-b")
            unprotected = _audit_at(b, fork_server.url, run, ev, b_state + "-nopolicy")
            rep = _audit_at(b, fork_server.url, run, ev, b_state, **policy)
        finally:
            fork_server.stop()
    finally:
        w.stop()
    rep["split_view"] = {"checkpoint_a": str(honest), "checkpoint_b": str(forked),
                         "same_size": honest.size == forked.size,
                         "different_roots": honest.root != forked.root,
                         "witness_refused_with": refused,
                         "auditor_a_verdict": rep_a["verdict"],
                         "auditor_b_without_witnesses": unprotected["verdict"]}
    return rep


def _audit_at(b: Bench, url: str, run: str, evidence: str, state: str,
              **policy: Any) -> dict[str, Any]:
    with LogClient(url, b.log_key.verifier, state_dir=state, proofs="tiles", **policy) as c:
        return Audit(c, AuditOptions(run=run, evidence=evidence, samples=2,
                                     seed=b"\x07" * 32)).run()


SCENARIOS = [
    Scenario("honest run", "-", (), honest),
    Scenario("forged checkpoint", "weights not produced by the committed steps", ("replay",),
             trainer_attack("forged-checkpoint")),
    Scenario("data substitution", "trained on other data than committed", ("replay",),
             trainer_attack("data-substitution")),
    Scenario("skipped steps", "steps skipped, weights interpolated", ("replay",),
             trainer_attack("skipped-steps")),
    Scenario("chosen order", "the trainer chose its data order", ("order",),
             trainer_attack("chosen-order")),
    Scenario("hidden document", "a sorted root and hash list without one trained example, "
             "to prove its absence", ("dataset.sorted",), trainer_attack("hidden-document")),
    Scenario("seed grinding", "runs reopened until the seed suits", ("run.grinding",),
             seed_grinding),
    Scenario("seed grinding: runs closed early", "runs closed with 0 steps until the seed "
             "suits", ("run.grinding",), grinding_closed_early),
    Scenario("seed grinding: second key", "each attempt under a new key of the same "
             "identity", ("run.grinding",), grinding_second_key),
    Scenario("aborted run", "a run aborted after 3 steps (reason given, s_rand revealed), "
             "then a new run over the same data", ("run.grinding",), aborted_run),
    Scenario("resumed run", "- (killed after step 22, resumed from its checkpoint)", (),
             resumed_run),
    Scenario("uneven checkpoint spacing", "1-step segments everywhere but one long forged "
             "one, to dodge a sample over segments", ("replay",), uneven_checkpoints),
    Scenario("tiny-lr spoofing", "tiny learning rate so any data looks right",
             ("hyperparameters", "replay"), trainer_attack("tiny-lr")),
    Scenario("false hyperparameters", "run.open commits an optimizer and batch size other "
             "than those used", ("hyperparameters",), trainer_attack("false-hyperparameters")),
    Scenario("hostile checkpoint: extra tensor", "a hash-consistent checkpoint with a tensor "
             "the model lacks", ("replay",), trainer_attack("extra-tensor")),
    Scenario("hostile checkpoint: momentum shape", "a momentum buffer of the wrong shape",
             ("replay",), trainer_attack("wrong-shape-momentum")),
    Scenario("hostile config: batch_size 0", "a config the recipe cannot run", ("recipe",),
             trainer_attack("config-batch-size-0")),
    Scenario("hostile config: epochs 10**9", "a schedule of 45 billion steps (unbounded "
             "memory)", ("hyperparameters",), trainer_attack("config-epochs-1e9")),
    Scenario("hostile config: hidden 10**9", "a model of hundreds of GB", ("recipe",),
             trainer_attack("config-hidden-1e9")),
    Scenario("forged statement", "a statement in another trainer's name",
             ("run.signatures",), forged_statement),
    Scenario("statement edited by operator", "history rewritten after logging",
             ("log.checkpoint",), operator_edit),
    Scenario("statement removed by operator", "history rewritten after logging",
             ("log.checkpoint",), operator_remove),
    Scenario("log rollback", "the log shrinks back to an older tree", ("log.checkpoint",),
             operator_rollback),
    Scenario("evidence: pickle payload", "malicious evidence file", ("evidence", "replay"),
             evidence_pickle),
    Scenario("evidence: wrong hash", "evidence altered after the fact", ("evidence", "replay"),
             evidence_wrong_hash),
    Scenario("evidence: withheld", "an unsampled checkpoint's evidence is never published",
             ("evidence",), evidence_withheld),
    Scenario("split view", "two trees shown to two parties", ("log.checkpoint",), split_view),
    Scenario("final weights lie", "run.close names a (backdoored) model no step produced",
             ("model",), shipped_attack("final-weights-lie")),
    Scenario("final checkpoint splice", "the last checkpoint holds a backdoored model, its "
             "step the honest one", ("checkpoints",), shipped_attack("final-checkpoint-splice")),
    Scenario("mid-run splice", "a checkpoint swaps in a backdoored model, honest training "
             "after it", ("checkpoints",), shipped_attack("mid-run-splice")),
    Scenario("other run's model", "the last checkpoint is another run's final model",
             ("checkpoints",), other_runs_model),
    Scenario("uncovered tail", "no checkpoint at the last step: the backdoored tail is "
             "never replayed", ("checkpoints",), shipped_attack("uncovered-tail")),
    Scenario("crafted momentum", "crafted optimizer state at a checkpoint with honest "
             "weights", ("replay",), shipped_attack("crafted-momentum")),
    Scenario("drand honest run", "- (drand beacon, public challenge)", (), drand_honest,
             ("--timestamps",)),
    Scenario("operator grinds log beacon", "colluding operator re-signs the beacon",
             ("seed",), operator_grinds_log_beacon),
    Scenario("operator grinds drand run", "colluding operator re-signs (drand mode)",
             ("order", "init"), operator_grinds_drand_run, ("--timestamps",)),
    Scenario("stale drand round", "an already-published round, s_rand ground",
             ("seed",), stale_drand_round, ("--timestamps",)),
    Scenario("drand witnessed run", "- (drand beacon, time from witness cosignatures)", (),
             drand_witnessed),
    Scenario("stale round, backdated timestamp", "operator backdates run.open's time",
             ("seed",), stale_round_backdated, ("--timestamps",)),
    Scenario("stale challenge round", "challenge round known before run.close",
             ("challenge",), stale_challenge_round, ("--timestamps",)),
    Scenario("challenge re-roll", "entries appended to re-roll the public challenge", (),
             challenge_reroll, ("--timestamps",)),
]


def caught_by(report: dict[str, Any]) -> list[str]:
    return [c["name"] for c in report.get("checks", []) if c["status"] == "fail"]


def outcome(s: Scenario, rep: dict[str, Any]) -> tuple[bool, str]:
    """Whether the scenario ended as it must, and why."""
    if rep.get("violations"):
        return False, "; ".join(rep["violations"])
    if not s.expect:
        return rep["verdict"] == "pass", "honest run must pass"
    if rep.get("code_executed"):
        return False, "evidence file executed code"
    fails = caught_by(rep)
    ok = rep["verdict"] == "fail" and any(c in fails for c in s.expect)
    return ok, ("caught by " + ", ".join(fails)) if fails else "NOT CAUGHT"


def run_scenarios(names: list[Scenario], root: Path) -> list[dict[str, Any]]:
    rows = []
    for s in names:
        t0 = time.perf_counter()
        bench = Bench(root, s.name.replace(" ", "-").replace(":", ""), s.log_flags)
        try:
            rep = s.run(bench)
        finally:
            bench.close()
        ok, why = outcome(s, rep)
        rows.append({"attack": s.name, "threat": s.threat,
                     "expected": " / ".join(s.expect) or "pass", "verdict": rep["verdict"],
                     "caught_by": caught_by(rep), "ok": ok, "why": why,
                     "seconds": round(time.perf_counter() - t0, 1),
                     "report": rep})
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'attack':32s} {'expected check':28s} {'verdict':34s} result")
    print("-" * 110)
    for r in rows:
        print(f"{r['attack']:32s} {r['expected']:28s} {r['verdict']:34s} "
              f"{'OK ' if r['ok'] else 'BAD'} {r['why']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-k", help="only scenarios whose name contains this")
    ap.add_argument("--json", help="write the rows (with full reports) here")
    ap.add_argument("--keep", help="keep the working directories under this path")
    args = ap.parse_args()
    chosen = [s for s in SCENARIOS if not args.k or args.k in s.name]
    root = Path(args.keep or tempfile.mkdtemp(prefix="potd-attacks-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        rows = run_scenarios(chosen, root)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=str) + "\n")
    bad = [r for r in rows if not r["ok"]]
    print(f"\n{len(rows) - len(bad)} of {len(rows)} scenarios ended as they must")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
