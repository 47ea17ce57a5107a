"""Recipe ``wide-mlp``: a ~10M-parameter MLP on the digits (for overhead benchmarks:
per-step weight hashing of 40 MB of float32 weights)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from prover.recipes import Data, Recipe, digits


class WideMLP(Recipe):
    name = "wide-mlp"
    defaults: ClassVar[dict[str, Any]] = {
        "hidden": 2200, "lr": "0.01", "momentum": "0.9", "batch_size": 64, "epochs": 1, "k": 10,
    }

    def data(self) -> Data:
        return digits(image=False)

    def model(self) -> nn.Module:
        h = int(self.config["hidden"])
        return nn.Sequential(nn.Linear(64, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                             nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 10))

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=float(self.config["lr"]),
                               momentum=float(self.config["momentum"]))

    def per_example_loss(self, model: nn.Module, x: torch.Tensor,
                         y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(model(x), y, reduction="none")
