"""The recipe's source in the evidence store, so an auditor can fetch and read it.

Layout (next to ``objects/`` and ``manifest.json``)::

    recipe/<sha256 of file>.py   each file the code hash pins (prover.recipes.pin)
    recipe.json                  {"run", "name", "module", "class", "code_hash",
                                  "files": {label: sha256}}

``run.open`` commits ``recipe.files`` (the same ``{label: sha256}``) and ``code_hash``, so
the files are named by the log; ``recipe.json`` is an untrusted index (the auditor checks
every file against its name and the code hash against the log when it audits).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from prover.evidence import _atomic_write

from .pin import code_hash, file_hashes

if TYPE_CHECKING:
    from . import Recipe

INDEX = "recipe.json"


def store_recipe_source(root: Path, run: str, recipe: Recipe) -> None:
    files = recipe.source_files()
    for data in files.values():
        path = root / "recipe" / f"{hashlib.sha256(data).hexdigest()}.py"
        if not path.exists():
            _atomic_write(path, data)
    cls = type(recipe)
    index = {"run": run, "name": recipe.name, "module": cls.__module__,
             "class": cls.__qualname__, "code_hash": code_hash(files),
             "files": file_hashes(files)}
    _atomic_write(root / INDEX, json.dumps(index, indent=1, sort_keys=True).encode() + b"\n")
