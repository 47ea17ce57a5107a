"""Reports as strict JSON (RFC 8259): what a peer committed (a loss of ``"-Infinity"``)
must not put a token into the report that JSON parsers refuse.

Non-finite floats become the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``;
tuples become lists, keys strings, and anything else not JSON its ``str``.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(v: Any) -> Any:
    """``v`` with every non-finite float replaced by its name (a copy)."""
    if isinstance(v, float):
        if math.isfinite(v):
            return v
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    if isinstance(v, dict):
        return {k if isinstance(k, str) else str(k): finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [finite(x) for x in v]
    return v


def report_json(report: Any, **kw: Any) -> str:
    """``json.dumps`` of the report that can only produce strict JSON."""
    return json.dumps(finite(report), allow_nan=False, default=str, **kw)
