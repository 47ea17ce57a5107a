"""Recipe ``digits-mlp``: a 64-128-64-10 MLP with dropout on scikit-learn's 8x8 digits,
SGD with momentum."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from prover.recipes import Data, Recipe, digits


class DigitsMLP(Recipe):
    name = "digits-mlp"
    defaults: ClassVar[dict[str, Any]] = {
        "hidden": 128, "dropout": "0.1", "lr": "0.05", "momentum": "0.9",
        "weight_decay": "0.0001", "batch_size": 32, "epochs": 2, "k": 5,
    }

    def data(self) -> Data:
        return digits(image=False)

    def model(self) -> nn.Module:
        h = int(self.config["hidden"])
        return nn.Sequential(nn.Linear(64, h), nn.ReLU(), nn.Dropout(float(self.config["dropout"])),
                             nn.Linear(h, 64), nn.ReLU(), nn.Linear(64, 10))

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=float(self.config["lr"]),
                               momentum=float(self.config["momentum"]),
                               weight_decay=float(self.config["weight_decay"]))

    def per_example_loss(self, model: nn.Module, x: torch.Tensor,
                         y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(model(x), y, reduction="none")
