"""Re-execution of committed training segments, and the memorization test.

A *segment* runs from one committed checkpoint (or the seed-derived initial weights) to
the next: steps ``start..end``. Replaying it loads the start state from the evidence
store (bytes checked against their content address, tensors against the hash the log
committed; safetensors only), re-runs the recipe's :func:`~prover.recipes.train_step`
on the batches the seed dictates, and compares the weights hash after every step with
the committed one (exact mode), or — when the auditor's environment differs from the
trainer's — the distance of the final weights from the committed checkpoint against a
tolerance calibrated from honest reproduction noise.

Work units are plain data (:class:`SegmentJob`), so ``--workers N`` can run them in
separate processes. A process builds a recipe's model once and refills it in place for
every later segment (the data set is likewise loaded once per process): the start state
of a segment is always exactly the checked evidence tensors, whatever ran before.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ledger.errors import PotdError
from prover.datasets import Datasets, as_datasets, call_data
from prover.derive import batch_indexes
from prover.device import to_device
from prover.evidence import EvidenceError, EvidenceSource, flatten_optimizer, restore_optimizer
from prover.hashing import StateHasher
from prover.recipes import Data, Recipe, get_recipe, train_step


@dataclass(frozen=True)
class SegmentJob:
    recipe: str
    config: dict[str, Any]
    seed: bytes
    n_examples: int
    algorithm: str
    evidence: str
    start: int                   # first step replayed
    end: int                     # last step replayed
    start_weights: str           # evidence object name of the weights before ``start``
    start_weights_hash: str
    start_optimizer: str | None  # None at the beginning of the run
    start_optimizer_hash: str | None
    step_hashes: tuple[str | None, ...]   # committed weights hash after each step (or None)
    step_starts: tuple[tuple[int, int], ...]  # (epoch, offset in the epoch order) per step
    end_weights: str | None = None        # committed checkpoint after ``end`` (for distance)
    end_weights_hash: str | None = None
    end_optimizer: str | None = None      # its optimizer state: the replay must end in it
    end_optimizer_hash: str | None = None
    exact: bool = True
    threads: int | None = None
    # dataset indexes of each step's batch, derived from the seed by the orchestrator
    # (which derives the order anyway); empty: derived here from ``step_starts``
    batches: tuple[tuple[int, ...], ...] = ()
    data_dir: str | None = None  # the auditor's copy of the data (Recipe.data_dir)
    device: str = "cpu"          # where the replay trains (prover.device); results are CPU


@dataclass
class SegmentResult:
    start: int
    end: int
    match: bool
    first_mismatch_step: int | None
    distance: float | None
    tolerance: float | None
    seconds: float
    error: str | None = None
    steps_checked: int = 0
    optimizer_distance: float | None = None  # tolerance mode: optimizer state's distance
    detail: list[str] = field(default_factory=list)
    # the replay could not be carried out (the evidence server unreachable or stalled, a
    # replay worker lost): ``error`` says why; not evidence of a false claim
    unavailable: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def not_replayed(job: SegmentJob, why: str) -> SegmentResult:
    """The result of a segment whose replay could not be carried out (``unavailable``)."""
    return SegmentResult(job.start, job.end, False, None, None, None, 0.0, error=why,
                         unavailable=True)


def failed_result(job: SegmentJob, e: PotdError, t0: float) -> SegmentResult:
    """The result of a replay stopped by ``e``: unavailable when a peer could not be
    asked (nothing was learnt; the evidence source wraps that as the context of its
    error), else a failure the evidence caused."""
    from .audit import unreachable

    return SegmentResult(job.start, job.end, False, None, None, None,
                         time.perf_counter() - t0, error=e.message,
                         unavailable=unreachable(e) or unreachable(e.__context__))


def _flat(sd: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([sd[k].detach().to("cpu", torch.float64).reshape(-1) for k in sorted(sd)])


def relative_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                      start: dict[str, torch.Tensor]) -> float:
    """``||a - b|| / ||b - start||``: distance relative to how far the segment moved."""
    fa, fb, fs = _flat(a), _flat(b), _flat(start)
    moved = float(torch.linalg.vector_norm(fb - fs))
    return float(torch.linalg.vector_norm(fa - fb)) / max(moved, 1e-12)


def _data_cache() -> dict[tuple[str, str, str], Data | Datasets]:
    return {}


_DATA: dict[tuple[str, str, str], Data | Datasets] = _data_cache()


def recipe_data(recipe: Recipe) -> Data | Datasets:
    """What the recipe's ``data()`` returns (once per process, recipe, config and
    ``data_dir``); :func:`~prover.datasets.as_datasets` turns it into datasets."""
    key = (recipe.spec, repr(sorted(recipe.config.items())), str(recipe.data_dir))
    if key not in _DATA:
        _DATA[key] = call_data(recipe)
    return _DATA[key]


@contextlib.contextmanager
def provided_data(recipe: Recipe, data: Datasets) -> Iterator[None]:
    """Within the block, :func:`recipe_data` returns ``data`` for ``recipe`` in this
    process (selective disclosure: the disclosed examples stand in for ``data()``)."""
    key = (recipe.spec, repr(sorted(recipe.config.items())), str(recipe.data_dir))
    before = _DATA.get(key)
    _DATA[key] = data
    _PROVIDED[key] = data
    try:
        yield
    finally:
        _PROVIDED.pop(key, None)
        if before is None:
            _DATA.pop(key, None)
        else:
            _DATA[key] = before


_PROVIDED: dict[tuple[str, str, str], Datasets] = {}


def provided(job: SegmentJob) -> Datasets | None:
    """The data :func:`provided_data` stands in for ``job``'s recipe in this process
    (None: the recipe reads its own): what spawned replay processes must be handed."""
    return _PROVIDED.get((job.recipe, repr(sorted(job.config.items())), str(job.data_dir)))


class Trainee:
    """A recipe's model and optimizer, built once per process and refilled in place with
    each segment's start state.

    The model is built on the meta device (no random init) and takes the evidence tensors
    (cloned); later it copies them into the same storage while names, dtypes and shapes
    are the same, and is rebuilt otherwise. The optimizer likewise: restored with
    :func:`~prover.evidence.restore_optimizer` when built, later refilled in place when
    the evidence has exactly the state tensors it holds (its hyperparameters reset to
    those it was built with); a run's first segment (no optimizer state) gets a fresh
    one. Either way the start state is exactly the checked evidence, whatever ran before.
    """

    def __init__(self, recipe: Recipe, device: str = "cpu") -> None:
        from prover.device import parse_device

        self.recipe = recipe
        self.device = parse_device(device)  # model and optimizer state live there
        self.model: torch.nn.Module | None = None
        self.opt: torch.optim.Optimizer | None = None
        self.opt_model: torch.nn.Module | None = None
        self.groups: list[dict[str, Any]] = []
        self.hashers: dict[str, StateHasher] = {}
        self.state_nbytes = 0  # bytes of the model's state (0 until built)

    def load(self, sd: Mapping[str, torch.Tensor], opt_sd: Mapping[str, torch.Tensor] | None
             ) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        """Model and optimizer holding ``sd`` and ``opt_sd`` (both left untouched)."""
        model = self._model(sd)
        return model, self._optimizer(model, opt_sd)

    def _model(self, sd: Mapping[str, torch.Tensor]) -> torch.nn.Module:
        model = self.model
        if model is not None:
            have = model.state_dict(keep_vars=True)
            if have.keys() == sd.keys() and all(
                    have[k].dtype == v.dtype and have[k].shape == v.shape
                    for k, v in sd.items()):
                with torch.no_grad():
                    for k, v in sd.items():
                        have[k].copy_(v)
                return model
        with torch.device("meta"):
            model = self.recipe.model()
        check_layout(model.state_dict(), sd, "weights")
        model.load_state_dict({k: v.to(self.device, copy=True) for k, v in sd.items()},
                              assign=True)
        self.model = model
        self.state_nbytes = sum(t.nbytes for t in model.state_dict().values())
        return model

    def _optimizer(self, model: torch.nn.Module, opt_sd: Mapping[str, torch.Tensor] | None
                   ) -> torch.optim.Optimizer:
        opt = self.opt
        if opt is not None and opt_sd is not None and self.opt_model is model:
            params = [p for g in opt.param_groups for p in g["params"]]
            have = {f"state.{i}.{k}": v for i, p in enumerate(params)
                    for k, v in opt.state.get(p, {}).items()}
            if have.keys() == opt_sd.keys() and all(
                    isinstance(have[k], torch.Tensor) and have[k].dtype == v.dtype
                    and have[k].shape == v.shape for k, v in opt_sd.items()):
                with torch.no_grad():
                    for k, v in opt_sd.items():
                        have[k].copy_(v)
                for g, init in zip(opt.param_groups, self.groups, strict=True):
                    g.update(copy.deepcopy(init))
                return opt
        opt = self.recipe.optimizer(model)
        self.groups = [copy.deepcopy({k: v for k, v in g.items() if k != "params"})
                       for g in opt.param_groups]
        if opt_sd is not None:
            restore_optimizer(opt, opt_sd)
            if self.device.type != "cpu":
                from prover.device import optimizer_to

                optimizer_to(opt, self.device)
        self.opt, self.opt_model = opt, model
        return opt

    def optimizer_hash(self, opt: torch.optim.Optimizer, algorithm: str) -> str:
        """:func:`~prover.hashing.hash_tensors` of the optimizer state as
        :func:`~prover.evidence.flatten_optimizer` names it, over the live tensors (no
        copies; a reused hasher keeps their framing)."""
        key = "optimizer:" + algorithm
        if key not in self.hashers:
            self.hashers[key] = StateHasher(algorithm)
        live = {f"state.{pid}.{k}": v if isinstance(v, torch.Tensor) else torch.tensor(v)
                for pid, st in opt.state_dict()["state"].items() for k, v in st.items()}
        return self.hashers[key].hash(live)

    def weights_hash(self, algorithm: str) -> str:
        """:func:`~prover.hashing.hash_tensors` of the model's state."""
        import blake3

        assert self.model is not None
        if algorithm not in self.hashers:  # BLAKE3's threads only pay off on large states
            self.hashers[algorithm] = StateHasher(
                algorithm, threads=blake3.blake3.AUTO if self.state_nbytes > 1 << 20 else 1)
        return self.hashers[algorithm].hash(self.model.state_dict(keep_vars=True))


def check_layout(model: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor],
                 what: str) -> None:
    """``sd`` (committed, hash-checked, but chosen by the trainer) has exactly the names
    and shapes of the recipe model's state ``model``; raises
    :class:`~prover.evidence.EvidenceError` naming the first difference. (Another dtype
    is a layout the replay can run, e.g. a model trained in float64; whatever torch then
    refuses fails the segment.)"""
    extra, missing = sorted(set(sd) - set(model)), sorted(set(model) - set(sd))
    problem = (f"an extra tensor {extra[0][:80]!r}" if extra else
               f"no tensor {missing[0]!r}" if missing else None)
    for k, v in model.items():
        if problem is None and sd[k].shape != v.shape:
            problem = (f"tensor {k!r} of shape {tuple(sd[k].shape)}, the model's is "
                       f"{tuple(v.shape)}")
    if problem is not None:
        raise EvidenceError(f"the committed {what} do not fit the recipe's model: {problem}")


_TRAINEES: dict[tuple[str, str, str, str], Trainee] = {}
_THREADS: dict[str, concurrent.futures.ThreadPoolExecutor] = {}


def _thread(name: str) -> concurrent.futures.ThreadPoolExecutor:
    """A long-lived single worker thread of this process."""
    if name not in _THREADS:
        _THREADS[name] = concurrent.futures.ThreadPoolExecutor(1, name)
    return _THREADS[name]


# Parallel evidence loading pays off only when hashing dominates the thread hand-off.
PARALLEL_LOAD_BYTES = 4 << 20


def trainee(name: str, config: Mapping[str, Any], data_dir: str | None = None,
            device: str = "cpu") -> Trainee:
    """This process's :class:`Trainee` for the recipe ``name`` with ``config``, its
    data read from ``data_dir``, training on ``device``."""
    key = (name, repr(sorted(config.items())), str(data_dir), device)
    if key not in _TRAINEES:
        _TRAINEES[key] = Trainee(get_recipe(name, data_dir=data_dir, **config), device)
    return _TRAINEES[key]


def replay_segment(job: SegmentJob) -> SegmentResult:
    """Replay one segment; never raises for bad evidence (reported in ``error``).

    Runs on the calling thread. (Replaying on a separate thread with a shallow stack
    makes ``torch.manual_seed``, which formats the caller's stack on every call, cheaper
    — but torch then runs a second OpenMP thread team, and on 2 cores the calling
    thread's later training steps were measured 25 % to 3x slower.)
    """
    from ledger.errors import UsageError

    t0 = time.perf_counter()
    if job.threads:
        torch.set_num_threads(job.threads)
    src = EvidenceSource(job.evidence)
    tr = trainee(job.recipe, job.config, job.data_dir, job.device)
    recipe = tr.recipe
    try:
        # for a large state, the optimizer file is read, hash-checked and parsed on a
        # helper thread while this one does the weights (hashing and reading release
        # the GIL); the weights' error, if any, is the one reported
        opt_name, opt_hash = job.start_optimizer, job.start_optimizer_hash
        opt_f = None
        if opt_name is not None and opt_hash is not None and \
                tr.state_nbytes >= PARALLEL_LOAD_BYTES:
            opt_f = _thread("potd-evidence").submit(src.load, opt_name, opt_hash,
                                                    job.algorithm)
        try:
            start_sd = src.load(job.start_weights, job.start_weights_hash, job.algorithm)
        except PotdError:
            if opt_f is not None:
                concurrent.futures.wait([opt_f])
            raise
        opt_sd = None
        if opt_f is not None:
            opt_sd = opt_f.result()
        elif opt_name is not None and opt_hash is not None:
            opt_sd = src.load(opt_name, opt_hash, job.algorithm)
        data = as_datasets(recipe_data(recipe)).train
        steps = range(job.start, job.end + 1)
        if job.batches:
            batches = [torch.tensor(b) for b in job.batches]
        else:
            cache: dict[tuple[bytes, int, int], list[int]] = {}
            batches = [torch.tensor(batch_indexes(job.seed, job.n_examples, recipe.batch_size,
                                                  step, *job.step_starts[i], cache))
                       for i, step in enumerate(steps)]
        if len(batches) != len(steps):
            raise UsageError(f"segment {job.start}..{job.end} has {len(batches)} batches")

        # compare once at the end of the segment; only a mismatch pays for replaying it
        # again with a hash after every step, to name the first step that differs. (The
        # loop is written out here, not in a helper: torch.manual_seed in train_step
        # formats the whole call stack each step, so every frame costs every step.)
        checked = 0
        first_bad: int | None = None
        distance = tolerance = opt_distance = None
        for per_step in (False, True):
            model, opt = tr.load(start_sd, opt_sd)
            first_bad = None
            for i, step in enumerate(steps):
                idx = batches[i]
                x, y = data.batch(idx)
                if tr.device.type != "cpu":
                    x, y = to_device(x, tr.device), to_device(y, tr.device)
                train_step(recipe, model, opt, x, y, job.seed, step)
                want = job.step_hashes[i]
                if want is not None and job.exact and (per_step or step == job.end):
                    checked += 1
                    if tr.weights_hash(job.algorithm) != want:
                        first_bad = step
                        break
            if first_bad is None:
                break
            if not per_step:
                # the first pass replayed the whole segment (it checks only its end): how
                # far its end is from the commitment tells drift (tiny) from forgery
                # (large). The second pass stops at the first differing step, so its
                # state is no segment end to measure.
                distance, opt_distance = _end_distances(src, job, model, opt, start_sd,
                                                        opt_sd)
        match = first_bad is None
        end_error = None
        if job.exact and match:  # the segment must end in the committed next state
            end_error = _end_state_error(tr, opt, job)
            match = end_error is None
            if not match:
                distance, opt_distance = _end_distances(src, job, model, opt, start_sd,
                                                        opt_sd)
        if not job.exact:
            distance, opt_distance = _end_distances(src, job, model, opt, start_sd, opt_sd)
        if job.exact and match and job.step_hashes and job.step_hashes[-1] is None:
            match = False  # nothing to compare with: treated as a failure of the trainer
        return SegmentResult(job.start, job.end, match, first_bad, distance, tolerance,
                             time.perf_counter() - t0, steps_checked=checked,
                             error=end_error, optimizer_distance=opt_distance)
    except PotdError as e:
        return failed_result(job, e, t0)
    except (RuntimeError, ValueError, KeyError, IndexError, TypeError) as e:
        # the audit checks every object's layout first; this is the backstop for a
        # committed state the recipe's model or optimizer cannot take
        return SegmentResult(job.start, job.end, False, None, None, None,
                             time.perf_counter() - t0,
                             error=f"the committed state does not fit the recipe: "
                                   f"{type(e).__name__}: {str(e)[:200]}")


def _end_distances(src: EvidenceSource, job: SegmentJob, model: torch.nn.Module,
                   opt: torch.optim.Optimizer, start_sd: Mapping[str, torch.Tensor],
                   opt_sd: Mapping[str, torch.Tensor] | None
                   ) -> tuple[float | None, float | None]:
    """``(distance, optimizer distance)`` of the replayed state from the committed next
    checkpoint: the weights' :func:`relative_distance`, raised to the optimizer state's
    :func:`optimizer_distance` when the checkpoint has one; ``(None, None)`` without a
    next checkpoint."""
    if job.end_weights is None or job.end_weights_hash is None:
        return None, None
    end_sd = src.load(job.end_weights, job.end_weights_hash, job.algorithm)
    distance = relative_distance(model.state_dict(), end_sd, dict(start_sd))
    opt_distance = None
    if job.end_optimizer and job.end_optimizer_hash:
        end_opt = src.load(job.end_optimizer, job.end_optimizer_hash, job.algorithm)
        opt_distance = optimizer_distance({k: v.cpu() for k, v in flatten_optimizer(opt).items()},
                                          end_opt, opt_sd)
        distance = max(distance, opt_distance)
    return distance, opt_distance


def noise_distance(job: SegmentJob, threads: tuple[int, int]) -> float:
    """Honest reproduction noise of ``job``'s segment: replayed from the same (checked)
    start state with ``threads[0]`` and with ``threads[1]`` torch threads, the relative
    distance between the two end states (weights; optimizer state too, the larger). Never
    compares with the commitment, so a forged end checkpoint cannot inflate it. Raises
    :class:`~ledger.errors.PotdError` for evidence the replay cannot load. The calling
    thread's torch thread count is restored."""
    before = torch.get_num_threads()
    src = EvidenceSource(job.evidence)
    tr = trainee(job.recipe, job.config, job.data_dir, job.device)
    recipe = tr.recipe
    start_sd = src.load(job.start_weights, job.start_weights_hash, job.algorithm)
    opt_sd = (src.load(job.start_optimizer, job.start_optimizer_hash, job.algorithm)
              if job.start_optimizer is not None and job.start_optimizer_hash is not None
              else None)
    data = as_datasets(recipe_data(recipe)).train
    cache: dict[tuple[bytes, int, int], list[int]] = {}
    steps = range(job.start, job.end + 1)
    batches = [torch.tensor(b) for b in job.batches] if job.batches else [
        torch.tensor(batch_indexes(job.seed, job.n_examples, recipe.batch_size, step,
                                   *job.step_starts[i], cache))
        for i, step in enumerate(steps)]
    ends = []
    try:
        for n in threads:
            torch.set_num_threads(n)
            model, opt = tr.load(start_sd, opt_sd)
            for i, step in enumerate(steps):
                x, y = data.batch(batches[i])
                if tr.device.type != "cpu":
                    x, y = to_device(x, tr.device), to_device(y, tr.device)
                train_step(recipe, model, opt, x, y, job.seed, step)
            ends.append(({k: v.detach().to("cpu", copy=True)
                          for k, v in model.state_dict().items()},
                         {k: v.to("cpu", copy=True)
                          for k, v in flatten_optimizer(opt).items()}))
    finally:
        torch.set_num_threads(before)
    (w0, o0), (w1, o1) = ends
    d = relative_distance(w0, w1, dict(start_sd))
    if o1:
        d = max(d, optimizer_distance(o0, o1, opt_sd))
    return d


def _end_state_error(tr: Trainee, opt: torch.optim.Optimizer, job: SegmentJob) -> str | None:
    """Why the replayed state after ``job.end`` is not the committed checkpoint's state
    (weights and optimizer state, bit for bit), or None."""
    # the weights after the last step were already compared when the segment's last
    # step committed exactly the checkpoint's weights hash (the chain check requires it)
    if job.end_weights_hash is not None and not (
            job.step_hashes and job.step_hashes[-1] == job.end_weights_hash):
        got = tr.weights_hash(job.algorithm)
        if got != job.end_weights_hash:
            return (f"the weights replayed to step {job.end} ({got[:16]}…) are not the "
                    f"checkpoint's ({job.end_weights_hash[:16]}…) the next segment starts from")
    if job.end_optimizer_hash is not None:
        got = tr.optimizer_hash(opt, job.algorithm)
        if got != job.end_optimizer_hash:
            return (f"the optimizer state replayed to step {job.end} ({got[:16]}…) is not "
                    f"the committed checkpoint's ({job.end_optimizer_hash[:16]}…): the next "
                    "segment would start from a crafted optimizer state")
    return None


def optimizer_distance(replayed: Mapping[str, torch.Tensor],
                       committed: Mapping[str, torch.Tensor],
                       start: Mapping[str, torch.Tensor] | None) -> float:
    """``||replayed - committed|| / ||committed - start||`` over the optimizer state (a
    missing start state counts as zeros); infinite when the tensors differ in names or
    shapes."""
    if replayed.keys() != committed.keys() or any(
            replayed[k].shape != committed[k].shape for k in committed):
        return math.inf
    if not committed:
        return 0.0
    a = {k: replayed[k] for k in committed}
    b = dict(committed)
    s = {k: (start[k] if start is not None and k in start and start[k].shape == v.shape
             else torch.zeros_like(v)) for k, v in committed.items()}
    fa, fb, fs = _flat(a), _flat(b), _flat(s)
    moved = float(torch.linalg.vector_norm(fb - fs))
    return float(torch.linalg.vector_norm(fa - fb)) / max(moved, 1e-12)


def memorization(recipe: Recipe, start_sd: dict[str, torch.Tensor],
                 end_sd: dict[str, torch.Tensor], segment_examples: list[int],
                 heldout: int = 256) -> dict[str, Any]:
    """PoTD memorization statistic for one segment.

    The loss drop (loss under the start weights minus loss under the end weights) of the
    examples the segment trained on, against the drop of held-out examples. A segment
    that really trained on its committed batches shows a larger drop on them (z > 0).
    Returns train/held-out mean drops, their difference, a Welch z-score and the fraction
    of segment examples whose drop exceeds the held-out median.
    """
    data = as_datasets(recipe_data(recipe))
    model = recipe.model()
    ids = sorted(set(segment_examples))
    hx, hy = data.heldout.batch(range(min(heldout, len(data.heldout))))
    tx, ty = data.train.batch(ids)

    ref = model.state_dict()
    check_layout(ref, start_sd, "weights")
    check_layout(ref, end_sd, "weights")

    def losses(sd: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        model.load_state_dict(sd)
        model.eval()
        with torch.no_grad():
            return recipe.per_example_loss(model, x, y).double()

    dt = losses(start_sd, tx, ty) - losses(end_sd, tx, ty)
    dh = losses(start_sd, hx, hy) - losses(end_sd, hx, hy)
    mt, mh = float(dt.mean()), float(dh.mean())
    vt = float(dt.var()) if len(dt) > 1 else 0.0
    vh = float(dh.var()) if len(dh) > 1 else 0.0
    se = math.sqrt(vt / max(len(dt), 1) + vh / max(len(dh), 1))
    z = (mt - mh) / se if se > 0 else 0.0
    frac = float((dt > dh.median()).double().mean())
    return {"train_drop": mt, "heldout_drop": mh, "statistic": mt - mh, "z": z,
            "fraction_above_heldout_median": frac, "examples": len(ids), "heldout": len(dh)}
