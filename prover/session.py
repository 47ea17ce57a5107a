"""A training session that commits seed, data and weights at every step (docs/protocol.md §4).

Usage — any PyTorch loop over a recipe adopts it in a few lines::

    with TrainingSession(recipe, client, trainer_key, "evidence/", "run.spool") as run:
        for batch in run.batches():
            run.train_step(batch)          # the recipe's seeded, replayable step
    print(run.run_id, run.final_weights)

Order of events: hash the dataset; run the checks of :mod:`prover.preflight` (log key,
signer, recipe, evidence directory: nothing is logged if one fails); draw ``s_rand``;
log ``run.open`` (synchronously: its reply carries the beacon checkpoint); derive the
seed; build the model from it. Then per step, on the training thread: train, hash the
weights after the step, and hand the step record to the commit process
(:mod:`prover.committer`), which builds and signs the ``step`` statement, spools it and
submits it in batches. ``close()`` logs ``run.close`` (revealing ``s_rand``), waits for
every acknowledgment and re-verifies every receipt.

Invariants:

* The weights hashed for step ``t`` are exactly the weights after step ``t``: weights
  and optimizer state change only in ``optimizer.step()``, and a pre-hook on it waits
  until the previous step's hash (and, at a checkpoint, its raw snapshot) is done.
  Small models are hashed inline; larger ones on a hasher thread, overlapped with the
  next step's forward and backward passes (parameters in place; buffers, which a forward
  pass may change, copied first).
* An exception in the ``with`` block leaves the run open (see :meth:`__exit__`);
  :meth:`abort` ends it honestly, :meth:`resume` (via :mod:`prover.resume`) continues a
  run from its spool and evidence.
* ``train_step``/``record`` return before the statement is spooled. :meth:`flush` and
  :meth:`close` wait until it is. A crash loses at most the steps recorded after the
  last spool commit, never a step in the middle: records are spooled strictly in order,
  so the spool always holds a prefix of the run (see :mod:`prover.committer`).
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ledger.beacon_client import BeaconClient
from ledger.client import LogClient, Receipt
from ledger.errors import UsageError, VerificationError
from ledger.merkle import check_record, leaf_hash
from ledger.note import Signer, Verifier, b64decode, open_checkpoint
from ledger.policy import Policy
from ledger.statement import Statement, build_statement, run_id
from prover.beacon import CHALLENGE_FILE, DEFAULT_LEAD, beacon_field
from prover.committer import Committer, client_settings, decimal_string
from prover.dataset_cache import dataset_hashes
from prover.datasets import TENSOR_ENCODING, as_datasets, call_data
from prover.derive import (
    derive_seed,
    init_seed,
    new_s_rand,
    permutation,
    schedule,
    seed_commitment,
)
from prover.evidence import EvidenceStore
from prover.hashing import (
    StateHasher,
    hash_tensors,
    stream_size,
)
from prover.hashlist import publish as publish_hash_list
from prover.recipes import Recipe, train_step
from prover.recipes.source import store_recipe_source
from prover.session_beacon import BeaconTiming
from prover.session_commit import StepCommits
from prover.spool import Spool

__all__ = ["Batch", "TrainingSession", "decimal_string", "environment"]

EXAMPLE_ENCODING = TENSOR_ENCODING  # of a recipe returning stacked tensors
# Below this many bytes of weights, copying them into the commit process's ring (which
# hashes them) beats hashing them on a thread here, overlapped with the next step.
SMALL_STATE = 1 << 20
RING_MIN, RING_MAX, RING_STEPS = 4 << 20, 64 << 20, 32


def environment(device: torch.device | str | None = None) -> dict[str, Any]:
    """What bit-exact reproduction depends on, recorded in ``run.open`` (the auditor
    replays exactly only in an equal one): library versions (torch, numpy, python; CUDA
    and cuDNN on a GPU), device type and name (:mod:`prover.device`), default dtype,
    threads, deterministic algorithms."""
    import platform

    from prover.device import device_environment, parse_device

    try:
        import numpy
        numpy_version: str | None = numpy.__version__
    except ImportError:
        numpy_version = None
    return {"torch": torch.__version__, "numpy": numpy_version,
            "python": platform.python_version(),
            **device_environment(parse_device(device)),
            "dtype": str(torch.get_default_dtype()).removeprefix("torch."),
            "threads": torch.get_num_threads(),
            "deterministic": bool(torch.are_deterministic_algorithms_enabled())}


@dataclass(frozen=True)
class Batch:
    step: int
    epoch: int
    indexes: tuple[int, ...]
    x: torch.Tensor
    y: torch.Tensor
    root: str | None  # batch root; None = computed by the commit process


class TrainingSession(BeaconTiming, StepCommits):
    def __init__(self, recipe: Recipe, client: LogClient, trainer: Signer,
                 evidence_dir: str | Path, spool_path: str | Path, *,
                 per_step_weights: bool = True, weights_hash: str = "blake3",
                 s_rand: bytes | None = None, submit_batch: int = 256,
                 progress: Callable[[int, int], None] | None = None,
                 beacon: BeaconClient | None = None, beacon_lead: float = DEFAULT_LEAD,
                 time_witnesses: Sequence[Verifier] | None = None,
                 time_quorum: int | None = None, time_policy: Policy | None = None,
                 preflight: bool = True,
                 data_dir: str | Path | None = None,
                 device: str | torch.device | None = None) -> None:
        from prover.device import parse_device

        self.recipe, self.client, self.trainer = recipe, client, trainer
        # where model, optimizer state and batches live (evidence is saved from CPU copies)
        self.device = parse_device(device)
        if data_dir is not None:  # where the data lives here: not committed
            recipe.data_dir = Path(data_dir).resolve()
        try:
            self.evidence = EvidenceStore(evidence_dir)
        except OSError as e:
            from prover.preflight import PreflightError

            raise PreflightError(f"cannot create the evidence directory {evidence_dir}: {e}",
                                 hint="choose another evidence directory; nothing was "
                                      "logged") from None
        self.spool = Spool(spool_path)
        self.per_step_weights, self.alg = per_step_weights, weights_hash
        self._s_rand = s_rand if s_rand is not None else new_s_rand()
        self.submit_batch = submit_batch
        self.progress = progress
        self.beacon, self.beacon_lead = beacon, beacon_lead
        self._round_open: int | None = None  # the round run.open committed
        # whose cosignatures attest when run.open/run.close existed (drand mode); default:
        # the client's witness policy, and without one the log's timestamp line
        self.time_witnesses = tuple(client.witnesses if time_witnesses is None
                                    else time_witnesses)
        self.time_quorum = client.quorum if time_quorum is None else time_quorum
        # a C2SP tlog-policy replaces witnesses and quorum (given, else the client's)
        self.time_policy = (time_policy if time_policy is not None
                            else client.policy if time_witnesses is None else None)
        self.receipts: list[Receipt] = []
        self._committer: Committer | None = None
        self._hasher: threading.Thread | None = None
        self._hooks: list[Any] = []
        self._sd: dict[str, torch.Tensor] | None = None
        self._hash_q: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
        self._pending = 0  # records whose hash (and snapshot) is not done, under _cond
        self._cond = threading.Condition()
        self._hash_error: BaseException | None = None
        self._checkpoints: list[dict[str, Any]] = []
        self.final_weights: str | None = None
        self.final_state: str | None = None  # potd-state-v1 of the final checkpoint
        self.losses: list[float] = []
        self.preflight = preflight
        self.start_step = 0  # the first step this process trains (> 0 when resumed)
        self._prior_checkpoints: list[dict[str, Any]] = []  # committed before a resume
        self._prior_final: dict[str, Any] = {}  # the last step's hashes, if committed

    # -- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> TrainingSession:
        self.open()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        """A clean exit closes the run. An exception leaves it **open**, with every
        recorded step spooled, and says how to go on: ``potd prover resume --train``
        continues it bit-identically, ``potd prover abort`` ends it (revealing ``s_rand``;
        the abort counts as an abandoned seed, docs/protocol.md §5). Aborting is not
        automatic: it cannot be undone, and most exceptions (a bug in logging code,
        Ctrl-C, out of memory) are better resumed than abandoned."""
        if exc_type is None:
            self.close()
            return
        self._shutdown()
        if isinstance(exc, BaseException) and getattr(self, "run_id", None):
            exc.add_note(f"potd: run {self.run_id} is left open; its statements are "
                         f"spooled in {self.spool.path}. Continue it with `potd prover resume "
                         f"--train --spool {self.spool.path} --key KEY`, or end it with "
                         f"`potd prover abort --spool {self.spool.path} --key KEY --reason "
                         f"TEXT` (or TrainingSession.abort).")

    def open(self) -> None:
        # started first: the commit process imports while we hash the dataset
        self._committer = Committer()
        self.submitter = self._committer.submitter
        try:
            self._open(self._committer)
        except BaseException:
            self._shutdown()
            raise

    def _open(self, committer: Committer) -> None:
        r = self.recipe
        self._load_data()
        held = dataset_hashes(self.heldout)
        if self.preflight:  # before anything is logged (docs/protocol.md §4.4)
            from prover.preflight import preflight

            optimizer_name = preflight(r, self.client, self.trainer, self.evidence.root,
                                       len(self.plan), self.train).optimizer
        else:  # the optimizer's class, built on the recipe's model (RNG untouched)
            from prover.preflight import check_recipe

            optimizer_name = check_recipe(r, self.train, dry_step=False).optimizer
        round_ = 0
        if self.beacon is not None:  # chosen before s_rand is committed (attacks use that)
            self.chain = self.beacon.chain or self.beacon.info()
            round_ = self.choose_round()
        body: dict[str, Any] = {
            "seed_commitment": seed_commitment(self._s_rand),
            "dataset": {"root": self.dataset_root, "size": len(self.train),
                        "example_hash": self.train.encoding,
                        # the sorted root and the published hash list (docs/protocol.md §4.7)
                        **publish_hash_list(self.evidence.root / "objects", self.train_hashes)},
            "heldout": {"root": held.root, "size": len(self.heldout)},
            "recipe": r.commitment(),
            "hyperparameters": {"optimizer": optimizer_name,
                                "lr": str(r.config["lr"]), "batch_size": r.batch_size,
                                "epochs": r.epochs, "steps": len(self.plan), "k": r.k,
                                "per_step_weights": self.per_step_weights},
            "environment": self.environment(),
            "weights_hash": self.alg,
        }
        if self.beacon is not None:
            body["beacon"] = beacon_field(self.chain, round_)
        body = self.open_body(body)
        self.run_id = run_id(body)
        opened = build_statement("run.open", self.run_id, 0, body, self.trainer)
        self.spool.set_meta(run=self.run_id, log=self.client.url, log_vkey=str(self.client.log_key),
                            s_rand=self._s_rand.hex(), recipe=getattr(r, "spec", r.name),
                            config=json.dumps(r.config), evidence=str(self.evidence.root),
                            weights_hash=self.alg,
                            per_step_weights=json.dumps(self.per_step_weights),
                            data_dir=str(r.data_dir or ""), device=str(self.device))
        self.spool.put(0, opened)
        store_recipe_source(self.evidence.root, self.run_id, r)
        receipt = self.client.add(opened)
        self.spool.ack([(0, receipt)])
        self.receipts.append(receipt)
        if self.beacon is not None:
            beacon, self.step0_extra = self._drand_beacon(receipt, round_)
        else:
            beacon, self.step0_extra = self._log_beacon(receipt)
        # what resume needs to rebuild the seed and step 0 without the log's reply
        self.spool.set_meta(beacon=beacon.hex(), step0=json.dumps(self.step0_extra))
        self._init_from_seed(beacon)
        self._prev = leaf_hash(opened).hex()
        self._start(committer, seq=1)

    def _start(self, committer: Committer, seq: int) -> None:
        """Hooks, the commit process and the hasher, for steps from ``start_step`` on
        (statement ``seq`` next, chained to ``_prev``)."""
        state = self.model.state_dict()
        self._inline = sum(t.numel() * t.element_size() for t in state.values()) < SMALL_STATE
        self._weights, self._opt_stream = StateHasher(self.alg), StateHasher(self.alg)
        self._k = self.recipe.k
        self._hooks = [reg(self._structure_changed) for reg in (
            torch.nn.modules.module.register_module_parameter_registration_hook,
            torch.nn.modules.module.register_module_buffer_registration_hook,
            torch.nn.modules.module.register_module_module_registration_hook)]
        ring = 0
        if self._inline:
            size = stream_size(self._weights.parts(self._state()))
            ring = min(RING_MAX, max(RING_MIN, RING_STEPS * size))
        committer.start({
            "run": self.run_id, "prev": self._prev, "seq": seq,
            "checkpoints": self._prior_checkpoints, "final": self._prior_final,
            "signer": self.trainer.private_string(), "weights_hash": self.alg,
            "per_step_weights": self.per_step_weights,
            "step0": self.step0_extra,
            "init": {"weights_hash": self.init_weights, "weights": self.init_evidence},
            "evidence": str(self.evidence.root), "spool": self.spool.path,
            "client": client_settings(self.client), "submit_batch": self.submit_batch,
        }, (self.train_hashes.blob,), ring)
        # wait until the commit process has started up (imports, spool, log client): the
        # first steps must not pay for it by filling the ring and the pipe
        committer.flush()
        if not self._inline:
            self._hasher = threading.Thread(target=self._hash_loop, name="potd-hasher",
                                            daemon=True)
            self._hasher.start()
        self._hooks.append(self.optimizer.register_step_pre_hook(self._before_update))

    def resume(self, opened: Statement, steps: Sequence[tuple[Statement, bytes]],
               beacon: bytes, step0: dict[str, Any]) -> None:
        """Continue run ``opened`` in this process (``potd prover resume --train``):
        rebuild the seed from the spooled ``s_rand`` and beacon, load the training state
        of the last spooled checkpoint from the evidence store, and train on from the
        step after it. ``steps``: the spooled step statements (and their bytes) in
        order. Statements past that checkpoint are built again from the retrained steps
        and must equal the spooled ones byte for byte (the commit process refuses a
        different statement at a spooled ``seq``), so what the log may already hold is
        reproduced, never contradicted."""
        self._committer = Committer()
        self.submitter = self._committer.submitter
        try:
            self._resume(self._committer, opened, steps, beacon, step0)
        except BaseException:
            self._shutdown()
            raise

    def _resume(self, committer: Committer, opened: Statement,
                steps: Sequence[tuple[Statement, bytes]], beacon: bytes,
                step0: dict[str, Any]) -> None:
        from prover.evidence import EvidenceSource, restore_optimizer

        r = self.recipe
        self._load_data()
        body: Any = opened.body
        if body.get("seed_commitment") != seed_commitment(self._s_rand):
            raise UsageError("the spooled s_rand does not match the run's seed commitment")
        if body["dataset"].get("root") != self.dataset_root:
            raise UsageError(f"the recipe's training data ({len(self.train)} examples, root "
                             f"{self.dataset_root}) differs from the data the run committed "
                             f"({body['dataset'].get('size')} examples, root "
                             f"{body['dataset'].get('root')})",
                             hint="resume with the same recipe and data (--data-dir)")
        if body.get("recipe", {}).get("code_hash") != r.source_hash():
            raise UsageError(f"recipe {r.name}'s code changed since the run was opened",
                             hint="resume with the recipe code the run committed")
        if body.get("environment") != self.environment():
            raise UsageError(f"this environment {self.environment()} differs from the run's "
                             f"{body.get('environment')}: training would not reproduce the "
                             "committed steps bit for bit",
                             hint="resume with the torch version, device (--device) and "
                                  "thread count (torch.set_num_threads) of the interrupted "
                                  "run")
        self.run_id, self.step0_extra = opened.run, step0
        if self.beacon is not None:  # drand mode: the same chain; run.close picks its round
            self.chain = self.beacon.chain or self.beacon.info()
            if body.get("beacon", {}).get("chain") != self.chain.hash_hex:
                raise UsageError("the beacon given is not the drand chain the run committed")
            self._round_open = int(body["beacon"]["round"])
        self._init_from_seed(beacon)
        self._prev = leaf_hash(opened.raw).hex()
        seq = 1
        ckpts = [(st, raw) for st, raw in steps if isinstance(st.body.get("checkpoint"), dict)]
        first: Any = steps[0][0].body if steps else {}
        if steps and first.get("init", {}).get("weights_hash") != self.init_weights:
            raise VerificationError("the initial weights rebuilt from the seed differ from "
                                    "the committed ones", hint="same recipe, torch and "
                                    "environment as the interrupted run?")
        if ckpts:
            st, raw = ckpts[-1]
            c: Any = st.body["checkpoint"]
            src = EvidenceSource(str(self.evidence.root))
            self.model.load_state_dict(src.load(c["weights"], c["weights_hash"], self.alg))
            restore_optimizer(self.optimizer,
                              src.load(c["optimizer"], c["optimizer_hash"], self.alg))
            if self.device.type != "cpu":
                from prover.device import optimizer_to

                optimizer_to(self.optimizer, self.device)
            self.start_step = st.seq  # statement t + 1 is step t
            self._prior_checkpoints = [{"step": s.seq - 1, **s.body["checkpoint"]}  # type: ignore[dict-item]
                                       for s, _ in ckpts]
            if self.start_step == len(self.plan):
                self._prior_final = {"weights": c["weights_hash"], "state": c["state"]}
            self._prev, seq = leaf_hash(raw).hex(), st.seq + 1
        self._start(committer, seq)

    def open_body(self, body: dict[str, Any]) -> dict[str, Any]:
        """The ``run.open`` body as it will be committed (the run id is its hash)."""
        return body
    def _load_data(self) -> Any:
        """The recipe's data as datasets (``train``, ``heldout``), the training set's
        example hashes (cached on disk for file-backed data) and the schedule. ``data``
        stays what the recipe returned (stacked-tensor ``Data`` for the attacks)."""
        r = self.recipe
        self.data = data = call_data(r)
        ds = as_datasets(data)
        self.train, self.heldout = ds.train, ds.heldout
        self.train_hashes = dataset_hashes(self.train)
        self.dataset_root = self.train_hashes.root
        self.plan = schedule(len(self.train), r.batch_size, r.epochs)
        return data

    def _init_from_seed(self, beacon: bytes) -> None:
        """The seed from the beacon, then the seed-derived initial model (stored as
        evidence, its hash committed in step 0) and the optimizer (docs/protocol.md §4.2)."""
        r = self.recipe
        self.seed = derive_seed(bytes.fromhex(self.dataset_root), self._s_rand, beacon)
        torch.manual_seed(init_seed(self.seed))
        self.model = r.model()  # on the CPU: the same initial weights on every device
        state = self.model.state_dict()
        self.init_weights = hash_tensors(state, self.alg)
        self.init_evidence = self.evidence.put(state)
        if self.device.type != "cpu":
            self.model.to(self.device)
        self.optimizer = r.optimizer(self.model)

    def epoch_order(self, epoch: int) -> list[int]:
        """The data order of ``epoch``: the seed-derived permutation (docs/protocol.md §4)."""
        return permutation(self.seed, len(self.train), epoch)

    def batches(self) -> Iterator[Batch]:
        """The run's batches, from ``start_step`` (0, or where a resumed run goes on)."""
        order: list[int] = []
        current = -1
        for step, epoch, offset in self.plan[self.start_step:]:
            if epoch != current:
                order, current = self.epoch_order(epoch), epoch
            idx = order[offset:offset + self.recipe.batch_size]
            x, y = self.train.batch(idx)
            yield Batch(step, epoch, tuple(idx), x, y, None)

    def environment(self) -> dict[str, Any]:
        """This session's environment record (:func:`environment` on its device)."""
        return environment(self.device)

    def statement_lr(self, step: int) -> float:
        """The learning rate logged for ``step``: the recipe's committed schedule."""
        return self.recipe.lr(step)

    def train_step(self, batch: Batch) -> float:
        """Run the recipe's step on ``batch`` and record it.

        Its ``optimizer.step()`` first waits for the previous step's hash (see the
        module's invariants); this step's hash may still be running when it returns.
        """
        x, y = batch.x, batch.y
        if self.device.type != "cpu":
            from prover.device import to_device

            x, y = to_device(x, self.device), to_device(y, self.device)
        loss = float(train_step(self.recipe, self.model, self.optimizer, x, y,
                                self.seed, batch.step))
        self._record(batch, loss)
        return loss

    def record(self, batch: Batch, loss: float) -> None:
        """Commit a step trained by your own loop (hashes before returning)."""
        self._record(batch, loss)
        self._wait_hashed()

    def flush(self) -> None:
        """Block until every recorded step's statement is durably spooled.

        ``train_step``/``record`` return before that; a crash before ``flush`` loses the
        statements not yet spooled — always the latest ones, never a gap.
        """
        if self._hasher is not None:
            self._hash_q.join()
        if self._hash_error is not None:
            raise self._hash_error
        assert self._committer is not None
        self._committer.flush()

    def close(self, timeout: float | None = 600) -> None:
        """Log ``run.close``, wait for every acknowledgment, verify every receipt."""
        try:
            self._stop_hasher()
            if self._hash_error is not None:
                raise self._hash_error
            assert self._committer is not None
            close: dict[str, Any] = {"steps": len(self.plan), "s_rand": self._s_rand.hex()}
            if self.beacon is not None:  # the round is counted from when run.close is
                self._committer.drain(timeout)  # logged: every step acknowledged first
                close["challenge_beacon"] = beacon_field(self.chain, self.choose_round())
            reply = self._committer.close_run(close)
            self._checkpoints, self.final_weights = reply["checkpoints"], reply["final_weights"]
            self.final_state = reply.get("final_state")
            self._committer.drain(timeout)
        finally:
            self._shutdown()
        self.verify_receipts()
        if self.beacon is not None:
            self._challenge_evidence(int(close["challenge_beacon"]["round"]))
        self.spool.close()

    def abort(self, reason: str, timeout: float = 300) -> None:
        """End the run with an abort instead of a close: every recorded step is spooled
        and submitted, then a ``run.close`` with ``reason`` revealing ``s_rand``
        (:func:`prover.resume.abort_run`). The abort counts as an abandoned seed in an
        auditor's ``run.grinding`` (docs/protocol.md §5)."""
        from prover.resume import abort_run

        self._shutdown()
        abort_run(self.spool.path, self.trainer, reason, client=self.client, timeout=timeout)
        self.spool.close()

    def _challenge_evidence(self, round_: int) -> None:
        """``challenge.json`` in the evidence directory: the checkpoint attesting when
        run.close existed, and the challenge round (both self-authenticating)."""
        assert self.beacon is not None
        last = self.receipts[-1]
        due = self.chain.round_time(round_) * 1000
        cp = self._attested(last.index, last.checkpoint, due)
        self._check_attested(cp, due, f"the challenge round {round_}")
        rnd = self.beacon.wait_round(round_)
        data = json.dumps({"close_checkpoint": str(cp), "round": rnd.to_json()}, indent=1)
        (self.evidence.root / CHALLENGE_FILE).write_text(data + "\n")

    def _stop_hasher(self) -> None:
        if self._hasher is not None:
            self._hash_q.put(None)
            self._hasher.join()
            self._hasher = None

    def _shutdown(self) -> None:
        """Stop the hasher and the commit process (which spools what it holds)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self._stop_hasher()  # records already queued are still committed
        if self._committer is not None:
            self._committer.exit()

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
