"""Recipe settings from the command line (``--set KEY=VALUE``) and from a file
(``--config FILE``, JSON or TOML). The result goes to the recipe's constructor, which
type- and bounds-checks it (:func:`prover.recipes.check_config`); the checked config is
what ``run.open`` commits."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from ledger.errors import UsageError

MAX_CONFIG = 1 << 20


def parse_settings(pairs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs: an integer when VALUE is one, ``true``/``false`` as booleans,
    anything else (a real, a name) as a string."""
    out: dict[str, Any] = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not k:
            raise UsageError(f"--set {p!r} is not KEY=VALUE")
        out[k] = (int(v) if v.lstrip("-").isdigit() else
                  {"true": True, "false": False}.get(v, v))
    return out


def read_config(path: str) -> dict[str, Any]:
    """A flat table of settings from ``path`` (``.toml``: TOML, otherwise JSON)."""
    p = Path(path)
    data = p.read_bytes()[:MAX_CONFIG + 1]
    if len(data) > MAX_CONFIG:
        raise UsageError(f"config file {path} is larger than {MAX_CONFIG} bytes")
    try:
        if p.suffix == ".toml":
            cfg: Any = tomllib.loads(data.decode())
        else:
            cfg = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        kind = "TOML" if p.suffix == ".toml" else "JSON"
        raise UsageError(f"config file {path} is not valid {kind}: {str(e)[:200]}") from None
    if not isinstance(cfg, dict):
        raise UsageError(f"config file {path} must hold a table of settings")
    for k, v in cfg.items():
        if not isinstance(v, (int, float, str, bool)):
            raise UsageError(f"config file {path}: setting {k} must be a number, string or "
                             "boolean", hint="settings are flat: no nested tables or lists")
    return cfg
