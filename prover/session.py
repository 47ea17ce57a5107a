"""A training session that commits seed, data and weights at every step (DESIGN §4).

Usage — any PyTorch loop over a recipe adopts it in a few lines::

    with TrainingSession(recipe, client, trainer_key, "evidence/", "run.spool") as run:
        for batch in run.batches():
            run.train_step(batch)          # the recipe's seeded, replayable step
    print(run.run_id, run.final_weights)

Order of events: hash the dataset; draw ``s_rand``; log ``run.open`` (synchronously: its
reply carries the beacon checkpoint); derive the seed; build the model from it; then per
step: train, hash the weights (in a background thread, overlapped with the next step's
forward/backward — weights only change in ``optimizer.step()``), write evidence every
``k`` steps, and spool the signed ``step`` statement, which a submitter thread sends to
the log in batches. ``close()`` logs ``run.close`` (revealing ``s_rand``), waits for every
acknowledgment and re-verifies every receipt's inclusion proof.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import torch

from ledger.client import LogClient, Receipt
from ledger.errors import PotdError, UsageError
from ledger.merkle import check_record, leaf_hash
from ledger.note import Signer, b64decode, open_checkpoint
from ledger.statement import build_statement, run_id
from prover.derive import (
    beacon_from_checkpoint,
    derive_seed,
    init_seed,
    new_s_rand,
    permutation,
    schedule,
    seed_commitment,
)
from prover.evidence import EvidenceStore, flatten_optimizer
from prover.hashing import example_hashes, hash_tensors, merkle_root_hex
from prover.recipes import Recipe, train_step
from prover.spool import Spool, Submitter

EXAMPLE_ENCODING = "potd-example-v1/sha256"
# Below this many bytes of weights, hashing inline beats overlapping it in a thread.
SMALL_STATE = 1 << 20


def decimal_string(x: float) -> str:
    """A real number as a plain decimal string (no exponent), exact for the float's repr."""
    return format(Decimal(repr(float(x))), "f")


def environment() -> dict[str, Any]:
    return {"torch": torch.__version__, "device": "cpu", "threads": torch.get_num_threads(),
            "deterministic": bool(torch.are_deterministic_algorithms_enabled())}


@dataclass(frozen=True)
class Batch:
    step: int
    epoch: int
    indexes: tuple[int, ...]
    x: torch.Tensor
    y: torch.Tensor
    root: str | None  # batch root; None = computed off the training thread


class TrainingSession:
    def __init__(self, recipe: Recipe, client: LogClient, trainer: Signer,
                 evidence_dir: str | Path, spool_path: str | Path, *,
                 per_step_weights: bool = True, weights_hash: str = "blake3",
                 s_rand: bytes | None = None, submit_batch: int = 256,
                 progress: Callable[[int, int], None] | None = None) -> None:
        self.recipe, self.client, self.trainer = recipe, client, trainer
        self.evidence = EvidenceStore(evidence_dir)
        self.spool = Spool(spool_path)
        self.per_step_weights, self.alg = per_step_weights, weights_hash
        self._s_rand = s_rand if s_rand is not None else new_s_rand()
        self.submit_batch = submit_batch
        self.progress = progress
        self.receipts: list[Receipt] = []
        self._hash_q: queue.Queue[tuple[Any, ...] | None] = queue.Queue(maxsize=1)
        self._write_q: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
        self._pending = 0  # jobs queued or running in the hasher, under _cond
        self._to_write = 0  # hashed steps not yet spooled, under _cond
        self._cond = threading.Condition()
        self._hash_error: BaseException | None = None
        self._checkpoints: list[dict[str, Any]] = []
        self.final_weights: str | None = None
        self.losses: list[float] = []

    # -- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> TrainingSession:
        self.open()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._shutdown()

    def open(self) -> None:
        # background threads (hasher, writer, submitter) hand the GIL back sooner
        if sys.getswitchinterval() > 0.001:
            sys.setswitchinterval(0.001)
        r = self.recipe
        data = r.data()
        self.data = data
        self.train_hashes = example_hashes(data.x, data.y)
        self.dataset_root = merkle_root_hex(self.train_hashes)
        held_root = merkle_root_hex(example_hashes(data.heldout_x, data.heldout_y))
        self.plan = schedule(len(data.x), r.batch_size, r.epochs)
        body = {
            "seed_commitment": seed_commitment(self._s_rand),
            "dataset": {"root": self.dataset_root, "size": len(data.x),
                        "example_hash": EXAMPLE_ENCODING},
            "heldout": {"root": held_root, "size": len(data.heldout_x)},
            "recipe": {"name": r.name, "code_hash": r.source_hash(), "config": r.config},
            "hyperparameters": {"optimizer": type(r.optimizer(torch.nn.Linear(1, 1))).__name__,
                                "lr": str(r.config["lr"]), "batch_size": r.batch_size,
                                "epochs": r.epochs, "steps": len(self.plan), "k": r.k,
                                "per_step_weights": self.per_step_weights},
            "environment": environment(),
            "weights_hash": self.alg,
        }
        self.run_id = run_id(body)
        opened = build_statement("run.open", self.run_id, 0, body, self.trainer)
        self.spool.set_meta(run=self.run_id, log=self.client.url, log_vkey=str(self.client.log_key),
                            s_rand=self._s_rand.hex(), recipe=r.name)
        self.spool.put(0, opened)
        receipt = self.client.add(opened)
        if receipt.beacon_checkpoint is None:
            raise PotdError("the log's reply to run.open carries no beacon_checkpoint",
                            hint="this log does not implement the potd write API")
        self.spool.ack([(0, receipt)])
        self.receipts.append(receipt)
        self.beacon_checkpoint = receipt.beacon_checkpoint
        beacon = beacon_from_checkpoint(self.beacon_checkpoint, self.client.log_key,
                                        receipt.index + 1)
        self.seed = derive_seed(bytes.fromhex(self.dataset_root), self._s_rand, beacon)
        torch.manual_seed(init_seed(self.seed))
        self.model = r.model()
        self.optimizer = r.optimizer(self.model)
        self.init_weights = hash_tensors(self.model.state_dict(), self.alg)
        self._small = sum(t.numel() * t.element_size()
                          for t in self.model.state_dict().values()) < SMALL_STATE
        self.init_evidence = self.evidence.put(self.model.state_dict())
        self._prev = leaf_hash(opened).hex()
        self._seq = 1
        self.submitter = Submitter(self.spool, self.client, self.run_id, batch=self.submit_batch)
        self.submitter.start()
        self._hasher = threading.Thread(target=self._hash_loop, name="potd-hasher", daemon=True)
        self._hasher.start()
        self._writer = threading.Thread(target=self._write_loop, name="potd-writer",
                                        daemon=True)
        self._writer.start()

    def epoch_order(self, epoch: int) -> list[int]:
        """The data order of ``epoch``: the seed-derived permutation (DESIGN §4)."""
        return permutation(self.seed, len(self.data.x), epoch)

    def batches(self) -> Iterator[Batch]:
        order: list[int] = []
        current = -1
        for step, epoch, offset in self.plan:
            if epoch != current:
                order, current = self.epoch_order(epoch), epoch
            idx = order[offset:offset + self.recipe.batch_size]
            t = torch.tensor(idx)
            yield Batch(step, epoch, tuple(idx), self.data.x[t], self.data.y[t], None)

    def statement_lr(self, step: int) -> float:
        """The learning rate logged for ``step``: the recipe's committed schedule."""
        return self.recipe.lr(step)

    def train_step(self, batch: Batch) -> float:
        """Run the recipe's step on ``batch`` and record it.

        Hashing of this step's weights overlaps the next step's forward and backward
        passes; the next ``optimizer.step()`` waits for it.
        """
        loss = _step_after(self.recipe, self.model, self.optimizer, batch, self.seed,
                           self._wait_hashed)
        self._record(batch, float(loss))
        return float(loss)

    def record(self, batch: Batch, loss: float) -> None:
        """Commit a step trained by your own loop (hashes before returning)."""
        self._record(batch, loss)
        self._wait_hashed()

    def _record(self, batch: Batch, loss: float) -> None:
        """Hash (async), write evidence every k steps, spool the signed statement.

        Parameters are hashed in place (only ``optimizer.step()`` changes them, and the
        next one waits for the hash); buffers, which a forward pass may change, are copied.
        """
        if self._hash_error is not None:
            raise self._hash_error
        self.losses.append(loss)
        last = batch.step == len(self.plan) - 1
        ckpt = (batch.step + 1) % self.recipe.k == 0 or last
        opt_state = flatten_optimizer(self.optimizer) if ckpt else None
        state = None
        if ckpt or self.per_step_weights:
            params = {n for n, _ in self.model.named_parameters()}
            state = {k: (v.detach() if k in params else v.detach().clone())
                     for k, v in self.model.state_dict().items()}
        if state is not None and self._small:
            # a small model hashes faster than a hand-over to another thread would take
            prepared = self._hash_stage(batch, loss, state, opt_state, last)
            with self._cond:
                self._to_write += 1
            self._write_q.put(prepared)
        else:
            with self._cond:
                self._pending += 1
            self._hash_q.put((batch, loss, state, opt_state, last))
        if self.progress:
            self.progress(batch.step + 1, len(self.plan))

    def flush(self) -> None:
        """Block until every recorded step's statement is durably spooled.

        ``train_step``/``record`` return once the weights are hashed; signing and the
        spool write follow in a background thread (several steps per transaction). A
        crash before ``flush`` can lose the last few steps' statements — never a gap:
        statements are spooled strictly in order, so what survives is a prefix of the run.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._pending == 0 and self._to_write == 0)
        if self._hash_error is not None:
            raise self._hash_error

    def _wait_hashed(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._pending == 0)
        if self._hash_error is not None:
            raise self._hash_error

    def _hash_loop(self) -> None:
        """Stage 1: hash the weights, then release the next optimizer step at once; the
        rest (evidence, statement, spool) goes to the writer thread."""
        while True:
            job = self._hash_q.get()
            if job is None:
                self._write_q.put(None)
                return
            try:
                prepared = self._hash_stage(*job)
            except BaseException as e:  # surfaced to the training thread
                self._hash_error = e
                prepared = None
            finally:
                with self._cond:
                    self._pending -= 1
                    self._cond.notify_all()
            if prepared is not None:
                with self._cond:
                    self._to_write += 1
                self._write_q.put(prepared)

    def _hash_stage(self, batch: Batch, loss: float, state: dict[str, torch.Tensor] | None,
                    opt_state: dict[str, torch.Tensor] | None, last: bool
                    ) -> tuple[Any, ...]:
        w = None
        if state is not None:
            w = hash_tensors(state, self.alg)
            if last:
                self.final_weights = w
            if opt_state is not None:  # evidence is written later: keep a copy
                state = {k: v.detach().clone() for k, v in state.items()}
        return batch, loss, w, state if opt_state is not None else None, opt_state

    def _write_loop(self) -> None:
        """Stage 2: evidence files, signed statements, and one spool transaction for all
        the statements that are ready (group commit)."""
        while True:
            jobs = [self._write_q.get()]
            while not self._write_q.empty() and jobs[-1] is not None:
                jobs.append(self._write_q.get())
            stop = jobs[-1] is None
            try:
                if self._hash_error is None:
                    out = [self._statement(*j) for j in jobs if j is not None]
                    self._spool_many(out)
            except BaseException as e:
                self._hash_error = e
            with self._cond:
                self._to_write -= len([j for j in jobs if j is not None])
                self._cond.notify_all()
            if stop:
                return

    def _statement(self, batch: Batch, loss: float, w: str | None,
                   state: dict[str, torch.Tensor] | None,
                   opt_state: dict[str, torch.Tensor] | None) -> tuple[str, dict[str, Any]]:
        root = batch.root if batch.root is not None else merkle_root_hex(
            self.train_hashes[i] for i in batch.indexes)
        body: dict[str, Any] = {
            "step": batch.step, "epoch": batch.epoch, "batch_root": root,
            "batch_size": len(batch.indexes), "loss": decimal_string(loss),
            "lr": decimal_string(self.statement_lr(batch.step)), "prev": "",
        }
        if w is not None:
            body["weights"] = w
        if opt_state is not None and state is not None:
            entry = {"step": batch.step, "weights": self.evidence.put(state),
                     "weights_hash": w, "optimizer": self.evidence.put(opt_state),
                     "optimizer_hash": hash_tensors(opt_state, self.alg)}
            self._checkpoints.append(entry)
            body["checkpoint"] = {k: v for k, v in entry.items() if k != "step"}
        if batch.step == 0:
            body["beacon_checkpoint"] = self.beacon_checkpoint
            body["init"] = {"weights_hash": self.init_weights, "weights": self.init_evidence}
        if not self.per_step_weights and "checkpoint" not in body:
            body.pop("weights", None)
        return "step", body

    def _spool_many(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        """Sign statements in order (chaining ``prev``) and spool them in one transaction."""
        if not items:
            return
        rows = []
        for kind, body in items:
            body["prev"] = self._prev
            data = build_statement(kind, self.run_id, self._seq, body, self.trainer)
            rows.append((self._seq, data))
            self._prev = leaf_hash(data).hex()
            self._seq += 1
        self.spool.put_many(rows)
        self.submitter.notify()

    def _emit(self, kind: str, body: dict[str, Any]) -> None:
        self._spool_many([(kind, body)])

    def close(self, timeout: float | None = 600) -> None:
        """Log ``run.close``, wait for every acknowledgment, verify every receipt."""
        self._hash_q.put(None)
        self._hasher.join()
        self._writer.join()
        if self._hash_error is not None:
            raise self._hash_error
        manifest = {"run": self.run_id, "weights_hash": self.alg,
                    "init": {"weights": self.init_evidence, "weights_hash": self.init_weights},
                    "checkpoints": self._checkpoints}
        manifest_hash = self.evidence.write_manifest(manifest)
        self._emit("run.close", {"steps": len(self.plan), "final_weights": self.final_weights,
                                 "s_rand": self._s_rand.hex(), "manifest": manifest_hash,
                                 "prev": self._prev})
        self.submitter.drain(timeout)
        self.submitter.stop()
        self.verify_receipts()
        self.spool.close()

    def _shutdown(self) -> None:
        self._hash_q.put(None)
        if hasattr(self, "submitter"):
            self.submitter.stop()

    def verify_receipts(self) -> None:
        """Every spooled statement has a receipt whose inclusion proof verifies."""
        rows = self.spool.receipts()
        total, acked = self.spool.counts()
        if acked != total:
            raise UsageError(f"{total - acked} statements are not acknowledged yet")
        self.receipts = []
        for _seq, index, rj in rows:
            cp = open_checkpoint(rj["checkpoint"], self.client.log_key)
            proof = [b64decode(h) for h in rj["inclusion_proof"]]
            check_record(proof, cp.size, cp.root, index, b64decode(rj["leaf_hash"]))
            self.receipts.append(Receipt(index, b64decode(rj["leaf_hash"]), cp, tuple(proof)))


def _step_after(recipe: Recipe, model: torch.nn.Module, opt: torch.optim.Optimizer, batch: Batch,
                seed: bytes, before_update: Callable[[], None]) -> torch.Tensor:
    """:func:`train_step` with a hook that runs after backward, before ``optimizer.step()``."""
    orig = opt.step

    def gated_step(*a: Any, **kw: Any) -> Any:
        before_update()
        return orig(*a, **kw)

    opt.step = gated_step  # type: ignore[method-assign]
    try:
        return train_step(recipe, model, opt, batch.x, batch.y, seed, batch.step)
    finally:
        opt.step = orig  # type: ignore[method-assign]
