"""Where training and replay run (``--device cpu|cuda[:i]``), and what the environment
record says about it (docs/protocol.md §4: ``run.open``'s ``environment``).

Invariants:

* The model, its optimizer state and the batches live on the chosen device; everything
  that leaves the process — evidence, weights hashes, distances — is computed from CPU
  copies (:mod:`prover.hashing` copies a non-CPU tensor before hashing it), so a hash does
  not depend on where the tensor lived.
* The seed-derived initial model is built on the CPU and moved afterwards: its weights
  (and their committed hash) are the same whatever device trains.
* A device that is not available here is a :class:`~ledger.errors.UsageError` with a hint,
  raised before anything is logged.
* ``device`` in the environment record is the device *type* (``cpu``, ``cuda``): an
  auditor whose type differs replays in tolerance mode (:mod:`auditor.calibration`).
  ``device_name`` names the hardware; the index of a GPU is not recorded (equal GPUs
  compute alike).

Trusts: torch's report of which devices exist.
"""

from __future__ import annotations

import platform
import re
from typing import Any

import torch

from ledger.errors import UsageError

__all__ = ["device_environment", "device_name", "optimizer_to", "parse_device", "to_device"]

_SPEC = re.compile(r"(cpu|cuda)(?::(\d{1,3}))?")


def parse_device(spec: str | torch.device | None) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:i`` as a torch device available here; else a
    :class:`~ledger.errors.UsageError` saying why and what to give instead."""
    if spec is None:
        return torch.device("cpu")
    text = str(spec).strip().lower()
    m = _SPEC.fullmatch(text)
    if m is None:
        raise UsageError(f"unknown device {str(spec)[:40]!r}",
                         hint="give --device cpu, cuda or cuda:INDEX")
    kind, index = m.group(1), m.group(2)
    if kind == "cpu":
        if index not in (None, "0"):
            raise UsageError(f"device {text!r}: the CPU has no index", hint="give --device cpu")
        return torch.device("cpu")
    if not torch.cuda.is_available():
        built = "without CUDA" if torch.version.cuda is None else f"for CUDA {torch.version.cuda}"
        raise UsageError(f"device {text!r} is not available: torch finds no CUDA device "
                         f"here (torch {torch.__version__}, built {built})",
                         hint="use --device cpu, or run on a machine with an NVIDIA GPU and a "
                              "CUDA build of torch")
    n = torch.cuda.device_count()
    i = int(index) if index is not None else torch.cuda.current_device()
    if i >= n:
        raise UsageError(f"device {text!r} is not available: this machine has {n} CUDA "
                         f"device{'s' if n != 1 else ''} (cuda:0..cuda:{n - 1})",
                         hint=f"give --device cuda:0..cuda:{n - 1}")
    return torch.device("cuda", i)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()[:120]
    except OSError:
        pass
    return (platform.processor() or platform.machine() or "unknown")[:120]


def device_name(device: torch.device) -> str:
    """The hardware behind ``device``: the GPU's name, or the CPU's model."""
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))[:120]
    return _cpu_name()


def device_environment(device: torch.device) -> dict[str, Any]:
    """The device fields of the environment record: type, name and, on CUDA, the CUDA
    and cuDNN versions torch runs with."""
    env: dict[str, Any] = {"device": device.type, "device_name": device_name(device)}
    if device.type == "cuda":
        cudnn = (torch.backends.cudnn.version()  # type: ignore[no-untyped-call]
                 if torch.backends.cudnn.is_available() else None)  # type: ignore[no-untyped-call]
        env.update(cuda=torch.version.cuda, cudnn=cudnn)
    return env


def optimizer_to(opt: torch.optim.Optimizer, device: torch.device) -> None:
    """Move the optimizer's state tensors to ``device`` (after restoring it from CPU
    evidence). Scalar ``step`` counters stay where torch keeps them (on the CPU)."""
    for st in opt.state.values():
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and v.device != device and not (
                    k == "step" and v.dim() == 0):
                st[k] = v.to(device)


def to_device(x: Any, device: torch.device) -> Any:
    """A batch part on ``device``: a tensor moved, tuples and lists element-wise, anything
    else as it is."""
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, tuple | list):
        return type(x)(to_device(v, device) for v in x)
    return x
