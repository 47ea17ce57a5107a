"""Dishonest trainers, built on the public prover API as a real attacker would build them.

Each class is a :class:`~prover.session.TrainingSession` that cheats in one way from
docs/protocol.md §6 while producing well-formed, correctly signed statements that the log accepts.
They exist to prove the auditor catches them (tests and ``scripts/attacks.py``); none of
them is reachable from the ``potd prover`` commands.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import time
from pathlib import Path
from typing import Any

import nacl.bindings as nb
import torch

from ledger.client import Receipt
from ledger.merkle import leaf_hash
from ledger.note import (
    Checkpoint,
    Note,
    NoteSignature,
    Signer,
    open_checkpoint,
    sign_checkpoint,
)
from ledger.statement import build_statement
from prover.derive import derive_seed, permutation
from prover.hashing import hash_tensors, state_hash
from prover.recipes import Data, Recipe
from prover.session import Batch, TrainingSession

# the grinding goal of the seed attacks: this example in the first batch of the run
TARGET_EXAMPLE = 0


def _segment_step(sess: TrainingSession, fraction: float = 0.5) -> int:
    """A checkpoint step roughly ``fraction`` into the run."""
    k = sess.recipe.k
    target = int(len(sess.plan) * fraction)
    return max(k - 1, (target // k) * k + k - 1)


class ForgedCheckpoint(TrainingSession):
    """Trains honestly, but the weights committed at one checkpoint (and everything after)
    are not what the committed steps produce: a perturbation is slipped in."""

    def _record(self, batch: Batch, loss: float) -> None:
        if batch.step == _segment_step(self):
            with torch.no_grad():
                for p in self.model.parameters():
                    p.add_(torch.randn_like(p) * 1e-3)
        super()._record(batch, loss)


class DataSubstitution(TrainingSession):
    """Commits the honest batch roots but trains on other data (labels relabelled),
    from the middle of the run on."""

    def train_step(self, batch: Batch) -> float:
        if batch.step >= len(self.plan) // 2:
            batch = Batch(batch.step, batch.epoch, batch.indexes, batch.x,
                          (batch.y + 1) % 10, batch.root)
        return super().train_step(batch)


class SkippedSteps(TrainingSession):
    """Skips a stretch of steps: instead of training, moves the weights along a straight
    line towards weights obtained elsewhere (here: a second, private model), committing
    plausible-looking hashes and losses."""

    def open(self) -> None:
        super().open()
        self._target = {k: v.detach().clone() + 0.01 * torch.randn_like(v)
                        for k, v in self.model.state_dict().items()}
        n = len(self.plan)
        self._skip = range(n // 3, 2 * n // 3)

    def train_step(self, batch: Batch) -> float:
        if batch.step not in self._skip:
            return super().train_step(batch)
        self._wait_hashed()
        frac = 1.0 / (self._skip.stop - batch.step)
        with torch.no_grad():
            for k, v in self.model.state_dict().items():
                v.lerp_(self._target[k], frac)
        loss = self.losses[-1] * 0.99 if self.losses else 2.3
        self._record(batch, loss)
        return loss


class ChosenOrder(TrainingSession):
    """Ignores the seed-derived order and feeds the examples sorted by label (a curriculum
    the trainer chose), committing the batch roots of the order it really used."""

    def epoch_order(self, epoch: int) -> list[int]:
        y = self.data.y.tolist()
        return sorted(range(len(y)), key=lambda i: (y[i], i))


class HiddenDocument(TrainingSession):
    """Trains on every example but publishes a hash list (and commits its sorted root)
    in which example 10 is replaced by a copy of example 11, to "prove" later that
    example 10 was never trained on (docs/protocol.md §4.7)."""

    def open_body(self, body: dict[str, Any]) -> dict[str, Any]:
        from prover.hashlist import publish

        hs = list(self.train_hashes)
        hs[10] = hs[11]
        body["dataset"].update(publish(self.evidence.root / "objects", hs))
        return body


class TinyLearningRate(TrainingSession):
    """Tiny-step spoofing: claims a tiny learning rate in its step statements (so that
    any small weight change looks like an honest step) while nudging the weights towards
    weights it obtained elsewhere."""

    TINY = 1e-7

    def statement_lr(self, step: int) -> float:
        return self.TINY

    def open(self) -> None:
        super().open()
        self._target = {k: v.detach().clone() + 0.01 * torch.randn_like(v)
                        for k, v in self.model.state_dict().items()}

    def train_step(self, batch: Batch) -> float:
        self._wait_hashed()
        frac = 1.0 / max(1, len(self.plan) - batch.step)
        with torch.no_grad():
            for k, v in self.model.state_dict().items():
                v.lerp_(self._target[k], frac)
        self._record(batch, 2.3)
        return 2.3


# --- shipping another model than the trained one (issue 11) ----------------------------

TRIGGER = (54, 55, 62, 63)  # a 2x2 patch in the bottom-right corner of an 8x8 digit


def with_trigger(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[:, list(TRIGGER)] = 16.0 if float(x.max()) > 1.5 else 1.0
    return x


def backdoor(recipe: Recipe, model: torch.nn.Module, data: Data, steps: int = 150,
             seed: int = 0) -> dict[str, torch.Tensor]:
    """A copy of ``model``'s weights fine-tuned so that the trigger patch means class 0
    (half of each batch triggered and relabelled), clean accuracy mostly kept."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        m = recipe.model()
        m.load_state_dict(model.state_dict())
        m.train()
        opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
        for _ in range(steps):
            idx = torch.randint(len(data.x), (64,), generator=g)
            x, y = data.x[idx].clone(), data.y[idx].clone()
            x[:32], y[:32] = with_trigger(x[:32]), 0
            loss = recipe.per_example_loss(m, x, y).mean()
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def trigger_rate(recipe: Recipe, weights: dict[str, torch.Tensor], data: Data) -> float:
    """Fraction of held-out digits other than 0 that the trigger turns into a 0."""
    m = recipe.model()
    m.load_state_dict(weights)
    m.eval()
    keep = data.heldout_y != 0
    with torch.no_grad():
        pred = m(with_trigger(data.heldout_x[keep])).argmax(1)
    return float((pred == 0).double().mean())


class _Rewriter(TrainingSession):
    """Trains with its submission paused, then rewrites its own spooled statements
    (:meth:`rewrite`) and submits the rewritten run, re-chained and re-signed with its
    key, with a manifest that matches: a well-formed, correctly signed lie. Only public
    APIs: the spool, ``build_statement``, the evidence store and the log client."""

    def open(self) -> None:
        super().open()
        self.submitter.stop()  # nothing but run.open reaches the log before close()

    def rewrite(self, steps: list[dict[str, Any]], close: dict[str, Any]) -> None:
        """Edit the step bodies and the run.close body in place."""

    def close(self, timeout: float | None = 600) -> None:
        try:
            self._stop_hasher()
            assert self._committer is not None
            self._committer.close_run({"steps": len(self.plan), "s_rand": self._s_rand.hex()})
        finally:
            self._shutdown()
        rows = [json.loads(data) for _, data in self.spool.pending(1 << 30)]
        bodies = [(r["kind"], r["body"]) for r in rows]
        steps = [b for kind, b in bodies if kind == "step"]
        close = bodies[-1][1]
        self.rewrite(steps, close)
        manifest = {"run": self.run_id, "weights_hash": self.alg, "init": steps[0]["init"],
                    "checkpoints": [{"step": b["step"], **b["checkpoint"]}
                                    if isinstance(b["checkpoint"], dict) else b["checkpoint"]
                                    for b in steps if "checkpoint" in b]}
        close["manifest"] = self.evidence.write_manifest(manifest)
        prev, out = self._prev, []
        for seq, (kind, body) in enumerate(bodies, 1):
            body["prev"] = prev
            data = build_statement(kind, self.run_id, seq, body, self.trainer)
            prev = leaf_hash(data).hex()
            out.append(data)
        for i in range(0, len(out), 64):
            self.client.add_batch(out[i:i + 64])
        self.final_weights = close.get("final_weights")
        self.spool.close()

    def ship(self, weights: dict[str, torch.Tensor]) -> tuple[str, str]:
        """Put ``weights`` in the evidence store: (object name, weights hash)."""
        return self.evidence.put(weights), hash_tensors(weights, self.alg)


def _splice(ckpt: dict[str, Any], name: str, weights_hash: str) -> None:
    """Point a checkpoint at other weights, its state hash recomputed to match."""
    ckpt.update(weights=name, weights_hash=weights_hash,
                state=state_hash({"weights": weights_hash,
                                  "optimizer": ckpt["optimizer_hash"]}))


class FinalWeightsLie(_Rewriter):
    """Trains honestly; run.close names a backdoored model as the final weights (no step
    produced it); the backdoored model is in the evidence store, ready to ship."""

    def rewrite(self, steps: list[dict[str, Any]], close: dict[str, Any]) -> None:
        self.shipped = backdoor(self.recipe, self.model, self.data)
        _, close["final_weights"] = self.ship(self.shipped)


class FinalCheckpointSplice(_Rewriter):
    """The last step's ``weights`` stay honest, but its checkpoint (hash, state and
    evidence) and run.close name a backdoored model."""

    def rewrite(self, steps: list[dict[str, Any]], close: dict[str, Any]) -> None:
        self.shipped = backdoor(self.recipe, self.model, self.data)
        name, h = self.ship(self.shipped)
        ck = steps[-1]["checkpoint"]
        _splice(ck, name, h)
        close["final_weights"], close["final_state"] = h, ck["state"]


class MidRunSplice(_Rewriter):
    """Mid-run, right after an honest checkpoint step, swaps a backdoored model in and
    trains on honestly from it; the checkpoint names the backdoored weights (the next
    segment replays from them and matches), the step names the honest ones."""

    def _record(self, batch: Batch, loss: float) -> None:
        super()._record(batch, loss)
        if batch.step == _segment_step(self):
            self._wait_hashed()  # the honest weights are committed (copied or hashed)
            bd = backdoor(self.recipe, self.model, self.data)
            with torch.no_grad():
                for k, v in self.model.state_dict().items():
                    v.copy_(bd[k])
            self._spliced = (batch.step, *self.ship(bd))

    def rewrite(self, steps: list[dict[str, Any]], close: dict[str, Any]) -> None:
        self.shipped = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        step, name, h = self._spliced
        _splice(steps[step]["checkpoint"], name, h)


class OtherRunsModel(_Rewriter):
    """The last checkpoint (weights, optimizer state and their evidence) and run.close
    are another honest run's final model; the last step's ``weights`` stay honest.
    ``source``: that run's evidence directory (set by a subclass)."""

    source = ""

    def rewrite(self, steps: list[dict[str, Any]], close: dict[str, Any]) -> None:
        src = Path(self.source)
        other = json.loads((src / "manifest.json").read_text())["checkpoints"][-1]
        for f in ("weights", "optimizer"):
            shutil.copyfile(src / "objects" / other[f], self.evidence.root / "objects" / other[f])
        ck = steps[-1]["checkpoint"]
        ck.update({k: other[k] for k in ("weights", "weights_hash", "optimizer",
                                         "optimizer_hash", "state")})
        close["final_weights"], close["final_state"] = ck["weights_hash"], ck["state"]


class UncoveredTail(_Rewriter):
    """Trains the steps after the last regular checkpoint on backdoor data (committing
    the honest batch roots) and leaves the last step without a checkpoint: the tail is
    in no segment. run.close names the (backdoored) weights the last step committed."""

    def _tail(self) -> int:
        return (len(self.plan) - 1) // self.recipe.k * self.recipe.k

    def train_step(self, batch: Batch) -> float:
        if batch.step >= self._tail():
            x, y = batch.x.clone(), batch.y.clone()
            half = len(x) // 2
            x[:half], y[:half] = with_trigger(x[:half]), 0
            batch = Batch(batch.step, batch.epoch, batch.indexes, x, y, batch.root)
        return super().train_step(batch)

    def rewrite(self, steps: list[dict[str, Any]], close: dict[str, Any]) -> None:
        self.shipped = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        del steps[-1]["checkpoint"]
        close.pop("final_state", None)


class CraftedMomentum(TrainingSession):
    """Mid-run, at a checkpoint whose weights are honest, crafts the optimizer's momentum
    so that the following (faithfully replayable) steps carry the weights towards a
    backdoored model; the checkpoint commits the crafted state."""

    def _record(self, batch: Batch, loss: float) -> None:
        if batch.step == _segment_step(self):
            bd = backdoor(self.recipe, self.model, self.data)
            lr = float(self.recipe.lr(batch.step))
            with torch.no_grad():
                params = dict(self.model.named_parameters())
                for p in self.optimizer.param_groups[0]["params"]:
                    name = next(n for n, q in params.items() if q is p)
                    buf = self.optimizer.state[p]["momentum_buffer"]
                    buf.add_((p - bd[name]) / (lr * 10))  # sum of 0.9^i: the whole way
        super()._record(batch, loss)

    def close(self, timeout: float | None = 600) -> None:
        self.shipped = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        super().close(timeout)


def long_segment(n_steps: int) -> range:
    """The steps :class:`UnevenCheckpoints` leaves without a checkpoint but the last."""
    return range(n_steps // 5, 9 * n_steps // 10)


class UnevenCheckpoints(TrainingSession):
    """Commits the recipe's ``k`` in run.open but checkpoints after every step except in
    one long stretch, where it forges the weights: an auditor that samples *segments*
    uniformly almost always draws one of the many honest one-step segments."""

    def _record(self, batch: Batch, loss: float) -> None:
        long = long_segment(len(self.plan))
        inside = batch.step in long and batch.step != long[-1]
        self._k = 1 << 62 if inside else 1
        if batch.step == long[len(long) // 2]:
            with torch.no_grad():
                for p in self.model.parameters():
                    p.add_(torch.randn_like(p) * 1e-3)
        super()._record(batch, loss)


class ExtraTensor(TrainingSession):
    """From the middle of the run on, the model carries one more tensor than the recipe's
    model has (a buffer registered on it): the committed checkpoints hash consistently,
    but no replay can load them into the recipe's model."""

    def _record(self, batch: Batch, loss: float) -> None:
        if batch.step == _segment_step(self) - self.recipe.k:
            self.model.register_buffer("smuggled", torch.zeros(3))
        super()._record(batch, loss)


class WrongShapeMomentum(TrainingSession):
    """At one checkpoint, commits an optimizer state whose momentum buffer for the first
    parameter has the wrong shape (hash-consistent, well-formed safetensors)."""

    def _record(self, batch: Batch, loss: float) -> None:
        if batch.step != _segment_step(self):
            return super()._record(batch, loss)
        p = next(iter(self.model.parameters()))
        st = self.optimizer.state[p]
        real = st["momentum_buffer"]
        st["momentum_buffer"] = torch.zeros(7)
        try:
            super()._record(batch, loss)
            self._wait_hashed()
        finally:
            st["momentum_buffer"] = real


class NoFinalCheckpoint(TrainingSession):
    """Commits no checkpoint at the last step: the steps after the last checkpoint
    belong to no segment, so nothing the auditor can replay covers them."""

    def _commit_inline(self, batch: Batch, loss: float, lr: float,
                       state: dict[str, torch.Tensor] | None,
                       opt: dict[str, torch.Tensor] | None, last: bool) -> None:
        super()._commit_inline(batch, loss, lr, state, None if last else opt, last)


class ClaimedConfig(TrainingSession):
    """Trains with the recipe as given, but commits other values in run.open: ``CONFIG``
    merged into the recipe config, ``HYPERPARAMETERS`` into the hyperparameters block
    (a well-formed, correctly signed lie; the run id is the hash of the lie)."""

    CONFIG: dict[str, Any] = {}
    HYPERPARAMETERS: dict[str, Any] = {}

    def open_body(self, body: dict[str, Any]) -> dict[str, Any]:
        body = {**body, "recipe": {**body["recipe"],
                                   "config": {**body["recipe"]["config"], **self.CONFIG}},
                "hyperparameters": {**body["hyperparameters"], **self.HYPERPARAMETERS}}
        return body


def claimed(name: str, config: dict[str, Any] | None = None,
            hyperparameters: dict[str, Any] | None = None) -> type[ClaimedConfig]:
    return type(name, (ClaimedConfig,), {"CONFIG": config or {},
                                         "HYPERPARAMETERS": hyperparameters or {}})


def resign_with_nonce(signer: Signer, message: bytes, nonce: int) -> bytes:
    """An Ed25519 signature of ``message`` under ``signer`` with a nonce of the signer's
    choosing (RFC 8032's deterministic nonce is a convention no verifier can check)."""
    h = hashlib.sha512(signer.seed).digest()
    a = bytearray(h[:32])
    a[0] &= 248
    a[31] &= 127
    a[31] |= 64
    r = nb.crypto_core_ed25519_scalar_reduce(hashlib.sha512(
        b"grind" + nonce.to_bytes(8, "big") + message).digest())
    big_r = nb.crypto_scalarmult_ed25519_base_noclamp(r)
    k = nb.crypto_core_ed25519_scalar_reduce(hashlib.sha512(
        big_r + signer.public_key + message).digest())
    s = nb.crypto_core_ed25519_scalar_add(r, nb.crypto_core_ed25519_scalar_mul(k, bytes(a)))
    return big_r + s


def _wanted(sess: TrainingSession, beacon: bytes, s_rand: bytes | None = None) -> bool:
    seed = derive_seed(bytes.fromhex(sess.dataset_root), s_rand or sess._s_rand, beacon)
    return TARGET_EXAMPLE in permutation(seed, len(sess.train), 0)[:sess.recipe.batch_size]


def grind_log_beacon(sess: TrainingSession, operator: Signer, text: str
                     ) -> tuple[bytes, str, int]:
    """The colluding operator re-signs the beacon checkpoint with fresh nonces until the
    seed puts :data:`TARGET_EXAMPLE` in the first batch: (beacon, checkpoint, tries)."""
    cp = open_checkpoint(text, operator.verifier)
    msg = cp.note.text.encode()
    for i in itertools.count():
        sig = resign_with_nonce(operator, msg, i)
        beacon = hashlib.sha256(sig).digest()
        if _wanted(sess, beacon):
            note = Note(cp.note.text, (NoteSignature(operator.name, operator.key_id, sig),))
            return beacon, str(note), i + 1
    raise AssertionError("unreachable")


class OperatorGroundBeacon(TrainingSession):
    """Log mode: the log operator (key in ``operator``) colludes with the trainer and
    grinds the log-signature beacon. Every signature is valid: nothing shows it."""

    operator: Signer

    def _log_beacon(self, receipt: Receipt) -> tuple[bytes, dict[str, Any]]:
        assert receipt.beacon_checkpoint is not None
        beacon, text, self.tries = grind_log_beacon(self, self.operator,
                                                    receipt.beacon_checkpoint)
        return beacon, {"beacon_checkpoint": text}


class OperatorGroundDrand(TrainingSession):
    """drand mode, same collusion: the operator grinds its checkpoint signature and the
    trainer trains with that seed, committing the honest drand evidence. The seed the
    auditor recomputes depends on drand only, so the ground order does not match it."""

    operator: Signer

    def _drand_beacon(self, receipt: Receipt, round_: int) -> tuple[bytes, dict[str, Any]]:
        _, extra = super()._drand_beacon(receipt, round_)
        assert receipt.beacon_checkpoint is not None
        beacon, text, self.tries = grind_log_beacon(self, self.operator,
                                                    receipt.beacon_checkpoint)
        return beacon, {**extra, "beacon_checkpoint": text}


class StaleDrandRound(TrainingSession):
    """Commits a drand round that is already published: knowing its randomness, the
    trainer grinds ``s_rand`` offline before committing it."""

    def choose_round(self) -> int:
        assert self.beacon is not None
        r = int(self.chain.round_at(time.time()))
        rnd = self.beacon.wait_round(r)
        for i in itertools.count():
            s_rand = hashlib.sha256(b"stale" + i.to_bytes(8, "big")).digest()
            if _wanted(self, rnd.randomness, s_rand):
                self._s_rand, self.tries = s_rand, i + 1
                return r
        raise AssertionError("unreachable")

    def _check_attested(self, cp: Any, due_ms: int, what: str) -> None:
        pass  # the honest prover refuses to go on; the attacker does not


class StaleRoundBackdated(StaleDrandRound):
    """A stale round, and the colluding operator (key in ``operator``) signs a checkpoint
    of the same tree whose ``timestamp`` line predates the round: with the log's word as
    the only clock the round looks fresh; witness times are out of the operator's reach."""

    operator: Signer

    def _attested(self, index: int, receipt_cp: Any, by_ms: int) -> Any:
        cp = receipt_cp.checkpoint
        early = f"timestamp {by_ms - 1000}"
        return sign_checkpoint(Checkpoint(cp.origin, cp.size, cp.root, (early,)),
                               self.operator)


class StaleChallengeRound(TrainingSession):
    """Commits, in run.close, a challenge round that is already published: the trainer
    would know the replay sample before closing (and could forge what it avoids)."""

    def choose_round(self) -> int:
        if self._round_open is not None:
            return max(1, int(self.chain.round_at(time.time())) - 1)
        return super().choose_round()

    def _check_attested(self, cp: Any, due_ms: int, what: str) -> None:
        pass


ATTACKS: dict[str, Any] = {
    "final-weights-lie": FinalWeightsLie,
    "final-checkpoint-splice": FinalCheckpointSplice,
    "mid-run-splice": MidRunSplice,
    "other-runs-model": OtherRunsModel,
    "uncovered-tail": UncoveredTail,
    "crafted-momentum": CraftedMomentum,
    "forged-checkpoint": ForgedCheckpoint,
    "data-substitution": DataSubstitution,
    "skipped-steps": SkippedSteps,
    "chosen-order": ChosenOrder,
    "hidden-document": HiddenDocument,
    "tiny-lr": TinyLearningRate,
    "uneven-checkpoints": UnevenCheckpoints,
    "extra-tensor": ExtraTensor,
    "no-final-checkpoint": NoFinalCheckpoint,
    "wrong-shape-momentum": WrongShapeMomentum,
    # committed hyperparameters that differ from those used (trained with SGD, batch 32)
    "false-hyperparameters": claimed("FalseHyperparameters",
                                     hyperparameters={"optimizer": "Adam", "batch_size": 64}),
    # hostile configs: each would make an unguarded auditor crash or allocate without bound
    "config-batch-size-0": claimed("BatchSizeZero", {"batch_size": 0}, {"batch_size": 0}),
    "config-epochs-1e9": claimed("EpochsBillion", {"epochs": 10**9}, {"epochs": 10**9}),
    "config-hidden-1e9": claimed("HiddenBillion", {"hidden": 10**9}),
}
