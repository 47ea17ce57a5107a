"""A test recipe: ``digits-mlp`` with its first layer named so that the weights'
safetensors header is 128 mod 256 bytes long (its first byte 0x80, like a pickle's)."""

from __future__ import annotations

import functools
import struct
from collections import OrderedDict

import torch
from safetensors.torch import save
from torch import nn

from prover.recipes.digits_mlp import DigitsMLP


def _layers(name: str, h: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict([(name, nn.Linear(64, h)), ("r", nn.ReLU()),
                                      ("o", nn.Linear(h, 10))]))


@functools.cache
def _name(h: int) -> str:
    # on the CPU (models may be built on the meta device), leaving the seeded RNG alone
    with torch.device("cpu"), torch.random.fork_rng(devices=[]):
        return _search(h)


def _search(h: int) -> str:
    for n in range(1, 400):
        sd = {k: v.detach().contiguous() for k, v in _layers("w" * n, h).state_dict().items()}
        if struct.unpack("<Q", save(sd)[:8])[0] % 256 == 128:
            return "w" * n
    raise AssertionError("no layer name gives a header of 128 mod 256 bytes")


class LongNames(DigitsMLP):
    name = "long-names"

    def model(self) -> nn.Module:
        h = int(self.config["hidden"])
        return _layers(_name(h), h)
