"""Dishonest trainers, built on the public prover API as a real attacker would build them.

Each class is a :class:`~prover.session.TrainingSession` that cheats in one way from
DESIGN §6 while producing well-formed, correctly signed statements that the log accepts.
They exist to prove the auditor catches them (tests and ``scripts/attacks.py``); none of
them is reachable from the ``potd prover`` commands.
"""

from __future__ import annotations

from typing import Any

import torch

from prover.session import Batch, TrainingSession


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


class UncoveredTail(TrainingSession):
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


ATTACKS: dict[str, Any] = {
    "forged-checkpoint": ForgedCheckpoint,
    "data-substitution": DataSubstitution,
    "skipped-steps": SkippedSteps,
    "chosen-order": ChosenOrder,
    "tiny-lr": TinyLearningRate,
    "uneven-checkpoints": UnevenCheckpoints,
    "extra-tensor": ExtraTensor,
    "uncovered-tail": UncoveredTail,
    "wrong-shape-momentum": WrongShapeMomentum,
    # committed hyperparameters that differ from those used (trained with SGD, batch 32)
    "false-hyperparameters": claimed("FalseHyperparameters",
                                     hyperparameters={"optimizer": "Adam", "batch_size": 64}),
    # hostile configs: each would make an unguarded auditor crash or allocate without bound
    "config-batch-size-0": claimed("BatchSizeZero", {"batch_size": 0}, {"batch_size": 0}),
    "config-epochs-1e9": claimed("EpochsBillion", {"epochs": 10**9}, {"epochs": 10**9}),
    "config-hidden-1e9": claimed("HiddenBillion", {"hidden": 10**9}),
}
