"""Training recipes: one definition used identically by the prover (to train) and the
auditor (to replay).

A recipe declares its data (training set and held-out set, as stacked tensors), model,
optimizer, loss and learning-rate schedule, and a config of plain values (reals as
decimal strings, so the config can go into a canonical-JSON statement). The hash of the
recipe's source file is committed in ``run.open``; replaying with a recipe whose source
changed is refused.

:func:`train_step` is *the* step: the prover calls it to train and the auditor to
replay, so the two cannot drift apart.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ledger.errors import UsageError
from prover.derive import step_seed

RECIPES = {
    "digits-mlp": "prover.recipes.digits_mlp:DigitsMLP",
    "digits-cnn": "prover.recipes.digits_cnn:DigitsCNN",
    "wide-mlp": "prover.recipes.wide_mlp:WideMLP",
}


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


def _finite(s: str) -> bool:
    try:
        return math.isfinite(float(s))
    except ValueError:
        return False


class Recipe:
    """Base class. Subclasses set ``name`` and ``defaults`` and implement the hooks."""

    name: ClassVar[str]
    defaults: ClassVar[dict[str, Any]]

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

    # hooks -------------------------------------------------------------------
    def data(self) -> Data:
        raise NotImplementedError

    def model(self) -> torch.nn.Module:
        raise NotImplementedError

    def optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        raise NotImplementedError

    def per_example_loss(self, model: torch.nn.Module, x: torch.Tensor,
                         y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def lr(self, step: int) -> float:
        """Learning rate for ``step`` (default: constant ``lr`` from the config)."""
        return float(self.config["lr"])

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
    def source_hash(cls) -> str:
        """SHA-256 (hex) of the recipe's source file and of the shared step code."""
        h = hashlib.sha256()
        for obj in (cls, train_step):
            src = inspect.getsourcefile(obj)
            if src is None:
                raise UsageError(f"cannot find the source of recipe {cls.name}")
            with open(src, "rb") as f:
                h.update(f.read())
        return h.hexdigest()


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
    """One training step: reset the step RNG, set the lr, forward, backward, update."""
    seed_rng(step_seed(seed, step))
    lr = recipe.lr(step)
    for group in opt.param_groups:
        group["lr"] = lr
    model.train()
    opt.zero_grad(set_to_none=True)
    loss = recipe.loss(model, x, y)
    loss.backward()  # type: ignore[no-untyped-call]
    opt.step()
    return loss.detach()


def get_recipe(name: str, **overrides: Any) -> Recipe:
    """Instantiate a registered recipe by name."""
    try:
        target = RECIPES[name]
    except KeyError:
        raise UsageError(f"unknown recipe {name!r}",
                         hint=f"available: {', '.join(sorted(RECIPES))}") from None
    mod, cls = target.split(":")
    recipe_cls = getattr(importlib.import_module(mod), cls)
    recipe: Recipe = recipe_cls(**overrides)
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
