"""Training recipes: one definition used identically by the prover (to train) and the
auditor (to replay).

A recipe declares its data (training set and held-out set, as stacked tensors), model,
optimizer, loss and learning-rate schedule, optionally its own update (:meth:`Recipe.step`:
gradient accumulation, clipping, autocast), and a config of plain values (reals as
decimal strings, so the config can go into a canonical-JSON statement). Recipes are user
code: :func:`get_recipe` takes a registered name, ``path/to/file.py:Class`` or
``package.module:Class`` (:mod:`prover.recipes.registry`, which is not hashed). The hash of
the recipe's code — its files, the user modules they import and this file, which holds the
shared step (:mod:`prover.recipes.pin`) — is committed in ``run.open``; replaying with a
recipe whose code changed is refused.

:func:`train_step` is *the* step: the prover calls it to train and the auditor to
replay, so the two cannot drift apart.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ledger.errors import UsageError
from prover.datasets import Datasets
from prover.derive import step_seed


@dataclass(frozen=True)
class Data:
    """Training examples ``x[i], y[i]`` in dataset order, and a held-out split."""

    x: torch.Tensor
    y: torch.Tensor
    heldout_x: torch.Tensor
    heldout_y: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y) or len(self.heldout_x) != len(self.heldout_y):
            raise UsageError("inputs and labels differ in length")


POSITIVE = ("batch_size", "epochs", "k")


def check_config(name: str, defaults: dict[str, Any], config: dict[str, Any]) -> None:
    """Each setting has the kind of value its default has: an integer setting a
    non-negative ``int`` (``batch_size``, ``epochs`` and ``k`` at least 1); a real setting
    (a decimal-string default) a finite decimal string or an ``int``. A config comes from
    a committed ``run.open`` the auditor does not trust: a wrong type or an impossible
    value is refused here, before any recipe code sees it."""
    for k, v in config.items():
        d = defaults[k]
        if type(d) is int:
            ok = type(v) is int and v >= (1 if k in POSITIVE else 0)
            want = "a positive integer" if k in POSITIVE else "a non-negative integer"
        elif isinstance(d, str):
            ok = type(v) is int or (isinstance(v, str) and len(v) <= 64 and _finite(v))
            want = "a finite decimal string"
        else:
            ok, want = type(v) is type(d), type(d).__name__
        if not ok:
            raise UsageError(f"recipe {name}: setting {k} must be {want}, got {str(v)[:40]!r}",
                             hint=f"default: {k}={d!r}")


def check_bounds(name: str, bounds: dict[str, tuple[Any, Any]], config: dict[str, Any]) -> None:
    """Each setting a recipe bounds (``bounds = {"hidden": (1, 4096)}``; either end may be
    None; reals as decimal strings or numbers) lies within them: checked with
    :func:`check_config`, before any recipe hook runs, so a committed config cannot make
    a prover or auditor allocate more than the recipe allows."""
    for k, (lo, hi) in bounds.items():
        if k not in config:
            raise UsageError(f"recipe {name} bounds {k}, which is not one of its settings")
        v = float(config[k])
        if (lo is not None and v < float(lo)) or (hi is not None and v > float(hi)):
            raise UsageError(f"recipe {name}: setting {k}={config[k]!r} is out of bounds "
                             f"[{lo}, {hi}]", hint=f"default: {k}={config.get(k)!r}")


def _finite(s: str) -> bool:
    try:
        return math.isfinite(float(s))
    except ValueError:
        return False


class Recipe:
    """Base class. Subclasses set ``name`` (default: the class name) and ``defaults``
    (which must hold ``lr``, ``batch_size``, ``epochs`` and ``k``), optionally ``bounds``,
    and implement the hooks."""

    name: ClassVar[str]
    defaults: ClassVar[dict[str, Any]]
    bounds: ClassVar[dict[str, tuple[Any, Any]]] = {}
    spec: str  # how it was loaded (get_recipe); default "module:Class"
    # where this machine keeps the recipe's data (--data-dir): never committed, so an
    # auditor points the recipe at its own copy; a recipe reads it in data()
    data_dir: Path | None = None

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if not isinstance(getattr(cls, "name", None), str):
            cls.name = cls.__name__

    def __init__(self, **overrides: Any) -> None:
        unknown = set(overrides) - set(self.defaults)
        if unknown:
            raise UsageError(f"recipe {self.name} has no setting {', '.join(sorted(unknown))}",
                             hint=f"settings: {', '.join(sorted(self.defaults))}")
        self.config = {**self.defaults, **{k: v for k, v in overrides.items() if v is not None}}
        for k, v in self.config.items():
            if isinstance(v, float):
                self.config[k] = repr(v)  # reals travel as decimal strings
        check_config(self.name, self.defaults, self.config)
        check_bounds(self.name, self.bounds, self.config)
        self.spec = f"{type(self).__module__}:{type(self).__qualname__}"

    # hooks -------------------------------------------------------------------
    def data(self) -> Data | Datasets:
        """The training and held-out examples: stacked tensors (:class:`Data`) or any
        :class:`prover.datasets.Dataset` pair (:class:`~prover.datasets.Datasets`: a token
        file, a directory of files). Read files under :attr:`data_dir` when it is set."""
        raise NotImplementedError

    def transform(self, content: bytes) -> tuple[torch.Tensor, torch.Tensor]:
        """One example ``(x, y)`` from the bytes of one file, for a recipe whose data is a
        directory of files: give it to the adapter, ``FileDir(path, self.transform)``, so
        that the auditor, holding only disclosed files and no data directory, makes the
        same tensors (:meth:`decode`). Depend on the bytes and the config only."""
        raise NotImplementedError

    def decode(self, encoding: str, blob: bytes) -> tuple[torch.Tensor, torch.Tensor]:
        """One example ``(x, y)`` from its canonical bytes under the committed
        ``encoding`` — what the recipe's dataset's ``batch`` yields for it, unstacked. The
        selective-disclosure audit builds its batches this way, without :meth:`data`
        (docs/protocol.md §4.9). The default decodes every encoding of §4.6: tensors and
        token windows by their framing, files through :meth:`transform`
        (:func:`prover.disclosure.decode_example`). Raise
        :class:`~ledger.errors.UsageError` for an encoding the recipe cannot decode and
        :class:`~ledger.errors.MalformedError` for bytes that are not an example (the
        audit fails); any other exception leaves it inconclusive."""
        from prover.disclosure import decode_example

        own = type(self).transform is not Recipe.transform
        return decode_example(encoding, blob, self.transform if own else None)

    def model(self) -> torch.nn.Module:
        raise NotImplementedError

    def optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        raise NotImplementedError

    def per_example_loss(self, model: torch.nn.Module, x: torch.Tensor,
                         y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def scheduler(self, opt: torch.optim.Optimizer) -> Any:
        """A torch ``lr_scheduler`` over ``opt``, or None (the default: :meth:`lr`).

        Its learning rates are a function of the step: :meth:`group_lrs` steps it once per
        training step on the optimizer built on the meta device, and :func:`train_step`
        sets those rates (per parameter group) before each update. So its state is not
        training state (nothing to commit; any step replays alone), and a scheduler whose
        rates depend on anything but the step count (``ReduceLROnPlateau``) is refused."""
        return None

    def lr(self, step: int) -> float:
        """Learning rate logged for ``step``: constant ``lr`` from the config, or the
        scheduler's rate of the first parameter group."""
        if self._schedule() is not None:
            return self.group_lrs(step)[0]
        return float(self.config["lr"])

    def group_lrs(self, step: int) -> list[float]:
        """Learning rate of each parameter group at ``step`` (see :meth:`scheduler`);
        without a scheduler, :meth:`lr` for every group (``[]``: the caller fills)."""
        sim = self._schedule()
        if sim is None:
            return []
        opt, sched, rates = sim
        while len(rates) <= step:
            opt.step()  # no gradients on the meta device: changes nothing, keeps torch quiet
            sched.step()
            rates.append([float(g["lr"]) for g in opt.param_groups])
        return rates[step]

    def _schedule(self) -> tuple[torch.optim.Optimizer, Any, list[list[float]]] | None:
        if not hasattr(self, "_sim"):
            if type(self).scheduler is Recipe.scheduler:
                self._sim = None
            else:
                with torch.random.fork_rng(devices=[]), torch.device("meta"):
                    opt = self.optimizer(self.model())  # the step RNG is left alone
                sched = self.scheduler(opt)
                if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    raise UsageError(f"recipe {self.name}: ReduceLROnPlateau depends on the "
                                     "loss, not only on the step; it cannot be replayed alone",
                                     hint="use a schedule that is a function of the step")
                self._sim = None if sched is None else (
                    opt, sched, [[float(g["lr"]) for g in opt.param_groups]])
        return self._sim

    def step(self, model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
             y: torch.Tensor, step: int) -> torch.Tensor:
        """The update of one step on the batch ``x, y``; returns its loss. Override for
        gradient accumulation, clipping, autocast, …: :func:`train_step` has already
        seeded the step RNG, set the learning rate and put the model in training mode.
        Call ``opt.step()`` exactly once (the prover hashes the previous step's weights
        before it) and nothing that depends on anything but the arguments, the config and
        the seeded RNG."""
        opt.zero_grad(set_to_none=True)
        loss = self.loss(model, x, y)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        return loss

    # shared ------------------------------------------------------------------
    def loss(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.per_example_loss(model, x, y).mean()

    @property
    def batch_size(self) -> int:
        return int(self.config["batch_size"])

    @property
    def epochs(self) -> int:
        return int(self.config["epochs"])

    @property
    def k(self) -> int:
        return int(self.config["k"])

    @classmethod
    def source_files(cls) -> dict[str, bytes]:
        """``{label: bytes}`` of the files the recipe's code hash pins
        (:mod:`prover.recipes.pin`)."""
        from .pin import module_file, source_files

        mod = sys.modules[cls.__module__]
        path = module_file(mod)
        files = source_files(cls.__module__, path)
        ran = getattr(mod, "__potd_source__", None)
        if isinstance(ran, bytes):  # a file recipe: the bytes that were run
            files[f"{cls.__module__}.py"] = ran
        return files

    @classmethod
    def source_hash(cls) -> str:
        """The ``potd-recipe-v2`` code hash over :meth:`source_files`."""
        from .pin import code_hash

        return code_hash(cls.source_files())

    def commitment(self) -> dict[str, Any]:
        """``run.open``'s ``recipe`` field: name, code hash, the hash of each pinned file
        (so an auditor can fetch and read them) and the config."""
        from .pin import code_hash, file_hashes

        files = self.source_files()
        return {"name": self.name, "code_hash": code_hash(files),
                "files": file_hashes(files), "config": self.config}

    def optimizer_name(self) -> str:
        """The class name of the optimizer the recipe builds, from its real model built on
        the meta device (nothing allocated)."""
        with torch.device("meta"):
            return type(self.optimizer(self.model())).__name__


def seed_rng(seed: int) -> None:
    """``torch.manual_seed(seed)``, minus its cost on a machine whose accelerators are not
    in use: with CUDA built in but not initialised, torch queues the device seeding for
    later together with a formatted stack trace, ~60 µs per call here (per training
    step; 1.5 µs this way). The CPU generator ends in the same state."""
    cuda = torch.cuda.is_initialized()  # type: ignore[no-untyped-call]
    if cuda or torch.backends.mps.is_available() or (
            hasattr(torch, "xpu") and torch.xpu.is_available()):
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)


def train_step(recipe: Recipe, model: torch.nn.Module, opt: torch.optim.Optimizer,
               x: torch.Tensor, y: torch.Tensor, seed: bytes, step: int) -> torch.Tensor:
    """One training step: reset the step RNG, set the lr (of each parameter group, from the
    recipe's scheduler if it has one), train mode, then the recipe's
    :meth:`Recipe.step` (default: forward, backward, update)."""
    seed_rng(step_seed(seed, step))
    lrs = recipe.group_lrs(step) or [recipe.lr(step)] * len(opt.param_groups)
    for group, lr in zip(opt.param_groups, lrs, strict=True):
        group["lr"] = lr
    model.train()
    return recipe.step(model, opt, x, y, step).detach()


def get_recipe(spec: str, *, data_dir: str | Path | None = None,
               **overrides: Any) -> Recipe:
    """Instantiate the recipe ``spec`` names: a registered name, ``path/file.py:Class``
    or ``package.module:Class`` (:mod:`prover.recipes.registry`). Loading runs its code.
    ``data_dir`` (not committed) becomes :attr:`Recipe.data_dir`."""
    from .registry import canonical, resolve

    recipe = resolve(spec)(**overrides)
    recipe.spec = canonical(spec)
    if data_dir is not None:
        recipe.data_dir = Path(data_dir).resolve()
    return recipe


def digits(image: bool) -> Data:
    """scikit-learn's bundled 8x8 digits (offline): every 5th example is held out."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    if image:
        x = x.reshape(-1, 1, 8, 8)
    y = torch.tensor(d.target, dtype=torch.int64)
    held = torch.arange(len(x)) % 5 == 0
    return Data(x[~held].contiguous(), y[~held].contiguous(), x[held].contiguous(),
                y[held].contiguous())
