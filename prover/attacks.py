"""Dishonest trainers, built on the public prover API as a real attacker would build them.

Each class is a :class:`~prover.session.TrainingSession` that cheats in one way from
DESIGN §6 while producing well-formed, correctly signed statements that the log accepts.
They exist to prove the auditor catches them (tests and ``scripts/attacks.py``); none of
them is reachable from the ``potd prover`` commands.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from typing import Any

import nacl.bindings as nb
import torch

from ledger.client import Receipt
from ledger.note import (
    Checkpoint,
    Note,
    NoteSignature,
    Signer,
    open_checkpoint,
    sign_checkpoint,
)
from prover.derive import derive_seed, permutation
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
    return TARGET_EXAMPLE in permutation(seed, len(sess.data.x), 0)[:sess.recipe.batch_size]


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
        r = self.chain.round_at(time.time())
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
            return max(1, self.chain.round_at(time.time()) - 1)
        return super().choose_round()

    def _check_attested(self, cp: Any, due_ms: int, what: str) -> None:
        pass


ATTACKS: dict[str, Any] = {
    "forged-checkpoint": ForgedCheckpoint,
    "data-substitution": DataSubstitution,
    "skipped-steps": SkippedSteps,
    "chosen-order": ChosenOrder,
    "tiny-lr": TinyLearningRate,
}
