"""Recipe ``digits-cnn``: a small CNN on the digits as 1x8x8 images, with random
horizontal shifts as augmentation (seeded per step), trained with Adam."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from prover.recipes import Data, Recipe, digits


class DigitsCNN(Recipe):
    name = "digits-cnn"
    defaults: ClassVar[dict[str, Any]] = {
        "channels": 16, "lr": "0.003", "batch_size": 64, "epochs": 2, "k": 4, "shift": 1,
    }

    def data(self) -> Data:
        return digits(image=True)

    def model(self) -> nn.Module:
        c = int(self.config["channels"])
        return nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * c * 4, 10))

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=float(self.config["lr"]))

    def per_example_loss(self, model: nn.Module, x: torch.Tensor,
                         y: torch.Tensor) -> torch.Tensor:
        if model.training and int(self.config["shift"]):
            s = int(torch.randint(-int(self.config["shift"]), int(self.config["shift"]) + 1,
                                  (1,)))
            x = torch.roll(x, shifts=s, dims=3)  # augmentation from the per-step RNG
        return nn.functional.cross_entropy(model(x), y, reduction="none")
